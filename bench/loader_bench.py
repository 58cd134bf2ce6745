"""Does the loader keep one core's decode rate, and does training from the pool keep up?

Measured side by side in one run, on one dataset (JPEGs of 384x384 synthetic scenes in the
export's layout, ~37 KB each, to a 224-px crop for ViT-B/32): (1) the decode limit: `load_image`
in a plain loop on one core; (2) the trainer's loader (training.data.batches: petastorm reads,
W decode workers) for W = 1 and 2, and its share of W x the limit; (3) samples/s from the pool's
own Delta files filtered to a 30% train set (`capmix train --train-set`) vs from an export of
that train set, and the image bytes each path writes before training; (4) trainer consumption
(one training step on in-memory batches) for tiny-clip and ViT-B/32 on CPU. Each loader figure
is the median of `--repeats` rounds, the rows of a round run back to back. With `--gpu`: JPEG
decode on the GPU (nvJPEG through torchvision.io.decode_jpeg) and ViT-B/32 training in bf16
(the anchor: ~770 samples/s per A100 for open_clip ViT-B/32). The last line printed is the
loader's share for W = 1.

    python -m bench.loader_bench [--images 1024] [--batch 32] [--repeats 3] [--gpu] [--no-write]
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


def loader_rate(source, arch: str, size: int, context: int, batch: int, pool: str,
                workers: int, batches: int) -> float:
    """Samples/s of the trainer's loader over `source` (an ExportInfo or a training.sources
    Source), in steady state (start-up is not throughput)."""
    from training.data import LoaderOptions, SampleSpec
    from training.data import batches as stream

    spec = SampleSpec(arch=arch, image_size=size, context_length=context)
    opts = LoaderOptions(batch_size=batch, workers=workers, pool=pool, shuffle_buffer=batch * 2)
    with stream(source, spec, opts) as it:
        # Warm-up: the first batch waits for start-up (spawned decoders, the first row group),
        # while the reader queues `prefetch` more that decode in the meantime; timing from the
        # first batch would count those as free. Steady state starts after prefetch + 1.
        for _ in range(1 + it.ready.maxsize):
            next(it)
        started = time.perf_counter()
        for _ in range(batches):
            next(it)
        return batches * batch / (time.perf_counter() - started)


def make_pool(export: Path, lake: Path, percent: float) -> tuple[int, int]:
    """The same images as a Delta `pool` (as ingest writes it: uid, text, status, image, ...,
    one data file per export file) and a train set `bench` of `percent`% of its uids, written
    with delta-rs; then an export of that train set in jobs/export.py's layout. Returns
    (train set rows, image bytes the export wrote)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    rng = np.random.default_rng(1)
    chosen: list[str] = []
    texts: list[str] = []
    out_rows: list[pa.Table] = []
    for f in sorted(export.glob("*.parquet")):
        t = pq.read_table(f)
        n = t.num_rows
        pool = pa.table({"uid": t["uid"], "text": t["text"], "status": pa.array(["ok"] * n),
                         "width": pa.array([384] * n, pa.int32()), "image": t["image"]})
        write_deltalake(str(lake / "pool"), pool, mode="append")
        keep = rng.random(n) < percent / 100
        chosen += [u for u, k in zip(t["uid"].to_pylist(), keep) if k]
        texts += [x for x, k in zip(t["text"].to_pylist(), keep) if k]
        out_rows.append(t.filter(pa.array(keep)))
    sets = pa.table({"name": ["bench"] * len(chosen), "uid": chosen,
                     "source": ["raw"] * len(chosen), "text": texts,
                     "similarity": pa.array([0.3] * len(chosen), pa.float64())})
    write_deltalake(str(lake / "train_sets"), sets)
    written = 0
    dest = lake.parent / "export_30"
    dest.mkdir()
    for i, t in enumerate(out_rows):
        path = dest / f"part-{i:05d}.parquet"
        pq.write_table(t, path, row_group_size=64)
        written += path.stat().st_size
    return len(chosen), written


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


def parallel_decode_rate(data: Path, size: int, threads: int, images: int = 256) -> float:
    """Images/s of the same plain loop in `threads` threads at once: what W cores give right
    now on this machine (on a shared machine, less than W x the one-core limit)."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from training.data import load_image

    blobs = [b for f in sorted(data.glob("*.parquet"))
             for b in pq.read_table(f, columns=["image"]).column(0).to_pylist()][:images]

    def loop(part: list) -> None:
        rng = np.random.default_rng(0)
        for blob in part:
            load_image(blob, size, rng)

    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        list(pool.map(loop, [blobs[i::threads] for i in range(threads)]))
        return len(blobs) / (time.perf_counter() - started)


def gpu_decode_rate(data: Path, size: int, batch: int = 64, rounds: int = 5) -> float:
    """Images/s of nvJPEG decode (torchvision.io.decode_jpeg on cuda, a batch per call) plus
    the same random-resized-crop box on the GPU: the option when CPU cores cannot keep up."""
    import pyarrow.parquet as pq
    import torch
    import torchvision
    from torchvision.transforms.v2 import functional as TF

    from training.data import crop_box

    blobs = [b for f in sorted(data.glob("*.parquet"))
             for b in pq.read_table(f, columns=["image"]).column(0).to_pylist()][:batch]
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    rng = np.random.default_rng(0)
    times = []
    for r in range(rounds + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        images = torchvision.io.decode_jpeg(encoded, device="cuda")
        out = []
        for img in images:
            left, top, right, bottom = crop_box(img.shape[2], img.shape[1], rng)
            out.append(TF.resized_crop(img, top, left, bottom - top, right - left,
                                       [size, size], antialias=True))
        torch.stack(out)
        torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t)
    return batch / median(times)


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
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the loader rows")
    parser.add_argument("--percent", type=float, default=30.0, help="train set share of pool")
    parser.add_argument("--steps", type=int, default=3,
                        help="timed CPU training steps (ViT-B/32 on CPU: 1)")
    parser.add_argument("--no-trainer", action="store_true", help="skip the trainer rows")
    parser.add_argument("--gpu", action="store_true",
                        help="also nvJPEG decode and ViT-B/32 training on one GPU (bf16)")
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # petastorm's pyarrow deprecations
    import warnings

    warnings.simplefilter("ignore", FutureWarning)
    from capmix.models import register_model_configs
    from training.data import read_export
    from training.sources import pool_source

    register_model_configs()
    load_before = os.getloadavg()[0]
    vit = ("ViT-B-32", 224, 77)
    with tempfile.TemporaryDirectory(prefix="capmix-loader-bench-") as tmp:
        export = Path(tmp) / "export"
        kb = make_dataset(export, args.images)
        train_rows, export_bytes = make_pool(export, Path(tmp) / "lake", args.percent)
        info = read_export(str(export))
        pool = pool_source(str(Path(tmp) / "lake"), {}, "bench", "clip")
        filtered = read_export(str(Path(tmp) / "export_30"))
        rounds: dict[str, list[float]] = {}
        for r in range(args.repeats):
            # One round: every row back to back, so load on the machine hits them alike.
            rounds.setdefault("limit", []).append(decode_rate(export, 224))
            rounds.setdefault("limit2", []).append(parallel_decode_rate(export, 224, 2))
            for w in (1, 2):
                rounds.setdefault(f"w{w}", []).append(
                    loader_rate(info, *vit, args.batch, "thread", w, args.batches))
            # The same W=2 with spawned decode processes (train.reader_pool=process): no GIL
            # shared between the decoders and the reading/tokenising thread.
            rounds.setdefault("w2p", []).append(
                loader_rate(info, *vit, args.batch, "process", 2, args.batches))
            rounds.setdefault("pool", []).append(
                loader_rate(pool, *vit, args.batch, "thread", 1, args.batches))
            rounds.setdefault("export30", []).append(
                loader_rate(filtered, *vit, args.batch, "thread", 1, args.batches))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rounds.items()),
                  flush=True)
        med = {k: median(v) for k, v in rounds.items()}
        gpu_decode = gpu_decode_rate(export, 224) if args.gpu else None
    limit = med["limit"]
    share = {w: med[f"w{w}"] / (w * limit) for w in (1, 2)}
    trainer: list[tuple[str, float]] = []
    if not args.no_trainer:
        for label, model in (("tiny-clip", "tiny-clip"), ("ViT-B/32", "ViT-B-32")):
            rate = trainer_rate(model, args.batch, args.steps if model == "tiny-clip" else 1)
            trainer.append((f"trainer step, {label}, CPU fp32, 1 process", rate))
    gpu_line = ("GPU rows: pending (no GPU was lent for this run; `python -m "
                "bench.loader_bench --gpu` on a GPU machine measures nvJPEG decode and ViT-B/32 "
                "training)")
    if args.gpu:
        rate = trainer_rate("ViT-B-32", args.gpu_batch, 10, device="cuda", bf16=True)
        trainer.append((f"trainer step, ViT-B/32, GPU bf16, batch {args.gpu_batch}", rate))
        trainer.append(("nvJPEG decode + crop to 224 px on the GPU, batch 64", gpu_decode))
        gpu_line = (f"GPU: ViT-B/32 trains at {rate:,.0f} samples/s (bf16); nvJPEG decodes "
                    f"{gpu_decode:,.0f} images/s")
    lines = [f"decode + crop to 224 px, one core, plain loop (the limit): {limit:,.0f} images/s"]
    lines += [f"loader, W={w}: {med[f'w{w}']:,.0f} samples/s = {share[w]:.2f} x {w} x limit"
              for w in (1, 2)]
    lines.append(f"loader, W=2 processes: {med['w2p']:,.0f} samples/s = "
                 f"{med['w2p'] / (2 * limit):.2f} x 2 x limit")
    lines.append(f"plain loop in 2 threads: {med['limit2']:,.0f} images/s; loader W=2 keeps "
                 f"{med['w2'] / med['limit2']:.2f} of it")
    pool_ratio = med["pool"] / med["export30"]
    lines.append(f"{args.percent:.0f}% train set, W=1: pool {med['pool']:,.0f} samples/s, "
                 f"export {med['export30']:,.0f} samples/s, pool/export {pool_ratio:.2f}; "
                 f"image bytes written before training: pool 0, export "
                 f"{export_bytes / 2**20:,.1f} MB")
    lines += [f"{name}: {rate:,.1f} samples/s" for name, rate in trainer]
    for line in lines:
        print(line)
    body = [f"## Loader vs decode limit, pool vs export (`bench/loader_bench.py`)", "",
            f"{args.images} JPEGs of 384x384 ({kb:.0f} KB mean) in the export layout, to a "
            f"224-px random-resized crop and 77 tokens (ViT-B/32's input); batch {args.batch}; "
            f"medians of {args.repeats} rounds, each round's rows back to back. Limit = "
            "`load_image` in a plain loop on one core; loader = `training.data.batches` "
            "(petastorm reads in-process, W decode threads fill the batch, captions tokenised "
            "per slice), in steady state (after prefetch + 1 warm-up batches). Pool = "
            "`--train-set` over the pool's Delta files "
            f"(8 files, {args.images:,} images, {train_rows:,} in the train set: "
            f"{args.percent:.0f}%); export = the same train set exported. Load average "
            f"{load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"({os.cpu_count()} cores; the benchmark itself loads it).", "",
            "| path | samples/s | share of W x limit |", "| --- | ---: | ---: |",
            f"| decode + crop, one core, plain loop (limit) | {limit:,.1f} | |"]
    body += [f"| loader, W={w} thread worker(s) | {med[f'w{w}']:,.1f} | **{share[w]:.2f}** |"
             for w in (1, 2)]
    body += [f"| loader, W=2 decode processes (`train.reader_pool=process`) | "
             f"{med['w2p']:,.1f} | **{med['w2p'] / (2 * limit):.2f}** |",
             f"| plain loop in 2 threads (what 2 cores give now) | {med['limit2']:,.1f} | "
             f"{med['limit2'] / (2 * limit):.2f} |"]
    body += [f"| pool path, {args.percent:.0f}% train set, W=1 | {med['pool']:,.1f} | |",
             f"| export of that train set, W=1 | {med['export30']:,.1f} | |"]
    body += [f"| {name} | {rate:,.1f} | |" for name, rate in trainer]
    body += ["", f"- Loader W=2 / plain loop in 2 threads: **{med['w2'] / med['limit2']:.2f}**: "
             "the loader against two threads of the bare loop measured in the same round, i.e. "
             "its own overhead at W=2"
             + (" (>= 1: none visible)." if med["w2"] >= med["limit2"] else ".")
             + (" Two threads of the bare loop did not reach 2 x the one-core rate either "
                f"({med['limit2'] / limit:.2f} x): the cores were not both free."
                if med["limit2"] < 1.8 * limit else ""),
             f"- Pool / export samples/s: **{pool_ratio:.2f}**; image bytes written before "
             f"training: pool path none, export {export_bytes / 2**20:,.1f} MB "
             f"({export_bytes / max(train_rows, 1) / 1024:.0f} KB per sample).",
             f"- Before this loader (petastorm thread workers + TransformSpec), the same "
             "comparison gave 37 samples/s for W=1 against a 456/s limit: a share of 0.08.",
             f"- {gpu_line}. A GPU rank needs ~770-2,500 samples/s (A100-H100, ViT-B/32): at "
             f"the limit above, about {770 / limit:.0f}-{2500 / limit:.0f} decode workers "
             "(cores) per GPU, or nvJPEG."]
    if not args.no_write:
        print(f"wrote {write_section('loader', chr(10).join(body))}")
    print(f"loader share of W x decode limit, W=1: {share[1]:.2f}")


if __name__ == "__main__":
    main()
