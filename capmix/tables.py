"""The table contract (design.md, "Stages and tables"): schemas and keys of every lake table.

Stages build their output with these schemas, so a table written by one stage always has the
columns the next one reads, and SQL in `sql/` can rely on them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType


@dataclass(frozen=True)
class TableSpec:
    name: str
    keys: tuple[str, ...]
    ddl: str  # Spark DDL, the column order of the table

    def schema(self) -> "StructType":
        from pyspark.sql.types import StructType

        return StructType.fromDDL(self.ddl)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.schema().fields]

    def conform(self, df: "DataFrame") -> "DataFrame":
        """The contract's columns, in order and type; a missing column is a programming error."""
        schema = self.schema()
        missing = [f.name for f in schema.fields if f.name not in df.columns]
        if missing:
            raise ValueError(f"{self.name}: missing columns {missing}")
        return df.select(*[df[f.name].cast(f.dataType).alias(f.name) for f in schema.fields])


POOL = TableSpec(
    "pool", ("uid",),
    "uid STRING, key STRING, url STRING, text STRING, image BINARY, width INT, height INT, "
    "format STRING, sha256 STRING, status STRING, error STRING, warnings STRING, meta STRING, "
    "source STRING, ingested_at TIMESTAMP")

CAPTIONS = TableSpec(
    "captions", ("uid", "captioner", "sample"),
    "uid STRING, captioner STRING, sample INT, text STRING, model STRING, prompt STRING, "
    "temperature DOUBLE, top_k INT, min_length INT, max_length INT, seed BIGINT, "
    "created_at TIMESTAMP")

# source: 'raw' or 'CAPTIONER:SAMPLE' (split at the last ':'); similarity: cosine of the
# normalised image and text embeddings; clip_s: CLIP-S = 2.5 * max(similarity, 0), stored.
SCORES = TableSpec(
    "scores", ("uid", "source", "scorer"),
    "uid STRING, source STRING, scorer STRING, text STRING, similarity DOUBLE, clip_s DOUBLE, "
    "created_at TIMESTAMP")

# embedding: L2-normalised (unit length) float32, so a cosine is a dot product. origin: where it
# came from: 'capmix:score' (embedded by the score job) or 'datacomp:<npz>#<prefix>' (a pool's
# own precomputed embeddings, jobs/ingest_embeddings.py).
IMAGE_EMBEDDINGS = TableSpec(
    "image_embeddings", ("uid", "scorer"),
    "uid STRING, scorer STRING, embedding ARRAY<FLOAT>, origin STRING, created_at TIMESTAMP")

# distance: Euclidean, from the L2-normalised embedding to its (unit-length) nearest centroid.
CLUSTERS = TableSpec(
    "clusters", ("uid",),
    "uid STRING, cluster INT, distance FLOAT, keep BOOLEAN, scorer STRING, k INT, "
    "created_at TIMESTAMP")

# The centroids the latest `clusters` were assigned to: a run is reproducible and auditable.
# model: the scorer whose image embeddings were clustered; sample_size: vectors fitted on.
CLUSTER_CENTROIDS = TableSpec(
    "cluster_centroids", ("id",),
    "id INT, vector ARRAY<FLOAT>, model STRING, k INT, sample_size BIGINT, seed BIGINT, "
    "created_at TIMESTAMP")

MIX_RUNS = TableSpec(
    "mix_runs", ("name",),
    "name STRING, strategy STRING, percent DOUBLE, captioner STRING, scorer STRING, "
    "intersect_clusters BOOLEAN, threshold DOUBLE, rows BIGINT, images BIGINT, params STRING, "
    "created_at TIMESTAMP")

TRAIN_SETS = TableSpec(
    "train_sets", ("name", "uid", "source"),
    "name STRING, uid STRING, source STRING, text STRING, similarity DOUBLE")

TEXT_STATS = TableSpec(
    "text_stats", ("dataset", "metric", "subset_size"),
    "dataset STRING, metric STRING, subset_size BIGINT, value DOUBLE, tagger STRING, "
    "created_at TIMESTAMP")

# One row per (run, task, dataset, metric): task is classification / retrieval / a clip_benchmark
# task; dataset names the evaluation set; step and samples_seen say which checkpoint was scored.
EVAL_RESULTS = TableSpec(
    "eval_results", ("run", "task", "dataset", "metric"),
    "run STRING, task STRING, dataset STRING, metric STRING, value DOUBLE, checkpoint STRING, "
    "step BIGINT, samples_seen BIGINT, data STRING, created_at TIMESTAMP")

SPECS: dict[str, TableSpec] = {s.name: s for s in (
    POOL, CAPTIONS, SCORES, IMAGE_EMBEDDINGS, CLUSTERS, CLUSTER_CENTROIDS, MIX_RUNS, TRAIN_SETS,
    TEXT_STATS, EVAL_RESULTS)}
