"""Pools, lakes and exports in an object store: a real S3 API on loopback (moto's server), read
and written through the same code paths as a local folder (fsspec in Python, S3A in Spark)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import s3
from pools import make_samples, make_shard
from toy_data import toy_rows, write_lake

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two img2dataset shards (tar + parquet) uploaded to s3://pool/shards/."""
    local = tmp_path_factory.mktemp("s3-shards")
    samples = [make_samples(6, prefix="a"), make_samples(5, prefix="b", offset=6)]
    for i, group in enumerate(samples):
        make_shard(local, f"{i:05d}", group)
    bucket = s3.bucket("pool")
    s3.upload(str(local) + "/", f"{bucket}/shards/")
    return f"{bucket}/shards", samples


def _cfg(lake: str, **sections):
    from capmix.config import from_dict
    from conftest import TEST_SPARK

    return from_dict({"spark": TEST_SPARK, "lake": {"path": lake}, **sections})


def test_storage_lists_and_streams_uris(shards):
    from capmix import storage
    from capmix.inputs import expand_inputs, plan_units

    prefix, _ = shards
    assert storage.glob(f"{prefix}/*.tar") == [f"{prefix}/00000.tar", f"{prefix}/00001.tar"]
    # A brace range is one listing of the folder; a missing shard is named.
    assert expand_inputs([f"{prefix}/{{00000..00001}}.tar"]) == storage.glob(f"{prefix}/*.tar")
    with pytest.raises(Exception, match="input not found: s3://pool/shards/00002.tar"):
        expand_inputs([f"{prefix}/{{00000..00002}}.tar"])
    units, _ = plan_units([prefix])  # a folder URI of shards
    assert [u.path for u in units] == [f"{prefix}/00000.tar", f"{prefix}/00001.tar"]
    assert storage.spark_path("s3://pool/x") == "s3a://pool/x"
    assert storage.filesystem("s3a://pool/shards")[1] == "pool/shards"


def test_ingest_from_s3_into_a_spark_delta_lake_on_s3a(spark, shards):
    """Shards stream from s3:// into a Delta lake on s3a:// that Spark writes (hadoop-aws)."""
    from capmix.lake import open_lake
    from jobs.ingest import run

    prefix, samples = shards
    lake_uri = f"{s3.bucket('lake')}/ingest"
    cfg = _cfg(lake_uri.replace("s3://", "s3a://"))
    summary = run(spark, cfg, [f"{prefix}/{{00000..00001}}.tar"])
    assert (summary.ok, summary.error) == (11, 0)
    lake = open_lake(spark, cfg.lake)
    assert lake.backend == "spark"
    rows = {r["key"]: r for r in lake.read("pool").collect()}
    want = {s.key: s for group in samples for s in group}
    assert set(rows) == set(want)
    for key, row in rows.items():
        assert row["image"] == want[key].image and row["text"] == want[key].text
    assert {r["source"] for r in rows.values()} == {f"{prefix}/00000.tar", f"{prefix}/00001.tar"}
    keys = s3.keys(f"{lake_uri}/pool/")
    assert any(k.endswith(".parquet") for k in keys) and \
        any("/_delta_log/00000000000000000000.json" in k for k in keys)
    # Resumed: nothing to do, nothing duplicated.
    again = run(spark, cfg, [f"{prefix}/{{00000..00001}}.tar"])
    assert again.skipped == 2 and lake.read("pool").count() == 11


@pytest.fixture(scope="module")
def s3_export(spark):
    """A lake on s3a:// holding 30 toy rows, its raw train set exported to s3://exports/raw:
    (config, rows, export URI, export result)."""
    from capmix.lake import open_lake
    from jobs.export import run

    cfg = _cfg(f"{s3.bucket('lake')}/export-lake", export={"min_files": 2})
    lake = open_lake(spark, cfg.lake)
    rows = toy_rows(5, seed=4)
    write_lake(spark, lake, rows)
    out = f"{s3.bucket('exports')}/raw"
    return cfg, rows, out, run(spark, cfg, "toy_raw", out)


def test_export_to_s3_reads_back(spark, s3_export):
    """A lake on s3a:// exported to s3://: the metadata file and the parquet land in the store,
    and pyarrow reads the dataset back from there."""
    import pyarrow.dataset as ds

    from capmix import storage
    from jobs.export import METADATA_FILE, run

    cfg, rows, out, res = s3_export
    assert res.rows == len(rows) and res.files >= 2
    with storage.open_input(f"{out}/{METADATA_FILE}") as fh:
        assert json.load(fh)["rows"] == len(rows)
    fs, inner = storage.pyarrow_fs(out)
    got = ds.dataset(inner, filesystem=fs, format="parquet",
                     ignore_prefixes=["_", "."]).to_table().to_pylist()
    by_uid = {r["uid"]: r for r in rows}
    assert sorted(r["uid"] for r in got) == sorted(by_uid)
    assert all(r["image"] == by_uid[r["uid"]]["image"] for r in got)
    with pytest.raises(Exception, match="already exists"):
        run(spark, cfg, "toy_raw", out)


def _capmix(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "capmix.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_ingest_command_line_s3_to_s3a(shards):
    """`capmix ingest --lake s3a://... s3://...` in its own process: the session capmix builds
    gets S3A's jars and the endpoint from AWS_ENDPOINT_URL."""
    prefix, _ = shards
    lake = f"{s3.bucket('lake')}/cli".replace("s3://", "s3a://")
    done = _capmix("ingest", "--lake", lake, f"{prefix}/{{00000..00001}}.tar")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = [line for line in done.stdout.splitlines() if line.startswith("ingest: ")]
    assert len(summary) == 1, done.stdout
    # Both shards' 11 samples read and inserted into the fresh lake, none failed or repeated.
    assert ", 11 rows ok, 0 rows in error," in summary[0], summary
    assert ", 0 already present" in summary[0], summary
    assert any(k.endswith(".parquet") for k in s3.keys("s3://lake/cli/pool/"))


def _jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def test_training_reads_an_s3_export_and_checkpoints_to_s3(s3_export):
    """`capmix train --data s3://... --out s3://...`: the ranks read the export from the store
    (footers through fsspec, rows through petastorm on an fsspec filesystem), the checkpoints,
    log and config land in the bucket, and `--resume` continues from the latest checkpoint
    there with the samples the uninterrupted run had."""
    from training import checkpoint as ckpt

    _, rows, data, _ = s3_export
    out = f"{s3.bucket('runs')}/raw"
    args = ["train", "--data", data, "--out", out, "--model", "tiny-clip", "--batch-size", "8",
            "--samples", "32", "--checkpoint-every", "2", "--set", "train.log_every=1",
            "--set", "train.warmup=1", "--set", "train.workers=1",
            "--set", "train.log_samples=true"]
    quiet = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    first = _capmix(*args, env=quiet)
    assert first.returncode == 0, first.stderr[-3000:]
    keys = set(s3.keys(f"{out}/"))
    assert {"raw/checkpoints/step_00000002.pt", "raw/checkpoints/step_00000004.pt",
            "raw/log.jsonl", "raw/train_config.json", "raw/samples/rank_0.jsonl"} <= keys, keys
    assert not [k for k in keys if k.endswith(".tmp")], keys  # every temporary key moved
    state = ckpt.load(f"{out}/checkpoints/step_00000004.pt")  # read back from the store
    assert (state["step"], state["samples_seen"], state["data"]) == (4, 32, data)
    assert json.loads(s3.read(f"{out}/train_config.json"))["run_name"] == "raw"

    # As if the run had been killed after step 2's checkpoint: resume from the store.
    s3.delete(f"{out}/checkpoints/step_00000004.pt")
    second = _capmix(*args, "--resume", env=quiet)
    assert second.returncode == 0, second.stderr[-3000:]
    assert ckpt.latest(out) == f"{out}/checkpoints/step_00000004.pt"
    log = _jsonl(s3.read(f"{out}/log.jsonl"))  # the first run's lines, then the resumed run's
    starts = [r for r in log if r["event"] == "start"]
    assert [r["start_step"] for r in starts] == [0, 2]
    assert starts[1]["resumed_from"] == f"{out}/checkpoints/step_00000002.pt"
    assert [r["step"] for r in log if r["event"] == "step"] == [1, 2, 3, 4, 3, 4]
    seen = _jsonl(s3.read(f"{out}/samples/rank_0.jsonl"))
    assert [r["step"] for r in seen] == [1, 2, 3, 4, 3, 4]
    assert seen[4:] == seen[2:4]  # steps 3 and 4 saw the same samples after the resume
    assert {u for r in seen for u in r["uids"]} <= {r["uid"] for r in rows}


@pytest.mark.parametrize("case", ["no-bucket", "bad-credentials", "unreachable"])
def test_store_errors_are_one_line_and_write_nothing(shards, case):
    prefix, _ = shards
    lake = f"{s3.bucket('lake')}/refused-{case}"
    inputs = f"{prefix}/00000.tar"
    env = {}
    if case == "no-bucket":
        inputs = "s3://no-such-bucket/shards/00000.tar"
        expected = "bucket or container 'no-such-bucket' does not exist"
    elif case == "bad-credentials":
        # moto checks signatures only when told to; a server of its own that does.
        expected = "access denied"
        env = {"AWS_ENDPOINT_URL": _authenticating_server()}
    else:
        expected = "cannot reach the store"
        env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # discard port: nothing listens
    done = _capmix("ingest", "--lake", lake, inputs, env=env)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert s3.keys(f"{lake}/") == []


_auth = {}


def _authenticating_server() -> str:
    """A second moto server, in its own process, that rejects unknown access keys."""
    if "endpoint" not in _auth:
        port = s3._free_port()
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _auth.update(endpoint=f"http://127.0.0.1:{port}", proc=proc)
        import socket
        import time

        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
    return _auth["endpoint"]


@pytest.fixture(scope="module", autouse=True)
def _stop_auth_server():
    yield
    if "proc" in _auth:
        _auth["proc"].terminate()
