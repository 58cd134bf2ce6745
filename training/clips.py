"""CLIPS (arXiv 2411.16828; shared/seeds/clips-notes.md): the pieces that differ from CLIP.

- `fragment_ids`: the short piece of the synthetic caption the text encoder sees (sub-caption,
  block, truncation or random tokens; 32 tokens by default, where the notes' ablations peak).
- `decoder_allowed`: the attention pattern of the captioning decoder over
  [image tokens | raw-caption token states | learnable queries].
- `CaptionDecoder`: one self-attention stack over that sequence ("concat" fusion, no
  cross-attention, no teacher forcing); query i predicts token i+1 of the full synthetic caption.
- `caption_labels`: that target, shifted left by one, padding ignored.
- `clips_loss`: contrastive_weight * mean(InfoNCE(img, raw), InfoNCE(img, fragment)) +
  caption_weight * token cross-entropy, the two InfoNCE terms on separate logit matrices; the
  cross-entropy is chunked (training/caption_loss.py), so the logits are never whole.

The text side uses the model's own open_clip tokenizer (BPE, [SOT] ids [EOT] pad), not the
paper's BERT WordPiece with a trailing [CLS]; the pooling token is the model's own (EOT).
torch is imported inside functions, so the loader workers import this module cheaply.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

    from training.caption_loss import HeadInputs

STRATEGIES = ("sub-caption", "block", "truncation", "random", "full")
IGNORE_INDEX = -100
# The official sub-caption split: runs of '.' or '!' end a sentence; '?' does not.
_SENTENCE_END = re.compile(r"[.!]+")


def sentences(text: str) -> list[str]:
    """The caption's sentences as CLIPS splits them; whitespace-only pieces are dropped (the
    official code keeps them, which would hand the encoder an empty fragment)."""
    return [p for p in _SENTENCE_END.split(text or "") if p.strip()]


def fragment_ids(text: str, strategy: str, n_tokens: int, encode: Callable[[str], list[int]],
                 rng: np.random.Generator, fallback: str = "") -> list[int]:
    """Token ids (no SOT/EOT) of the fragment of `text` that the text encoder sees.

    - truncation: the first n tokens.
    - block: n contiguous tokens starting at a uniformly random position.
    - random: n distinct token positions drawn uniformly, kept in caption order.
    - sub-caption: one sentence drawn uniformly, cut to n tokens; `fallback` (the raw caption)
      when the caption has no sentence.
    - full: the whole caption (the ablation CLIPS compares fragments with; the text tower's
      context length cuts it).
    A caption of at most n tokens is returned whole by the token strategies.
    """
    if strategy == "full":
        return encode(text or fallback)
    if strategy == "sub-caption":
        parts = sentences(text)
        ids = encode(parts[int(rng.integers(len(parts)))] if parts else fallback)
        return ids[:n_tokens]
    ids = encode(text or fallback)
    if len(ids) <= n_tokens:
        return ids
    if strategy == "truncation":
        return ids[:n_tokens]
    if strategy == "block":
        start = int(rng.integers(len(ids) - n_tokens + 1))
        return ids[start:start + n_tokens]
    if strategy == "random":
        keep = np.sort(rng.choice(len(ids), size=n_tokens, replace=False))
        return [ids[i] for i in keep]
    raise ValueError(f"unknown fragment strategy {strategy!r}; expected one of {STRATEGIES}")


def wrap_ids(ids: Sequence[int], length: int, sot: int, eot: int) -> np.ndarray:
    """[SOT] ids [EOT] padded with 0 to `length`; EOT kept when cut (as open_clip does)."""
    seq = [sot, *ids, eot]
    if len(seq) > length:
        seq = seq[:length]
        seq[-1] = eot
    out = np.zeros(length, dtype=np.int64)
    out[:len(seq)] = seq
    return out


def caption_labels(ids: Sequence[int], length: int, eot: int) -> np.ndarray:
    """Targets of the `length` decoder queries for the caption [SOT] ids [EOT] (cut to
    `length` tokens, EOT forced), shifted left by one: query i predicts token i+1, so the
    labels are ids then EOT, and IGNORE_INDEX where the caption has ended."""
    body = list(ids)[:max(0, length - 2)] + [eot]
    out = np.full(length, IGNORE_INDEX, dtype=np.int64)
    out[:len(body)] = body
    return out


def decoder_allowed(prefix: int, queries: int) -> "torch.Tensor":
    """allowed[i, j]: position i may attend to position j, over [prefix | queries].

    Prefix <-> prefix: full. Prefix -> queries: blocked. Queries -> prefix: full.
    Queries <-> queries: causal (query a sees queries b <= a)."""
    import torch

    total = prefix + queries
    allowed = torch.zeros(total, total, dtype=torch.bool)
    allowed[:, :prefix] = True
    allowed[prefix:, prefix:] = torch.ones(queries, queries, dtype=torch.bool).tril()
    return allowed


def decoder_shape(cfg, text_width: int, text_layers: int, text_heads: int
                  ) -> tuple[int, int, int]:
    """(width, layers, heads) of the decoder: the ClipsConfig's, the text tower's where unset."""
    from capmix.errors import ConfigError

    width, heads = cfg.decoder_width or text_width, cfg.decoder_heads or text_heads
    if width % heads:
        raise ConfigError("train.clips.decoder_heads", f"{heads} heads do not divide the "
                          f"decoder width {width}")
    return width, cfg.decoder_layers or text_layers, heads


def build_decoder(image_width: int, text_width: int, vocab_size: int, cfg,
                  text_layers: int = 12, text_heads: int = 8) -> "torch.nn.Module":
    """A `CaptionDecoder` sized by a ClipsConfig (unset sizes: the text tower's)."""
    width, layers, heads = decoder_shape(cfg, text_width, text_layers, text_heads)
    return _decoder_class()(image_width, text_width, vocab_size, cfg.decoder_length,
                            width, layers, heads, cfg.decoder_mlp_ratio)


def _decoder_class():
    import torch
    from torch import nn

    class CaptionDecoder(nn.Module):
        """Pre-norm transformer over [image tokens | text states | queries] with the CLIPS mask;
        each input stream gets a LayerNorm (its tokens come from before the tower's final LN)
        and its own bias-free projection to the decoder width."""

        def __init__(self, image_width: int, text_width: int, vocab_size: int, length: int,
                     width: int, layers: int, heads: int, mlp_ratio: float):
            super().__init__()
            self.length = length
            self.image_proj = nn.Sequential(nn.LayerNorm(image_width),
                                            nn.Linear(image_width, width, bias=False))
            self.text_proj = nn.Sequential(nn.LayerNorm(text_width),
                                           nn.Linear(text_width, width, bias=False))
            self.queries = nn.Parameter(torch.randn(length, width))  # N(0, 1), as in CLIPS
            layer = nn.TransformerEncoderLayer(
                width, heads, int(width * mlp_ratio), dropout=0.0, activation="gelu",
                batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.ln = nn.LayerNorm(width)
            self.head = nn.Linear(width, vocab_size)

        def forward(self, image_tokens: torch.Tensor, text_states: torch.Tensor,
                    project: bool = True) -> torch.Tensor:
            """[batch, length, vocab] logits; with project=False the [batch, length, width]
            states before the vocabulary head (the chunked caption loss applies the head)."""
            batch = image_tokens.shape[0]
            prefix = torch.cat([self.image_proj(image_tokens), self.text_proj(text_states)], 1)
            queries = self.queries.to(prefix.dtype).unsqueeze(0).expand(batch, -1, -1)
            x = torch.cat([prefix, queries], dim=1)
            # nn.Transformer masks: True = may NOT attend.
            mask = ~decoder_allowed(prefix.shape[1], self.length).to(x.device)
            x = self.ln(self.blocks(x, mask=mask)[:, prefix.shape[1]:])
            return self.head(x) if project else x

    return CaptionDecoder


def caption_loss(logits: "torch.Tensor | HeadInputs", labels: "torch.Tensor",
                 mode: str = "chunked") -> "torch.Tensor":
    """Mean token cross-entropy over the non-padding targets, of logits or of a decoder's
    HeadInputs (chunked: the logits are never materialised; training/caption_loss.py)."""
    from training.caption_loss import caption_cross_entropy

    return caption_cross_entropy(logits, labels, IGNORE_INDEX, mode)


def coca_loss(contrastive: Callable, out: dict, caption_weight: float = 2.0,
              mode: str = "chunked") -> dict[str, "torch.Tensor"]:
    """CoCa's objective (open_clip's CoCaLoss): InfoNCE + weighted next-token cross-entropy.
    Padding is token 0 in open_clip's tokenizers, which CoCa's loss ignores too."""
    from training.caption_loss import caption_cross_entropy

    con = contrastive(out["image"], out["text"], out["logit_scale"])
    cap = caption_cross_entropy(out["caption_logits"], out["caption_labels"], 0, mode)
    return {"loss": con + caption_weight * cap, "contrastive": con.detach(),
            "caption": cap.detach()}


def clips_loss(contrastive: Callable, image: "torch.Tensor", raw: "torch.Tensor",
               fragment: "torch.Tensor", logit_scale: "torch.Tensor",
               logits: "torch.Tensor | HeadInputs", labels: "torch.Tensor",
               contrastive_weight: float = 1.0, caption_weight: float = 2.0,
               mode: str = "chunked") -> dict[str, "torch.Tensor"]:
    """The CLIPS objective. `contrastive(image, text, logit_scale)` is a symmetric InfoNCE
    (open_clip's ClipLoss): called twice, so raw captions and fragments are never each other's
    negatives; one shared temperature. `logits`: the decoder's logits or its HeadInputs."""
    con = 0.5 * (contrastive(image, raw, logit_scale) + contrastive(image, fragment, logit_scale))
    cap = caption_loss(logits, labels, mode)
    return {"loss": contrastive_weight * con + caption_weight * cap,
            "contrastive": con.detach(), "caption": cap.detach()}
