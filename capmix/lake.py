"""The lake: Delta tables by name, behind one interface with two backends.

- `SparkDeltaLake`: Spark's own Delta Lake (the default: a session capmix builds loads the jars
  that `python -m capmix.jars fetch` cached; Databricks has them built in).
- `DeltaRsLake`: the fallback for machines that cannot fetch the jars. Spark still does all the
  data work (it writes the parquet data files); the `deltalake` package (delta-rs) only commits
  them to the Delta log, so no row passes through the driver.

Both produce standard Delta tables that the other reads. Every write is one Delta commit, so it
is atomic: a crash before the commit leaves the table at its previous version (with, at worst,
unreferenced files that `vacuum` removes).

Appends can carry a Delta transaction identifier (`Txn`: the `txnAppId`/`txnVersion` writer
options in Spark, `CommitProperties(app_transactions=...)` in delta-rs). Delta records the
highest version committed per app id in the table itself, and a write whose version is not above
it adds nothing; two writers committing the same app id at once conflict. The model stages use
this as their exactly-once fence instead of anti-joining every chunk against the whole table.
"""
from __future__ import annotations

import abc
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from capmix.config import TABLES, LakeConfig
from capmix.errors import InputError

log = logging.getLogger("capmix")

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_CATALOG_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)?$")
_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def is_catalog(path: str) -> bool:
    """`main.capmix` names a Unity Catalog schema; `lake`, `./lake`, `s3://b/l` are paths."""
    return "." in path and not path.startswith(".") and bool(_CATALOG_RE.match(path))


@dataclass(frozen=True)
class Txn:
    """A Delta transaction identifier: at most one commit per (app_id, version), and none with a
    version at or below the highest one the table has recorded for app_id."""

    app_id: str
    version: int


class Lake(abc.ABC):
    """Delta tables addressed by their logical name (`pool`, `captions`, ...)."""

    backend = "?"

    def __init__(self, spark: "SparkSession", cfg: LakeConfig):
        self.spark = spark
        self.cfg = cfg

    # -- naming -----------------------------------------------------------------------------
    def physical(self, table: str) -> str:
        return self.cfg.table(table)

    @abc.abstractmethod
    def location(self, table: str) -> str:
        """Where the table lives: a path/URI, or a catalog identifier."""

    def location_root(self) -> str:
        """The folder/URI holding the tables (a path lake)."""
        return self.cfg.path

    # -- reads ------------------------------------------------------------------------------
    @abc.abstractmethod
    def exists(self, table: str) -> bool: ...

    @abc.abstractmethod
    def read(self, table: str) -> "DataFrame":
        """The table's current snapshot; `InputError` if it does not exist."""

    def read_files(self, table: str, files: Sequence[str]) -> "DataFrame":
        """The rows of some of the table's current data files (paths as `_metadata.file_path`
        gives them), reading those files only: what a chunk of a model stage reads."""
        from pyspark.sql import functions as F

        return self.read(table).where(F.col("_metadata.file_path").isin(list(files)))

    @abc.abstractmethod
    def version(self, table: str) -> int | None:
        """The table's current Delta version, None if it does not exist."""

    @abc.abstractmethod
    def tables(self) -> list[str]:
        """Physical names of the Delta tables in the lake."""

    @abc.abstractmethod
    def txn_version(self, table: str, app_id: str) -> Optional[int]:
        """The highest transaction version the table has recorded for `app_id` (None: none)."""

    def work_dir(self, name: str) -> str:
        """A scratch folder (URI) for one run's staged work, beside the tables and ignored by
        Delta readers (leading underscore); `lake.work_path` overrides it."""
        from capmix.storage import spark_path

        root = spark_path(self.cfg.work_path) if self.cfg.work_path else (
            f"dbfs:/tmp/capmix_work/{self.cfg.path}"
            if is_catalog(self.cfg.path)
            else f"{self.location_root().rstrip('/')}/_capmix_work")
        return f"{root.rstrip('/')}/{name}"

    def require(self, *tables: str) -> None:
        """One clear error naming every missing input table, before any work starts."""
        missing = [t for t in tables if not self.exists(t)]
        if missing:
            raise InputError(
                f"missing table(s) in lake {self.cfg.path}: {', '.join(missing)}"
                " (run the stage that writes them first)")

    def register_views(self) -> list[str]:
        """Expose every lake table as a temp view under its name, for `capmix sql`."""
        names = self.tables()
        logical = {self.physical(t): t for t in TABLES}
        registered = []
        for name in names:
            self.read(logical.get(name, name)).createOrReplaceTempView(name)
            registered.append(name)
        return registered

    # -- writes (each one Delta commit) -----------------------------------------------------
    @abc.abstractmethod
    def append(self, table: str, df: "DataFrame", txn: Optional[Txn] = None) -> Optional[int]:
        """Add rows; creates the table on first write. Returns rows written, or None when `txn`
        is at or below the version the table recorded for its app id (nothing written)."""

    @abc.abstractmethod
    def delete_matching(self, table: str, keys: "DataFrame", on: Sequence[str]) -> int:
        """Delete the rows whose `on` columns equal those of a row of `keys` (NULLs match NULLs),
        in one commit that rewrites only the files holding such rows. Returns rows deleted."""

    @abc.abstractmethod
    def merge(self, table: str, df: "DataFrame", keys: Sequence[str], update: bool = False,
              order_by: Sequence[str] | None = None) -> int:
        """Upsert by key. New keys are inserted; existing keys are left as they are, or replaced
        by the new row when `update`. Duplicate keys in `df` keep the first row by `order_by`
        (default: every sortable column), so re-runs choose the same row. Returns rows inserted
        or replaced."""

    @abc.abstractmethod
    def replace_where(self, table: str, df: "DataFrame", predicate: str) -> int:
        """Atomically delete the rows matching a SQL predicate and add `df` (e.g. one train set
        by name). Returns rows written."""

    @abc.abstractmethod
    def overwrite(self, table: str, df: "DataFrame") -> int:
        """Replace the whole table's contents (its history stays). Returns rows written."""


def dedupe(df: "DataFrame", keys: Sequence[str], order_by: Sequence[str] | None) -> "DataFrame":
    """One row per key, chosen deterministically (first by `order_by`)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType

    if order_by is None:
        order_by = [f.name for f in df.schema.fields if f.name not in keys
                    and not isinstance(f.dataType, (BinaryType, ArrayType, MapType, StructType))]
    if not order_by:
        return df.dropDuplicates(list(keys))
    window = Window.partitionBy(*keys).orderBy(*[F.col(c).asc_nulls_last() for c in order_by])
    return (df.withColumn("__capmix_rank", F.row_number().over(window))
            .where("__capmix_rank = 1").drop("__capmix_rank"))


def spark_has_delta(spark: "SparkSession") -> bool:
    """True when this session can read and write Delta itself (Databricks, delta-spark jars)."""
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return True
    jvm = getattr(spark, "_jvm", None) or getattr(getattr(spark, "sparkContext", None), "_jvm",
                                                   None)
    if jvm is None:  # Spark Connect: no JVM handle; Databricks serverless has Delta built in
        return True
    from capmix.jars import delta_loaded

    if not delta_loaded(jvm):
        return False
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    return "DeltaSparkSessionExtension" in extensions


_announced: set[tuple[int, str]] = set()


def _announce(spark: "SparkSession", backend: str, why: str) -> None:
    """One log line per session and backend: which lake backend runs, and why."""
    key = (id(spark), backend)
    if key not in _announced:
        _announced.add(key)
        log.info("lake: %s (%s)", "Spark's Delta Lake" if backend == "spark" else "delta-rs", why)


def open_lake(spark: "SparkSession", cfg: LakeConfig) -> Lake:
    """The lake for this session and config (backend `auto` picks Spark's Delta when the
    session has it, which every session capmix builds has once the jars are cached)."""
    backend = cfg.backend
    if backend == "auto":
        if spark_has_delta(spark):
            backend, why = "spark", "the session has Delta"
        else:
            backend, why = "delta-rs", _why_no_delta()
    else:
        why = f"lake.backend is {backend}"
    if backend == "spark":
        if not spark_has_delta(spark):
            raise InputError("lake.backend is spark, but this Spark session has no Delta Lake "
                             "(fetch the jars with `python -m capmix.jars fetch`, or start "
                             "Spark with --packages io.delta:delta-spark_2.13:<version> and "
                             "Delta's extension and catalog)")
        from capmix.lake_spark import SparkDeltaLake

        _announce(spark, "spark", why)
        return SparkDeltaLake(spark, cfg)
    if is_catalog(cfg.path):
        raise InputError(f"lake.path {cfg.path!r} names a catalog schema, which needs Spark's own "
                         "Delta support (lake.backend: spark on Databricks)")
    if _SCHEME_RE.match(cfg.path) and not cfg.path.startswith("file:"):
        raise InputError(f"lake.path {cfg.path!r}: the delta-rs backend writes local folders; "
                         "use lake.backend: spark with the Delta jars for object stores")
    from capmix.lake_deltars import DeltaRsLake

    _announce(spark, "delta-rs", why)
    return DeltaRsLake(spark, cfg)


def _why_no_delta() -> str:
    from capmix.spark import delta_conf

    conf, why = delta_conf("auto")
    return why if not conf else ("this Spark session was started without Delta's extension "
                                 "and catalog")


def conform(df: "DataFrame", schema, table: str) -> "DataFrame":
    """Select the table's columns in its order and types; a missing or extra column is an error
    (schema changes are deliberate, never a side effect of a write)."""
    have = set(df.columns)
    want = [f.name for f in schema.fields]
    missing = [c for c in want if c not in have]
    extra = [c for c in df.columns if c not in set(want)]
    if missing or extra:
        raise InputError(f"rows for table {table!r} do not match its schema: "
                         f"missing {missing or 'none'}, unexpected {extra or 'none'}")
    return df.select(*[df[f.name].cast(f.dataType).alias(f.name) for f in schema.fields])
