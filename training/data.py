"""The trainer's input: an export (plain parquet, see jobs/export.py) read with petastorm.

Each rank reads its own shard of row groups (`cur_shard`/`shard_count`, one shard seed shared by
all ranks so the shards are disjoint) for as many epochs as the step budget needs. Decoding,
augmentation and tokenisation run in petastorm's loader workers through a TransformSpec, on a
whole row group at a time; the workers hand over uint8 image arrays (a quarter of float32's
bytes), which the trainer normalises on its device.

Why `make_batch_reader` (not `make_reader`): the export is plain parquet with the original image
bytes, which `make_reader` cannot read without a Unischema written by `materialize_dataset`.
"""
from __future__ import annotations

import io
import json
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import numpy as np

from training.clips import caption_labels, fragment_ids, wrap_ids

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
    """A URL petastorm and pyarrow accept: file:// for local paths and DBFS (its FUSE mount)."""
    if path.startswith("dbfs:/"):
        return "file:///dbfs/" + path[len("dbfs:/"):].lstrip("/")
    if "://" in path:
        return path
    return "file://" + os.path.abspath(os.path.expanduser(path))


def read_export(path: str) -> ExportInfo:
    """Rows, row groups and columns from the parquet footers (no data read)."""
    import pyarrow.parquet as pq
    from pyarrow import fs as pafs

    from capmix.errors import InputError

    url = dataset_url(path)
    filesystem, root = pafs.FileSystem.from_uri(url)
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
        with filesystem.open_input_file(name) as fh:
            meta = pq.ParquetFile(fh).metadata
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

    def output_fields(self) -> list[tuple]:
        from petastorm.transform import edit_field

        fields = [edit_field("image", np.uint8, (3, self.image_size, self.image_size))]
        names = ["raw", "fragment"] if self.objective == "clips" else ["text"]
        fields += [edit_field(n, np.int64, (self.context_length,)) for n in names]
        if self.objective == "clips":
            fields.append(edit_field("labels", np.int64, (self.decoder_length,)))
        return fields


class RowTransform:
    """The TransformSpec function: a row group (pandas) -> decoded, augmented, tokenised."""

    def __init__(self, spec: SampleSpec, seed: int):
        self.spec, self.seed = spec, seed
        self._local = threading.local()
        self._streams = 0
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"spec": self.spec, "seed": self.seed}

    def __setstate__(self, state):
        self.__init__(state["spec"], state["seed"])

    def _rng(self) -> np.random.Generator:
        rng = getattr(self._local, "rng", None)
        if rng is None:
            with self._lock:
                self._streams += 1
                stream = self._streams
            # Distinct per worker thread and process, reproducible from the seed.
            rng = np.random.default_rng([self.seed, os.getpid(), stream])
            self._local.rng = rng
        return rng

    def __call__(self, df):
        import pandas as pd

        spec, rng = self.spec, self._rng()
        crop_rng = rng if spec.augment else None
        out = {"image": [load_image(b, spec.image_size, crop_rng) for b in df["image"]]}
        codec = TextCodec(get_tokenizer(spec.arch))
        ctx = spec.context_length
        if spec.objective == "clips":
            raw = [r or "" for r in df["raw_text"]]
            # No synthetic caption: CLIPS falls back to the raw (web) caption.
            syn = [s if isinstance(s, str) and s else r for s, r in zip(df["synthetic_text"], raw)]
            out["raw"] = [wrap_ids(codec.encode(r), ctx, codec.sot, codec.eot) for r in raw]
            out["fragment"] = [wrap_ids(fragment_ids(s, spec.fragment, spec.fragment_tokens,
                                                     codec.encode, rng, fallback=r),
                                        ctx, codec.sot, codec.eot) for s, r in zip(syn, raw)]
            out["labels"] = [caption_labels(codec.encode(s), spec.decoder_length, codec.eot)
                             for s in syn]
        else:
            out["text"] = [wrap_ids(codec.encode(t or ""), ctx, codec.sot, codec.eot)
                           for t in df["text"]]
        return pd.DataFrame(out)


def transform_spec(spec: SampleSpec, seed: int):
    from petastorm import TransformSpec

    outputs = [f[0] for f in spec.output_fields()]
    removed = [c for c in spec.input_columns() if c not in outputs]
    return TransformSpec(RowTransform(spec, seed), edit_fields=spec.output_fields(),
                         removed_fields=removed)


@dataclass(frozen=True)
class LoaderOptions:
    batch_size: int  # per rank
    rank: int = 0
    world: int = 1
    seed: int = 0  # the same on every rank: it also fixes the shard assignment
    workers: int = 4
    pool: str = "thread"
    shuffle_buffer: int = 1024
    # None: endless (the trainer counts steps). A finite count with the thread pool can end
    # early in petastorm 0.13.1 (its ThreadPool checks "all workers done" and "ventilation
    # complete" non-atomically), so the trainer never uses one.
    epochs: Optional[int] = None


def check_export(info: ExportInfo, objective: str, world: int) -> None:
    """The columns the objective reads, and a row group for every rank."""
    from capmix.errors import InputError

    needed = SampleSpec("", 1, 1, objective).input_columns()
    missing = [c for c in needed if c not in info.columns]
    if missing:
        hint = " (export it with --clips)" if objective == "clips" else ""
        raise InputError(f"{info.url}: missing column(s) {', '.join(missing)}{hint}")
    if info.row_groups < world:
        raise InputError(f"{info.url}: {info.row_groups} row group(s) for {world} ranks; "
                         "every rank needs one (re-export with a larger --min-files)")


def batches(info: ExportInfo, spec: SampleSpec, opts: LoaderOptions) -> Iterator[dict]:
    """Endless (or `epochs`) batches of this rank's shard, as dicts of tensors."""
    from petastorm import make_batch_reader
    from petastorm.pytorch import BatchedDataLoader

    check_export(info, spec.objective, opts.world)
    reader = make_batch_reader(
        info.url, schema_fields=spec.input_columns(), reader_pool_type=opts.pool,
        workers_count=opts.workers, results_queue_size=max(2, opts.workers),
        seed=opts.seed, shuffle_rows=True, shuffle_row_groups=True, num_epochs=opts.epochs,
        cur_shard=opts.rank if opts.world > 1 else None,
        shard_count=opts.world if opts.world > 1 else None,
        transform_spec=transform_spec(spec, opts.seed * 1000 + opts.rank))
    loader = BatchedDataLoader(reader, batch_size=opts.batch_size,
                               shuffling_queue_capacity=opts.shuffle_buffer)
    with loader:
        for batch in loader:
            if batch["image"].shape[0] == opts.batch_size:  # the last one may be short
                yield batch
