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


def test_export_to_s3_reads_back(spark, tmp_path):
    """A lake on s3a:// exported to s3://: the metadata file and the parquet land in the store,
    and pyarrow reads the dataset back from there."""
    import pyarrow.dataset as ds

    from capmix import storage
    from capmix.lake import open_lake
    from jobs.export import METADATA_FILE, run

    cfg = _cfg(f"{s3.bucket('lake')}/export-lake", export={"min_files": 2})
    lake = open_lake(spark, cfg.lake)
    rows = toy_rows(5, seed=4)
    write_lake(spark, lake, rows)
    out = f"{s3.bucket('exports')}/raw"
    res = run(spark, cfg, "toy_raw", out)
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
    assert "11 rows ok" in done.stdout + done.stderr or "11" in done.stdout
    assert any(k.endswith(".parquet") for k in s3.keys("s3://lake/cli/pool/"))


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
