"""CLIPS pieces against their definitions (clips-notes.md), plus the schedule and checkpoints.

Token ids here come from a word-level toy encoder ("7 8 9" -> [7, 8, 9]), so every expected
fragment can be read off the text."""
from __future__ import annotations

import math

import numpy as np
import pytest

from training.clips import (IGNORE_INDEX, caption_labels, decoder_allowed, fragment_ids,
                            sentences, wrap_ids)


def encode(text: str) -> list[int]:
    return [int(w) for w in text.replace(".", " ").replace("!", " ").replace("?", " ").split()]


CAPTION = " ".join(str(i) for i in range(100, 140))  # 40 distinct tokens, no sentence end
IDS = list(range(100, 140))


def draws(strategy: str, text: str, n: int, times: int = 300, fallback: str = "") -> list:
    rng = np.random.default_rng(0)
    return [fragment_ids(text, strategy, n, encode, rng, fallback) for _ in range(times)]


def test_truncation_is_the_first_tokens():
    assert all(f == IDS[:8] for f in draws("truncation", CAPTION, 8, times=5))


def test_block_is_one_contiguous_span_at_a_uniform_start():
    starts = set()
    for frag in draws("block", CAPTION, 8):
        start = IDS.index(frag[0])
        assert frag == IDS[start:start + 8]
        starts.add(start)
    assert starts == set(range(40 - 8 + 1))  # every start, both ends included


def test_random_keeps_n_distinct_tokens_in_caption_order():
    contiguous = 0
    for frag in draws("random", CAPTION, 8):
        positions = [IDS.index(t) for t in frag]
        assert len(frag) == 8 and positions == sorted(set(positions))
        contiguous += positions[-1] - positions[0] == 7
    assert contiguous < 10  # scattered, not a block in disguise


def test_sub_caption_is_one_whole_sentence_cut_to_n():
    text = "1 2 3. 4 5! 6 7 8 9 10? 11 12... 13"
    # '?' does not end a sentence; runs of '.'/'!' do.
    assert sentences(text) == ["1 2 3", " 4 5", " 6 7 8 9 10? 11 12", " 13"]
    seen = {tuple(f) for f in draws("sub-caption", text, 4)}
    assert seen == {(1, 2, 3), (4, 5), (6, 7, 8, 9), (13,)}


def test_sub_caption_without_a_sentence_falls_back_to_the_raw_caption():
    assert draws("sub-caption", " . ! ", 4, times=3, fallback="5 6 7 8 9") == [[5, 6, 7, 8]] * 3


def test_short_captions_are_returned_whole():
    for strategy in ("block", "random", "truncation"):
        assert draws(strategy, "1 2 3", 8, times=3) == [[1, 2, 3]] * 3


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError):
        fragment_ids(CAPTION, "middle", 8, encode, np.random.default_rng(0))


def test_wrap_and_labels_layout():
    assert wrap_ids([5, 6], 6, sot=1, eot=9).tolist() == [1, 5, 6, 9, 0, 0]
    assert wrap_ids([5, 6, 7, 8, 4], 5, sot=1, eot=9).tolist() == [1, 5, 6, 7, 9]  # EOT forced
    # [SOT 5 6 EOT] shifted left: query i predicts token i+1.
    assert caption_labels([5, 6], 5, eot=9).tolist() == [5, 6, 9] + [IGNORE_INDEX] * 2
    # Cut to 5 tokens [SOT 5 6 7 EOT], shifted: 4 targets and one ignored slot.
    assert caption_labels([5, 6, 7, 8, 4], 5, eot=9).tolist() == [5, 6, 7, 9, IGNORE_INDEX]


def test_decoder_mask_is_exactly_the_clips_pattern():
    prefix, queries = 3, 4
    allowed = decoder_allowed(prefix, queries)
    for i in range(prefix + queries):
        for j in range(prefix + queries):
            if i < prefix:
                want = j < prefix  # prefix sees the prefix, never the queries
            else:
                want = j < prefix or j <= i  # queries see the prefix and earlier queries
            assert bool(allowed[i, j]) == want, (i, j)


def test_decoder_queries_are_causal_and_see_the_prefix():
    import torch

    from capmix.config import ClipsConfig
    from training.clips import build_decoder

    torch.manual_seed(0)
    cfg = ClipsConfig(decoder_length=5, decoder_width=16, decoder_layers=2, decoder_heads=2)
    dec = build_decoder(image_width=12, text_width=8, vocab_size=30, cfg=cfg)
    image, text = torch.randn(2, 4, 12), torch.randn(2, 3, 8, requires_grad=True)
    logits = dec(image, text)
    assert logits.shape == (2, 5, 30)
    for a in range(5):
        dec.zero_grad()
        text.grad = None
        logits = dec(image, text)
        logits[:, a].sum().backward()
        grad = dec.queries.grad.abs().sum(dim=1)
        assert torch.all(grad[a + 1:] == 0) and torch.all(grad[:a + 1] > 0), a
        assert text.grad.abs().sum() > 0  # every query sees the raw-caption states


def test_clips_loss_is_two_separate_infonce_terms_plus_weighted_captioning():
    import torch
    import torch.nn.functional as F
    from open_clip.loss import ClipLoss

    from training.clips import clips_loss

    torch.manual_seed(0)
    img, raw, frag = (F.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    scale = torch.tensor(10.0)
    logits, labels = torch.randn(4, 6, 11), torch.randint(0, 11, (4, 6))
    labels[:, 4:] = IGNORE_INDEX

    def infonce(a, b):  # symmetric, over a [B, B] logit matrix
        target = torch.arange(4)
        return (F.cross_entropy(scale * a @ b.T, target)
                + F.cross_entropy(scale * b @ a.T, target)) / 2

    out = clips_loss(ClipLoss(), img, raw, frag, scale, logits, labels, 1.0, 2.0)
    caption = F.cross_entropy(logits[:, :4].reshape(-1, 11), labels[:, :4].reshape(-1))
    contrastive = (infonce(img, raw) + infonce(img, frag)) / 2
    assert out["contrastive"].item() == pytest.approx(contrastive.item(), rel=1e-5)
    assert out["caption"].item() == pytest.approx(caption.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((contrastive + 2 * caption).item(), rel=1e-5)


def test_lr_schedule_and_step_plan():
    from training.train import lr_at, plan_steps

    assert [lr_at(s, 1.0, 4, 10) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, 1.0, 4, 10) == 1.0  # cosine starts at the peak
    assert lr_at(7, 1.0, 4, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert lr_at(9, 1.0, 4, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 6)))
    # A pool of N samples trains for N samples seen: enough steps to see them all.
    assert plan_steps(12_800_000, 4096) == 3125 and plan_steps(100, 32) == 4
    assert plan_steps(1, 4096) == 1


def test_checkpoints_are_atomic_pruned_and_weights_only(tmp_path):
    import torch

    from capmix.errors import InputError
    from training import checkpoint as ckpt

    for step in (5, 10, 15):
        ckpt.save(tmp_path, step, {"step": step, "w": torch.ones(2) * step}, keep=2)
    (tmp_path / "checkpoints" / ".step_00000020.pt.abc.tmp").write_bytes(b"half a file")
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [10, 15]
    assert ckpt.resolve(tmp_path) == ckpt.checkpoint_path(tmp_path, 15)
    assert ckpt.load(ckpt.latest(tmp_path))["w"].tolist() == [15.0, 15.0]

    import argparse

    bad = tmp_path / "bad.pt"  # an arbitrary pickled object must not load
    torch.save({"format": ckpt.FORMAT, "obj": argparse.Namespace(x=1)}, bad)
    with pytest.raises(InputError, match="cannot load checkpoint"):
        ckpt.load(bad)


def test_model_names_and_optional_mlflow():
    from capmix.errors import ConfigError
    from training.model import resolve_arch
    from training.tracking import check_mlflow

    assert resolve_arch("tiny-clip") == "capmix-tiny-clip"
    assert resolve_arch("open_clip:ViT-B-16/laion2b_s34b_b88k") == "ViT-B-16"
    assert resolve_arch("ViT-B-32") == "ViT-B-32"
    check_mlflow(None)  # not configured: nothing to check
    try:
        import mlflow  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="mlflow is not installed"):
            check_mlflow("http://tracking:5000")


def test_decoder_is_sized_like_the_text_tower_unless_configured():
    from capmix.config import ClipsConfig
    from capmix.errors import ConfigError, InputError
    from training.clips import build_decoder, decoder_shape
    from training.train import _check_decoder

    # The notes' pairing: ViT-B's text tower (512 wide, 12 layers, 8 heads) is the B decoder.
    assert decoder_shape(ClipsConfig(), 512, 12, 8) == (512, 12, 8)
    assert decoder_shape(ClipsConfig(), 64, 2, 2) == (64, 2, 2)  # tiny-clip: a tiny decoder
    assert decoder_shape(ClipsConfig(decoder_layers=3), 64, 2, 2) == (64, 3, 2)
    with pytest.raises(ConfigError, match="decoder_heads"):
        decoder_shape(ClipsConfig(decoder_width=100), 64, 2, 8)
    dec = build_decoder(12, 64, 30, ClipsConfig(decoder_length=4), 2, 2)
    _check_decoder({"decoder_width": None, "decoder_layers": None}, dec)  # sized the same way
    _check_decoder({"decoder_width": 64, "decoder_layers": 2, "decoder_heads": 2}, dec)
    # A checkpoint of the former 512/12/8 default names the settings that resume it.
    with pytest.raises(InputError, match="--set train.clips.decoder_width=512 --set "
                                         "train.clips.decoder_layers=12"):
        _check_decoder({"decoder_width": 512, "decoder_layers": 12, "decoder_heads": 8}, dec)
