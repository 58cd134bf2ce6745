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
from typing import TYPE_CHECKING, Optional, Sequence

from capmix.errors import CapmixError, ConflictError, InputError
from capmix.lake import Lake, Txn, conform, dedupe

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


class DeltaRsLake(Lake):
    """Delta tables in a local folder, one sub-folder per table."""

    backend = "delta-rs"

    @property
    def root(self) -> Path:
        path = self.cfg.path[len("file://"):] if self.cfg.path.startswith("file://") else self.cfg.path
        return Path(path).expanduser().resolve()

    def location(self, table: str) -> str:
        return str(self.root / self.physical(table))

    def location_root(self) -> str:
        return str(self.root)

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

    def txn_version(self, table: str, app_id: str) -> Optional[int]:
        dt = self._table(table)
        return None if dt is None else dt.transaction_version(app_id)

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

    def read_files(self, table: str, files: Sequence[str]) -> "DataFrame":
        dt = self._table(table)
        if dt is None:
            raise InputError(f"table {table!r} does not exist in lake {self.root}")
        return self.spark.read.schema(_spark_schema(dt)).parquet(*files)

    # -- writes -----------------------------------------------------------------------------
    def append(self, table: str, df: "DataFrame", txn: Optional[Txn] = None) -> Optional[int]:
        dt = self._table(table)
        if txn is not None and dt is not None:
            recorded = dt.transaction_version(txn.app_id)
            if recorded is not None and recorded >= txn.version:
                return None
        return self._commit(table, [self._write_files(table, df, dt)], removes=[], dt=dt,
                            txn=txn)

    def delete_matching(self, table: str, keys: "DataFrame", on: Sequence[str]) -> int:
        from pyspark.sql import functions as F

        dt = self._table(table)
        if dt is None:
            return 0
        keys = F.broadcast(keys.select(*on).distinct())
        cond = [F.col(f"t.{k}").eqNullSafe(F.col(f"k.{k}")) for k in on]
        match = cond[0]
        for c in cond[1:]:
            match = match & c
        current = _with_file(self._snapshot(dt))
        touched = current.alias("t").join(keys.alias("k"), match, "left_semi")
        files = {_local(r[0]) for r in touched.select("__file").distinct().collect()}
        if not files:
            return 0
        removes = [a for a in _removes(dt) if os.path.join(self.location(table), a.path) in files]
        old = self.spark.read.schema(_spark_schema(dt)).parquet(
            *["file://" + p for p in sorted(files)])
        kept = old.alias("t").join(keys.alias("k"), match, "left_anti")
        written = self._write_files(table, kept, dt)
        deleted = old.count() - written.rows
        self._commit(table, [written], removes=removes, dt=dt)
        return deleted

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
                counted: int | None = None, txn: Optional[Txn] = None) -> Optional[int]:
        """One Delta transaction: every written file added, every `removes` file removed,
        with `txn` recorded. Returns the rows of the first `counted` writes (default: all), or
        None when another writer committed `txn`'s version first."""
        from deltalake import CommitProperties, DeltaTable, Transaction
        from deltalake.transaction import create_table_with_add_actions

        location = self.location(table)
        adds = [a for w in written for a in w.adds]
        rows = sum(w.rows for w in written[:counted])
        if dt is None and DeltaTable.is_deltatable(location):
            dt = DeltaTable(location)  # created since we looked: commit as an append
        props = None if txn is None else CommitProperties(
            app_transactions=[Transaction(app_id=txn.app_id, version=txn.version)])
        try:
            if dt is None:
                create_table_with_add_actions(location, written[0].schema, adds, mode="error",
                                              name=self.physical(table), commit_properties=props)
            elif adds or removes or txn is not None:
                if txn is not None:
                    dt.update_incremental()
                    recorded = dt.transaction_version(txn.app_id)
                    if recorded is not None and recorded >= txn.version:
                        return None
                dt.create_write_transaction(adds + removes, mode="append", schema=dt.schema(),
                                            commit_properties=props)
        except Exception as exc:  # e.g. a concurrent writer removed a file we replace
            text = f"{type(exc).__name__}: {exc}"
            if "oncurrent" in text or "onflict" in text or "already exists" in text:
                raise ConflictError(f"table {table!r}: another writer committed to it at the "
                                    f"same time ({text[:160]}); nothing of this step was "
                                    "committed, re-run to finish the work") from None
            raise CapmixError(f"commit to {table!r} failed; the table is unchanged: {exc}") from exc
        return rows

    def _write_files(self, table: str, df: "DataFrame", dt=None) -> "_Written":
        """Spark writes `df` as parquet under the table folder (not yet part of the table)."""
        import pyarrow.parquet as pq
        from deltalake import Schema
        from deltalake.transaction import AddAction

        if dt is not None:
            df = conform(df, _spark_schema(dt), table)
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
