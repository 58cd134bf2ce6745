"""The embedded-default lake: Spark writes parquet data files into the table folder, delta-rs
commits them (and the files they replace) to the Delta log in one transaction.

Why not write through delta-rs directly: that would pull every row through the driver. Here the
driver only handles file names, so the same code serves a 70k-image demo and a 10M-row pool.
"""
from __future__ import annotations

import glob
import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from capmix.errors import CapmixError, InputError
from capmix.lake import Lake, dedupe

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class DeltaRsLake(Lake):
    """Delta tables in a local folder, one sub-folder per table."""

    @property
    def root(self) -> Path:
        path = self.cfg.path[len("file://"):] if self.cfg.path.startswith("file://") else self.cfg.path
        return Path(path).expanduser().resolve()

    def location(self, table: str) -> str:
        return str(self.root / self.physical(table))

    # -- reads ------------------------------------------------------------------------------
    def _table(self, table: str):
        from deltalake import DeltaTable

        loc = self.location(table)
        if not DeltaTable.is_deltatable(loc):
            return None
        return DeltaTable(loc)

    def exists(self, table: str) -> bool:
        return self._table(table) is not None

    def version(self, table: str) -> int | None:
        dt = self._table(table)
        return None if dt is None else dt.version()

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/_delta_log"))

    def read(self, table: str) -> "DataFrame":
        dt = self._table(table)
        if dt is None:
            raise InputError(f"table {table!r} does not exist in lake {self.root}")
        return self._snapshot(dt)

    def _snapshot(self, dt) -> "DataFrame":
        schema = _spark_schema(dt)
        files = ["file://" + p for p in dt.file_uris()]
        if not files:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(*files)

    # -- writes -----------------------------------------------------------------------------
    def append(self, table: str, df: "DataFrame") -> int:
        dt = self._table(table)
        return self._commit(table, [self._write_files(table, df, dt)], removes=[], dt=dt)

    def merge(self, table: str, df: "DataFrame", keys: Sequence[str], update: bool = False,
              order_by: Sequence[str] | None = None) -> int:
        source = dedupe(df, keys, order_by)
        dt = self._table(table)
        if dt is None:
            return self._commit(table, [self._write_files(table, source)], removes=[])
        current = self._snapshot(dt)
        if not update:
            fresh = source.join(current.select(*keys), list(keys), "left_anti")
            return self._commit(table, [self._write_files(table, fresh, dt)], removes=[], dt=dt)
        # Copy-on-write: rewrite only the files that hold a key being replaced. The new rows are
        # written first, so `df` is computed once; their keys are read back from those files.
        new = self._write_files(table, source, dt)
        new_keys = self._read_files(table, dt, new).select(*keys)
        touched = _with_file(current).join(new_keys, list(keys), "left_semi")
        return self._replace_files(table, dt, new, touched,
                                   keep=lambda rows: rows.join(new_keys, list(keys), "left_anti"))

    def replace_where(self, table: str, df: "DataFrame", predicate: str) -> int:
        dt = self._table(table)
        if dt is None:
            return self._commit(table, [self._write_files(table, df)], removes=[])
        from pyspark.sql import functions as F

        matches = F.coalesce(F.expr(predicate), F.lit(False))
        new = self._write_files(table, df, dt)
        touched = _with_file(self._snapshot(dt)).where(matches)
        return self._replace_files(table, dt, new, touched, keep=lambda rows: rows.where(~matches))

    def overwrite(self, table: str, df: "DataFrame") -> int:
        dt = self._table(table)
        new = self._write_files(table, df, dt)
        return self._commit(table, [new], removes=[] if dt is None else _removes(dt), dt=dt)

    def vacuum(self, table: str, retention_hours: int = 168) -> list[str]:
        """Delete files no version newer than the retention references (crashed writes too)."""
        dt = self._table(table)
        return [] if dt is None else dt.vacuum(retention_hours=retention_hours, dry_run=False,
                                               enforce_retention_duration=False)

    # -- internals --------------------------------------------------------------------------
    def _replace_files(self, table: str, dt, new: "_Written", touched: "DataFrame",
                       keep) -> int:
        """Commit `new`, removing the files that hold `touched` rows (tagged by `_with_file`)
        and re-adding their kept rows, all in one transaction."""
        files = {_local(r[0]) for r in touched.select("__file").distinct().collect()}
        removes = [a for a in _removes(dt) if os.path.join(self.location(table), a.path) in files]
        written = [new]
        if removes:
            kept = keep(self.spark.read.schema(_spark_schema(dt))
                        .parquet(*["file://" + p for p in sorted(files)]))
            written.append(self._write_files(table, kept, dt))
        return self._commit(table, written, removes=removes, dt=dt, counted=1)

    def _commit(self, table: str, written: list["_Written"], removes: list, dt=None,
                counted: int | None = None) -> int:
        """One Delta transaction: every written file added, every `removes` file removed.
        Returns the rows of the first `counted` writes (default: all)."""
        from deltalake import DeltaTable
        from deltalake.transaction import create_table_with_add_actions

        location = self.location(table)
        adds = [a for w in written for a in w.adds]
        rows = sum(w.rows for w in written[:counted])
        if dt is None and DeltaTable.is_deltatable(location):
            dt = DeltaTable(location)  # created since we looked: commit as an append
        try:
            if dt is None:
                create_table_with_add_actions(location, written[0].schema, adds, mode="error",
                                              name=self.physical(table))
            elif adds or removes:
                dt.create_write_transaction(adds + removes, mode="append", schema=dt.schema())
        except Exception as exc:  # e.g. a concurrent writer removed a file we replace
            raise CapmixError(f"commit to {table!r} failed; the table is unchanged: {exc}") from exc
        return rows

    def _write_files(self, table: str, df: "DataFrame", dt=None) -> "_Written":
        """Spark writes `df` as parquet under the table folder (not yet part of the table)."""
        import pyarrow.parquet as pq
        from deltalake import Schema
        from deltalake.transaction import AddAction

        if dt is not None:
            df = _conform(df, _spark_schema(dt), table)
        location = self.location(table)
        stage = f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:12]}"
        target = os.path.join(location, stage)
        df.write.mode("errorifexists").parquet("file://" + target)
        adds, rows = [], 0
        for path in sorted(glob.glob(os.path.join(target, "*.parquet"))):
            n = pq.ParquetFile(path).metadata.num_rows
            if n == 0:  # Spark writes a schema-only file when there are no rows
                os.remove(path)
                continue
            stat = os.stat(path)
            adds.append(AddAction(
                path=os.path.relpath(path, location), size=stat.st_size, partition_values={},
                modification_time=int(stat.st_mtime * 1000), data_change=True,
                stats=json.dumps({"numRecords": n})))
            rows += n
        for crc in glob.glob(os.path.join(target, ".*.crc")):
            os.remove(crc)  # Hadoop's local checksums; not part of the table
        return _Written(adds, rows, Schema.from_arrow(_arrow_schema(df)))

    def _read_files(self, table: str, dt, written: "_Written") -> "DataFrame":
        schema = _spark_schema(dt)
        if not written.adds:
            return self.spark.createDataFrame([], schema)
        root = self.location(table)
        return self.spark.read.schema(schema).parquet(
            *["file://" + os.path.join(root, a.path) for a in written.adds])


class _Written:
    """Files written for one commit, not yet in the table."""

    def __init__(self, adds: list, rows: int, schema):
        self.adds, self.rows, self.schema = adds, rows, schema


def _removes(dt) -> list:
    """Remove actions for every file of the current snapshot."""
    import pyarrow as pa
    from deltalake.transaction import RemoveAction

    now = int(time.time() * 1000)
    table = pa.table(dt.get_add_actions(flatten=True))
    return [RemoveAction(path=p, data_change=True, deletion_timestamp=now, size=s,
                         partition_values={})
            for p, s in zip(table.column("path").to_pylist(),
                            table.column("size_bytes").to_pylist())]


def _with_file(df: "DataFrame") -> "DataFrame":
    """Tag each row with the data file it was read from (before any join loses that)."""
    from pyspark.sql import functions as F

    return df.withColumn("__file", F.input_file_name())


def _local(uri: str) -> str:
    from urllib.parse import unquote, urlparse

    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


def _arrow_schema(df: "DataFrame"):
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    # Every column nullable: capmix's own checks guard the contract, and a NOT NULL column would
    # make later writers (Spark-with-Delta, delta-rs) reject rows capmix itself accepts.
    return pa.schema([f.with_nullable(True) for f in to_arrow_schema(df.schema)])


def _spark_schema(dt):
    import pyarrow as pa
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema(dt.schema().to_arrow()))


def _conform(df: "DataFrame", schema, table: str) -> "DataFrame":
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
