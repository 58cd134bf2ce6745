"""Load webdataset shards, image folders or parquet files into the `pool` table.

    capmix ingest --lake /tmp/l shards/{00000..00009}.tar
    capmix ingest --lake /tmp/l --format folder photos/      # images + captions.jsonl/csv
    spark-submit jobs/ingest.py --lake /tmp/l data/*.parquet

The driver lists the inputs as sorted work units (a shard; `rows_per_unit` entries of a folder;
row groups of a parquet file) and hands each unit to one Spark task, which streams it and
builds pool rows (`capmix.samples`; its docstring states the uid rule), one row per uid within
the unit. Units are committed `units_per_commit` at a time on a fixed grid, each group ONE
append with a Delta transaction id (`capmix:ingest`, capmix/chunks.py's Fence) written straight
from the reading tasks: no image crosses a shuffle. A crash leaves whole groups committed; a
re-run skips every unit whose `source` is already in the pool.

Uids repeated across units are settled once per run, at its end, from the pool's key columns
(`settle_duplicates`): the row committed first stays, then the row of the earlier unit, 'ok'
before error, the smallest key; the others are deleted in one commit that rewrites only the
files holding them. So re-ingesting the same samples adds nothing, and a killed run followed by
a re-run ends with the same rows as an uninterrupted one. Cost: one scan of the pool's `source`
column at the start and of its key columns at the end, per run, not per group.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, Optional, Sequence

from capmix import storage
from capmix.config import Config
from capmix.errors import InputError
from capmix.inputs import (FORMATS, Unit, detect_format, drop_side_files, expand_inputs,
                           plan_units)
from capmix.lake import open_lake
from capmix.progress import Progress
from capmix.tables import POOL

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")

NOUNS = {"webdataset": ("shard", "shards"), "folder": ("folder slice", "folder slices"),
         "parquet": ("parquet part", "parquet parts")}


def _plural(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


@dataclass(frozen=True)
class IngestSummary:
    units: int          # work units in the inputs
    skipped: int        # units already in the pool from an earlier run
    ok: int             # rows read with status 'ok'
    error: int          # rows read with status 'error'
    inserted: int       # rows added to the pool
    unsafe: int         # tar members ignored because their name leaves the shard's folder
    seconds: float
    noun: tuple[str, str] = ("unit", "units")
    # The image hash against the shard metadata's sha256: equal, different, or not compared
    # because the shard's bytes are not the ones hashed (img2dataset re-encodes by default).
    sha256_match: int = 0
    sha256_differ: int = 0
    sha256_skipped: int = 0
    failed_downloads: int = 0  # of the rows in error: urls img2dataset could not download

    @property
    def already_present(self) -> int:
        """Rows read whose uid was in the pool already (or repeated in the inputs)."""
        return max(0, self.ok + self.error - self.inserted)

    def line(self) -> str:
        units = _plural(self.units, *self.noun)
        if self.skipped:
            units += f" ({self.skipped:,} done before, skipped)"
        failed = (f" ({self.failed_downloads:,} failed downloads listed by the shard parquet)"
                  if self.failed_downloads else "")
        return (f"ingest: {units}, {self.ok:,} rows ok, {self.error:,} rows in error{failed}, "
                f"{_plural(self.unsafe, 'unsafe member', 'unsafe members')} ignored, "
                f"{self.already_present:,} already present ({_duration(self.seconds)})"
                + self._hash_line())

    def _hash_line(self) -> str:
        compared = self.sha256_match + self.sha256_differ
        if not (compared or self.sha256_skipped):
            return ""
        out = f"; sha256: {self.sha256_differ:,} of {compared:,} compared differ"
        if self.sha256_skipped:
            out += (f", {self.sha256_skipped:,} not compared (the shard's images were "
                    "re-encoded; img2dataset --disable_all_reencoding keeps the hashed bytes)")
        return out


def _duration(seconds: float) -> str:
    from capmix.progress import _duration as fmt

    return fmt(seconds)


# -- transforms ---------------------------------------------------------------------------------
def pool_rows(spark: "SparkSession", units: Sequence[Unit], cfg: Config,
              accumulator=None) -> "DataFrame":
    """The pool rows of `units`: one Spark task per unit, which streams the unit and keeps one
    row per uid within it (`capmix.samples.first_per_uid`). No shuffle: each image goes from
    the reader straight into the pool's data file."""
    from pyspark.sql import functions as F

    from capmix.samples import ROW_COLUMNS, RowSettings, rows_in_arrow

    settings = RowSettings(cfg.ingest.max_caption_chars, cfg.ingest.max_image_pixels)
    payload = [(u.to_json(),) for u in units]
    try:
        sc = spark.sparkContext
        frame = spark.createDataFrame(sc.parallelize(payload, len(payload)), "unit string")
    except Exception:  # Spark Connect has no SparkContext: spread units by round robin
        frame = spark.createDataFrame(payload, "unit string").repartition(len(payload))
    schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in POOL.schema().fields
                       if f.name in ROW_COLUMNS)
    rows = frame.mapInArrow(partial(rows_in_arrow, settings=settings, accumulator=accumulator),
                            schema)
    rows = rows.withColumn("ingested_at", F.lit(datetime.now(timezone.utc)))
    return POOL.conform(rows)


def duplicate_rows(pool: "DataFrame") -> "DataFrame":
    """(uid, source, key) of the pool rows that lose to another row of the same uid: the row
    committed first stays (ingested_at), then the earlier unit (source), then 'ok' before
    error, then the smallest key. Reads key columns only, never the image."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    keys = pool.select("uid", "source", "key", "status", "ingested_at")
    repeated = keys.groupBy("uid").count().where("count > 1").select("uid")
    order = [F.col("ingested_at").asc_nulls_last(), F.col("source").asc_nulls_last(),
             F.when(F.col("status") == "ok", 0).otherwise(1), F.col("key").asc_nulls_last()]
    ranked = keys.join(repeated, "uid", "left_semi").withColumn(
        "__rank", F.row_number().over(Window.partitionBy("uid").orderBy(*order)))
    return ranked.where("__rank > 1").select("uid", "source", "key")


def settle_duplicates(lake) -> int:
    """Once per run: delete the rows that repeat a uid across units (or that a killed run left
    unsettled). One scan of the pool's key columns, and a commit only when there are any."""
    if not lake.exists("pool"):
        return 0
    from pyspark import StorageLevel

    losers = duplicate_rows(lake.read("pool")).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        if losers.isEmpty():
            return 0
        return lake.delete_matching("pool", losers, ["uid", "source", "key"])
    finally:
        losers.unpersist()


# -- the job ------------------------------------------------------------------------------------
def committed_sources(lake, ids: Sequence[str]) -> set[str]:
    """Unit ids that already have rows in the pool (a unit is committed whole or not at all)."""
    if not lake.exists("pool"):
        return set()
    from pyspark.sql import functions as F

    sources = lake.read("pool").select("source")
    if len(ids) <= 10_000:  # a filter Spark pushes into the parquet scan
        sources = sources.where(F.col("source").isin(list(ids)))
    return {r[0] for r in sources.distinct().collect()} & set(ids)


def groups(units: Sequence[Unit], done: set[str], per: int) -> list[list[Unit]]:
    """Commit groups on a fixed grid over ALL units (sorted), minus the committed ones: a
    resumed run commits the same groups as the uninterrupted one would have."""
    out = []
    for i in range(0, len(units), per):
        todo = [u for u in units[i: i + per] if u.id not in done]
        if todo:
            out.append(todo)
    return out


def run(spark: "SparkSession", cfg: Config, inputs: Optional[Sequence[str]] = None,
        format: Optional[str] = None, units_per_commit: Optional[int] = None) -> IngestSummary:
    """Ingest `inputs` (default: `ingest.inputs`) into the pool; returns the summary."""
    from capmix import chunks

    started = time.monotonic()
    ic = cfg.ingest
    inputs = list(inputs if inputs is not None else ic.inputs)
    if not inputs:
        raise InputError("no inputs: give webdataset shards, image folders or parquet files")
    units, notes = plan_units(inputs, format or ic.format, ic.rows_per_unit, ic.image_column,
                              ic.text_column)
    if not units:
        raise InputError(f"no shards, images or parquet rows in: {', '.join(inputs)}")
    for note in notes:
        log.warning(note)
    kinds = {u.format for u in units}
    noun = NOUNS[kinds.pop()] if len(kinds) == 1 else ("unit", "units")
    lake = open_lake(spark, cfg.lake)
    fence = chunks.Fence(lake, "pool", "capmix:ingest")  # before reading what is committed
    done = committed_sources(lake, [u.id for u in units])
    per = units_per_commit or ic.units_per_commit or max(1, spark.sparkContext.defaultParallelism)
    todo = groups(units, done, per)  # units come sorted by (path, start)
    if done:
        log.info("ingest: %s of %s already in the pool, skipped", f"{len(done):,}",
                 _plural(len(units), *noun))

    from capmix.samples import stats_accumulator

    acc = stats_accumulator(spark.sparkContext)
    progress = Progress("ingest", len(units), noun[1], every_s=0, already=len(done))
    appended, seen = 0, {}
    for group in todo:
        appended += fence.append(pool_rows(spark, group, cfg, acc))
        seen = _report_group(progress, group, acc.value, seen, started)
    removed = settle_duplicates(lake)
    if removed:
        log.info("ingest: %s row(s) repeated a uid already in the pool; the first kept",
                 f"{removed:,}")
    stats = acc.value
    return IngestSummary(len(units), len(done), stats.get("ok", 0), stats.get("error", 0),
                         max(0, appended - removed), stats.get("unsafe", 0),
                         time.monotonic() - started, noun, stats.get("sha256_match", 0),
                         stats.get("sha256_differ", 0), stats.get("sha256_skipped", 0),
                         stats.get("failed_download", 0))


def _report_group(progress: Progress, group: Sequence[Unit], stats: dict, seen: dict,
                  started: float) -> dict:
    for name in stats.get("unsafe_names", [])[len(seen.get("unsafe_names", [])):]:
        log.warning("ingest: ignored unsafe tar member (name leaves its folder): %s", name)
    rows = stats.get("ok", 0) + stats.get("error", 0)
    rate = rows / max(time.monotonic() - started, 1e-9)
    progress.advance(len(group), f"- {stats.get('ok', 0):,} rows ok, "
                                 f"{stats.get('error', 0):,} in error, {rate:,.1f} rows/s",
                     force=True)
    return {k: (list(v) if isinstance(v, list) else v) for k, v in stats.items()}


# -- command line -------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="shards (.tar), image folders, parquet files, globs or brace "
                             "ranges like 'shards/{00000..00009}.tar' (default: ingest.inputs)")
    parser.add_argument("--format", choices=["auto", *FORMATS],
                        help="input format (default auto: by file extension / folder contents)")
    parser.add_argument("--units-per-commit", type=int, metavar="N",
                        help="work units per atomic commit (default: Spark's parallelism)")
    parser.add_argument("--rows-per-unit", type=int, metavar="N",
                        help="rows per work unit of a folder or parquet file (default 2000)")
    parser.add_argument("--max-caption-chars", type=int, metavar="N")
    parser.add_argument("--max-image-pixels", type=int, metavar="N")
    parser.add_argument("--image-column", metavar="COL", help="parquet inputs: image column")
    parser.add_argument("--text-column", metavar="COL", help="parquet inputs: caption column")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"ingest.inputs": list(args.inputs) or None, "ingest.format": args.format,
            "ingest.units_per_commit": args.units_per_commit,
            "ingest.rows_per_unit": args.rows_per_unit,
            "ingest.max_caption_chars": args.max_caption_chars,
            "ingest.max_image_pixels": args.max_image_pixels,
            "ingest.image_column": args.image_column, "ingest.text_column": args.text_column}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    """Missing inputs and unknown formats fail here, before Spark starts (a stat per path)."""
    if not cfg.ingest.inputs:
        raise InputError("no inputs: give webdataset shards, image folders or parquet files")
    for store in {storage.store_root(p) for p in cfg.ingest.inputs if storage.is_uri(p)}:
        storage.check_reachable(store, "input")
    for path in drop_side_files(expand_inputs(cfg.ingest.inputs), cfg.ingest.format)[0]:
        detect_format(path, cfg.ingest.format)


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    summary = run(spark, cfg)
    print(summary.line(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.ingest", argv)


if __name__ == "__main__":
    sys.exit(main())
