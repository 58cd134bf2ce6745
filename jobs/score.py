"""CLIP-score the raw and synthetic captions of every usable image: `image_embeddings` (uid,
scorer; normalised, computed once per image) and `scores` (uid, source, scorer), where source is
'raw' or 'CAPTIONER:SAMPLE', similarity the cosine of image and text, clip_s = 2.5*max(cos, 0).

    capmix score --scorer tiny-clip
    capmix score --scorer vit-l-14 --captioners blip2-opt-2.7b          # on GPUs

Resumable and exactly-once like `caption`: chunks of whole pool files; per chunk one pass of
the model (a pandas UDF that embeds each pending image once and scores its pending texts against
that vector, or against the stored one for images embedded by an earlier run), then two atomic
commits, embeddings first, scores second; re-runs skip what is stored (anti-joins on both keys).
Images in error, NULL raw texts and NULL captions are skipped.

For other stages: `embed_images(spark, cfg, df[uid, image])` and `embed_texts(spark, cfg,
df[..., text])` embed any DataFrame with the configured scorer (lazy, nothing written).
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from capmix import chunks
from capmix.config import Config
from capmix.lake import Lake, open_lake
from capmix.tables import IMAGE_EMBEDDINGS, SCORES
from jobs.caption import USABLE, _model_run_arguments

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from udfs.clip import ScoreTask


def task_for(spark: "SparkSession", cfg: Config) -> "ScoreTask":
    from udfs.clip import ScoreTask
    from udfs.runtime import threads_per_task

    s = cfg.score
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
        return spark.createDataFrame([], ", ".join(f"{c} STRING" for c in cols))
    return lake.read(table).where(F.col("scorer") == scorer).select(*cols)


def plan(pool: "DataFrame", emb_done: "DataFrame", texts: "DataFrame", chunk_rows: int):
    """(chunks weighted by pending images + texts, images embedded before, skipped pool rows).
    A chunk's extra["reuse"] counts pending texts of images embedded earlier: only then are
    stored vectors read back."""
    from pyspark.sql import functions as F

    per_uid = texts.groupBy("uid").agg(F.count(F.lit(1)).alias("texts"))
    flags = (pool.select("uid", chunks.FILE_COLUMN, F.expr(USABLE).alias("usable"))
             .join(emb_done.withColumn("embedded", F.lit(1)), "uid", "left")
             .join(per_uid, "uid", "left"))
    texts_n = F.coalesce("texts", F.lit(0))
    rows = flags.groupBy(chunks.FILE_COLUMN, "usable").agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col("embedded").isNull(), 1).otherwise(0)).alias("images"),
        F.sum(F.when(F.col("embedded").isNull(), 0).otherwise(1)).alias("embedded"),
        F.sum(texts_n).alias("texts"),
        F.sum(F.when(F.col("embedded").isNull(), 0).otherwise(texts_n)).alias("reuse")).collect()
    usable = [r for r in rows if r["usable"]]
    pending = [(r[0], int(r["images"] or 0) + int(r["texts"] or 0)) for r in usable]
    extra = {r[0]: {"reuse": int(r["reuse"] or 0)} for r in usable}
    skipped = sum(r["rows"] for r in rows if not r["usable"])
    already = sum(int(r["embedded"] or 0) for r in usable)
    return chunks.plan(pending, chunk_rows, extra), already, skipped


def chunk_work(spark: "SparkSession", cfg: Config, lake: Lake, mine: "DataFrame",
               emb_done: "DataFrame", texts: "DataFrame", reuse: bool) -> "DataFrame":
    """The UDF input of one chunk: images still to embed, or with texts still to score."""
    from pyspark.sql import functions as F

    s = cfg.score
    todo = (texts.join(mine.select("uid"), "uid", "left_semi").groupBy("uid")
            .agg(F.collect_list(F.struct("source", "text")).alias("texts")))
    work = (mine.select("uid", "image")
            .join(emb_done.withColumn("embedded", F.lit(True)), "uid", "left")
            .join(todo, "uid", "left")
            .where(F.col("embedded").isNull() | F.col("texts").isNotNull()))
    if reuse:  # texts of images embedded by an earlier run: score them with the stored vector
        stored = _done(spark, lake, "image_embeddings", s.scorer, ["uid", "embedding"])
        work = work.join(stored.withColumnRenamed("embedding", "stored_embedding")
                         .join(mine.select("uid"), "uid", "left_semi"), "uid", "left")
    else:
        work = work.withColumn("stored_embedding", F.lit(None).cast("array<float>"))
    return chunks.spread(spark, work, s.partitions)


def run(spark: "SparkSession", cfg: Config) -> chunks.RunSummary:
    """Embed pending images and score pending texts; returns the summary (also logged)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from capmix.scoring import CLIP_S_WEIGHT
    from udfs.clip import score_frame

    s = cfg.score
    lake = open_lake(spark, cfg.lake)
    lake.require("pool")
    pool = chunks.with_file(lake.read("pool"))
    usable = pool.where(USABLE)
    emb_done = _done(spark, lake, "image_embeddings", s.scorer, ["uid"])
    texts = candidate_texts(spark, lake, cfg, usable).join(
        _done(spark, lake, "scores", s.scorer, ["uid", "source"]), ["uid", "source"], "left_anti")
    todo, already, skipped = plan(pool, emb_done, texts, s.chunk_rows)
    counts = {"images embedded": 0, "texts scored": 0, "images embedded before": already}

    def work(chunk: chunks.Chunk) -> int:
        mine = chunk.select(usable)
        reuse = chunk.extra.get("reuse", 0) > 0
        inputs = chunk_work(spark, cfg, lake, mine, emb_done, texts, reuse)
        # One pass of the model per chunk; both tables are written from the persisted result,
        # so a score is computed from exactly the vector `image_embeddings` stores.
        out = score_frame(inputs, task_for(spark, cfg)).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            now = F.current_timestamp().alias("created_at")
            embedded = lake.merge("image_embeddings", IMAGE_EMBEDDINGS.conform(
                out.where(F.col("source").isNull()).select(
                    "uid", F.lit(s.scorer).alias("scorer"), "embedding", now)),
                IMAGE_EMBEDDINGS.keys, order_by=())
            scored = lake.merge("scores", SCORES.conform(
                out.where(F.col("source").isNotNull()).select(
                    "uid", "source", F.lit(s.scorer).alias("scorer"), "text", "similarity",
                    (F.lit(CLIP_S_WEIGHT) * F.greatest("similarity", F.lit(0.0))).alias("clip_s"),
                    now)), SCORES.keys, order_by=())
        finally:
            out.unpersist()
        counts["images embedded"] += embedded
        counts["texts scored"] += scored
        return embedded + scored

    # Progress counts rows written: image embeddings + scores.
    return chunks.run(f"score {s.scorer}", todo, work, unit="rows", skipped=skipped,
                      extra=counts)


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


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    run(spark, cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.score", argv)


if __name__ == "__main__":
    sys.exit(main())
