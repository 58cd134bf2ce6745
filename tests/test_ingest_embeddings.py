"""`capmix ingest-embeddings` over DataComp-shaped metadata (parquet + npz), every mismatch as one
line before anything is written, and `capmix score` running only the text tower for images whose
embeddings were ingested."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

import jobs.ingest_embeddings as ie
from capmix.errors import InputError
from datacomp_shards import datacomp_pool, unit, write_shard


def test_datacomp_metadata_loads_under_the_right_scorers(spark, cfg, lake, tmp_path):
    meta = tmp_path / "metadata"
    vectors = datacomp_pool(meta, shards=2, rows=5)
    (meta / "notes.txt").write_text("not a shard")
    summary = ie.run(spark, cfg, [str(meta)], units_per_commit=1)
    assert summary.embeddings == {"vit-l-14": 10, "vit-b-32": 10}
    assert summary.scores == {"vit-l-14": 8, "vit-b-32": 8}  # one NULL caption per shard
    assert summary.disagree == {"vit-l-14": 0, "vit-b-32": 0}  # float16 vectors, 1e-4 holds
    emb = lake.read("image_embeddings").toPandas()
    for scorer, prefix, dim in (("vit-l-14", "l14", 768), ("vit-b-32", "b32", 512)):
        rows = emb[emb["scorer"] == scorer].set_index("uid")
        assert sorted(rows.index) == sorted(vectors[prefix])
        assert all(o.startswith("datacomp:") and o.endswith(f".npz#{prefix}")
                   for o in rows["origin"])
        for uid, v in vectors[prefix].items():
            got = np.asarray(rows.loc[uid, "embedding"])
            assert got.shape == (dim,) and np.dot(got, v) > 0.9999
    raw = lake.read("scores").where("scorer = 'vit-l-14'").toPandas()
    assert set(raw["source"]) == {"raw"} and "caption 1.4" in set(raw["text"])
    # A re-run finds every shard done and writes nothing.
    versions = lake.version("scores"), lake.version("image_embeddings")
    again = ie.run(spark, cfg, [str(meta)])
    assert again.skipped == 4 and (lake.version("scores"), lake.version("image_embeddings")) \
        == versions


def test_disagreeing_scores_are_counted(spark, cfg, lake, tmp_path):
    rng = np.random.default_rng(1)
    img, txt = unit(rng, 6, 768), unit(rng, 6, 768)
    scores = np.einsum("ij,ij->i", img, txt)
    scores[[0, 4]] += 0.01  # two rows the shard scored differently
    write_shard(tmp_path / "m", "00000000", [f"u{i}" for i in range(6)],
                [f"t{i}" for i in range(6)], {"l14": (img, txt)}, scores={"l14": scores})
    summary = ie.run(spark, cfg, [str(tmp_path / "m")])
    assert summary.disagree == {"vit-l-14": 2}
    assert "2 rows whose similarity differs" in summary.line()


@pytest.mark.parametrize("case, message", [
    ("rows", "has shape \\(4, 768\\); its parquet has 5 rows"),
    ("dimension", "dimension mismatch: 00000000.parquet's l14 embeddings have 512; scorer "
                  "'vit-l-14' has 768"),
    ("model", "model mismatch: l14 embeddings come from open_clip ViT-L-14/openai, scorer "
              "'vit-b-32'"),
    ("uids", "the npz's uids differ from the parquet's from row 2"),
    ("missing", "no embeddings file 00000000.npz"),
])
def test_mismatches_are_one_line_and_write_nothing(spark, cfg, lake, tmp_path, case, message):
    rng = np.random.default_rng(2)
    uids, texts = [f"u{i}" for i in range(5)], ["t"] * 5
    dim, rows = (512 if case == "dimension" else 768), (4 if case == "rows" else 5)
    extra = {"uid": np.array(["u0", "u1", "zz", "u3", "u4"])} if case == "uids" else None
    towers = {"l14": (unit(rng, rows, dim), unit(rng, rows, dim))}
    if case == "rows":
        towers["l14"] = (unit(rng, 4, dim), unit(rng, 4, dim))
        write_shard(tmp_path / "m", "00000000", uids[:4], texts[:4], towers)
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / "m" / "00000000.parquet")
        pq.write_table(pa.concat_tables([table, table.slice(0, 1)]),
                       tmp_path / "m" / "00000000.parquet")
    else:
        write_shard(tmp_path / "m", "00000000", uids, texts, towers, npz_extra=extra)
    if case == "missing":
        (tmp_path / "m" / "00000000.npz").unlink()
    towers_arg = "l14=vit-b-32" if case == "model" else "l14=vit-l-14"
    rc = ie.main(["--lake", cfg.lake.path, "--towers", towers_arg, str(tmp_path / "m")])
    assert rc == 2
    with pytest.raises(InputError, match=message):
        ie.run(spark, cfg, [str(tmp_path / "m")], ie.parse_towers(towers_arg))
    assert not lake.exists("image_embeddings") and not lake.exists("scores")


def _captions(spark, lake, uids):
    from capmix.tables import CAPTIONS

    rows = [(u, "cap", 0, f"a synthetic caption of {u}", "test", dt.datetime(2024, 1, 1))
            for u in uids]
    df = spark.createDataFrame(rows, "uid STRING, captioner STRING, sample INT, text STRING, "
                                     "model STRING, created_at TIMESTAMP")
    from pyspark.sql import functions as F

    for f in CAPTIONS.schema().fields:
        if f.name not in df.columns:
            df = df.withColumn(f.name, F.lit(None).cast(f.dataType))
    lake.append("captions", CAPTIONS.conform(df))


def test_text_only_scoring_equals_full_scoring(spark, tmp_path):
    """Lake A embeds its images and scores everything; lake B gets A's image embeddings as a
    DataComp shard, its pool holds broken image bytes, and its score run must still give the
    synthetic captions A's similarities, without recomputing the ingested raw scores."""
    import jobs.score
    from capmix import models
    from capmix.lake import open_lake
    from caption_pool import write_pool
    from test_score import make_cfg

    cfg_a, cfg_b = make_cfg(tmp_path / "a"), make_cfg(tmp_path / "b")
    lake_a, lake_b = open_lake(spark, cfg_a.lake), open_lake(spark, cfg_b.lake)
    rows = write_pool(spark, lake_a, n_ok=6, n_error=0, files=1)
    uids = sorted(r["uid"] for r in rows)
    _captions(spark, lake_a, uids)
    jobs.score.run(spark, cfg_a)
    emb = lake_a.read("image_embeddings").toPandas().set_index("uid").loc[uids]
    raw = {r["uid"]: r["text"] for r in rows}
    texts = [raw[u] for u in uids]
    scorer = models.load_scorer(models.resolve("tiny-clip", "scorer"))
    txt = scorer.embed_texts([t or "" for t in texts])
    write_shard(tmp_path / "meta", "00000000", uids, texts,
                {"tiny": (np.stack(emb["embedding"]).astype(np.float32), txt)},
                dtype=np.float32)  # float16 would move the cosines by ~4e-5

    for r in rows:  # B's pool: the same samples, image bytes broken or missing
        r["image"] = b"" if r["uid"] == uids[0] else b"\x00broken"
        r.pop("__file", None)
    from capmix.tables import POOL

    lake_b.append("pool", POOL.conform(spark.createDataFrame(rows, POOL.schema())))
    _captions(spark, lake_b, uids)
    ie.run(spark, cfg_b, [str(tmp_path / "meta")], {"tiny": "tiny-clip"})
    raw_before = lake_b.read("scores").toPandas().sort_values("uid")
    summary = jobs.score.run(spark, cfg_b)
    assert (summary.extra["images embedded"], summary.extra["texts scored"]) == (0, 6)
    got = lake_b.read("scores").toPandas().set_index(["uid", "source"]).sort_index()
    want = lake_a.read("scores").toPandas().set_index(["uid", "source"]).sort_index()
    synthetic = [k for k in want.index if k[1] == "cap:0"]
    assert len(synthetic) == 6
    np.testing.assert_allclose(got.loc[synthetic, "similarity"],
                               want.loc[synthetic, "similarity"], atol=1e-5)
    raw_after = got.reset_index().query("source == 'raw'").sort_values("uid")
    assert list(raw_after["created_at"]) == list(raw_before["created_at"])  # not recomputed
    assert lake_b.read("image_embeddings").where("origin = 'capmix:score'").count() == 0
