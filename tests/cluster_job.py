"""Run by tests/test_local_cluster.py under `spark-submit --master local-cluster[...]`: what a
GPU cluster gives a capmix job (executors, GPU slots, per-task GPU addresses), as JSON lines."""
from __future__ import annotations

import json
import os
import sys
import time


def main(out: str) -> None:
    from pyspark.sql import functions as F

    from capmix import chunks
    from capmix.config import LakeConfig, SparkConfig
    from capmix.spark import get_or_create

    # What a config would ask for a local run: spark-submit's master and resources must win.
    spark, _ = get_or_create(SparkConfig(master="local[4]", shuffle_partitions=9), LakeConfig())
    conf = spark.sparkContext.getConf()
    slots = chunks.task_slots(spark, gpu=True)
    frame = chunks.spread(spark, spark.range(64).select(F.format_string("u%d", "id")
                                                         .alias("uid")), None, gpu=True)

    def probe(batches):
        from pyspark import TaskContext

        from udfs.runtime import task_gpus

        started = time.time()
        time.sleep(1.5)  # long enough for the other executor's task to overlap this one
        rows = sum(len(b) for b in batches)
        import pandas as pd

        yield pd.DataFrame({"partition": [TaskContext.get().partitionId()],
                            "executor_process": [os.getppid()], "gpus": [",".join(task_gpus())],
                            "started": [started], "ended": [time.time()], "rows": [rows]})

    tasks = frame.mapInPandas(probe, "partition int, executor_process long, gpus string, "
                                     "started double, ended double, rows long").collect()
    with open(out, "w") as fh:
        json.dump({"master": spark.sparkContext.master,
                   "executor_gpus": conf.get("spark.executor.resource.gpu.amount"),
                   "shuffle": spark.conf.get("spark.sql.shuffle.partitions"),
                   "slots": slots, "partitions": frame.rdd.getNumPartitions(),
                   "tasks": [t.asDict() for t in tasks]}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
