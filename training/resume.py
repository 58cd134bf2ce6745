"""What a resumed run must share with the checkpoint it resumes, and the one-line refusal.

A resumed run continues an uninterrupted one only if everything that fixes the schedule (steps,
learning rate) or the data (which samples, in which order, per rank) is unchanged. The
checkpoint records these settings; resuming with any of them different is refused, naming the
first, unless `--restart` starts the run over.
"""
from __future__ import annotations

from typing import Any, Optional

from capmix.config import TrainConfig
from capmix.errors import InputError

# (name in the message, what it means) in the order they are checked.
SETTINGS = ("samples", "batch_size", "lr", "warmup", "objective", "model", "seed",
            "world_size", "shuffle_buffer", "fragment", "fragment_tokens", "data", "train_set",
            "train_set_version")  # version: the train set's content digest (sources.py)


def run_settings(tcfg: TrainConfig, samples: int, world: int, data: Optional[str],
                 train_set: Optional[str], version: Optional[int]) -> dict[str, Any]:
    """The settings a checkpoint records for a later resume to compare."""
    return {"samples": samples, "batch_size": tcfg.batch_size, "lr": tcfg.lr,
            "warmup": tcfg.warmup, "objective": tcfg.objective, "model": tcfg.model,
            "seed": tcfg.seed, "world_size": world, "shuffle_buffer": tcfg.shuffle_buffer,
            "fragment": tcfg.clips.fragment if tcfg.objective == "clips" else None,
            "fragment_tokens": tcfg.clips.fragment_tokens if tcfg.objective == "clips"
            else None,
            "data": data, "train_set": train_set, "train_set_version": version}


def check_resume(saved: dict[str, Any], now: dict[str, Any], path: str) -> None:
    """InputError (exit 2) naming the first setting that differs."""
    for key in SETTINGS:
        if key in saved and saved[key] != now.get(key):
            raise InputError(f"cannot resume from {path}: {key} was {saved[key]!r}, this run "
                             f"has {now.get(key)!r} (it changes the schedule or the data); "
                             "pass --restart to start over in this folder, or use a new --out")


def saved_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The recorded settings; a checkpoint from before they were recorded: what its config
    holds (batch, objective, model), the checks it always had."""
    if "settings" in state:
        return dict(state["settings"])
    config = state.get("config") or {}
    return {k: config.get(k) for k in ("batch_size", "objective", "model")}
