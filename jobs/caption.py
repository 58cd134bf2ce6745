"""Caption every usable image of the pool into `captions` (key uid, captioner, sample).

    capmix caption --captioner tiny-coca --samples 2
    capmix caption --captioner blip2-opt-2.7b --temperature 0.75 --samples 1      # on GPUs

Resumable and exactly-once: the pool is processed in chunks of whole data files, each chunk one
atomic commit; a re-run (or a run after a kill) skips the uids whose captions are all there.
Images in error (status != 'ok') are skipped and left as they are. Every row records the model,
prompt and sampling settings it was made with, and its own seed, so it can be reproduced.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from capmix import chunks
from capmix.config import CaptionConfig, Config
from capmix.errors import InputError
from capmix.lake import Lake, open_lake
from capmix.tables import CAPTIONS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from udfs.caption import CaptionTask

USABLE = "status = 'ok' AND image IS NOT NULL"
SETTINGS = ("model", "prompt", "temperature", "top_k", "min_length", "max_length")


def task_for(spark: "SparkSession", c: CaptionConfig) -> "CaptionTask":
    """The worker settings of this run (the prompt defaults to the registry's)."""
    from capmix.models import resolve
    from udfs.caption import CaptionTask
    from udfs.runtime import threads_per_task

    spec = resolve(c.captioner, "captioner", c.weights, "caption.captioner")
    return CaptionTask(
        captioner=c.captioner, weights=c.weights, prompt=c.prompt or spec.prompt,
        samples=c.samples, seed=c.seed, top_k=c.top_k, temperature=c.temperature,
        min_length=c.min_length, max_length=c.max_length, device=c.device,
        precision=c.precision, batch_size=c.batch_size,
        threads=threads_per_task(spark, c.threads))


def caption_rows(spark: "SparkSession", cfg: Config, images: "DataFrame") -> "DataFrame":
    """DataFrame[uid, image] -> rows of the `captions` table (pure transform, lazy)."""
    from pyspark.sql import functions as F

    from capmix.models import resolve
    from udfs.caption import caption_frame

    c = cfg.caption
    task = task_for(spark, c)
    spec = resolve(c.captioner, "captioner", c.weights)
    out = caption_frame(images, task)
    return CAPTIONS.conform(out.select(
        "uid", F.lit(c.label).alias("captioner"), "sample", "text",
        F.lit(spec.model_id).alias("model"), F.lit(task.prompt).cast("string").alias("prompt"),
        F.lit(c.temperature).alias("temperature"), F.lit(c.top_k).alias("top_k"),
        F.lit(c.min_length).alias("min_length"), F.lit(c.max_length).alias("max_length"),
        "seed", F.current_timestamp().alias("created_at")))


def check_settings(lake: Lake, cfg: Config) -> None:
    """Refuse to add rows to a captioner label made with other settings (it would mix two
    sampling regimes under one name, and skip the images as already done)."""
    from pyspark.sql import functions as F

    from capmix.captioning import row_seed
    from capmix.models import resolve

    c = cfg.caption
    if not lake.exists("captions"):
        return
    spec = resolve(c.captioner, "captioner", c.weights)
    want = {"model": spec.model_id, "prompt": c.prompt or spec.prompt,
            "temperature": c.temperature, "top_k": c.top_k, "min_length": c.min_length,
            "max_length": c.max_length}
    rows = lake.read("captions").where(F.col("captioner") == c.label)
    for row in rows.select(*SETTINGS).distinct().limit(5).collect():
        have = row.asDict()
        diff = [f"{k}={have[k]!r} (this run: {want[k]!r})" for k in SETTINGS if have[k] != want[k]]
        if diff:
            raise InputError(f"captions of {c.label!r} already exist with other settings: "
                             f"{', '.join(diff)}; give this run its own --name")
    one = rows.select("uid", "sample", "seed").limit(1).collect()
    if one and one[0]["seed"] != row_seed(c.seed, one[0]["uid"], one[0]["sample"]):
        raise InputError(f"captions of {c.label!r} already exist with another --seed; "
                         "give this run its own --name")


def done_uids(spark: "SparkSession", lake: Lake, cfg: Config) -> "DataFrame":
    """uids that already have every sample of this run's captioner label."""
    from pyspark.sql import functions as F

    c = cfg.caption
    if not lake.exists("captions"):
        return spark.createDataFrame([], "uid STRING")
    have = lake.read("captions").where(
        (F.col("captioner") == c.label) & (F.col("sample") < c.samples))
    return have.groupBy("uid").agg(F.countDistinct("sample").alias("n")).where(
        F.col("n") == c.samples).select("uid")


def plan(pool: "DataFrame", done: "DataFrame", chunk_rows: int) -> tuple[list, int, int]:
    """(chunks of pending images, images already done, pool rows skipped): one aggregation."""
    from pyspark.sql import functions as F

    flags = (pool.select("uid", chunks.FILE_COLUMN, F.expr(USABLE).alias("usable"))
             .join(done.withColumn("done", F.lit(True)), "uid", "left"))
    rows = flags.groupBy(chunks.FILE_COLUMN, "usable", "done").count().collect()
    pending = [(r[0], r["count"]) for r in rows if r["usable"] and not r["done"]]
    already = sum(r["count"] for r in rows if r["usable"] and r["done"])
    skipped = sum(r["count"] for r in rows if not r["usable"])
    return chunks.plan(pending, chunk_rows), already, skipped


def run(spark: "SparkSession", cfg: Config) -> chunks.RunSummary:
    """Caption the pool's pending images; returns the run summary (also logged)."""
    c = cfg.caption
    lake = open_lake(spark, cfg.lake)
    lake.require("pool")
    check_settings(lake, cfg)
    pool = chunks.with_file(lake.read("pool"))
    done = done_uids(spark, lake, cfg)
    todo, already, skipped = plan(pool, done, c.chunk_rows)

    def work(chunk: chunks.Chunk) -> int:
        images = chunk.select(pool.where(USABLE)).join(done, "uid", "left_anti")
        images = chunks.spread(spark, images.select("uid", "image"), c.partitions)
        # A chunk's rows are unique by construction: order_by=() makes the merge's dedupe a
        # cheap hash guard instead of a sort over every column.
        written = lake.merge("captions", caption_rows(spark, cfg, images), CAPTIONS.keys,
                             order_by=())
        return written // c.samples

    return chunks.run(f"caption {c.label}", todo, work, unit="images", already=already,
                      skipped=skipped, extra={"captions per image": c.samples})


# -- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("caption")
    g.add_argument("--captioner", help="registry name, hf:<id or folder> or "
                                       "open_clip:<coca arch>/<pretrained> (default tiny-coca)")
    g.add_argument("--weights", help="local folder/file or hub id overriding the weights")
    g.add_argument("--name", help="label stored in captions.captioner (default: --captioner)")
    g.add_argument("--prompt", help="prompt for instruction-following captioners")
    g.add_argument("--samples", type=int, help="captions per image (default 1)")
    g.add_argument("--top-k", type=int, help="top-K sampling (default 50)")
    g.add_argument("--temperature", type=float, help="softmax temperature (default 0.75)")
    g.add_argument("--min-length", type=int, help="minimum caption tokens (default 5)")
    g.add_argument("--max-length", type=int, help="maximum caption tokens (default 40)")
    g.add_argument("--seed", type=int, help="run seed; each row's seed derives from it")
    _model_run_arguments(g)


def _model_run_arguments(g: Any) -> None:
    g.add_argument("--batch-size", type=int, help="images per model call")
    g.add_argument("--chunk-rows", type=int, help="pool rows per atomic commit")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("captioner", "weights", "name", "prompt", "samples", "top_k", "temperature",
            "min_length", "max_length", "seed", "batch_size", "chunk_rows", "device", "precision")
    return {f"caption.{k}": getattr(args, k) for k in keys}


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    run(spark, cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.caption", argv)


if __name__ == "__main__":
    sys.exit(main())
