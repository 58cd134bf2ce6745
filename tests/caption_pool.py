"""A small pool for the caption and score tests, written straight into the lake with the pool
contract (capmix.tables.POOL): Fashion-MNIST photos when Debian's dataset-fashion-mnist is
installed (PIL-drawn pictures otherwise), a few rows in error and a NULL raw caption."""
from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")


def images(n: int) -> list[bytes]:
    """n PNG images, as a web pool would hold them (RGB, some with EXIF-free greyscale)."""
    from PIL import Image, ImageDraw

    out = []
    if (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        from pipeline.demo.fashion import load, png_bytes

        _, test = load(FASHION)
        return [png_bytes(test.images[i]) for i in range(n)]
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (40 + i % 7, 32 + i % 5), tuple(int(v) for v in rng.integers(0, 255, 3)))
        ImageDraw.Draw(img).ellipse((4, 4, 20 + i % 9, 24), fill=(255 - i * 7 % 255, 20, 90))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def pool_rows(n_ok: int = 20, n_error: int = 3) -> list[dict]:
    """Rows for `pool`: n_ok good images (one with a NULL raw caption) and n_error broken ones."""
    now = dt.datetime(2024, 1, 1)
    rows = []
    for i, blob in enumerate(images(n_ok)):
        rows.append(dict(uid=f"ok{i:03d}", key=f"{i:09d}", url=f"http://x/{i}.png",
                         text=None if i == 3 else f"a photo number {i}", image=blob, width=28,
                         height=28, format="PNG", sha256=hashlib.sha256(blob).hexdigest(),
                         status="ok", error=None, warnings=None, meta=None, source="test",
                         ingested_at=now))
    for j in range(n_error):
        blob = b"not an image %d" % j
        rows.append(dict(uid=f"bad{j:03d}", key=f"b{j:08d}", url=None, text=f"broken {j}",
                         image=blob, width=None, height=None, format=None,
                         sha256=hashlib.sha256(blob).hexdigest(), status="error",
                         error="not an image: unknown or unsupported format", warnings=None,
                         meta=None, source="test", ingested_at=now))
    return rows


def write_pool(spark, lake, n_ok: int = 20, n_error: int = 3, files: int = 3) -> list[dict]:
    """Append the pool in one commit of `files` data files (so chunks span several files)."""
    from pyspark.sql import functions as F

    from capmix.tables import POOL

    rows = pool_rows(n_ok, n_error)
    for i, row in enumerate(rows):
        row["__file"] = i % files
    df = spark.createDataFrame(rows, schema=POOL.schema().add("__file", "integer"))
    lake.append("pool", POOL.conform(df.repartitionByRange(files, F.col("__file"))))
    return rows
