"""Executors hold what they need: `capmix stats` on a real executor JVM (local-cluster) that
cannot see the driver's lexicon path still tags nouns, from the tagger the driver shipped."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_stats_on_an_executor_without_the_lexicon(tmp_path):
    from pyspark.find_spark_home import _find_spark_home

    from capmix.tagger import LINGUA_DIR

    (tmp_path / "lexicon").mkdir()
    for name in ("tags.yml", "words.yml", "unknown.yml"):
        shutil.copy(f"{LINGUA_DIR}/{name}", tmp_path / "lexicon" / name)
    home = _find_spark_home()
    out = tmp_path / "stats.json"
    cmd = [str(Path(home) / "bin" / "spark-submit"), "--master", "local-cluster[1,1,1024]",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2",
           "--conf", f"spark.executorEnv.PYTHONPATH={REPO}",
           str(REPO / "tests" / "stats_cluster_job.py"), str(out)]
    env = {**os.environ, "SPARK_HOME": home, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(REPO),
           "SPARK_WORKER_DIR": str(tmp_path / "work")}  # executors work in a folder of their own
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["master"] == "local-cluster[1,1,1024]"
    # The executor really cannot resolve the configured path ...
    assert got["executor_cwd"] != got["driver_cwd"] and not got["executor_sees_lexicon"], got
    # ... and the counts are those the in-process test works out by hand (tests/test_stats.py).
    assert "lingua" in got["tagger"]
    assert got["nouns"] == {"raw": 6.0, "captioner:cap": 6.0}, got
