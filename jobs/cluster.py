"""DataComp's image-based filter: faiss k-means on a uniform sample of the image embeddings, then
keep every cluster that is the nearest centroid of at least one reference image (ImageNet-1k
train in the paper).

    capmix cluster --reference-images /data/imagenet/train               # k, sample: DataComp's
    capmix cluster --k 100000 --sample-size 6400000 --reference-embeddings in1k_l14.npy
    capmix mix --strategy raw_top --percent 30 --intersect-clusters

Cost at scale: the pool is read twice (a hash-selected uniform sample of `sample_size` vectors
collected to the driver, where faiss fits the centroids; then one assignment pass) and never
cached. The assignment is an Arrow UDF (udfs/assign.py) with the float32 centroids broadcast once
per executor and searched by faiss in batches (GPU faiss where installed and a GPU is there).
The reference set goes through the same search; reference images are embedded once, persisted
for its size check and the keep rule, released before the pool's pass. The centroids replace
`cluster_centroids` (id, vector, model, k, sample_size, seed) and the assignment replaces
`clusters` (uid, cluster, distance, keep), each in one commit, so `--intersect-clusters` always
applies the latest filter and the centroids behind it are on record. Every check on the input
(k against the sample, reference dimension against the pool's, an empty reference set) runs
before anything is written.
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

import numpy as np

from capmix import centroids as cn
from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import open_lake
from capmix.tables import CLUSTER_CENTROIDS, CLUSTERS
from jobs.cluster_reference import Reference, read_image_folder, reference_set, size_of

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["ClusterResult", "run", "read_image_folder", "uniform_sample", "kept_clusters"]
log = logging.getLogger("capmix")
_HASH_RANGE = 1 << 30


@dataclass(frozen=True)
class ClusterResult:
    images: int
    k: int
    sample_size: int
    kept_clusters: int
    kept_images: int
    references: int


def uniform_sample(embeddings: "DataFrame", size: int, total: int, seed: int) -> np.ndarray:
    """`size` embeddings chosen uniformly by a seeded hash of the uid (the same rows whatever the
    partitioning), as a (rows, dim) float32 matrix on the driver. A hash threshold keeps about
    twice `size` rows before the exact top-`size` by hash, so the sort sees a bounded part."""
    from pyspark.sql import functions as F

    from udfs.assign import embedding_matrix

    key = F.pmod(F.xxhash64("uid", F.lit(seed)), F.lit(_HASH_RANGE)) / F.lit(float(_HASH_RANGE))
    share = min(1.0, 2.0 * size / max(total, 1) + 64.0 / max(total, 1))
    rows = (embeddings.withColumn("__h", key).where(F.col("__h") < share)
            .orderBy("__h", "uid").limit(size).select("embedding").toArrow())
    column = rows.column("embedding")
    if len(column) == 0:
        raise InputError("the sample of image embeddings is empty")
    dim = len(column[0].as_py())
    try:
        return embedding_matrix(column, dim)
    except ValueError as exc:
        raise InputError(f"image embeddings of mixed dimensions under one scorer: {exc}") from None


def kept_clusters(spark: "SparkSession", ref: Reference, centroids: np.ndarray,
                  broadcast: Any) -> set[int]:
    """Ids of the centroids nearest to at least one reference embedding (DataComp's rule)."""
    if ref.array is not None:
        ids, _ = cn.nearest(cn.flat_index(centroids), ref.array)
        return {int(i) for i in np.unique(ids)}
    from udfs.assign import assign_frame

    near = assign_frame(ref.frame.where("embedding IS NOT NULL"), broadcast)
    return {int(r[0]) for r in near.select("cluster").distinct().collect()}


def resolve_sizes(cfg: Config, images: int, k: Optional[int],
                  sample_size: Optional[int]) -> tuple[int, int]:
    """(k, sample size) from the arguments, the config or DataComp's defaults; InputError when
    they cannot work on `images` embeddings."""
    k = k or cfg.cluster.k or cn.default_k(images)
    sample = sample_size or cfg.cluster.sample_size or cn.default_sample(images, k)
    if k > images:
        raise InputError(f"k = {k:,} clusters need at least {k:,} images; {images:,} are embedded")
    sample = min(sample, images)
    if k > sample:
        raise InputError(f"k = {k:,} clusters is more than the sample of {sample:,} embeddings "
                         "they are fitted on (raise cluster.sample_size or lower k)")
    return k, sample


def _centroid_rows(spark: "SparkSession", centroids: np.ndarray, scorer: str, k: int,
                   sample: int, seed: int, now: datetime) -> "DataFrame":
    import pandas as pd

    frame = pd.DataFrame({"id": np.arange(len(centroids), dtype=np.int32),
                          "vector": list(centroids.astype(np.float32))})
    rows = spark.createDataFrame(frame, "id INT, vector ARRAY<FLOAT>")
    from pyspark.sql import functions as F

    return CLUSTER_CENTROIDS.conform(rows.select(
        "id", "vector", F.lit(scorer).alias("model"), F.lit(k).alias("k"),
        F.lit(sample).alias("sample_size"), F.lit(seed).alias("seed"),
        F.lit(now).alias("created_at")))


def _fit_centroids(cfg: Config, ref: Reference, embeddings: "DataFrame", images: int, k: int,
                   sample: int, scorer: str) -> tuple[np.ndarray, int, int]:
    """(centroids, the sample size they were fitted on, reference rows), after the checks on the
    reference set that need its size and dimension; nothing is written here."""
    n_ref, ref_dims = size_of(ref)
    if n_ref == 0:
        raise InputError(f"the reference set is empty: no embeddings from {ref.source} (no "
                         "images, none that decode, or none by this scorer)")
    points = uniform_sample(embeddings, sample, images, cfg.cluster.seed)
    dim = points.shape[1]
    if ref_dims != {dim}:
        raise InputError(f"reference embeddings from {ref.source} have dimension "
                         f"{', '.join(map(str, sorted(ref_dims)))}; scorer {scorer!r}'s image "
                         f"embeddings have {dim}")
    log.info("[cluster] fitting %s centroids on %s of %s embeddings by %s (faiss, %s)",
             f"{k:,}", f"{len(points):,}", f"{images:,}", scorer,
             f"{cn.gpus()} GPU(s)" if cn.gpus() else "CPU")
    return cn.fit(points, k, cfg.cluster.seed, cfg.cluster.max_iter), len(points), n_ref


def run(spark: "SparkSession", cfg: Config, *, k: Optional[int] = None,
        scorer: Optional[str] = None, sample_size: Optional[int] = None) -> ClusterResult:
    """Fit centroids on a sample of one scorer's `image_embeddings`, assign every embedding,
    replace `cluster_centroids` and `clusters` (settings: cfg.cluster)."""
    check_session(spark, "cluster")  # Connect / Spark < 4.0: one line, no I/O
    from pyspark.sql import functions as F

    from udfs.assign import assign_frame
    from udfs.runtime import threads_per_task

    scorer = scorer or cfg.cluster.scorer or cfg.score.scorer
    seed = cfg.cluster.seed
    lake = open_lake(spark, cfg.lake)
    lake.require("image_embeddings")
    embeddings = (lake.read("image_embeddings").where(F.col("scorer") == scorer)
                  .select("uid", "embedding"))
    images = embeddings.count()
    if images == 0:
        raise InputError(f"no image embeddings by scorer {scorer!r} (run capmix score first)")
    k, sample = resolve_sizes(cfg, images, k, sample_size)
    ref = reference_set(spark, cfg, lake, scorer)
    try:
        cents, fitted_on, n_ref = _fit_centroids(cfg, ref, embeddings, images, k, sample,
                                                 scorer)
        sc = spark.sparkContext
        shared = sc.broadcast(cents)
        try:
            kept = kept_clusters(spark, ref, cents, shared)
            ref.release()  # done with the references: free the executors for the pool's pass
            mask = np.zeros(k, dtype=bool)
            mask[sorted(kept)] = True
            keep = sc.broadcast(mask)
            now = datetime.now(timezone.utc).replace(tzinfo=None)
            rows = assign_frame(embeddings, shared, keep, threads_per_task(spark)).select(
                "uid", "cluster", "distance", "keep", F.lit(scorer).alias("scorer"),
                F.lit(k).alias("k"), F.lit(now).alias("created_at"))
            lake.overwrite("clusters", CLUSTERS.conform(rows))
            lake.overwrite("cluster_centroids", _centroid_rows(spark, cents, scorer, k,
                                                               fitted_on, seed, now))
            keep.unpersist()
        finally:
            shared.unpersist()
    finally:
        ref.release()  # embedded reference images are cached once for size_of and the keep rule
    kept_images = lake.read("clusters").where("keep").count()
    result = ClusterResult(images, k, fitted_on, len(kept), kept_images, n_ref)
    log.info("[cluster] %s images in %s clusters; %d clusters nearest to %s reference images "
             "keep %s images", f"{images:,}", f"{k:,}", len(kept), f"{n_ref:,}",
             f"{kept_images:,}")
    return result


# -- command line -----------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--k", type=int, help="clusters (default cluster.k, else DataComp's "
                                              "100,000 scaled to the pool)")
    parser.add_argument("--sample-size", type=int, metavar="N",
                        help="embeddings the centroids are fitted on (default 64 per centroid)")
    parser.add_argument("--seed", type=int, help="sample and k-means seed (default cluster.seed)")
    parser.add_argument("--reference-images", metavar="DIR", help="a folder/URI of reference "
                                                                   "images")
    parser.add_argument("--reference-table", metavar="TABLE",
                        help="a lake or Spark table with an `embedding` or `image` column")
    parser.add_argument("--reference-embeddings", metavar="FILE",
                        help="precomputed reference embeddings: .npy, or parquet with "
                             "an `embedding` column")
    parser.add_argument("--scorer", help="whose embeddings (default score.scorer)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"cluster.k": args.k, "cluster.seed": args.seed,
            "cluster.sample_size": args.sample_size,
            "cluster.reference_images": args.reference_images,
            "cluster.reference_table": args.reference_table,
            "cluster.reference_embeddings": args.reference_embeddings,
            "cluster.scorer": args.scorer}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    c = cfg.cluster
    if not (c.reference_images or c.reference_table or c.reference_embeddings):
        raise InputError("give a reference set: --reference-images DIR, --reference-table "
                         "TABLE or --reference-embeddings FILE")


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    print(json.dumps(dataclasses.asdict(run(spark, cfg))))
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.cluster", argv)


if __name__ == "__main__":
    sys.exit(main())
