"""The trainer for real: torchrun with 2 CPU ranks (gloo), tiny-clip, a learnable toy set."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toy_data import toy_rows, write_parquet

REPO = Path(__file__).resolve().parent.parent
QUIET = ["--set", "train.log_every=1", "--set", "train.warmup=3", "--set", "train.workers=2"]
TINY_DECODER = ["--set", "train.clips.decoder_length=12", "--set", "train.clips.decoder_width=32",
                "--set", "train.clips.decoder_layers=1", "--set", "train.clips.decoder_heads=2"]


@pytest.fixture(scope="module")
def toy_export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    rows = toy_rows(16, seed=5)  # 96 images, 6 colours
    write_parquet(root / "clips", rows, files=4, clips=True, pool_rows=64)
    write_parquet(root / "plain", rows, files=2)
    return root


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "training.train", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank, mid-step, as a crashed node would be (the ranks
    run in their own sessions, so a process-group kill would miss them)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    psutil.wait_procs(family, timeout=30)


def read_log(out: Path) -> list[dict]:
    records = []
    for line in (out / "log.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the line a kill cut short
            pass
    return records


def last_per_step(records: list[dict], key: str) -> dict[int, object]:
    """{step: record[key]}, the last record of each step (a resume repeats the steps after its
    checkpoint that the killed run had already logged)."""
    return {r["step"]: r[key] for r in records if key in r}


def test_ddp_training_learns_and_resumes_where_it_was_killed(toy_export, tmp_path):
    from capmix.cli import main
    from training import checkpoint as ckpt

    out = tmp_path / "run"
    common = ["--data", str(toy_export / "clips"), "--model", "tiny-clip", "--batch-size", "32",
              "--samples", str(32 * 20), "--checkpoint-every", "4", *QUIET,
              "--set", "train.keep_checkpoints=2", "--set", "train.log_samples=true"]
    args = ["--out", str(out), *common]
    logfile = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(torchrun(*args), cwd=REPO, env=env(), stdout=logfile,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while not ckpt.checkpoint_path(out, 8).exists():
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint at step 8"
            time.sleep(0.05)
    finally:
        kill_tree(proc)
    killed_at = ckpt.list_checkpoints(out)[-1][0]
    assert 8 <= killed_at < 20

    # Resume through `capmix train`, the wrapper that launches torchrun.
    assert main(["train", *args, "--nproc", "2", "--resume"]) == 0
    log = read_log(out)
    start = [r for r in log if r["event"] == "start"][-1]
    assert start["start_step"] == killed_at and start["samples_seen"] == killed_at * 32
    assert start["resumed_from"].endswith(f"step_{killed_at:08d}.pt")
    resumed = [r["step"] for r in log[log.index(start):] if r["event"] == "step"]
    assert resumed == list(range(killed_at + 1, 21))
    final = ckpt.load(ckpt.latest(out))
    assert final["step"] == 20 and final["samples_seen"] == 640 and final["world_size"] == 2
    assert final["config"]["batch_size"] == 32 and final["arch"] == "capmix-tiny-clip"
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [16, 20]  # keep_checkpoints=2

    loss = {r["step"]: r["loss"] for r in log if r["event"] == "step"}
    first = sum(loss[s] for s in (1, 2, 3)) / 3
    last = sum(loss[s] for s in (18, 19, 20)) / 3
    assert last < 0.75 * first, (first, last)

    # The same run, never interrupted: the killed + resumed run saw exactly its samples, in
    # the same order on each rank, and computed the same losses step for step.
    ref = tmp_path / "uninterrupted"
    done = subprocess.run(torchrun("--out", str(ref), *common), cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        name = f"samples/rank_{rank}.jsonl"
        got = last_per_step(read_jsonl(out / name), "uids")
        want = last_per_step(read_jsonl(ref / name), "uids")
        assert sorted(got) == sorted(want) == list(range(1, 21))
        assert got == want, rank
    ref_loss = {r["step"]: r["loss"] for r in read_log(ref) if r["event"] == "step"}
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-7)
    # Both ranks see disjoint files: no uid is seen by both in the first epoch's steps.
    r0 = {u for v in last_per_step(read_jsonl(ref / "samples/rank_0.jsonl"), "uids").values()
          for u in v}
    r1 = {u for v in last_per_step(read_jsonl(ref / "samples/rank_1.jsonl"), "uids").values()
          for u in v}
    assert r0 and r1 and not r0 & r1


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line a kill cut short
            pass
    return out


def test_clips_mode_trains_contrastive_and_captioning(toy_export, tmp_path):
    from training import checkpoint as ckpt

    out = tmp_path / "clips"
    # No --samples: the budget is the pool size the export recorded (64 -> 4 steps of 16).
    args = ["--data", str(toy_export / "clips"), "--out", str(out), "--model", "tiny-clip",
            "--objective", "clips", "--batch-size", "16", "--fragment", "block",
            "--fragment-tokens", "6", *QUIET, *TINY_DECODER]
    done = subprocess.run(torchrun(*args), cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [r for r in read_log(out) if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    # The rank records its estimated peak at start and its measured peak with each step.
    start = next(r for r in read_log(out) if r["event"] == "start")
    assert start["estimated_peak_mb"] > 0 and all(r["peak_memory_mb"] > 0 for r in steps)
    for r in steps:  # loss = 1 x contrastive + 2 x captioning, averaged over the ranks
        assert r["loss"] == pytest.approx(r["loss_contrastive"] + 2 * r["loss_caption"],
                                          rel=1e-4)
        assert 0 < r["loss_caption"] < 20 and 0 < r["loss_contrastive"] < 10
    state = ckpt.load(ckpt.latest(out))
    assert state["samples_seen"] == 64 and state["config"]["objective"] == "clips"
    assert state["decoder"]["queries"].shape == (12, 32)


def test_training_input_errors_are_one_line(toy_export, tmp_path, capsys):
    from training.train import main

    code = main(["--data", str(toy_export / "plain"), "--out", str(tmp_path / "x"),
                 "--model", "tiny-clip", "--objective", "clips"])
    assert code == 2
    assert "missing column(s) synthetic_text (export it with --clips)" in \
        capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "dataset not found" in capsys.readouterr().err


def test_an_empty_or_corrupt_export_is_refused_by_the_launcher_in_one_line(
        toy_export, tmp_path, capsys, monkeypatch):
    """Found before torchrun starts: no rank runs, so no rank's traceback and no
    ChildFailedError dump follow the line."""
    import pyarrow.parquet as pq

    from capmix.cli import main
    from training import launch

    launched = []
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: launched.append(a) or 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    schema = pq.read_schema(next((toy_export / "plain").glob("*.parquet")))
    for f in range(2):
        pq.write_table(schema.empty_table(), empty / f"part-{f:05d}.parquet")
    corrupt = tmp_path / "corrupt"
    write_parquet(corrupt, toy_rows(2, seed=6), files=2)
    bad = corrupt / "part-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:100])  # cut short: no footer
    base = ["train", "--out", str(tmp_path / "o"), "--model", "tiny-clip", "--nproc", "2",
            "--batch-size", "8", "--set", "train.memory_mb=0"]
    capsys.readouterr()

    assert main([*base, "--data", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{empty}: the dataset has no rows" in err, err
    assert main([*base, "--data", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{bad}: not a readable parquet file" in err, err
    assert not launched
    # A dataset with rows and intact footers is launched with the same command: the refusals
    # above were the data's, not the command's.
    assert main([*base, "--data", str(toy_export / "plain")]) == 0 and len(launched) == 1


def test_capmix_train_builds_the_torchrun_command(toy_export):
    from capmix.cli import common_parser
    from capmix.config import load_config
    from training import launch

    parser = common_parser("capmix train", "")
    launch.add_arguments(parser)
    args = parser.parse_args(["--data", str(toy_export / "plain"), "--out", "o", "--nproc", "4",
                              "--model", "tiny-clip", "--lr", "0.001", "--set",
                              "train.clips.fragment=random", "--resume"])
    cfg = load_config(None, launch.settings(args))
    cmd = launch.torchrun_command(cfg, args)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--nproc_per_node", "4", "--standalone"]
    assert cmd[6:8] == ["-m", "training.train"] and cmd[-1] == "--resume"
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert {"train.model=tiny-clip", "train.lr=0.001", "train.clips.fragment=random"} <= set(sets)
    from capmix.errors import InputError

    with pytest.raises(InputError, match="2 file.s. for 4 ranks"):  # each rank reads its own
        launch.check_args(cfg, args)


def test_capmix_train_refuses_a_run_that_does_not_fit_in_one_line(toy_export, tmp_path,
                                                                   capsys, monkeypatch):
    import re

    from capmix.cli import main
    from training import launch, memory

    launched = []
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: launched.append(a) or 0)
    # The runtime term is this process's RSS, which under pytest is not a rank's.
    monkeypatch.setattr(memory, "rss", lambda: 900 * 2**20)
    base = ["train", "--data", str(toy_export / "clips"), "--out", str(tmp_path / "o"),
            "--model", "tiny-clip", "--objective", "clips", "--nproc", "2", "--batch-size",
            "128"]
    # A rank's estimate at 64 per rank is ~1.7 GB; 1,600 MB fits a smaller batch.
    capsys.readouterr()
    assert main([*base, "--set", "train.memory_mb=1600"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and not launched  # one line, and no rank was started
    found = re.search(r"estimated peak memory ([\d.,]+ [GM]B) per rank at batch 64 per rank "
                      r"exceeds the 1,600 MB a rank has \(train.memory_mb\); the largest batch "
                      r"that fits is (\d+) \((\d+) per rank\)", err)
    assert found, err
    fits = int(found.group(3))
    assert 0 < fits < 64 and int(found.group(2)) == 2 * fits
    # That batch is accepted, and the ranks are launched.
    assert main([*base[:-1], str(2 * fits), "--set", "train.memory_mb=1600"]) == 0
    assert len(launched) == 1
    capsys.readouterr()
    # Too little for the model itself: no batch fits, still one line and exit 2.
    assert main([*base, "--set", "train.memory_mb=50"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err.strip() and "no batch fits" in err and len(launched) == 1
