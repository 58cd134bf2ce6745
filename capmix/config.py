"""Typed configuration: YAML presets in conf/ -> frozen dataclasses, validated once, before any I/O.

Every section is a dataclass whose field types are the schema: unknown keys, wrong types and
out-of-range values become one `ConfigError` naming the dotted key (exit code 2 in the CLI).
Command-line flags reach the config as dotted overrides (`lake.path=/tmp/l`) applied before
validation, so there is exactly one place where a value is checked.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from capmix.config_run import RunConfig
from capmix.errors import ConfigError
from capmix.errors import check as _check
from capmix.resources import resource_dir

# Table names every stage agrees on (design.md, "Stages and tables"); `lake.tables` may rename them.
TABLES = (
    "pool", "captions", "scores", "image_embeddings", "clusters", "cluster_centroids", "mix_runs",
    "train_sets", "text_stats", "eval_results",
)


@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[*]"
    app_name: str = "capmix"
    driver_memory: str = "4g"
    # None: twice the local cores (small data wants few partitions; a cluster preset sets its own).
    shuffle_partitions: Optional[int] = None
    # Rows per Arrow batch handed to a pandas UDF (spark.sql.execution.arrow.maxRecordsPerBatch).
    arrow_batch_rows: int = 1024
    ui: bool = False
    conf: dict[str, str] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _check(self.shuffle_partitions is None or self.shuffle_partitions > 0,
               f"{key}.shuffle_partitions", "must be a positive integer")
        _check(self.arrow_batch_rows > 0, f"{key}.arrow_batch_rows", "must be a positive integer")


@dataclass(frozen=True)
class LakeConfig:
    # A folder or URI (s3://, abfss://, dbfs:/) holding one Delta table per sub-folder, or a
    # Unity Catalog `catalog.schema` (Databricks; needs the spark backend).
    path: str = "lake"
    # auto: Spark's own Delta Lake when the session has it (a session capmix builds loads the
    # jars `python -m capmix.jars fetch` cached), else delta-rs; spark / delta-rs force one.
    backend: Literal["auto", "spark", "delta-rs"] = "auto"
    tables: dict[str, str] = field(default_factory=dict)
    # Scratch space for a run's staged work (pending keys and texts per chunk), a folder or URI
    # every executor reaches. None: `<path>/_capmix_work`, or for a catalog.schema lake
    # dbfs:/tmp/capmix_work/<catalog.schema>.
    work_path: Optional[str] = None

    def validate(self, key: str) -> None:
        _check(bool(self.path.strip()), f"{key}.path", "must not be empty")
        for name in self.tables:
            _check(name in TABLES, f"{key}.tables.{name}",
                   f"unknown table; known tables: {', '.join(TABLES)}")

    def table(self, name: str) -> str:
        return self.tables.get(name, name)


@dataclass(frozen=True)
class IngestConfig:
    inputs: list[str] = field(default_factory=list)
    # auto: .tar -> webdataset shard, folder -> image folder + captions file, .parquet -> parquet.
    format: Literal["auto", "webdataset", "folder", "parquet"] = "auto"
    max_caption_chars: int = 2000
    # Images with more pixels than this are decompression-bomb suspects and ingested as errors.
    max_image_pixels: int = 89_478_485
    # Work units (shards, folder slices, parquet row-group ranges) per atomic commit; None: one
    # per Spark core, so every commit keeps every core busy.
    units_per_commit: Optional[int] = None
    # Images per work unit when a folder or a parquet file is split.
    rows_per_unit: int = 2000
    # Column names in parquet inputs; None: detected (image|jpg|png|image_bytes, text|caption|txt).
    image_column: Optional[str] = None
    text_column: Optional[str] = None

    def validate(self, key: str) -> None:
        _check(self.max_caption_chars > 0, f"{key}.max_caption_chars", "must be positive")
        _check(self.max_image_pixels > 0, f"{key}.max_image_pixels", "must be positive")
        _check(self.units_per_commit is None or self.units_per_commit > 0,
               f"{key}.units_per_commit", "must be positive")
        _check(self.rows_per_unit > 0, f"{key}.rows_per_unit", "must be positive")


@dataclass(frozen=True)
class ModelRunConfig:
    """How a stage runs its model on an executor (shared by caption and score)."""

    # auto: the GPU Spark assigned to the task when there is one, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Images (or texts) per model call; a CUDA out-of-memory halves it for that worker.
    batch_size: int = 32
    # Pool rows per atomic commit; a killed job re-runs at most one chunk. On a cluster make a
    # chunk keep every GPU busy for minutes (e.g. 200k rows), as each chunk is one Spark job.
    chunk_rows: int = 5000
    # CPU threads per task for torch; None: the executor's cores / its concurrent tasks.
    threads: Optional[int] = None
    # Spark partitions per chunk; None: one per task slot (GPU stages: executors x GPUs per
    # executor / GPUs per task; otherwise the session's default parallelism, its total cores).
    partitions: Optional[int] = None

    def validate(self, key: str) -> None:
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        _check(self.chunk_rows > 0, f"{key}.chunk_rows", "must be positive")
        _check(self.threads is None or self.threads > 0, f"{key}.threads", "must be positive")
        _check(self.partitions is None or self.partitions > 0, f"{key}.partitions",
               "must be positive")


@dataclass(frozen=True)
class CaptionConfig(ModelRunConfig):
    # A registry name (capmix/models.py), `hf:<id or folder>` or `open_clip:<arch>/<tag>`.
    captioner: str = "tiny-coca"
    samples: int = 1
    top_k: int = 50
    temperature: float = 0.75
    min_length: int = 5
    max_length: int = 40
    seed: int = 0
    # For instruction-following captioners (MLLM-style long captions, as CLIPS uses).
    prompt: Optional[str] = None
    # A local folder (or hub id) with the captioner's weights, overriding the registry's.
    weights: Optional[str] = None
    batch_size: int = 16
    # The `captioner` value written to `captions` (and `CAPTIONER:SAMPLE` in `scores`); None:
    # the captioner name. Give runs of one model with other sampling settings their own name
    # (e.g. blip2-t1.0): a run refuses to add to rows made with different settings.
    name: Optional[str] = None

    def validate(self, key: str) -> None:
        ModelRunConfig.validate(self, key)
        _check(self.samples > 0, f"{key}.samples", "must be positive")
        _check(self.top_k > 0, f"{key}.top_k", "must be positive")
        _check(self.temperature > 0, f"{key}.temperature", "must be positive")
        _check(self.min_length >= 0, f"{key}.min_length", "must be >= 0")
        _check(self.max_length >= max(self.min_length, 1), f"{key}.max_length",
               "must be >= min_length and >= 1")
        _check(self.name is None or bool(self.name.strip()), f"{key}.name", "must not be empty")
        from capmix.models import resolve

        spec = resolve(self.captioner, "captioner", self.weights, f"{key}.captioner")
        _check(not (self.prompt and spec.type == "open_clip_coca"), f"{key}.prompt",
               "CoCa captioners take no prompt")

    @property
    def label(self) -> str:
        """The `captioner` column value of this run's rows."""
        return self.name or self.captioner


@dataclass(frozen=True)
class ScoreConfig(ModelRunConfig):
    # A registry name, or `open_clip:<arch>/<pretrained tag or folder>`.
    scorer: str = "tiny-clip"
    weights: Optional[str] = None
    # Captioners whose captions are scored; empty: every captioner in `captions`.
    captioners: list[str] = field(default_factory=list)
    batch_size: int = 64
    # Score the pool's raw captions too (source 'raw').
    raw: bool = True

    def validate(self, key: str) -> None:
        ModelRunConfig.validate(self, key)
        from capmix.models import resolve

        resolve(self.scorer, "scorer", self.weights, f"{key}.scorer")
        for i, name in enumerate(self.captioners):
            _check(bool(name.strip()), f"{key}.captioners[{i}]", "must not be empty")


@dataclass(frozen=True)
class ExportConfig:
    """`capmix export`: a train set -> a Petastorm-readable parquet dataset."""

    # Parquet row-group target: the unit Petastorm reads, shuffles and shards by (petastorm's own
    # Spark converter uses 32 MB). Smaller groups shuffle better and need less loader memory.
    row_group_mb: float = 32.0
    # Output files = max(ceil(rows / rows_per_file), min_files); each rank reads whole row groups,
    # so a dataset needs at least as many row groups as ranks (min_files guarantees that).
    rows_per_file: int = 20_000
    min_files: int = 8
    # Add the raw and the full synthetic caption (CLIPS), one row per image.
    clips: bool = False
    # The synthetic caption CLIPS decodes: "CAPTIONER" or "CAPTIONER:SAMPLE"; None: the row's own
    # source when it names a caption, else the only captioner in `captions`.
    captioner: Optional[str] = None
    compression: Literal["snappy", "zstd", "none"] = "snappy"
    # Train sets of up to this many images broadcast their uids to the pool scan, so only the
    # selected images are shuffled (once); larger ones shuffle every ok pool row once.
    broadcast_rows: int = 20_000_000

    def validate(self, key: str) -> None:
        _check(self.row_group_mb > 0, f"{key}.row_group_mb", "must be positive")
        _check(self.broadcast_rows >= 0, f"{key}.broadcast_rows", "must not be negative")
        _check(self.rows_per_file > 0, f"{key}.rows_per_file", "must be positive")
        _check(self.min_files > 0, f"{key}.min_files", "must be positive")
        _check(self.captioner is None or bool(self.captioner.strip()), f"{key}.captioner",
               "must not be empty")


@dataclass(frozen=True)
class ClipsConfig:
    """CLIPS (clips-notes.md): fragment of the synthetic caption + captioning decoder."""

    # full: the whole synthetic caption, the baseline CLIPS's fragments are compared with.
    fragment: Literal["sub-caption", "block", "truncation", "random", "full"] = "sub-caption"
    # Tokens the text encoder sees of the synthetic caption (the notes' ablation peaks at 32).
    fragment_tokens: int = 32
    # Learnable queries = predicted tokens of the full synthetic caption (128 in CLIPS).
    decoder_length: int = 128
    # None: the text tower's width, layers and heads. That is the notes' pairing of decoder and
    # model ([OV] B = 512/12/8 for ViT-B, L = 768/12/12, H = 1024/24/16 are exactly the text
    # towers of ViT-B, L and H), and keeps a tiny model's decoder tiny: a B-size decoder on
    # tiny-clip would be 20x the model it trains.
    decoder_width: Optional[int] = None
    decoder_layers: Optional[int] = None
    decoder_heads: Optional[int] = None
    decoder_mlp_ratio: float = 4.0
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0

    def validate(self, key: str) -> None:
        _check(self.fragment_tokens > 0, f"{key}.fragment_tokens", "must be positive")
        _check(self.decoder_length >= 2, f"{key}.decoder_length", "must be >= 2")
        _check(all(v is None or v > 0 for v in (self.decoder_width, self.decoder_layers,
                                                 self.decoder_heads)),
               f"{key}.decoder_width", "decoder width, layers and heads must be positive")
        _check(None in (self.decoder_width, self.decoder_heads)
               or self.decoder_width % self.decoder_heads == 0, f"{key}.decoder_heads",
               "must divide decoder_width")
        _check(self.decoder_mlp_ratio > 0, f"{key}.decoder_mlp_ratio", "must be positive")
        _check(self.contrastive_weight >= 0 and self.caption_weight >= 0,
               f"{key}.caption_weight", "loss weights must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """`capmix train` / `torchrun -m training.train`. Defaults are DataComp's (paper, App. B)."""

    # An open_clip architecture, or a registry name (tiny-clip).
    model: str = "ViT-B-32"
    # clip: contrastive; clips: CLIPS (fragments + caption decoder); coca: an open_clip CoCa
    # architecture trained with contrastive + captioning loss (a captioner capmix makes itself).
    objective: Literal["clip", "clips", "coca"] = "clip"
    # Budget in samples seen; None: the candidate pool's size recorded by the export (a pool of
    # N samples trains for N samples seen).
    samples: Optional[int] = None
    batch_size: int = 4096  # global, across all ranks
    lr: float = 5e-4
    warmup: int = 500  # steps
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    weight_decay: float = 0.2
    grad_clip: Optional[float] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast on GPUs, fp32 on CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Petastorm reader workers per rank (decode + augment + tokenize run there).
    workers: int = 4
    reader_pool: Literal["thread", "process"] = "thread"
    # Rows in each rank's shuffling buffer (on top of row-group and in-row-group shuffling).
    shuffle_buffer: int = 1024
    checkpoint_every: int = 1000  # steps
    keep_checkpoints: int = 2
    log_every: int = 10  # steps
    seed: int = 0
    run_name: Optional[str] = None  # None: the output folder's name
    # Train on this train set (train_sets.name) read from the pool's own Delta files, with no
    # export (`capmix train --train-set NAME`); None: train on `--data`.
    train_set: Optional[str] = None
    # Log every step's sample uids per rank to OUT/samples/rank_N.jsonl (tests, audits).
    log_samples: bool = False
    # MLflow tracking (optional dependency): a tracking URI, or None to use $MLFLOW_TRACKING_URI.
    mlflow_uri: Optional[str] = None
    mlflow_experiment: str = "capmix"
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    # coca: loss = contrastive + caption_weight x captioning (open_clip's CoCa default: 2).
    coca_caption_weight: float = 2.0
    # The caption loss (clips, coca): chunked never materialises the batch x positions x vocab
    # logits (training/caption_loss.py); full does, as before (kept for comparison).
    caption_loss: Literal["chunked", "full"] = "chunked"
    # Memory per rank (MB) the estimated peak must fit in before the ranks start; None: what
    # the machine has (MemAvailable or the cgroup limit, divided by the ranks per node; a
    # GPU's free memory); 0: no check (training/memory.py).
    memory_mb: Optional[float] = None

    def validate(self, key: str) -> None:
        _check(bool(self.model.strip()), f"{key}.model", "must not be empty")
        _check(self.coca_caption_weight >= 0, f"{key}.coca_caption_weight", "must be >= 0")
        _check(self.samples is None or self.samples > 0, f"{key}.samples", "must be positive")
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        _check(self.lr > 0, f"{key}.lr", "must be positive")
        _check(self.warmup >= 0, f"{key}.warmup", "must be >= 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, f"{key}.beta2",
               "betas must be in [0, 1)")
        _check(self.eps > 0, f"{key}.eps", "must be positive")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(self.grad_clip is None or self.grad_clip > 0, f"{key}.grad_clip",
               "must be positive")
        _check(self.workers > 0, f"{key}.workers", "must be positive")
        _check(self.shuffle_buffer >= 0, f"{key}.shuffle_buffer", "must be >= 0")
        _check(self.checkpoint_every > 0, f"{key}.checkpoint_every", "must be positive")
        _check(self.keep_checkpoints > 0, f"{key}.keep_checkpoints", "must be positive")
        _check(self.log_every > 0, f"{key}.log_every", "must be positive")
        _check(self.memory_mb is None or self.memory_mb >= 0, f"{key}.memory_mb",
               "must be >= 0 (0: no memory check)")


@dataclass(frozen=True)
class EvalConfig:
    """`capmix eval`: zero-shot classification and retrieval of a trained checkpoint."""

    batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Prompt templates: openai (open_clip's 80 ImageNet templates), simple, a file with one
    # template per line ("a photo of a {c}."), or one literal template containing {c} or {}.
    templates: str = "openai"
    # Class names: imagenet, fashion-mnist, a file (one per line), a comma-separated list, or
    # None: the sorted distinct labels (or an image folder's sub-folder names).
    classnames: Optional[str] = None
    image_column: str = "image"
    label_column: str = "label"
    text_column: str = "text"
    # Rows evaluated at most (None: all).
    limit: Optional[int] = None
    # Retrieval within consecutive galleries of this many images, recalls averaged over every
    # query (chance R@k = k / gallery); None: one gallery of the whole set. Captions that
    # describe a class and a few visual attributes fit many images of a large gallery, so its
    # R@1 sits near its floor and cannot tell models apart.
    retrieval_gallery: Optional[int] = None

    def validate(self, key: str) -> None:
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        _check(self.retrieval_gallery is None or self.retrieval_gallery >= 2,
               f"{key}.retrieval_gallery", "must be >= 2")
        _check(bool(self.templates.strip()), f"{key}.templates", "must not be empty")
        _check(self.limit is None or self.limit > 0, f"{key}.limit", "must be positive")



@dataclass(frozen=True)
class MixConfig:
    """`capmix mix`: one strategy of sql/ -> one named train set."""

    # Top x% by cosine similarity (ignored by the unfiltered strategies `raw` and `synthetic`).
    percent: float = 30.0
    # The synthetic captions: sample 0 of this captioner; None: caption.captioner.
    captioner: Optional[str] = None
    # best_synthetic: the captioners (e.g. one per temperature) it picks from; empty: [captioner].
    captioners: list[str] = field(default_factory=list)
    # The scores used (one scorer per mix); None: score.scorer.
    scorer: Optional[str] = None
    intersect_clusters: bool = False

    def validate(self, key: str) -> None:
        _check(0 < self.percent <= 100, f"{key}.percent", "must be in (0, 100]")
        for name in ([self.captioner] if self.captioner is not None else []) + self.captioners:
            _check(bool(name.strip()) and "," not in name, f"{key}.captioner",
                   f"{name!r} is not a captioner name")


@dataclass(frozen=True)
class ClusterConfig:
    """`capmix cluster`: DataComp's image-based filter (faiss k-means on a uniform sample of the
    image embeddings; keep the clusters nearest to a reference set)."""

    # None: DataComp's 100,000 centroids scaled to the pool (capmix/centroids.py states the rule).
    k: Optional[int] = None
    # Embeddings the centroids are fitted on; None: 64 per centroid, at most the pool.
    sample_size: Optional[int] = None
    seed: int = 0
    max_iter: int = 20
    # The reference set (exactly one): a folder (or URI) of images; a table (a lake table name,
    # else a Spark/catalog table) with an `embedding` column or an `image` column; or a file of
    # precomputed embeddings (.npy, or parquet with an `embedding` column).
    reference_images: Optional[str] = None
    reference_table: Optional[str] = None
    reference_embeddings: Optional[str] = None
    # Embeddings clustered; None: score.scorer.
    scorer: Optional[str] = None

    def validate(self, key: str) -> None:
        _check(self.k is None or self.k >= 2, f"{key}.k", "must be >= 2")
        _check(self.sample_size is None or self.sample_size >= 2, f"{key}.sample_size",
               "must be >= 2")
        _check(self.max_iter > 0, f"{key}.max_iter", "must be positive")
        given = [n for n in ("reference_images", "reference_table", "reference_embeddings")
                 if getattr(self, n)]
        _check(len(given) <= 1, f"{key}.{given[-1] if given else 'reference_table'}",
               "give one reference set: " + " or ".join(given))


@dataclass(frozen=True)
class StatsConfig:
    """`capmix stats`: caption quality and diversity per caption set, and the report."""

    # Random subset sizes for the scaling curves (paper, Figure 12); the whole set is always a point.
    subset_sizes: list[int] = field(default_factory=lambda: [1_000, 10_000, 100_000, 1_000_000])
    seed: int = 0
    # Part-of-speech tagger for unique nouns. auto: nltk's averaged perceptron when its data is
    # installed, else the HMM over Lingua::EN::Tagger's lexicon (Debian liblingua-en-tagger-perl).
    tagger: Literal["auto", "nltk", "lingua-hmm"] = "auto"
    # Where the Lingua::EN::Tagger lexicon lives (words.yml, tags.yml, unknown.yml). Read on the
    # driver only: the loaded tagger is shipped to the executors with the UDF (capmix/tagger.py).
    lingua_lexicon: str = "/usr/share/perl5/Lingua/EN/Tagger"
    # Caption sets to measure; empty: raw, every captioner and every train set.
    datasets: list[str] = field(default_factory=list)
    report_dir: str = "report"

    def validate(self, key: str) -> None:
        _check(all(n > 0 for n in self.subset_sizes), f"{key}.subset_sizes",
               "must be positive integers")


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)
    # The file this config was read from (None for built-in defaults); relative input paths in
    # it are taken relative to the working directory, as a shell user would expect.
    source: Optional[str] = None

    def table(self, name: str) -> str:
        return self.lake.table(name)


# --------------------------------------------------------------------------------------------
# Loading


def default_config_path() -> Path:
    """The embedded default preset (conf/local.yaml), from the source tree or the wheel."""
    return resource_dir("conf") / "local.yaml"


def load_config(path: str | os.PathLike | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML preset (default: conf/local.yaml), apply dotted overrides, validate."""
    file = Path(path) if path is not None else default_config_path()
    if not file.is_file():
        raise ConfigError("", f"config file not found: {file}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError("", f"{file}: not valid YAML{where}: "
                              f"{getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{file}: not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{file}: the top level must be a mapping of sections")
    data = dict(data)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, dotted, value)
    data["source"] = str(file)
    return from_dict(data)


def from_dict(data: Mapping[str, Any]) -> Config:
    """Build and validate a Config from plain data (as parsed from YAML)."""
    return _build(Config, data, "")


def parse_override(text: str) -> tuple[str, Any]:
    """`caption.top_k=50` -> ("caption.top_k", 50); the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError("", f"--set expects KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is not a section")
        else:
            child = node[part] = dict(child)
        node = child
    node[parts[-1]] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(prefix, f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(_join(prefix, str(key)), f"unknown key; expected one of: {known}")
    values = {}
    for name, value in data.items():
        values[name] = _coerce(hints[name], value, _join(prefix, name))
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key)
        raise TypeError(f"unsupported union in config schema at {key}")
    if value is None:
        raise ConfigError(key, "must not be empty")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"must be a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(key, f"must be a string, got {type(value).__name__}")
        # YAML reads `spark.conf: {x: 4}` as an int; Spark conf values are strings anyway.
        return str(value).lower() if isinstance(value, bool) else str(value)
    raise TypeError(f"unsupported type {tp!r} in config schema at {key}")
