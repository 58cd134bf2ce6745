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

from capmix.errors import ConfigError
from capmix.resources import resource_dir

# Table names every stage agrees on (design.md, "Stages and tables"); `lake.tables` may rename them.
TABLES = (
    "pool", "captions", "scores", "image_embeddings", "clusters", "mix_runs", "train_sets",
    "text_stats", "eval_results",
)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(key, message)


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
    # auto: Spark's own Delta support when its jars are on the classpath, else delta-rs.
    backend: Literal["auto", "spark", "delta-rs"] = "auto"
    tables: dict[str, str] = field(default_factory=dict)

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
    batch_size: int = 32
    # Rows per atomic commit; a killed job re-runs at most one chunk.
    chunk_rows: int = 5000

    def validate(self, key: str) -> None:
        _check(self.batch_size > 0, f"{key}.batch_size", "must be positive")
        _check(self.chunk_rows > 0, f"{key}.chunk_rows", "must be positive")


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

    def validate(self, key: str) -> None:
        ModelRunConfig.validate(self, key)
        _check(self.samples > 0, f"{key}.samples", "must be positive")
        _check(self.top_k > 0, f"{key}.top_k", "must be positive")
        _check(self.temperature > 0, f"{key}.temperature", "must be positive")
        _check(self.min_length >= 0, f"{key}.min_length", "must be >= 0")
        _check(self.max_length >= max(self.min_length, 1), f"{key}.max_length",
               "must be >= min_length and >= 1")


@dataclass(frozen=True)
class ScoreConfig(ModelRunConfig):
    # A registry name, or `open_clip:<arch>/<pretrained tag or folder>`.
    scorer: str = "tiny-clip"
    weights: Optional[str] = None
    # Captioners whose captions are scored; empty: every captioner in `captions`.
    captioners: list[str] = field(default_factory=list)
    batch_size: int = 64


@dataclass(frozen=True)
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
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
