"""Caption every usable image of the pool into `captions` (key uid, captioner, sample).

    capmix caption --captioner tiny-coca --samples 2
    capmix caption --captioner blip2-opt-2.7b --temperature 0.75 --samples 1      # on GPUs

Resumable and exactly-once (capmix/chunks.py): pending images are decided once per run from the
key columns of `pool` and `captions`; the pool is processed in chunks of whole data files, each
chunk one append with a Delta transaction id; a re-run (or a run after a kill) skips the uids
whose captions are all there, and adds only the missing samples of partly captioned ones.
Images in error (status != 'ok') are skipped and left as they are. Every row records the model,
prompt and sampling settings it was made with, and its own seed, so it can be reproduced.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from capmix import chunks
from capmix.compute import check_session
from capmix.models import check_weights_reachable, resolve
from capmix.config import CaptionConfig, Config
from capmix.errors import InputError
from capmix.lake import Lake, open_lake
from capmix.tables import CAPTIONS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from udfs.caption import CaptionTask

USABLE = "status = 'ok' AND image IS NOT NULL"
KEYS_SCHEMA = f"uid STRING, have ARRAY<INT>, {chunks.CHUNK_COLUMN} INT"
SETTINGS = ("model", "prompt", "temperature", "top_k", "min_length", "max_length")


def task_for(spark: "SparkSession", c: CaptionConfig) -> "CaptionTask":
    """The worker settings of this run (the prompt defaults to the registry's)."""
    from capmix.models import resolve
    from capmix.weights import check_spec
    from udfs.caption import CaptionTask
    from udfs.runtime import threads_per_task

    spec = resolve(c.captioner, "captioner", c.weights, "caption.captioner")
    check_spec(spec)  # a bad --weights file: one line here, not a failed Spark task
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


def existing_samples(spark: "SparkSession", lake: Lake, cfg: Config) -> "DataFrame":
    """(uid, have: samples of this run's label already stored), keys only."""
    from pyspark.sql import functions as F

    c = cfg.caption
    if not lake.exists("captions"):
        return spark.createDataFrame([], "uid STRING, have ARRAY<INT>")
    return (lake.read("captions")
            .where((F.col("captioner") == c.label) & (F.col("sample") < c.samples))
            .groupBy("uid").agg(F.collect_set("sample").alias("have")))


def plan(spark: "SparkSession", pool: "DataFrame", have: "DataFrame", samples: int,
         chunk_rows: int) -> tuple[list, int, int, "DataFrame"]:
    """(chunks of pending images, images already done, pool rows skipped, pending keys of
    partly done files): one aggregation over key columns (status, uid, file; no image)."""
    from pyspark.sql import functions as F

    n_have = F.coalesce(F.size("have"), F.lit(0))
    flags = (pool.select("uid", chunks.FILE_COLUMN, (F.col("status") == "ok").alias("usable"))
             .join(have, "uid", "left"))
    per_file = flags.groupBy(chunks.FILE_COLUMN, "usable").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(n_have < samples, 1).otherwise(0)).alias("pending"),
        F.sum(F.when(n_have > 0, 1).otherwise(0)).alias("started")).collect()
    usable = [r for r in per_file if r["usable"]]
    keyed = {r[0] for r in usable if r["started"] and r["pending"]}
    todo = chunks.plan([(r[0], r["pending"]) for r in usable], chunk_rows, keyed=keyed)
    already = sum(r["rows"] - r["pending"] for r in usable)
    skipped = sum(r["rows"] for r in per_file if not r["usable"])
    partial = flags.where(F.col("usable") & F.col(chunks.FILE_COLUMN).isin(list(keyed))
                          & (n_have < samples)).select("uid", chunks.FILE_COLUMN, "have")
    return todo, already, skipped, partial


def run(spark: "SparkSession", cfg: Config) -> chunks.RunSummary:
    """Caption the pool's pending images; returns the run summary (also logged)."""
    check_session(spark, "caption")  # Connect / Spark < 4.0: one line, no I/O
    from pyspark.sql import functions as F

    c = cfg.caption
    # Local weights must exist before any task loads them (executors read the same path).
    check_weights_reachable(resolve(c.captioner, "captioner", c.weights), "caption.weights")
    lake = open_lake(spark, cfg.lake)
    lake.require("pool")
    check_settings(lake, cfg)
    fence = chunks.Fence(lake, "captions", f"capmix:caption:{c.label}")  # before planning
    pool = chunks.with_file(lake.read("pool"))
    todo, already, skipped, partial = plan(spark, pool, existing_samples(spark, lake, cfg),
                                           c.samples, c.chunk_rows)
    staging = chunks.Staging(spark, lake, "caption", c.label)
    if any(chunk.keyed for chunk in todo):
        staging.write(chunks.assign(spark, partial, todo).drop(chunks.FILE_COLUMN))

    def work(chunk: chunks.Chunk) -> int:
        keys = staging.read(chunk, KEYS_SCHEMA).drop(chunks.CHUNK_COLUMN)
        images = chunk.pending(chunk.read(lake, "pool").where(USABLE), keys)
        out = caption_rows(spark, cfg, chunks.spread(spark, images.select("uid", "image"),
                                                     c.partitions, gpu=c.device != "cpu"))
        if chunk.keyed:  # partly captioned images: only the samples not stored yet
            have = F.broadcast(keys.where(F.col("have").isNotNull()))
            stored = F.array_contains(F.coalesce("have", F.array().cast("array<int>")),
                                      F.col("sample"))
            out = out.join(have, "uid", "left").where(~stored).drop("have")
        # Images done: captions written / samples (exact unless `samples` grew since).
        return fence.append(out) // c.samples

    try:
        return chunks.run(f"caption {c.label}", todo, work, unit="images", already=already,
                          skipped=skipped, extra={"captions per image": c.samples})
    finally:
        staging.remove()


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


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    """Before the session: a --weights file that cannot be loaded is one line (exit 2)."""
    from capmix.models import resolve
    from capmix.weights import check_spec

    c = cfg.caption
    check_spec(resolve(c.captioner, "captioner", c.weights, "caption.captioner"))


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    run(spark, cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.caption", argv)


if __name__ == "__main__":
    sys.exit(main())
