from capmix.config import SparkConfig
from capmix.spark import build_conf, get_or_create


def test_build_conf_sizes_for_local_cores():
    conf = build_conf(SparkConfig(master="local[3]"))
    assert conf["spark.sql.shuffle.partitions"] == "6"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert conf["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"
    explicit = build_conf(SparkConfig(shuffle_partitions=7, conf={"spark.x": "1"}))
    assert explicit["spark.sql.shuffle.partitions"] == "7" and explicit["spark.x"] == "1"


def test_active_session_is_reused_not_recreated(spark):
    again, created = get_or_create(SparkConfig(master="local[1]"))
    assert again is spark and not created
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_observed_counts_on_the_way_and_never_blocks(spark, tmp_path):
    """An observation read after a write gives the count; one whose subtree Spark dropped (an
    empty join side) falls back instead of blocking forever as Observation.get would."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from capmix.spark import observed

    rows = spark.range(500).withColumn("ok", (F.col("id") % 5 != 0).cast("int"))
    calls = []

    def fallback() -> int:
        calls.append(1)
        return -1

    def write(keys, name: str) -> Observation:
        seen = Observation(name)
        (rows.observe(seen, F.sum("ok").alias("ok"))
         .join(F.broadcast(keys), "id", "left_semi").repartition(2, "id")
         .write.mode("overwrite").parquet(str(tmp_path / name)))
        return seen

    assert observed(write(spark.range(0, 500, 7), "some"), "ok", fallback) == 400
    assert calls == []
    assert observed(write(spark.range(0), "none"), "ok", fallback, wait_s=1) == -1
    assert calls == [1]


SUBMITTED = """
import json
from capmix.config import LakeConfig, SparkConfig
from capmix.lake import open_lake
from capmix.spark import get_or_create
spark, _ = get_or_create(SparkConfig(master="local[2]", shuffle_partitions=7), LakeConfig())
lake = open_lake(spark, LakeConfig(path={lake!r}))
print("CONF " + json.dumps({{
    "master": spark.sparkContext.master,
    "shuffle": spark.conf.get("spark.sql.shuffle.partitions"),
    "utc": spark.conf.get("spark.sql.session.timeZone"),
    "arrow_rows": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"),
    "reuse": spark.sparkContext.getConf().get("spark.python.worker.reuse"),
    "backend": type(lake).__name__}}))
"""


def test_spark_submit_keeps_its_own_master_and_settings(tmp_path):
    """Under spark-submit the YAML's master and sizes do not override the launcher's flags,
    and capmix's local defaults (Arrow batch rows, worker reuse) are not added; capmix adds its
    correctness settings and Delta's SQL extension (the jars came with --jars, as --packages
    would bring them)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pyspark.find_spark_home import _find_spark_home

    from capmix import jars

    cached = jars.cached_jars(jars.delta_coordinates())
    assert cached, "Delta's jars are fetched at install (python -m capmix.jars fetch)"
    script = tmp_path / "job.py"
    script.write_text(SUBMITTED.format(lake=str(tmp_path / "lake")))
    submit = Path(_find_spark_home()) / "bin" / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable,
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([str(submit), "--master", "local[1]", "--conf",
                          "spark.sql.shuffle.partitions=3", "--conf", "spark.ui.enabled=false",
                          "--conf", "spark.sql.session.timeZone=Europe/Paris",
                          "--jars", ",".join(cached), str(script)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("CONF "))
    got = json.loads(line[5:])
    assert got == {"master": "local[1]", "shuffle": "3", "utc": "UTC", "arrow_rows": "10000",
                   "reuse": None, "backend": "SparkDeltaLake"}, got


def test_for_launched_adds_only_correctness_settings_and_loaded_delta():
    """Under spark-submit capmix sets the README's three correctness settings and, when Delta's
    classes came with the launcher, Delta's extension and catalog: nothing else, not even what
    the launcher left unset (UI, worker reuse, Arrow batch size, AQE, S3A)."""
    from capmix.spark import for_launched

    launched = {"spark.master": "yarn", "spark.y": "mine",
                "spark.sql.extensions": "com.example.Ext",
                "spark.sql.session.timeZone": "Europe/Paris"}
    required = {"spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true"}
    assert for_launched(launched, delta_loadable=False) == required
    assert for_launched(launched, delta_loadable=True) == {
        **required,
        "spark.sql.extensions": "com.example.Ext,io.delta.sql.DeltaSparkSessionExtension",
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"}
    # A launcher's own catalog stays; its extensions gain Delta's once.
    own = for_launched({"spark.sql.catalog.spark_catalog": "com.example.Catalog",
                        "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension"},
                       delta_loadable=True)
    assert own == {**required, "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension"}


def test_a_cluster_master_keeps_its_own_parallelism():
    conf = build_conf(SparkConfig(master="spark://head:7077"))
    assert conf["spark.master"] == "spark://head:7077"
    assert "spark.default.parallelism" not in conf and "spark.sql.shuffle.partitions" not in conf
    assert build_conf(SparkConfig(master="yarn", shuffle_partitions=400))[
        "spark.sql.shuffle.partitions"] == "400"
