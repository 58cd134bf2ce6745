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


def test_local_weights_are_found_or_refused_on_the_driver(tmp_path):
    import pytest

    from capmix.errors import ConfigError
    from capmix.models import check_weights_reachable, local_weights, resolve

    assert local_weights(resolve("tiny-coca", "captioner")) is None  # random init, packaged
    assert local_weights(resolve("hf:Salesforce/blip2-opt-2.7b", "captioner")) is None  # hub id
    folder = tmp_path / "blip2"
    folder.mkdir()
    here = resolve("blip2-opt-2.7b", "captioner", str(folder))
    assert local_weights(here) == str(folder)
    check_weights_reachable(here, "caption.weights")
    clip = resolve(f"open_clip:local-dir:{tmp_path / 'gone'}", "scorer")
    assert local_weights(clip) == str(tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"score.weights: .*gone: no such file or folder on "
                                          r"the driver; executors load weights"):
        check_weights_reachable(clip, "score.weights")


def test_caption_with_missing_weights_is_one_line_before_any_task(spark, cfg, tmp_path, capsys):
    from capmix.cli import main

    rc = main(["caption", "--lake", cfg.lake.path, "--captioner", "blip2-opt-2.7b",
               "--weights", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("capmix caption: config error: caption.weights:"), err
    assert not (tmp_path / "lake").exists()  # stopped before the lake was touched
