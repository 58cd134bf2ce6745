"""Local weight files for open_clip models: a checkpoint `capmix train` wrote, or a plain
open_clip state dict (`{"state_dict": ...}` or the bare dict), told apart and checked here.

`--weights` of caption, score and eval names a file (or a training folder: its latest
checkpoint). A capmix checkpoint carries its architecture: it must be the model's, and only its
model weights are used (not the optimizer or the CLIPS decoder). A file that is neither is
refused in one line naming the file and what was expected (InputError, exit code 2), on the
driver, before any Spark task would fail with it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from capmix.errors import InputError

# Written by training/checkpoint.py (which imports it from here: capmix <- training).
CHECKPOINT_FORMAT = "capmix-clip-checkpoint-v1"
EXPECTED = ("expected a checkpoint written by `capmix train` (a step_*.pt file or its run "
            "folder) or an open_clip state dict")
_STEP = re.compile(r"^step_(\d{8,})\.pt$")


def is_local(pretrained: Optional[str]) -> bool:
    """A local file or folder, as opposed to an open_clip pretrained tag or hub id."""
    return bool(pretrained) and (os.path.isfile(pretrained) or os.path.isdir(pretrained))


def resolve_file(path: str) -> Path:
    """The file itself, or a training folder's latest checkpoints/step_*.pt."""
    p = Path(path)
    if p.is_dir():
        folder = p if p.name == "checkpoints" else p / "checkpoints"
        found = sorted(c for c in folder.glob("step_*.pt") if _STEP.match(c.name)) \
            if folder.is_dir() else []
        if not found:
            raise InputError(f"--weights {path}: a folder without checkpoints/step_*.pt; "
                             f"{EXPECTED}")
        return found[-1]
    return p


def read_state(path: str, arch: Optional[str] = None, mmap: bool = False) -> dict[str, Any]:
    """The model state dict in `path` (checked against `arch` when it is a capmix checkpoint)."""
    import torch

    file = resolve_file(path)
    try:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            # Only torch's zip format maps; an older or foreign file is read the plain way.
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, truncated, or pickled code refused
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"--weights {file}: cannot be loaded ({type(exc).__name__}: "
                         f"{first[:160]}); {EXPECTED}") from None
    if not isinstance(state, dict):
        raise InputError(f"--weights {file}: holds a {type(state).__name__}; {EXPECTED}")
    if state.get("format") == CHECKPOINT_FORMAT:
        saved = state.get("arch")
        if arch is not None and saved != arch:
            raise InputError(f"--weights {file}: a capmix checkpoint of {saved}, not of {arch} "
                             f"(use the model it was trained as, e.g. open_clip:{saved})")
        return state["model"]
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not state or not all(hasattr(v, "shape") for v in state.values()):
        raise InputError(f"--weights {file}: not a state dict (keys "
                         f"{', '.join(list(map(str, state))[:4])}); {EXPECTED}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_into(model, path: str, arch: str) -> None:
    """Load `path`'s weights into `model` (strict), or one line naming what does not fit."""
    state = read_state(path, arch)
    missing, unexpected = _mismatch(model, state)
    if missing or unexpected:
        raise InputError(f"--weights {resolve_file(path)}: does not fit {arch} ({len(missing)} "
                         f"missing, {len(unexpected)} unexpected key(s), e.g. "
                         f"{(missing or unexpected)[0]}); {EXPECTED}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # a shape differs
        raise InputError(f"--weights {resolve_file(path)}: does not fit {arch} "
                         f"({str(exc).strip().splitlines()[-1].strip()[:200]})") from None


def _mismatch(model, state: dict) -> tuple[list[str], list[str]]:
    own = set(model.state_dict())
    return sorted(own - set(state)), sorted(set(state) - own)


@contextlib.contextmanager
def quiet_random_init() -> Iterator[None]:
    """Silence open_clip's "No pretrained weights loaded ... initialized randomly" while a
    model is built only to receive weights right after."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "No pretrained weights loaded" not in record.getMessage()

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def check_spec(spec) -> None:
    """On the driver: a model spec's local open_clip weights load and, for a capmix
    checkpoint, are of its architecture (memory-mapped: no copy of the tensors). Files only
    open_clip's own loader reads (TorchScript) are left to it."""
    if spec.type not in ("open_clip", "open_clip_coca") or not is_local(spec.pretrained):
        return
    try:
        read_state(spec.pretrained, spec.source, mmap=True)
    except InputError as exc:
        if "cannot be loaded" in str(exc) and _torchscript(resolve_file(spec.pretrained)):
            return
        raise


def _torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
