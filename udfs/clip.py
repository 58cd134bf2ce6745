"""CLIP embeddings and image-text similarity as pandas UDFs (`mapInPandas` iterators): the
scorer is built once per Python worker, images are decoded and preprocessed in the worker,
embeddings are L2-normalised float32, similarity is the dot product of normalised vectors.

    embed_images_frame(df[uid, image], task)            -> df[uid, embedding]
    embed_texts_frame(df[..., text], task)              -> df[..., text, embedding]
    similarity_frame(df[..., text, image_embedding], task) -> df[..., text, similarity]
    score_frame(df[uid, image, stored_embedding, texts], task)
        -> df[uid, source, text, embedding, similarity]: the score job's single pass
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Optional

from udfs import runtime

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame


@dataclass(frozen=True)
class ScoreTask:
    """Everything a worker needs to embed; small and picklable (no model inside)."""

    scorer: str
    weights: Optional[str] = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    threads: int = 1


def load(task: ScoreTask):
    from capmix.models import load_scorer, resolve

    device = runtime.pick_device(task.device)
    precision = runtime.pick_precision(task.precision, device)
    if device == "cpu":
        runtime.set_threads(task.threads)
    key = (task.scorer, task.weights, device, precision)
    spec = resolve(task.scorer, "scorer", task.weights)
    return runtime.cached_model("scorer", key, lambda: load_scorer(spec, device, precision))


# -- images -----------------------------------------------------------------------------------

def _embed_decoded(scorer, task: ScoreTask, decoded) -> "pd.DataFrame":
    import pandas as pd

    uids, images = decoded
    good = [i for i, im in enumerate(images) if im is not None]
    vectors = runtime.run_in_batches(
        good, task.batch_size,
        lambda part: list(scorer.embed_images([images[i] for i in part])),
        memo=("scorer-images", task.scorer))
    return pd.DataFrame({"uid": [uids[i] for i in good], "embedding": vectors})


def _images_partition(task: ScoreTask, frames: Iterator["pd.DataFrame"]):
    scorer = load(task)
    on_gpu = scorer.device.startswith("cuda")
    batches = ((f["uid"].tolist(), runtime.decode_images(f["image"].tolist()))
               for f in runtime.rebatch(frames, task.batch_size))
    for decoded in runtime.prefetch(batches, on_gpu):
        yield _embed_decoded(scorer, task, decoded)


def embed_images_frame(images: "DataFrame", task: ScoreTask) -> "DataFrame":
    return images.select("uid", "image").mapInPandas(
        functools.partial(_images_partition, task), schema="uid STRING, embedding ARRAY<FLOAT>")


# -- texts ------------------------------------------------------------------------------------

def _texts(scorer, task: ScoreTask, texts: list) -> list:
    return runtime.run_in_batches(texts, task.batch_size,
                                  lambda part: list(scorer.embed_texts(part)),
                                  memo=("scorer-texts", task.scorer))


def _texts_partition(task: ScoreTask, frames: Iterator["pd.DataFrame"]):
    scorer = load(task)
    for frame in runtime.rebatch(frames, task.batch_size):
        frame = frame.copy()
        frame["embedding"] = _texts(scorer, task, frame["text"].fillna("").tolist())
        yield frame


def embed_texts_frame(texts: "DataFrame", task: ScoreTask) -> "DataFrame":
    """Adds `embedding` (normalised) to every row; NULL texts embed as the empty text."""
    schema = ", ".join([f"`{f.name}` {f.dataType.simpleString()}" for f in texts.schema.fields
                        if f.name != "embedding"] + ["embedding ARRAY<FLOAT>"])
    return texts.drop("embedding").mapInPandas(functools.partial(_texts_partition, task),
                                               schema=schema)


# -- one pass: image embedding and the similarity of each of its texts ------------------------

SCORE_SCHEMA = "uid STRING, source STRING, text STRING, embedding ARRAY<FLOAT>, similarity DOUBLE"


def score_batch(scorer, task: ScoreTask, frame: "pd.DataFrame", decoded=None) -> "pd.DataFrame":
    """Rows (uid, image, stored_embedding, texts: [(source, text)]) -> one row per new image
    embedding (source NULL) and one per text (similarity). An image with a stored embedding is
    not re-embedded: its texts are scored against the stored vector."""
    import numpy as np
    import pandas as pd

    from capmix.scoring import cosine

    uids = frame["uid"].tolist()
    stored = frame["stored_embedding"].tolist()
    need = [i for i, v in enumerate(stored) if v is None]
    if decoded is None:
        decoded = runtime.decode_images([frame["image"].iloc[i] for i in need])
    good = [i for i, im in zip(need, decoded) if im is not None]
    images = {i: im for i, im in zip(need, decoded) if im is not None}
    fresh = runtime.run_in_batches(
        good, task.batch_size, lambda part: list(scorer.embed_images([images[i] for i in part])),
        memo=("scorer-images", task.scorer))
    vectors = {i: np.asarray(v, dtype=np.float32) for i, v in zip(good, fresh)}
    vectors.update({i: np.asarray(v, dtype=np.float32) for i, v in enumerate(stored)
                    if v is not None})
    out = [(uids[i], None, None, vectors[i], None) for i in good]
    pairs = [(i, source, text) for i, texts in enumerate(frame["texts"].tolist())
             if i in vectors and texts is not None for source, text in _pairs(texts)]
    if pairs:
        text_vectors = np.stack(_texts(scorer, task, [t for _, _, t in pairs]))
        sims = cosine(np.stack([vectors[i] for i, _, _ in pairs]), text_vectors)
        out += [(uids[i], source, text, None, float(sim))
                for (i, source, text), sim in zip(pairs, sims)]
    return pd.DataFrame(out, columns=["uid", "source", "text", "embedding", "similarity"])


def _pairs(texts) -> list:
    return [(t["source"], t["text"]) if isinstance(t, dict) else (t[0], t[1]) for t in texts]


def _score_partition(task: ScoreTask, frames: Iterator["pd.DataFrame"]):
    scorer = load(task)
    on_gpu = scorer.device.startswith("cuda")

    def prepared(frame):  # decoding is the CPU half: a prefetch thread does it on GPUs
        need = frame["stored_embedding"].isna()
        return frame, runtime.decode_images(frame.loc[need, "image"].tolist())

    batches = (prepared(f) for f in runtime.rebatch(frames, task.batch_size))
    for frame, decoded in runtime.prefetch(batches, on_gpu):
        yield score_batch(scorer, task, frame, decoded)


def score_frame(work: "DataFrame", task: ScoreTask) -> "DataFrame":
    """DataFrame[uid, image, stored_embedding, texts ARRAY<STRUCT<source, text>>] ->
    DataFrame[uid, source, text, embedding, similarity] (see `score_batch`)."""
    return work.select("uid", "image", "stored_embedding", "texts").mapInPandas(
        functools.partial(_score_partition, task), schema=SCORE_SCHEMA)


def similarity_batch(scorer, task: ScoreTask, frame: "pd.DataFrame") -> "pd.DataFrame":
    """Rows with `text` and `image_embedding` -> the same rows with `similarity` instead."""
    import numpy as np

    from capmix.scoring import cosine

    text_vectors = np.stack(_texts(scorer, task, frame["text"].tolist()))
    image_vectors = np.stack(frame["image_embedding"].map(np.asarray).tolist())
    out = frame.drop(columns=["image_embedding"])
    out["similarity"] = cosine(image_vectors, text_vectors)
    return out


def _similarity_partition(task: ScoreTask, frames: Iterator["pd.DataFrame"]):
    scorer = load(task)
    for frame in runtime.rebatch(frames, task.batch_size):
        yield similarity_batch(scorer, task, frame)


def similarity_frame(pairs: "DataFrame", task: ScoreTask) -> "DataFrame":
    """DataFrame[..., text, image_embedding] -> DataFrame[..., text, similarity]."""
    schema = ", ".join([f"`{f.name}` {f.dataType.simpleString()}" for f in pairs.schema.fields
                        if f.name != "image_embedding"] + ["similarity DOUBLE"])
    return pairs.mapInPandas(functools.partial(_similarity_partition, task), schema=schema)
