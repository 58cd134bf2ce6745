"""Caption quality and diversity per caption set -> `text_stats`, and the report (paper, Sec. 6).

    capmix stats                         # raw, every captioner, every train set; then the report
    capmix stats --datasets raw,captioner:blip2 --subset-sizes 1000,10000 --report-dir report

Caption sets: `raw` (raw captions from `scores`, else from `pool`), `captioner:NAME` (sample 0 of
each captioner in `captions`, with its scores) and `train_set:NAME` (each set in `train_sets`).
Metrics per set (rows of `text_stats`, `subset_size` = the number of captions measured):
captions, words_{mean,p05,p25,p50,p75,p95}, grounding_{mean,p05,...}, similarity_{mean,p05,...}
and similarity_hist_{lower bin edge} (share of captions per 0.01-wide cosine bin), unique_trigrams,
unique_nouns (with the tagger that produced them in `tagger`). The scaling curves (Figure 12):
unique_trigrams, unique_nouns and captions again on nested random subsets of about the
configured sizes: a caption belongs to every subset whose share of the set exceeds its seeded
hash, so the subsets grow with the size and one pass of Spark measures them all.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import Lake, open_lake
from capmix.tables import TEXT_STATS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_WIDTH = 0.01
_HASH_RANGE = 1 << 53  # the uniform draw: a 53-bit slice of xxhash64, exact in a double


@dataclass(frozen=True)
class StatsResult:
    datasets: list[str]
    rows: int
    tagger: str
    report: Optional[str]


# --------------------------------------------------------------------------------------------
# Caption sets


def caption_sets(spark: "SparkSession", lake: Lake, scorer: str) -> dict[str, "DataFrame"]:
    """Every caption set in the lake, each as DataFrame[uid, text, similarity]."""
    from pyspark.sql import functions as F

    sets: dict[str, "DataFrame"] = {}
    scores = (lake.read("scores").where(F.col("scorer") == scorer)
              if lake.exists("scores") else None)
    raw = None
    if scores is not None:
        raw = scores.where(F.col("source") == "raw").select("uid", "text", "similarity")
        if raw.limit(1).count() == 0:
            raw = None
    if raw is None and lake.exists("pool"):
        raw = (lake.read("pool").where("status = 'ok' AND text IS NOT NULL")
               .select("uid", "text", F.lit(None).cast("double").alias("similarity")))
    if raw is not None:
        sets["raw"] = raw
    if lake.exists("captions"):
        captions = lake.read("captions").where(F.col("sample") == 0)
        for (name,) in sorted(captions.select("captioner").distinct().collect()):
            texts = captions.where(F.col("captioner") == name).select("uid", "text")
            if scores is not None:
                sims = scores.where(F.col("source") == f"{name}:0").select("uid", "similarity")
                texts = texts.join(sims, "uid", "left")
            else:
                texts = texts.withColumn("similarity", F.lit(None).cast("double"))
            sets[f"captioner:{name}"] = texts
    if lake.exists("train_sets"):
        train = lake.read("train_sets")
        for (name,) in sorted(train.select("name").distinct().collect()):
            sets[f"train_set:{name}"] = (train.where(F.col("name") == name)
                                         .select("uid", "text", "similarity"))
    return sets


# --------------------------------------------------------------------------------------------
# Per-caption features, then aggregates


def with_features(df: "DataFrame", seed: int, tagger: bytes) -> "DataFrame":
    """Per-caption features; `tagger` is `capmix.tagger.ship(...).payload` (the driver's)."""
    from pyspark.sql import functions as F

    from udfs.text_stats import python_features_udf, trigrams_column, words_column

    py = python_features_udf(tagger)
    draw = F.pmod(F.xxhash64(F.lit(seed), "uid", "text"), F.lit(_HASH_RANGE)) / float(_HASH_RANGE)
    return (df.withColumn("u", draw)
            .withColumn("words", words_column(F.col("text")))
            .withColumn("n_words", F.size("words"))
            .withColumn("trigrams", trigrams_column(F.col("words")))
            .withColumn("py", py(F.col("text")))
            .withColumn("nouns", F.col("py.nouns"))
            .withColumn("grounding", F.when(F.col("n_words") > 0,
                                            F.col("py.visual") / F.col("n_words")))
            .drop("py", "words"))


def measure(feats: "DataFrame", subset_sizes: list[int]) -> list[tuple[str, int, float]]:
    """(metric, subset_size, value) for one caption set whose features are `feats`."""
    from pyspark.sql import functions as F

    qs = F.array(*[F.lit(q) for q in QUANTILES])
    n = feats.count()
    if n == 0:
        return [("captions", 0, 0.0)]
    shares = sorted({min(s, n) / n for s in subset_sizes if s < n})
    first = feats.agg(
        F.avg("n_words").alias("words_mean"), F.percentile("n_words", qs).alias("words_q"),
        F.avg("grounding").alias("grounding_mean"),
        F.percentile_approx("grounding", qs, 10000).alias("grounding_q"),
        F.count("similarity").alias("scored"), F.avg("similarity").alias("similarity_mean"),
        F.percentile_approx("similarity", qs, 10000).alias("similarity_q"),
        *[F.sum(F.when(F.col("u") < s, 1).otherwise(0)).alias(f"sub{i}")
          for i, s in enumerate(shares)]).first()
    out = [("captions", n, float(n))]
    for key in ("words", "grounding", "similarity"):
        if first[f"{key}_mean"] is not None:
            out.append((f"{key}_mean", n, float(first[f"{key}_mean"])))
            out += [(f"{key}_p{round(q * 100):02d}", n, float(v))
                    for q, v in zip(QUANTILES, first[f"{key}_q"] or [])]
    if first["scored"]:
        out.append(("scored", n, float(first["scored"])))
        bins = (feats.where(F.col("similarity").isNotNull())
                # The epsilon keeps 0.30 in the 0.30 bin despite 0.30 / 0.01 = 29.999...
                .groupBy(F.floor(F.col("similarity") / HIST_WIDTH + 1e-9).alias("b"))
                .count().collect())
        out += [(f"similarity_hist_{b * HIST_WIDTH:+.2f}", n, c / first["scored"])
                for b, c in sorted(bins)]
    sizes = [int(first[f"sub{i}"]) for i in range(len(shares))]
    out += [("captions", size, float(size)) for size in sizes if 0 < size < n]
    for metric, counts in _unique_counts(feats, shares).items():
        out.append((metric, n, float(counts[0])))
        out += [(metric, size, float(c)) for size, c in zip(sizes, counts[1:]) if 0 < size < n]
    return _first_per_key(out)


def _unique_counts(feats: "DataFrame", shares: list[float]) -> dict[str, list[int]]:
    """Distinct trigrams and nouns in the whole set and in each nested subset, in one shuffle:
    a value is in subset s iff the smallest draw `u` of the captions holding it is below s."""
    from pyspark.sql import functions as F

    tagged = F.concat(F.transform("trigrams", lambda t: F.concat(F.lit("t"), t)),
                      F.transform("nouns", lambda t: F.concat(F.lit("n"), t)))
    per_value = (feats.select("u", F.explode(tagged).alias("g")).groupBy("g")
                 .agg(F.min("u").alias("mu")).withColumn("kind", F.substring("g", 1, 1)))
    rows = {r["kind"]: r for r in per_value.groupBy("kind").agg(
        F.count(F.lit(1)).alias("all"),
        *[F.sum(F.when(F.col("mu") < s, 1).otherwise(0)).alias(f"s{i}")
          for i, s in enumerate(shares)]).collect()}
    out = {}
    for metric, kind in (("unique_trigrams", "t"), ("unique_nouns", "n")):
        row = rows.get(kind)
        out[metric] = [int(row["all"]) if row else 0] + [
            int(row[f"s{i}"]) if row else 0 for i in range(len(shares))]
    return out


def _first_per_key(rows: list[tuple[str, int, float]]) -> list[tuple[str, int, float]]:
    seen, out = set(), []
    for row in rows:
        if row[:2] not in seen:
            seen.add(row[:2])
            out.append(row)
    return out


# --------------------------------------------------------------------------------------------
# The job


def run(spark: "SparkSession", cfg: Config, datasets: Optional[list[str]] = None,
        subset_sizes: Optional[list[int]] = None, scorer: Optional[str] = None,
        report_dir: Optional[str] = None, report: bool = True) -> StatsResult:
    """Measure the caption sets (default `stats.datasets`, empty: all), write `text_stats`, and
    the report (markdown + PNG figures) under `report_dir` (default `stats.report_dir`)."""
    check_session(spark, "stats")  # Connect / Spark < 4.0: one line, no I/O
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from capmix.progress import Progress
    from capmix.tagger import ship

    wanted = list(datasets if datasets is not None else cfg.stats.datasets)
    sizes = list(subset_sizes if subset_sizes is not None else cfg.stats.subset_sizes)
    if any(s <= 0 for s in sizes):
        raise InputError("subset sizes must be positive")
    # The driver loads the tagger once and ships it with the UDF: executors need no lexicon.
    shipped = ship(cfg.stats.tagger, cfg.stats.lingua_lexicon)
    tagger = shipped.name
    lake = open_lake(spark, cfg.lake)
    available = caption_sets(spark, lake, scorer or cfg.score.scorer)
    if not available:
        raise InputError(f"no caption sets in lake {cfg.lake.path}: stats reads pool, scores, "
                         "captions and train_sets")
    unknown = [d for d in wanted if d not in available]
    if unknown:
        raise InputError(f"unknown caption set(s) {', '.join(unknown)}; available: "
                         f"{', '.join(available)}")
    names = wanted or list(available)
    progress = Progress("stats", len(names), "sets", every_s=0)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    rows: list[dict[str, Any]] = []
    for name in names:
        feats = with_features(available[name], cfg.stats.seed,
                              shipped.payload).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            for metric, size, value in measure(feats, sizes):
                rows.append({"dataset": name, "metric": metric, "subset_size": size,
                             "value": value, "created_at": now,
                             "tagger": tagger if metric == "unique_nouns" else None})
        finally:
            feats.unpersist()
        progress.advance(1, name)
    quoted = ", ".join("'" + n.replace("'", "''") + "'" for n in names)
    df = spark.createDataFrame(rows, TEXT_STATS.schema())
    lake.replace_where("text_stats", TEXT_STATS.conform(df), f"dataset IN ({quoted})")
    written = None
    if report:
        from capmix.report import write_report

        written = str(write_report(lake.read("text_stats").where(
            F.col("dataset").isin(names)).toPandas(), report_dir or cfg.stats.report_dir))
    log.info("[stats] %d caption sets, %d rows in text_stats (nouns: %s)%s", len(names),
             len(rows), tagger, f"; report {written}" if written else "")
    return StatsResult(names, len(rows), tagger, written)


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datasets", help="comma-separated caption sets (default: all), e.g. "
                                           "raw,captioner:blip2,train_set:raw_top_30")
    parser.add_argument("--subset-sizes", help="comma-separated subset sizes for the scaling "
                                               "curves (default stats.subset_sizes)")
    parser.add_argument("--scorer", help="whose similarities (default score.scorer)")
    parser.add_argument("--tagger", choices=["auto", "nltk", "lingua-hmm"])
    parser.add_argument("--report-dir", help="where the report goes (default stats.report_dir)")
    parser.add_argument("--no-report", action="store_true", help="only write text_stats")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    sizes = None
    if args.subset_sizes:
        try:
            sizes = [int(s) for s in args.subset_sizes.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--subset-sizes expects integers, got {args.subset_sizes!r}") \
                from None
    return {"stats.datasets": args.datasets.split(",") if args.datasets else None,
            "stats.subset_sizes": sizes, "stats.tagger": args.tagger,
            "stats.report_dir": args.report_dir}


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    result = run(spark, cfg, scorer=args.scorer, report=not args.no_report)
    print(json.dumps({"datasets": result.datasets, "rows": result.rows,
                      "tagger": result.tagger, "report": result.report}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.stats", argv)


if __name__ == "__main__":
    sys.exit(main())
