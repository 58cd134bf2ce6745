"""What every model UDF needs on the executor: the model built once per Python worker and kept
between tasks (Spark reuses workers: spark.python.worker.reuse), the task's GPU pinned from
`TaskContext.resources()`, the precision for that device, CPU threads sized to the task's share
of the cores, rows regrouped into full batches, and batches that halve on CUDA out-of-memory.

Nothing here runs on the driver except `threads_per_task`, which the driver computes once and
ships inside the (small, picklable) task settings; models are never pickled.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

log = logging.getLogger("capmix")

# role ("captioner", "scorer") -> (settings key, model). One model per role per worker: a worker
# that moves to another GPU or another model drops the old one instead of holding both.
_MODELS: dict[str, tuple[Any, Any]] = {}
# (role, key) -> the batch size that fitted last time after an out-of-memory, so later batches
# in this worker start there instead of failing again.
_BATCH_LIMIT: dict[tuple, int] = {}
_LOCK = threading.Lock()
_THREADS_SET: Optional[int] = None


def task_gpus() -> list[str]:
    """GPU addresses Spark assigned to the running task (spark.task.resource.gpu.amount)."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is None:
            return []
        gpu = ctx.resources().get("gpu")
        return list(gpu.addresses) if gpu is not None else []
    except Exception:  # not inside a task, or a Spark without resource scheduling
        return []


def pick_device(requested: str) -> str:
    """`cpu`, `cuda`, or `auto`: the task's assigned GPU, else the first visible GPU, else CPU."""
    if requested == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if requested == "cuda" and not available:
        raise RuntimeError("device 'cuda' requested but this executor has no usable GPU")
    if not available:
        return "cpu"
    gpus = task_gpus()
    index = int(gpus[0]) if gpus else 0
    if index >= torch.cuda.device_count():  # addresses are physical ids; CUDA_VISIBLE_DEVICES
        index = 0                           # may already narrow the process to that one GPU
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def pick_precision(requested: str, device: str) -> str:
    """`auto`: bf16 on GPUs that have it, fp16 on older ones, fp32 on CPU."""
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def threads_per_task(spark: Any, requested: Optional[int] = None) -> int:
    """CPU threads one task's torch may use: the cores divided by the tasks running at once on
    an executor, so concurrent tasks do not oversubscribe the cores (which on a busy machine
    costs far more than it gains). Computed on the driver."""
    if requested:
        return requested
    conf = spark.sparkContext.getConf()
    master = conf.get("spark.master", "local[*]")
    cores = os.cpu_count() or 1
    if master.startswith("local"):
        inside = master[master.find("[") + 1: master.find("]")] if "[" in master else "1"
        slots = int(inside.split(",")[0]) if inside.split(",")[0].isdigit() else cores
        return max(1, cores // max(1, slots))
    return max(1, int(conf.get("spark.task.cpus", "1")))


def set_threads(n: int) -> None:
    global _THREADS_SET
    if _THREADS_SET == n:
        return
    import torch

    torch.set_num_threads(n)
    _THREADS_SET = n


def cached_model(role: str, key: Any, build: Callable[[], Any]) -> Any:
    """The worker's model for `role`, built by `build()` on first use or when `key` changes."""
    with _LOCK:
        held = _MODELS.get(role)
        if held is not None and held[0] == key:
            return held[1]
        if held is not None:
            _MODELS.pop(role)
            del held
            _empty_cuda_cache()
        model = build()
        _MODELS[role] = (key, model)
        return model


def _empty_cuda_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def run_in_batches(items: Sequence[Any], batch_size: int, fn: Callable[[Sequence[Any]], list],
                   memo: tuple = ()) -> list:
    """fn over consecutive slices of `items`; a CUDA out-of-memory halves the slice and retries
    (down to one item), and the size that fitted is remembered for this worker under `memo`."""
    import torch

    size = min(batch_size, _BATCH_LIMIT.get(memo, batch_size))
    out: list = []
    i = 0
    while i < len(items):
        part = items[i: i + size]
        try:
            out.extend(fn(part))
        except torch.cuda.OutOfMemoryError:
            if size <= 1:
                raise
            _empty_cuda_cache()
            size = max(1, size // 2)
            _BATCH_LIMIT[memo] = size
            log.warning("CUDA out of memory: batch size halved to %d", size)
            continue
        i += len(part)
    return out


def rebatch(frames: Iterable[Any], rows: int) -> Iterator[Any]:
    """Regroup pandas DataFrames (Arrow batches, whose size Spark picks) into frames of exactly
    `rows` rows (the last one shorter), so every model call gets a full batch."""
    import pandas as pd

    pending: list = []
    held = 0
    for frame in frames:
        start = 0
        while start < len(frame):
            take = min(rows - held, len(frame) - start)
            pending.append(frame.iloc[start: start + take])
            held += take
            start += take
            if held == rows:
                yield pd.concat(pending, ignore_index=True)
                pending, held = [], 0
    if held:
        yield pd.concat(pending, ignore_index=True)


def prefetch(items: Iterable[Any], enabled: bool) -> Iterator[Any]:
    """Compute the next item in a background thread while the caller works on this one (decode
    and preprocess the next batch while the GPU runs the current one). Off on CPU, where the
    thread would only compete with the model for the same cores."""
    if not enabled:
        yield from items
        return
    from concurrent.futures import ThreadPoolExecutor

    iterator = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(next, iterator, _END)
        while True:
            item = future.result()
            if item is _END:
                return
            future = pool.submit(next, iterator, _END)
            yield item


_END = object()


def decode_images(blobs: Sequence[Optional[bytes]]) -> list:
    """PIL RGB images (upright, first frame) or None for bytes that do not decode."""
    from capmix.images import to_rgb

    out = []
    for blob in blobs:
        try:
            out.append(to_rgb(bytes(blob)) if blob is not None else None)
        except Exception as exc:  # the pool said ok; a decoder disagreeing must not kill the task
            log.warning("image does not decode in the worker: %s", exc)
            out.append(None)
    return out
