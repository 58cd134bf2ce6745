"""Every model capmix can load. Architectures are data: open_clip JSON configs in
capmix/model_configs/ (the tiny random-init models tests and smoke runs use), registered with
open_clip on first use. torch and open_clip are imported inside functions, never at import time.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_registered = False
_lock = threading.Lock()


def register_model_configs() -> None:
    """Make capmix's own architectures (capmix-tiny-clip, capmix-tiny-coca, ...) known to
    open_clip. Idempotent and thread-safe (UDF workers may call it concurrently)."""
    global _registered
    with _lock:
        if _registered:
            return
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def create_open_clip(arch: str, pretrained: str | None = None, device: str = "cpu",
                     precision: str = "fp32") -> tuple[Any, Any, Any, Any]:
    """(model, train transform, eval transform, tokenizer) for an open_clip architecture.

    `pretrained` is an open_clip tag (downloads from a hub) or a local checkpoint file; None
    builds the architecture with random weights, offline."""
    register_model_configs()
    import open_clip

    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        arch, pretrained=pretrained, device=device, precision=precision)
    return model, preprocess_train, preprocess_val, open_clip.get_tokenizer(arch)
