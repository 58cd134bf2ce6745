"""A learnable toy image-text set for the export / train / eval tests.

Each class is a colour: an image is a noisy field of that colour with a grey blob somewhere, and
its captions name the colour. A tiny CLIP learns to match the two within a few dozen steps, so a
trained model classifies far above chance and a random one does not.
"""
from __future__ import annotations

import io

import numpy as np

COLOURS = {
    "red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220),
    "yellow": (235, 225, 30), "purple": (140, 30, 170), "cyan": (30, 210, 215),
}
TEMPLATES = ("a photo of a {}.", "a {} picture.", "something {}.", "an image that is {}.")
SYNTHETIC = ("The image shows a {c} background. A grey shape sits on it! It is mostly {c}.")


def image_bytes(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 40,
                fmt: str = "PNG") -> bytes:
    from PIL import Image

    pixels = np.clip(np.array(colour, dtype=np.float32)
                     + rng.normal(0, 18, (size, size, 3)), 0, 255)
    top, left = rng.integers(0, size - 12, 2)
    pixels[top:top + 12, left:left + 12] = 128
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def toy_rows(per_class: int, seed: int = 0, classes: int = len(COLOURS)) -> list[dict]:
    """uid, label, text (raw caption), synthetic (long caption), image bytes."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, (name, rgb) in enumerate(list(COLOURS.items())[:classes]):
        for i in range(per_class):
            rows.append({
                "uid": f"{seed}-{name}-{i:04d}", "label": name,
                "text": TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(name),
                "synthetic": SYNTHETIC.format(c=name),
                "image": image_bytes(rgb, rng, fmt="PNG" if i % 2 else "JPEG"),
            })
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def write_parquet(path, rows: list[dict], files: int = 4, clips: bool = False,
                  pool_rows: int | None = None) -> None:
    """An export-shaped parquet dataset (as jobs/export.py writes it) without Spark;
    `pool_rows` goes to the export metadata (the trainer's default budget)."""
    import json
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(path, exist_ok=True)
    for f in range(files):
        part = rows[f::files]
        cols = {"uid": [r["uid"] for r in part], "source": ["raw"] * len(part),
                "text": [r["text"] for r in part], "raw_text": [r["text"] for r in part]}
        if clips:
            cols["synthetic_text"] = [r["synthetic"] for r in part]
        cols["label"] = [r["label"] for r in part]
        cols["image"] = pa.array([r["image"] for r in part], type=pa.binary())
        pq.write_table(pa.table(cols), os.path.join(path, f"part-{f:05d}.parquet"))
    if pool_rows is not None:
        with open(os.path.join(path, "_capmix_export.json"), "w") as fh:
            json.dump({"pool_rows": pool_rows, "rows": len(rows), "clips": clips}, fh)


def write_lake(spark, lake, rows: list[dict], captioner: str = "toycap",
               broken: tuple[str, ...] = (), extra_train: tuple[tuple, ...] = ()) -> None:
    """pool, captions and two train sets (raw captions; synthetic captions) in a lake, one
    commit per table; `broken` uids enter the pool as undecodable images, `extra_train` rows
    (name, uid, source, text, similarity) join the train sets."""
    from capmix.tables import CAPTIONS, POOL, TRAIN_SETS
    from pyspark.sql import functions as F

    pool = spark.createDataFrame(
        [(r["uid"], r["uid"], None, r["text"], r["image"], 40, 40, "png", None, "ok", None,
          None, None, "toy", None) for r in rows]
        + [(u, u, None, "a broken image", b"nope", None, None, None, None, "error",
            "not an image", None, None, "toy", None) for u in broken],
        POOL.schema())
    lake.append("pool", POOL.conform(pool))
    caps = spark.createDataFrame([(r["uid"], r["synthetic"]) for r in rows], "uid STRING, text STRING")
    caps = (caps.withColumn("captioner", F.lit(captioner)).withColumn("sample", F.lit(0))
            .withColumn("model", F.lit("toy")).withColumn("prompt", F.lit(None))
            .withColumn("temperature", F.lit(0.75)).withColumn("top_k", F.lit(50))
            .withColumn("min_length", F.lit(5)).withColumn("max_length", F.lit(40))
            .withColumn("seed", F.lit(0)).withColumn("created_at", F.current_timestamp()))
    lake.append("captions", CAPTIONS.conform(caps))
    raw = spark.createDataFrame([("toy_raw", r["uid"], "raw", r["text"], 0.3) for r in rows],
                                TRAIN_SETS.schema())
    syn = spark.createDataFrame(
        [("toy_syn", r["uid"], f"{captioner}:0", r["synthetic"], 0.3) for r in rows],
        TRAIN_SETS.schema())
    extra = spark.createDataFrame(list(extra_train), TRAIN_SETS.schema())
    lake.append("train_sets", TRAIN_SETS.conform(raw.unionByName(syn).unionByName(extra)))
