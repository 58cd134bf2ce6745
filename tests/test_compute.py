"""Which compute each stage runs on (capmix/compute.py): a real Spark Connect session gets one
line naming the stage and the compute it needs, exit code 2 and nothing written; Spark older than
4.0 (Databricks Runtime 15.4 / 16.4 LTS) is refused at start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from capmix.compute import CLASSIC_ONLY, ComputeError, check_session, check_spark_version

REPO = Path(__file__).resolve().parents[1]


def test_spark_versions():
    check_spark_version((4, 0), "stats")
    for old in ((3, 5), (3, 4)):
        with pytest.raises(ComputeError, match=r"stats needs Apache Spark 4\.0.*3\.5|3\.4") as exc:
            check_spark_version(old, "stats")
        assert "17.3 LTS ML" in str(exc.value) and exc.value.exit_code == 2


def test_classic_session_passes(spark):
    from capmix.compute import is_connect

    assert not is_connect(spark)
    for stage in CLASSIC_ONLY:
        check_session(spark, stage)  # the suite's local session is classic Spark 4.0


def test_every_stage_refuses_a_real_spark_connect_session(tmp_path):
    pytest.importorskip("grpc")  # pyspark's Connect client (requirements.lock)
    out = tmp_path / "connect.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1"}
    run = subprocess.run([sys.executable, str(REPO / "tests" / "connect_job.py"), str(out),
                          str(tmp_path)], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["connect"] is True
    assert set(got["stages"]) == set(CLASSIC_ONLY)
    for stage, result in got["stages"].items():
        lines = result["err"].strip().splitlines()
        assert result["rc"] == 2 and len(lines) == 1, (stage, result)
        assert lines[0].startswith(f"capmix {stage}: {stage} cannot run on Spark Connect"), lines
        assert "dedicated (single user) access mode" in lines[0], lines
    for name, error in got["direct"].items():
        assert error and error.startswith(f"ComputeError: {name} cannot run on Spark Connect")
    assert not got["lake_written"]  # refused before any I/O
