"""The report's noise rule and its retrieval galleries, on hand-made numbers: the expected
values are worked out here by hand, not by the code under test."""
from __future__ import annotations

import math

import pytest


def test_one_seed_uses_the_binomial_term_alone():
    from pipeline.report import paired_verdict

    # a=0.70, b=0.60, n=1000: SE = sqrt((0.21 + 0.24) / 1000) = 0.021213; d = 0.10 > 2 SE.
    verdict, d, se = paired_verdict([0.70], [0.60], 1000)
    assert verdict == "reproduced"
    assert d == pytest.approx(0.10) and se == pytest.approx(0.0212132, abs=1e-6)
    # d = 0.03 < 2 SE (0.0424): within noise either way round.
    assert paired_verdict([0.63], [0.60], 1000)[0] == "within noise"
    assert paired_verdict([0.60], [0.63], 1000)[0] == "within noise"
    assert paired_verdict([0.50], [0.60], 1000)[0] == "not reproduced"


def test_seed_noise_widens_the_error_when_runs_disagree():
    from pipeline.report import paired_verdict

    # Paired differences 0.10, 0.00, 0.05: mean 0.05, SD 0.05, SE 0.05 / sqrt(3) = 0.028868.
    # The binomial floor at n=10000 is sqrt((0.6*0.4 + 0.55*0.45) / 10000) / sqrt(3) = 0.00403.
    verdict, d, se = paired_verdict([0.65, 0.55, 0.60], [0.55, 0.55, 0.55], 10_000)
    assert d == pytest.approx(0.05) and se == pytest.approx(0.0288675, abs=1e-6)
    assert verdict == "within noise"  # 0.05 < 2 x 0.0289
    # The same means with seeds that agree: d 0.05 on every seed, SD 0, the floor applies.
    verdict, d, se = paired_verdict([0.60, 0.60, 0.60], [0.55, 0.55, 0.55], 10_000)
    floor = math.sqrt((0.6 * 0.4 + 0.55 * 0.45) / 10_000) / math.sqrt(3)
    assert se == pytest.approx(floor) and verdict == "reproduced"


def test_at_least_as_good_fails_only_when_clearly_worse():
    from pipeline.report import paired_verdict

    # n=1000, a=b=0.5: SE = sqrt(0.5 / 1000) = 0.02236, 2 SE = 0.0447.
    assert paired_verdict([0.48], [0.50], 1000, "at_least")[0] == "reproduced"
    assert paired_verdict([0.52], [0.50], 1000, "at_least")[0] == "reproduced"
    assert paired_verdict([0.40], [0.50], 1000, "at_least")[0] == "not reproduced"


def test_missing_values_are_not_measured_and_sd_needs_two():
    from pipeline.report import mean_sd, paired_verdict

    assert paired_verdict([math.nan], [0.5], 100)[0] == "not measured"
    assert mean_sd([0.2, 0.4]) == pytest.approx((0.3, math.sqrt(0.02)))
    m, sd = mean_sd([0.2])
    assert m == 0.2 and math.isnan(sd)


def test_galleries_rank_within_their_own_images():
    import torch

    from training.evaluate import gallery_recall

    # Four images in galleries of two. Text t describes image t. Text 1 is closest to image 2,
    # which sits in the other gallery: within its own gallery (images 0, 1) it ranks image 1
    # first. Text 3 prefers image 2 within its gallery (images 2, 3).
    images = torch.eye(4)
    texts = torch.tensor([[1.0, 0, 0, 0], [0, 0.4, 0.9, 0], [0, 0, 1.0, 0], [0, 0, 0.8, 0.3]])
    out = gallery_recall(images, texts, torch.arange(4), gallery=2, ks=(1,))
    assert out["text_to_image_R@1"] == 0.75  # texts 0, 1, 2 right; 3 wrong
    # Image 3's best text in its gallery (texts 2, 3) is text 3 (0.3 vs 0): found.
    assert out["image_to_text_R@1"] == 1.0
    assert out["chance_R@1"] == 0.5 and out["gallery"] == 2.0
    whole = gallery_recall(images, texts, torch.arange(4), gallery=None, ks=(1,))
    assert whole["text_to_image_R@1"] == 0.5 and whole["chance_R@1"] == 0.25
