"""`capmix export`: train_sets + pool (+ captions) -> a Petastorm-readable parquet dataset."""
from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from toy_data import toy_rows, write_lake

PER_CLASS = 50  # 300 images: enough for several row groups in one file


@pytest.fixture(scope="module")
def toy_lake(spark, tmp_path_factory):
    """A lake with pool / captions / train sets, plus one broken and one unknown image."""
    from capmix.config import from_dict
    from capmix.lake import open_lake
    from conftest import TEST_SPARK

    root = tmp_path_factory.mktemp("export")
    cfg = from_dict({"spark": TEST_SPARK, "lake": {"path": str(root / "lake")},
                     "export": {"min_files": 3}})
    lake = open_lake(spark, cfg.lake)
    rows = toy_rows(PER_CLASS, seed=3)
    both = tuple(("toy_both", r["uid"], src, r["text"], 0.2) for r in rows if r["label"] == "red"
                 for src in ("raw", "toycap:0"))
    write_lake(spark, lake, rows, broken=("bad",),
               extra_train=(("toy_raw", "bad", "raw", "a broken image", 0.1),
                            ("toy_raw", "ghost", "raw", "not in the pool", 0.1),
                            ("toy_bad", "bad", "raw", "a broken image", 0.1)) + both)
    return cfg, lake, rows, root


def read_all(path) -> "list[dict]":
    return ds.dataset(str(path), format="parquet", ignore_prefixes=["_", "."]).to_table() \
        .to_pylist()


def test_export_joins_images_without_touching_them(spark, toy_lake):
    from jobs.export import METADATA_FILE, run

    cfg, _, rows, root = toy_lake
    out = root / "raw"
    res = run(spark, cfg, "toy_raw", str(out))
    got = read_all(out)
    by_uid = {r["uid"]: r for r in rows}
    assert res.rows == len(got) == len(rows) and res.dropped == 2  # error image + unknown uid
    assert res.files == 3 and res.pool_rows == len(rows)  # the ok images of the pool
    assert set(got[0]) == {"uid", "source", "text", "raw_text", "similarity", "image"}
    for r in got:
        want = by_uid[r["uid"]]
        assert r["image"] == want["image"]  # the pool's bytes, not re-encoded
        assert r["text"] == r["raw_text"] == want["text"] and r["source"] == "raw"
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["pool_rows"] == len(rows) and meta["train_set"] == "toy_raw"
    assert meta["row_groups"] == res.row_groups >= 3
    assert not list(root.glob("raw.tmp-*"))  # staged, then renamed into place


def test_export_row_groups_are_sized_and_shard_cleanly(spark, toy_lake):
    from dataclasses import replace

    from petastorm import make_batch_reader

    from jobs.export import run

    cfg, _, rows, root = toy_lake
    small = replace(cfg, export=replace(cfg.export, min_files=1, row_group_mb=0.1))
    res = run(spark, small, "toy_raw", str(root / "small_groups"))
    assert res.files == 1 and res.row_groups >= 3  # ~750 KB in ~100 KB groups
    seen = []
    for shard in range(2):
        # The dummy pool: petastorm 0.13.1's thread pool can end a finite read early (a race
        # between its all-workers-done and ventilation-complete checks); the trainer reads
        # endless epochs, where that check never fires.
        with make_batch_reader(f"file://{root}/small_groups", schema_fields=["uid"],
                               cur_shard=shard, shard_count=2, num_epochs=1,
                               reader_pool_type="dummy") as reader:
            seen.append([u for batch in reader for u in batch.uid])
    assert seen[0] and seen[1] and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(r["uid"] for r in rows)


def test_clips_export_adds_the_synthetic_caption_once_per_image(spark, toy_lake):
    from dataclasses import replace

    from jobs.export import run

    cfg, lake, rows, root = toy_lake
    clips = replace(cfg, export=replace(cfg.export, clips=True))
    res = run(spark, clips, "toy_both", str(root / "clips"))
    got = read_all(root / "clips")
    reds = [r for r in rows if r["label"] == "red"]
    assert res.rows == len(got) == len(reds) and res.missing_synthetic == 0
    by_uid = {r["uid"]: r for r in reds}
    for r in got:
        assert r["synthetic_text"] == by_uid[r["uid"]]["synthetic"]
        assert r["raw_text"] == by_uid[r["uid"]]["text"]
        assert r["source"] == "toycap:0"  # the row whose own source is a caption wins


def test_export_errors_are_one_clear_line(spark, toy_lake):
    from dataclasses import replace

    from capmix.errors import InputError
    from jobs.export import run

    cfg, _, _, root = toy_lake
    with pytest.raises(InputError, match="train set 'nope' not found.*toy_raw"):
        run(spark, cfg, "nope", str(root / "nope"))
    assert not (root / "nope").exists()
    with pytest.raises(InputError, match="nothing exported"):
        run(spark, cfg, "toy_bad", str(root / "bad"))
    assert not list(root.glob("bad*"))  # no dataset, no staging folder left behind
    (root / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        run(spark, cfg, "toy_raw", str(root / "taken"))
    clips = replace(cfg, export=replace(cfg.export, clips=True, captioner="nobody"))
    res = run(spark, clips, "toy_raw", str(root / "nocap"))
    assert res.missing_synthetic == res.rows  # kept; the trainer falls back to the raw caption


def test_export_command_line(spark, toy_lake, capsys):
    from capmix.cli import main

    cfg, _, rows, root = toy_lake
    args = ["export", "--lake", cfg.lake.path, "--train-set", "toy_syn", "--out",
            str(root / "cli"), "--min-files", "2", "--set", "spark.master=local[2]"]
    assert main(args) == 0
    assert "toy_syn: 300 rows" in capsys.readouterr().out
    assert main(args) == 2  # exists: refused before any work
    assert "already exists" in capsys.readouterr().err
