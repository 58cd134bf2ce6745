"""Captioning as a pandas UDF (Spark's `mapInPandas`, an iterator over Arrow batches): each
Python worker builds the captioner once (udfs.runtime), decodes and preprocesses the images
itself, and captions full batches of `batch_size` images, `samples` captions each.

    caption_frame(images_df[uid, image], CaptionTask(...)) -> DataFrame[uid, sample, seed, text]

An image the worker cannot decode gets rows with text NULL, so it is recorded as done instead of
failing the task or being retried forever.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from udfs import runtime

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

OUTPUT_SCHEMA = "uid STRING, sample INT, seed BIGINT, text STRING"


@dataclass(frozen=True)
class CaptionTask:
    """Everything a worker needs to caption; small and picklable (no model inside)."""

    captioner: str
    weights: Optional[str] = None
    prompt: Optional[str] = None
    samples: int = 1
    seed: int = 0
    top_k: int = 50
    temperature: float = 0.75
    min_length: int = 5
    max_length: int = 40
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 16
    threads: int = 1

    def sampling(self):
        from capmix.captioning import Sampling

        return Sampling(self.top_k, self.temperature, self.min_length, self.max_length)


def load(task: CaptionTask):
    """The worker's captioner for this task (built on first use, then cached)."""
    from capmix.models import load_captioner, resolve

    device = runtime.pick_device(task.device)
    precision = runtime.pick_precision(task.precision, device)
    if device == "cpu":
        runtime.set_threads(task.threads)
    key = (task.captioner, task.weights, device, precision)
    spec = resolve(task.captioner, "captioner", task.weights)
    return runtime.cached_model("captioner", key,
                                lambda: load_captioner(spec, device, precision))


def caption_batch(captioner, task: CaptionTask, frame: "pd.DataFrame") -> "pd.DataFrame":
    """Caption one batch of (uid, image) rows: the same call the benchmark's plain loop makes."""
    return caption_decoded(captioner, task, decode(frame))


def decode(frame: "pd.DataFrame") -> tuple[list, list]:
    """(uids, PIL images or None): the CPU half of a batch, which a prefetch thread can do."""
    return frame["uid"].tolist(), runtime.decode_images(frame["image"].tolist())


def caption_decoded(captioner, task: CaptionTask, decoded: tuple[list, list]) -> "pd.DataFrame":
    import pandas as pd

    from capmix.captioning import caption_rows, row_seed

    uids, images = decoded
    good = [i for i, im in enumerate(images) if im is not None]
    rows = runtime.run_in_batches(
        good, task.batch_size,
        lambda part: caption_rows(captioner, [images[i] for i in part], [uids[i] for i in part],
                                  task.samples, task.seed, task.sampling(), task.prompt),
        memo=("captioner", task.captioner))
    for i in (i for i, im in enumerate(images) if im is None):
        rows.extend((uids[i], s, row_seed(task.seed, uids[i], s), None)
                    for s in range(task.samples))
    return pd.DataFrame(rows, columns=["uid", "sample", "seed", "text"]).astype(
        {"sample": "int32", "seed": "int64"})


def _caption_partition(task: CaptionTask, frames: Iterator["pd.DataFrame"]
                       ) -> Iterator["pd.DataFrame"]:
    captioner = load(task)
    on_gpu = captioner.device.startswith("cuda")
    batches = (decode(f) for f in runtime.rebatch(frames, task.batch_size))
    for decoded in runtime.prefetch(batches, on_gpu):
        yield caption_decoded(captioner, task, decoded)


def caption_frame(images: "DataFrame", task: CaptionTask) -> "DataFrame":
    """DataFrame[uid, image] -> DataFrame[uid, sample, seed, text], `task.samples` rows per uid."""
    return images.select("uid", "image").mapInPandas(
        functools.partial(_caption_partition, task), schema=OUTPUT_SCHEMA)
