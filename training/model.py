"""The trained network: an open_clip model (any architecture) plus, for CLIPS, the caption
decoder, wrapped in one module so DDP sees every parameter in a single forward call.

Images arrive as uint8 [B, 3, H, W] from the loader and are normalised here, on the device.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

    from capmix.config import TrainConfig


def resolve_arch(name: str) -> str:
    """A registry name (`tiny-clip`, `vit-b-32`), `open_clip:ARCH[/weights]` or an open_clip
    architecture (`ViT-B-32`) -> the open_clip architecture. Training starts from random
    weights (DataComp's setup), so a registry entry's pretrained tag is not used."""
    text = name.strip()
    if text.startswith("open_clip:"):
        return text[len("open_clip:"):].partition("/")[0]
    try:
        from capmix.models import registry

        entry = registry().get("scorers", {}).get(text)
    except ImportError:  # registry not available: capmix's own tiny config only
        entry = {"arch": "capmix-tiny-clip"} if text == "tiny-clip" else None
    return entry["arch"] if entry else text


def check_arch(arch: str) -> None:
    from capmix.errors import InputError
    from capmix.models import register_model_configs

    register_model_configs()
    import open_clip

    if arch not in open_clip.list_models():
        raise InputError(f"unknown model architecture {arch!r}: use a registry name "
                         "(tiny-clip) or an open_clip architecture (e.g. ViT-B-32)")


@dataclass(frozen=True)
class Preprocess:
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def preprocess_of(model) -> Preprocess:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    return Preprocess(int(size), tuple(cfg["mean"]), tuple(cfg["std"]))


def normalize(images: "torch.Tensor", pre: Preprocess) -> "torch.Tensor":
    """uint8 [B, 3, H, W] -> float, scaled and standardised like open_clip's transforms."""
    import torch

    mean = torch.tensor(pre.mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def resolve_train_arch(name: str, objective: str) -> str:
    """The open_clip architecture trained: captioner registry names count for `coca`."""
    if objective == "coca":
        from capmix.models import registry

        entry = registry().get("captioners", {}).get(name.strip())
        if entry and entry.get("type") == "open_clip_coca":
            return entry["arch"]
    return resolve_arch(name)


def build(cfg: "TrainConfig", vocab_size: Optional[int] = None, device: str = "cpu"):
    """(clip model, decoder or None, Preprocess, context length) for a training config.
    device="meta": shapes without storage (the memory estimate sizes any model in no time)."""
    import torch

    with torch.device(device):
        return _build(cfg, vocab_size, device)


def _build(cfg: "TrainConfig", vocab_size: Optional[int], device: str):
    from capmix.errors import InputError
    from capmix.models import create_open_clip

    arch = resolve_train_arch(cfg.model, cfg.objective)
    check_arch(arch)
    clip = create_open_clip(arch, pretrained=None, device=device)[0]
    is_coca = hasattr(clip, "text_decoder")
    if (cfg.objective == "coca") != is_coca:
        raise InputError(f"{arch!r} is {'a' if is_coca else 'not a'} CoCa architecture: "
                         + ("train it with --objective coca" if is_coca else
                            "--objective coca needs one (e.g. demo-coca, coca_ViT-B-32)"))
    pre = preprocess_of(clip)
    context = int(getattr(clip, "context_length", 0) or clip.text.context_length)
    decoder = None
    if cfg.objective == "clips":
        from training.clips import build_decoder

        image_width = clip.visual.transformer.width
        vocab = vocab_size or int(getattr(clip, "vocab_size", 0) or clip.text.vocab_size)
        text_width, text_layers, text_heads = text_shape(clip)
        decoder = build_decoder(image_width, text_width, vocab, cfg.clips, text_layers,
                                text_heads)
    return clip, decoder, pre, context


def text_shape(clip) -> tuple[int, int, int]:
    """(width, layers, heads) of the model's text transformer."""
    transformer = getattr(clip, "transformer", None) or clip.text.transformer
    attn = transformer.resblocks[0].attn
    heads = getattr(attn, "num_heads", None) or getattr(attn, "heads", None) or 8
    return int(transformer.width), int(transformer.layers), int(heads)


@contextmanager
def _without_projection(decoder):
    """CoCa's text decoder returning its states before the vocabulary projection (open_clip
    applies `text_projection` only when it is set), so the chunked loss applies it instead."""
    proj = decoder.text_projection
    decoder.text_projection = None
    try:
        yield proj
    finally:
        decoder.text_projection = proj


def coca_forward(clip, images, text) -> dict[str, Any]:
    """open_clip's own `CoCa.forward`, with the caption decoder's output as HeadInputs (its
    states and the projection as a [vocab, width] weight) instead of [batch, length, vocab]
    logits; the labels are CoCa's (the caption shifted by one)."""
    from training.caption_loss import HeadInputs

    with _without_projection(clip.text_decoder) as proj:
        out = clip(images, text)
    return {**out, "logits": HeadInputs(out["logits"], proj.t())}


def train_module(clip, decoder, pre: Preprocess, objective: str = "clip") -> "torch.nn.Module":
    """One nn.Module whose forward returns everything the losses need."""
    from torch import nn

    class Trainable(nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = clip
            self.decoder = decoder

        def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
            images = normalize(batch["image"], pre)
            scale = self.clip.logit_scale.exp()
            if objective == "coca":
                # CoCa's own forward: pooled features for the contrastive loss, and the
                # decoder's states + head for next-token prediction, with its labels.
                out = coca_forward(self.clip, images, batch["text"])
                return {"image": out["image_features"], "text": out["text_features"],
                        "logit_scale": scale, "caption_logits": out["logits"],
                        "caption_labels": out["labels"]}
            if self.decoder is None:
                return {"image": self.clip.encode_image(images, normalize=True),
                        "text": self.clip.encode_text(batch["text"], normalize=True),
                        "logit_scale": scale}
            import torch

            # Patch tokens of the last block without the class token, before the final LN
            # (clips-notes.md section 2); raw and fragment texts share one text-tower pass.
            img = self.clip.forward_intermediates(
                image=images, image_indices=1, image_output_fmt="NLC", normalize=True)
            n = batch["raw"].shape[0]
            txt = self.clip.forward_intermediates(
                text=torch.cat([batch["raw"], batch["fragment"]]), text_indices=1,
                normalize=True)
            raw_states = txt["text_intermediates"][-1][:n]
            from training.caption_loss import HeadInputs

            hidden = self.decoder(img["image_intermediates"][-1], raw_states, project=False)
            head = self.decoder.head
            return {"image": img["image_features"], "raw": txt["text_features"][:n],
                    "fragment": txt["text_features"][n:], "logit_scale": scale,
                    "logits": HeadInputs(hidden, head.weight, head.bias)}

    return Trainable()
