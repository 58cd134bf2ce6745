"""The Spark session: reuse the active one (Databricks, notebooks, spark-submit), else build a
local one sized for the machine. Never stop a session capmix did not create."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from capmix.config import LakeConfig, SparkConfig
from capmix.resources import resource_dir

log = logging.getLogger("capmix")

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Settings capmix relies on for correctness, set on new and reused sessions alike (all are
# runtime-modifiable SQL confs): Delta readers expect INT64 microsecond timestamps in UTC, and
# pandas UDFs exchange Arrow batches.
REQUIRED_CONF = {
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def _local_cores(master: str) -> int:
    # local[4] -> 4, local[*] / local -> this machine's cores.
    inside = master[master.find("[") + 1: master.find("]")] if "[" in master else "1"
    if inside.isdigit():
        return int(inside)
    return os.cpu_count() or 1


def delta_conf(backend: str = "auto") -> tuple[dict[str, str], str]:
    """(Spark conf that loads Spark's own Delta Lake, why) for a session capmix creates.

    `auto` loads Delta when `capmix.jars fetch` has cached its jars (no resolution at start);
    `spark` loads it always, resolving through Ivy now if it must; `delta-rs` never does. The
    reason is what `open_lake` logs when it picks the backend."""
    from capmix import jars

    if backend == "delta-rs":
        return {}, "lake.backend is delta-rs"
    delta = {"spark.sql.extensions": jars.DELTA_EXTENSIONS,
             "spark.sql.catalog.spark_catalog": jars.DELTA_CATALOG}
    coordinates = jars.delta_coordinates()
    cached = jars.cached_jars(coordinates)
    if cached is not None:
        return {**delta, "spark.jars": ",".join(cached)}, \
            f"Delta jars cached in {jars.ivy_dir()}"
    if backend == "spark":
        return {**delta, "spark.jars.packages": ",".join(coordinates)}, \
            "lake.backend is spark (resolving the Delta jars through Ivy at start)"
    return {}, (f"Spark's Delta jars are not cached in {jars.ivy_dir()} "
                "(fetch them once with `python -m capmix.jars fetch`, which `make` runs)")


def object_store_conf(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Hadoop settings that let Spark read the object stores Python code reads with the same
    environment: `s3://` served by S3A (as on EMR and Databricks), and S3A pointed at
    AWS_ENDPOINT_URL (a MinIO, moto or other S3-compatible server: path-style addressing, TLS
    as the URL says) and AWS_REGION. Credentials need nothing: S3A's default chain reads
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN itself. A user's own
    `spark.hadoop.fs.s3a.*` (the YAML's spark.conf) wins; under spark-submit capmix sets none
    of these (`for_launched`)."""
    env = os.environ if environ is None else environ
    conf = {"spark.hadoop.fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(
            endpoint.lower().startswith("https:")).lower()
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        conf["spark.hadoop.fs.s3a.endpoint.region"] = region
    return conf


def apply_object_store_conf(spark: "SparkSession") -> None:
    """`object_store_conf` on a running session (one capmix did not build, whose Hadoop conf
    can still change for filesystems opened from now on): only when the session names no S3A
    endpoint of its own."""
    wanted = object_store_conf()
    if "spark.hadoop.fs.s3a.endpoint" not in wanted:
        return
    with contextlib.suppress(Exception):  # Spark Connect / locked-down clusters: leave as is
        hadoop = spark.sparkContext._jsc.hadoopConfiguration()
        if hadoop.get("fs.s3a.endpoint"):
            return
        for key, value in wanted.items():
            hadoop.set(key[len("spark.hadoop."):], value)


def _merge_list(conf: dict[str, str], key: str, value: str) -> None:
    """Add comma-separated `value` to `conf[key]` (a user's own jars/extensions stay)."""
    have = [v for v in conf.get(key, "").split(",") if v]
    conf[key] = ",".join(have + [v for v in value.split(",") if v and v not in have])


def build_conf(cfg: SparkConfig, lake: LakeConfig | None = None) -> dict[str, str]:
    """The full Spark conf for a session capmix creates (pure: tested without a JVM)."""
    local = cfg.master.startswith("local")
    cores = _local_cores(cfg.master) if local else 0
    conf = {
        "spark.app.name": cfg.app_name,
        "spark.master": cfg.master,
        "spark.driver.memory": cfg.driver_memory,
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(cfg.arrow_batch_rows),
        "spark.ui.enabled": str(cfg.ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        # Python workers stay up between tasks, so a UDF's model cache survives across batches.
        "spark.python.worker.reuse": "true",
        # No _SUCCESS markers among the data files capmix commits to Delta itself.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
        "spark.sql.adaptive.enabled": "true",
        **REQUIRED_CONF,
    }
    # Sizes for one machine; a cluster's own defaults (parallelism = its executors' cores) stand
    # unless the config names them.
    if cfg.shuffle_partitions or local:
        conf["spark.sql.shuffle.partitions"] = str(cfg.shuffle_partitions or max(2, 2 * cores))
    if local:
        conf["spark.default.parallelism"] = str(max(2, cores))
    log4j = resource_dir("data") / "log4j2.properties"
    if log4j.is_file():  # quiet startup; a user's own extraJavaOptions (cfg.conf) still win
        conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile=file:{log4j}"
    conf.update(object_store_conf())
    conf.update(cfg.conf)
    from capmix import jars

    s3a = jars.cached_jars(jars.s3a_coordinates())
    if s3a:  # S3A's jars where `fetch` cached them (~15 MB; nothing resolves at start)
        _merge_list(conf, "spark.jars", ",".join(s3a))
    delta, _ = delta_conf((lake or LakeConfig()).backend)
    for key, value in delta.items():
        if key in ("spark.jars", "spark.jars.packages", "spark.sql.extensions"):
            _merge_list(conf, key, value)
        else:
            conf.setdefault(key, value)
    return conf


def launcher_conf() -> dict[str, str] | None:
    """The conf of the JVM that started this Python driver, or None when capmix starts Spark.

    spark-submit (and `pyspark`) start the JVM first and hand the driver its gateway in
    PYSPARK_GATEWAY_PORT; the JVM's `spark.*` system properties are then the launcher's
    settings (its --master, --conf ...)."""
    if not os.environ.get("PYSPARK_GATEWAY_PORT"):
        return None
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def for_launched(launched: dict[str, str], delta_loadable: bool) -> dict[str, str]:
    """All capmix sets on a session whose JVM a launcher started (spark-submit, `pyspark`):
    `REQUIRED_CONF`, and Delta's SQL extension and catalog when Delta's classes are already on
    the JVM (spark-submit's --packages or --jars; jars cannot be added to a running driver),
    else the lake falls back to delta-rs and says so.

    Nothing else, not even where the launcher left a setting unset: master, sizes, UI, worker
    reuse, Arrow batch size, adaptive execution and the YAML's `spark.conf` are the
    launcher's to decide (its --conf, spark-defaults.conf, the cluster's defaults). S3A's
    settings too: capmix hands Spark `s3a://` paths itself (`storage.spark_path`), so
    `fs.s3.impl` is not needed, and which endpoint S3A talks to is the launcher's
    `spark.hadoop.fs.s3a.*`; AWS_ENDPOINT_URL in the driver's environment would not reach the
    executors' Hadoop anyway."""
    from capmix import jars

    out = dict(REQUIRED_CONF)  # correctness, as on every session capmix uses
    if delta_loadable:
        extensions, catalog = "spark.sql.extensions", "spark.sql.catalog.spark_catalog"
        out[extensions] = launched.get(extensions, "")  # the launcher's own extensions stay
        _merge_list(out, extensions, jars.DELTA_EXTENSIONS)
        if catalog not in launched:
            out[catalog] = jars.DELTA_CATALOG
    return out


def active_session() -> "SparkSession | None":
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def get_or_create(cfg: SparkConfig, lake: LakeConfig | None = None
                  ) -> tuple["SparkSession", bool]:
    """(session, created): the active session if there is one, else a new one (with Spark's own
    Delta Lake loaded unless `lake.backend` is delta-rs or its jars are not cached:
    `delta_conf`). The YAML's master and sizes apply only when capmix starts Spark itself: a
    driver started by spark-submit keeps the launcher's settings (`for_launched`)."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    created = spark is None
    if spark is None:
        # Workers must run this interpreter (the venv), not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = SparkSession.builder
        launched = launcher_conf()
        if launched is None:
            conf = build_conf(cfg, lake)
        else:  # spark-submit's settings stay its own: capmix adds only what it needs
            from pyspark import SparkContext

            from capmix.jars import delta_loaded

            conf = for_launched(launched, delta_loaded(SparkContext._jvm))
        for key, value in conf.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        # PySpark logs every failed query with its JVM stack as JSON at ERROR; capmix reports
        # the error itself in one line (CapmixError), so a session capmix owns stays quiet.
        logging.getLogger("SQLQueryContextLogger").setLevel(logging.CRITICAL)
    else:
        for key, value in REQUIRED_CONF.items():
            with contextlib.suppress(Exception):  # a locked-down cluster may refuse; reads still work
                spark.conf.set(key, value)
        apply_object_store_conf(spark)
    return spark, created


@contextlib.contextmanager
def session(cfg: SparkConfig, lake: LakeConfig | None = None) -> Iterator["SparkSession"]:
    """A session for the duration of a command; stopped only if this call created it."""
    spark, created = get_or_create(cfg, lake)
    try:
        yield spark
    finally:
        if created:
            spark.stop()


def observed(observation: object, metric: str, fallback: Callable[[], int],
             wait_s: float = 30.0) -> int:
    """The integer `metric` of a pyspark `Observation` whose action has run, else `fallback()`.

    An observation counts rows on the way through a scan an action makes anyway, which saves a
    second scan of a billion-row table. But Spark records it asynchronously after the action,
    and never when the optimizer drops the observed subtree (an empty join side), where
    `Observation.get` would block forever. So: poll its future for at most `wait_s`, then fall
    back (also on Spark Connect, whose Observation has no JVM future)."""
    try:
        future = observation._jo.future()  # type: ignore[attr-defined]
        deadline = time.monotonic() + wait_s
        while not future.isCompleted() and time.monotonic() < deadline:
            time.sleep(0.05)
        value = future.value()
        if value.isDefined() and value.get().isSuccess():
            return int(value.get().get().apply(metric))
    except Exception as exc:  # noqa: BLE001 - any failure here only costs the fallback's scan
        log.debug("observation %s unavailable (%s); counting again", metric, exc)
    return fallback()
