"""Load a DataComp pool's own CLIP data (parquet + aligned .npz per shard, capmix/datacomp.py)
into `image_embeddings` and `scores` (raw captions), under the scorer whose weights made them, so
`capmix score --scorer vit-l-14` then runs only the text tower for the synthetic captions.

    capmix ingest-embeddings /data/datacomp/medium/metadata                # l14 and b32
    capmix ingest-embeddings META --towers l14=vit-l-14                     # one tower

Checked on the driver before anything is written, from parquet footers and npy headers only:
every parquet has its .npz, row counts agree, each tower's dimension is its scorer's and a
DataComp tower goes to a scorer of its architecture and weights. Per-row uid problems (missing,
repeated, differing from the npz's own uids) stop the run before the commit group holding them.
The similarity recomputed from the stored (unit) vectors is compared with the shard's score
column; the summary says how many rows disagree by more than 1e-4, and `scores` keeps the
recomputed value, as the score job stores the cosine of the vectors it stores.

One Spark task per shard (no npz is ever read on the driver); shards are committed
`units_per_commit` at a time, each group one append to each table with a Delta transaction id,
and `origin` (`datacomp:<npz path>#<prefix>`) records where every embedding came from, so a
re-run skips the shards already in `image_embeddings` for that scorer.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from capmix import datacomp
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import Lake, Txn, open_lake
from capmix.tables import IMAGE_EMBEDDINGS, SCORES

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")
DEFAULT_TOWERS = {"l14": "vit-l-14", "b32": "vit-b-32"}
ROWS_SCHEMA = ("kind STRING, uid STRING, text STRING, embedding ARRAY<FLOAT>, similarity "
               "DOUBLE, shard STRING, rows BIGINT, disagree BIGINT, problem STRING")


@dataclass
class EmbeddingsSummary:
    shards: int
    skipped: int = 0
    embeddings: dict = field(default_factory=dict)  # scorer -> rows written
    scores: dict = field(default_factory=dict)
    disagree: dict = field(default_factory=dict)    # scorer -> rows beyond the tolerance

    def line(self) -> str:
        parts = [f"{s}: {self.embeddings.get(s, 0):,} image embeddings, "
                 f"{self.scores.get(s, 0):,} raw scores, "
                 + (f"{self.disagree[s]:,} rows whose similarity differs from the shard's "
                    f"score by more than {datacomp.TOLERANCE:g}" if self.disagree.get(s)
                    else "similarities equal the shard's scores")
                 for s in sorted(self.embeddings)]
        done = f" ({self.skipped:,} done before, skipped)" if self.skipped else ""
        return f"ingest-embeddings: {self.shards:,} shards{done}; " + "; ".join(parts)


# -- the driver's checks ----------------------------------------------------------------------
def list_shards(inputs: Sequence[str]) -> list[str]:
    """Metadata parquet files under the inputs (folders, files or globs), sorted."""
    found: list[str] = []
    for item in inputs:
        paths = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not paths or not all(os.path.exists(p) for p in paths):
            raise InputError(f"metadata not found: {item}")
        for p in paths:
            found += (sorted(os.path.join(p, n) for n in os.listdir(p) if n.endswith(".parquet"))
                      if os.path.isdir(p) else [p] if p.endswith(".parquet") else [])
    if not found:
        raise InputError(f"no metadata parquet files in: {', '.join(inputs)}")
    return sorted({os.path.abspath(p) for p in found})


def parse_towers(text: Optional[str]) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        prefix, eq, scorer = part.strip().partition("=")
        if not eq or not prefix or not scorer:
            raise InputError(f"--towers wants PREFIX=SCORER[,PREFIX=SCORER], got {part!r}")
        out[prefix] = scorer
    return out


def scorer_dim(spec: Any) -> int:
    """The embedding dimension of a scorer, from its open_clip config (no weights loaded)."""
    from capmix.models import register_model_configs

    register_model_configs()
    import open_clip

    config = open_clip.get_model_config(spec.source)
    if config is None:
        raise InputError(f"scorer {spec.name!r}: open_clip has no config for {spec.source!r}")
    return int(config["embed_dim"])


def check_towers(towers: dict[str, str], cfg: Config) -> dict[str, Any]:
    """prefix -> resolved scorer spec; InputError when a DataComp tower names another model."""
    from capmix.models import resolve

    specs = {}
    for prefix, name in towers.items():
        spec = resolve(name, "scorer", None, key="ingest_embeddings.towers")
        known = datacomp.KNOWN_TOWERS.get(prefix)
        if known and (spec.source, spec.pretrained) != known:
            raise InputError(f"model mismatch: {prefix} embeddings come from open_clip "
                             f"{known[0]}/{known[1]}, scorer {name!r} is {spec.model_id}")
        specs[prefix] = spec
    return specs


def check_shards(shards: list[str], specs: dict[str, Any]) -> dict[str, Any]:
    """Every shard against every tower (footers and headers only). Towers taken by default are
    dropped when no shard has them; a named one must be in every shard."""
    dims = {p: scorer_dim(s) for p, s in specs.items()}
    for shard in shards:
        try:
            found = datacomp.check_shard(shard, list(specs))
        except ValueError as exc:
            raise InputError(str(exc)) from None
        for prefix, dim in found.dims.items():
            if dim != dims[prefix]:
                raise InputError(f"dimension mismatch: {os.path.basename(shard)}'s {prefix} "
                                 f"embeddings have {dim}; scorer {specs[prefix].name!r} has "
                                 f"{dims[prefix]}")
    return specs


def available_towers(shards: list[str]) -> dict[str, str]:
    """The default towers the first shard holds (DataComp's l14 and b32)."""
    shapes = datacomp.npz_shapes(datacomp.npz_path(shards[0])) if os.path.isfile(
        datacomp.npz_path(shards[0])) else {}
    have = {p: s for p, s in DEFAULT_TOWERS.items() if f"{p}_img" in shapes}
    if not have:
        raise InputError(f"{os.path.basename(datacomp.npz_path(shards[0]))}: no l14/b32 "
                         "embeddings; name the towers with --towers PREFIX=SCORER")
    return have


# -- the executors' pass ----------------------------------------------------------------------
def _arrow_schema() -> "pa.Schema":
    import pyarrow as pa

    return pa.schema([("kind", pa.string()), ("uid", pa.string()), ("text", pa.string()),
                      ("embedding", pa.list_(pa.float32())), ("similarity", pa.float64()),
                      ("shard", pa.string()), ("rows", pa.int64()), ("disagree", pa.int64()),
                      ("problem", pa.string())])


def shard_rows(batches: Iterator["pa.RecordBatch"], prefix: str) -> Iterator["pa.RecordBatch"]:
    """One row per embedding, one per raw caption and one report row per shard, all with the
    same Arrow schema (Spark's writer refuses a batch whose schema differs)."""
    import numpy as np
    import pyarrow as pa

    schema = _arrow_schema()

    for batch in batches:
        for shard in batch.column(0).to_pylist():
            data = datacomp.read_shard(shard, prefix)
            n = len(data.uids)
            flat = pa.array(data.img.reshape(-1), pa.float32())
            vectors = pa.FixedSizeListArray.from_arrays(flat, data.img.shape[1]).cast(
                pa.list_(pa.float32()))
            with_text = [i for i, t in enumerate(data.texts) if t is not None]
            none = pa.nulls(n, pa.string())
            yield pa.RecordBatch.from_pydict({
                "kind": ["embedding"] * n, "uid": data.uids, "text": none,
                "embedding": vectors, "similarity": pa.nulls(n, pa.float64()),
                "shard": [shard] * n, "rows": pa.nulls(n, pa.int64()),
                "disagree": pa.nulls(n, pa.int64()), "problem": none}, schema=schema)
            m = len(with_text)
            yield pa.RecordBatch.from_pydict({
                "kind": ["score"] * m, "uid": [data.uids[i] for i in with_text],
                "text": [data.texts[i] for i in with_text],
                "embedding": pa.nulls(m, pa.list_(pa.float32())),
                "similarity": data.similarity[np.asarray(with_text, dtype=int)],
                "shard": [shard] * m, "rows": pa.nulls(m, pa.int64()),
                "disagree": pa.nulls(m, pa.int64()), "problem": pa.nulls(m, pa.string())},
                schema=schema)
            yield pa.RecordBatch.from_pydict({
                "kind": ["report"], "uid": pa.nulls(1, pa.string()),
                "text": pa.nulls(1, pa.string()),
                "embedding": pa.nulls(1, pa.list_(pa.float32())),
                "similarity": pa.nulls(1, pa.float64()), "shard": [shard], "rows": [n],
                "disagree": [data.disagree], "problem": [data.problem]}, schema=schema)


def group_rows(spark: "SparkSession", shards: list[str], prefix: str) -> "DataFrame":
    frame = spark.createDataFrame(spark.sparkContext.parallelize([(s,) for s in shards],
                                                                 len(shards)), "shard STRING")
    return frame.mapInArrow(partial(shard_rows, prefix=prefix), ROWS_SCHEMA)


def _done_shards(lake: Lake, scorer: str, prefix: str) -> set[str]:
    if not lake.exists("image_embeddings"):
        return set()
    from pyspark.sql import functions as F

    origins = (lake.read("image_embeddings").where(F.col("scorer") == scorer)
               .where(F.col("origin").startswith("datacomp:")).select("origin").distinct())
    tail = f"#{prefix}"
    return {o[len("datacomp:"): -len(tail)].replace(".npz", ".parquet")
            for (o,) in origins.collect() if o.endswith(tail)}


def ingest_tower(spark: "SparkSession", lake: Lake, shards: list[str], prefix: str,
                 scorer: str, per: int, summary: EmbeddingsSummary) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from capmix.scoring import CLIP_S_WEIGHT

    done = _done_shards(lake, scorer, prefix)
    todo = [s for s in shards if s not in done]
    summary.skipped += len(shards) - len(todo)
    # One app id per (scorer, tower, input list): versions are group numbers on its grid, so a
    # re-run of the same inputs commits each group to each table exactly once.
    digest = hashlib.sha1("\n".join(shards).encode()).hexdigest()[:12]
    app = f"capmix:ingest-embeddings:{scorer}:{prefix}:{digest}"
    for number, start in enumerate(range(0, len(shards), per)):
        group = [s for s in shards[start:start + per] if s in set(todo)]
        if not group:
            continue
        rows = group_rows(spark, group, prefix).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            reports = rows.where("kind = 'report'").select("shard", "disagree", "problem").collect()
            problems = [r["problem"] for r in reports if r["problem"]]
            if problems:
                raise InputError(problems[0] + (f" (and {len(problems) - 1} more shard(s))"
                                                if len(problems) > 1 else ""))
            now = F.current_timestamp().alias("created_at")
            scores = SCORES.conform(rows.where("kind = 'score'").select(
                "uid", F.lit("raw").alias("source"), F.lit(scorer).alias("scorer"), "text",
                "similarity",
                (F.lit(CLIP_S_WEIGHT) * F.greatest("similarity", F.lit(0.0))).alias("clip_s"),
                now))
            embeddings = IMAGE_EMBEDDINGS.conform(rows.where("kind = 'embedding'").select(
                "uid", F.lit(scorer).alias("scorer"), "embedding",
                F.concat(F.lit("datacomp:"), F.regexp_replace("shard", r"\.parquet$", ".npz"),
                         F.lit(f"#{prefix}")).alias("origin"), now))
            # Scores first: `origin` in image_embeddings is what marks a shard done.
            summary.scores[scorer] = summary.scores.get(scorer, 0) + (
                lake.append("scores", scores, Txn(app, number)) or 0)
            summary.embeddings[scorer] = summary.embeddings.get(scorer, 0) + (
                lake.append("image_embeddings", embeddings, Txn(app, number)) or 0)
            summary.disagree[scorer] = summary.disagree.get(scorer, 0) + sum(
                int(r["disagree"]) for r in reports)
        finally:
            rows.unpersist()
        log.info("ingest-embeddings %s: group %d (%d shards) committed", scorer, number,
                 len(group))


def run(spark: "SparkSession", cfg: Config, inputs: Sequence[str],
        towers: Optional[dict[str, str]] = None,
        units_per_commit: Optional[int] = None) -> EmbeddingsSummary:
    """Ingest the towers (prefix -> scorer; default: the l14/b32 ones the shards hold)."""
    shards = list_shards(inputs)
    specs = check_shards(shards, check_towers(towers or available_towers(shards), cfg))
    lake = open_lake(spark, cfg.lake)
    per = units_per_commit or cfg.ingest.units_per_commit or max(
        1, spark.sparkContext.defaultParallelism)
    summary = EmbeddingsSummary(len(shards))
    for prefix, spec in specs.items():
        ingest_tower(spark, lake, shards, prefix, spec.name, per, summary)
        summary.embeddings.setdefault(spec.name, 0)
    log.info(summary.line())
    return summary


# -- command line -----------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="METADATA",
                        help="metadata folders, parquet files or globs (an .npz beside each)")
    parser.add_argument("--towers", metavar="PREFIX=SCORER,...",
                        help="which embeddings under which scorer (default l14=vit-l-14,"
                             "b32=vit-b-32, those the shards hold)")
    parser.add_argument("--units-per-commit", type=int, metavar="N",
                        help="shards per atomic commit (default: Spark's parallelism)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    """Every check that needs no Spark (shards, towers, dimensions), before the session."""
    shards = list_shards(args.inputs)
    towers = parse_towers(args.towers) or available_towers(shards)
    check_shards(shards, check_towers(towers, cfg))


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    summary = run(spark, cfg, args.inputs, parse_towers(args.towers), args.units_per_commit)
    print(summary.line(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.ingest_embeddings", argv)


if __name__ == "__main__":
    sys.exit(main())
