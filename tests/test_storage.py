"""capmix.storage: how paths and URIs are named for Python (fsspec) and for Spark (Hadoop)."""
from __future__ import annotations

import pytest

from capmix import storage


@pytest.mark.parametrize("path, scheme, uri", [
    ("s3://b/k", "s3", True), ("s3a://b/k", "s3a", True), ("gs://b/k", "gs", True),
    ("abfss://c@acct.dfs.core.windows.net/p", "abfss", True), ("hdfs://nn:8020/p", "hdfs", True),
    ("dbfs:/tmp/x", "dbfs", True), ("/Volumes/main/s/v/x", "", False), ("lake", "", False),
    ("file:///tmp/x", "file", False), ("C:\\data\\x", "", False),
])
def test_schemes(path, scheme, uri):
    assert storage.scheme(path) == scheme and storage.is_uri(path) is uri


def test_spark_and_fsspec_names():
    assert storage.spark_path("s3://b/lake") == "s3a://b/lake"
    assert storage.spark_path("s3a://b/lake") == "s3a://b/lake"
    assert storage.spark_path("gs://b/lake") == "gs://b/lake"
    assert storage.spark_path("rel/lake").startswith("/")
    assert storage.store_root("s3://bucket/a/b.tar") == "s3://bucket"
    assert storage.store_root("abfss://c@acct.dfs.core.windows.net/p") == \
        "abfss://c@acct.dfs.core.windows.net"
    # Unity Catalog volumes are local paths on Databricks; dbfs:/Volumes/... is the same place.
    assert storage.local_path("dbfs:/Volumes/main/s/v/x") == "/Volumes/main/s/v/x"
    assert storage.is_local("dbfs:/Volumes/main/s/v/x")


def test_local_paths_round_trip(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.tar").write_bytes(b"1")
    (tmp_path / "a" / "y.txt").write_bytes(b"2")
    assert storage.glob(str(tmp_path / "a" / "*.tar")) == [str(tmp_path / "a" / "x.tar")]
    assert storage.listdir(str(tmp_path / "a")) == ["x.tar", "y.txt"]
    assert storage.isdir(str(tmp_path / "a")) and storage.isfile(str(tmp_path / "a" / "x.tar"))
    with storage.open_input(str(tmp_path / "a" / "y.txt")) as fh:
        assert fh.read() == b"2"
    storage.check_reachable(str(tmp_path), "lake")  # local paths are not probed


def test_missing_store_package_is_one_line():
    with pytest.raises(Exception, match="cannot open gs://bucket/x"):
        storage.filesystem("gs://bucket/x")  # gcsfs is not installed here
