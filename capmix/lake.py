"""The lake: Delta tables by name, behind one interface with two backends.

- `SparkDeltaLake`: Spark's own Delta support (delta-spark jars on the classpath, Databricks).
- `DeltaRsLake`: the embedded default, where no Maven repository is reachable. Spark still does
  all the data work (it writes the parquet data files); the `deltalake` package (delta-rs) only
  commits them to the Delta log, so no row passes through the driver.

Both produce standard Delta tables. Every write is one Delta commit, so it is atomic: a crash
before the commit leaves the table at its previous version (with, at worst, unreferenced files
that `vacuum` removes).
"""
from __future__ import annotations

import abc
import os
import re
from typing import TYPE_CHECKING, Sequence

from capmix.config import TABLES, LakeConfig
from capmix.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

_CATALOG_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)?$")
_SCHEME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def is_catalog(path: str) -> bool:
    """`main.capmix` names a Unity Catalog schema; `lake`, `./lake`, `s3://b/l` are paths."""
    return "." in path and not path.startswith(".") and bool(_CATALOG_RE.match(path))


class Lake(abc.ABC):
    """Delta tables addressed by their logical name (`pool`, `captions`, ...)."""

    def __init__(self, spark: "SparkSession", cfg: LakeConfig):
        self.spark = spark
        self.cfg = cfg

    # -- naming -----------------------------------------------------------------------------
    def physical(self, table: str) -> str:
        return self.cfg.table(table)

    @abc.abstractmethod
    def location(self, table: str) -> str:
        """Where the table lives: a path/URI, or a catalog identifier."""

    # -- reads ------------------------------------------------------------------------------
    @abc.abstractmethod
    def exists(self, table: str) -> bool: ...

    @abc.abstractmethod
    def read(self, table: str) -> "DataFrame":
        """The table's current snapshot; `InputError` if it does not exist."""

    @abc.abstractmethod
    def version(self, table: str) -> int | None:
        """The table's current Delta version, None if it does not exist."""

    @abc.abstractmethod
    def tables(self) -> list[str]:
        """Physical names of the Delta tables in the lake."""

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
    def append(self, table: str, df: "DataFrame") -> int:
        """Add rows; creates the table on first write. Returns rows written."""

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
    try:
        jvm.java.lang.Class.forName("io.delta.tables.DeltaTable")
    except Exception:
        return False
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    return "DeltaSparkSessionExtension" in extensions


def open_lake(spark: "SparkSession", cfg: LakeConfig) -> Lake:
    """The lake for this session and config (backend `auto` picks Spark's Delta when present)."""
    backend = cfg.backend
    if backend == "auto":
        backend = "spark" if spark_has_delta(spark) else "delta-rs"
    if backend == "spark":
        from capmix.lake_spark import SparkDeltaLake

        return SparkDeltaLake(spark, cfg)
    if is_catalog(cfg.path):
        raise InputError(f"lake.path {cfg.path!r} names a catalog schema, which needs Spark's own "
                         "Delta support (lake.backend: spark on Databricks)")
    if _SCHEME_RE.match(cfg.path) and not cfg.path.startswith("file:"):
        raise InputError(f"lake.path {cfg.path!r}: the delta-rs backend writes local folders; "
                         "use lake.backend: spark with the Delta jars for object stores")
    from capmix.lake_deltars import DeltaRsLake

    return DeltaRsLake(spark, cfg)
