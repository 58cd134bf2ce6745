"""Checkpoints that carry their own config (nanoGPT style), written atomically.

A checkpoint is `OUT/checkpoints/step_00001234.pt`: model (and CLIPS decoder) weights, optimizer
state, the step and samples seen, and the full training config as plain data, so evaluation and
`--resume` need nothing else. It is written to a temporary file in the same folder, flushed to
disk and renamed over its name (`os.replace`), so a crash mid-write never leaves a truncated
checkpoint under a real name. Loading uses `torch.load(..., weights_only=True)`: only tensors
and plain containers are accepted, no pickled code.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Optional

from capmix.weights import CHECKPOINT_FORMAT as FORMAT  # capmix reads it too (--weights)
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_dir(out: str | os.PathLike) -> Path:
    return Path(out) / "checkpoints"


def checkpoint_path(out: str | os.PathLike, step: int) -> Path:
    return checkpoint_dir(out) / f"step_{step:08d}.pt"


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint under OUT, oldest first."""
    folder = checkpoint_dir(out)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest(out: str | os.PathLike) -> Optional[Path]:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a training output folder (its latest checkpoint)."""
    from capmix.errors import InputError

    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        found = latest(p) or (latest(p.parent) if p.name == "checkpoints" else None)
        if found is not None:
            return found
    raise InputError(f"no checkpoint at {path} (expected a .pt file or a training output "
                     "folder with checkpoints/step_*.pt)")


def remove_all(out: str | os.PathLike) -> int:
    """Delete every checkpoint under OUT (`--restart`); returns how many."""
    found = list_checkpoints(out)
    for _, path in found:
        path.unlink(missing_ok=True)
    return len(found)


def save(out: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 0) -> Path:
    """Write `state` as the checkpoint of `step` atomically; keep only the newest `keep`
    (0: all)."""
    target = _atomic_save({"format": FORMAT, **state}, checkpoint_path(out, step))
    if keep > 0:
        for _, old in list_checkpoints(out)[:-keep]:
            old.unlink(missing_ok=True)
    return target


def _atomic_save(obj: Any, target: Path) -> Path:
    """torch.save to a temporary file beside `target`, flushed to disk, renamed over it."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    import torch

    from capmix.errors import InputError

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a torch file
        raise InputError(f"cannot load checkpoint {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a capmix checkpoint (expected a step_*.pt file "
                         "written by `capmix train`, or its run folder)")
    return state


def export_weights(path: str | os.PathLike, target: str | os.PathLike) -> Path:
    """The model weights of a capmix checkpoint (file or training folder) as a file open_clip
    loads with `pretrained=FILE` ({"state_dict": ...}), written atomically: how a model capmix
    trained becomes a captioner or scorer of the caption and score jobs."""
    state = load(resolve(path))
    return _atomic_save({"state_dict": state["model"], "arch": state.get("arch"),
                         "step": state.get("step")}, Path(target))
