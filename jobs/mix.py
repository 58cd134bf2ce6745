"""Mix raw and synthetic captions into a named train set with one strategy of sql/ (Tables 4-5).

    capmix mix --strategy raw_top_plus_synthetic_filtered --percent 30 --captioner blip2
    capmix mix --strategy best_synthetic --captioners blip2_t0.5,blip2_t1.0 --name best_temps
    capmix mix --strategy raw_top --percent 30 --intersect-clusters

Each strategy is one parameterized query, `sql/<strategy>.sql`, over `scores` (and `clusters`).
Its rows replace the train set of that name in `train_sets` in one atomic commit; the run (its
parameters, thresholds, rows and images) is recorded in `mix_runs` under the same name.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import Lake, open_lake
from capmix.resources import resource_dir
from capmix.tables import CLUSTERS, MIX_RUNS, TRAIN_SETS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")


@dataclass(frozen=True)
class Strategy:
    name: str
    # Whose x-th percentile is "the threshold" recorded in mix_runs (None: no filtering).
    threshold_of: Optional[str]
    synthetic: bool = True  # reads sample 0 of one captioner


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("raw", None, synthetic=False),
    Strategy("synthetic", None),
    Strategy("raw_top", "raw", synthetic=False),
    Strategy("synthetic_top", "synthetic"),
    Strategy("synthetic_for_raw_top", "raw"),
    Strategy("raw_top_plus_synthetic", "raw"),
    Strategy("raw_top_plus_synthetic_filtered", "raw"),
    Strategy("synthetic_top_plus_raw_filtered", "synthetic"),
    Strategy("concat_top_plus_synthetic_filtered", "raw"),
    Strategy("raw_top_and_synthetic_top", "raw"),
    Strategy("best_synthetic", "best", synthetic=False),
)}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
_PARAM_RE = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@dataclass(frozen=True)
class MixResult:
    name: str
    strategy: str
    rows: int
    images: int
    threshold: Optional[float]
    params: dict


# --------------------------------------------------------------------------------------------
# The queries


def strategy_sql(name: str) -> str:
    """The text of sql/<name>.sql (a strategy, or `mix_thresholds`)."""
    path = resource_dir("sql") / f"{name}.sql"
    if not path.is_file():
        raise InputError(f"SQL file not found: {path}")
    return path.read_text(encoding="utf-8")


def sql_parameters(text: str) -> set[str]:
    """The named parameter markers (`:percent`) a query uses, comments excluded."""
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    code = re.sub(r"'[^']*'", "''", code)  # ':0' inside a string literal is not a marker
    return set(_PARAM_RE.findall(code))


def run_sql(spark: "SparkSession", text: str, values: dict[str, Any]) -> "DataFrame":
    """Run a parameterized query with the values it uses (Spark rejects missing ones)."""
    used = sql_parameters(text)
    missing = sorted(used - values.keys())
    if missing:
        raise InputError(f"SQL parameters without a value: {', '.join(missing)}")
    return spark.sql(text, args={k: values[k] for k in sorted(used)})


def strategy_values(*, scorer: str, percent: float, captioner: str, captioners: list[str],
                    intersect_clusters: bool) -> dict[str, Any]:
    return {"scorer": scorer, "percent": float(percent), "captioner": captioner,
            "captioners": ",".join(captioners), "intersect_clusters": bool(intersect_clusters)}


def register_inputs(spark: "SparkSession", lake: Lake,
                    scores: Optional["DataFrame"] = None) -> None:
    """`scores` (the lake's, or the given frame) and `clusters` as temp views under the names
    the SQL uses (an empty `clusters` when the filter was never run: the queries reference it
    even when the filter is off)."""
    (lake.read("scores") if scores is None else scores).createOrReplaceTempView("scores")
    if lake.exists("clusters"):
        lake.read("clusters").createOrReplaceTempView("clusters")
    else:
        spark.createDataFrame([], CLUSTERS.schema()).createOrReplaceTempView("clusters")


# --------------------------------------------------------------------------------------------
# The job


def default_name(strategy: str, percent: float, intersect_clusters: bool) -> str:
    """`raw_top_30`, `best_synthetic`, `raw_top_30_clusters`: distinct runs keep distinct sets."""
    name = strategy
    if STRATEGIES[strategy].threshold_of is not None and not (
            strategy == "best_synthetic" and percent == 100):
        name += f"_{percent:g}"
    return name + ("_clusters" if intersect_clusters else "")


def check_inputs(strategy: str, percent: float, name: Optional[str]) -> None:
    """Argument checks that need no I/O."""
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
    if not 0 < percent <= 100:
        raise InputError(f"--percent must be in (0, 100], got {percent:g}")
    if name is not None and not _NAME_RE.match(name):
        raise InputError(f"--name {name!r}: use letters, digits and _ . : - (at most 200)")


def run(spark: "SparkSession", cfg: Config, strategy: str, *, percent: Optional[float] = None,
        captioner: Optional[str] = None, captioners: Optional[list[str]] = None,
        scorer: Optional[str] = None, intersect_clusters: Optional[bool] = None,
        name: Optional[str] = None) -> MixResult:
    """Build the train set `name` with `strategy`; arguments left None come from `cfg.mix`
    (best_synthetic, "no filtering" in the paper, keeps every image unless `percent` is given)."""
    check_session(spark, "mix")  # Connect / Spark < 4.0: one line, no I/O
    if percent is None:
        percent = 100.0 if strategy == "best_synthetic" else cfg.mix.percent
    percent = float(percent)
    check_inputs(strategy, percent, name)
    spec = STRATEGIES[strategy]
    if spec.threshold_of is None:
        percent = 100.0  # unfiltered: every row, whatever percent the config holds
    captioner = captioner or cfg.mix.captioner or cfg.caption.captioner
    captioners = list(captioners or cfg.mix.captioners or [captioner])
    scorer = scorer or cfg.mix.scorer or cfg.score.scorer
    intersect = cfg.mix.intersect_clusters if intersect_clusters is None else intersect_clusters
    name = name or default_name(strategy, percent, intersect)

    lake = open_lake(spark, cfg.lake)
    lake.require("scores", *(["clusters"] if intersect else []))
    values = strategy_values(scorer=scorer, percent=percent, captioner=captioner,
                             captioners=captioners, intersect_clusters=intersect)

    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    # The lake's `scores` is read once: a strategy query references its CTEs several times
    # (counts, histogram, the threshold's bucket, the picks) and the thresholds recorded in
    # mix_runs need the same rows again, so each reference would be one more scan of a table of
    # 2+ rows per image (billions at DataComp's scale). The scorer's narrow rows are kept by
    # Spark instead (memory, spilling to local disk), and the train set is computed once into
    # the same store, counted there and written from there.
    scored = (lake.read("scores").where(F.col("scorer") == scorer)
              .select("uid", "source", "scorer", "text", "similarity")
              .persist(StorageLevel.MEMORY_AND_DISK))
    picked = None
    try:
        _check_sources(lake, scored, spec, scorer, captioner, captioners)
        register_inputs(spark, lake, scored)
        cuts = run_sql(spark, strategy_sql("mix_thresholds"), values).first().asDict()
        picked = (run_sql(spark, strategy_sql(strategy), values).withColumn("name", F.lit(name))
                  .persist(StorageLevel.MEMORY_AND_DISK))
        size = picked.agg(F.count(F.lit(1)).alias("rows"),
                          F.countDistinct("uid").alias("images")).first()
        lake.replace_where("train_sets", TRAIN_SETS.conform(picked), f"name = '{name}'")
    finally:
        for frame in (picked, scored):
            if frame is not None:
                frame.unpersist()
    threshold = None if spec.threshold_of is None else cuts[f"{spec.threshold_of}_threshold"]
    params = {"scorer": scorer, "percent": percent, "captioner": captioner,
              "captioners": captioners, "intersect_clusters": intersect, **cuts}
    result = MixResult(name, strategy, int(size["rows"]), int(size["images"]), threshold, params)
    _record(spark, lake, result, spec)
    log.info("[mix] %s: %s rows, %s images (strategy %s, threshold %s)", name,
             f"{result.rows:,}", f"{result.images:,}", strategy,
             "-" if threshold is None else f"{threshold:.4f}")
    return result


def _check_sources(lake: Lake, scored: "DataFrame", spec: Strategy, scorer: str,
                   captioner: str, captioners: list[str]) -> None:
    """One clear error, before anything is written, when the scores the strategy needs are not
    there (a typo in a captioner name would otherwise write an empty train set). `scored` is
    the scorer's rows; the lake's other scorers are looked up only to name them in the error."""
    found = {(scorer, r["source"]) for r in scored.select("source").distinct().collect()}
    if not found:
        found = {(r["scorer"], r["source"]) for r in
                 lake.read("scores").select("scorer", "source").distinct().collect()}
    scorers = sorted({s for s, _ in found})
    if scorer not in scorers:
        raise InputError(f"no scores by scorer {scorer!r} in `scores` (scorers: "
                         f"{', '.join(scorers) or 'none'})")
    sources = sorted(src for s, src in found if s == scorer)
    needed = []
    if spec.name == "best_synthetic":
        have = {src.rsplit(":", 1)[0] for src in sources if ":" in src}
        needed = [c for c in captioners if c not in have]
    elif spec.synthetic and f"{captioner}:0" not in sources:
        needed = [captioner]
    if needed:
        raise InputError(f"no synthetic captions of {', '.join(map(repr, needed))} scored by "
                         f"{scorer!r} (sources in `scores`: {', '.join(sources)})")


def _record(spark: "SparkSession", lake: Lake, result: MixResult, spec: Strategy) -> None:
    row = {
        "name": result.name, "strategy": result.strategy,
        "percent": None if spec.threshold_of is None else result.params["percent"],
        "captioner": (",".join(result.params["captioners"]) if spec.name == "best_synthetic"
                      else result.params["captioner"] if spec.synthetic else None),
        "scorer": result.params["scorer"],
        "intersect_clusters": result.params["intersect_clusters"],
        "threshold": result.threshold, "rows": result.rows, "images": result.images,
        "params": json.dumps(result.params, sort_keys=True, default=str),
        "created_at": datetime.now(timezone.utc).replace(tzinfo=None),
    }
    df = spark.createDataFrame([row], MIX_RUNS.schema())
    lake.merge("mix_runs", df, MIX_RUNS.keys, update=True)


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", required=True, choices=sorted(STRATEGIES),
                        metavar="NAME", help="one of: " + ", ".join(STRATEGIES))
    parser.add_argument("--percent", type=float,
                        help="x of top x%% (default mix.percent, 30; raw and synthetic "
                             "ignore it; best_synthetic keeps all unless it is given)")
    parser.add_argument("--captioner", help="synthetic = sample 0 of this captioner "
                                            "(default mix.captioner, else caption.captioner)")
    parser.add_argument("--captioners", help="best_synthetic: comma-separated captioners")
    parser.add_argument("--scorer", help="whose scores (default mix.scorer, else score.scorer)")
    parser.add_argument("--intersect-clusters", action="store_true", default=None,
                        help="keep only images in the clusters `capmix cluster` kept")
    parser.add_argument("--name", help="the train set's name (default: strategy_percent)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"mix.percent": args.percent, "mix.captioner": args.captioner,
            "mix.captioners": args.captioners.split(",") if args.captioners else None,
            "mix.scorer": args.scorer, "mix.intersect_clusters": args.intersect_clusters}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    check_inputs(args.strategy, cfg.mix.percent, args.name)


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    result = run(spark, cfg, args.strategy, percent=args.percent, name=args.name)
    print(json.dumps({k: v for k, v in asdict(result).items() if k != "params"}))
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.mix", argv)


if __name__ == "__main__":
    sys.exit(main())
