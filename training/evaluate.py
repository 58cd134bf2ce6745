"""Zero-shot evaluation of a trained checkpoint: classification (top-1/top-5 against a text
classifier built from class names x prompt templates, as open_clip and clip_benchmark do) and
image-text retrieval (Recall@1/5/10 both ways, and the mean of the two R@1 the paper reports).

Pure torch + pandas; the data arrive as an iterator of pandas frames with encoded image bytes,
from an export / parquet file, an image folder (training/eval_job.py adds lake tables).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from capmix.errors import InputError

if TYPE_CHECKING:
    import pandas as pd
    import torch

# Class names and prompts for tasks that need them (ImageNet's come from open_clip).
FASHION_MNIST = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                 "sneaker", "bag", "ankle boot"]
SIMPLE_TEMPLATES = ["a photo of a {c}."]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class LoadedModel:
    clip: Any
    tokenizer: Any
    size: int
    mean: tuple
    std: tuple
    arch: str
    checkpoint: str  # the file, or random:ARCH
    step: Optional[int] = None
    samples_seen: Optional[int] = None
    run_name: Optional[str] = None


def load_model(checkpoint: str, device: str = "cpu") -> LoadedModel:
    """A training checkpoint (file or output folder), or `random:ARCH` (random weights: the
    chance-level baseline)."""
    from capmix.models import create_open_clip
    from training import checkpoint as ckpt
    from training.data import get_tokenizer
    from training.model import check_arch, preprocess_of, resolve_arch

    if checkpoint.startswith("random:"):
        arch = resolve_arch(checkpoint[len("random:"):])
        check_arch(arch)
        clip = create_open_clip(arch)[0]
        pre = preprocess_of(clip)
        return LoadedModel(clip.to(device).eval(), get_tokenizer(arch), pre.size, pre.mean,
                           pre.std, arch, checkpoint)
    path = ckpt.resolve(checkpoint)
    state = ckpt.load(path)
    arch = state["arch"]
    from capmix.weights import quiet_random_init

    with quiet_random_init():  # built only to receive the checkpoint's weights
        clip = create_open_clip(arch)[0]
    clip.load_state_dict(state["model"])
    pre = state["preprocess"]
    return LoadedModel(clip.to(device).eval(), get_tokenizer(arch), int(pre["size"]),
                       tuple(pre["mean"]), tuple(pre["std"]), arch, str(path),
                       int(state["step"]), int(state["samples_seen"]), state.get("run_name"))


# --------------------------------------------------------------------------------------------
# Class names and templates


def templates_for(spec: str) -> list[str]:
    """openai | simple | a file of templates | one literal template; '{}' or '{c}' marks the
    class name."""
    if spec == "openai":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]
    if spec == "simple":
        return list(SIMPLE_TEMPLATES)
    if os.path.isfile(spec):
        lines = [ln.strip() for ln in Path(spec).read_text(encoding="utf-8").splitlines()]
        found = [ln.replace("{}", "{c}") for ln in lines if ln]
    else:
        found = [spec.replace("{}", "{c}")]
    if not found or any("{c}" not in t for t in found):
        raise InputError(f"templates {spec!r}: each template needs {{}} or {{c}} for the class")
    return found


def classnames_for(spec: Optional[str], labels: Sequence[Any]) -> list[str]:
    """imagenet | fashion-mnist | a file | a comma-separated list | None: sorted labels."""
    if spec is None:
        names = sorted({str(v) for v in labels})
        if not names:
            raise InputError("no labels to take class names from (give --classnames)")
        return names
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if spec == "fashion-mnist":
        return list(FASHION_MNIST)
    if os.path.isfile(spec):
        return [ln.strip() for ln in Path(spec).read_text(encoding="utf-8").splitlines()
                if ln.strip()]
    return [s.strip() for s in spec.split(",") if s.strip()]


# --------------------------------------------------------------------------------------------
# Metrics (pure)


def topk_accuracy(logits: "torch.Tensor", targets: "torch.Tensor",
                  ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows whose target is among the k highest logits (k capped at the classes)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets.view(-1, 1))
    return {f"top{k}": float(hits[:, :min(k, kmax)].any(dim=1).float().mean()) for k in ks}


def retrieval_recall(image_emb: "torch.Tensor", text_emb: "torch.Tensor",
                     text_image: "torch.Tensor", ks: Sequence[int] = (1, 5, 10)
                     ) -> dict[str, float]:
    """Recall@k both ways. `text_image[t]` is the image text t describes; an image is found
    (image->text) when any of its texts ranks in the top k, a text (text->image) when its image
    does."""
    import torch

    scores = text_emb @ image_emb.T  # [texts, images]
    out: dict[str, float] = {}
    for k in ks:
        kt = min(k, scores.shape[1])
        t2i = scores.topk(kt, dim=1).indices.eq(text_image.view(-1, 1)).any(dim=1)
        ki = min(k, scores.shape[0])
        top_texts = scores.T.topk(ki, dim=1).indices  # [images, k]
        i2t = (text_image[top_texts] == torch.arange(scores.shape[1]).view(-1, 1)).any(dim=1)
        out[f"image_to_text_R@{k}"] = float(i2t.float().mean())
        out[f"text_to_image_R@{k}"] = float(t2i.float().mean())
    if 1 in ks:
        out["mean_R@1"] = (out["image_to_text_R@1"] + out["text_to_image_R@1"]) / 2
    return out


# --------------------------------------------------------------------------------------------
# Encoding


def encode_images(model: LoadedModel, images: Sequence[bytes], device: str) -> "torch.Tensor":
    import torch

    from training.data import load_image
    from training.model import Preprocess, normalize

    pixels = torch.from_numpy(np.stack([load_image(b, model.size) for b in images]))
    x = normalize(pixels.to(device), Preprocess(model.size, model.mean, model.std))
    with torch.no_grad():
        return model.clip.encode_image(x, normalize=True).float().cpu()


def encode_texts(model: LoadedModel, texts: Sequence[str], device: str,
                 batch: int = 256) -> "torch.Tensor":
    import torch

    parts = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            tokens = model.tokenizer(list(texts[i:i + batch])).to(device)
            parts.append(model.clip.encode_text(tokens, normalize=True).float().cpu())
    return torch.cat(parts)


def text_classifier(model: LoadedModel, classnames: Sequence[str], templates: Sequence[str],
                    device: str) -> "torch.Tensor":
    """[dim, classes]: the normalised mean of each class's prompt embeddings."""
    import torch.nn.functional as F

    prompts = [t.format(c=c) for c in classnames for t in templates]
    emb = encode_texts(model, prompts, device).view(len(classnames), len(templates), -1)
    return F.normalize(F.normalize(emb, dim=-1).mean(dim=1), dim=-1).T.contiguous()


def classify(model: LoadedModel, frames: Iterable["pd.DataFrame"], classnames: Sequence[str],
             templates: Sequence[str], device: str, image_col: str = "image",
             label_col: str = "label") -> dict[str, float]:
    """Zero-shot top-1 / top-5 over every row; labels are class names or class indices."""
    import torch

    classifier = text_classifier(model, classnames, templates, device)
    index = {name: i for i, name in enumerate(classnames)}
    logits, targets = [], []
    for df in frames:
        logits.append(encode_images(model, list(df[image_col]), device) @ classifier)
        targets += [_label_index(v, index, len(classnames)) for v in df[label_col]]
    if not targets:
        raise InputError("the evaluation data has no rows")
    metrics = topk_accuracy(torch.cat(logits), torch.tensor(targets))
    return {**metrics, "n": float(len(targets)), "classes": float(len(classnames))}


def _label_index(value: Any, index: dict[str, int], classes: int) -> int:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < classes:
            return int(value)
        raise InputError(f"label {value} is out of range for {classes} classes")
    if str(value) in index:
        return index[str(value)]
    raise InputError(f"label {value!r} is not among the class names "
                     f"({', '.join(list(index)[:8])}{', ...' if len(index) > 8 else ''})")


def gallery_recall(image_emb: "torch.Tensor", text_emb: "torch.Tensor",
                   text_image: "torch.Tensor", gallery: Optional[int],
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways within consecutive galleries of `gallery` images (None: one gallery
    of all), each direction averaged over all of its queries; plus `chance_R@k`, the rate a
    random ranking gets text->image (k / gallery for full galleries)."""
    n = image_emb.shape[0]
    size = gallery or n
    sums: dict[str, float] = {}
    chance = {k: 0.0 for k in ks}
    for lo in range(0, n, size):
        hi = min(lo + size, n)
        mine = ((text_image >= lo) & (text_image < hi)).nonzero().flatten()
        if len(mine) == 0:
            continue
        part = retrieval_recall(image_emb[lo:hi], text_emb[mine], text_image[mine] - lo, ks)
        for key, value in part.items():
            if key.startswith("image_to_text"):
                sums[key] = sums.get(key, 0.0) + value * (hi - lo)
            elif key.startswith("text_to_image"):
                sums[key] = sums.get(key, 0.0) + value * len(mine)
        for k in ks:
            chance[k] += len(mine) * min(k, hi - lo) / (hi - lo)
    texts = len(text_image)
    out = {key: value / (n if key.startswith("image_to_text") else texts)
           for key, value in sums.items()}
    for k in ks:
        out[f"mean_R@{k}"] = (out[f"image_to_text_R@{k}"] + out[f"text_to_image_R@{k}"]) / 2
        out[f"chance_R@{k}"] = chance[k] / texts
    out["gallery"] = float(min(size, n))
    return out


def retrieve(model: LoadedModel, frames: Iterable["pd.DataFrame"], device: str,
             image_col: str = "image", text_col: str = "text",
             gallery: Optional[int] = None) -> dict[str, float]:
    """Retrieval over image-caption rows; rows sharing a `uid` are one image with several
    captions (as an export of a train set holding raw and synthetic captions). `gallery`:
    see `gallery_recall`."""
    import torch

    image_of: dict[Any, int] = {}
    image_parts, texts, text_image = [], [], []
    for df in frames:
        keys = list(df["uid"]) if "uid" in df.columns else [None] * len(df)
        new = []
        for key, img, text in zip(keys, df[image_col], df[text_col]):
            slot = ("row", len(text_image)) if key is None else key
            if slot not in image_of:
                image_of[slot] = len(image_of)
                new.append(img)
            texts.append(text or "")
            text_image.append(image_of[slot])
        if new:
            image_parts.append(encode_images(model, new, device))
    if not texts:
        raise InputError("the evaluation data has no rows")
    metrics = gallery_recall(torch.cat(image_parts), encode_texts(model, texts, device),
                             torch.tensor(text_image), gallery)
    return {**metrics, "images": float(len(image_of)), "texts": float(len(texts))}


# --------------------------------------------------------------------------------------------
# Data sources (lake tables: see eval_job.py)


def parquet_frames(path: str, columns: Sequence[str], batch_rows: int,
                   limit: Optional[int] = None) -> Iterator["pd.DataFrame"]:
    """Batches of an export / parquet dataset, reading only `columns`."""
    import pyarrow.dataset as ds

    from training.data import dataset_url

    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(dataset_url(path))
    data = ds.dataset(root, filesystem=filesystem, format="parquet",
                      exclude_invalid_files=True, ignore_prefixes=["_", "."])
    present = [c for c in columns if c in data.schema.names]
    seen = 0
    for batch in data.to_batches(columns=present, batch_size=batch_rows):
        df = batch.to_pandas()
        if limit is not None:
            df = df.head(limit - seen)
        seen += len(df)
        if len(df):
            yield df
        if limit is not None and seen >= limit:
            return


def folder_frames(root: str, batch_rows: int, limit: Optional[int] = None
                  ) -> tuple[list[str], Iterator["pd.DataFrame"]]:
    """An image folder, one sub-folder per class (torchvision's ImageFolder layout): the class
    names (sorted folder names) and batches of (image, label)."""
    import pandas as pd

    classes = sorted(d.name for d in Path(root).iterdir() if d.is_dir())
    files = [(p, c) for c in classes for p in sorted((Path(root) / c).rglob("*"))
             if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise InputError(f"{root}: no images in class sub-folders")
    files = files[:limit] if limit else files

    def frames() -> Iterator[pd.DataFrame]:
        for i in range(0, len(files), batch_rows):
            part = files[i:i + batch_rows]
            yield pd.DataFrame({"image": [p.read_bytes() for p, _ in part],
                                "label": [c for _, c in part]})

    return classes, frames()


def is_image_folder(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and not any(p.rglob("*.parquet")) and any(d.is_dir() for d in p.iterdir())
