"""Nearest-centroid assignment: the cluster job's Spark path (image_embeddings in Delta -> Arrow
UDF with broadcast float32 centroids -> faiss -> `clusters` committed to Delta) against a plain
faiss loop in one process over the same vectors, and the old MLlib k-means path for reference.

    python -m bench.cluster_bench                          # the issue's size: 1M x 768, 10k
    python -m bench.cluster_bench --rows 100000 --k 1000 --mllib-seconds 120   # a quick look

Random unit vectors (seeded); the centroids are random unit vectors too (fitting is not timed:
the assignment is the part that scales with the pool). The loop reads the same parquet with
pyarrow and searches in the UDF's batch size with all the cores; the job runs on local[N] with
the cores split between its tasks. The MLlib line times the pre-faiss path (Normalizer, cached
dense double vectors, KMeans fit + transform at the same k, capped at k = rows / 10) at growing
sizes until the next one would not finish within --mllib-seconds. The last line printed is the
job/loop ratio (the issue's goal: >= 0.8).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from bench.report import write_section


def write_vectors(folder: str, rows: int, dim: int, files: int = 8) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    per = -(-rows // files)
    os.makedirs(folder, exist_ok=True)
    for f in range(files):
        n = min(per, rows - f * per)
        if n <= 0:
            break
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim).cast(
            pa.list_(pa.float32()))
        uids = pa.array([f"u{f * per + i:09d}" for i in range(n)])
        pq.write_table(pa.table({"uid": uids, "embedding": vectors}),
                       os.path.join(folder, f"part-{f:03d}.parquet"))


def loop_rate(folder: str, centroids: np.ndarray) -> float:
    """Vectors/s of a plain faiss loop: read each file, search, keep the ids (one process)."""
    import faiss
    import pyarrow.parquet as pq

    from capmix.centroids import flat_index, nearest
    from udfs.assign import embedding_matrix

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    started, total = time.perf_counter(), 0
    index = flat_index(centroids)
    for name in sorted(os.listdir(folder)):
        pf = pq.ParquetFile(os.path.join(folder, name))
        for batch in pf.iter_batches(batch_size=10_000):
            ids, _ = nearest(index, embedding_matrix(batch.column(1), centroids.shape[1]))
            total += len(ids)
    return total / (time.perf_counter() - started)


def job_rate(spark, lake, rows: int, centroids: np.ndarray) -> float:
    """Vectors/s of the cluster job's assignment and commit (jobs/cluster.py's last step)."""
    from pyspark.sql import functions as F

    from capmix.tables import CLUSTERS
    from udfs.assign import assign_frame
    from udfs.runtime import threads_per_task

    sc = spark.sparkContext
    shared = sc.broadcast(centroids)
    keep = sc.broadcast(np.zeros(len(centroids), dtype=bool))
    started = time.perf_counter()
    frame = lake.read("image_embeddings").select("uid", "embedding")
    out = assign_frame(frame, shared, keep, threads_per_task(spark)).select(
        "uid", "cluster", "distance", "keep", F.lit("bench").alias("scorer"),
        F.lit(len(centroids)).alias("k"), F.current_timestamp().alias("created_at"))
    written = lake.overwrite("clusters", CLUSTERS.conform(out))
    seconds = time.perf_counter() - started
    shared.unpersist()
    keep.unpersist()
    assert written == rows, (written, rows)
    return rows / seconds


def mllib_times(spark, folder: str, k: int, budget: float) -> list[tuple[int, int, float]]:
    """(rows, k, seconds) of the old MLlib path at growing sizes within `budget` seconds."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import Normalizer
    from pyspark.ml.functions import array_to_vector

    data = spark.read.parquet(folder)
    total = data.count()
    out, size, spent = [], 1_000, 0.0
    while size <= total:
        kk = max(2, min(k, size // 10))
        points = Normalizer(inputCol="v", outputCol="features").transform(
            data.limit(size).withColumn("v", array_to_vector("embedding"))).cache()
        started = time.perf_counter()
        model = KMeans(k=kk, seed=0, maxIter=5, featuresCol="features").fit(points)
        model.transform(points).write.format("noop").mode("overwrite").save()
        seconds = time.perf_counter() - started
        points.unpersist()
        out.append((size, kk, seconds))
        spent += seconds
        # k and rows both grow, so the next size costs about (growth)^2 as much
        if spent + seconds * 9 > budget:
            break
        size *= 3
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=10_000)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--mllib-seconds", type=float, default=600.0)
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")
    args = parser.parse_args(argv)

    from capmix.config import from_dict
    from capmix.lake import open_lake
    from capmix.spark import get_or_create

    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="capmix-cluster-bench-")
    try:
        vectors = os.path.join(work, "vectors")
        write_vectors(vectors, args.rows, args.dim)
        rng = np.random.default_rng(1)
        cents = rng.normal(size=(args.k, args.dim)).astype(np.float32)
        cents /= np.linalg.norm(cents, axis=1, keepdims=True)
        cfg = from_dict({"spark": {"master": f"local[{args.cores}]", "shuffle_partitions": 4},
                         "lake": {"path": os.path.join(work, "lake")}})
        spark, _ = get_or_create(cfg.spark, cfg.lake)
        lake = open_lake(spark, cfg.lake)
        from pyspark.sql import functions as F

        lake.append("image_embeddings", spark.read.parquet(vectors).select(
            "uid", F.lit("bench").alias("scorer"), "embedding",
            F.lit("bench").alias("origin"), F.current_timestamp().alias("created_at")))
        loop = loop_rate(vectors, cents)
        job = job_rate(spark, lake, args.rows, cents)
        mllib = mllib_times(spark, vectors, args.k, args.mllib_seconds) \
            if args.mllib_seconds > 0 else []
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"assign {args.rows:,} x {args.dim} to {args.k:,} centroids on {args.cores} cores:",
             f"  plain faiss loop: {loop:,.0f} vectors/s",
             f"  Spark job (Arrow UDF + faiss + Delta commit): {job:,.0f} vectors/s"]
    for rows, k, seconds in mllib:
        lines.append(f"  old MLlib path (k-means fit + transform, k={k:,}, 5 iterations): "
                     f"{rows:,} rows in {seconds:.1f} s")
    ratio = job / loop
    lines.append(f"job/loop ratio: {ratio:.2f}")
    print("\n".join(lines), flush=True)
    if not args.no_write:
        body = ("## Cluster assignment: Spark job vs plain faiss loop (`bench/cluster_bench.py`)\n\n"
                "```\n" + "\n".join(lines) + "\n```\n\n"
                f"Random unit vectors (seeded), centroids random too (fitting is not timed). The "
                f"job's time includes reading `image_embeddings` from Delta and committing "
                f"`clusters`; the loop reads the same vectors from parquet and keeps the ids. "
                f"Goal job/loop >= 0.8: {'met' if ratio >= 0.8 else 'not met'}. Load average "
                f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
                f"({os.cpu_count()} cores).\n")
        write_section("cluster_bench", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
