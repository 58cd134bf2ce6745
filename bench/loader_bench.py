"""Does the Petastorm loader keep the trainer fed?

Measures, at one batch size, (1) loader throughput: samples/s decoded, augmented and tokenised
by the Petastorm path the trainer uses (training.data.batches: make_batch_reader + TransformSpec
in loader workers + BatchedDataLoader), for thread and process worker pools; and (2) trainer
consumption: samples/s of the training step alone (forward, loss, backward, AdamW) on
in-memory batches, for tiny-clip (32 px) and ViT-B/32 (224 px) on this machine's CPU. With
`--gpu`, also ViT-B/32 training samples/s on one GPU in bf16 (the anchor: ~770 samples/s per
A100 for open_clip ViT-B/32).

The dataset is written here with pyarrow in the export's layout: JPEGs of 384x384 synthetic
scenes (smooth colour fields + shapes, ~25 KB each, the size class of DataComp's images).

    python -m bench.loader_bench [--images 1024] [--batch 64] [--gpu] [--no-write]
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import median, write_section


def make_dataset(root: Path, images: int, side: int = 384, files: int = 8) -> float:
    """An export-shaped parquet dataset; returns the mean JPEG size in KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    sizes = []
    for f in range(files):
        uids, texts, blobs = [], [], []
        for i in range(f, images, files):
            base = rng.integers(0, 255, (6, 6, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((side, side), Image.Resampling.BICUBIC)
            draw = ImageDraw.Draw(img)
            for _ in range(4):
                x, y = rng.integers(0, side - 60, 2)
                draw.ellipse([x, y, x + rng.integers(20, 120), y + rng.integers(20, 120)],
                             fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
            noise = rng.normal(0, 6, (side, side, 3))
            img = Image.fromarray(np.clip(np.asarray(img) + noise, 0, 255).astype(np.uint8))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            blobs.append(buf.getvalue())
            sizes.append(len(blobs[-1]))
            uids.append(f"u{i}")
            texts.append(f"a photo of scene number {i} with some shapes and colours")
        pq.write_table(pa.table({"uid": uids, "source": ["raw"] * len(uids), "text": texts,
                                 "raw_text": texts, "image": pa.array(blobs, pa.binary())}),
                       root / f"part-{f:05d}.parquet", row_group_size=64)
    return float(np.mean(sizes)) / 1024


def loader_rate(data: Path, arch: str, size: int, context: int, batch: int, pool: str,
                workers: int, batches: int) -> float:
    from training.data import LoaderOptions, SampleSpec
    from training.data import batches as stream
    from training.data import read_export

    spec = SampleSpec(arch=arch, image_size=size, context_length=context)
    opts = LoaderOptions(batch_size=batch, workers=workers, pool=pool, shuffle_buffer=batch * 2)
    it = stream(read_export(str(data)), spec, opts)
    try:
        next(it)  # start-up (worker spawn, first row groups) is not throughput
        started = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - started)
    finally:
        it.close()


def decode_rate(data: Path, size: int, images: int = 256) -> float:
    """Images/s of decode + random-resized-crop alone, one core, no petastorm: the per-core
    cost that sizes the loader workers of a GPU rank."""
    import pyarrow.parquet as pq

    from training.data import load_image

    blobs = [b for f in sorted(data.glob("*.parquet"))
             for b in pq.read_table(f, columns=["image"]).column(0).to_pylist()][:images]
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for blob in blobs:
        load_image(blob, size, rng)
    return len(blobs) / (time.perf_counter() - started)


def trainer_rate(model: str, batch: int, steps: int, device: str = "cpu",
                 bf16: bool = False) -> float:
    """Samples/s of the training step alone, on random in-memory batches."""
    import torch
    from open_clip.loss import ClipLoss

    from capmix.config import TrainConfig
    from training.model import build, train_module
    from training.train import param_groups

    clip, _, pre, context = build(TrainConfig(model=model))
    module = train_module(clip, None, pre).to(device)
    opt = torch.optim.AdamW(param_groups(module), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)
    loss_fn = ClipLoss()
    data = {"image": torch.randint(0, 255, (batch, 3, pre.size, pre.size), dtype=torch.uint8,
                                   device=device),
            "text": torch.randint(1, 49000, (batch, context), device=device)}
    times = []
    for step in range(steps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            out = module(data)
            loss = loss_fn(out["image"], out["text"], out["logit_scale"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 1:  # the warm-up step (allocator, autotuning) is excluded
            times.append(time.perf_counter() - t)
    return batch / median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed CPU training steps (ViT-B/32 on CPU: 1)")
    parser.add_argument("--gpu", action="store_true", help="also ViT-B/32 on one GPU (bf16)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # petastorm's pyarrow deprecations
    import warnings

    warnings.simplefilter("ignore", FutureWarning)
    from capmix.models import register_model_configs

    register_model_configs()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="capmix-loader-bench-") as tmp:
        kb = make_dataset(Path(tmp) / "export", args.images)
        rate = decode_rate(Path(tmp) / "export", 224)
        rows.append(("decode + crop to 224 px, one core, no loader", rate))
        print(f"{rows[-1][0]}: {rate:,.0f} images/s", flush=True)
        for label, arch, size in (("ViT-B/32 input (224 px)", "ViT-B-32", 224),
                                  ("tiny-clip input (32 px)", "capmix-tiny-clip", 32)):
            for pool, workers in (("thread", 2), ("process", 2)):
                rate = loader_rate(Path(tmp) / "export", arch, size, 77 if size == 224 else 32,
                                   args.batch, pool, workers, args.batches)
                rows.append((f"loader, {label}, {pool} pool x{workers}", rate))
                print(f"{rows[-1][0]}: {rate:,.0f} samples/s", flush=True)
    for label, model in (("tiny-clip", "tiny-clip"), ("ViT-B/32", "ViT-B-32")):
        rate = trainer_rate(model, args.batch, args.steps if model == "tiny-clip" else 1)
        rows.append((f"trainer step, {label}, CPU fp32, 1 process", rate))
        print(f"{rows[-1][0]}: {rate:,.1f} samples/s", flush=True)
    gpu_line = ("ViT-B/32 training on one GPU: pending (no GPU was lent for this run; "
                "`python -m bench.loader_bench --gpu` on a GPU machine measures it)")
    if args.gpu:
        rate = trainer_rate("ViT-B-32", args.gpu_batch, 10, device="cuda", bf16=True)
        rows.append((f"trainer step, ViT-B/32, GPU bf16, batch {args.gpu_batch}", rate))
        gpu_line = f"ViT-B/32 training on one GPU (bf16): {rate:,.0f} samples/s"
        print(gpu_line)
    body = [f"## Loader vs trainer (`bench/loader_bench.py`)", "",
            f"{args.images} JPEGs of 384x384 ({kb:.0f} KB mean) in the export layout; batch "
            f"{args.batch}; loader = decode + random-resized-crop + tokenise in petastorm "
            "workers (uint8 out); trainer = one training step on in-memory batches. Load "
            f"average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"({os.cpu_count()} cores; other work on the machine slows every row alike).", "",
            "| path | samples/s |", "| --- | ---: |"]
    body += [f"| {name} | {rate:,.1f} |" for name, rate in rows]
    body += ["", gpu_line + ". The anchor is ~770 samples/s per A100 for open_clip ViT-B/32: "
             "on a GPU node the loader of each rank must match that: at the one-core decode "
             "rate above, about 770 / rate cores (process-pool workers) per GPU."]
    if not args.no_write:
        print(f"wrote {write_section('loader', chr(10).join(body))}")


if __name__ == "__main__":
    main()
