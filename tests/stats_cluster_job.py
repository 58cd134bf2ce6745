"""Driver for tests/test_executor_files.py, run by spark-submit on a local-cluster master: the
lexicon is at a path relative to the driver's folder, which the executor JVM (working in its
own folder under SPARK_WORKER_DIR) cannot resolve. `capmix stats` must still count nouns."""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(out: str) -> None:
    from capmix.config import from_dict
    from capmix.spark import get_or_create

    cfg = from_dict({"lake": {"path": os.path.abspath("lake")},
                     "stats": {"tagger": "lingua-hmm", "lingua_lexicon": "lexicon"}})
    spark, _ = get_or_create(cfg.spark, cfg.lake)
    from test_stats import _lake

    from jobs.stats import run

    lake = _lake(spark, cfg)
    result = run(spark, cfg, datasets=["raw", "captioner:cap"], subset_sizes=[2], scorer="clip",
                 report=False)
    nouns = {r.dataset: r.value for r in lake.read("text_stats")
             .where("metric = 'unique_nouns' AND subset_size = 4").collect()}

    def seen(_):  # what an executor's Python worker sees of the driver's relative path
        import os as _os
        yield (_os.getcwd(), _os.path.isdir("lexicon"))

    executor = spark.sparkContext.parallelize([0], 1).mapPartitions(seen).collect()[0]
    with open(out, "w") as fh:
        json.dump({"master": spark.sparkContext.master, "tagger": result.tagger,
                   "nouns": nouns, "executor_cwd": executor[0],
                   "executor_sees_lexicon": executor[1], "driver_cwd": os.getcwd()}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
