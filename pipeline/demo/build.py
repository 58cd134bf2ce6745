"""The embedded default's data, built from Fashion-MNIST (`capmix run`, stage `prepare`).

- a web-like pool as img2dataset shards (`shards/`), ingested like any web pool: raw captions
  where `descriptive_share` describe the photo and the rest is Figure-1 noise;
- a curated split with descriptive captions (`curated/`, export layout) on which the run trains
  its own captioner and scorer, as BLIP-2 and OpenAI CLIP were trained on curated data;
- evaluation sets: zero-shot classification on the test photos (`eval/classification`, label
  = class index) and retrieval on captioned training photos that no model trains on
  (`eval/retrieval`);
- reference images for the image-cluster filter (`reference/`, curated photos: the miniature's
  ImageNet).

Everything is seeded: one config always builds the same files. The splits are disjoint draws.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from capmix.config_run import DemoConfig
from pipeline.demo import fashion
from pipeline.demo.shards import Sample, write_shards

MARKER = "_prepared.json"


@dataclass(frozen=True)
class DemoData:
    root: Path

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def curated(self) -> Path:
        return self.root / "curated"

    @property
    def classification(self) -> Path:
        return self.root / "eval" / "classification"

    @property
    def retrieval(self) -> Path:
        return self.root / "eval" / "retrieval"

    @property
    def reference(self) -> Path:
        return self.root / "reference"

    def shard_paths(self) -> list[str]:
        return sorted(str(p) for p in self.shards.glob("*.tar"))


def prepared(root: str | Path, cfg: DemoConfig) -> bool:
    """True when `root` holds the data of exactly this demo config."""
    marker = Path(root) / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == asdict(cfg)


def prepare(root: str | Path, cfg: DemoConfig) -> DemoData:
    """Build (or rebuild, when the config changed) every demo file under `root`."""
    data = DemoData(Path(root))
    if prepared(root, cfg):
        return data
    if (data.root / MARKER).is_file():
        # The lake and the trained models were made from the old data: rebuilding it under
        # them would mix two pools. Say so rather than delete a lake.
        from capmix.errors import InputError

        raise InputError(f"{data.root} holds demo data built with other run.demo settings; "
                         "remove the run folder and the lake (or set a new run.workdir and "
                         "lake.path) to build the miniature anew")
    if data.root.exists():  # a build that was interrupted: nothing was made from it yet
        shutil.rmtree(data.root)
    train, test = fashion.load(cfg.fashion_mnist_dir)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train.labels))
    pool_idx = order[: cfg.pool_size]
    curated_idx = order[cfg.pool_size: cfg.pool_size + cfg.curated_size]
    test_order = rng.permutation(len(test.labels))
    cls_idx = test_order[: cfg.classification_size]
    # Retrieval photos come from the training split, after pool and curated: held out of all
    # training, and the test split stays whole for classification.
    ret_lo = cfg.pool_size + cfg.curated_size
    ret_idx = order[ret_lo: ret_lo + cfg.retrieval_size]

    _write_pool(data.shards, _subset(train, pool_idx), pool_idx, cfg)
    curated = _subset(train, curated_idx)
    _write_parquet(data.curated, {
        "uid": [f"fmnist-train-{i}" for i in curated_idx], "source": ["curated"] * len(curated_idx),
        "text": fashion.clean_captions(curated, cfg.seed + 1), "raw_text": None,
        "similarity": None, "image": [fashion.png_bytes(im) for im in curated.images]}, files=8)
    classification = _subset(test, cls_idx)
    _write_parquet(data.classification, {
        "uid": [f"fmnist-test-{i}" for i in cls_idx],
        "image": [fashion.png_bytes(im) for im in classification.images],
        "label": classification.labels.astype(np.int64)}, files=1)
    retrieval = _subset(train, ret_idx)
    _write_parquet(data.retrieval, {
        "uid": [f"fmnist-train-{i}" for i in ret_idx],
        "image": [fashion.png_bytes(im) for im in retrieval.images],
        "text": fashion.clean_captions(retrieval, cfg.seed + 2)}, files=1)
    data.reference.mkdir(parents=True)
    for i, image in zip(curated_idx[: cfg.reference_size], curated.images[: cfg.reference_size]):
        (data.reference / f"fmnist-train-{i}.png").write_bytes(fashion.png_bytes(image))
    (data.root / MARKER).write_text(json.dumps(asdict(cfg), indent=1))
    return data


def _subset(split: fashion.Split, index: np.ndarray) -> fashion.Split:
    return fashion.Split(split.images[index], split.labels[index])


def _write_pool(out: Path, split: fashion.Split, index: np.ndarray, cfg: DemoConfig) -> None:
    captions, kinds = fashion.web_captions(split, cfg.descriptive_share, cfg.seed)
    samples = (Sample(uid=f"fmnist-train-{i}", image=fashion.png_bytes(image), text=text,
                      url=f"https://shop.example/img/{i}.png", width=28, height=28,
                      meta={"label": int(label), "caption_kind": kind})
               for i, image, label, text, kind in zip(index, split.images, split.labels,
                                                      captions, kinds))
    write_shards(out, samples, cfg.shard_size)


def _write_parquet(out: Path, columns: dict, files: int) -> None:
    """A parquet dataset in `files` files (a trainer rank needs a row group of its own)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(columns["uid"])
    table = pa.table({k: (v if v is not None else pa.nulls(n, pa.string() if k != "similarity"
                                                              else pa.float64()))
                      for k, v in columns.items()})
    out.mkdir(parents=True)
    step = -(-n // files)
    for f, start in enumerate(range(0, n, step)):
        pq.write_table(table.slice(start, step), out / f"part-{f:05d}.parquet")
