"""Driver for tests/test_compute.py: a real Spark Connect session (a local Connect server that
pyspark starts itself), then every capmix stage, as the CLI and as `jobs.<stage>.run`, against
it. Writes {stage: {rc, err}} and the direct calls' errors to argv[1] as JSON."""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys


def main(out: str, work: str) -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote("local[1]").getOrCreate()
    from capmix.cli import main as cli
    from capmix.compute import is_connect

    lake = os.path.join(work, "lake")
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    open(os.path.join(data, "00000.tar"), "wb").close()  # an input for ingest to list
    args = {"ingest": [data], "caption": [], "score": [], "cluster": ["--reference-images", data],
            "mix": ["--strategy", "raw_top", "--percent", "30"], "stats": [],
            "sql": ["SELECT 1"], "export": ["--train-set", "x", "--out", os.path.join(work, "e")],
            "eval": ["--checkpoint", "random:tiny-clip", "--task", "classification", "--data",
                     data],
            "run": []}
    got: dict = {"connect": is_connect(spark), "stages": {}, "direct": {}}
    for stage, extra in args.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli([stage, "--lake", lake, *extra])
        got["stages"][stage] = {"rc": rc, "err": err.getvalue()}
    # Notebooks call run() directly with Databricks' session: the same refusal, from run().
    from capmix.config import from_dict
    from capmix.errors import CapmixError

    cfg = from_dict({"lake": {"path": lake}})
    import jobs.mix
    import jobs.stats

    for name, call in (("stats", lambda: jobs.stats.run(spark, cfg, report=False)),
                       ("mix", lambda: jobs.mix.run(spark, cfg, "raw_top", percent=30.0))):
        try:
            call()
            got["direct"][name] = None
        except CapmixError as exc:
            got["direct"][name] = f"{type(exc).__name__}: {exc}"
    got["lake_written"] = os.path.exists(lake)
    with open(out, "w") as fh:
        json.dump(got, fh)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
