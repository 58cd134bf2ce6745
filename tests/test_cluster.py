"""The image-cluster filter (jobs/cluster.py) on embeddings with a known cluster structure, and
with a reference folder of real images embedded by the scorer."""
from __future__ import annotations

import random

import pytest

from capmix.errors import InputError

DIM = 8


def _conform(spec, df):
    from pyspark.sql import functions as F

    for field in spec.schema().fields:
        if field.name not in df.columns:
            df = df.withColumn(field.name, F.lit(None).cast(field.dataType))
    return spec.conform(df)


def _near(axis: int, rng: random.Random, noise: float = 0.05) -> list[float]:
    """A unit vector close to the basis vector `axis`."""
    v = [rng.gauss(0, noise) for _ in range(DIM)]
    v[axis] += 1.0
    norm = sum(x * x for x in v) ** 0.5
    return [x / norm for x in v]


def _put_embeddings(spark, lake, rows):
    from capmix.tables import IMAGE_EMBEDDINGS

    df = spark.createDataFrame(rows, "uid STRING, scorer STRING, embedding ARRAY<FLOAT>")
    lake.append("image_embeddings", _conform(IMAGE_EMBEDDINGS, df))


def _cfg(cfg, **cluster):
    from capmix.config import from_dict

    from tests.conftest import TEST_SPARK

    return from_dict({"spark": TEST_SPARK, "lake": {"path": cfg.lake.path},
                      "cluster": {"k": 3, "seed": 1, "max_iter": 8, "scorer": "clip", **cluster}})


def test_keeps_the_clusters_nearest_to_the_reference(spark, cfg, lake):
    from jobs.cluster import run

    rng = random.Random(0)
    groups = {axis: [f"g{axis}_{i}" for i in range(12)] for axis in (0, 3, 6)}
    rows = [(uid, "clip", _near(axis, rng)) for axis, uids in groups.items() for uid in uids]
    rows += [("x", "other", _near(3, rng))]  # another scorer's embedding: not clustered
    _put_embeddings(spark, lake, rows)
    # The reference set lies near two of the three groups (axes 0 and 6), so exactly their
    # clusters are kept; the group around axis 3 is dropped.
    ref = spark.createDataFrame([(_near(0, rng),), (_near(6, rng),), (_near(6, rng),)],
                                "embedding ARRAY<FLOAT>")
    lake.append("reference", ref)
    result = run(spark, _cfg(cfg, reference_table="reference"))
    assert (result.images, result.k, result.kept_clusters, result.kept_images) == (36, 3, 2, 24)
    assert result.sample_size == 36  # 64 per centroid, at most the pool
    got = {r.uid: (r.cluster, r.keep) for r in lake.read("clusters").collect()}
    assert set(got) == {u for uids in groups.values() for u in uids}
    for axis, uids in groups.items():
        assert len({got[u][0] for u in uids}) == 1, axis  # one cluster per group
        assert {got[u][1] for u in uids} == {axis != 3}, axis
    assert len({got[uids[0]][0] for uids in groups.values()}) == 3
    row = lake.read("clusters").first()
    assert (row.scorer, row.k) == ("clip", 3)


def test_bad_input(spark, cfg, lake, tmp_path):
    from jobs.cluster import run

    with pytest.raises(InputError, match="missing table"):
        run(spark, _cfg(cfg, reference_table="reference"))
    rng = random.Random(1)
    _put_embeddings(spark, lake, [(f"u{i}", "clip", _near(i % 2, rng)) for i in range(4)])
    with pytest.raises(InputError, match="at least 5 images"):
        run(spark, _cfg(cfg, reference_table="reference"), k=5)
    with pytest.raises(InputError, match="no image embeddings by scorer 'nobody'"):
        run(spark, _cfg(cfg, reference_table="reference"), scorer="nobody")
    with pytest.raises(InputError, match="neither a lake table nor a Spark table"):
        run(spark, _cfg(cfg, reference_table="no_such_table"), k=2)
    with pytest.raises(InputError, match="folder not found"):
        run(spark, _cfg(cfg, reference_images=str(tmp_path / "missing")), k=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="reference set is empty"):
        run(spark, _cfg(cfg, reference_images=str(tmp_path / "empty")), k=2)
    assert not lake.exists("clusters")


def test_reference_folder_is_embedded_by_the_same_scorer(spark, cfg, lake, tmp_path):
    """A reference image identical to a pool image has that image's embedding, so the cluster
    the pool image belongs to must be kept (whatever the random-init scorer's embeddings)."""
    from PIL import Image
    from pyspark.sql import functions as F

    from jobs.cluster import read_image_folder, run
    from jobs.score import embed_images

    folder = tmp_path / "pool"
    folder.mkdir()
    colours = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (240, 240, 20), (20, 20, 20),
               (200, 200, 200)]
    for i, colour in enumerate(colours):
        img = Image.new("RGB", (32, 32), colour)
        img.paste((255 - colour[0], 128, 64), (4 + i * 3, 4, 16 + i * 2, 20))
        img.save(folder / f"img{i}.png")
    cfg = _cfg(cfg, reference_images=str(tmp_path / "ref"), scorer=None)
    pool = read_image_folder(spark, str(folder))
    emb = embed_images(spark, cfg, pool).withColumn(
        "uid", F.regexp_extract("uid", r"(img\d)\.png$", 1))
    _put_embeddings(spark, lake, [(r.uid, cfg.score.scorer, list(r.embedding))
                                  for r in emb.collect()])
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "copy.png").write_bytes((folder / "img4.png").read_bytes())
    result = run(spark, cfg, k=2)
    got = {r.uid: (r.cluster, r.keep) for r in lake.read("clusters").collect()}
    assert result.references == 1 and result.kept_clusters == 1 and len(got) == 6
    assert got["img4"][1] is True
    assert {u for u, (c, _) in got.items() if c == got["img4"][0]} == {
        u for u, (_, keep) in got.items() if keep}


def test_reference_images_are_embedded_once_and_released(spark, cfg, lake, tmp_path,
                                                         monkeypatch):
    """A reference folder is read twice (its size and dimension, then the keep rule); with
    ImageNet-1k that is 1.28M images through the scorer, so they are embedded once, kept while
    needed and released after."""
    from PIL import Image

    import jobs.cluster
    import jobs.score
    from jobs.cluster import run
    from jobs.cluster_reference import reference_set

    rng = random.Random(2)
    _put_embeddings(spark, lake, [(f"u{i}", "tiny-clip", _near(3 * (i % 2), rng))
                                  for i in range(12)])
    (tmp_path / "ref").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(tmp_path / "ref" / f"r{i}.png")
    embedded = spark.sparkContext.accumulator(0)
    vector = _near(0, rng)  # every reference lands near axis 0: one cluster kept

    def counting_embed(spark_, cfg_, images):
        def embed(frames):
            import pandas as pd

            for frame in frames:
                embedded.add(len(frame))
                yield pd.DataFrame({"uid": frame["uid"], "embedding": [vector] * len(frame)})
        return images.select("uid", "image").mapInPandas(embed, "uid STRING, embedding "
                                                                "ARRAY<FLOAT>")

    refs = []

    def keeping_reference_set(*args):
        refs.append(reference_set(*args))
        return refs[-1]

    monkeypatch.setattr(jobs.score, "embed_images", counting_embed)
    monkeypatch.setattr(jobs.cluster, "reference_set", keeping_reference_set)
    result = run(spark, _cfg(cfg, reference_images=str(tmp_path / "ref"), scorer=None), k=2)
    assert (result.references, result.kept_clusters, result.kept_images) == (3, 1, 6)
    assert embedded.value == 3  # once per image, not once per read
    level = refs[0].frame.storageLevel  # what Spark's cache manager holds for it: nothing
    assert not (level.useMemory or level.useDisk)
