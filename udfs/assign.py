"""Nearest-centroid assignment as an Arrow UDF (`mapInArrow`, the Arrow flavour of Spark's
pandas UDFs): every embedding of a DataFrame -> (uid, cluster, distance, keep).

The centroids travel as ONE broadcast of a float32 matrix: Spark ships it to each executor once,
and each Python worker builds its faiss index from it once (module cache keyed by the broadcast
id), on the task's GPU where faiss has GPU support. Embeddings are read as Arrow list arrays and
reshaped into (rows, dim) float32 matrices without a per-row Python object, then searched in
batches; nothing is cached across the pool and no double vectors exist anywhere.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark import Broadcast
    from pyspark.sql import DataFrame

OUTPUT_SCHEMA = "uid STRING, cluster INT, distance FLOAT, keep BOOLEAN"
# {"of": the Broadcast, "index": faiss index}: one per worker. Keyed by the Broadcast object,
# which the worker's broadcast registry keeps unique per broadcast (executors see no id).
_INDEX: dict[str, Any] = {}
_LOCK = threading.Lock()


def embedding_matrix(column: "pa.Array", dim: int) -> np.ndarray:
    """A list<float> Arrow column -> (rows, dim) float32; ValueError naming the first row whose
    length is not `dim` (a NULL embedding counts as length 0)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(lengths != dim)
    if bad.size:
        raise ValueError(f"embedding of dimension {int(lengths[bad[0]])} where the centroids "
                         f"have {dim} (row {int(bad[0])} of its batch)")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return values.astype(np.float32, copy=False).reshape(len(column), dim)


def _index(centroids: "Broadcast", threads: Optional[int]) -> Any:
    from capmix.centroids import flat_index
    from udfs.runtime import task_gpus

    if threads:  # the task's share of the cores: faiss's OpenMP would otherwise take them all
        import faiss

        faiss.omp_set_num_threads(threads)
    with _LOCK:
        if _INDEX.get("of") is not centroids:
            gpus = task_gpus()
            _INDEX.clear()  # a new broadcast (a later run): drop the old index first
            _INDEX.update(of=centroids,
                          index=flat_index(centroids.value, int(gpus[0]) if gpus else None))
        return _INDEX["index"]


def assign_batches(batches: Iterator["pa.RecordBatch"], centroids: "Broadcast",
                   keep: Optional["Broadcast"],
                   threads: Optional[int] = None) -> Iterator["pa.RecordBatch"]:
    import pyarrow as pa

    from capmix.centroids import nearest

    index = _index(centroids, threads)
    mask = keep.value if keep is not None else None
    dim = int(centroids.value.shape[1])
    for batch in batches:
        if batch.num_rows == 0:
            continue
        x = embedding_matrix(batch.column(batch.schema.get_field_index("embedding")), dim)
        ids, dist = nearest(index, x)
        kept = mask[ids] if mask is not None else np.zeros(len(ids), dtype=bool)
        yield pa.RecordBatch.from_arrays(
            [batch.column(batch.schema.get_field_index("uid")).cast(pa.string()),
             pa.array(ids, pa.int32()), pa.array(dist, pa.float32()), pa.array(kept)],
            names=["uid", "cluster", "distance", "keep"])


def assign_frame(df: "DataFrame", centroids: "Broadcast", keep: Optional["Broadcast"] = None,
                 threads: Optional[int] = None) -> "DataFrame":
    """DataFrame[uid, embedding ARRAY<FLOAT>] -> DataFrame[uid, cluster, distance, keep]; keep is
    `keep.value[cluster]` (a boolean array of length k), False without a mask; `threads`: faiss
    threads per task (udfs.runtime.threads_per_task). Lazy."""
    from functools import partial

    return df.select("uid", "embedding").mapInArrow(
        partial(assign_batches, centroids=centroids, keep=keep, threads=threads), OUTPUT_SCHEMA)
