"""Mixing strategies (sql/*.sql, jobs/mix.py) on small hand-built `scores` tables.

Every expectation is worked out here from the strategy's definition (the issue's wording and
the paper's Tables 4-5): by hand for the worked example, and by a brute-force Python reading of
the definitions (`_reference`) for a seeded table full of ties. Nothing is derived from the SQL.
"""
from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from capmix.errors import InputError

def _conform(spec, df):
    """The table's columns; any the test does not set (added to the contract later) are NULL."""
    from pyspark.sql import functions as F

    for field in spec.schema().fields:
        if field.name not in df.columns:
            df = df.withColumn(field.name, F.lit(None).cast(field.dataType))
    return spec.conform(df)


SCHEMA = "uid STRING, source STRING, scorer STRING, text STRING, similarity DOUBLE"

RAW = {"u0": .10, "u1": .20, "u2": .30, "u3": .40, "u4": .50, "u5": .60, "u6": .70, "u7": .80,
       "u8": .90, "u9": .95}
SYN = {"u0": .85, "u1": .75, "u2": .65, "u3": .55, "u4": .45, "u5": .35, "u6": .25, "u7": .15,
       "u8": .05}  # u9 has no synthetic caption
CAP1 = {"u0": .30, "u1": .90, "u5": .99, "u8": None}  # a second sample; u8's was never scored
HOT = {"u2": .70, "u3": .50}  # another captioner (say, a higher temperature)


def _rows(values: dict, source: str, scorer: str = "clip") -> list[tuple]:
    return [(uid, source, scorer, f"{source} caption of {uid}", sim) for uid, sim in values.items()]


def _example_rows() -> list[tuple]:
    rows = _rows(RAW, "raw") + _rows(SYN, "cap:0") + _rows(CAP1, "cap:1") + _rows(HOT, "hot:0")
    # Another scorer's scores must never leak into a mix by `clip`.
    rows += _rows({"u0": .99, "u1": .99}, "raw", scorer="other")
    return rows


def _put_scores(spark, lake, rows):
    from pyspark.sql import functions as F

    from capmix.tables import SCORES

    df = spark.createDataFrame(rows, SCHEMA).withColumn("created_at", F.current_timestamp())
    lake.append("scores", _conform(SCORES, df))


@pytest.fixture(scope="module")
def example(spark, tmp_path_factory):
    """A lake holding the worked example; `scores`/`clusters` registered as the SQL expects."""
    from capmix.config import from_dict
    from capmix.lake import open_lake

    from tests.conftest import TEST_SPARK

    cfg = from_dict({"spark": TEST_SPARK,
                     "lake": {"path": str(tmp_path_factory.mktemp("mix") / "lake")}})
    lake = open_lake(spark, cfg.lake)
    _put_scores(spark, lake, _example_rows())
    return cfg, lake


def _mix(spark, lake, strategy, percent=30.0, captioner="cap", captioners=None, scorer="clip",
         intersect=False):
    from jobs.mix import register_inputs, run_sql, strategy_sql, strategy_values

    register_inputs(spark, lake)
    values = strategy_values(scorer=scorer, percent=percent, captioner=captioner,
                             captioners=captioners or [captioner], intersect_clusters=intersect)
    return {(r.uid, r.source): r.similarity
            for r in run_sql(spark, strategy_sql(strategy), values).collect()}


def _pairs(values: dict, uids, source):
    return {(u, source): values[u] for u in uids}


# --------------------------------------------------------------------------------------------
# The worked example, x = 30%: raw N = 10 -> the 3rd best raw caption (0.80) is the threshold,
# raw top = u7, u8, u9. Synthetic N = 9 -> ceil(2.7) = 3rd best (0.65): u0, u1, u2.

EXPECTED_30 = {
    "raw": _pairs(RAW, RAW, "raw"),
    "synthetic": _pairs(SYN, SYN, "cap:0"),
    "raw_top": _pairs(RAW, ["u7", "u8", "u9"], "raw"),
    "synthetic_top": _pairs(SYN, ["u0", "u1", "u2"], "cap:0"),
    "synthetic_for_raw_top": _pairs(SYN, ["u7", "u8"], "cap:0"),  # u9 has no synthetic caption
    "raw_top_plus_synthetic": {**_pairs(RAW, ["u7", "u8", "u9"], "raw"),
                               **_pairs(SYN, ["u0", "u1", "u2", "u3", "u4", "u5", "u6"], "cap:0")},
    # Synthetic for the rest only where it reaches the raw threshold 0.80: u0 (0.85).
    "raw_top_plus_synthetic_filtered": {**_pairs(RAW, ["u7", "u8", "u9"], "raw"),
                                        **_pairs(SYN, ["u0"], "cap:0")},
    # Synthetic top (threshold 0.65), raw for the other images at or above 0.65: u6..u9.
    "synthetic_top_plus_raw_filtered": {**_pairs(SYN, ["u0", "u1", "u2"], "cap:0"),
                                        **_pairs(RAW, ["u6", "u7", "u8", "u9"], "raw")},
    "concat_top_plus_synthetic_filtered": {("u7", "raw+cap:0"): .80, ("u8", "raw+cap:0"): .90,
                                           ("u9", "raw"): .95, ("u0", "cap:0"): .85},
    "raw_top_and_synthetic_top": {**_pairs(RAW, ["u7", "u8", "u9"], "raw"),
                                  **_pairs(SYN, ["u0", "u1", "u2"], "cap:0")},
}


def _mix_all(spark, lake, strategies, percent):
    """Several strategies in one Spark query (a UNION ALL of the files): one job, not many."""
    from jobs.mix import register_inputs, run_sql, strategy_sql, strategy_values

    register_inputs(spark, lake)
    values = strategy_values(scorer="clip", percent=percent, captioner="cap",
                             captioners=["cap"], intersect_clusters=False)
    union = " UNION ALL ".join(
        f"SELECT '{s}' AS strategy, * FROM (\n{strategy_sql(s)}\n)" for s in strategies)
    got: dict = {s: {} for s in strategies}
    for row in run_sql(spark, union, values).collect():
        got[row.strategy][(row.uid, row.source)] = row.similarity
    return got


def test_every_strategy_on_the_worked_example(spark, example):
    _, lake = example
    got = _mix_all(spark, lake, sorted(EXPECTED_30), 30.0)
    for strategy, expected in EXPECTED_30.items():
        assert got[strategy] == pytest.approx(expected), strategy


def test_concatenation_joins_raw_then_synthetic_text(spark, example):
    from jobs.mix import register_inputs, run_sql, strategy_sql, strategy_values

    _, lake = example
    register_inputs(spark, lake)
    values = strategy_values(scorer="clip", percent=30, captioner="cap", captioners=["cap"],
                             intersect_clusters=False)
    rows = run_sql(spark, strategy_sql("concat_top_plus_synthetic_filtered"), values).collect()
    texts = {r.uid: r.text for r in rows}
    assert texts["u7"] == "raw caption of u7 cap:0 caption of u7"
    assert texts["u9"] == "raw caption of u9"


def test_best_synthetic_picks_the_best_sample_across_captioners(spark, example):
    _, lake = example
    # One captioner, two samples: u1 and u5 take sample 1; u8's unscored sample 1 is ignored.
    best = _mix(spark, lake, "best_synthetic", percent=100, captioners=["cap"])
    assert best == pytest.approx({("u0", "cap:0"): .85, ("u1", "cap:1"): .90,
                                  ("u2", "cap:0"): .65, ("u3", "cap:0"): .55,
                                  ("u4", "cap:0"): .45, ("u5", "cap:1"): .99,
                                  ("u6", "cap:0"): .25, ("u7", "cap:0"): .15,
                                  ("u8", "cap:0"): .05})
    # Two captioners ("temperatures"): u2 now takes hot:0 (0.70 > 0.65); u3 keeps cap:0.
    both = _mix(spark, lake, "best_synthetic", percent=100, captioners=["cap", "hot"])
    assert both[("u2", "hot:0")] == pytest.approx(.70) and ("u2", "cap:0") not in both
    assert ("u3", "cap:0") in both and len(both) == 9
    # Top 30% of the 9 best: ceil(2.7) = 3 -> 0.99, 0.90, 0.85.
    top = _mix(spark, lake, "best_synthetic", percent=30, captioners=["cap"])
    assert set(top) == {("u5", "cap:1"), ("u1", "cap:1"), ("u0", "cap:0")}


def test_intersect_clusters_keeps_only_kept_images(spark, tmp_path):
    from capmix.tables import CLUSTERS

    _, lake = _lake_with(spark, tmp_path, _example_rows())
    clusters = spark.createDataFrame(
        [("u7", 0, True), ("u8", 1, False), ("u0", 0, True), ("u3", 2, False)],
        "uid STRING, cluster INT, keep BOOLEAN").selectExpr(
        "uid", "cluster", "keep", "'clip' AS scorer", "3 AS k", "current_timestamp() AS created_at")
    lake.overwrite("clusters", _conform(CLUSTERS, clusters))
    got = _mix(spark, lake, "raw_top_plus_synthetic_filtered", intersect=True)
    assert got == pytest.approx({("u7", "raw"): .80, ("u0", "cap:0"): .85})
    # The filter is applied after the threshold, which still comes from the whole pool.
    assert set(_mix(spark, lake, "raw_top", intersect=True)) == {("u7", "raw")}


# --------------------------------------------------------------------------------------------
# Percentile edge cases


def _lake_with(spark, tmp_path, rows):
    from capmix.config import from_dict
    from capmix.lake import open_lake

    from tests.conftest import TEST_SPARK

    cfg = from_dict({"spark": TEST_SPARK, "lake": {"path": str(tmp_path / "lake")}})
    lake = open_lake(spark, cfg.lake)
    _put_scores(spark, lake, rows)
    return cfg, lake


def test_percentile_edges(spark, tmp_path):
    # Ties at the threshold: 50% of 6 -> the 3rd best (0.5); all four 0.5s are kept.
    sims = {"t0": .9, "t1": .5, "t2": .5, "t3": .5, "t4": .5, "t5": .1}
    _, lake = _lake_with(spark, tmp_path, _rows(sims, "raw") + _rows({"t0": .3}, "cap:0"))
    top = lambda pct: {u for u, _ in _mix(spark, lake, "raw_top", percent=pct)}  # noqa: E731
    assert top(50) == {"t0", "t1", "t2", "t3", "t4"}
    assert top(100) == set(sims)  # x = 100: everything
    assert top(0.001) == {"t0"}  # a tiny share is still one caption
    assert top(16) == {"t0"}  # 16% of 6 = 0.96 -> rank 1
    assert top(17) == {"t0", "t1", "t2", "t3", "t4"}  # 1.02 -> rank 2 (ceil, not round)


def test_percentile_edges_exact_share(spark, tmp_path):
    sims = {"t0": .9, "t1": .5, "t2": .5, "t3": .1}
    _, lake = _lake_with(spark, tmp_path, _rows(sims, "raw"))
    assert {u for u, _ in _mix(spark, lake, "raw_top", percent=25)} == {"t0"}  # exactly 1
    assert {u for u, _ in _mix(spark, lake, "raw_top", percent=26)} == {"t0", "t1", "t2"}


def test_percent_that_floats_get_wrong(spark, tmp_path):
    # 70% of 10 is 7, but 0.7 * 10 == 7.000000000000001 in floating point: a float ceil would
    # take 8. Similarities closer than the histogram's 1e-5 buckets must still rank exactly, and
    # negative similarities are ordinary numbers.
    sims = {f"n{i}": s for i, s in enumerate(
        [.300001, .300002, .300003, .300004, .300005, .300006, .300007, .300008, -.2, -.1])}
    _, lake = _lake_with(spark, tmp_path, _rows(sims, "raw"))
    got = {u for u, _ in _mix(spark, lake, "raw_top", percent=70)}
    assert got == {"n1", "n2", "n3", "n4", "n5", "n6", "n7"}
    assert {u for u, _ in _mix(spark, lake, "raw_top", percent=90)} == set(sims) - {"n8"}


def test_empty_sets(spark, tmp_path):
    # Only synthetic scores: the raw set is empty, so its threshold is NULL and every strategy
    # that needs it selects nothing from the filtered side.
    _, lake = _lake_with(spark, tmp_path, _rows({"e0": .5, "e1": .4}, "cap:0"))
    assert _mix(spark, lake, "raw_top") == {}
    assert _mix(spark, lake, "raw_top_plus_synthetic_filtered") == {}
    assert set(_mix(spark, lake, "raw_top_plus_synthetic")) == {("e0", "cap:0"), ("e1", "cap:0")}
    assert _mix(spark, lake, "synthetic_top", percent=50) == {("e0", "cap:0"): .5}


# --------------------------------------------------------------------------------------------
# A seeded table with many ties, against a brute-force reading of each definition


def _top(values: dict, percent: float) -> tuple[set, float | None]:
    """Top x%: the ceil(N*x/100)-th best similarity is the threshold; ties are all kept."""
    if not values:
        return set(), None
    ranked = sorted(values.values(), reverse=True)
    k = math.ceil(Fraction(str(percent)) * len(ranked) / 100)
    cut = ranked[k - 1]
    return {u for u, s in values.items() if s >= cut}, cut


def _reference(strategy, raw, syn, percent):
    raw_top, raw_cut = _top(raw, percent)
    syn_top, syn_cut = _top(syn, percent)
    r = lambda uids: {(u, "raw") for u in uids}  # noqa: E731
    s = lambda uids: {(u, "cap:0") for u in uids}  # noqa: E731
    rest = set(syn) - raw_top
    return {
        "raw_top": r(raw_top),
        "synthetic_top": s(syn_top),
        "synthetic_for_raw_top": s(raw_top & set(syn)),
        "raw_top_plus_synthetic": r(raw_top) | s(rest),
        "raw_top_plus_synthetic_filtered":
            r(raw_top) | s({u for u in rest if syn[u] >= raw_cut}),
        "synthetic_top_plus_raw_filtered":
            s(syn_top) | r({u for u in set(raw) - syn_top if raw[u] >= syn_cut}),
        "concat_top_plus_synthetic_filtered":
            {(u, "raw+cap:0" if u in syn else "raw") for u in raw_top}
            | s({u for u in rest if syn[u] >= raw_cut}),
        "raw_top_and_synthetic_top": r(raw_top) | s(syn_top),
    }[strategy]


def test_every_threshold_strategy_matches_the_definitions_on_ties(spark, tmp_path):
    from jobs.mix import register_inputs, run_sql, strategy_sql, strategy_values

    rng = random.Random(7)
    raw = {f"i{n:02d}": rng.choice([.1, .2, .25, .25, .3, .3, .3, .4]) for n in range(40)}
    syn = {u: rng.choice([.15, .2, .3, .3, .35]) for u in list(raw)[5:]}
    _, lake = _lake_with(spark, tmp_path, _rows(raw, "raw") + _rows(syn, "cap:0"))
    strategies = ["raw_top", "synthetic_top", "synthetic_for_raw_top", "raw_top_plus_synthetic",
                  "raw_top_plus_synthetic_filtered", "synthetic_top_plus_raw_filtered",
                  "concat_top_plus_synthetic_filtered", "raw_top_and_synthetic_top"]
    # 37.5% of 40 = 15 and of 35 = 13.125: both thresholds land inside runs of ties.
    got = _mix_all(spark, lake, strategies, 37.5)
    for s in strategies:
        assert set(got[s]) == _reference(s, raw, syn, 37.5), s
    register_inputs(spark, lake)
    values = strategy_values(scorer="clip", percent=37.5, captioner="cap", captioners=["cap"],
                             intersect_clusters=False)
    cuts = run_sql(spark, strategy_sql("mix_thresholds"), values).first()
    assert cuts.raw_threshold == _top(raw, 37.5)[1]
    assert cuts.synthetic_threshold == _top(syn, 37.5)[1]
    assert (cuts.n_raw, cuts.n_synthetic) == (40, 35)


# --------------------------------------------------------------------------------------------
# The job: writes, records, replaces, refuses bad input


def test_run_writes_train_set_and_mix_run(spark, tmp_path):
    import json

    from jobs.mix import run

    cfg, lake = _lake_with(spark, tmp_path, _example_rows())
    result = run(spark, cfg, "raw_top_plus_synthetic_filtered", percent=30, captioner="cap",
                 scorer="clip")
    assert result.name == "raw_top_plus_synthetic_filtered_30"
    assert (result.rows, result.images) == (4, 4)
    assert result.threshold == pytest.approx(.80)
    rows = {(r.name, r.uid, r.source) for r in lake.read("train_sets").collect()}
    assert rows == {(result.name, u, s) for u, s in EXPECTED_30[result.strategy]}
    # Re-running under the same name replaces the set and its run record, never duplicates.
    again = run(spark, cfg, "raw_top", percent=50, scorer="clip", name=result.name)
    assert again.rows == 5 and lake.read("train_sets").count() == 5
    runs = lake.read("mix_runs").collect()
    assert len(runs) == 1 and runs[0].strategy == "raw_top" and runs[0].percent == 50
    assert runs[0].threshold == pytest.approx(.60) and runs[0].captioner is None
    assert json.loads(runs[0].params)["raw_threshold"] == pytest.approx(.60)
    # Other names: sets next to the first. best_synthetic keeps every image by default (the
    # paper's "no filtering"), even though mix.percent is 30.
    run(spark, cfg, "synthetic", captioner="cap", scorer="clip")
    best = run(spark, cfg, "best_synthetic", captioners=["cap", "hot"], scorer="clip")
    assert (best.name, best.rows, best.images) == ("best_synthetic", 9, 9)
    names = {r.name for r in lake.read("mix_runs").collect()}
    assert names == {result.name, "synthetic", "best_synthetic"}
    assert lake.read("train_sets").where("name = 'synthetic'").count() == 9
    best_run = lake.read("mix_runs").where("name = 'best_synthetic'").first()
    assert best_run.captioner == "cap,hot" and best_run.percent == 100


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "raw_top", "percent": 0}, "(0, 100]"),
    ({"strategy": "raw_top", "percent": 100.5}, "(0, 100]"),
    ({"strategy": "raw_top", "percent": -3}, "(0, 100]"),
    ({"strategy": "no_such_strategy"}, "unknown strategy"),
    ({"strategy": "raw_top", "name": "x'; DROP"}, "--name"),
    ({"strategy": "synthetic_top", "captioner": "typo"}, "no synthetic captions of 'typo'"),
    ({"strategy": "best_synthetic", "captioners": ["cap", "typo"]}, "'typo'"),
    ({"strategy": "raw_top", "scorer": "nobody"}, "no scores by scorer 'nobody'"),
    ({"strategy": "raw_top", "intersect_clusters": True}, "missing table(s)"),
])
def test_bad_input_is_one_error_and_writes_nothing(spark, example, kwargs, message):
    from jobs.mix import run

    cfg, lake = example
    kwargs = {"scorer": "clip", "captioner": "cap", **kwargs}
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(spark, cfg, kwargs.pop("strategy"), **kwargs)
    assert not lake.exists("train_sets") and not lake.exists("mix_runs")


def test_missing_scores_table(spark, cfg):
    from jobs.mix import run

    with pytest.raises(InputError, match="missing table"):
        run(spark, cfg, "raw")


def test_cli(spark, tmp_path, capsys):
    from jobs.mix import main

    cfg, lake = _lake_with(spark, tmp_path, _example_rows())
    lake_path = cfg.lake.path
    code = main(["--lake", lake_path, "--strategy", "synthetic_top", "--percent", "30",
                 "--captioner", "cap", "--scorer", "clip", "--name", "cli_set"])
    assert code == 0 and '"rows": 3' in capsys.readouterr().out
    assert main(["--lake", lake_path, "--strategy", "raw_top", "--percent", "0"]) == 2
    assert "(0, 100]" in capsys.readouterr().err
    assert lake.read("train_sets").count() == 3
