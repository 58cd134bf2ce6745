"""Caption statistics: the per-caption definitions, their Spark forms, the tagger, the stats job
on a hand-built lake (expected counts worked out by hand here) and the report files."""
from __future__ import annotations

import pytest

from capmix.errors import ConfigError, InputError
from udfs import text_stats as ts

def _conform(spec, df):
    """The table's columns; any the test does not set (added to the contract later) are NULL."""
    from pyspark.sql import functions as F

    for field in spec.schema().fields:
        if field.name not in df.columns:
            df = df.withColumn(field.name, F.lit(None).cast(field.dataType))
    return spec.conform(df)



# --------------------------------------------------------------------------------------------
# Per-caption definitions


def test_words_and_trigrams_on_known_text():
    assert ts.words("A Dog's toy, on the (red) COUCH!") == ["a", "dog's", "toy", "on", "the",
                                                            "red", "couch"]
    assert ts.words("café—crème 2x") == ["café", "crème", "2x"]
    assert ts.words("it\u2019s") == ["it's"]
    assert ts.words("") == [] and ts.words(None) == []
    assert ts.trigrams(["a", "b", "c", "d"]) == ["a b c", "b c d"]
    assert ts.trigrams(["a", "b"]) == []


def test_grounding_ratio_uses_the_coco_vocabulary_without_stop_words():
    vocab = ts.visual_vocabulary()
    assert {"dog", "couch", "giraffe", "surfboard", "red"} <= vocab
    assert not {"a", "the", "on", "with", "is"} & vocab  # stop words are never visual
    assert "ligurien" not in vocab
    # "a dog on the red couch": dog, red, couch are visual -> 3 of 6 words.
    assert ts.grounding_ratio("a dog on the red couch") == pytest.approx(3 / 6)
    assert ts.grounding_ratio("Italien - Ligurien") == 0.0
    assert ts.grounding_ratio("!!!") is None


def test_spark_words_and_trigrams_match_the_python_definitions(spark):
    from pyspark.sql import functions as F

    texts = ["A Dog's toy, on the (red) COUCH!", "café—crème 2x", "it\u2019s a  test", "",
             None, "ÉCOLE Ünïcode 東京 タワー 123-456", "one two", "x_y z'", "don't stop me now"]
    df = spark.createDataFrame([(t,) for t in texts], "text STRING")
    got = (df.select(ts.words_column(F.col("text")).alias("w"))
           .select("w", ts.trigrams_column(F.col("w")).alias("t")).collect())
    for text, row in zip(texts, got):
        assert row.w == ts.words(text), text
        assert row.t == ts.trigrams(ts.words(text)), text


def test_tagger_agreement_on_the_hand_tagged_sample():
    from capmix.tagger import agreement, load_tagger, read_sample

    tagger = load_tagger("lingua-hmm")
    sample = read_sample()
    assert len(sample) >= 50 and sum(map(len, sample)) >= 350
    result = agreement(tagger, sample)
    # Measured: 97.2% of tokens and noun F1 0.972 (report in docs/benchmarks.md).
    assert result["accuracy"] >= 0.93 and result["noun_f1"] >= 0.93, result
    # A tagger that calls every word a noun must score badly on the same sample.
    class AllNouns:
        name = "all-nouns"

        def tag(self, tokens):
            return ["NN"] * len(tokens)

    assert agreement(AllNouns(), sample)["noun_f1"] < 0.75


def test_tagger_nouns_on_known_text():
    from capmix.tagger import load_tagger, nouns, tokenize

    tagger = load_tagger("lingua-hmm")
    assert tokenize("a woman's hand, don't") == ["a", "woman", "'s", "hand", ",", "do", "n't"]
    assert nouns("two dogs playing with a frisbee in the park", tagger) == [
        "dogs", "frisbee", "park"]
    # "on", "off", "no", "yes" are words, not YAML booleans, in the lexicon.
    assert nouns("a cat on a couch", tagger) == ["cat", "couch"]


def test_missing_lexicon_is_a_config_error(tmp_path):
    from capmix.tagger import tagger_name

    with pytest.raises(ConfigError, match="liblingua-en-tagger-perl"):
        tagger_name("lingua-hmm", str(tmp_path))


# --------------------------------------------------------------------------------------------
# The job on a hand-built lake

RAW = {"u1": ("a dog on a red couch", .20), "u2": ("a dog on a red couch", .30),
       "u3": ("Italien - Ligurien", .10), "u4": ("two cats on a bed", .25)}
CAP = {"u1": ("a brown dog on a couch", .31), "u2": ("a dog on a couch", .33),
       "u3": ("a beach with a boat", .29), "u4": ("two cats on a bed", .35)}


def _lake(spark, cfg):
    from pyspark.sql import functions as F

    from capmix.lake import open_lake
    from capmix.tables import CAPTIONS, SCORES, TRAIN_SETS

    lake = open_lake(spark, cfg.lake)
    rows = [(u, "raw", "clip", t, s) for u, (t, s) in RAW.items()]
    rows += [(u, "cap:0", "clip", t, s) for u, (t, s) in CAP.items()]
    scores = spark.createDataFrame(rows, "uid STRING, source STRING, scorer STRING, "
                                         "text STRING, similarity DOUBLE")
    lake.append("scores", _conform(SCORES, scores.withColumn("created_at",
                                                           F.current_timestamp())))
    caps = spark.createDataFrame(
        [(u, "cap", 0, t) for u, (t, _) in CAP.items()] + [("u1", "cap", 1, "ignored sample")],
        "uid STRING, captioner STRING, sample INT, text STRING").selectExpr(
        "*", "'m' AS model", "NULL AS prompt", "0.75 AS temperature", "50 AS top_k",
        "5 AS min_length", "40 AS max_length", "0 AS seed", "current_timestamp() AS created_at")
    lake.append("captions", _conform(CAPTIONS, caps))
    # A train set of 200 captions whose every caption has its own single trigram, so the
    # number of unique trigrams in any subset is exactly the subset's size.
    train = spark.range(200).selectExpr(
        "'scaling' AS name", "concat('s', id) AS uid", "'raw' AS source",
        "concat('w', id, 'a w', id, 'b w', id, 'c') AS text", "0.3 AS similarity")
    lake.append("train_sets", _conform(TRAIN_SETS, train))
    return lake


def test_stats_job_counts_report_and_scaling(spark, cfg, tmp_path):
    from jobs.stats import run

    lake = _lake(spark, cfg)
    result = run(spark, cfg, subset_sizes=[20, 100, 10_000], scorer="clip",
                 report_dir=str(tmp_path / "report"))
    assert result.datasets == ["raw", "captioner:cap", "train_set:scaling"]
    stats = {(r.dataset, r.metric, r.subset_size): r.value for r in lake.read("text_stats")
             .collect()}
    get = lambda d, m, n: stats[(d, m, n)]  # noqa: E731
    # raw: 4 captions; trigrams: "a dog on", "dog on a", "on a red", "a red couch" (twice, one
    # set), "two cats on", "cats on a", "on a bed"; "Italien - Ligurien" has 2 words: none.
    assert get("raw", "captions", 4) == 4
    assert get("raw", "unique_trigrams", 4) == 7
    # Nouns: dog, couch (twice), italien, ligurien (proper nouns), cats, bed.
    assert get("raw", "unique_nouns", 4) == 6
    # Words per caption 6, 6, 2, 5: the median of [2, 5, 6, 6], linearly interpolated, is 5.5.
    assert get("raw", "words_p50", 4) == 5.5
    assert get("raw", "words_mean", 4) == pytest.approx(19 / 4)
    assert get("raw", "similarity_mean", 4) == pytest.approx((.2 + .3 + .1 + .25) / 4)
    hist = {m: v for (d, m, n), v in stats.items() if d == "raw" and "hist" in m}
    assert hist == {"similarity_hist_+0.10": .25, "similarity_hist_+0.20": .25,
                    "similarity_hist_+0.25": .25, "similarity_hist_+0.30": .25}
    # captioner:cap: sample 0 only, with the cap:0 similarities.
    assert get("captioner:cap", "captions", 4) == 4
    assert get("captioner:cap", "similarity_mean", 4) == pytest.approx((.31 + .33 + .29 + .35) / 4)
    # Grounding: "a brown dog on a couch" 3/6 (brown, dog, couch), "a dog on a couch" 2/5,
    # "a beach with a boat" 2/5, "two cats on a bed" 3/5 ("two" is COCO vocabulary, not a stop
    # word).
    assert get("captioner:cap", "grounding_mean", 4) == pytest.approx((.5 + .4 + .4 + .6) / 4)
    assert get("captioner:cap", "unique_nouns", 4) == 6  # dog, couch, beach, boat, cats, bed
    # Scaling: nested subsets, about 20 and 100 of 200; unique trigrams == subset size.
    curve = sorted((n, v) for (d, m, n), v in stats.items()
                   if d == "train_set:scaling" and m == "unique_trigrams")
    assert [n for n, _ in curve][-1] == 200 and len(curve) == 3
    assert all(n == v for n, v in curve)
    assert 5 <= curve[0][0] <= 40 and 60 <= curve[1][0] <= 140
    assert {(d, n) for (d, m, n) in stats if m == "captions" and d.startswith("train")} == {
        ("train_set:scaling", n) for n, _ in curve}
    taggers = {r.tagger for r in lake.read("text_stats").where("metric = 'unique_nouns'")
               .collect()}
    assert taggers == {result.tagger} and "lingua" in result.tagger
    # The report: markdown and four non-empty PNGs.
    report = tmp_path / "report"
    text = (report / "report.md").read_text()
    assert "train_set:scaling" in text and "captioner:cap" in text
    for name in ("fig3_words_grounding.png", "fig4_similarity.png", "fig5_noise_diversity.png",
                 "fig12_scaling.png"):
        data = (report / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    # Re-running one set replaces its rows only, never duplicating a key.
    run(spark, cfg, datasets=["raw"], subset_sizes=[2], scorer="clip", report=False)
    after = lake.read("text_stats")
    for name in ("train_set:scaling", "captioner:cap"):
        assert after.where(f"dataset = '{name}'").count() == len(
            [k for k in stats if k[0] == name])
    assert after.groupBy("dataset", "metric", "subset_size").count().where("count > 1").count() == 0
    assert after.where("dataset = 'raw' AND metric = 'captions' AND subset_size = 4").count() == 1


def test_stats_bad_input(spark, cfg):
    from jobs.stats import run

    with pytest.raises(InputError, match="no caption sets"):
        run(spark, cfg, report=False)
    _lake(spark, cfg)
    with pytest.raises(InputError, match="unknown caption set"):
        run(spark, cfg, datasets=["nope"], report=False)


# --------------------------------------------------------------------------------------------
# Executors need no lexicon (the driver ships the tagger with the UDF)


def _lexicon_copy(tmp_path):
    import shutil

    from capmix.tagger import LINGUA_DIR

    lexicon = tmp_path / "lexicon"
    lexicon.mkdir()
    for name in ("tags.yml", "words.yml", "unknown.yml"):
        shutil.copy(f"{LINGUA_DIR}/{name}", lexicon / name)
    return lexicon


def test_shipped_tagger_tags_on_workers_without_the_lexicon(spark, tmp_path):
    import shutil

    from pyspark.sql import functions as F

    from capmix.tagger import ship

    lexicon = _lexicon_copy(tmp_path)
    shipped = ship("lingua-hmm", str(lexicon))  # the driver reads the lexicon once
    shutil.rmtree(lexicon)  # ... and from here on nobody can
    assert "lingua" in shipped.name and len(shipped.payload) < 2_000_000
    texts = ["two dogs playing with a frisbee in the park", "a cat on a couch", None]
    df = spark.createDataFrame([(t,) for t in texts], "text STRING").repartition(2)
    got = {r.text: r.f.nouns for r in df.select(
        "text", ts.python_features_udf(shipped.payload)(F.col("text")).alias("f")).collect()}
    assert got == {"two dogs playing with a frisbee in the park": ["dogs", "frisbee", "park"],
                   "a cat on a couch": ["cat", "couch"], None: []}


def test_stats_without_a_lexicon_is_one_line_and_exit_2(spark, cfg, tmp_path, capsys):
    from capmix.cli import main

    _lake(spark, cfg)
    rc = main(["stats", "--lake", cfg.lake.path, "--tagger", "lingua-hmm", "--no-report",
               "--set", f"stats.lingua_lexicon={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("capmix stats: config error: stats.lingua_lexicon:")
    assert "liblingua-en-tagger-perl" in err[0]
    from capmix.lake import open_lake

    assert not open_lake(spark, cfg.lake).exists("text_stats")  # refused before writing
