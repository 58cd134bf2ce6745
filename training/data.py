"""The trainer's input: what a dataset holds (footers only), how an image and a caption become
model input, and `batches`, a rank's stream (training/loader.py; sources in training/sources.py).

An export is plain parquet (jobs/export.py); the pool path reads the pool's Delta files in place
(training/sources.py). Both are read with petastorm's `make_batch_reader`. Why not `make_reader`:
the files hold the original image bytes in plain parquet, which `make_reader` cannot read without
a Unischema written by `materialize_dataset`. Workers hand over uint8 image arrays (a quarter of
float32's bytes), which the trainer normalises on its device.
"""
from __future__ import annotations

import io
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

# Written by jobs/export.py (which this package may not import): keep the two names in step.
METADATA_FILE = "_capmix_export.json"
CROP_SCALE = (0.9, 1.0)  # open_clip's training RandomResizedCrop
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class ExportInfo:
    """What the trainer needs to know about a dataset before reading it."""

    url: str  # file:// URL or other URI, as petastorm wants it
    rows: int
    row_groups: int
    files: int
    columns: tuple[str, ...]
    meta: dict = field(default_factory=dict)  # _capmix_export.json, when present

    @property
    def pool_rows(self) -> Optional[int]:
        return self.meta.get("pool_rows")


def dataset_url(path: str) -> str:
    """A URL petastorm and pyarrow accept: file:// for local paths and DBFS (its FUSE mount);
    a store's URI as given, without a trailing slash (`list_files` cuts paths against it)."""
    if path.startswith("dbfs:/"):
        return "file:///dbfs/" + path[len("dbfs:/"):].lstrip("/")
    if "://" in path:
        return path.rstrip("/")
    return "file://" + os.path.abspath(os.path.expanduser(path))


def _arrow_fs(url: str):
    """(pyarrow FileSystem, its path) for a dataset URL. A store's URI (s3://, gs://, abfss://,
    hdfs://) goes through fsspec (capmix.storage), which reads the store's standard credentials
    and endpoint (AWS_ENDPOINT_URL included), as ingest and export do; pyarrow's own S3 client
    ignores AWS_ENDPOINT_URL. file:// URLs keep pyarrow's local filesystem."""
    from pyarrow import fs as pafs

    from capmix import storage

    if storage.is_uri(url):
        return storage.pyarrow_fs(url)
    return pafs.FileSystem.from_uri(url)


def list_files(url: str) -> list[str]:
    """The dataset's parquet data files as URLs, sorted (a file URL: that file)."""
    from pyarrow import fs as pafs

    filesystem, root = _arrow_fs(url)
    if filesystem.get_file_info(root).type == pafs.FileType.File:
        return [url]
    selector = pafs.FileSelector(root, recursive=True)
    prefix = url[:len(url) - len(root)] if url.endswith(root) else "file://"
    return sorted(prefix + i.path for i in filesystem.get_file_info(selector) if i.is_file
                  and i.path.endswith(".parquet")
                  and not os.path.basename(i.path).startswith(("_", ".")))


def read_export(path: str) -> ExportInfo:
    """Rows, row groups and columns from the parquet footers (no data read)."""
    from pyarrow import fs as pafs

    from capmix.errors import InputError

    url = dataset_url(path)
    filesystem, root = _arrow_fs(url)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise InputError(f"dataset not found: {path}")
    if info.type == pafs.FileType.File:
        files = [root]
    else:
        selector = pafs.FileSelector(root, recursive=True)
        files = sorted(i.path for i in filesystem.get_file_info(selector) if i.is_file
                       and i.path.endswith(".parquet")
                       and not os.path.basename(i.path).startswith(("_", ".")))
    if not files:
        raise InputError(f"no parquet files under {path}")
    rows = groups = 0
    columns: tuple[str, ...] = ()
    for name in files:
        meta = _footer(filesystem, name, path)
        rows += meta.num_rows
        groups += meta.num_row_groups
        columns = columns or tuple(meta.schema.to_arrow_schema().names)
    extra: dict = {}
    if info.type == pafs.FileType.Directory:
        meta_path = f"{root.rstrip('/')}/{METADATA_FILE}"
        if filesystem.get_file_info(meta_path).is_file:
            with filesystem.open_input_stream(meta_path) as fh:
                extra = json.loads(fh.read().decode("utf-8"))
    return ExportInfo(url, rows, groups, len(files), columns, extra)


def _footer(filesystem, name: str, dataset: str):
    """One file's parquet footer, or one line naming the file: a corrupt or unreadable file
    is found here, by the launcher, not by a rank mid-run."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from capmix.errors import InputError

    try:
        with filesystem.open_input_file(name) as fh:
            return pq.ParquetFile(fh).metadata
    except (OSError, ValueError, pa.ArrowException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name}: not a readable parquet file ({first[:160]}) in dataset "
                         f"{dataset}") from None


# --------------------------------------------------------------------------------------------
# Images


def crop_box(width: int, height: int, rng: Optional[np.random.Generator],
             scale: tuple[float, float] = CROP_SCALE,
             ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(left, top, right, bottom): torchvision's RandomResizedCrop sampling when `rng` is given,
    else the centred square (resize-shortest-side + centre crop, open_clip's eval transform)."""
    if rng is not None:
        area = width * height
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                left = int(rng.integers(0, width - w + 1))
                top = int(rng.integers(0, height - h + 1))
                return left, top, left + w, top + h
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_image(data: bytes, size: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Encoded image -> uint8 array [3, size, size]: random resized crop when `rng` is given
    (training), centre crop otherwise (evaluation). Large JPEGs decode at a reduced scale
    (PIL draft), which is most of the decoding cost saved."""
    from PIL import Image, ImageOps

    from capmix.images import to_rgb

    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        # Ask for enough pixels that even the smallest crop (~0.8 of a side) keeps `size`.
        img.draft("RGB", (int(size * 1.25), int(size * 1.25)))
        img = ImageOps.exif_transpose(img) or img
        img = img.convert("RGB")
    else:
        img = to_rgb(data)
    box = crop_box(img.width, img.height, rng)
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


# --------------------------------------------------------------------------------------------
# Text


_tokenizers: dict[str, Any] = {}
_tok_lock = threading.Lock()


def get_tokenizer(arch: str):
    """open_clip's tokenizer for an architecture, built once per process (loader workers)."""
    with _tok_lock:
        if arch not in _tokenizers:
            from capmix.models import register_model_configs

            register_model_configs()
            import open_clip

            _tokenizers[arch] = open_clip.get_tokenizer(arch)
        return _tokenizers[arch]


class TextCodec:
    """Token ids without specials, and the [SOT] ids [EOT] pad layout, for open_clip's BPE
    tokenizer (SimpleTokenizer); CLIPS needs the ids to cut fragments."""

    def __init__(self, tokenizer):
        if not hasattr(tokenizer, "encode") or not hasattr(tokenizer, "sot_token_id"):
            from capmix.errors import InputError

            raise InputError(f"{type(tokenizer).__name__}: CLIPS needs an open_clip BPE "
                             "tokenizer (SimpleTokenizer)")
        self.tok = tokenizer
        self.sot, self.eot = tokenizer.sot_token_id, tokenizer.eot_token_id

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text or "")


# --------------------------------------------------------------------------------------------
# The loader


@dataclass(frozen=True)
class SampleSpec:
    """How a row becomes a training sample (picklable: it travels to process-pool workers)."""

    arch: str
    image_size: int
    context_length: int
    objective: str = "clip"  # clip | clips
    augment: bool = True
    fragment: str = "sub-caption"
    fragment_tokens: int = 32
    decoder_length: int = 128

    def input_columns(self) -> list[str]:
        if self.objective == "clips":
            return ["image", "raw_text", "synthetic_text"]
        return ["image", "text"]


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int  # per rank
    rank: int = 0
    world: int = 1
    seed: int = 0  # the same on every rank: it also fixes the shard assignment
    workers: int = 4
    pool: str = "thread"
    shuffle_buffer: int = 1024
    # None: endless (the trainer counts steps).
    epochs: Optional[int] = None


def check_export(info: ExportInfo, objective: str, world: int) -> None:
    """Rows at all, the columns the objective reads, and a file for every rank."""
    from capmix.errors import InputError

    needed = SampleSpec("", 1, 1, objective).input_columns()
    if info.rows == 0:
        # Else each rank finds no sample in its files and torchrun dumps every rank's failure.
        raise InputError(f"{info.url}: the dataset has no rows ({info.files} parquet file(s), "
                         "all empty)")
    missing = [c for c in needed if c not in info.columns]
    if missing:
        hint = " (export it with --clips)" if objective == "clips" else ""
        raise InputError(f"{info.url}: missing column(s) {', '.join(missing)}{hint}")
    if info.files < world:
        raise InputError(f"{info.url}: {info.files} file(s) for {world} ranks; every rank "
                         f"reads its own files (re-export with --min-files {world})")


def batches(source, spec: SampleSpec, opts: LoaderOptions, start: int = 0):
    """This rank's batches (training.loader.Batches) from sample `start` of its stream: an
    export (ExportInfo) or a source (training.sources)."""
    from training.loader import Batches
    from training.sources import Source, export_source

    if not isinstance(source, Source):
        check_export(source, spec.objective, opts.world)
        source = export_source(source, spec.objective)
    return Batches(source, spec, opts.batch_size, rank=opts.rank, world=opts.world,
                   seed=opts.seed, workers=opts.workers, pool=opts.pool,
                   shuffle_buffer=opts.shuffle_buffer, start=start, epochs=opts.epochs)
