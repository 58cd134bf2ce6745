"""Checkpoints that carry their own config (nanoGPT style), written atomically.

A checkpoint is `OUT/checkpoints/step_00001234.pt`: model (and CLIPS decoder) weights, optimizer
state, the step and samples seen, and the full training config as plain data, so evaluation and
`--resume` need nothing else. It is written to a temporary file in the same folder, flushed to
disk and renamed over its name (`os.replace`), so a crash mid-write never leaves a truncated
checkpoint under a real name. OUT may also be a store's URI (s3://, gs://, ...): the same
files are written and read through fsspec (training/outdir.py; `_store_save` says how a store
gets the same guarantee). Loading uses `torch.load(..., weights_only=True)`: only tensors and
plain containers are accepted, no pickled code.
"""
from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any, Optional, Union

from capmix import storage
from capmix.weights import CHECKPOINT_FORMAT as FORMAT  # capmix reads it too (--weights)
from training import outdir

_NAME = re.compile(r"^step_(\d{8,})\.pt$")
# A Path for a local folder, a URI string for a store (training/outdir.py).
Location = Union[Path, str]


def checkpoint_dir(out: str | os.PathLike) -> Location:
    return outdir.join(out, "checkpoints")


def checkpoint_path(out: str | os.PathLike, step: int) -> Location:
    return outdir.join(checkpoint_dir(out), f"step_{step:08d}.pt")


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Location]]:
    """(step, path) of every complete checkpoint under OUT, oldest first."""
    folder = checkpoint_dir(out)
    if isinstance(folder, str):
        return _store_checkpoints(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def _store_checkpoints(folder: str) -> list[tuple[int, Location]]:
    fs, inner = storage.filesystem(folder)
    # s3fs caches listings per process: another process (the launcher, a killed run) may have
    # written or removed checkpoints since this one last looked.
    fs.invalidate_cache(inner)
    try:
        names = storage.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted((int(m.group(1)), storage.join(folder, n)) for n in names
                  if (m := _NAME.match(n)))


def latest(out: str | os.PathLike) -> Optional[Location]:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def resolve(path: str | os.PathLike) -> Location:
    """A checkpoint file, or a training output folder (its latest checkpoint)."""
    from capmix.errors import InputError

    if outdir.is_remote(path):
        p: Location = os.fspath(path).rstrip("/")
        is_file, name, parent = storage.isfile(p), storage.basename(p), posixpath.dirname(p)
    else:
        p = Path(path)
        is_file, name, parent = p.is_file(), p.name, p.parent
    if is_file:
        return p
    # A folder (local or a store prefix): its latest checkpoint, or for OUT/checkpoints, OUT's.
    found = latest(p) or (latest(parent) if name == "checkpoints" else None)
    if found is not None:
        return found
    raise InputError(f"no checkpoint at {path} (expected a .pt file or a training output "
                     "folder with checkpoints/step_*.pt)")


def _unlink(path: Location) -> None:
    if isinstance(path, str):
        storage.remove(path)
    else:
        path.unlink(missing_ok=True)


def remove_all(out: str | os.PathLike) -> int:
    """Delete every checkpoint under OUT (`--restart`); returns how many."""
    found = list_checkpoints(out)
    for _, path in found:
        _unlink(path)
    return len(found)


def save(out: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 0) -> Location:
    """Write `state` as the checkpoint of `step` atomically; keep only the newest `keep`
    (0: all)."""
    target = _atomic_save({"format": FORMAT, **state}, checkpoint_path(out, step))
    if keep > 0:
        for _, old in list_checkpoints(out)[:-keep]:
            _unlink(old)
    return target


def _atomic_save(obj: Any, target: Location) -> Location:
    """torch.save to a temporary file beside `target`, flushed to disk, renamed over it."""
    import torch

    if isinstance(target, str):
        return _store_save(obj, target)
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


def _store_save(obj: Any, target: str) -> str:
    """torch.save streamed to a temporary key beside `target`, then moved over it.

    Why not write `target` directly: fsspec's file commits what it buffered when closed, even
    by an exception, so a failed torch.save would leave a truncated checkpoint under a real
    name. The temporary key (not matched by `_NAME`, so never listed) is removed on failure;
    a killed writer leaves at most an unfinished upload, which the store never shows. The move
    is a server-side copy on S3 and GCS (no bytes through this machine), a rename on HDFS."""
    import torch

    fs, inner = storage.filesystem(target)
    folder, name = posixpath.split(inner)
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
    try:
        with fs.open(tmp, "wb") as fh:
            torch.save(obj, fh)
        fs.mv(tmp, inner)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    return target


def load(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    import torch

    from capmix.errors import InputError

    try:
        if outdir.is_remote(path):
            # Streamed with seeks, as torch reads a zip archive: nothing is copied to disk.
            with storage.open_input(os.fspath(path)) as fh:
                state = torch.load(fh, map_location=map_location, weights_only=True)
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a torch file
        raise InputError(f"cannot load checkpoint {path}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path} is not a capmix checkpoint (expected a step_*.pt file "
                         "written by `capmix train`, or its run folder)")
    return state


def export_weights(path: str | os.PathLike, target: str | os.PathLike) -> Location:
    """The model weights of a capmix checkpoint (file or training folder) as a file open_clip
    loads with `pretrained=FILE` ({"state_dict": ...}), written atomically: how a model capmix
    trained becomes a captioner or scorer of the caption and score jobs."""
    state = load(resolve(path))
    dest = os.fspath(target) if outdir.is_remote(target) else Path(target)
    return _atomic_save({"state_dict": state["model"], "arch": state.get("arch"),
                         "step": state.get("step")}, dest)
