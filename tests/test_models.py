"""The model registry, per-row sampling and the tiny models (no Spark)."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from capmix import captioning, models
from capmix.errors import ConfigError


# -- registry ---------------------------------------------------------------------------------

def test_registry_names_the_papers_models_and_tiny_ones():
    assert {"tiny-coca", "tiny-blip2", "blip2-opt-2.7b", "blip-base", "coca-vit-l-14",
            "llava-1.5-7b"} <= set(models.names("captioner"))
    assert {"tiny-clip", "vit-l-14"} <= set(models.names("scorer"))
    paper = models.resolve("vit-l-14", "scorer")
    assert (paper.type, paper.source, paper.pretrained) == ("open_clip", "ViT-L-14", "openai")
    blip2 = models.resolve("blip2-opt-2.7b", "captioner")
    assert (blip2.type, blip2.source) == ("hf", "Salesforce/blip2-opt-2.7b")


def test_resolve_hub_ids_folders_open_clip_tags_and_weights():
    hf = models.resolve("hf:/models/my-blip", "captioner")
    assert (hf.type, hf.source, hf.model_id) == ("hf", "/models/my-blip", "hf:/models/my-blip")
    oc = models.resolve("open_clip:ViT-B-16/laion2b_s34b_b88k", "scorer")
    assert (oc.source, oc.pretrained) == ("ViT-B-16", "laion2b_s34b_b88k")
    ckpt = models.resolve("open_clip:ViT-B-32//ckpt/epoch_5.pt", "scorer")
    assert (ckpt.source, ckpt.pretrained) == ("ViT-B-32", "/ckpt/epoch_5.pt")
    local = models.resolve("open_clip:local-dir:/m/clip", "scorer")
    assert (local.source, local.pretrained) == ("local-dir:/m/clip", None)
    moved = models.resolve("vit-l-14", "scorer", weights="/w/vit-l-14.pt")
    assert moved.pretrained == "/w/vit-l-14.pt" and "/w/vit-l-14.pt" in moved.model_id
    trained = models.resolve("tiny-blip2", "captioner", weights="/runs/blip2-ft")
    assert (trained.type, trained.source) == ("hf", "/runs/blip2-ft")


@pytest.mark.parametrize("name,role,fragment", [
    ("nope", "captioner", "unknown captioner 'nope'"),
    ("hf:x/y", "scorer", "transformers models are captioners"),
    ("open_clip:ViT-B-32/openai", "captioner", "CoCa"),
    ("tiny-clip", "captioner", "unknown captioner"),
])
def test_unknown_or_misplaced_models_are_config_errors(name, role, fragment):
    with pytest.raises(ConfigError, match=fragment):
        models.resolve(name, role)


# -- per-row sampling -------------------------------------------------------------------------

def test_row_seed_is_sha256_of_seed_uid_sample():
    expected = int.from_bytes(hashlib.sha256(b"7:abc:2").digest()[:8], "big") >> 1
    assert captioning.row_seed(7, "abc", 2) == expected
    assert 0 <= expected < 2 ** 63
    assert captioning.row_seed(7, "abc", 1) != expected != captioning.row_seed(8, "abc", 2)


def _sampler(uniform: float, **kw):
    import torch

    s = captioning.RowSampler([0], captioning.Sampling(**kw), eos_ids=[0], device="cpu")
    s.uniforms = torch.full_like(s.uniforms, uniform)
    return s


@pytest.mark.parametrize("u,k,expected", [
    # probabilities 0.5, 0.3, 0.2 (tokens 1, 2, 3): the CDF is 0.5, 0.8, 1.0
    (0.10, 3, 1), (0.49, 3, 1), (0.51, 3, 2), (0.79, 3, 2), (0.81, 3, 3),
    # top-2 renormalises to 0.625, 0.375
    (0.60, 2, 1), (0.63, 2, 2), (0.99, 2, 2),
    (0.99, 1, 1),
])
def test_sampler_inverts_the_top_k_cdf(u, k, expected):
    import torch

    logits = torch.tensor([[-30.0, math.log(0.5), math.log(0.3), math.log(0.2)]])
    token = _sampler(u, top_k=k, temperature=1.0, min_length=0, max_length=4)(logits)
    assert token.tolist() == [expected]


def test_sampler_temperature_sharpens_and_end_token_waits_for_min_length():
    import torch

    logits = torch.tensor([[math.log(0.6), math.log(0.4), -50.0, -50.0]])
    # T=0.5 squares the odds: 0.36/0.52 = 0.692 for the end token (id 0) after min_length.
    s = _sampler(0.68, top_k=4, temperature=0.5, min_length=2, max_length=4)
    assert [s(logits).item() for _ in range(3)] == [1, 1, 0]
    assert _sampler(0.70, top_k=4, temperature=0.5, min_length=0, max_length=4)(
        logits).item() == 1


# -- tiny models ------------------------------------------------------------------------------

def _images(n: int):
    from PIL import Image

    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (28 + i, 30, 3), dtype=np.uint8))
            for i in range(n)]


@pytest.fixture(scope="module", params=["tiny-coca", "tiny-blip2"])
def captioner(request):
    return models.load_captioner(models.resolve(request.param, "captioner"))


def test_captions_do_not_depend_on_batching_and_seed_reproduces(captioner):
    images, uids = _images(5), [f"u{i}" for i in range(5)]
    sampling = captioning.Sampling(max_length=12)
    together = captioning.caption_rows(captioner, images, uids, 2, 11, sampling)
    alone = [r for i in range(5) for r in captioning.caption_rows(
        captioner, images[i:i + 1], uids[i:i + 1], 2, 11, sampling)]
    assert together == alone
    assert [(u, s) for u, s, _, _ in together] == [(u, s) for u in uids for s in (0, 1)]
    assert all(seed == captioning.row_seed(11, u, s) for u, s, seed, _ in together)
    other_seed = captioning.caption_rows(captioner, images, uids, 2, 12, sampling)
    assert sum(a[3] != b[3] for a, b in zip(together, other_seed)) >= 8
    hotter = captioning.caption_rows(captioner, images, uids, 2, 11,
                                     captioning.Sampling(max_length=12, temperature=5.0, top_k=500))
    assert sum(a[3] != b[3] for a, b in zip(together, hotter)) >= 8
    assert len({t for _, _, _, t in together}) == 10  # samples of one image differ


def test_caption_lengths_follow_min_and_max(captioner):
    images, uids = _images(4), [f"u{i}" for i in range(4)]
    captioning.caption_rows(captioner, images, uids, 2, 0,
                            captioning.Sampling(min_length=7, max_length=7))
    assert captioner.last_lengths == [7] * 8
    captioning.caption_rows(captioner, images, uids, 2, 0,
                            captioning.Sampling(min_length=0, max_length=3))
    assert max(captioner.last_lengths) <= 3


def test_tiny_models_are_identical_in_every_process():
    """Random-init weights are seeded: a caption may not depend on the worker that made it."""
    import torch

    a = models.load_captioner(models.resolve("tiny-coca", "captioner"))
    torch.manual_seed(1234)  # the global RNG state must not leak into the build
    b = models.load_captioner(models.resolve("tiny-coca", "captioner"))
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), name
    assert float(a.model.text_decoder.text_projection.detach().abs().sum()) > 0


def test_scorer_embeddings_are_unit_vectors_and_cosine_is_their_dot():
    scorer = models.load_scorer(models.resolve("tiny-clip", "scorer"))
    img = scorer.embed_images(_images(3))
    txt = scorer.embed_texts(["a red shoe", "", "a photo of a bag " * 30])  # long: truncated
    assert img.shape == (3, 64) and txt.shape == (3, 64) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    from capmix.scoring import clip_s, cosine

    np.testing.assert_allclose(cosine(img, txt), [float(np.dot(a, b)) for a, b in zip(img, txt)],
                               atol=1e-7)
    assert clip_s(0.3) == pytest.approx(0.75) and clip_s(-0.2) == 0.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core machine two threads that
    wait on each other cost more than the model does."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
