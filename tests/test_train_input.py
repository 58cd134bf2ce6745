"""The trainer's input: reproducible order, training from a train set in the pool (no export),
resume refusals, and capmix checkpoints as --weights. One rank in-process unless DDP matters."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from toy_data import toy_rows, write_lake, write_parquet

TRAIN = {"model": "tiny-clip", "warmup": 2, "workers": 2, "log_every": 1, "log_samples": True,
         "shuffle_buffer": 16}


def config(lake: Path | None = None, **train):
    from capmix.config import from_dict

    doc = {"train": {**TRAIN, **train}}
    if lake is not None:
        doc["lake"] = {"path": str(lake)}
    return from_dict(doc)


def steps_of(out: Path, key: str) -> dict[int, object]:
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if r.get("event") == "step"}


def uids_of(out: Path, rank: int = 0) -> dict[int, list[str]]:
    lines = (out / "samples" / f"rank_{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["uids"] for r in map(json.loads, lines)}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("input")
    write_parquet(root / "data", toy_rows(6, seed=11), files=3)  # 36 images
    return root / "data"


def test_two_runs_with_one_seed_give_the_same_losses_step_for_step(export, tmp_path):
    from training.train import run

    cfg = config(batch_size=8, samples=8 * 5)
    for name in ("a", "b"):
        run(cfg, str(export), str(tmp_path / name))
    a, b = steps_of(tmp_path / "a", "loss"), steps_of(tmp_path / "b", "loss")
    assert sorted(a) == list(range(1, 6)) and a == b
    assert uids_of(tmp_path / "a") == uids_of(tmp_path / "b")
    # Another seed: another order, so the test above can fail.
    run(config(batch_size=8, samples=8 * 5, seed=1), str(export), str(tmp_path / "c"))
    assert uids_of(tmp_path / "c") != uids_of(tmp_path / "a")


def test_a_stream_started_at_a_sample_is_the_tail_of_the_whole_stream(export):
    """Resume's data side, across an epoch boundary: sample n is the same sample, with the same
    crop, whether the stream started at 0 or at n."""
    import numpy as np

    from training.data import LoaderOptions, SampleSpec, batches, read_export

    spec = SampleSpec(arch="capmix-tiny-clip", image_size=32, context_length=32)
    opts = LoaderOptions(batch_size=5, workers=2, shuffle_buffer=7, seed=3)
    with batches(read_export(str(export)), spec, opts) as whole:
        full = [next(whole) for _ in range(12)]  # 60 samples: 1.7 epochs of 36
    with batches(read_export(str(export)), spec, opts, start=5 * 9) as tail:
        rest = [next(tail) for _ in range(3)]
    for a, b in zip(full[9:], rest):
        assert a["uid"] == b["uid"] and a["index"].tolist() == b["index"].tolist()
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())
        assert np.array_equal(a["text"].numpy(), b["text"].numpy())
    epoch = [u for b in full[:8] for u in b["uid"]][:36]
    assert len(set(epoch)) == 36  # an epoch is every sample once


def test_changed_settings_are_refused_on_resume_unless_restart(export, tmp_path, capsys):
    from capmix.cli import main
    from training import checkpoint as ckpt
    from training.train import run

    out = tmp_path / "run"
    run(config(batch_size=8, samples=8 * 4), str(export), str(out))
    base = ["train", "--data", str(export), "--out", str(out), "--model", "tiny-clip",
            "--batch-size", "8", "--samples", "32", "--resume",
            *[x for k, v in TRAIN.items() for x in ("--set", f"train.{k}={v}")]]
    capsys.readouterr()
    assert main([*base, "--lr", "0.002"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "lr was 0.0005, this run has 0.002" in err, err
    assert main([*base, "--samples", "64"]) == 2
    assert "samples was 32, this run has 64" in capsys.readouterr().err
    # --restart starts over in the same folder with the new settings.
    from training.train import main as rank_main

    assert rank_main([*base[1:], "--lr", "0.002", "--restart"]) == 0
    state = ckpt.load(ckpt.latest(out))
    assert state["settings"]["lr"] == 0.002 and state["step"] == 4


@pytest.fixture(scope="module")
def pool_lake(spark, tmp_path_factory):
    """A lake whose pool holds 30 ok images and one broken one, and whose train set `toy_part`
    holds a third of the ok images, the broken one and one uid the pool lacks; plus the export
    of `toy_part`. (`toy_raw` and `toy_syn` hold every ok image: reading the wrong train set,
    or no filter at all, would show.)"""
    from capmix.config import from_dict
    from capmix.lake import open_lake
    from conftest import TEST_SPARK
    from jobs.export import run as export

    root = tmp_path_factory.mktemp("pool")
    cfg = from_dict({"spark": TEST_SPARK, "lake": {"path": str(root / "lake")},
                     "export": {"min_files": 2}})
    lake = open_lake(spark, cfg.lake)
    rows = toy_rows(5, seed=12)
    part = rows[::3]  # 10 of the 30 ok images: a strict subset, so the uid filter has work
    write_lake(spark, lake, rows, broken=("bad",),
               extra_train=tuple(("toy_part", r["uid"], "raw", r["text"], 0.3) for r in part)
               + (("toy_part", "bad", "raw", "a broken image", 0.1),
                  ("toy_part", "ghost", "raw", "not in the pool", 0.1)))
    export(spark, cfg, "toy_part", str(root / "export"))
    return root, rows, part


def test_training_from_a_train_set_reads_the_pool_and_sees_exactly_its_uids(spark, pool_lake,
                                                                            capsys):
    from capmix.cli import main
    from training.loader import sample_stream
    from training.sources import export_source, pool_source
    from training.data import read_export
    from training.train import run

    root, rows, part = pool_lake
    lake = root / "lake"
    members = {r["uid"] for r in part}
    others = {r["uid"] for r in rows} - members | {"bad", "ghost"}
    assert 0 < len(members) < len(rows)
    # The pool path reads the pool table's own data files, not a copy of them.
    pool = pool_source(str(lake), {}, "toy_part", "clip")
    assert pool.pool_rows == len(rows) and pool.version is not None
    assert pool.urls and all(u.startswith(f"file://{lake / 'pool'}/") for u in pool.urls)
    exp = export_source(read_export(str(root / "export")), "clip")

    def epoch(src) -> set:
        it = sample_stream(src, 0, 0, 1, 8)
        return {(s.uid, s.text) for _, (_, s) in zip(range(len(part)), it)}

    # One epoch of the pool path and of the export: the same (uid, text) samples, the train
    # set's and no other pool image's.
    want = {(r["uid"], r["text"]) for r in part}
    assert epoch(pool) == epoch(exp) == want
    # The trainer, from the train set's name: one epoch sees each member once and nothing else.
    out = root / "from_pool"
    res = run(config(lake, batch_size=5, samples=len(part), train_set="toy_part"), None,
              str(out))
    assert res["samples_seen"] == len(part)
    seen = [u for step in uids_of(out).values() for u in step]
    assert sorted(seen) == sorted(members) and not set(seen) & others
    start = next(json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()
                 if json.loads(x).get("event") == "start")
    assert start["source"] == "pool" and start["train_set"] == "toy_part"
    state = json.loads((out / "train_config.json").read_text())
    assert state["train_set"] == "toy_part" and state["train_set_version"] >= 0
    assert len(state["settings"]["train_set_version"]) == 32  # the train set's content digest

    # The train set changes (a re-run mix): resuming that run is refused, in one line.
    from capmix.config import from_dict
    from capmix.lake import open_lake
    from capmix.tables import TRAIN_SETS
    from conftest import TEST_SPARK

    lake_obj = open_lake(spark, from_dict({"spark": TEST_SPARK,
                                           "lake": {"path": str(lake)}}).lake)
    extra = spark.createDataFrame([("toy_part", part[0]["uid"], "toycap:0", "another caption",
                                    0.2)], TRAIN_SETS.schema())
    lake_obj.append("train_sets", TRAIN_SETS.conform(extra))
    capsys.readouterr()
    code = main(["train", "--lake", str(lake), "--train-set", "toy_part", "--out", str(out),
                 "--resume", "--model", "tiny-clip", "--batch-size", "5", "--samples",
                 str(len(part)), "--lr", "0.0005",
                 *[x for k, v in TRAIN.items() for x in ("--set", f"train.{k}={v}")]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "train_set_version was" in err, err


def test_training_from_an_unknown_train_set_is_one_line(pool_lake, tmp_path, capsys):
    from capmix.cli import main

    root, *_ = pool_lake
    code = main(["train", "--lake", str(root / "lake"), "--train-set", "nope", "--out",
                 str(tmp_path / "x"), "--model", "tiny-clip"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "train set 'nope' not found" in err, err


@pytest.fixture(scope="module")
def checkpoint(export, tmp_path_factory) -> Path:
    from training.train import run

    out = tmp_path_factory.mktemp("ckpt") / "run"
    run(config(batch_size=8, samples=8), str(export), str(out))
    return out


def test_weights_take_a_capmix_checkpoint_and_refuse_a_foreign_file(checkpoint, tmp_path):
    import torch

    from capmix.errors import InputError
    from capmix.models import load_scorer, resolve
    from training import checkpoint as ckpt

    state = ckpt.load(ckpt.latest(checkpoint))
    scorer = load_scorer(resolve("tiny-clip", "scorer", str(checkpoint)))
    for name, value in scorer.model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"junk.pt: cannot be loaded .*expected a checkpoint "
                                         r"written by `capmix train`"):
        load_scorer(resolve("tiny-clip", "scorer", str(junk)))
    with pytest.raises(InputError, match="a capmix checkpoint of capmix-tiny-clip, not of"):
        load_scorer(resolve("open_clip:capmix-tiny-coca", "scorer", str(checkpoint)))


def test_score_with_foreign_weights_fails_in_one_line_before_spark_work(spark, pool_lake,
                                                                         tmp_path, capsys):
    from capmix.cli import main

    root, *_ = pool_lake
    junk = tmp_path / "foreign.bin"
    junk.write_bytes(b"\x00" * 64)
    capsys.readouterr()
    code = main(["score", "--lake", str(root / "lake"), "--scorer", "tiny-clip", "--weights",
                 str(junk)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and f"--weights {junk}: cannot be loaded" in err, err
