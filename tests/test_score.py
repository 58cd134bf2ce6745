"""The score job with the tiny models, through real Spark and real Delta tables."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jobs.caption
import jobs.score
from capmix import models
from capmix.config import from_dict
from capmix.lake import open_lake
from capmix.tables import IMAGE_EMBEDDINGS, SCORES
from caption_pool import pool_rows, write_pool
from conftest import TEST_SPARK

N_OK, N_ERROR = 16, 3
OK_UIDS = {f"ok{i:03d}" for i in range(N_OK)}
RAW_UIDS = OK_UIDS - {"ok003"}  # ok003's raw caption is NULL
REPO = Path(__file__).resolve().parents[1]


def make_cfg(path, **score):
    return from_dict({"spark": TEST_SPARK, "lake": {"path": str(path)},
                      "caption": {"captioner": "tiny-coca", "samples": 2, "max_length": 8,
                                  "chunk_rows": 100},
                      "score": {"scorer": "tiny-clip", "chunk_rows": 1000, "batch_size": 8,
                                **score}})


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory):
    """Pool -> captions -> scores, uninterrupted: (cfg, lake, summary)."""
    cfg = make_cfg(tmp_path_factory.mktemp("score") / "lake")
    lake = open_lake(spark, cfg.lake)
    write_pool(spark, lake, N_OK, N_ERROR)
    jobs.caption.run(spark, cfg)
    return cfg, lake, jobs.score.run(spark, cfg)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The in-process scorer: one thread (two that wait on each other on a busy 2-core
    machine cost more than the tiny model)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def frame(lake, table):
    return lake.read(table).toPandas().sort_values(
        ["uid", "source"] if table == "scores" else ["uid"]).reset_index(drop=True)


def test_scores_have_the_contracted_keys_and_skip_errors_and_null_texts(scored):
    cfg, lake, summary = scored
    scores = frame(lake, "scores")
    assert list(lake.read("scores").columns) == SCORES.columns
    assert not scores.duplicated(["uid", "source", "scorer"]).any()
    expected = ({(u, "raw") for u in RAW_UIDS}
                | {(u, f"tiny-coca:{s}") for u in OK_UIDS for s in (0, 1)})
    assert set(zip(scores["uid"], scores["source"])) == expected
    assert set(scores["scorer"]) == {"tiny-clip"}
    raw = scores[scores["source"] == "raw"].set_index("uid")["text"]
    assert raw["ok005"] == "a photo number 5"
    assert (summary.extra["images embedded"], summary.extra["texts scored"]) == (
        N_OK, len(expected))
    assert summary.skipped == N_ERROR


def test_image_embeddings_are_normalised_once_per_image(scored):
    _, lake, _ = scored
    emb = frame(lake, "image_embeddings")
    assert list(lake.read("image_embeddings").columns) == IMAGE_EMBEDDINGS.columns
    assert sorted(emb["uid"]) == sorted(OK_UIDS)
    vectors = np.stack(emb["embedding"].map(np.asarray))
    assert vectors.shape == (N_OK, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similarity_is_the_dot_product_of_stored_image_and_text_embeddings(scored):
    _, lake, _ = scored
    scores = frame(lake, "scores")
    emb = frame(lake, "image_embeddings").set_index("uid")["embedding"]
    scorer = models.load_scorer(models.resolve("tiny-clip", "scorer"))
    text_vectors = scorer.embed_texts(scores["text"].tolist())
    image_vectors = np.stack([np.asarray(emb[u], dtype=np.float32) for u in scores["uid"]])
    expected = (image_vectors.astype(np.float64) * text_vectors).sum(axis=1)
    np.testing.assert_allclose(scores["similarity"], expected, atol=2e-6)
    np.testing.assert_allclose(scores["clip_s"], 2.5 * np.maximum(expected, 0), atol=5e-6)
    assert scores["similarity"].std() > 0.01  # not a constant


def test_embed_images_for_other_stages_matches_the_stored_embeddings(spark, scored):
    cfg, lake, _ = scored
    images = lake.read("pool").where("status = 'ok'").select("uid", "image")
    got = jobs.score.embed_images(spark, cfg, images).toPandas().set_index("uid")
    stored = frame(lake, "image_embeddings").set_index("uid")
    assert sorted(got.index) == sorted(stored.index)
    for uid in stored.index:
        np.testing.assert_allclose(got.loc[uid, "embedding"], stored.loc[uid, "embedding"],
                                   atol=1e-5)
    texts = spark.createDataFrame([("k1", "a shoe"), ("k2", None)], "key STRING, text STRING")
    out = jobs.score.embed_texts(spark, cfg, texts).toPandas()
    assert list(out.columns) == ["key", "text", "embedding"] and len(out) == 2
    np.testing.assert_allclose(np.linalg.norm(np.stack(out["embedding"]), axis=1), 1, atol=1e-5)
    # The similarity UDF on arbitrary (text, image embedding) pairs.
    from udfs.clip import similarity_frame

    pairs = (lake.read("image_embeddings").selectExpr("uid", "embedding AS image_embedding")
             .crossJoin(texts.where("text IS NOT NULL").select("text")))
    sims = similarity_frame(pairs, jobs.score.task_for(spark, cfg)).toPandas().set_index("uid")
    shoe = out.set_index("key").loc["k1", "embedding"]
    for uid in stored.index:
        assert sims.loc[uid, "similarity"] == pytest.approx(
            float(np.dot(np.asarray(stored.loc[uid, "embedding"], np.float64), shoe)), abs=2e-6)


def test_rerun_adds_nothing(spark, scored):
    cfg, lake, _ = scored
    versions = lake.version("scores"), lake.version("image_embeddings")
    summary = jobs.score.run(spark, cfg)
    assert summary.done == 0
    assert (lake.version("scores"), lake.version("image_embeddings")) == versions


def test_new_captions_are_scored_against_the_stored_embeddings(spark, scored):
    """A later captioner's texts: no image is embedded again, their similarity is the dot
    product with the vector `image_embeddings` already holds."""
    cfg, lake, _ = scored
    second = from_dict({"spark": TEST_SPARK, "lake": {"path": cfg.lake.path},
                        "caption": {"captioner": "tiny-blip2", "samples": 1, "max_length": 6,
                                    "chunk_rows": 100}, "score": {"chunk_rows": 1000}})
    jobs.caption.run(spark, second)
    before = frame(lake, "image_embeddings")
    summary = jobs.score.run(spark, second)
    assert (summary.extra["images embedded"], summary.extra["texts scored"]) == (0, N_OK)
    after = frame(lake, "image_embeddings")
    assert before[["uid", "created_at"]].equals(after[["uid", "created_at"]])
    new = frame(lake, "scores").query("source == 'tiny-blip2:0'")
    assert sorted(new["uid"]) == sorted(OK_UIDS)
    scorer = models.load_scorer(models.resolve("tiny-clip", "scorer"))
    emb = after.set_index("uid")["embedding"]
    expected = [float(np.dot(np.asarray(emb[u], dtype=np.float64), t))
                for u, t in zip(new["uid"], scorer.embed_texts(new["text"].tolist()))]
    np.testing.assert_allclose(new["similarity"], expected, atol=2e-6)


def test_kill_9_then_rerun_equals_an_uninterrupted_run(spark, scored, tmp_path):
    """`capmix score` is SIGKILLed after its first commit, then re-run with another chunk
    size; both tables equal those of the uninterrupted run."""
    straight_cfg, straight, _ = scored
    cfg = make_cfg(tmp_path / "lake")
    lake = open_lake(spark, cfg.lake)
    write_pool(spark, lake, N_OK, N_ERROR)
    # Same captions as the uninterrupted lake (caption is tested on its own).
    lake.append("captions", straight.read("captions").where("captioner = 'tiny-coca'"))
    cmd = [sys.executable, "-m", "capmix.cli", "score", "--lake", cfg.lake.path,
           "--scorer", "tiny-clip", "--chunk-rows", "6", "--batch-size", "8",
           "--set", "spark.master=local[1]", "--set", "spark.shuffle_partitions=2",
           "--set", "spark.arrow_batch_rows=64", "--set", "spark.driver_memory=1g"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    first = Path(cfg.lake.path) / "image_embeddings" / "_delta_log" / f"{0:020d}.json"
    try:
        deadline = time.monotonic() + 240
        while not first.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no commit within 4 minutes"
            time.sleep(0.2)
        time.sleep(2.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    embedded = lake.read("image_embeddings").count()
    assert 0 < embedded < N_OK, "the kill must land mid-run"
    jobs.score.run(spark, cfg)
    def scores(lk):
        df = frame(lk, "scores")
        return df[~df["source"].str.startswith("tiny-blip2")].reset_index(drop=True)

    a, b = scores(lake), scores(straight)
    keys = ["uid", "source", "scorer", "text"]
    assert a[keys].equals(b[keys])
    ea, eb = frame(lake, "image_embeddings"), frame(straight, "image_embeddings")
    assert ea[["uid", "scorer"]].equals(eb[["uid", "scorer"]])
    np.testing.assert_allclose(a["similarity"], b["similarity"], atol=1e-6)
    np.testing.assert_allclose(np.stack(ea["embedding"]), np.stack(eb["embedding"]), atol=1e-6)
    assert len(pool_rows(N_OK, N_ERROR)) == lake.read("pool").count()
