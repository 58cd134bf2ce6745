"""CLIP-score the raw and synthetic captions of every usable image: `image_embeddings` (uid,
scorer; normalised, computed once per image) and `scores` (uid, source, scorer), where source is
'raw' or 'CAPTIONER:SAMPLE', similarity the cosine of image and text, clip_s = 2.5*max(cos, 0).

    capmix score --scorer tiny-clip
    capmix score --scorer vit-l-14 --captioners blip2-opt-2.7b          # on GPUs

Resumable and exactly-once like `caption` (capmix/chunks.py): the run's pending work (images
to embed, texts to score, per uid) is decided once, from key and text columns, and staged per
chunk; per chunk one pass of the model (a pandas UDF that embeds each pending image once and
scores its pending texts against that vector, or against the stored one for images embedded
before: then no image byte is read), then two txn-id appends, embeddings first, scores second.
Images in error, NULL raw texts and NULL captions are skipped.

For other stages: `embed_images(spark, cfg, df[uid, image])` and `embed_texts(spark, cfg,
df[..., text])` embed any DataFrame with the configured scorer (lazy, nothing written).
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from capmix import chunks
from capmix.compute import check_session
from capmix.models import check_weights_reachable, resolve
from capmix.config import Config
from capmix.lake import Lake, open_lake
from capmix.tables import IMAGE_EMBEDDINGS, SCORES
from jobs.caption import USABLE, _model_run_arguments

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from udfs.clip import ScoreTask


def task_for(spark: "SparkSession", cfg: Config) -> "ScoreTask":
    from capmix.models import resolve
    from capmix.weights import check_spec
    from udfs.clip import ScoreTask
    from udfs.runtime import threads_per_task

    s = cfg.score
    check_spec(resolve(s.scorer, "scorer", s.weights, "score.scorer"))  # bad --weights: here
    return ScoreTask(scorer=s.scorer, weights=s.weights, device=s.device,
                     precision=s.precision, batch_size=s.batch_size,
                     threads=threads_per_task(spark, s.threads))


def embed_images(spark: "SparkSession", cfg: Config, images: "DataFrame") -> "DataFrame":
    """DataFrame[uid, image bytes] -> DataFrame[uid, embedding ARRAY<FLOAT>], L2-normalised,
    with the configured scorer (cfg.score). Lazy; images that do not decode are left out."""
    from udfs.clip import embed_images_frame

    return embed_images_frame(images, task_for(spark, cfg))


def embed_texts(spark: "SparkSession", cfg: Config, texts: "DataFrame") -> "DataFrame":
    """DataFrame[..., text] -> the same with `embedding ARRAY<FLOAT>` (L2-normalised). Lazy."""
    from udfs.clip import embed_texts_frame

    return embed_texts_frame(texts, task_for(spark, cfg))


def candidate_texts(spark: "SparkSession", lake: Lake, cfg: Config,
                    usable: "DataFrame") -> "DataFrame":
    """(uid, source, text) to score: raw captions and synthetic ones of usable images."""
    from pyspark.sql import functions as F

    s = cfg.score
    parts = []
    if s.raw:
        parts.append(usable.where(F.col("text").isNotNull())
                     .select("uid", F.lit("raw").alias("source"), "text"))
    if lake.exists("captions"):
        caps = lake.read("captions").where(F.col("text").isNotNull())
        if s.captioners:
            caps = caps.where(F.col("captioner").isin(list(s.captioners)))
        parts.append(caps.join(usable.select("uid"), "uid", "left_semi").select(
            "uid", F.concat_ws(":", "captioner", F.col("sample").cast("string")).alias("source"),
            "text"))
    if not parts:
        return spark.createDataFrame([], "uid STRING, source STRING, text STRING")
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def _done(spark: "SparkSession", lake: Lake, table: str, scorer: str, cols: list[str]):
    from pyspark.sql import functions as F

    if not lake.exists(table):
        from capmix.tables import SPECS

        return spark.createDataFrame([], SPECS[table].schema()).select(*cols)
    return lake.read(table).where(F.col("scorer") == scorer).select(*cols)


ORIGIN = "capmix:score"  # image_embeddings.origin of the vectors this job computes
WORK_SCHEMA = ("uid STRING, embed BOOLEAN, texts ARRAY<STRUCT<source: STRING, text: STRING>>, "
               f"stored_embedding ARRAY<FLOAT>, {chunks.CHUNK_COLUMN} INT")


def plan(spark: "SparkSession", lake: Lake, cfg: Config, pool: "DataFrame"):
    """Once per run, from key and text columns only (never the image): (chunks weighted by
    pending images + texts, images embedded before, skipped pool rows, the per-uid work to
    stage: uid, file, embed, texts to score, and the stored vector of images embedded before;
    and the persisted frame behind it, to unpersist once staged)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    s = cfg.score
    emb_done = _done(spark, lake, "image_embeddings", s.scorer, ["uid"])
    # An image with a stored embedding (e.g. a DataComp pool's own, jobs/ingest_embeddings.py)
    # is usable whatever its bytes: only its texts are embedded, its image is never read.
    keyed = (pool.select("uid", chunks.FILE_COLUMN, "status", "text")
             .join(emb_done.withColumn("embedded", F.lit(True)), "uid", "left")
             .withColumn("usable", (F.col("status") == "ok") | F.col("embedded").isNotNull()))
    usable = keyed.where("usable")
    texts = candidate_texts(spark, lake, cfg, usable).join(
        _done(spark, lake, "scores", s.scorer, ["uid", "source"]), ["uid", "source"], "left_anti")
    per_uid = texts.groupBy("uid").agg(
        F.collect_list(F.struct("source", "text")).alias("texts"),
        F.count(F.lit(1)).alias("n_texts"))
    flags = (keyed.select("uid", chunks.FILE_COLUMN, "usable", "embedded")
             .join(per_uid, "uid", "left")
             .withColumn("embed", F.col("embedded").isNull())
             .withColumn("n_texts", F.coalesce("n_texts", F.lit(0))))
    # Kept for the staging write, which would otherwise read every input of the plan again.
    flags = flags.persist(StorageLevel.MEMORY_AND_DISK)
    rows = flags.groupBy(chunks.FILE_COLUMN, "usable").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col("embed").cast("int")).alias("images"),
        F.sum("n_texts").alias("texts"),
        F.sum(F.when(F.col("embed"), 0).otherwise(F.col("n_texts"))).alias("reuse")).collect()
    usable_files = [r for r in rows if r["usable"]]
    pending = [(r[0], int(r["images"] or 0) + int(r["texts"] or 0)) for r in usable_files]
    extra = {r[0]: {"reuse": int(r["reuse"] or 0)} for r in usable_files}
    skipped = sum(r["rows"] for r in rows if not r["usable"])
    already = sum(r["rows"] - int(r["images"] or 0) for r in usable_files)
    todo = chunks.plan(pending, s.chunk_rows, extra)
    work = flags.where(F.col("usable") & (F.col("embed") | (F.col("n_texts") > 0)))
    stored = _done(spark, lake, "image_embeddings", s.scorer, ["uid", "embedding"])
    reused = (work.where(~F.col("embed")).select("uid")
              .join(stored, "uid", "inner").withColumnRenamed("embedding", "stored_embedding"))
    work = (work.join(reused, "uid", "left")
            .select("uid", chunks.FILE_COLUMN, "embed", "texts", "stored_embedding"))
    return todo, already, skipped, work, flags


def chunk_work(spark: "SparkSession", cfg: Config, lake: Lake, staged: "DataFrame",
               chunk: chunks.Chunk) -> "DataFrame":
    """The UDF input of one chunk: its staged work, with image bytes only where an image is
    to be embedded (a broadcast semi-join on the chunk's uids, then one shuffle)."""
    from pyspark.sql import functions as F

    s = cfg.score
    staged = staged.drop(chunks.CHUNK_COLUMN)
    need = staged.where("embed")
    images = chunk.read(lake, "pool").where(USABLE).select("uid", "image").join(
        F.broadcast(need.select("uid")), "uid", "left_semi")
    target = s.partitions or chunks.task_slots(spark, gpu=s.device != "cpu")
    # Both sides hash-partitioned on uid the same way: the join adds no second image shuffle.
    with_images = (chunks.spread(spark, images, target)
                   .join(need.repartition(target, "uid"), "uid", "inner"))
    without = staged.where(~F.col("embed")).withColumn("image", F.lit(None).cast("binary"))
    cols = ["uid", "image", "stored_embedding", "texts"]
    return with_images.select(*cols).unionByName(without.select(*cols))


def run(spark: "SparkSession", cfg: Config) -> chunks.RunSummary:
    """Embed pending images and score pending texts; returns the summary (also logged)."""
    check_session(spark, "score")  # Connect / Spark < 4.0: one line, no I/O
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from capmix.scoring import CLIP_S_WEIGHT
    from udfs.clip import score_frame

    s = cfg.score
    # Local weights must exist before any task loads them (executors read the same path).
    check_weights_reachable(resolve(s.scorer, "scorer", s.weights), "score.weights")
    lake = open_lake(spark, cfg.lake)
    lake.require("pool")
    # Fences before planning (capmix/chunks.py): a concurrent run's commits then conflict.
    emb_fence = chunks.Fence(lake, "image_embeddings", f"capmix:score:{s.scorer}")
    score_fence = chunks.Fence(lake, "scores", f"capmix:score:{s.scorer}")
    pool = chunks.with_file(lake.read("pool"))
    todo, already, skipped, work, cached = plan(spark, lake, cfg, pool)
    counts = {"images embedded": 0, "texts scored": 0, "images embedded before": already}
    staging = chunks.Staging(spark, lake, "score", s.scorer)
    if todo:
        staging.write(chunks.assign(spark, work, todo).drop(chunks.FILE_COLUMN))
    cached.unpersist()

    def work_fn(chunk: chunks.Chunk) -> int:
        inputs = chunk_work(spark, cfg, lake, staging.read(chunk, WORK_SCHEMA), chunk)
        # One pass of the model per chunk; both tables are written from the persisted result,
        # so a score is computed from exactly the vector `image_embeddings` stores.
        out = score_frame(inputs, task_for(spark, cfg)).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            now = F.current_timestamp().alias("created_at")
            embedded = emb_fence.append(IMAGE_EMBEDDINGS.conform(
                out.where(F.col("source").isNull()).select(
                    "uid", F.lit(s.scorer).alias("scorer"), "embedding",
                    F.lit(ORIGIN).alias("origin"), now)))
            scored = score_fence.append(SCORES.conform(
                out.where(F.col("source").isNotNull()).select(
                    "uid", "source", F.lit(s.scorer).alias("scorer"), "text", "similarity",
                    (F.lit(CLIP_S_WEIGHT) * F.greatest("similarity", F.lit(0.0))).alias("clip_s"),
                    now)))
        finally:
            out.unpersist()
        counts["images embedded"] += embedded
        counts["texts scored"] += scored
        return embedded + scored

    # Progress counts rows written: image embeddings + scores.
    try:
        return chunks.run(f"score {s.scorer}", todo, work_fn, unit="rows", skipped=skipped,
                          extra=counts)
    finally:
        staging.remove()


# -- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("score")
    g.add_argument("--scorer", help="registry name or open_clip:<arch>/<pretrained> "
                                    "(default tiny-clip; the paper: vit-l-14)")
    g.add_argument("--weights", help="checkpoint file or tag overriding the weights")
    g.add_argument("--captioners", help="comma-separated captioner labels to score "
                                        "(default: every captioner in `captions`)")
    g.add_argument("--no-raw", action="store_true", help="do not score the raw captions")
    _model_run_arguments(g)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = {f"score.{k}": getattr(args, k) for k in ("scorer", "weights", "batch_size",
                                                     "chunk_rows", "device", "precision")}
    if args.captioners is not None:
        out["score.captioners"] = [c.strip() for c in args.captioners.split(",") if c.strip()]
    if args.no_raw:
        out["score.raw"] = False
    return out


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    """Before the session: a --weights file that cannot be loaded is one line (exit 2)."""
    from capmix.models import resolve
    from capmix.weights import check_spec

    c = cfg.score
    check_spec(resolve(c.scorer, "scorer", c.weights, "score.scorer"))


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    run(spark, cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.score", argv)


if __name__ == "__main__":
    sys.exit(main())
