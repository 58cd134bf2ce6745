"""Two writers at once on one lake: no duplicate, no lost row; the loser stops with a clear
conflict (exit code 2) and a re-run completes the work. On Spark's own Delta Lake."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import jobs.caption
from capmix import chunks
from capmix.config import from_dict
from capmix.errors import ConflictError
from capmix.lake import open_lake
from caption_pool import write_pool
from conftest import TEST_SPARK

REPO = Path(__file__).resolve().parents[1]
N_OK = 12


def test_fences_built_before_a_commit_let_only_one_writer_commit_a_step(spark, lake):
    rows = spark.createDataFrame([("a",)], "uid string")
    first = chunks.Fence(lake, "t", "capmix:test")
    second = chunks.Fence(lake, "t", "capmix:test")  # planned at the same time
    assert first.append(rows) == 1
    with pytest.raises(ConflictError, match="'t'.*re-run"):
        second.append(spark.createDataFrame([("a",)], "uid string"))
    assert lake.read("t").count() == 1
    # A run that starts after the commit continues the sequence.
    assert chunks.Fence(lake, "t", "capmix:test").append(
        spark.createDataFrame([("b",)], "uid string")) == 1
    assert lake.txn_version("t", "capmix:test") == 1


def test_two_caption_runs_at_once_end_with_every_caption_once(spark, tmp_path):
    path = tmp_path / "lake"
    cfg = from_dict({"spark": TEST_SPARK, "lake": {"path": str(path)},
                     "caption": {"captioner": "tiny-coca", "samples": 1, "max_length": 8,
                                 "chunk_rows": 3, "batch_size": 4}})
    lake = open_lake(spark, cfg.lake)
    write_pool(spark, lake, N_OK, 1)
    cmd = [sys.executable, "-m", "capmix.cli", "caption", "--lake", str(path),
           "--captioner", "tiny-coca", "--samples", "1", "--chunk-rows", "3",
           "--batch-size", "4", "--set", "caption.max_length=8",
           "--set", "spark.master=local[1]", "--set", "spark.shuffle_partitions=2",
           "--set", "spark.driver_memory=1g"]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read().decode()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "capmix caption: table 'captions'" in err and "re-run" in err
    jobs.caption.run(spark, cfg)  # completes whatever the stopped run left
    df = lake.read("captions").toPandas()
    assert len(df) == N_OK and not df.duplicated(["uid", "captioner", "sample"]).any()
    assert set(df["uid"]) == {f"ok{i:03d}" for i in range(N_OK)}
