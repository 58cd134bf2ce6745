"""The example queries of sql/queries/ on a small hand-built lake, each result checked against
the answer worked out here from the query's definition (its header), and `capmix sql --file`
running them by bare name with named parameters. The queries are no mixing strategies."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUERIES = ("caption_lengths", "score_quantiles", "synthetic_beats_raw", "captioner_comparison")
NAN = float("nan")

# -- the lake ---------------------------------------------------------------------------------
# Raw captions with every kind of whitespace, an empty one, a NULL one, and an error row whose
# text must never count.
RAW = {"u0": "a dog on a couch", "u1": "  two\twords \n", "u2": "", "u3": None, "u4": "one",
       "u5": "a red car parked outside a small house", "u6": "x  y", "u7": "a\nb\r\nc",
       "u8": "cat"}
ERROR_UID, ERROR_TEXT = "u9", "broken picture with many many words"
OK = sorted(RAW)
# `capA:hot` shares a prefix with `capA`: a query that matched 'capA:%' would mix them up.
CAPTIONERS = {"capA": (OK, (0, 1)), "capB": (OK[:6], (0,)), "capA:hot": (OK[:3], (0,))}


def caption_text(captioner: str, uid: str, sample: int):
    if (captioner, uid) == ("capB", "u5"):
        return None  # a NULL caption: not a caption
    i = int(uid[1:])
    return f"{captioner} says" + " word" * ((i + sample) % 4) + ("\tend" if i % 3 == 0 else "")


def similarity(source: str, uid: str, scorer: str):
    """Hand-picked, mostly distinct cosines: a NaN and a NULL are not scores."""
    if (source, uid) == ("capA:1", "u8"):
        return NAN
    if (source, uid) == ("raw", "u3"):
        return None
    i = int(uid[1:])
    salt = sum(map(ord, source + scorer))
    return round(-0.2 + 0.05 * ((7 * i + salt) % 13) + 0.001 * i, 6)


def score_rows() -> list[dict]:
    rows = []
    for scorer, uids in (("clip", OK), ("other", OK[:4])):
        for uid in uids:  # raw: u3's NULL raw caption keeps a NULL-similarity row
            rows.append(dict(uid=uid, source="raw", scorer=scorer, text=RAW[uid],
                             similarity=similarity("raw", uid, scorer)))
        for cap, (cap_uids, samples) in CAPTIONERS.items():
            for uid in cap_uids:
                for s in samples:
                    text = caption_text(cap, uid, s)
                    if text is None or (scorer == "other" and uid not in uids):
                        continue
                    rows.append(dict(uid=uid, source=f"{cap}:{s}", scorer=scorer, text=text,
                                     similarity=similarity(f"{cap}:{s}", uid, scorer)))
    return rows


def caption_rows() -> list[dict]:
    return [dict(uid=uid, captioner=cap, sample=s, text=caption_text(cap, uid, s))
            for cap, (uids, samples) in CAPTIONERS.items() for uid in uids for s in samples]


def _conform(spec, df):
    from pyspark.sql import functions as F

    for field in spec.schema().fields:
        if field.name not in df.columns:
            df = df.withColumn(field.name, F.lit(None).cast(field.dataType))
    return spec.conform(df)


@pytest.fixture(scope="module")
def sql_lake(spark, tmp_path_factory):
    from capmix.config import from_dict
    from capmix.lake import open_lake
    from capmix.tables import CAPTIONS, POOL, SCORES
    from conftest import TEST_SPARK

    cfg = from_dict({"spark": TEST_SPARK,
                     "lake": {"path": str(tmp_path_factory.mktemp("sql") / "lake")}})
    lake = open_lake(spark, cfg.lake)
    pool = [(u, "ok", RAW[u]) for u in OK] + [(ERROR_UID, "error", ERROR_TEXT)]
    lake.append("pool", _conform(POOL, spark.createDataFrame(
        pool, "uid STRING, status STRING, text STRING")))
    lake.append("captions", _conform(CAPTIONS, spark.createDataFrame(
        caption_rows(), "uid STRING, captioner STRING, sample INT, text STRING")))
    lake.append("scores", _conform(SCORES, spark.createDataFrame(
        score_rows(), "uid STRING, source STRING, scorer STRING, text STRING, "
                      "similarity DOUBLE")))
    return cfg


def query(spark, cfg, name: str, **params) -> list[dict]:
    from jobs.sql import query_text, run

    return [r.asDict() for r in run(spark, cfg, query_text(name), params).collect()]


# -- the definitions, in Python ---------------------------------------------------------------
def words(text: str) -> int:
    return len(re.findall(r"\S+", text, re.ASCII))


def all_texts() -> list[tuple[str, str, str, str]]:
    """(set, uid, source, text): raw captions of ok images, then every non-NULL caption."""
    out = [("raw", u, "raw", t) for u, t in RAW.items() if t is not None]
    out += [(r["captioner"], r["uid"], f"{r['captioner']}:{r['sample']}", r["text"])
            for r in caption_rows() if r["text"] is not None]
    return out


def is_score(value) -> bool:
    return value is not None and not math.isnan(value)


# -- caption_lengths --------------------------------------------------------------------------
def test_words_definition_by_hand():
    assert [words(RAW[u]) for u in ("u0", "u1", "u2", "u5", "u6", "u7")] == [5, 2, 0, 8, 2, 3]


@pytest.mark.parametrize("width", [1, 3])
def test_caption_lengths_histogram(spark, sql_lake, width):
    counts: dict = defaultdict(lambda: defaultdict(int))
    for name, _, _, text in all_texts():
        counts[name][words(text) // width * width] += 1
    want = []
    for name in sorted(counts):
        total = sum(counts[name].values())
        want += [dict(source=name, words_from=lo, words_to=lo + width - 1, captions=n,
                      share=pytest.approx(n / total)) for lo, n in sorted(counts[name].items())]
    got = query(spark, sql_lake, "caption_lengths", bucket_words=width)
    assert got == want


def test_caption_lengths_raw_by_hand(spark, sql_lake):
    # Raw word counts: u0 5, u1 2, u2 0, u4 1, u5 8, u6 2, u7 3, u8 1 (u3 NULL, u9 an error).
    got = [(r["words_from"], r["words_to"], r["captions"], r["share"])
           for r in query(spark, sql_lake, "caption_lengths", bucket_words=2)
           if r["source"] == "raw"]
    assert got == [(0, 1, 3, 3 / 8), (2, 3, 3, 3 / 8), (4, 5, 1, 1 / 8), (8, 9, 1, 1 / 8)]


# -- score_quantiles --------------------------------------------------------------------------
def nearest_rank(values: list[float], p: str) -> float:
    """The smallest v with at least p of the values <= v."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(Fraction(p) * len(ordered))) - 1]


def test_score_quantiles(spark, sql_lake):
    groups = defaultdict(list)
    for r in score_rows():
        if is_score(r["similarity"]):
            groups[(r["scorer"], r["source"])].append(r["similarity"])
    order = sorted(groups, key=lambda k: (k[0], k[1] != "raw", k[1]))
    want = [dict(scorer=scorer, source=source, captions=len(v), mean=pytest.approx(sum(v) / len(v)),
                 min=min(v), p05=nearest_rank(v, "0.05"), p25=nearest_rank(v, "0.25"),
                 p50=nearest_rank(v, "0.5"), p75=nearest_rank(v, "0.75"),
                 p95=nearest_rank(v, "0.95"), max=max(v))
            for scorer, source in order for v in [groups[(scorer, source)]]]
    got = query(spark, sql_lake, "score_quantiles")
    assert got == want
    raw = got[0]
    assert (raw["scorer"], raw["source"], raw["captions"]) == ("clip", "raw", 8)  # u3: NULL
    capa1 = next(r for r in got if (r["scorer"], r["source"]) == ("clip", "capA:1"))
    assert capa1["captions"] == 8  # u8's NaN is no score


# -- synthetic_beats_raw ----------------------------------------------------------------------
def beats(scorer: str, captioner: str, margin: float) -> list[dict]:
    rows = [r for r in score_rows() if r["scorer"] == scorer and is_score(r["similarity"])]
    raw = {r["uid"]: r for r in rows if r["source"] == "raw"}
    out = []
    for r in rows:
        cap, _, sample = r["source"].rpartition(":")
        if cap != captioner or not sample.isdigit() or r["uid"] not in raw:
            continue
        gain = r["similarity"] - raw[r["uid"]]["similarity"]
        if gain > margin:
            out.append(dict(uid=r["uid"], source=r["source"], raw_text=raw[r["uid"]]["text"],
                            synthetic_text=r["text"], raw_similarity=raw[r["uid"]]["similarity"],
                            synthetic_similarity=r["similarity"], gain=gain))
    return sorted(out, key=lambda d: (-d["gain"], d["uid"], d["source"]))


@pytest.mark.parametrize("scorer, captioner, margin", [
    ("clip", "capA", 0.0), ("clip", "capA", 0.2), ("clip", "capA:hot", 0.0),
    ("other", "capB", -1.0)])
def test_synthetic_beats_raw(spark, sql_lake, scorer, captioner, margin):
    want = beats(scorer, captioner, margin)
    got = query(spark, sql_lake, "synthetic_beats_raw", scorer=scorer, captioner=captioner,
                margin=margin)
    assert got == want
    assert all(r["source"].rpartition(":")[0] == captioner for r in got)


def test_synthetic_beats_raw_is_not_empty_nor_everything(spark, sql_lake):
    # The data must exercise the filter: some synthetic captions win, some lose.
    wins = query(spark, sql_lake, "synthetic_beats_raw", scorer="clip", captioner="capA",
                 margin=0.0)
    capa = [r for r in score_rows() if r["scorer"] == "clip"
            and r["source"].startswith("capA:") and r["source"][5:].isdigit()]
    assert 0 < len(wins) < len(capa)
    assert all(r["uid"] != "u3" for r in wins)  # no raw score: nothing to beat


# -- captioner_comparison ---------------------------------------------------------------------
def test_captioner_comparison(spark, sql_lake):
    sims = {(r["uid"], r["source"]): r["similarity"] for r in score_rows()
            if r["scorer"] == "clip" and is_score(r["similarity"])}
    per = defaultdict(list)
    for name, uid, source, text in all_texts():
        per[name].append((uid, sims.get((uid, source)), words(text)))
    want = []
    for name in sorted(per, key=lambda n: (n != "raw", n)):
        rows = per[name]
        scored = [s for _, s, _ in rows if s is not None]
        want.append(dict(captioner=name, captions=len(rows), images=len({u for u, _, _ in rows}),
                         scored=len(scored),
                         mean_similarity=pytest.approx(sum(scored) / len(scored)),
                         mean_words=pytest.approx(sum(w for _, _, w in rows) / len(rows))))
    got = query(spark, sql_lake, "captioner_comparison", scorer="clip")
    assert got == want
    by = {r["captioner"]: r for r in got}
    # By hand: capA has 2 samples of 9 images, one of them NaN; capB has 5 captions (u5 NULL).
    assert (by["capA"]["captions"], by["capA"]["images"], by["capA"]["scored"]) == (18, 9, 17)
    assert (by["capB"]["captions"], by["capB"]["scored"]) == (5, 5)
    assert (by["raw"]["captions"], by["raw"]["mean_words"]) == (8, pytest.approx(22 / 8))


# -- `capmix sql --file` ------------------------------------------------------------------------
@pytest.fixture
def cli(capsys):
    from capmix.cli import log, main

    saved = (list(log.handlers), log.propagate, log.level)  # main() sets up CLI logging

    def call(*args: str):
        code = main(["sql", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    yield call
    log.handlers[:], log.propagate, log.level = saved[0], saved[1], saved[2]


def test_cli_runs_a_shipped_query_by_name_with_params(spark, sql_lake, cli):
    code, out, _ = cli("--lake", sql_lake.lake.path, "--file", "synthetic_beats_raw",
                       "--param", "scorer=clip", "--param", "captioner=capA:hot",
                       "--param", "margin=0", "--format", "json", "--limit", "100")
    assert code == 0
    got = [json.loads(line) for line in out.splitlines()]
    assert [(r["uid"], r["source"]) for r in got] == \
        [(r["uid"], r["source"]) for r in beats("clip", "capA:hot", 0.0)]


def test_cli_runs_a_query_file_by_path(spark, sql_lake, cli, tmp_path):
    own = tmp_path / "mine.sql"
    own.write_text("-- :bucket_words in a comment is no marker\n"
                   "SELECT count(*) AS n FROM captions WHERE sample = :sample")
    code, out, _ = cli("--lake", sql_lake.lake.path, "--file", str(own), "--param", "sample=1")
    assert code == 0 and out.split() == ["n", "9"]
    shipped = REPO / "sql" / "queries" / "caption_lengths.sql"
    code, out, _ = cli("--lake", sql_lake.lake.path, "--file", str(shipped),
                       "--param", "bucket_words=100", "--format", "csv")
    assert code == 0 and "raw,0,99,8,1.0" in out.splitlines()


def test_cli_errors_name_the_missing_params_and_the_shipped_queries(sql_lake, cli):
    code, _, err = cli("--lake", sql_lake.lake.path, "--file", "synthetic_beats_raw",
                       "--param", "scorer=clip")
    assert code == 2
    assert err.strip() == ("capmix sql: synthetic_beats_raw needs --param captioner=VALUE "
                           "--param margin=VALUE")
    code, _, err = cli("--lake", sql_lake.lake.path, "--file", "caption_length")
    assert code == 2 and "SQL file not found: caption_length" in err
    assert "shipped queries: " + ", ".join(sorted(QUERIES)) in err


def test_cli_has_deltas_sql_history_and_time_travel(spark, tmp_path, cli):
    from capmix.config import from_dict
    from capmix.lake import open_lake

    lake = open_lake(spark, from_dict({"lake": {"path": str(tmp_path / "tt")}}).lake)
    lake.append("pool", spark.createDataFrame([("a",), ("b",)], "uid string"))
    lake.append("pool", spark.createDataFrame([("c",)], "uid string"))
    code, out, err = cli("--lake", lake.cfg.path, "DESCRIBE HISTORY pool", "--format", "json")
    assert code == 0, err
    history = [json.loads(line) for line in out.splitlines()]
    assert [(h["version"], h["operation"]) for h in history] == [(1, "WRITE"), (0, "WRITE")]
    code, out, err = cli("--lake", lake.cfg.path,
                         "SELECT count(*) AS n FROM pool VERSION AS OF 0", "--format", "csv")
    assert code == 0 and out.split() == ["n", "2"], err
    code, out, _ = cli("--lake", lake.cfg.path, "SELECT count(*) AS n FROM pool", "--format",
                       "csv")
    assert out.split() == ["n", "3"]
    # Another lake in the same session: the names now point at its tables.
    other = open_lake(spark, from_dict({"lake": {"path": str(tmp_path / "tt2")}}).lake)
    other.append("pool", spark.createDataFrame([("z",)], "uid string"))
    code, out, _ = cli("--lake", other.cfg.path, "SELECT uid FROM pool", "--format", "csv")
    assert out.split() == ["uid", "z"]


# -- packaging: queries are shipped, and never taken for mixing strategies ------------------
def test_queries_are_not_strategies():
    from capmix.errors import InputError
    from jobs.mix import STRATEGIES, check_inputs
    from jobs.sql import query_names

    assert query_names() == sorted(QUERIES)
    assert not set(query_names()) & set(STRATEGIES)
    top = {p.stem for p in (REPO / "sql").glob("*.sql")}
    assert top == set(STRATEGIES) | {"mix_thresholds"}  # nothing else at the strategies' level
    for name in QUERIES:
        with pytest.raises(InputError, match="unknown strategy"):
            check_inputs(name, 30.0, None)


def test_the_wheel_ships_the_queries(tmp_path):
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("capmix", "jobs", "udfs", "training", "pipeline", "sql", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=skip)
    shutil.copy(REPO / "setup.py", src / "setup.py")
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                           str(tmp_path / "lib")], cwd=src, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shipped = tmp_path / "lib" / "capmix" / "sql"
    assert sorted(p.stem for p in (shipped / "queries").glob("*.sql")) == sorted(QUERIES)
    assert (shipped / "raw_top_plus_synthetic_filtered.sql").is_file()
    # The tiny models' architectures (the embedded default's) ship on the same line.
    assert (tmp_path / "lib" / "capmix" / "model_configs" / "capmix-tiny-clip.json").is_file()
