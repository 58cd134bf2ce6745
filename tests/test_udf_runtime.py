"""The executor-side helpers of the model UDFs (no Spark session needed)."""
from __future__ import annotations

import pandas as pd
import pytest

from capmix import chunks
from udfs import runtime


def test_out_of_memory_halves_the_batch_keeps_order_and_is_remembered():
    import torch

    calls = []

    def fn(part):
        calls.append(len(part))
        if len(part) > 3:  # what a GPU does when the batch does not fit
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return [x * 10 for x in part]

    items = list(range(11))
    memo = ("test", id(fn))
    assert runtime.run_in_batches(items, 16, fn, memo) == [x * 10 for x in items]
    assert calls[:3] == [11, 8, 4] and set(calls[3:]) == {2, 1}  # 16 -> 8 -> 4 -> 2
    calls.clear()
    runtime.run_in_batches(items, 16, fn, memo)
    assert max(calls) == 2  # the next call starts at the size that fitted


def test_out_of_memory_at_batch_one_is_raised():
    import torch

    def fn(part):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        runtime.run_in_batches([1, 2, 3], 2, fn, ("test-one",))


def test_rebatch_makes_full_batches_across_arrow_batches():
    frames = [pd.DataFrame({"x": range(a, b)}) for a, b in [(0, 5), (5, 6), (6, 17)]]
    out = list(runtime.rebatch(iter(frames), 4))
    assert [len(f) for f in out] == [4, 4, 4, 4, 1]
    assert pd.concat(out)["x"].tolist() == list(range(17))


def test_device_and_precision_on_a_cpu_machine():
    assert runtime.pick_device("cpu") == "cpu"
    assert runtime.pick_precision("auto", "cpu") == "fp32"
    assert runtime.pick_precision("bf16", "cuda:0") == "bf16"
    assert runtime.task_gpus() == []  # not inside a Spark task


def test_threads_per_task_splits_the_cores_between_concurrent_tasks(spark):
    import os

    cores = os.cpu_count() or 1
    assert runtime.threads_per_task(spark) == max(1, cores // 2)  # the test session: local[2]
    assert runtime.threads_per_task(spark, 3) == 3


def test_chunk_plan_groups_files_and_splits_big_ones():
    plan = chunks.plan([("f3", 2), ("f1", 4), ("f2", 5), ("f0", 0), ("f4", 23)], 10)
    assert [(c.files, c.rows, c.part) for c in plan] == [
        (("f1", "f2"), 9, None),
        (("f4",), 8, (0, 3)), (("f4",), 8, (1, 3)), (("f4",), 8, (2, 3)),
        (("f3",), 2, None)]
    assert chunks.plan([], 10) == []


def test_chunks_select_exactly_their_rows(spark):
    """Hash parts of one file partition its rows: each uid in exactly one part."""
    from pyspark.sql import functions as F

    df = spark.range(200).select(F.format_string("u%d", "id").alias("uid"),
                                 F.lit("fileA").alias(chunks.FILE_COLUMN))
    parts = [chunks.Chunk(k, ("fileA",), 200, part=(k, 3)) for k in range(3)]
    seen = [set(r.uid for r in p.select(df).collect()) for p in parts]
    assert sum(len(s) for s in seen) == 200 and set.union(*seen) == {f"u{i}" for i in range(200)}
    assert chunks.Chunk(0, ("fileB",), 0).select(df).count() == 0


def test_chunks_spread_over_every_gpu_slot_or_every_core(spark):
    """A GPU stage gets executors x (GPUs per executor / GPUs per task) partitions per chunk;
    without GPU resources, or for a CPU stage, the session's default parallelism."""
    gpus = {"spark.executor.resource.gpu.amount": "4", "spark.task.resource.gpu.amount": "1"}
    assert chunks.slots(gpus, executors=8, default_parallelism=2, gpu=True) == 32
    half = {**gpus, "spark.task.resource.gpu.amount": "0.5"}
    assert chunks.slots(half, executors=8, default_parallelism=2, gpu=True) == 64
    assert chunks.slots(gpus, executors=8, default_parallelism=128, gpu=False) == 128
    few_cores = {**gpus, "spark.executor.cores": "8", "spark.task.cpus": "4"}
    assert chunks.slots(few_cores, executors=8, default_parallelism=64, gpu=True) == 16
    assert chunks.slots({}, executors=8, default_parallelism=128, gpu=True) == 128
    here = chunks.task_slots(spark, gpu=True)
    assert here == spark.sparkContext.defaultParallelism
    frame = spark.range(40).selectExpr("concat('u', id) AS uid")
    assert chunks.spread(spark, frame, None, gpu=True).rdd.getNumPartitions() == here
    assert chunks.spread(spark, frame, 5).rdd.getNumPartitions() == 5
