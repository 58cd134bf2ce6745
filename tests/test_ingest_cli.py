"""Ingest as a user runs it: `capmix ingest` (killed with -9, then resumed), `capmix sql`, and
`spark-submit jobs/ingest.py`. Each subprocess starts its own Spark (~10 s), so they are few."""
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.ingest import run
from pools import make_samples, make_shard

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPARK = ["--set", "spark.master=local[2]", "--set", "spark.driver_memory=1g",
         "--set", "spark.shuffle_partitions=2"]


def env():
    return {**os.environ, "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}


def capmix(*args, timeout=240):
    return subprocess.run([str(BIN / "capmix"), *args], capture_output=True, text=True,
                          env=env(), timeout=timeout, cwd=ROOT)


def spark_submit(*args, timeout=240):
    return subprocess.run(
        [str(BIN / "spark-submit"), "--master", "local[2]", "--driver-memory", "1g",
         str(ROOT / "jobs" / "ingest.py"), *args],
        capture_output=True, text=True, env=env(), timeout=timeout, cwd=ROOT)


def shards(directory: Path, n: int, per: int = 4) -> list[Path]:
    return [make_shard(directory, f"{i:05d}", make_samples(per, prefix=f"{i}", offset=per * i))
            for i in range(n)]


def table_rows(lake):
    cols = [c for c in lake.read("pool").columns if c != "ingested_at"]
    return sorted(tuple(r) for r in lake.read("pool").select(*cols).collect())


def kill_after_first_commit(cmd: list[str], lake_dir: Path, timeout: float = 180) -> None:
    """Start `cmd` in its own process group; SIGKILL the whole group (python and its JVM) as
    soon as the pool's first Delta commit is on disk."""
    first = lake_dir / "pool" / "_delta_log" / f"{0:020d}.json"
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not first.exists():
            if proc.poll() is not None:
                pytest.fail(f"ingest ended before its first commit: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no commit within the timeout")
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stderr.close()


def test_kill_9_then_rerun_equals_an_uninterrupted_run_and_sql_reads_it(spark, cfg, tmp_path,
                                                                       capsys):
    """`capmix ingest` killed after its first commit, re-run with `spark-submit jobs/ingest.py`,
    compared with a run that was never interrupted (every column but ingested_at), then read
    back with `capmix sql`. One test, so the suite starts two Sparks instead of five."""
    from capmix.config import LakeConfig
    from capmix.lake import open_lake

    inputs = shards(tmp_path / "s", 4)
    pattern = str(tmp_path / "s" / "{00000..00003}.tar")
    killed_lake = tmp_path / "killed"
    cmd = [str(BIN / "capmix"), "ingest", "--lake", str(killed_lake), "--units-per-commit", "1",
           *SPARK, pattern]
    kill_after_first_commit(cmd, killed_lake)
    killed = open_lake(spark, LakeConfig(path=str(killed_lake)))
    assert killed.version("pool") < len(inputs) - 1, "the kill came after the last commit"
    partial = len(table_rows(killed))
    assert partial % 4 == 0 and 4 <= partial < 16  # whole shards only

    # The re-run goes through the other entry point, spark-submit on the job file, and groups
    # the units differently: which row a uid keeps does not depend on the grouping.
    resumed = spark_submit("--lake", str(killed_lake), "--units-per-commit", "2", *SPARK,
                           pattern)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = partial // 4
    assert resumed.stdout.strip().splitlines()[-1].startswith(
        f"ingest: 4 shards ({done} done before, skipped), {16 - partial} rows ok, "
        "0 rows in error, 0 unsafe members ignored, 0 already present (")

    whole = open_lake(spark, LakeConfig(path=str(tmp_path / "whole")))
    run(spark, dataclasses.replace(cfg, lake=whole.cfg), [str(p) for p in inputs],
        units_per_commit=4)
    assert table_rows(killed) == table_rows(whole)
    assert len(table_rows(whole)) == 16

    # `capmix sql` through the CLI's own entry point, in this process: its session is reused
    # (and not stopped), which saves a third Spark start-up.
    from capmix.cli import log, main

    saved = (list(log.handlers), log.propagate, log.level)  # main() sets up logging for a CLI
    try:
        assert main(["sql", "--lake", str(killed_lake),
                     "SELECT status, count(*) AS n FROM pool GROUP BY status"]) == 0
    finally:
        log.handlers[:], log.propagate, log.level = saved[0], saved[1], saved[2]
    assert capsys.readouterr().out.split() == ["status", "n", "ok", "16"]


def test_cli_rejects_missing_inputs_before_starting_spark(tmp_path):
    started = time.monotonic()
    out = capmix("ingest", "--lake", str(tmp_path / "l"), str(tmp_path / "none.tar"))
    assert out.returncode == 2 and time.monotonic() - started < 8
    assert out.stderr.strip() == f"capmix ingest: input not found: {tmp_path / 'none.tar'}"
    assert not (tmp_path / "l").exists()
