"""A GPU cluster in miniature: `spark-submit --master local-cluster[2,1,2048]` starts two real
executor JVMs, each announcing a GPU through a discovery script (no GPU needed)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_slots_per_executor_under_spark_submit(tmp_path):
    from pyspark.find_spark_home import _find_spark_home

    script = tmp_path / "gpus.sh"
    script.write_text('#!/usr/bin/env bash\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    home = _find_spark_home()
    out = tmp_path / "cluster.json"
    gpu = [f"spark.worker.resource.gpu.amount=1",
           f"spark.worker.resource.gpu.discoveryScript={script}",
           "spark.executor.resource.gpu.amount=1", "spark.task.resource.gpu.amount=1",
           f"spark.executor.resource.gpu.discoveryScript={script}",
           "spark.sql.shuffle.partitions=5", "spark.ui.enabled=false",
           f"spark.executorEnv.PYTHONPATH={REPO}"]
    cmd = [str(Path(home) / "bin" / "spark-submit"), "--master", "local-cluster[2,1,2048]"]
    for item in gpu:
        cmd += ["--conf", item]
    env = {**os.environ, "SPARK_HOME": home, "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd + [str(REPO / "tests" / "cluster_job.py"), str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and out.exists(), run.stderr[-3000:]
    got = json.loads(out.read_text())
    # spark-submit's master and resources, not the config's local[4] and 9 partitions.
    assert got["master"] == "local-cluster[2,1,2048]" and got["executor_gpus"] == "1"
    assert got["shuffle"] == "5"
    # Two executors x one GPU each: a chunk gets two partitions, one task per GPU.
    assert got["slots"] == 2 and got["partitions"] == 2
    tasks = got["tasks"]
    assert sorted(t["partition"] for t in tasks) == [0, 1]
    assert sum(t["rows"] for t in tasks) == 64
    assert len({t["executor_process"] for t in tasks}) == 2, tasks  # one task per executor
    first, second = sorted(tasks, key=lambda t: t["started"])
    assert second["started"] < first["ended"], tasks  # both executors worked at once
    assert all(t["gpus"] == "0" for t in tasks), tasks  # the GPU Spark assigned each task
