"""Config sections of `capmix run`: the whole pipeline from one file, and the embedded default's
miniature of the paper (Fashion-MNIST, models capmix trains itself).

Kept apart from capmix/config.py only for size; `Config.run` is validated with everything else,
once, before any I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from capmix.errors import check as _check

# Stage order of `capmix run`; `run.stages` may name a subset (in any order: they run in this one).
STAGES = ("prepare", "pretrain", "ingest", "caption", "score", "cluster", "mix", "stats",
          "export", "train", "eval", "report")


@dataclass(frozen=True)
class PretrainConfig:
    """A model the run trains itself on the curated split before the pipeline, as BLIP-2 and
    OpenAI CLIP were trained on curated data before the paper used them."""

    model: str = "demo-clip"  # registry name: a CLIP scorer (clip objective)
    samples: int = 48_000     # samples seen
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 50

    def validate(self, key: str) -> None:
        _check(bool(self.model.strip()), f"{key}.model", "must not be empty")
        _check(self.samples > 0, f"{key}.samples", "must be positive")
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        _check(self.lr > 0, f"{key}.lr", "must be positive")
        _check(self.warmup >= 0, f"{key}.warmup", "must be >= 0")


@dataclass(frozen=True)
class CaptionerPretrainConfig(PretrainConfig):
    """The captioner: a CoCa architecture (coca objective). Its own defaults, so that setting
    one key (`run.demo.captioner.samples=...`) keeps the others."""

    model: str = "demo-coca"
    samples: int = 32_000


@dataclass(frozen=True)
class DemoConfig:
    """The miniature: a web-like pool, a curated split and evaluation sets from Fashion-MNIST."""

    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"
    # Disjoint draws from the 60,000 training photos: the web pool and the curated split.
    pool_size: int = 8_000
    curated_size: int = 8_000
    # Share of the pool's raw captions that describe their image; the rest is Figure-1 noise.
    descriptive_share: float = 0.3
    # Zero-shot classification: test photos (all 10,000 of the test split by default, so a
    # 2-SE difference is ~0.013). Retrieval: captioned photos held out of the training split
    # (disjoint from pool and curated), ranked within galleries of `retrieval_gallery` images.
    classification_size: int = 10_000
    retrieval_size: int = 5_000
    retrieval_gallery: int = 100
    # Curated images the cluster filter keeps clusters near (the paper: ImageNet-1k train).
    reference_size: int = 500
    shard_size: int = 1_000
    seed: int = 0
    captioner: CaptionerPretrainConfig = field(default_factory=CaptionerPretrainConfig)
    scorer: PretrainConfig = field(default_factory=PretrainConfig)

    def validate(self, key: str) -> None:
        for name in ("pool_size", "curated_size", "classification_size", "retrieval_size",
                     "reference_size", "shard_size"):
            _check(getattr(self, name) > 0, f"{key}.{name}", "must be positive")
        _check(self.pool_size + self.curated_size + self.retrieval_size <= 60_000,
               f"{key}.retrieval_size", "pool_size + curated_size + retrieval_size must be "
               "<= 60000 (Fashion-MNIST's training photos)")
        _check(self.classification_size <= 10_000, f"{key}.classification_size",
               "must be <= 10000 (Fashion-MNIST's test photos)")
        _check(self.retrieval_gallery >= 2, f"{key}.retrieval_gallery", "must be >= 2")
        _check(self.reference_size <= self.curated_size, f"{key}.reference_size",
               "must be <= curated_size")
        _check(0 <= self.descriptive_share <= 1, f"{key}.descriptive_share",
               "must be in [0, 1]")


@dataclass(frozen=True)
class RunConfig:
    """`capmix run`: every stage in order, skipping what is already complete."""

    # Shards, exports, trained models, checkpoints and stage markers go here.
    workdir: str = "runs"
    report_dir: str = "report"
    # The Fashion-MNIST miniature; None: a real pool (ingest.inputs) with the configured models
    # and the evaluation sets below.
    demo: Optional[DemoConfig] = None
    stages: list[str] = field(default_factory=list)  # empty: all
    # One train set, one CLIP and one evaluation per strategy (sql/), top `percent`%.
    strategies: list[str] = field(default_factory=lambda: [
        "raw", "raw_top", "synthetic", "synthetic_top", "raw_top_plus_synthetic",
        "raw_top_plus_synthetic_filtered"])
    percent: float = 30.0
    # Strategies also run intersected with the image-cluster filter (name suffix `_ic`).
    intersect_clusters: list[str] = field(default_factory=list)
    nproc: int = 1  # training ranks per strategy
    # Trainings per model, seeds train.seed + 0..N-1: the report gives mean ± SD over seeds and
    # compares seed-paired means, with a standard error that holds training noise too.
    seeds: int = 1
    # CLIPS beside the CLIPs: one CLIPS (train.clips as configured) on `clips_on`'s train set,
    # i.e. its images with their raw captions and the captioner's synthetic ones, and with
    # `clips_full` a second one whose text encoder sees the full synthetic caption (the CLIPS
    # paper's fragment ablation). Same model, hyper-parameters and budget as every CLIP.
    clips: bool = True
    clips_full: bool = True
    clips_on: str = "synthetic"
    # Where each model reads its images: pool (`capmix train --train-set`: the pool's own
    # files, nothing copied; the default) or export (a Petastorm copy per train set first).
    train_from: Literal["export", "pool"] = "pool"
    # Samples seen by each strategy's CLIP, the same for all (the paper: the pool size, which
    # is what None gives unless train.samples is set). A miniature needs a few epochs.
    train_samples: Optional[int] = None
    # Evaluation data (an export/parquet dataset, image folder or table:NAME); the demo builds
    # its own. None: that task is not run.
    classification: Optional[str] = None
    retrieval: Optional[str] = None

    def validate(self, key: str) -> None:
        _check(bool(self.workdir.strip()), f"{key}.workdir", "must not be empty")
        for i, stage in enumerate(self.stages):
            _check(stage in STAGES, f"{key}.stages[{i}]",
                   f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        _check(bool(self.strategies), f"{key}.strategies", "must name at least one strategy")
        known = strategy_names()
        for list_key in ("strategies", "intersect_clusters"):
            for i, name in enumerate(getattr(self, list_key)):
                _check(name in known, f"{key}.{list_key}[{i}]",
                       f"unknown strategy {name!r}; strategies: {', '.join(known)}")
        _check(0 < self.percent <= 100, f"{key}.percent", "must be in (0, 100]")
        _check(self.nproc > 0, f"{key}.nproc", "must be positive")
        _check(self.seeds > 0, f"{key}.seeds", "must be positive")
        _check(not self.clips or self.clips_on in self.strategies, f"{key}.clips_on",
               f"{self.clips_on!r} is not among run.strategies (CLIPS trains on that train "
               "set); add it there or set run.clips=false")
        _check(self.train_samples is None or self.train_samples > 0, f"{key}.train_samples",
               "must be positive")

    def wants(self, stage: str) -> bool:
        return not self.stages or stage in self.stages


def strategy_names() -> list[str]:
    """The mixing strategies: one sql/<name>.sql each (jobs/mix.py runs them)."""
    from capmix.resources import resource_dir

    return sorted(p.stem for p in resource_dir("sql").glob("*.sql") if p.stem != "mix_thresholds")
