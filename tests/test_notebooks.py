"""Every Databricks notebook source in notebooks/ runs as a plain Python file against one tiny
lake, in stage order, in this process (so each reuses the test session's SparkSession), with
its widgets set through CAPMIX_WIDGET_<NAME>; each test checks what its notebook wrote.

The stages share one lake, so the tests run in file order and each needs the one before: a
notebook that raised makes the later ones fail with "needs <stage>", not a cascade of errors."""
from __future__ import annotations

import ast
import json
import logging
import os
import re
import runpy
from dataclasses import dataclass
from pathlib import Path

import pytest

from pools import Sample, make_samples, make_shard, sample_images

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
STAGES = ("ingest", "caption", "score", "cluster", "mix", "stats", "export", "train", "eval")
N_OK = 24  # images; one more sample is broken
TRAIN_SET = "nb_mix"
TRAIN_BATCH, TRAIN_STEPS = 4, 2


@dataclass
class World:
    root: Path
    lake: str
    config: str
    shards: str
    references: str
    done: set


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory) -> World:
    """Two webdataset shards (24 photos + 1 broken sample), reference images for the cluster
    filter, and a preset that keeps every stage tiny; the lake starts empty."""
    import yaml

    root = tmp_path_factory.mktemp("notebooks")
    samples = make_samples(N_OK, prefix="nb")
    broken = Sample("nbbroken", b"<html>404</html>", "jpg", "a broken picture",
                    {"key": "nbbroken", "url": "https://example.com/x.jpg", "status": "success"})
    make_shard(root / "shards", "00000", samples[:12])
    make_shard(root / "shards", "00001", samples[12:] + [broken])
    refs = root / "references"
    refs.mkdir()
    for i, blob in enumerate(sample_images(3, fmt="png", offset=500)):
        (refs / f"ref{i}.png").write_bytes(blob)
    lake = str(root / "lake")
    preset = {
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "arrow_batch_rows": 64},
        "lake": {"path": lake},
        "caption": {"chunk_rows": 100, "batch_size": 8},
        "score": {"chunk_rows": 1000, "batch_size": 16},
        "cluster": {"max_iter": 5},
        "train": {"warmup": 1, "workers": 1, "log_every": 1, "shuffle_buffer": 8},
        "eval": {"batch_size": 32},
    }
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(preset))
    (root / "cwd").mkdir()
    return World(root, lake, str(config), str(root / "shards" / "{00000..00001}.tar"),
                 str(refs), set())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """torch in this process: one thread (two that wait on each other on a busy 2-core
    machine cost more than the tiny models)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def notebook_defaults(name: str) -> dict:
    """The notebook's DEFAULTS (its widgets), read without running it."""
    tree = ast.parse((NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets
                                             if isinstance(t, ast.Name)] == ["DEFAULTS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"notebooks/{name}.py has no DEFAULTS")


def run_notebook(notebook: str, world: World, monkeypatch, /, needs: str | None = None,
                 **widgets: str) -> dict:
    """Run notebooks/NOTEBOOK.py as plain Python with these widget values (and the tiny preset,
    and the lake, for the notebooks that have those widgets); returns its globals."""
    if needs is not None and needs not in world.done:
        pytest.fail(f"needs the {needs} notebook, which did not run")
    defaults = notebook_defaults(notebook)
    widgets = {"config": world.config, **({"lake": world.lake} if "lake" in defaults else {}),
               **widgets}
    unknown = set(widgets) - set(defaults)
    assert not unknown, f"notebooks/{notebook}.py has no widget(s) {unknown}"
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    for key in [k for k in os.environ if k.startswith("CAPMIX_WIDGET_")]:
        monkeypatch.delenv(key)
    for key, value in widgets.items():
        monkeypatch.setenv(f"CAPMIX_WIDGET_{key.upper()}", str(value))
    monkeypatch.chdir(world.root / "cwd")  # relative defaults (runs/, exports/) stay in here
    logger = logging.getLogger("capmix")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    try:
        out = runpy.run_path(str(NOTEBOOKS / f"{notebook}.py"), run_name="__notebook__")
    finally:  # the CLI (train) sets up its own logging
        logger.handlers[:], logger.propagate, logger.level = saved
    assert out["params"] == {**defaults, **widgets}  # the widgets reached the notebook
    world.done.add(notebook)
    return out


def read(spark, world: World, table: str):
    from capmix.config import LakeConfig
    from capmix.lake import open_lake

    lake = open_lake(spark, LakeConfig(path=world.lake))
    assert lake.exists(table), f"no table {table}"
    return lake.read(table).toPandas()


# -- the notebooks' shape (no Spark) ----------------------------------------------------------
def test_every_notebook_is_a_databricks_source_with_widgets():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
    assert found == sorted([*STAGES, "overview"])
    for name in found:
        text = (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8")
        assert text.startswith("# Databricks notebook source\n"), name
        assert "# COMMAND ----------" in text, name
        assert "from capmix.notebook import widget_values" in text, name  # CAPMIX_WIDGET_*
        assert "spark.stop()" not in text, name  # never stop the notebook's session
        assert notebook_defaults(name), name


@pytest.mark.parametrize("name", [*STAGES, "overview"])
def test_widgets_come_from_dbutils_on_databricks_and_env_elsewhere(name, monkeypatch):
    """The first cell alone: on Databricks (a `dbutils`) the widgets win over the environment;
    elsewhere CAPMIX_WIDGET_<NAME> replaces a default."""
    cell = (NOTEBOOKS / f"{name}.py").read_text(encoding="utf-8").split("# COMMAND ----------")
    defaults = notebook_defaults(name)
    first = next(iter(defaults))
    monkeypatch.setenv(f"CAPMIX_WIDGET_{first.upper()}", "from-env")

    class Widgets:
        def __init__(self):
            self.made = {}

        def text(self, key, value):
            self.made[key] = value

        def get(self, key):
            return "from-widget" if key == first else self.made[key]

    class DBUtils:
        widgets = Widgets()

    on_databricks: dict = {"dbutils": DBUtils()}
    exec(compile(cell[1], name, "exec"), on_databricks)
    assert on_databricks["params"] == {**defaults, first: "from-widget"}
    assert DBUtils.widgets.made == defaults  # every widget is created with its default
    plain: dict = {}
    exec(compile(cell[1], name, "exec"), plain)
    assert plain["params"] == {**defaults, first: "from-env"}


# -- the stages, in order ---------------------------------------------------------------------
def test_ingest_notebook(spark, world, monkeypatch):
    out = run_notebook("ingest", world, monkeypatch, inputs=world.shards)
    pool = read(spark, world, "pool")
    assert len(pool) == N_OK + 1 and not pool["uid"].duplicated().any()
    assert (pool["status"] == "ok").sum() == N_OK
    assert pool.loc[pool["status"] == "error", "key"].tolist() == ["nbbroken"]
    assert out["summary"].inserted == N_OK + 1


def test_caption_notebook(spark, world, monkeypatch):
    run_notebook("caption", world, monkeypatch, needs="ingest", max_length="8", min_length="2")
    caps = read(spark, world, "captions")
    ok = set(read(spark, world, "pool").query("status == 'ok'")["uid"])
    assert set(caps["uid"]) == ok and len(caps) == N_OK  # one sample each, errors skipped
    assert set(caps["captioner"]) == {"tiny-coca"} and set(caps["sample"]) == {0}
    assert caps["text"].map(lambda t: isinstance(t, str) and len(t) > 0).all()
    assert set(caps["max_length"]) == {8}  # the widget, not the default 40


def test_score_notebook(spark, world, monkeypatch):
    run_notebook("score", world, monkeypatch, needs="caption")
    scores = read(spark, world, "scores")
    assert set(scores["scorer"]) == {"tiny-clip"}
    by_source = scores.groupby("source")["uid"].nunique().to_dict()
    assert by_source == {"raw": N_OK, "tiny-coca:0": N_OK}
    assert scores["similarity"].between(-1, 1).all()
    emb = read(spark, world, "image_embeddings")
    assert len(emb) == N_OK and set(emb["scorer"]) == {"tiny-clip"}


def test_cluster_notebook(spark, world, monkeypatch):
    run_notebook("cluster", world, monkeypatch, needs="score", k="3",
                 reference_images=world.references)
    clusters = read(spark, world, "clusters")
    assert len(clusters) == N_OK and not clusters["uid"].duplicated().any()
    assert set(clusters["k"]) == {3} and clusters["cluster"].between(0, 2).all()
    assert clusters["keep"].any()  # the references' nearest clusters are kept


def test_mix_notebook(spark, world, monkeypatch):
    out = run_notebook("mix", world, monkeypatch, needs="score", percent="50", name=TRAIN_SET)
    train = read(spark, world, "train_sets").query(f"name == '{TRAIN_SET}'")
    result = out["result"]
    assert result.strategy == "raw_top_plus_synthetic_filtered"  # the notebook's default
    assert len(train) == result.rows > 0 and not train["uid"].duplicated().any()
    assert (train["source"] == "raw").sum() >= N_OK // 2  # the raw top 50%, ties kept
    assert set(train["source"]) <= {"raw", "tiny-coca:0"}
    runs = read(spark, world, "mix_runs").set_index("name")
    assert runs.loc[TRAIN_SET, "rows"] == len(train) and runs.loc[TRAIN_SET, "percent"] == 50


def test_stats_notebook(spark, world, monkeypatch):
    report = world.root / "report"
    out = run_notebook("stats", world, monkeypatch, needs="mix", subset_sizes="8",
                       datasets=f"raw,train_set:{TRAIN_SET}", report_dir=str(report))
    stats = read(spark, world, "text_stats")
    assert set(stats["dataset"]) == {"raw", f"train_set:{TRAIN_SET}"}  # the datasets widget
    assert out["result"].rows == len(stats)
    whole = stats[stats["subset_size"] == stats.groupby("dataset")["subset_size"]
                  .transform("max")].set_index(["dataset", "metric"])["value"]
    train = read(spark, world, "train_sets").query(f"name == '{TRAIN_SET}'")
    assert whole[("raw", "captions")] == N_OK
    assert whole[(f"train_set:{TRAIN_SET}", "captions")] == len(train)
    assert whole[("raw", "similarity_mean")] == pytest.approx(
        read(spark, world, "scores").query("source == 'raw'")["similarity"].mean())
    # The subset_sizes widget: the scaling curve has a random subset of ~8 next to the whole set.
    curve = set(stats.query("metric == 'unique_trigrams' and dataset == 'raw'")["subset_size"])
    assert max(curve) == N_OK and 0 < min(curve) < N_OK
    assert (report / "report.md").is_file()


def test_export_notebook(spark, world, monkeypatch):
    out_dir = world.root / "export"
    out = run_notebook("export", world, monkeypatch, needs="mix", train_set=TRAIN_SET,
                       out=str(out_dir), min_files="1")
    import pyarrow.dataset as ds

    rows = ds.dataset(str(out_dir), format="parquet", ignore_prefixes=["_", "."]).to_table()
    train = read(spark, world, "train_sets").query(f"name == '{TRAIN_SET}'")
    assert rows.num_rows == len(train) == out["result"].rows  # every train image is ok
    assert {"uid", "image", "text", "source"} <= set(rows.column_names)
    meta = json.loads((out_dir / "_capmix_export.json").read_text())
    assert meta["train_set"] == TRAIN_SET and meta["pool_rows"] == N_OK


def test_train_notebook(world, monkeypatch):
    from training import checkpoint as ckpt

    run_dir = world.root / "runs" / "nb"
    run_notebook("train", world, monkeypatch, needs="export", data=str(world.root / "export"),
                 out=str(run_dir), model="tiny-clip", nproc="1",
                 samples=str(TRAIN_BATCH * TRAIN_STEPS), batch_size=str(TRAIN_BATCH))
    state = ckpt.load(ckpt.latest(run_dir))
    assert state["step"] == TRAIN_STEPS and state["samples_seen"] == TRAIN_BATCH * TRAIN_STEPS
    assert state["arch"] == "capmix-tiny-clip" and state["world_size"] == 1
    steps = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2]


def test_eval_notebook(spark, world, monkeypatch):
    out = run_notebook("eval", world, monkeypatch, needs="train",
                       checkpoint=str(world.root / "runs" / "nb"), task="retrieval",
                       data=str(world.root / "export"), dataset="nb_export")
    results = read(spark, world, "eval_results").query("dataset == 'nb_export'")
    assert set(results["run"]) == {"nb"} and set(results["task"]) == {"retrieval"}
    got = results.set_index("metric")["value"].to_dict()
    assert got == pytest.approx(out["metrics"]) and "mean_R@1" in got
    assert set(results["step"]) == {TRAIN_STEPS}


def test_eval_notebook_without_data_says_what_to_set(spark, world, monkeypatch, capsys):
    out = run_notebook("eval", world, monkeypatch, needs="eval",
                       checkpoint=str(world.root / "runs" / "nb"))
    assert out["metrics"] is None
    assert "set the `data` widget" in capsys.readouterr().out


# -- the overview, last ---------------------------------------------------------------------
def test_overview_links_the_stage_notebooks_in_order():
    text = (NOTEBOOKS / "overview.py").read_text(encoding="utf-8")
    assert re.findall(r"\]\(\$\./(\w+)\)", text) == list(STAGES)


def test_overview_notebook(spark, world, monkeypatch):
    out = run_notebook("overview", world, monkeypatch, needs="eval")
    train = read(spark, world, "train_sets")
    sizes = {r["name"]: r.asDict() for r in out["train_set_sizes"].collect()}
    assert set(sizes) == set(train["name"])
    mine = train[train["name"] == TRAIN_SET]
    got = sizes[TRAIN_SET]
    assert (got["rows"], got["images"]) == (len(mine), mine["uid"].nunique())
    assert got["raw_captions"] == (mine["source"] == "raw").sum()
    assert got["raw_captions"] + got["synthetic_captions"] == len(mine)

    scores = read(spark, world, "scores")
    want = scores.groupby("source")["similarity"].agg(["count", "mean"])
    cosine = {r["source"]: r for r in out["mean_cosine"].collect()}
    assert list(cosine) == ["raw", "tiny-coca:0"]
    for source, row in cosine.items():
        assert row["captions"] == want.loc[source, "count"]
        assert row["mean_cosine"] == pytest.approx(want.loc[source, "mean"])
    assert {r["source"] for r in out["quantiles"].collect()} == {"raw", "tiny-coca:0"}
    assert [r["captioner"] for r in out["comparison"].collect()] == ["raw", "tiny-coca"]
    assert out["table_rows"]["pool"] == N_OK + 1 and out["table_rows"]["eval_results"] > 0
