"""The cluster lake: Spark's own Delta support (Databricks, or delta-spark jars on the classpath).

Tables are paths under `lake.path` (s3a://..., abfss://..., dbfs:/..., a folder) or, when
`lake.path` is `catalog.schema`, managed Unity Catalog tables `catalog.schema.<table>`.
Each write below is one Delta operation, hence one atomic commit.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from capmix.errors import InputError
from capmix.lake import Lake, dedupe, is_catalog

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class SparkDeltaLake(Lake):
    """Delta tables through delta-spark."""

    @property
    def catalog(self) -> bool:
        return is_catalog(self.cfg.path)

    def location(self, table: str) -> str:
        name = self.physical(table)
        if self.catalog:
            return f"{self.cfg.path}.{name}"
        return f"{self.cfg.path.rstrip('/')}/{name}"

    def _delta_table(self, table: str):
        from delta.tables import DeltaTable

        if self.catalog:
            return DeltaTable.forName(self.spark, self.location(table))
        return DeltaTable.forPath(self.spark, self.location(table))

    def exists(self, table: str) -> bool:
        if self.catalog:
            return self.spark.catalog.tableExists(self.location(table))
        from delta.tables import DeltaTable

        return DeltaTable.isDeltaTable(self.spark, self.location(table))

    def read(self, table: str) -> "DataFrame":
        if not self.exists(table):
            raise InputError(f"table {table!r} does not exist in lake {self.cfg.path}")
        if self.catalog:
            return self.spark.table(self.location(table))
        return self.spark.read.format("delta").load(self.location(table))

    def version(self, table: str) -> int | None:
        if not self.exists(table):
            return None
        return self._delta_table(table).history(1).collect()[0]["version"]

    def tables(self) -> list[str]:
        if self.catalog:
            return sorted(t.name for t in self.spark.catalog.listTables(self.cfg.path))
        from capmix.config import TABLES

        return sorted(self.physical(t) for t in TABLES if self.exists(t))

    # -- writes -----------------------------------------------------------------------------
    def _save(self, df: "DataFrame", table: str, mode: str, **options: str) -> None:
        writer = df.write.format("delta").mode(mode)
        for key, value in options.items():
            writer = writer.option(key, value)
        if self.catalog:
            writer.saveAsTable(self.location(table))
        else:
            writer.save(self.location(table))

    def _last_metric(self, table: str, *names: str) -> int:
        metrics = self._delta_table(table).history(1).collect()[0]["operationMetrics"] or {}
        return sum(int(metrics.get(n, 0)) for n in names)

    def append(self, table: str, df: "DataFrame") -> int:
        self._save(df, table, "append")
        return self._last_metric(table, "numOutputRows")

    def overwrite(self, table: str, df: "DataFrame") -> int:
        self._save(df, table, "overwrite")
        return self._last_metric(table, "numOutputRows")

    def replace_where(self, table: str, df: "DataFrame", predicate: str) -> int:
        if not self.exists(table):
            return self.append(table, df)
        self._save(df, table, "overwrite", replaceWhere=predicate)
        return self._last_metric(table, "numOutputRows")

    def merge(self, table: str, df: "DataFrame", keys: Sequence[str], update: bool = False,
              order_by: Sequence[str] | None = None) -> int:
        source = dedupe(df, keys, order_by)
        if not self.exists(table):
            return self.append(table, source)
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        builder = self._delta_table(table).alias("t").merge(source.alias("s"), condition)
        if update:
            builder = builder.whenMatchedUpdateAll()
        builder.whenNotMatchedInsertAll().execute()
        return self._last_metric(table, "numTargetRowsInserted", "numTargetRowsUpdated")
