"""UDF efficiency: images/s through the Spark jobs (caption, score) divided by images/s of a
plain batch loop over the same model, the same images and the same batch size, in one run.

    python -m bench.udf_efficiency                 # CPU, tiny-coca + tiny-clip (the default)
    python -m bench.udf_efficiency --gpu           # one GPU: BLIP-2 OPT-2.7B + ViT-L/14 at real
                                                   # size, random weights, fixed caption length

The Spark side is the whole job (`jobs.caption.run` / `jobs.score.run` on a fresh lake: plan,
read, shuffle, UDF, Delta commit); "UDF only" is the bare pandas UDF over the pool written to
Spark's noop sink, to tell UDF overhead from job overhead. Both sides decode the PNG/JPEG bytes,
run the model's own transform and the same batch function (udfs.caption / udfs.clip), with one
task slot and the same torch threads, so the ratio measures what Spark adds. Captions have a
fixed length (min = max), so every image costs the same compute. Measurements alternate loop
and Spark and the medians are reported; the last line printed is the captioning job ratio.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import machine, median, write_section


def make_pool_rows(n: int, gpu: bool) -> list[dict]:
    """n images as a web pool holds them: 28x28 Fashion-MNIST PNGs on CPU, 256x256 JPEGs for the
    GPU run (decode and resize then cost what real photos cost)."""
    import datetime as dt

    from PIL import Image

    blobs = []
    if not gpu and Path("/usr/share/datasets/fashion-mnist").exists():
        from pipeline.demo.fashion import load, png_bytes

        train, _ = load()
        blobs = [png_bytes(train.images[i % len(train.images)]) for i in range(n)]
    else:
        rng = np.random.default_rng(0)
        for _ in range(n):
            arr = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=90)
            blobs.append(buf.getvalue())
    now = dt.datetime(2024, 1, 1)
    return [dict(uid=f"b{i:06d}", key=str(i), url=None, text=f"a photo of item {i}", image=b,
                 width=None, height=None, format=None, sha256=None, status="ok", error=None,
                 warnings=None, meta=None, source="bench", ingested_at=now)
            for i, b in enumerate(blobs)]


def config(lake: str, args: argparse.Namespace):
    from capmix.config import from_dict

    device = "cuda" if args.gpu else "cpu"
    return from_dict({
        "spark": {"master": "local[1]", "shuffle_partitions": 1, "driver_memory": "4g",
                  "arrow_batch_rows": args.arrow_rows},
        "lake": {"path": lake},
        "caption": {"captioner": args.captioner, "samples": 1, "min_length": args.tokens,
                    "max_length": args.tokens, "batch_size": args.caption_batch,
                    "chunk_rows": max(args.images, args.score_images), "device": device,
                    "threads": args.threads},
        "score": {"scorer": args.scorer, "batch_size": args.score_batch,
                  "chunk_rows": 10 * args.score_images, "device": device,
                  "threads": args.threads},
    })


def write_pool(spark, cfg, rows) -> None:
    from capmix.lake import open_lake
    from capmix.tables import POOL

    df = spark.createDataFrame(rows, schema=POOL.schema()).repartition(4)
    open_lake(spark, cfg.lake).append("pool", POOL.conform(df))


def loop_rate(stage: str, spark, cfg, rows, batch: int) -> float:
    """images/s of a plain loop: batches of the pool's rows through the same batch function."""
    import pandas as pd

    frames = [pd.DataFrame({"uid": [r["uid"] for r in rows[i:i + batch]],
                            "image": [r["image"] for r in rows[i:i + batch]],
                            "text": [r["text"] for r in rows[i:i + batch]]})
              for i in range(0, len(rows), batch)]
    if stage == "caption":
        import jobs.caption
        from udfs import caption

        task = jobs.caption.task_for(spark, cfg.caption)
        model = caption.load(task)
        _sync(task.device)
        started = time.perf_counter()
        for f in frames:
            caption.caption_batch(model, task, f)
    else:
        import jobs.score
        from udfs import clip

        task = jobs.score.task_for(spark, cfg)
        model = clip.load(task)
        _sync(task.device)
        frames = [f.assign(stored_embedding=None,
                           texts=[[{"source": "raw", "text": t}] for t in f["text"]])
                  for f in frames]
        started = time.perf_counter()
        for f in frames:
            clip.score_batch(model, task, f)
    _sync(task.device)
    return len(rows) / (time.perf_counter() - started)


def _sync(device: str) -> None:
    if device != "cpu":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()


def job_rate(stage: str, spark, args, rows, work: Path) -> float:
    """images/s of the whole Spark job on a fresh lake holding only the pool."""
    import jobs.caption
    import jobs.score

    lake = tempfile.mkdtemp(dir=work)
    cfg = config(lake, args)
    write_pool(spark, cfg, rows)
    started = time.perf_counter()
    (jobs.caption if stage == "caption" else jobs.score).run(spark, cfg)
    seconds = time.perf_counter() - started
    shutil.rmtree(lake, ignore_errors=True)
    return len(rows) / seconds


def udf_rate(stage: str, spark, cfg, pool) -> float:
    """images/s of the bare pandas UDF over the cached pool, into Spark's noop sink."""
    import jobs.caption
    import jobs.score
    from udfs.caption import caption_frame

    if stage == "caption":
        out = caption_frame(pool, jobs.caption.task_for(spark, cfg.caption))
    else:  # as the job and the loop: image embedding + the raw caption's similarity
        from pyspark.sql import functions as F

        from udfs.clip import score_frame

        out = score_frame(pool.select(
            "uid", "image", F.lit(None).cast("array<float>").alias("stored_embedding"),
            F.array(F.struct(F.lit("raw").alias("source"), "text")).alias("texts")),
            jobs.score.task_for(spark, cfg))
    started = time.perf_counter()
    out.write.format("noop").mode("overwrite").save()
    return pool.count() / (time.perf_counter() - started)


def run(args: argparse.Namespace) -> dict:
    from capmix.cli import setup_logging
    from capmix.spark import get_or_create

    setup_logging()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="capmix-bench-udf-"))
    rows = make_pool_rows(max(args.images, args.score_images), args.gpu)
    cfg = config(str(work / "warm"), args)
    spark, _ = get_or_create(cfg.spark)
    results = {}
    try:
        for stage in args.stages:
            n = args.images if stage == "caption" else args.score_images
            stage_rows = rows[:n]
            pool = (spark.createDataFrame([(r["uid"], r["image"], r["text"]) for r in stage_rows],
                                          "uid STRING, image BINARY, text STRING")
                    .repartition(1).cache())
            pool.count()
            batch = args.caption_batch if stage == "caption" else args.score_batch
            # Warm-up: Python worker start, imports, model build (paid once per worker) and the
            # first calls, on both sides.
            job_rate(stage, spark, args, stage_rows[: 2 * batch], work)
            loop_rate(stage, spark, cfg, stage_rows[: 2 * batch], batch)
            loops, jobs_, smalls, udfs_ = [], [], [], []
            small = stage_rows[: n // 4]
            for _ in range(args.repeats):
                loops.append(loop_rate(stage, spark, cfg, stage_rows, batch))
                jobs_.append(job_rate(stage, spark, args, stage_rows, work))
                smalls.append(job_rate(stage, spark, args, small, work))
                udfs_.append(udf_rate(stage, spark, cfg, pool))
            big_s, small_s = n / median(jobs_), len(small) / median(smalls)
            marginal = (n - len(small)) / max(1e-9, big_s - small_s)
            results[stage] = {"loop": median(loops), "job": median(jobs_), "udf": median(udfs_),
                              "marginal": marginal, "fixed_s": big_s - n / marginal,
                              "all": (loops, jobs_, smalls, udfs_), "batch": batch, "n": n}
            pool.unpersist()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def report(args: argparse.Namespace, results: dict) -> str:
    models = {"caption": args.captioner, "score": args.scorer}
    lines = [
        "## UDF efficiency: Spark job vs plain batch loop (`bench/udf_efficiency.py`)",
        "",
        f"{'256x256 JPEG' if args.gpu else '28x28 Fashion-MNIST PNG'} images, "
        f"{'GPU' if args.gpu else 'CPU'}, Spark `local[1]` (one task slot) vs one process, "
        f"torch threads {args.threads}, caption length fixed at {args.tokens} tokens, 1 sample; "
        f"score = image embedding + raw-caption similarity. Median of {args.repeats}. The job "
        "is the whole `run` on a fresh lake (planning query, pool read, shuffle to the task "
        "slots, UDF, dedupe, Delta commit); *UDF only* is the bare pandas UDF into Spark's "
        "noop sink; *marginal* is the job's extra images/s between a run on N/4 and on N "
        "images, i.e. the per-image cost without the per-run fixed cost.",
        "",
        "| stage | model | images N | batch | loop img/s | job img/s | job / loop "
        "| UDF only / loop | marginal job / loop | fixed cost per run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, r in results.items():
        lines.append(f"| {stage} | {models[stage]} | {r['n']} | {r['batch']} | {r['loop']:.1f} "
                     f"| {r['job']:.1f} | **{r['job'] / r['loop']:.2f}** | "
                     f"{r['udf'] / r['loop']:.2f} | {r['marginal'] / r['loop']:.2f} | "
                     f"{r['fixed_s']:.1f} s |")
    load = os.getloadavg()[0]
    lines += ["", f"Load average at the end: {load:.1f} ({os.cpu_count()} cores, shared "
                  "machine)."]
    if not args.gpu:
        lines += ["", "GPU figures (BLIP-2 OPT-2.7B and CLIP ViT-L/14 at real size, random "
                      "weights, `--gpu`; the paper: 75 captions/s and 490 scores/s on one "
                      "A100) are pending: no GPU was lent to this task."]
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", action="store_true", help="real-size models on the GPU")
    p.add_argument("--images", type=int, help="images for the caption stage")
    p.add_argument("--score-images", type=int, help="images for the score stage")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", nargs="+", default=["caption", "score"],
                   choices=["caption", "score"])
    p.add_argument("--tokens", type=int, default=40, help="fixed caption length")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.gpu:
        args.captioner, args.scorer = "random-blip2-opt-2.7b", "random-vit-l-14"
        args.images = args.images or 2048
        args.score_images = args.score_images or 16384
        args.caption_batch, args.score_batch, args.arrow_rows = 64, 256, 512
    else:
        args.captioner, args.scorer = "tiny-coca", "tiny-clip"
        args.images = args.images or 1024
        args.score_images = args.score_images or 16384
        args.caption_batch, args.score_batch, args.arrow_rows = 16, 64, 256
    return args


def main(argv=None) -> int:
    args = parse(argv)
    results = run(args)
    text = report(args, results)
    print(text)
    if not args.no_write:
        write_section("udf_efficiency", text)
    first = results.get("caption") or next(iter(results.values()))
    print(f"{first['job'] / first['loop']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
