"""The caption job with the tiny models, through real Spark and real Delta tables."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import jobs.caption
from capmix.captioning import row_seed
from capmix.config import from_dict
from capmix.errors import InputError
from capmix.lake import open_lake
from capmix.tables import CAPTIONS
from caption_pool import write_pool
from conftest import TEST_SPARK

N_OK, N_ERROR = 20, 3
OK_UIDS = {f"ok{i:03d}" for i in range(N_OK)}
CAPTION = {"captioner": "tiny-coca", "samples": 2, "max_length": 10, "chunk_rows": 8,
           "batch_size": 4}
REPO = Path(__file__).resolve().parents[1]


def make_cfg(path, **caption):
    return from_dict({"spark": TEST_SPARK, "lake": {"path": str(path)},
                      "caption": {**CAPTION, **caption}})


@pytest.fixture(scope="module")
def captioned(spark, tmp_path_factory):
    """A pool captioned once, uninterrupted: (cfg, lake, summary)."""
    cfg = make_cfg(tmp_path_factory.mktemp("caption") / "lake")
    lake = open_lake(spark, cfg.lake)
    write_pool(spark, lake, N_OK, N_ERROR)
    summary = jobs.caption.run(spark, cfg)
    return cfg, lake, summary


def rows(lake, label="tiny-coca"):
    df = lake.read("captions").where(f"captioner = '{label}'").toPandas()
    return df.sort_values(["uid", "sample"]).reset_index(drop=True)


def test_captions_have_the_contracted_keys_params_and_skip_errors(captioned):
    cfg, lake, summary = captioned
    df = rows(lake)
    assert list(lake.read("captions").columns) == CAPTIONS.columns
    assert len(df) == 2 * N_OK and not df.duplicated(["uid", "captioner", "sample"]).any()
    assert set(df["uid"]) == OK_UIDS  # the three broken images are skipped
    assert sorted(set(df["sample"])) == [0, 1]
    assert df["text"].map(lambda t: isinstance(t, str) and len(t) > 0).all()
    first = df.iloc[0]
    assert (first["model"], first["temperature"], first["top_k"], first["min_length"],
            first["max_length"]) == ("open_clip:capmix-tiny-coca/random-init", 0.75, 50, 5, 10)
    assert all(s == row_seed(0, u, k) for u, k, s in zip(df["uid"], df["sample"], df["seed"]))
    assert (summary.done, summary.skipped, summary.chunks) == (N_OK, N_ERROR, 3)
    pool = lake.read("pool").toPandas()
    assert (pool["status"] == "error").sum() == N_ERROR  # status kept, nothing rewritten


def test_rerun_skips_everything_and_batch_size_does_not_change_captions(spark, captioned):
    cfg, lake, _ = captioned
    version = lake.version("captions")
    assert jobs.caption.run(spark, cfg).done == 0
    assert lake.version("captions") == version
    other = make_cfg(cfg.lake.path, name="rebatched", batch_size=3, chunk_rows=50)
    jobs.caption.run(spark, other)
    a, b = rows(lake), rows(lake, "rebatched")
    assert a[["uid", "sample", "seed", "text"]].equals(b[["uid", "sample", "seed", "text"]])


def test_sampling_settings_change_captions_and_are_recorded_and_guarded(spark, captioned):
    cfg, lake, _ = captioned
    hot = make_cfg(cfg.lake.path, name="hot", samples=1, temperature=1.5, top_k=400, seed=5)
    jobs.caption.run(spark, hot)
    base, df = rows(lake), rows(lake, "hot")
    assert len(df) == N_OK and set(df["temperature"]) == {1.5} and set(df["top_k"]) == {400}
    assert all(s == row_seed(5, u, 0) for u, s in zip(df["uid"], df["seed"]))
    differ = (base[base["sample"] == 0]["text"].to_numpy() != df["text"].to_numpy()).sum()
    assert differ == N_OK
    with pytest.raises(InputError, match="temperature=0.75"):
        jobs.caption.run(spark, make_cfg(cfg.lake.path, temperature=1.0))
    with pytest.raises(InputError, match="seed"):
        jobs.caption.run(spark, make_cfg(cfg.lake.path, seed=9))


def test_tiny_blip2_captions_through_spark(spark, captioned):
    """The transformers path (BLIP-2 architecture, processor, tokenizer) in the Spark job."""
    cfg, lake, _ = captioned
    jobs.caption.run(spark, make_cfg(cfg.lake.path, captioner="tiny-blip2", samples=1,
                                     max_length=6, min_length=6))
    df = rows(lake, "tiny-blip2")
    assert set(df["uid"]) == OK_UIDS and len(df) == N_OK
    assert set(df["model"]) == {"blip2:random-init:tiny-blip2"}
    assert df["text"].map(lambda t: 1 <= len(t.split()) <= 6).all()


def test_kill_9_then_rerun_equals_an_uninterrupted_run(spark, captioned, tmp_path):
    """A real `capmix caption` process is SIGKILLed after its first commit; the re-run's table
    equals the uninterrupted run's (which used other chunk sizes, so chunking is covered too)."""
    _, done_lake, _ = captioned
    cfg = make_cfg(tmp_path / "lake", chunk_rows=50)  # the re-run: one chunk
    lake = open_lake(spark, cfg.lake)
    write_pool(spark, lake, N_OK, N_ERROR)
    cmd = [sys.executable, "-m", "capmix.cli", "caption", "--lake", cfg.lake.path,
           "--captioner", "tiny-coca", "--samples", "2", "--chunk-rows", "4",
           "--batch-size", "4", "--set", "caption.max_length=10",
           "--set", "spark.master=local[1]", "--set", "spark.shuffle_partitions=2",
           "--set", "spark.arrow_batch_rows=64", "--set", "spark.driver_memory=1g"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    first = Path(cfg.lake.path) / "captions" / "_delta_log" / f"{0:020d}.json"
    try:
        deadline = time.monotonic() + 240
        while not first.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no commit within 4 minutes"
            time.sleep(0.2)
        time.sleep(1.5)  # somewhere inside a later chunk
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    committed = len(rows(lake))
    assert 0 < committed < 2 * N_OK, "the kill must land mid-run"
    summary = jobs.caption.run(spark, cfg)
    assert summary.already == committed // 2 and summary.done == N_OK - committed // 2
    cols = ["uid", "captioner", "sample", "text", "model", "temperature", "top_k", "seed"]
    resumed, straight = rows(lake)[cols], rows(done_lake)[cols]
    assert resumed.equals(straight)


@pytest.fixture(scope="module")
def coca_run(tmp_path_factory) -> Path:
    """tiny-coca trained for two steps by the trainer's own rank code (`--objective coca`): the
    output folder `capmix train` writes, with its checkpoints/step_*.pt."""
    from toy_data import toy_rows, write_parquet
    from training.train import run

    root = tmp_path_factory.mktemp("coca")
    write_parquet(root / "data", toy_rows(2, seed=4), files=1)  # 12 images
    cfg = from_dict({"train": {"model": "tiny-coca", "objective": "coca", "batch_size": 4,
                               "samples": 8, "warmup": 1, "workers": 1}})
    assert run(cfg, str(root / "data"), str(root / "run"))["step"] == 2
    return root / "run"


def test_weights_take_a_coca_checkpoint_capmix_trained_and_refuse_a_foreign_file(
        spark, coca_run, tmp_path, capsys):
    import torch

    from capmix.cli import main
    from capmix.models import load_captioner, resolve
    from training import checkpoint as ckpt

    state = ckpt.load(ckpt.latest(coca_run))
    assert state["arch"] == "capmix-tiny-coca" and state["config"]["objective"] == "coca"
    # The captioner built from the run folder holds the checkpoint's weights, every tensor.
    captioner = load_captioner(resolve("tiny-coca", "captioner", str(coca_run)))
    own = captioner.model.state_dict()
    assert set(own) == set(state["model"])
    for name, value in own.items():
        assert torch.equal(value, state["model"][name]), name

    # `capmix caption --weights RUN` captions the pool with it through Spark.
    cfg = make_cfg(tmp_path / "lake")
    lake = open_lake(spark, cfg.lake)
    write_pool(spark, lake, 4, 1)
    base = ["caption", "--lake", cfg.lake.path, "--captioner", "tiny-coca", "--samples", "1",
            "--set", "caption.max_length=8", "--set", "spark.master=local[2]"]
    capsys.readouterr()
    assert main([*base, "--weights", str(coca_run), "--name", "trained"]) == 0, \
        capsys.readouterr().err[-2000:]
    df = rows(lake, "trained")
    assert set(df["uid"]) == {f"ok{i:03d}" for i in range(4)} and len(df) == 4
    assert set(df["model"]) == {f"open_clip:capmix-tiny-coca/{coca_run}"}

    # A file that is no checkpoint: one line naming it and what was expected, exit 2.
    junk = tmp_path / "foreign.pt"
    junk.write_bytes(b"\x00" * 64)
    capsys.readouterr()
    assert main([*base, "--weights", str(junk), "--name", "junk"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"--weights {junk}: cannot be loaded" in err, err
    assert "expected a checkpoint written by `capmix train`" in err
    assert "junk" not in set(lake.read("captions").toPandas()["captioner"])
