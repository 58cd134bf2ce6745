"""The lake contract on real Spark and real Delta tables, once per backend: Spark's own Delta
Lake (the default) and delta-rs (the fallback). Tables written by either are read by the other."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from capmix.errors import CapmixError, InputError
from capmix.lake import Txn, is_catalog

BACKENDS = ("spark", "delta-rs")


def open_backend(spark, path, backend):
    from capmix.config import from_dict
    from capmix.lake import open_lake

    return open_lake(spark, from_dict({"lake": {"path": str(path), "backend": backend}}).lake)


@pytest.fixture(params=BACKENDS)
def lake(request, spark, tmp_path):
    return open_backend(spark, tmp_path / "lake", request.param)

SCHEMA = "uid string, text string, image binary"


def rows(spark, *items):
    return spark.createDataFrame(list(items), SCHEMA)


def contents(lake, table="t"):
    return sorted((r.uid, r.text) for r in lake.read(table).collect())


def replay_log(table_dir: Path) -> set[str]:
    """Active files by the Delta protocol's own rules, without any Delta library."""
    active: set[str] = set()
    for commit in sorted((table_dir / "_delta_log").glob("*.json")):
        for line in commit.read_text().splitlines():
            action = json.loads(line)
            if "add" in action:
                active.add(action["add"]["path"])
            elif "remove" in action:
                active.discard(action["remove"]["path"])
    return active


def test_append_creates_and_reads_back(spark, lake):
    assert not lake.exists("t") and lake.version("t") is None
    assert lake.append("t", rows(spark, ("a", "x", b"1"), ("b", "y", b"2"))) == 2
    assert lake.version("t") == 0
    assert contents(lake) == [("a", "x"), ("b", "y")]
    assert lake.read("t").schema.simpleString() == "struct<uid:string,text:string,image:binary>"


def test_merge_inserts_only_missing_keys_and_dedupes_source(spark, lake):
    lake.append("t", rows(spark, ("a", "x", b"1")))
    inserted = lake.merge("t", rows(spark, ("a", "CHANGED", b"1"), ("c", "z2", b"3"),
                                    ("c", "z1", b"3")), ["uid"])
    assert inserted == 1
    # Existing key untouched; of the duplicate source keys the first by text wins.
    assert contents(lake) == [("a", "x"), ("c", "z1")]
    assert lake.merge("t", rows(spark, ("a", "again", b"1")), ["uid"]) == 0
    assert lake.version("t") == 1  # a merge that adds nothing commits nothing


def test_merge_update_replaces_rows_copy_on_write(spark, lake):
    lake.append("t", rows(spark, ("a", "x", b"1"), ("b", "y", b"2")))
    lake.append("t", rows(spark, ("c", "z", b"3")))
    assert lake.merge("t", rows(spark, ("b", "Y", b"2"), ("d", "w", b"4")), ["uid"],
                      update=True) == 2
    assert contents(lake) == [("a", "x"), ("b", "Y"), ("c", "z"), ("d", "w")]


def test_replace_where_is_one_atomic_commit(spark, lake):
    lake.append("t", rows(spark, ("a", "set1", b"1"), ("b", "set2", b"2"), ("n", None, b"")))
    before = lake.version("t")
    lake.replace_where("t", rows(spark, ("c", "set1", b"3")), "text = 'set1'")
    assert lake.version("t") == before + 1
    # NULL-predicate rows are kept, not silently dropped.
    assert contents(lake) == [("b", "set2"), ("c", "set1"), ("n", None)]


def test_overwrite_keeps_history(spark, lake):
    lake.append("t", rows(spark, ("a", "x", b"1")))
    lake.overwrite("t", rows(spark, ("b", "y", b"2")))
    assert contents(lake) == [("b", "y")]
    assert lake.version("t") == 1


def test_log_replay_matches_what_spark_reads(spark, lake, tmp_path):
    lake.append("t", rows(spark, ("a", "x", b"1"), ("b", "y", b"2")))
    lake.merge("t", rows(spark, ("b", "Y", b"2")), ["uid"], update=True)
    lake.replace_where("t", rows(spark, ("c", "z", b"3")), "uid = 'a'")
    table_dir = Path(lake.location("t"))
    active = replay_log(table_dir)
    by_parquet = sorted((r["uid"], r["text"]) for f in active
                        for r in pq.read_table(table_dir / f).to_pylist())
    assert by_parquet == contents(lake) == [("b", "Y"), ("c", "z")]
    first = [json.loads(l) for l in (table_dir / "_delta_log" / f"{0:020d}.json").read_text()
             .splitlines()]
    assert any("protocol" in a for a in first) and any("metaData" in a for a in first)


def test_deltalake_reads_what_spark_wrote(spark, lake):
    from deltalake import DeltaTable
    import pyarrow as pa

    lake.append("t", rows(spark, ("a", "x", b"1")))
    lake.merge("t", rows(spark, ("b", "y", b"2")), ["uid"])
    table = pa.table(DeltaTable(lake.location("t")).to_pyarrow_table())
    assert sorted(table.column("uid").to_pylist()) == ["a", "b"]


@pytest.mark.parametrize("writer,reader", [("spark", "delta-rs"), ("delta-rs", "spark")])
def test_each_backend_reads_and_extends_the_others_tables(spark, tmp_path, writer, reader):
    first = open_backend(spark, tmp_path / "l", writer)
    second = open_backend(spark, tmp_path / "l", reader)
    first.append("t", rows(spark, ("a", "x", b"1")), Txn("capmix:test", 0))
    assert second.exists("t") and contents(second) == [("a", "x")]
    assert second.txn_version("t", "capmix:test") == 0
    assert second.append("t", rows(spark, ("a", "x", b"1")), Txn("capmix:test", 0)) is None
    assert second.append("t", rows(spark, ("b", "y", b"2")), Txn("capmix:test", 1)) == 1
    second.merge("t", rows(spark, ("c", "z", b"3")), ["uid"])
    assert contents(first) == [("a", "x"), ("b", "y"), ("c", "z")]
    assert first.txn_version("t", "capmix:test") == 1 and first.version("t") == 2


def test_txn_append_is_idempotent(spark, lake):
    app = "capmix:caption:test"
    assert lake.txn_version("t", app) is None
    assert lake.append("t", rows(spark, ("a", "x", b"1")), Txn(app, 0)) == 1
    # A chunk replayed after its commit (same app id and version) adds nothing, and neither
    # does an older version; the next version commits.
    assert lake.append("t", rows(spark, ("a", "x", b"1")), Txn(app, 0)) is None
    assert lake.append("t", rows(spark, ("b", "y", b"2")), Txn(app, 1)) == 1
    assert lake.append("t", rows(spark, ("z", "old", b"9")), Txn(app, 0)) is None
    assert lake.txn_version("t", app) == 1 and lake.version("t") == 1
    assert contents(lake) == [("a", "x"), ("b", "y")]
    # Another app id has its own sequence.
    assert lake.append("t", rows(spark, ("c", "z", b"3")), Txn("capmix:other", 0)) == 1
    assert lake.txn_version("t", app) == 1 and lake.txn_version("t", "capmix:other") == 0


def test_delete_matching_rewrites_only_what_matches(spark, lake):
    lake.append("t", rows(spark, ("a", "x", b"1"), ("a", "y", b"1"), ("b", None, b"2")))
    lake.append("t", rows(spark, ("c", "z", b"3")))
    keys = spark.createDataFrame([("a", "y"), ("b", None), ("q", "none")], "uid string, text string")
    assert lake.delete_matching("t", keys, ["uid", "text"]) == 2
    assert contents(lake) == [("a", "x"), ("c", "z")]
    assert lake.delete_matching("t", keys, ["uid", "text"]) == 0


def test_failed_commit_leaves_table_at_previous_version(spark, tmp_path, monkeypatch):
    lake = open_backend(spark, tmp_path / "l", "delta-rs")
    lake.append("t", rows(spark, ("a", "x", b"1")))
    from deltalake import DeltaTable

    def crash(self, *a, **k):
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(DeltaTable, "create_write_transaction", crash)
    with pytest.raises(CapmixError, match="unchanged"):
        lake.replace_where("t", rows(spark, ("b", "y", b"2")), "true")
    monkeypatch.undo()
    assert lake.version("t") == 0 and contents(lake) == [("a", "x")]


def test_schema_mismatch_is_refused(spark, lake):
    lake.append("t", rows(spark, ("a", "x", b"1")))
    other = spark.createDataFrame([("b", 1)], "uid string, extra int")
    with pytest.raises(InputError, match="do not match"):
        lake.append("t", other)
    assert lake.version("t") == 0


def test_empty_writes_and_missing_tables(spark, lake):
    lake.append("t", spark.createDataFrame([], SCHEMA))
    assert lake.exists("t") and lake.read("t").count() == 0
    with pytest.raises(InputError, match="does not exist"):
        lake.read("nope")
    with pytest.raises(InputError, match="nope"):
        lake.require("t", "nope")


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_and_renamed_tables(spark, tmp_path, backend):
    from capmix.config import from_dict
    from capmix.lake import open_lake

    cfg = from_dict({"lake": {"path": str(tmp_path / "l"), "tables": {"pool": "pool_v2"},
                              "backend": backend}})
    lake = open_lake(spark, cfg.lake)
    lake.append("pool", rows(spark, ("a", "x", b"1")))
    assert lake.tables() == ["pool_v2"]
    assert lake.register_views() == ["pool_v2"]
    assert spark.sql("SELECT count(*) AS n FROM pool_v2").first().n == 1


def test_catalog_names_and_backend_errors(spark, tmp_path):
    from capmix.config import from_dict
    from capmix.lake import open_lake

    assert is_catalog("main.capmix") and not is_catalog("lake")
    assert not is_catalog("./lake") and not is_catalog("s3://b/lake")
    with pytest.raises(InputError, match="catalog"):
        open_lake(spark, from_dict({"lake": {"path": "main.capmix", "backend": "delta-rs"}}).lake)
    with pytest.raises(InputError, match="object stores"):
        open_lake(spark, from_dict({"lake": {"path": "s3://bucket/lake",
                                             "backend": "delta-rs"}}).lake)


def test_default_backend_is_sparks_delta_and_says_why(spark, tmp_path, caplog):
    import logging

    from capmix import lake as lake_module

    lake_module._announced.clear()
    with caplog.at_level(logging.INFO, logger="capmix"):
        lake = open_backend(spark, tmp_path / "l", "auto")
        open_backend(spark, tmp_path / "l2", "auto")
    assert lake.backend == "spark"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lake:")]
    assert lines == ["lake: Spark's Delta Lake (the session has Delta)"]
