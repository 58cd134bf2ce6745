"""The chunked caption loss against the full-logits cross-entropy it replaces: same loss, same
gradients (hidden states, head weight and bias, every model parameter), padding ignored; and
the peak-memory estimate's arithmetic."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("ignore_index, bias, rows", [(-100, True, 5), (0, False, 7),
                                                      (-100, True, 1000)])
def test_chunked_loss_and_gradients_equal_the_full_cross_entropy(ignore_index, bias, rows):
    from training.caption_loss import linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    b = torch.randn(50, generator=g, requires_grad=True) if bias else None
    labels = torch.randint(1, 50, (3, 9), generator=g)
    labels[0, 6:] = ignore_index  # padding at the end of a caption
    labels[2, :] = ignore_index  # a row with no target at all
    inputs = [t for t in (hidden, weight, b) if t is not None]
    # The trainer's loss before this change (logits made whole, in float32).
    full = F.cross_entropy(F.linear(hidden, weight, b).float().reshape(-1, 50),
                           labels.reshape(-1), ignore_index=ignore_index)
    chunked = linear_cross_entropy(hidden, weight, b, labels, ignore_index, rows)
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    grads = _grads(2.5 * chunked, inputs)
    for want, got in zip(_grads(2.5 * full, inputs), grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # Ignored targets contribute nothing: their hidden states get no gradient.
    assert torch.all(grads[0][2] == 0) and torch.all(grads[0][0, 6:] == 0)
    with torch.no_grad():  # evaluation: no gradient work, the same value
        assert linear_cross_entropy(hidden, weight, b, labels, ignore_index, rows).item() \
            == pytest.approx(full.item(), rel=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_within_bf16_precision():
    from training.caption_loss import linear_cross_entropy

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 8, 32, generator=g, requires_grad=True)
    weight = torch.randn(64, 32, generator=g, requires_grad=True)
    labels = torch.randint(0, 64, (4, 8), generator=g)

    def run(loss_fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(hidden * 1.0)
        return loss.detach(), _grads(loss, [hidden, weight])

    full, full_grads = run(lambda h: F.cross_entropy(
        F.linear(h, weight).float().reshape(-1, 64), labels.reshape(-1)))
    chunked, chunked_grads = run(lambda h: linear_cross_entropy(h, weight, None, labels,
                                                                -100, 6))
    assert chunked.item() == pytest.approx(full.item(), rel=1e-2)
    for want, got in zip(full_grads, chunked_grads):
        assert got.dtype == want.dtype
        assert ((got - want).abs().max() / want.abs().max()).item() < 3e-2


def _step_grads(objective: str, mode: str, data: dict, **clips) -> tuple[float, dict]:
    """Loss and every parameter's gradient of one trainer step (tiny model, full vocabulary)."""
    from dataclasses import replace

    from capmix.config import ClipsConfig, TrainConfig
    from training.model import build, train_module
    from training.train import Dist, _loss_fn

    tcfg = TrainConfig(model="tiny-coca" if objective == "coca" else "tiny-clip",
                       objective=objective, caption_loss=mode)
    tcfg = replace(tcfg, clips=ClipsConfig(**clips))
    torch.manual_seed(0)
    clip, decoder, pre, _ = build(tcfg)
    module = train_module(clip, decoder, pre, objective)
    parts = _loss_fn(tcfg, Dist(0, 1, 0, torch.device("cpu"), "gloo"))(module(data), data)
    parts["loss"].backward()
    return parts["caption"].item(), {n: p.grad for n, p in module.named_parameters()
                                     if p.grad is not None}


def _data(objective: str, batch: int = 3, length: int = 12) -> dict:
    from training.clips import IGNORE_INDEX

    g = torch.Generator().manual_seed(2)
    data = {"image": torch.randint(0, 255, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)}
    if objective == "coca":
        text = torch.randint(1, 49000, (batch, 32), generator=g)
        text[:, 20:] = 0  # padding, which CoCa's loss ignores
        return {**data, "text": text}
    labels = torch.randint(1, 49000, (batch, length), generator=g)
    labels[:, 7:] = IGNORE_INDEX
    return {**data, "raw": torch.randint(1, 49000, (batch, 32), generator=g),
            "fragment": torch.randint(1, 49000, (batch, 32), generator=g), "labels": labels}


@pytest.mark.parametrize("objective", ["clips", "coca"])
def test_trainer_step_has_the_same_loss_and_gradients_chunked_and_full(objective):
    clips = {"decoder_length": 12} if objective == "clips" else {}
    data = _data(objective)
    full, full_grads = _step_grads(objective, "full", data, **clips)
    chunked, chunked_grads = _step_grads(objective, "chunked", data, **clips)
    assert chunked == pytest.approx(full, rel=1e-5)
    assert full_grads.keys() == chunked_grads.keys()
    head = "decoder.head.weight" if objective == "clips" else "clip.text_decoder.text_projection"
    assert head in chunked_grads
    for name, want in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], want, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_coca_forward_without_projection_is_open_clips_forward():
    from capmix.config import TrainConfig
    from training.model import build, coca_forward, normalize

    clip, _, pre, _ = build(TrainConfig(model="tiny-coca", objective="coca"))
    data = _data("coca")
    images = normalize(data["image"], pre)
    want = clip(images, data["text"])
    got = coca_forward(clip, images, data["text"])
    torch.testing.assert_close(got["logits"].logits(), want["logits"])
    assert torch.equal(got["labels"], want["labels"])
    assert clip.text_decoder.text_projection is not None  # restored after the call


def test_estimate_is_affine_and_the_largest_batch_fits():
    from capmix.config import TrainConfig
    from training.memory import estimate
    from training.model import build, train_module

    tcfg = TrainConfig(model="tiny-clip", objective="clips")
    clip, decoder, pre, _ = build(tcfg, device="meta")
    module = train_module(clip, decoder, pre, "clips")
    est = estimate(tcfg, module, 64, world=2, runtime=10**9)
    assert est.params == sum(p.numel() for p in module.parameters()) > 6_000_000
    assert est.total == est.fixed + 64 * est.per_sample
    room = est.fixed + 40.5 * est.per_sample
    assert est.largest_batch(room) == 40 and est.largest_batch(est.fixed - 1) == 0
    full = estimate(TrainConfig(model="tiny-clip", objective="clips", caption_loss="full"),
                    module, 64, world=2, runtime=10**9)
    # The full logits alone: 128 positions x 49,408 tokens x 4 bytes per sample, kept ~3x.
    assert full.per_sample - est.per_sample > 2 * 128 * 49408 * 4
