"""Every model capmix can load, named in a registry that is data (capmix/data/models.json), as
open_clip's model_configs/ are: captioners (BLIP, BLIP-2 and any transformers image-to-text or
image-text-to-text model, OpenCLIP-CoCa) and scorers (any open_clip model + pretrained tag).

A model is named by one string, the same on the command line, in YAML and in the tables:
- a registry name: `tiny-coca`, `blip2-opt-2.7b`, `vit-l-14`, ... (`capmix.models.names()`);
- `hf:<hub id or local folder>`: any transformers captioner (`hf:Salesforce/blip2-opt-6.7b`);
- `open_clip:<arch>[/<pretrained tag or checkpoint file>]`: any open_clip scorer, or CoCa
  captioner (`open_clip:ViT-B-16/laion2b_s34b_b88k`, `open_clip:local-dir:/models/my-clip`).
A `weights` setting replaces the registry's weights with a local folder/file or another hub id.

Resolving a name is pure (no I/O beyond the packaged registry), so configs are checked before any
work starts; loading imports torch / open_clip / transformers inside the functions.
"""
from __future__ import annotations

import copy
import os
import functools
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from capmix.errors import CapmixError, ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
DATA_DIR = Path(__file__).resolve().parent / "data"
DATA_PREFIX = "capmix-data:"
REGISTRY_FILE = DATA_DIR / "models.json"
CAPTIONER_TYPES = ("open_clip_coca", "hf", "hf_random")
SCORER_TYPES = ("open_clip",)
_registered = False
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: what to build and from which weights."""

    name: str                      # as the user wrote it; recorded in the tables
    role: str                      # "captioner" | "scorer"
    type: str                      # open_clip | open_clip_coca | hf | hf_random
    source: str                    # open_clip arch, or transformers hub id / folder
    pretrained: Optional[str] = None   # open_clip tag or checkpoint; None: random init
    prompt: Optional[str] = None   # default prompt (instruction models)
    chat: bool = False             # the prompt goes through the processor's chat template
    family: Optional[str] = None   # hf_random: the architecture family (blip2)
    config: dict = field(default_factory=dict, compare=False, hash=False)
    tokenizer: dict = field(default_factory=dict, compare=False, hash=False)
    description: str = ""

    @property
    def model_id(self) -> str:
        """What produced a row, for the `model` column: weights included."""
        if self.type in ("open_clip", "open_clip_coca"):
            return f"open_clip:{self.source}/{self.pretrained or 'random-init'}"
        if self.type == "hf_random":
            return f"{self.family}:random-init:{self.name}"
        return f"hf:{self.source}"


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, dict[str, dict]]:
    """The packaged registry: {"captioners": {name: entry}, "scorers": {name: entry}}."""
    data = json.loads(REGISTRY_FILE.read_text(encoding="utf-8"))
    return {"captioners": data["captioners"], "scorers": data["scorers"]}


def names(role: str) -> list[str]:
    """Registry names of captioners (`role="captioner"`) or scorers."""
    return sorted(registry()[role + "s"])


def resolve(name: str, role: str, weights: str | None = None, key: str = "") -> ModelSpec:
    """A model name (see the module doc) -> ModelSpec; ConfigError naming `key` if unknown."""
    key = key or role
    text = (name or "").strip()
    if text.startswith("hf:"):
        if role != "captioner":
            raise ConfigError(key, f"{text!r}: transformers models are captioners here; scorers "
                                   "are open_clip models (open_clip:<arch>/<pretrained>)")
        entry = {"type": "hf", "model": text[3:]}
    elif text.startswith("open_clip:"):
        entry = _open_clip_entry(text[len("open_clip:"):], role, key)
    else:
        entry = registry()[role + "s"].get(text)
        if entry is None:
            known = ", ".join(names(role))
            raise ConfigError(key, f"unknown {role} {text!r}; registry names: {known}; or "
                              + ("hf:<hub id or folder>, open_clip:<coca arch>/<pretrained>"
                                 if role == "captioner" else "open_clip:<arch>/<pretrained>"))
    return _spec(text, role, copy.deepcopy(entry), weights, key)


def _open_clip_entry(rest: str, role: str, key: str) -> dict:
    # The architecture never contains '/', except after an open_clip schema (hf-hub:org/repo,
    # local-dir:/path), which names weights and architecture at once.
    if rest.startswith(("hf-hub:", "local-dir:")):
        arch, pretrained = rest, None
    else:
        arch, _, pretrained = rest.partition("/")
    if not arch:
        raise ConfigError(key, "open_clip: needs an architecture, e.g. open_clip:ViT-L-14/openai")
    kind = "open_clip_coca" if role == "captioner" else "open_clip"
    if role == "captioner" and "coca" not in arch.lower() and not arch.startswith(
            ("hf-hub:", "local-dir:")):
        raise ConfigError(key, f"open_clip captioners are CoCa models; {arch!r} is not")
    return {"type": kind, "arch": arch, "pretrained": pretrained or None}


def _spec(name: str, role: str, entry: dict, weights: str | None, key: str) -> ModelSpec:
    kind = entry.get("type")
    allowed = CAPTIONER_TYPES if role == "captioner" else SCORER_TYPES
    if role == "scorer" and kind == "open_clip_coca":
        kind = "open_clip"  # a CoCa model scores like any CLIP model
    if kind not in allowed:
        raise ConfigError(key, f"{name!r} is a {kind} model, not a {role}")
    if kind in ("open_clip", "open_clip_coca"):
        source, pretrained = entry["arch"], entry.get("pretrained")
        if weights:
            pretrained = weights
    elif kind == "hf":
        source, pretrained = (weights or entry["model"]), None
    else:
        source, pretrained = (weights or name), None
        if weights:  # trained weights for a registry architecture: load them as any hf model
            kind = "hf"
    return ModelSpec(name=name, role=role, type=kind, source=source, pretrained=pretrained,
                     prompt=entry.get("prompt"), chat=bool(entry.get("chat", False)),
                     family=entry.get("family"), config=entry.get("config", {}),
                     tokenizer=entry.get("tokenizer", {}),
                     description=entry.get("description", ""))


def local_weights(spec: ModelSpec) -> Optional[str]:
    """The local file or folder a spec loads its weights from (`/models/blip2`, `./ckpt.pt`,
    `open_clip:local-dir:/m`, `file:///m`), or None (hub ids, packaged or random weights)."""
    for value in (spec.pretrained, spec.source):
        text = str(value or "")
        text = text[len("local-dir:"):] if text.startswith("local-dir:") else text
        if text.startswith("file:"):
            from urllib.parse import unquote, urlparse

            text = unquote(urlparse(text).path)
        if text.startswith(("/", "./", "../", "~")):
            return str(Path(text).expanduser())
    return None


def check_weights_reachable(spec: ModelSpec, key: str) -> None:
    """ConfigError on the driver, before any task, when a spec's local weights are missing.
    Every executor loads them from the same path (weights are gigabytes: capmix does not copy
    them), so they belong where every node sees them: a Unity Catalog volume (/Volumes/...),
    /dbfs/..., or a shared mount."""
    path = local_weights(spec)
    if path is not None and not Path(path).exists():
        raise ConfigError(key, f"{path}: no such file or folder on the driver; executors load "
                               "weights from this same path, so put them where every node sees "
                               "them (/Volumes/..., /dbfs/..., a shared mount)")


# --------------------------------------------------------------------------------------------
# Loading (torch and friends imported here, never at import time)


def register_model_configs() -> None:
    """Make capmix's own architectures (capmix-tiny-clip, capmix-tiny-coca, ...) known to
    open_clip. Idempotent and thread-safe (UDF workers may call it concurrently)."""
    global _registered
    with _lock:
        if _registered:
            return
        import open_clip
        from open_clip import factory

        open_clip.add_model_config(CONFIG_DIR)
        # A config may name a tokenizer file shipped in capmix/data ("capmix-data:FILE", e.g. the
        # demo models' 2048-token BPE vocabulary): JSON cannot hold the install path.
        for name in (p.stem for p in CONFIG_DIR.glob("*.json")):
            kwargs = factory._MODEL_CONFIGS[name].get("text_cfg", {}).get("tokenizer_kwargs", {})
            bpe = kwargs.get("bpe_path", "")
            if bpe.startswith(DATA_PREFIX):
                kwargs["bpe_path"] = str(DATA_DIR / bpe[len(DATA_PREFIX):])
        _registered = True


def create_open_clip(arch: str, pretrained: str | None = None, device: str = "cpu",
                     precision: str = "fp32") -> tuple[Any, Any, Any, Any]:
    """(model, train transform, eval transform, tokenizer) for an open_clip architecture.

    `pretrained` is an open_clip tag (downloads from a hub), a local file (a checkpoint
    `capmix train` wrote, or an open_clip state dict: capmix/weights.py checks and loads it), or
    None: the architecture with random weights, offline."""
    register_model_configs()
    import open_clip
    import torch

    from capmix import weights

    if weights.is_local(pretrained):
        with weights.quiet_random_init():
            built = create_open_clip(arch, None, "cpu", "fp32")
        try:
            weights.load_into(built[0], pretrained, arch)
        except CapmixError as ours:
            if "cannot be loaded" not in str(ours) or not os.path.isfile(pretrained):
                raise
            # Formats only open_clip's own loader reads (OpenAI's TorchScript files, big_vision
            # .npz): let it try; if it cannot either, our line says what was expected.
            try:
                return _open_clip_file(arch, pretrained, device, precision)
            except Exception:
                raise ours from None
        model = built[0].to({"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            precision, torch.float32))
        return (model.to(device), *built[1:])

    # Random weights must be the same in every worker (a caption may not depend on where it
    # was made): seed the build, and initialise what open_clip leaves as torch.empty (CoCa's
    # decoder projection is never initialised: it would hold whatever that memory held).
    state = torch.random.get_rng_state() if pretrained is None else None
    if state is not None:
        torch.manual_seed(0)
    try:
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device=device, precision=precision)
        projection = getattr(getattr(model, "text_decoder", None), "text_projection", None)
        if state is not None and projection is not None:
            # open_clip's MultimodalTransformer.init_parameters is broken (it reads a
            # `transformer` attribute the class lacks); this is the init it means to do.
            with torch.no_grad():
                torch.nn.init.normal_(projection, std=projection.shape[0] ** -0.5)
    finally:
        if state is not None:
            torch.random.set_rng_state(state)
    return model, preprocess_train, preprocess_val, open_clip.get_tokenizer(arch)


def _open_clip_file(arch: str, path: str, device: str, precision: str):
    import open_clip

    model, train_tf, eval_tf = open_clip.create_model_and_transforms(
        arch, pretrained=path, device=device, precision=precision)
    return model, train_tf, eval_tf, open_clip.get_tokenizer(arch)


def load_captioner(spec: ModelSpec, device: str = "cpu", precision: str = "fp32"):
    """A ready `capmix.captioning.Captioner` (eval mode, on `device`)."""
    from capmix import captioning

    if spec.type == "open_clip_coca":
        model, _, transform, tokenizer = create_open_clip(spec.source, spec.pretrained, device,
                                                          precision)
        return captioning.CoCaCaptioner(spec, model.eval(), transform, device, tokenizer)
    if spec.type == "hf_random":
        from capmix.tiny_hf import build_random

        model, processor = build_random(spec, device, precision)
        return captioning.HFCaptioner(spec, model, processor, device)
    model, processor = _load_hf(spec.source, device, precision)
    return captioning.HFCaptioner(spec, model, processor, device)


def _load_hf(source: str, device: str, precision: str):
    """A transformers captioner and its processor from a hub id or a local folder."""
    import torch
    import transformers as tf

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    processor = tf.AutoProcessor.from_pretrained(source)
    errors = []
    for auto in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        cls = getattr(tf, auto, None)
        if cls is None:
            continue
        try:
            model = cls.from_pretrained(source, torch_dtype=dtype)
            break
        except (ValueError, KeyError) as exc:  # architecture not in this auto class
            errors.append(f"{auto}: {exc}")
    else:
        raise ConfigError("caption.captioner", f"{source}: not an image-to-text model "
                                               f"({'; '.join(errors)})")
    return model.to(device).eval(), processor


def load_scorer(spec: ModelSpec, device: str = "cpu", precision: str = "fp32"):
    """A ready `capmix.scoring.Scorer` (eval mode, on `device`)."""
    from capmix.scoring import Scorer

    model, _, transform, tokenizer = create_open_clip(spec.source, spec.pretrained, device,
                                                      precision)
    return Scorer(spec, model.eval(), transform, tokenizer, device)
