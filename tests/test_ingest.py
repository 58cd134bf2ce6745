"""The ingest job on real Spark and real Delta: round trips, bad inputs, idempotency."""
import dataclasses
import hashlib
import json
import shutil

import pytest

from capmix.errors import InputError
from capmix.tables import POOL
from jobs.ingest import run
from pools import (Sample, bad_images, caption_for, make_folder, make_parquet, make_samples,
                   make_shard, odd_images, sample_images, sample_pictures)


def with_ingest(cfg, **values):
    return dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **values))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def expected_uid(name, image, text):
    """The documented rule: sha256 of the tag, name, image sha256, caption sha256 (hex, 32)."""
    text_sha = sha(text.encode() if isinstance(text, str) else text) if text is not None else ""
    parts = ("capmix-uid-v1", name or "", sha(image) if image is not None else "", text_sha)
    return sha("\x1f".join(parts).encode())[:32]


def pool(lake):
    return {r.key: r for r in lake.read("pool").collect()}


def test_webdataset_round_trip_img2dataset_and_datacomp(spark, cfg, lake, tmp_path):
    a = make_samples(3, prefix="a")
    b = make_samples(2, prefix="b", offset=3)
    c = make_samples(2, prefix="c", offset=5, uids=True)
    for s in c:  # DataComp: no .txt, no caption in the json -> text from the shard parquet
        s.json.pop("caption")
    make_shard(tmp_path / "s", "00000", a)
    make_shard(tmp_path / "s", "00001", b)
    make_shard(tmp_path / "s", "00002", c, parquet="datacomp")
    c_text = {s.key: s.text for s in c}
    for s in c:
        s.text = None
    make_shard(tmp_path / "s", "00002", c, parquet=None)  # rewrite the tar without captions

    summary = run(spark, cfg, [str(tmp_path / "s" / "{00000..00002}.tar")])
    assert (summary.units, summary.ok, summary.error, summary.inserted) == (3, 7, 0, 7)
    assert summary.line().startswith("ingest: 3 shards, 7 rows ok, 0 rows in error, "
                                     "0 unsafe members ignored, 0 already present (")
    rows = pool(lake)
    assert lake.read("pool").columns == POOL.columns
    for s in a + b:
        r = rows[s.key]
        assert (r.uid, r.url, r.text) == (expected_uid(s.url, s.image, s.text), s.url, s.text)
        assert (r.image, r.sha256, r.width, r.height, r.format) == (s.image, sha(s.image), 28, 28,
                                                                   "jpeg")
        assert (r.status, r.error, r.warnings) == ("ok", None, None)
        assert r.source == str(tmp_path / "s" / f"0000{0 if s.key[0] == 'a' else 1}.tar")
        assert json.loads(r.meta)["status"] == "success" and r.ingested_at is not None
    for s in c:
        r = rows[s.key]
        assert (r.uid, r.text, r.url) == (s.json["uid"], c_text[s.key], s.url)


def test_bad_and_odd_inputs_in_one_shard(spark, cfg, lake, tmp_path):
    good = make_samples(1)[0]
    odd = {n: d for n, (d, _) in odd_images().items()}
    samples = [Sample(f"odd_{n.split('.')[0]}", d, n.split(".")[1], f"odd {n}")
               for n, d in odd.items()]
    samples += [Sample(f"bad_{n.split('.')[0]}", d, n.split(".")[1], f"bad {n}")
                for n, (d, _) in bad_images().items()]
    samples += [
        Sample("cap_latin1", good.image, text=b"caf\xe9 cr\xe8me"),
        Sample("cap_controls", good.image, text="tab\there\x00 nul \x1b esc"),
        Sample("cap_huge", good.image, text="word " * 5000),
        Sample("cap_missing", good.image, text=None),
        Sample("json_broken", good.image, text="kept", json=b'{"url": "http://x", '),
        Sample("no_image", None, text="caption without image"),
    ]
    shard = make_shard(tmp_path, "mixed", samples, parquet=None,
                       members=[("../evil.jpg", good.image), ("/abs/evil.txt", b"x")])
    summary = run(spark, with_ingest(cfg, max_caption_chars=100), [str(shard)])
    assert (summary.ok, summary.error, summary.unsafe) == (13, 5, 2)
    assert "2 unsafe members ignored" in summary.line()
    rows = pool(lake)
    assert len(rows) == 18 and "../evil" not in rows and "evil" not in rows
    for name, (data, (w, h)) in odd_images().items():
        r = rows[f"odd_{name.split('.')[0]}"]
        assert (r.status, r.width, r.height, r.image) == ("ok", w, h, data)
    for name, (data, fragment) in bad_images().items():
        r = rows[f"bad_{name.split('.')[0]}"]
        assert r.status == "error" and fragment in r.error.lower() and r.image == data
        assert r.text == f"bad {name}"
    assert rows["cap_latin1"].text == "caf\u00e9 cr\u00e8me"
    assert "not UTF-8" in rows["cap_latin1"].warnings
    assert rows["cap_controls"].text == "tab here nul esc"
    assert rows["cap_huge"].text == ("word " * 20).strip()  # cut at 100, no trailing space
    assert "truncated from 24,999 to 100" in rows["cap_huge"].warnings
    assert rows["cap_missing"].text is None and rows["cap_missing"].status == "ok"
    broken = rows["json_broken"]
    assert (broken.status, broken.text, broken.url) == ("ok", "kept", None)
    assert "json sidecar unreadable" in broken.warnings
    assert rows["no_image"].status == "error" and "no image" in rows["no_image"].error


def test_image_folder_round_trip_jsonl_and_csv(spark, cfg, lake, tmp_path):
    pics = sample_pictures(4)
    images = sample_images(4, fmt="png")
    files = {"a/0.png": images[0], "a/b/1.png": images[1], "2.png": images[2],
             "3.png": images[3]}
    captions = {"a/0.png": caption_for(pics[0][1]),
                "a/b/1.png": {"caption": caption_for(pics[1][1]), "uid": "U1", "url": "http://1",
                              "label": 7},
                "2.png": caption_for(pics[2][1]), "missing.jpg": "a photo that is gone"}
    make_folder(tmp_path / "jsonl", files, captions)
    make_folder(tmp_path / "csv", {"x.png": images[0]}, {"x.png": "from csv"}, fmt="csv")
    summary = run(spark, with_ingest(cfg, rows_per_unit=2), [str(tmp_path / "jsonl"),
                                                            str(tmp_path / "csv")])
    assert (summary.units, summary.ok, summary.error) == (4, 5, 1)
    assert summary.line().startswith("ingest: 4 folder slices,")
    rows = pool(lake)
    r = rows["a/0.png"]
    assert (r.uid, r.text, r.image, r.format) == (
        expected_uid("a/0.png", images[0], captions["a/0.png"]), captions["a/0.png"], images[0],
        "png")
    assert (rows["a/b/1.png"].uid, rows["a/b/1.png"].url) == ("U1", "http://1")
    assert json.loads(rows["a/b/1.png"].meta) == {"label": 7}  # other captions-file fields
    assert rows["3.png"].text is None and rows["3.png"].status == "ok"
    gone = rows["missing.jpg"]
    assert (gone.status, gone.text, gone.image) == ("error", "a photo that is gone", None)
    assert "missing image file" in gone.error
    assert rows["x.png"].text == "from csv"
    assert rows["x.png"].source == str(tmp_path / "csv") + "#files[0:1]"


def test_parquet_round_trip_bytes_and_hf_struct(spark, cfg, lake, tmp_path):
    images = sample_images(5)
    make_parquet(tmp_path / "plain.parquet",
                 [{"image": im, "caption": f"c{i}", "url": f"http://p/{i}", "label": i}
                  for i, im in enumerate(images)], row_group_rows=2)
    make_parquet(tmp_path / "hf" / "train.parquet",
                 [{"image": {"bytes": images[0], "path": "0.jpg"}, "text": "hf zero"},
                  {"image": {"bytes": None, "path": "lost.jpg"}, "text": "no bytes"}])
    summary = run(spark, with_ingest(cfg, rows_per_unit=2),
                  [str(tmp_path / "plain.parquet"), str(tmp_path / "hf")])
    assert (summary.units, summary.ok, summary.error) == (4, 6, 1)
    rows = {r.text: r for r in lake.read("pool").collect()}
    for i, im in enumerate(images):
        r = rows[f"c{i}"]
        assert (r.uid, r.image, r.url) == (expected_uid(f"http://p/{i}", im, f"c{i}"), im,
                                           f"http://p/{i}")
        assert json.loads(r.meta) == {"label": i} and r.key == f"plain.parquet:{i}"
    assert rows["c4"].source == str(tmp_path / "plain.parquet") + "#row_groups[2:3]"
    assert rows["hf zero"].uid == expected_uid("0.jpg", images[0], "hf zero")
    assert rows["no bytes"].status == "error" and "lost.jpg" in rows["no bytes"].error


def test_reingest_adds_nothing_and_groups_commit_atomically(spark, cfg, lake, tmp_path):
    for i in range(3):
        make_shard(tmp_path / "s", f"{i:05d}", make_samples(2, prefix=f"{i}", offset=2 * i))
    cfg1 = with_ingest(cfg, units_per_commit=1)
    first = run(spark, cfg1, [str(tmp_path / "s")])
    assert (first.inserted, lake.version("pool")) == (6, 2)  # one commit per shard
    before = sorted(r.uid for r in lake.read("pool").collect())
    again = run(spark, cfg1, [str(tmp_path / "s")])
    assert (again.skipped, again.ok, again.inserted, lake.version("pool")) == (3, 0, 0, 2)
    assert "3 shards (3 done before, skipped), 0 rows ok" in again.line()
    shutil.copytree(tmp_path / "s", tmp_path / "copy")  # same samples at another path
    moved = run(spark, cfg, [str(tmp_path / "copy")])
    assert (moved.ok, moved.inserted, moved.already_present) == (6, 0, 6)
    assert sorted(r.uid for r in lake.read("pool").collect()) == before


def test_bad_inputs_fail_before_anything_is_written(spark, cfg, lake, tmp_path):
    make_shard(tmp_path, "ok", make_samples(1))
    with pytest.raises(InputError, match="input not found: .*nope.tar"):
        run(spark, cfg, [str(tmp_path / "ok.tar"), str(tmp_path / "nope.tar")])
    make_parquet(tmp_path / "p.parquet", [{"pixels": b"x", "text": "t"}])
    with pytest.raises(InputError, match="no image column"):
        run(spark, cfg, [str(tmp_path / "ok.tar"), str(tmp_path / "p.parquet")])
    with pytest.raises(InputError, match="no inputs"):
        run(spark, cfg, [])
    assert not lake.exists("pool")


def test_one_uid_in_several_samples_keeps_the_ok_one(spark, cfg, lake, tmp_path):
    good = make_samples(2)
    broken = Sample("k0", b"not an image", json={"uid": "SAME"}, text="first, broken")
    fine = Sample("k1", good[0].image, json={"uid": "SAME"}, text="second, fine")
    other = Sample("k2", good[1].image, text="unique")
    shard = make_shard(tmp_path, "dup", [broken, fine, other], parquet=None)
    summary = run(spark, cfg, [str(shard)])
    assert (summary.ok, summary.error, summary.inserted, summary.already_present) == (2, 1, 2, 1)
    rows = pool(lake)
    assert set(rows) == {"k1", "k2"} and rows["k1"].uid == "SAME"


class Widgets:
    """Stands in for Databricks' dbutils.widgets (text + get), so the notebook runs here."""

    def __init__(self, values):
        self.values = values

    def text(self, name, default):
        self.values.setdefault(name, default)

    def get(self, name):
        return self.values[name]


def test_notebook_runs_the_job_with_its_widgets(spark, tmp_path, capsys):
    import runpy
    from pathlib import Path
    from types import SimpleNamespace

    shard = make_shard(tmp_path, "nb", make_samples(2))
    values = {"inputs": str(shard), "lake": str(tmp_path / "nb_lake")}
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "ingest.py"
    assert notebook.read_text().startswith("# Databricks notebook source\n")
    runpy.run_path(str(notebook), init_globals={
        "dbutils": SimpleNamespace(widgets=Widgets(values))})
    out = capsys.readouterr().out
    assert "ingest: 1 shard, 2 rows ok, 0 rows in error" in out
    assert (tmp_path / "nb_lake" / "pool" / "_delta_log").is_dir()
