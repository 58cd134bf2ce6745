"""The default lake: Spark's own Delta Lake (delta-spark jars, or Databricks' built-in Delta).

Tables are paths under `lake.path` (a folder, s3a://..., abfss://..., dbfs:/...) or, when
`lake.path` is `catalog.schema`, managed Unity Catalog tables `catalog.schema.<table>`.
Each write below is one Delta operation, hence one atomic commit. Every commit carries a fresh
`userMetadata` token, so the writer finds its own commit in the history (its row count, or
that Delta skipped it for its transaction id) even when other writers commit at the same time.
"""
from __future__ import annotations

import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Optional, Sequence

from capmix import storage
from capmix.config import TABLES
from capmix.errors import CapmixError, ConflictError, InputError
from capmix.lake import Lake, Txn, conform, dedupe, is_catalog

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger("capmix")


class SparkDeltaLake(Lake):
    """Delta tables through delta-spark."""

    backend = "spark"

    @property
    def catalog(self) -> bool:
        return is_catalog(self.cfg.path)

    def location(self, table: str) -> str:
        name = self.physical(table)
        if self.catalog:
            return f"{self.cfg.path}.{name}"
        return f"{self.location_root().rstrip('/')}/{name}"

    def location_root(self) -> str:
        # A plain folder becomes absolute: the session catalog needs absolute LOCATIONs, and
        # Spark and delta-rs must agree on where a relative `lake` is.
        # An object store's URI is named as Hadoop names it (s3:// -> s3a://).
        path = self.cfg.path
        if path.startswith("file:"):
            return path
        return storage.spark_path(path)

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

    def read_files(self, table: str, files: Sequence[str]) -> "DataFrame":
        """Delta does not prune files on `_metadata.file_path` filters (the scan reads every
        file), so a chunk reads its files as plain parquet, which is exact while the table has
        no deletion vectors, column mapping or partitions; otherwise through Delta, unpruned."""
        if not self._plain_parquet(table):
            return super().read_files(table, files)
        return self.spark.read.schema(self.read(table).schema).parquet(*files)

    def _plain_parquet(self, table: str) -> bool:
        detail = self.spark.sql(f"DESCRIBE DETAIL {self._sql_name(table)}").collect()[0]
        props = detail["properties"] or {}
        features = set(detail["tableFeatures"] or []) if "tableFeatures" in detail else set()
        plain = (not detail["partitionColumns"] and "deletionVectors" not in features
                 and props.get("delta.enableDeletionVectors", "false") != "true"
                 and props.get("delta.columnMapping.mode", "none") == "none")
        if not plain:
            log.warning("table %r has deletion vectors, column mapping or partitions: each "
                        "chunk reads it whole through Delta", table)
        return plain

    def _sql_name(self, table: str) -> str:
        if self.catalog:
            return self.location(table)
        return f"delta.`{_sql_str(self.location(table)).replace('`', '``')}`"

    def version(self, table: str) -> int | None:
        if not self.exists(table):
            return None
        return self._delta_table(table).history(1).collect()[0]["version"]

    def tables(self) -> list[str]:
        if self.catalog:
            return sorted(t.name for t in self.spark.catalog.listTables(self.cfg.path))
        return sorted(self.physical(t) for t in TABLES if self.exists(t))

    def txn_version(self, table: str, app_id: str) -> Optional[int]:
        """From the table's latest snapshot (Delta keeps the last version per app id in its
        log and checkpoints). Python has no API for it, so this asks the JVM's DeltaLog."""
        if not self.exists(table):
            return None
        jvm = getattr(self.spark, "_jvm", None)
        if jvm is None:
            raise CapmixError("this stage needs a classic Spark session (Spark Connect cannot "
                              "read Delta transaction identifiers)")
        path = self.location(table)
        if self.catalog:
            path = self.spark.sql(f"DESCRIBE DETAIL {path}").collect()[0]["location"]
        delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(
            self.spark._jsparkSession, path)
        none = jvm.scala.Option.empty()
        found = delta_log.update(False, none, none).transactions().get(app_id)
        return int(found.get()) if found.isDefined() else None

    def register_views(self) -> list[str]:
        """Every lake table as a real Delta table of the session catalog, so `capmix sql` has
        Delta's SQL: `VERSION AS OF`, `DESCRIBE HISTORY`, `DESCRIBE DETAIL`. A catalog.schema
        lake's tables are catalog tables already: queries run with it as current schema."""
        if self.catalog:
            return self.tables()
        registered = []
        logical = {self.physical(t): t for t in TABLES}
        for name in self.tables():
            location = self.location(logical.get(name, name))
            self.spark.catalog.dropTempView(name)  # a view would shadow the table
            if self.spark.catalog.tableExists(name):
                if _table_location(self.spark, name) == _normal(location):
                    registered.append(name)
                    continue
                if self.spark.catalog.getTable(name).tableType != "EXTERNAL":
                    continue  # the user's own managed table: never dropped
                self.spark.sql(f"DROP TABLE `{name}`")  # external: the entry only, not data
            self.spark.sql(f"CREATE TABLE `{name}` USING DELTA LOCATION '{_sql_str(location)}'")
            registered.append(name)
        return registered

    # -- writes -----------------------------------------------------------------------------
    def _save(self, df: "DataFrame", table: str, mode: str, **options: str) -> Optional[int]:
        """One write; returns its numOutputRows, or None when Delta skipped it (txn)."""
        token = f"capmix-{uuid.uuid4().hex}"
        before = self.version(table)
        if before is not None and (mode == "append" or "replaceWhere" in options):
            df = conform(df, self.read(table).schema, table)
        writer = df.write.format("delta").mode(mode).option("userMetadata", token)
        for key, value in options.items():
            writer = writer.option(key, value)
        try:
            if self.catalog:
                writer.saveAsTable(self.location(table))
            else:
                writer.save(self.location(table))
        except Exception as exc:
            raise _conflict(table, exc) or exc
        return self._own_rows(table, token, before, "numOutputRows")

    def _own_rows(self, table: str, token: str, before: Optional[int],
                  *metrics: str) -> Optional[int]:
        """The sum of `metrics` of the commit tagged `token` made after version `before`, or
        None when there is no such commit (Delta skipped the write for its txn id)."""
        now = self.version(table)
        if now is None or (before is not None and now <= before):
            return None
        span = now - (before if before is not None else -1)
        for row in self._delta_table(table).history(span).collect():
            if row["userMetadata"] == token:
                values = row["operationMetrics"] or {}
                return sum(int(values.get(name, 0)) for name in metrics)
        return None

    def append(self, table: str, df: "DataFrame", txn: Optional[Txn] = None) -> Optional[int]:
        if txn is None:
            return self._save(df, table, "append") or 0
        recorded = self.txn_version(table, txn.app_id)
        if recorded is not None and recorded >= txn.version:
            return None
        return self._save(df, table, "append", txnAppId=txn.app_id,
                          txnVersion=str(txn.version))

    def overwrite(self, table: str, df: "DataFrame") -> int:
        return self._save(df, table, "overwrite") or 0

    def replace_where(self, table: str, df: "DataFrame", predicate: str) -> int:
        if not self.exists(table):
            return self.append(table, df) or 0
        # The contract: delete what matches, add `df` (whose rows need not match: Delta's
        # own check would refuse, e.g., moving rows from one set name to another).
        with _session_conf(self.spark, "spark.databricks.delta.replaceWhere.constraintCheck"
                                       ".enabled", "false"):
            return self._save(df, table, "overwrite", replaceWhere=predicate) or 0

    def merge(self, table: str, df: "DataFrame", keys: Sequence[str], update: bool = False,
              order_by: Sequence[str] | None = None) -> int:
        source = dedupe(df, keys, order_by)
        if not self.exists(table):
            return self.append(table, source) or 0
        source = conform(source, self.read(table).schema, table)
        condition = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        token, before = f"capmix-{uuid.uuid4().hex}", self.version(table)
        builder = self._delta_table(table).alias("t").merge(source.alias("s"), condition)
        if update:
            builder = builder.whenMatchedUpdateAll()
        self._with_metadata(token, lambda: builder.whenNotMatchedInsertAll().execute(), table)
        return self._own_rows(table, token, before, "numTargetRowsInserted",
                              "numTargetRowsUpdated") or 0

    def delete_matching(self, table: str, keys: "DataFrame", on: Sequence[str]) -> int:
        if not self.exists(table):
            return 0
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in on)
        token, before = f"capmix-{uuid.uuid4().hex}", self.version(table)
        source = keys.select(*on).distinct()
        builder = (self._delta_table(table).alias("t").merge(source.alias("s"), condition)
                   .whenMatchedDelete())
        self._with_metadata(token, builder.execute, table)
        return self._own_rows(table, token, before, "numTargetRowsDeleted") or 0

    def _with_metadata(self, token: str, action, table: str) -> None:
        """Run a DeltaTable operation (no writer options) with `token` as its userMetadata."""
        with _session_conf(self.spark, "spark.databricks.delta.commitInfo.userMetadata", token):
            try:
                action()
            except Exception as exc:
                raise _conflict(table, exc) or exc


@contextlib.contextmanager
def _session_conf(spark, key: str, value: str):
    """`key` set to `value` for the duration of one operation, then restored."""
    saved = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if saved is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, saved)


def _conflict(table: str, exc: Exception) -> Optional[ConflictError]:
    """Delta's optimistic-concurrency failures as one clear ConflictError (exit code 2)."""
    text = f"{type(exc).__name__}: {exc}"
    for name in ("ConcurrentTransactionException", "ConcurrentAppendException",
                 "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
                 "MetadataChangedException", "ProtocolChangedException",
                 "ConcurrentWriteException", "DELTA_CONCURRENT"):
        if name in text:
            return ConflictError(
                f"table {table!r}: another writer committed to it at the same time "
                f"({name}); nothing of this step was committed, re-run to finish the work")
    return None


def _sql_str(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _normal(location: str) -> str:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(location)
    path = unquote(parsed.path) if parsed.scheme in ("", "file") else location
    return path.rstrip("/")


def _table_location(spark, name: str) -> Optional[str]:
    try:
        return _normal(spark.sql(f"DESCRIBE DETAIL `{name}`").collect()[0]["location"])
    except Exception:
        return None
