"""DataComp's image-based filter: k-means over the image embeddings, keep the clusters that are
the nearest centroid of at least one reference image (ImageNet-1k train images in the paper).

    capmix cluster --k 1000 --reference-images /data/imagenet/train
    capmix cluster --k 100 --reference-table reference_embeddings
    capmix mix --strategy raw_top --percent 30 --intersect-clusters

Spark MLlib k-means (k-means|| init, seeded) runs on the L2-normalised embeddings of
`image_embeddings` for one scorer; the reference is a folder of images or a table with an
`image` column (both embedded by the same scorer, `jobs.score.embed_images`) or a table with an
`embedding` column. The whole `clusters` table is replaced in one commit: one row per image
(uid, cluster, keep), so `--intersect-clusters` always applies the latest filter.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import Lake, open_lake
from capmix.tables import CLUSTERS

if TYPE_CHECKING:
    from pyspark.ml.clustering import KMeansModel
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")

IMAGE_SUFFIXES = r"(?i)\.(jpe?g|png|webp|bmp|gif|tiff?)$"


@dataclass(frozen=True)
class ClusterResult:
    images: int
    k: int
    kept_clusters: int
    kept_images: int
    references: int


# --------------------------------------------------------------------------------------------
# The core: embeddings in, clusters and kept clusters out


def as_features(df: "DataFrame") -> "DataFrame":
    """`embedding ARRAY<FLOAT>` -> `features`, an L2-normalised ml vector (the embeddings are
    stored normalised; normalising again makes any reference table safe to use)."""
    from pyspark.ml.feature import Normalizer
    from pyspark.ml.functions import array_to_vector

    vec = df.withColumn("raw_features", array_to_vector("embedding"))
    return Normalizer(inputCol="raw_features", outputCol="features", p=2.0).transform(vec)


def fit_kmeans(embeddings: "DataFrame", k: int, seed: int, max_iter: int) -> "KMeansModel":
    from pyspark.ml.clustering import KMeans

    return KMeans(k=k, seed=seed, maxIter=max_iter, featuresCol="features",
                  predictionCol="cluster").fit(embeddings)


def assign(embeddings: "DataFrame", references: "DataFrame", k: int, seed: int,
           max_iter: int) -> tuple["DataFrame", set[int]]:
    """(DataFrame[uid, cluster, keep], kept cluster ids) for DataFrames with `embedding`."""
    from pyspark.sql import functions as F

    points = as_features(embeddings.select("uid", "embedding")).cache()
    try:
        model = fit_kmeans(points, k, seed, max_iter)
        near = model.transform(as_features(references.select("embedding")))
        kept = {int(r["cluster"]) for r in near.select("cluster").distinct().collect()}
        clusters = model.transform(points).select(
            "uid", F.col("cluster").cast("int").alias("cluster"),
            F.col("cluster").isin(sorted(kept)).alias("keep"))
        return clusters.localCheckpoint(eager=True), kept
    finally:
        points.unpersist()


# --------------------------------------------------------------------------------------------
# The reference set


def read_image_folder(spark: "SparkSession", folder: str) -> "DataFrame":
    """Every image file under `folder` (recursively) as DataFrame[uid = path, image bytes]."""
    from pyspark.sql import functions as F

    return (spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder)
            .where(F.col("path").rlike(IMAGE_SUFFIXES))
            .selectExpr("path AS uid", "content AS image"))


def reference_embeddings(spark: "SparkSession", cfg: Config, lake: Lake,
                         scorer: str) -> "DataFrame":
    """The reference set as DataFrame[uid, embedding], embedded by `scorer` when needed."""
    from pathlib import Path

    from pyspark.sql import functions as F

    c = cfg.cluster
    if c.reference_images:
        if not Path(c.reference_images).is_dir():
            raise InputError(f"reference image folder not found: {c.reference_images}")
        images = read_image_folder(spark, c.reference_images)
        source = f"folder {c.reference_images}"
    elif c.reference_table:
        table = (lake.read(c.reference_table) if lake.exists(c.reference_table)
                 else _spark_table(spark, c.reference_table))
        source = f"table {c.reference_table}"
        if "uid" not in table.columns:
            table = table.withColumn("uid", F.monotonically_increasing_id().cast("string"))
        if "embedding" in table.columns:
            if "scorer" in table.columns:
                table = table.where(F.col("scorer") == scorer)
            return table.select("uid", "embedding")
        if "image" not in table.columns:
            raise InputError(f"reference table {c.reference_table} needs an `embedding` or an "
                             f"`image` column (it has {', '.join(table.columns)})")
        images = table.select("uid", "image")
    else:
        raise InputError("give a reference set: --reference-images DIR or --reference-table "
                         "TABLE (cluster.reference_images / cluster.reference_table)")
    if images.limit(1).count() == 0:
        raise InputError(f"the reference set is empty: no images in {source}")
    from capmix.models import resolve
    from jobs.score import embed_images

    resolve(scorer, "scorer", cfg.score.weights, key="cluster.scorer")  # on the driver, first
    scored = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, scorer=scorer))
    log.info("[cluster] embedding the reference images of %s with %s", source, scorer)
    return embed_images(spark, scored, images)


def _spark_table(spark: "SparkSession", name: str) -> "DataFrame":
    from pyspark.errors import AnalysisException

    try:
        return spark.table(name)
    except AnalysisException:
        raise InputError(f"reference table {name!r} is neither a lake table nor a Spark "
                         "table") from None


# --------------------------------------------------------------------------------------------
# The job


def run(spark: "SparkSession", cfg: Config, *, k: Optional[int] = None,
        scorer: Optional[str] = None) -> ClusterResult:
    """Cluster `image_embeddings` of one scorer and replace `clusters` (settings: cfg.cluster)."""
    check_session(spark, "cluster")  # Connect / Spark < 4.0: one line, no I/O
    from pyspark.sql import functions as F

    k = k or cfg.cluster.k
    scorer = scorer or cfg.cluster.scorer or cfg.score.scorer
    lake = open_lake(spark, cfg.lake)
    lake.require("image_embeddings")
    embeddings = (lake.read("image_embeddings").where(F.col("scorer") == scorer)
                  .select("uid", "embedding"))
    images = embeddings.count()
    if images == 0:
        raise InputError(f"no image embeddings by scorer {scorer!r} (run capmix score first)")
    if k > images:
        raise InputError(f"k = {k} clusters need at least {k} images; {images} are embedded")
    references = reference_embeddings(spark, cfg, lake, scorer).cache()
    try:
        n_ref = references.count()
        if n_ref == 0:
            raise InputError("the reference set is empty (no images, or none that decode)")
        clusters, kept = assign(embeddings, references, k, cfg.cluster.seed,
                                cfg.cluster.max_iter)
    finally:
        references.unpersist()
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = clusters.select("uid", "cluster", "keep", F.lit(scorer).alias("scorer"),
                           F.lit(k).alias("k"), F.lit(now).alias("created_at"))
    lake.overwrite("clusters", CLUSTERS.conform(rows))
    kept_images = lake.read("clusters").where("keep").count()
    result = ClusterResult(images, k, len(kept), kept_images, n_ref)
    log.info("[cluster] %s images in %d clusters; %d clusters nearest to %s reference images "
             "keep %s images", f"{images:,}", k, len(kept), f"{n_ref:,}", f"{kept_images:,}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, help="clusters (default cluster.k)")
    parser.add_argument("--seed", type=int, help="k-means seed (default cluster.seed)")
    parser.add_argument("--reference-images", metavar="DIR", help="a folder of reference images")
    parser.add_argument("--reference-table", metavar="TABLE",
                        help="a lake or Spark table with an `embedding` or `image` column")
    parser.add_argument("--scorer", help="whose embeddings (default score.scorer)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"cluster.k": args.k, "cluster.seed": args.seed,
            "cluster.reference_images": args.reference_images,
            "cluster.reference_table": args.reference_table, "cluster.scorer": args.scorer}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    if not (cfg.cluster.reference_images or cfg.cluster.reference_table):
        raise InputError("give a reference set: --reference-images DIR or --reference-table "
                         "TABLE")


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    print(json.dumps(dataclasses.asdict(run(spark, cfg))))
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.cluster", argv)


if __name__ == "__main__":
    sys.exit(main())
