"""k-means centroids and nearest-centroid search with faiss: the numeric core of the image-based
cluster filter (jobs/cluster.py fits on the driver, udfs/assign.py searches on the executors).

Default sizes follow DataComp's `baselines/image_based_clustering` (100,000 centroids, fitted on a
0.3 sample of the pool), scaled down for small pools by one stated rule:

- k = clamp(0.3 * pool / 64, 2, 100_000): as many centroids as a 0.3 sample holds at 64 points
  per centroid (faiss warns below 39 and subsamples above 256), at most DataComp's 100,000;
- sample = min(pool, 64 * k): 64 points per centroid, so 100,000 centroids fit on 6.4M vectors
  (about 20 GB of float32 ViT-L/14 vectors on the driver) instead of all of a 0.3 sample.

faiss is imported inside the functions: the driver of a stage that does not cluster never pays
for it. GPU faiss (the faiss-gpu wheel exposes the same `faiss` module) is used where the
module has GPU support and sees a GPU.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

DATACOMP_K = 100_000
SAMPLE_RATIO = 0.3
POINTS_PER_CENTROID = 64
SEARCH_BATCH = 65_536  # vectors per faiss search call: bounded memory for the distance matrix


def default_k(pool: int) -> int:
    """DataComp's 100,000 centroids, scaled down for small pools (module doc)."""
    return int(min(DATACOMP_K, max(2, math.floor(SAMPLE_RATIO * pool / POINTS_PER_CENTROID))))


def default_sample(pool: int, k: int) -> int:
    """Vectors the centroids are fitted on: 64 per centroid, at most the pool."""
    return int(min(pool, POINTS_PER_CENTROID * k))


def gpus() -> int:
    """GPUs faiss can use here (0 for faiss-cpu or a machine without GPUs)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get is not None else 0
    except Exception:  # a GPU build on a machine whose driver is missing
        return 0


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32, C-contiguous (what faiss takes without a copy)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def fit(sample: np.ndarray, k: int, seed: int, niter: int,
        gpu: Optional[bool] = None) -> np.ndarray:
    """k centroids (float32, unit length: spherical k-means on unit vectors) of `sample`."""
    import faiss

    x = normalise(sample)
    use_gpu = gpus() > 0 if gpu is None else gpu
    kmeans = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, spherical=True, gpu=use_gpu,
                          verbose=False, max_points_per_centroid=max(256, POINTS_PER_CENTROID),
                          min_points_per_centroid=1)
    kmeans.train(x)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def flat_index(centroids: np.ndarray, gpu: Optional[int] = None) -> Any:
    """An exact L2 index over the centroids; on GPU `gpu` when given and faiss can."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    if gpu is not None and gpus() > gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, gpu, index)
        index.capmix_resources = resources  # kept alive with the index
    return index


def nearest(index: Any, x: np.ndarray, batch: int = SEARCH_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid id int32, Euclidean distance float32) for each row of `x` (normalised
    first), searched `batch` rows at a time."""
    x = normalise(x)
    ids = np.empty(len(x), dtype=np.int32)
    dist = np.empty(len(x), dtype=np.float32)
    for start in range(0, len(x), batch):
        d2, i = index.search(x[start:start + batch], 1)
        ids[start:start + batch] = i[:, 0]
        # faiss returns squared L2; tiny negatives come from float rounding of equal vectors
        dist[start:start + batch] = np.sqrt(np.maximum(d2[:, 0], 0.0))
    return ids, dist
