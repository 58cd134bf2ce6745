"""Export a train set as a Petastorm-readable parquet dataset for the torch trainer.

    capmix export --train-set raw_top30 --out /data/exports/raw_top30
    capmix export --train-set mix50 --out /data/exports/mix50_clips --clips --captioner blip2

Format: plain parquet (uid, source, text, raw_text, [synthetic_text], similarity, image bytes),
read with petastorm's `make_batch_reader`. Why not `make_reader`: it needs a Unischema pickled
into the dataset by `materialize_dataset`, and its image codecs would decode and re-encode every
image on the executors. `make_batch_reader` reads any parquet of standard types a whole row group
at a time (vectorised Arrow, sharded and shuffled by row group), and its TransformSpec runs in the
loader workers, which is where the trainer decodes and augments the original JPEG/PNG bytes. The
export also stays readable by Spark, pandas and duckdb, without petastorm's metadata.

Spark moves the bytes executor to file: no image is decoded or rewritten on the driver. The pool
scan keeps only the train set's images (its uids broadcast, up to `export.broadcast_rows`), and
each image crosses one shuffle, which also spreads rows over files by a hash of uid; inside each
file rows are ordered by another hash, so row groups hold a random mix (the mixing SQL may have
ordered the train set by score). The
dataset appears under `--out` in one rename once complete (local paths), with a small
`_capmix_export.json` (ignored by parquet readers: leading underscore) recording the pool size,
which is the trainer's default budget of samples seen.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from capmix import storage
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import Lake, open_lake
from capmix.spark import observed

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# Read by training/data.py (which may not import jobs): keep the two names in step.
METADATA_FILE = "_capmix_export.json"


@dataclass(frozen=True)
class ExportResult:
    path: str
    train_set: str
    rows: int
    dropped: int  # train-set rows without an ok image in the pool
    files: int
    row_groups: int
    bytes: int
    pool_rows: int
    clips: bool
    missing_synthetic: int  # CLIPS rows with no synthetic caption (the trainer uses the raw one)


# --------------------------------------------------------------------------------------------
# Transforms (DataFrame -> DataFrame)


def join_images(keys: "DataFrame", pool: "DataFrame", files: int,
                broadcast_uids: bool) -> "DataFrame":
    """Train-set rows (no images yet: uid, source, text, ... ) with their image bytes and raw
    caption, hash-partitioned on uid into `files` partitions; rows whose image is not ok drop.

    Each selected image moves once: the pool scan keeps only the train set's uids (a broadcast
    semi-join, when `broadcast_uids`), then one shuffle puts it in its output file's partition;
    the train-set side is partitioned the same way, so the join adds no second exchange."""
    from pyspark.sql import functions as F

    images = (pool.where(F.col("status") == "ok")
              .select("uid", F.col("text").alias("raw_text"), "image"))
    if broadcast_uids:
        images = images.join(F.broadcast(keys.select("uid").distinct()), "uid", "left_semi")
    return (images.repartition(files, "uid")
            .join(keys.repartition(files, "uid"), "uid", "inner"))


def parse_captioner(spec: str) -> tuple[str, Optional[int]]:
    """"blip2" -> ("blip2", None); "blip2:3" -> ("blip2", 3)."""
    name, sep, sample = spec.rpartition(":")
    if sep and sample.isdigit() and name:
        return name, int(sample)
    return spec, None


def add_synthetic(rows: "DataFrame", captions: "DataFrame", captioner: str,
                  sample: Optional[int]) -> "DataFrame":
    """CLIPS: one row per image, with the full synthetic caption the decoder learns to produce.

    A row whose source names a caption (`CAPTIONER:SAMPLE`) uses that caption; other rows use
    `captioner` (its given sample, else its lowest sample). Missing captions stay NULL."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    caps = captions.select("uid", "captioner", "sample", "text")
    own = caps.select("uid", F.concat_ws(":", "captioner", F.col("sample").cast("string"))
                      .alias("source"), F.col("text").alias("own_text"))
    chosen = caps.where(F.col("captioner") == captioner)
    if sample is not None:
        chosen = chosen.where(F.col("sample") == sample)
    default = (chosen.groupBy("uid")
               .agg(F.min_by("text", "sample").alias("default_text")))
    joined = (rows.join(own, ["uid", "source"], "left").join(default, "uid", "left")
              .withColumn("synthetic_text", F.coalesce("own_text", "default_text")))
    # A uid may appear once per source in a train set; CLIPS trains on images, so keep one row:
    # the one whose own source is a caption first, then by source name (deterministic).
    window = Window.partitionBy("uid").orderBy(F.col("own_text").isNull(),
                                               F.col("synthetic_text").isNull(), "source")
    return (joined.withColumn("_rank", F.row_number().over(window))
            .where("_rank = 1").drop("_rank", "own_text", "default_text"))


def layout(df: "DataFrame", clips: bool) -> "DataFrame":
    """Column order of the export (image last: readers skip it cheaply) and a random but
    deterministic order within each file. `df` comes hash-partitioned on uid (`join_images`):
    one partition per output file, so rows are spread over files with no further shuffle."""
    from pyspark.sql import functions as F

    cols = ["uid", "source", "text", "raw_text"] + (["synthetic_text"] if clips else [])
    cols += ["similarity", "image"]
    order = F.xxhash64("source", "uid", F.lit("capmix-export"))
    return df.select(*cols).sortWithinPartitions(order)


# --------------------------------------------------------------------------------------------
# run


def run(spark: "SparkSession", cfg: Config, train_set: str, out: str,
        overwrite: bool = False) -> ExportResult:
    """Write train set `train_set` to `out` (a folder or URI) as a Petastorm-readable dataset."""
    from pyspark import StorageLevel
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    ecfg = cfg.export
    local = _local_path(out)
    if not overwrite and (local.exists() if local is not None else storage.exists(out)):
        raise InputError(f"{out} already exists (pass --overwrite to replace it)")
    lake = open_lake(spark, cfg.lake)
    lake.require("train_sets", "pool", *(["captions"] if ecfg.clips else []))
    # The train set is read from the lake once and kept (narrow rows, memory then local disk):
    # its size, the CLIPS caption lookup, the broadcast uids and the join all use it.
    train = (lake.read("train_sets").where(F.col("name") == train_set)
             .select("uid", "source", "text", "similarity")
             .persist(StorageLevel.MEMORY_AND_DISK))
    keys = None
    try:
        train_rows = train.count()
        if train_rows == 0:
            names = [r[0] for r in lake.read("train_sets").select("name").distinct()
                     .orderBy("name").limit(20).collect()]
            raise InputError(f"train set {train_set!r} not found in train_sets; known: "
                             f"{', '.join(names) or '(none)'}")
        keys = train.where(F.col("text").isNotNull())
        captioner = None
        if ecfg.clips:  # the caption lookup runs on the keys, before any image joins them
            captioner = _default_captioner(lake, ecfg.captioner)
            keys = add_synthetic(keys, lake.read("captions"), *parse_captioner(captioner))
        keys = keys.persist(StorageLevel.MEMORY_AND_DISK)
        # Rows the export would have if every image were ok (CLIPS keeps one row per image).
        expected = keys.count()
        files = max(ecfg.min_files, math.ceil(train_rows / ecfg.rows_per_file))
        # The pool's ok rows (the trainer's default budget: samples seen = pool size, as in
        # DataComp) are counted on the way through the one scan the export makes of the pool.
        seen = Observation("capmix-export-pool")
        pool = lake.read("pool").observe(
            seen, F.count(F.when(F.col("status") == "ok", 1)).alias("ok"))
        rows = join_images(keys, pool, files, expected <= ecfg.broadcast_rows)

        target = str(local) if local is not None else out
        staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}" if local is not None else target
        stats = _write(layout(rows, ecfg.clips), staging, ecfg,
                       "overwrite" if overwrite or local is not None else "errorifexists")
        pool_rows = 0 if stats["rows"] == 0 else observed(
            seen, "ok", lambda: lake.read("pool").where(F.col("status") == "ok").count())
    finally:
        for frame in (keys, train):
            if frame is not None:
                frame.unpersist()
    if stats["rows"] == 0:
        if local is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise InputError(f"train set {train_set!r}: none of its images is ok in the pool; "
                         "nothing exported")
    result = ExportResult(
        path=target, train_set=train_set, rows=stats["rows"], dropped=expected - stats["rows"],
        files=stats["files"], row_groups=stats["row_groups"], bytes=stats["bytes"],
        pool_rows=pool_rows, clips=ecfg.clips, missing_synthetic=stats["missing_synthetic"])
    meta = {**asdict(result), "format": "capmix-export-v1", "captioner": captioner,
            "columns": stats["columns"], "row_group_mb": ecfg.row_group_mb,
            "lake": cfg.lake.path, "versions": {t: lake.version(t) for t in
                                                ("train_sets", "pool", "captions")},
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_text(f"{staging}/{METADATA_FILE}", json.dumps(meta, indent=1))
    if local is not None:
        _publish(Path(staging), local)
    return result


def _write(df: "DataFrame", path: str, ecfg, mode: str) -> dict[str, Any]:
    """Spark writes the files (row groups capped by parquet.block.size); footers -> stats."""
    codec = "uncompressed" if ecfg.compression == "none" else ecfg.compression
    (df.write.mode(mode)
     .option("parquet.block.size", str(int(ecfg.row_group_mb * 2**20)))
     .option("compression", codec)
     .parquet(_spark_uri(path)))
    return describe(path, with_missing=ecfg.clips)


def _default_captioner(lake: Lake, configured: Optional[str]) -> str:
    if configured:
        return configured
    names = [r[0] for r in lake.read("captions").select("captioner").distinct()
             .orderBy("captioner").collect()]
    if len(names) != 1:
        raise InputError(
            "captions holds " + (f"several captioners ({', '.join(names)})" if names
                                 else "no captions")
            + ": choose the synthetic caption CLIPS decodes with --captioner NAME[:SAMPLE]")
    return names[0]


def describe(path: str, with_missing: bool = False) -> dict[str, Any]:
    """Files, rows, row groups and bytes of a parquet folder, from the footers only."""
    import pyarrow.parquet as pq

    fs, root = _filesystem(path)
    from pyarrow.fs import FileSelector

    infos = [i for i in fs.get_file_info(FileSelector(root, recursive=True))
             if i.is_file and i.path.endswith(".parquet")
             and not os.path.basename(i.path).startswith(("_", "."))]
    rows = groups = size = missing = 0
    columns: list[str] = []
    for info in infos:
        with fs.open_input_file(info.path) as fh:
            pf = pq.ParquetFile(fh)
            rows += pf.metadata.num_rows
            groups += pf.metadata.num_row_groups
            columns = columns or pf.schema_arrow.names
            if with_missing and "synthetic_text" in pf.schema_arrow.names:
                missing += pf.read(columns=["synthetic_text"]).column(0).null_count
        size += info.size
    return {"files": len(infos), "rows": rows, "row_groups": groups, "bytes": size,
            "columns": columns, "missing_synthetic": missing}


def _local_path(out: str) -> Optional[Path]:
    """The export's local folder, or None for an object store's URI (written in place there:
    stores have no atomic rename; the metadata file, written last, marks it complete)."""
    if storage.is_uri(out) and not storage.is_local(out):
        return None
    return Path(storage.local_path(out)).resolve()


def _spark_uri(path: str) -> str:
    return "file://" + path if path.startswith("/") else storage.spark_path(path)


def _filesystem(path: str):
    return storage.pyarrow_fs(path)


def _write_text(path: str, text: str) -> None:
    fs, p = _filesystem(path)
    with fs.open_output_stream(p) as fh:
        fh.write(text.encode("utf-8"))


def _publish(staging: Path, target: Path) -> None:
    """Make the finished export visible under its name in one rename; an old one is moved
    aside first and removed after, so readers never see a half-written dataset."""
    old = None
    if target.exists():
        old = target.with_name(f"{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-set", required=True, metavar="NAME",
                        help="the train set (train_sets.name) to export")
    parser.add_argument("--out", required=True, metavar="PATH",
                        help="the dataset folder or URI to write")
    parser.add_argument("--clips", action="store_true", default=None,
                        help="add the raw and full synthetic caption for CLIPS training")
    parser.add_argument("--captioner", metavar="NAME[:SAMPLE]",
                        help="the synthetic caption CLIPS decodes (default: see export.captioner)")
    parser.add_argument("--row-group-mb", type=float, metavar="MB",
                        help="parquet row-group size (default 32)")
    parser.add_argument("--min-files", type=int, metavar="N",
                        help="at least this many files (>= the number of training ranks)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"export.clips": args.clips, "export.captioner": args.captioner,
            "export.row_group_mb": args.row_group_mb, "export.min_files": args.min_files}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    if not args.train_set.strip():
        raise InputError("--train-set must not be empty")
    storage.check_reachable(args.out, "export")
    local = _local_path(args.out)
    if not args.overwrite and (local.exists() if local is not None else storage.exists(args.out)):
        raise InputError(f"{args.out} already exists (pass --overwrite to replace it)")


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    started = time.monotonic()
    res = run(spark, cfg, args.train_set, args.out, overwrite=args.overwrite)
    extra = f", {res.missing_synthetic:,} without a synthetic caption" if res.clips else ""
    print(f"[export] {res.train_set}: {res.rows:,} rows ({res.dropped:,} dropped: no ok image"
          f"{extra}) in {res.files} files / {res.row_groups} row groups, "
          f"{res.bytes / 2**20:,.1f} MB -> {res.path} ({time.monotonic() - started:.0f}s; "
          f"pool {res.pool_rows:,} = default samples seen)")
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.export", argv)


if __name__ == "__main__":
    sys.exit(main())
