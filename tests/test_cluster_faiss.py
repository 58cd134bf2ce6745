"""The faiss cluster path: assignment against a brute-force numpy nearest centroid, the centroids
table, the default sizes, precomputed reference embeddings and every bad input (one line, exit 2,
nothing written)."""
from __future__ import annotations

import numpy as np
import pytest

from capmix import centroids as cn
from capmix.errors import InputError
from test_cluster import _cfg, _put_embeddings

DIM = 8


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_default_sizes_follow_datacomp_scaled_down():
    assert cn.default_k(1_280_000_000) == 100_000       # DataComp's centroids at full scale
    assert cn.default_sample(1_280_000_000, 100_000) == 6_400_000
    assert cn.default_k(128_000) == 600                  # 0.3 * 128k / 64
    assert cn.default_k(100) == 2 and cn.default_sample(100, 2) == 100


def test_assignment_equals_brute_force_and_centroids_round_trip(spark, cfg, lake):
    from jobs.cluster import run

    rng = np.random.default_rng(3)
    x = _unit(rng, 300)
    _put_embeddings(spark, lake, [(f"u{i:03d}", "clip", v.tolist()) for i, v in enumerate(x)])
    ref = x[[5, 17]] + 0.01  # two references, near two pool images
    lake.append("reference", spark.createDataFrame([(r.tolist(),) for r in ref],
                                                   "embedding ARRAY<FLOAT>"))
    result = run(spark, _cfg(cfg, reference_table="reference", sample_size=120), k=7)
    assert (result.images, result.k, result.sample_size, result.references) == (300, 7, 120, 2)

    cents = lake.read("cluster_centroids").orderBy("id").toPandas()
    assert list(cents["id"]) == list(range(7))
    assert set(cents["model"]) == {"clip"} and set(cents["k"]) == {7}
    assert set(cents["sample_size"]) == {120} and set(cents["seed"]) == {1}
    c = np.stack(cents["vector"]).astype(np.float32)
    assert c.shape == (7, DIM)

    got = lake.read("clusters").toPandas().set_index("uid").loc[[f"u{i:03d}" for i in range(300)]]
    d = np.linalg.norm(x[:, None, :] - c[None, :, :], axis=2)
    best = d.argmin(axis=1)
    second = np.sort(d, axis=1)[:, 1]
    clear = second - d.min(axis=1) > 1e-5  # ties aside
    assert clear.sum() > 290
    assert (got["cluster"].to_numpy()[clear] == best[clear]).all()
    assert np.allclose(got["distance"].to_numpy(), d.min(axis=1), atol=1e-5)
    # The keep rule on the stored centroids: clusters nearest to a reference image.
    kept = set(np.linalg.norm(ref[:, None] / np.linalg.norm(ref, axis=1)[:, None, None]
                              - c[None], axis=2).argmin(axis=1))
    assert result.kept_clusters == len(kept)
    assert (got["keep"] == got["cluster"].isin(kept)).all()


def _kept_by_stored_centroids(lake, ref: np.ndarray) -> set[str]:
    """The uids the keep rule must keep, from the stored centroids (brute force)."""
    c = np.stack(lake.read("cluster_centroids").orderBy("id").toPandas()["vector"])
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    near = set(np.linalg.norm(r[:, None] - c[None], axis=2).argmin(axis=1).tolist())
    return {row.uid for row in lake.read("clusters").collect() if row.cluster in near}


def test_reference_embeddings_from_npy_and_parquet(spark, cfg, lake, tmp_path):
    from jobs.cluster import run

    rng = np.random.default_rng(4)
    axes = np.eye(DIM, dtype=np.float32)
    pool = [(f"g{a}_{i}", "clip", (axes[a] + 0.05 * rng.normal(size=DIM)).tolist())
            for a in (0, 3, 6) for i in range(10)]
    _put_embeddings(spark, lake, pool)
    np.save(tmp_path / "ref.npy", axes[[3]])
    result = run(spark, _cfg(cfg, reference_embeddings=str(tmp_path / "ref.npy")), k=3)
    kept = {r.uid for r in lake.read("clusters").where("keep").collect()}
    assert result.kept_clusters == 1 and result.references == 1
    assert kept == _kept_by_stored_centroids(lake, axes[[3]]) and kept
    spark.createDataFrame([("r0", axes[0].tolist()), ("r1", axes[6].tolist())],
                          "uid STRING, embedding ARRAY<FLOAT>").write.parquet(
        str(tmp_path / "ref.parquet"))
    result = run(spark, _cfg(cfg, reference_embeddings=str(tmp_path / "ref.parquet")), k=3)
    kept = {r.uid for r in lake.read("clusters").where("keep").collect()}
    assert result.references == 2 and 1 <= result.kept_clusters <= 2
    assert kept == _kept_by_stored_centroids(lake, axes[[0, 6]])


def test_bad_input_writes_nothing(spark, cfg, lake, tmp_path):
    from jobs.cluster import run

    rng = np.random.default_rng(5)
    _put_embeddings(spark, lake, [(f"u{i}", "clip", v.tolist())
                                  for i, v in enumerate(_unit(rng, 20))])
    np.save(tmp_path / "ref4.npy", _unit(rng, 3, dim=4))
    np.save(tmp_path / "ref8.npy", _unit(rng, 3))
    np.save(tmp_path / "none.npy", np.zeros((0, DIM), dtype=np.float32))
    with pytest.raises(InputError, match="more than the sample of 3 embeddings"):
        run(spark, _cfg(cfg, reference_embeddings=str(tmp_path / "ref8.npy"), sample_size=3),
            k=4)
    with pytest.raises(InputError, match="have dimension 4; scorer 'clip'.* have 8"):
        run(spark, _cfg(cfg, reference_embeddings=str(tmp_path / "ref4.npy")), k=2)
    with pytest.raises(InputError, match="reference set is empty"):
        run(spark, _cfg(cfg, reference_embeddings=str(tmp_path / "none.npy")), k=2)
    lake.append("reference", spark.createDataFrame([], "embedding ARRAY<FLOAT>"))
    with pytest.raises(InputError, match="reference set is empty"):
        run(spark, _cfg(cfg, reference_table="reference"), k=2)
    assert not lake.exists("clusters") and not lake.exists("cluster_centroids")


def test_cli_bad_input_is_one_line_and_exit_2(spark, cfg, lake, tmp_path, capsys):
    from jobs.cluster import main

    rng = np.random.default_rng(6)
    _put_embeddings(spark, lake, [(f"u{i}", "tiny-clip", v.tolist())
                                  for i, v in enumerate(_unit(rng, 10))])
    np.save(tmp_path / "ref.npy", _unit(rng, 2, dim=5))
    rc = main(["--lake", cfg.lake.path, "--set", "spark.master=local[2]", "--k", "2",
               "--scorer", "tiny-clip", "--reference-embeddings", str(tmp_path / "ref.npy")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert [line for line in err if "dimension 5" in line]
    assert not lake.exists("clusters")
