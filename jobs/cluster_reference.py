"""The cluster filter's reference set (ImageNet-1k train in DataComp and the paper), from one of:

- a folder or URI of images, embedded by the clustered scorer (`jobs.score.embed_images`);
- a table (lake, else Spark/catalog) with an `embedding` column, or an `image` column to embed;
- precomputed embeddings: a .npy matrix (read on the driver, searched there), or parquet (a file
  or folder) with an `embedding` column (read by Spark, searched on the executors).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import Lake

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")

IMAGE_SUFFIXES = r"(?i)\.(jpe?g|png|webp|bmp|gif|tiff?)$"


@dataclass
class Reference:
    """Exactly one of `frame` (DataFrame[uid, embedding]) or `array` (rows x dim), and where it
    came from, for messages. `cached`: the frame holds embedded images, persisted until
    `release()`."""

    source: str
    frame: Optional["DataFrame"] = None
    array: Optional[np.ndarray] = None
    cached: bool = False

    def release(self) -> None:
        """Drop the persisted embeddings, if any; safe to call more than once."""
        if self.cached and self.frame is not None:
            self.frame.unpersist()
            self.cached = False


def path_exists(path: str, folder: bool = False) -> bool:
    """Whether a reference path (local, or an object-store URI through capmix.storage) exists."""
    from capmix import storage

    return storage.isdir(path) if folder else storage.exists(path)


def read_image_folder(spark: "SparkSession", folder: str) -> "DataFrame":
    """Every image file under `folder` (recursively) as DataFrame[uid = path, image bytes]."""
    from pyspark.sql import functions as F

    from capmix.storage import spark_path

    return (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
            .load(spark_path(folder))
            .where(F.col("path").rlike(IMAGE_SUFFIXES))
            .selectExpr("path AS uid", "content AS image"))


def reference_set(spark: "SparkSession", cfg: Config, lake: Lake, scorer: str) -> Reference:
    """The configured reference set, embedded by `scorer` when it is images. Embedded images are
    persisted: the caller reads them twice (`size_of`, then the keep rule) and must `release()`
    them."""
    c = cfg.cluster
    if c.reference_embeddings:
        return _embeddings_file(spark, c.reference_embeddings)
    if c.reference_images:
        if not path_exists(c.reference_images, folder=True):
            raise InputError(f"reference image folder not found: {c.reference_images}")
        images = read_image_folder(spark, c.reference_images)
        source = f"folder {c.reference_images}"
    elif c.reference_table:
        table = (lake.read(c.reference_table) if lake.exists(c.reference_table)
                 else _spark_table(spark, c.reference_table))
        source = f"table {c.reference_table}"
        table = _with_uid(table)
        if "embedding" in table.columns:
            from pyspark.sql import functions as F

            if "scorer" in table.columns:
                table = table.where(F.col("scorer") == scorer)
            return Reference(source, frame=table.select("uid", "embedding"))
        if "image" not in table.columns:
            raise InputError(f"reference table {c.reference_table} needs an `embedding` or an "
                             f"`image` column (it has {', '.join(table.columns)})")
        images = table.select("uid", "image")
    else:
        raise InputError("give a reference set: --reference-images DIR, --reference-table "
                         "TABLE or --reference-embeddings FILE")
    if images.limit(1).count() == 0:
        raise InputError(f"the reference set is empty: no images in {source}")
    from pyspark import StorageLevel

    # Embedding is the costly part (ImageNet-1k: 1.28M images through the scorer) and the set is
    # read twice, so it is computed once and kept on the executors. Not collected to the driver:
    # ImageNet-1k's embeddings (about 4 GB at 768 dims) are over a driver's default result size.
    frame = _embed(spark, cfg, images, scorer, source).persist(StorageLevel.MEMORY_AND_DISK)
    return Reference(source, frame=frame, cached=True)


def _embed(spark: "SparkSession", cfg: Config, images: "DataFrame", scorer: str,
           source: str) -> "DataFrame":
    from capmix.models import resolve
    from jobs.score import embed_images

    resolve(scorer, "scorer", cfg.score.weights, key="cluster.scorer")  # on the driver, first
    scored = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, scorer=scorer))
    log.info("[cluster] embedding the reference images of %s with %s", source, scorer)
    return embed_images(spark, scored, images)


def _embeddings_file(spark: "SparkSession", path: str) -> Reference:
    if not path_exists(path):
        raise InputError(f"reference embeddings not found: {path}")
    if path.lower().endswith(".npy"):
        from capmix.storage import open_input

        try:
            with open_input(path) as fh:
                array = np.load(fh, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"reference embeddings {path}: not a .npy matrix ({exc})") from None
        if array.ndim != 2:
            raise InputError(f"reference embeddings {path}: a (rows, dim) matrix is needed, "
                             f"got shape {array.shape}")
        return Reference(f"file {path}", array=array.astype(np.float32, copy=False))
    from capmix.storage import spark_path

    frame = _with_uid(spark.read.parquet(spark_path(path)))
    if "embedding" not in frame.columns:
        raise InputError(f"reference embeddings {path}: parquet needs an `embedding` column "
                         f"(it has {', '.join(frame.columns)})")
    return Reference(f"parquet {path}", frame=frame.select("uid", "embedding"))


def _with_uid(table: "DataFrame") -> "DataFrame":
    from pyspark.sql import functions as F

    if "uid" in table.columns:
        return table.withColumn("uid", F.col("uid").cast("string"))
    return table.withColumn("uid", F.monotonically_increasing_id().cast("string"))


def _spark_table(spark: "SparkSession", name: str) -> "DataFrame":
    from pyspark.errors import AnalysisException

    try:
        return spark.table(name)
    except AnalysisException:
        raise InputError(f"reference table {name!r} is neither a lake table nor a Spark "
                         "table") from None


def size_of(ref: Reference) -> tuple[int, set[int]]:
    """(rows, the set of embedding dimensions) of a reference set: one aggregate for a frame."""
    if ref.array is not None:
        return int(ref.array.shape[0]), ({int(ref.array.shape[1])} if len(ref.array) else set())
    from pyspark.sql import functions as F

    dims = (ref.frame.where(F.col("embedding").isNotNull())
            .groupBy(F.size("embedding").alias("dim")).count().collect())
    return sum(int(r["count"]) for r in dims), {int(r["dim"]) for r in dims}
