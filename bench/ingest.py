"""Ingest throughput: webdataset shards -> pool, and how rows leave the Python workers.

    python -m bench.ingest [--shards 4] [--per-shard 500] [--size 128] [--repeats 3]

Builds shards of Fashion-MNIST photos (upscaled JPEGs, so decoding costs what a small web image
costs), then times, side by side in one Spark session:
- `arrow`: the job's way, `mapInArrow` yielding Arrow batches of pool rows;
- `rows`: an RDD `flatMap` of Python rows turned into a DataFrame (pickled rows);
- `python`: the readers alone in one process, no Spark (the per-core ceiling).
Each Spark variant does the whole commit (one Delta append, as the job does) into a fresh lake.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.report import median, write_section


def build_shards(root: Path, shards: int, per_shard: int, size: int) -> list[Path]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from pools import Sample, caption_for, encode, sample_pictures

    paths = []
    for s in range(shards):
        pics = sample_pictures(per_shard, offset=(s * per_shard) % 9000)
        samples = [Sample(f"{s:05d}{i:05d}", encode(img.resize((size, size)), "jpeg", quality=90),
                          text=caption_for(label), json={"url": f"https://e.x/{s}/{i}.jpg"})
                   for i, (img, label) in enumerate(pics)]
        from pools import make_shard

        paths.append(make_shard(root / "shards", f"{s:05d}", samples))
    return paths


def rows_variant(spark, units, cfg):
    """The alternative: Python dict rows through an RDD, pickled into the JVM."""
    from datetime import datetime, timezone

    from pyspark.sql import functions as F

    from capmix.samples import ROW_COLUMNS, RowSettings, unit_rows
    from capmix.tables import POOL

    settings = RowSettings(cfg.ingest.max_caption_chars, cfg.ingest.max_image_pixels)
    schema = ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in POOL.schema().fields
                       if f.name in ROW_COLUMNS)
    rdd = spark.sparkContext.parallelize(units, len(units)).flatMap(
        lambda u: ([r[c] for c in ROW_COLUMNS] for r in unit_rows(u, settings)))
    df = spark.createDataFrame(rdd, schema).withColumn(
        "ingested_at", F.lit(datetime.now(timezone.utc)))
    return POOL.conform(df)


def time_spark(spark, cfg, units, variant: str, lake_dir: Path) -> float:
    import dataclasses

    from capmix.lake import open_lake
    from jobs.ingest import pool_rows

    shutil.rmtree(lake_dir, ignore_errors=True)
    lake = open_lake(spark, dataclasses.replace(cfg.lake, path=str(lake_dir)))
    started = time.perf_counter()
    df = pool_rows(spark, units, cfg) if variant == "arrow" else rows_variant(spark, units, cfg)
    lake.append("pool", df)
    return time.perf_counter() - started


def time_python(cfg, units) -> float:
    from capmix.samples import RowSettings, unit_rows

    settings = RowSettings(cfg.ingest.max_caption_chars, cfg.ingest.max_image_pixels)
    started = time.perf_counter()
    for u in units:
        for _ in unit_rows(u, settings):
            pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=500)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from capmix.config import from_dict
    from capmix.inputs import plan_units
    from capmix.spark import get_or_create

    root = Path(tempfile.mkdtemp(prefix="capmix-bench-ingest-"))
    try:
        paths = build_shards(root, args.shards, args.per_shard, args.size)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        rows = args.shards * args.per_shard
        cfg = from_dict({"spark": {"master": args.master}, "lake": {"path": str(root / "l")}})
        units, _ = plan_units([str(root / "shards")])
        spark, _ = get_or_create(cfg.spark)
        time_spark(spark, cfg, units[:1], "arrow", root / "warm")  # JVM and worker warm-up
        times: dict[str, list[float]] = {"arrow": [], "rows": [], "python": []}
        for _ in range(args.repeats):
            for variant in ("arrow", "rows"):
                times[variant].append(time_spark(spark, cfg, units, variant, root / variant))
            times["python"].append(time_python(cfg, units))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = [f"{args.shards} shards x {args.per_shard} samples ({rows:,} rows, {mb:.1f} MB of "
             f"{args.size}x{args.size} JPEG), Spark `{args.master}`, median of {args.repeats}:",
             "", "| variant | seconds | rows/s | MB/s |", "| --- | ---: | ---: | ---: |"]
    for variant, label in (("arrow", "mapInArrow (the job)"), ("rows", "RDD flatMap of rows"),
                           ("python", "readers alone, 1 process, no Spark")):
        t = median(times[variant])
        lines.append(f"| {label} | {t:.2f} | {rows / t:,.0f} | {mb / t:.1f} |")
    load = os.getloadavg()[0]
    lines += ["", f"Load average when done: {load:.1f} on {os.cpu_count()} cores. At this size,"
              " Spark's fixed costs per commit (parquet write, Delta commit) dominate; per-row "
              "work is the readers' (image decode + sha256)."]
    body = "## Ingest (`bench/ingest.py`)\n\n" + "\n".join(lines)
    print(body)
    write_section("ingest", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
