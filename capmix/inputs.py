"""Ingest inputs on the driver: patterns -> paths -> formats -> sorted work units.

A work unit is what one Spark task reads: a webdataset shard (one .tar), a slice of
`rows_per_unit` entries of an image folder, or a range of row groups of a parquet file holding
about `rows_per_unit` rows. Units are sorted by (path, start), so the same inputs always give
the same units in the same order; the unit's `id` is what the pool's `source` column records.

Every check that can fail on the user's input (missing path, unknown format, a parquet file
without an image column) happens here, before anything is written. Paths may be URIs of object
stores (`s3://`, `gs://`, `abfss://`, `hdfs://`, `dbfs:/`): everything here goes through
`capmix.storage`, and a long brace range on a store is checked with one listing per folder,
not one request per shard.
"""
from __future__ import annotations

import csv
import glob
import io
import json
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from capmix import storage
from capmix.errors import InputError
from capmix.text import decode_bytes

FORMATS = ("webdataset", "folder", "parquet")
IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CAPTION_FILES = ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv")
FILE_FIELDS = ("file", "file_name", "filename", "image", "path")
TEXT_FIELDS = ("caption", "text", "txt")
IMAGE_COLUMNS = ("image", "jpg", "png", "webp", "image_bytes")
_ENTRY_FIELDS = set(FILE_FIELDS) | set(TEXT_FIELDS) | {"uid", "url"}
# What an img2dataset user is told when a layout capmix does not read is given.
IMG2DATASET_LAYOUTS = ("ingest reads img2dataset's webdataset shards (--output_format "
                       "webdataset: NNNNN.tar with NNNNN.parquet beside it) or its parquet "
                       "files (--output_format parquet)")

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


@dataclass(frozen=True)
class Unit:
    """One task's worth of input. `start`/`stop`: folder entries or parquet row groups."""

    format: str
    path: str
    start: int = 0
    stop: int = 0
    # folder: the slice's entries, {"name", "caption", "uid", "url", "meta", "warnings", "file"}
    entries: tuple = ()
    # parquet: {"image": column, "text": column or None}
    options: dict = field(default_factory=dict, hash=False)

    @property
    def id(self) -> str:
        if self.format == "folder":
            return f"{self.path}#files[{self.start}:{self.stop}]"
        if self.format == "parquet":
            return f"{self.path}#row_groups[{self.start}:{self.stop}]"
        return self.path

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "Unit":
        data = json.loads(text)
        data["entries"] = tuple(data.get("entries") or ())
        return Unit(**data)


# -- patterns -> paths --------------------------------------------------------------------------
def expand_braces(pattern: str) -> list[str]:
    """`s/{00000..00002}.tar` -> s/00000.tar s/00001.tar s/00002.tar; `{a,b}` -> a b.
    Zero padding of a range follows its first bound, as in bash and webdataset."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    rng = _RANGE.match(body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:  # a literal `{x}` in a file name
        return [pattern[: match.end()] + rest for rest in expand_braces(pattern[match.end():])]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [out for c in choices for out in expand_braces(head + c + tail)]


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Absolute paths or URIs, in the order given, without duplicates; one InputError for all
    missing."""
    paths: list[str] = []
    missing: list[str] = []
    for pattern in patterns:
        if not storage.is_uri(pattern):
            pattern = os.path.expanduser(pattern)
        items = expand_braces(pattern)
        listed, parents = _listed_parents([i for i in items if storage.is_uri(i) and
                                           not glob.has_magic(i)])
        for item in items:
            if glob.has_magic(item):
                found = storage.glob(item)
                if not found:
                    missing.append(item)
                paths.extend(found)
            elif storage.is_uri(item) and item.rstrip("/") in listed:
                paths.append(item)
            elif not storage.is_uri(item) and os.path.exists(item):
                paths.append(item)
            elif storage.is_uri(item) and posixpath.dirname(item.rstrip("/")) not in \
                    parents and storage.exists(item):
                paths.append(item)
            else:
                missing.append(item)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        raise InputError(f"input not found: {shown}")
    seen: dict[str, None] = {}
    for p in paths:
        seen.setdefault(storage.normalize(p), None)
    return list(seen)


def _listed_parents(uris: list[str]) -> tuple[set[str], set[str]]:
    """(every entry of the folders holding `uris`, those folders): one paginated listing per
    folder instead of a request per shard, so `s3://b/{00000..99999}.tar` is 100 listings, not
    100,000 HEAD requests. A single URI is checked on its own."""
    entries: set[str] = set()
    parents: set[str] = set()
    if len(uris) < 2:
        return entries, parents
    for parent in sorted({posixpath.dirname(u.rstrip("/")) for u in uris}):
        fs, inner = storage.filesystem(parent)
        try:
            names = fs.ls(inner, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        parents.add(parent)
        entries.update(posixpath.join(parent, posixpath.basename(n.rstrip("/"))) for n in names)
    return entries, parents


def is_tar(path: str) -> bool:
    return path.lower().endswith(TAR_SUFFIXES)


def is_image(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTS if "." in name else False


def detect_format(path: str, forced: str = "auto") -> str:
    # A .tar is a file: no request to the store to learn that (a .parquet may be a folder).
    is_dir = False if is_tar(path) else storage.isdir(path)
    if forced != "auto":
        if forced == "folder" and not is_dir:
            raise InputError(f"--format folder needs a folder, got a file: {path}")
        return forced
    if not is_dir:
        if is_tar(path):
            return "webdataset"
        if path.lower().endswith(".parquet"):
            return "parquet"
        raise InputError(f"unknown input format: {path} (expected a .tar shard, a .parquet file "
                         "or a folder; or give --format)")
    names = storage.listdir(path)
    if any(is_tar(n) for n in names):
        return "webdataset"
    if img2dataset_files_layout(path, names):
        raise InputError(f"{path}: img2dataset's `files` output (a folder of KEY.jpg/.txt/.json "
                         f"per shard) is not supported; {IMG2DATASET_LAYOUTS}. To keep this "
                         "download, pack each shard folder into a tar beside its parquet (tar "
                         "--sort=name -cf 00000.tar -C 00000 .) and ingest the .tar files")
    if any(n in CAPTION_FILES for n in names) or _has_images(path):
        return "folder"
    if any(n.lower().endswith(".parquet") for n in names):
        return "parquet"
    raise InputError(f"no shards, images or parquet files in folder {path}")


def img2dataset_files_layout(folder: str, names: list[str]) -> bool:
    """Whether `folder` is img2dataset's `--output_format files` output, or one of its shards: a
    folder NNNNN of KEY.jpg/.txt/.json with NNNNN.parquet or NNNNN_stats.json beside it. Read as
    an image folder it would lose every caption (the folder reader takes captions from one
    captions file, not from a .txt per image), so it is refused instead."""
    if any(n in CAPTION_FILES for n in names):
        return False  # a folder made for capmix: its captions file names the images
    listed = set(names)
    if any(n.isdigit() and (f"{n}.parquet" in listed or f"{n}_stats.json" in listed)
           for n in names):
        return True  # the output folder, given whole
    base = folder.rstrip("/")
    if not storage.basename(base).isdigit():
        return False
    return storage.isfile(f"{base}_stats.json") or storage.isfile(f"{base}.parquet")


def _has_images(folder: str) -> bool:
    for _, dirs, files in storage.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(is_image(f) for f in files):
            return True
    return False


# -- paths -> units -----------------------------------------------------------------------------
def drop_side_files(paths: list[str], forced: str = "auto") -> tuple[list[str], Optional[str]]:
    """(paths, one note or None) without the files an img2dataset output folder holds beside its
    shards, so `capmix ingest 'out/*'` reads the shards: `*_stats.json`, the shard parquet next
    to its .tar or its shard folder (read with the shard, or refused with it: `files` layout)
    and, when shards are among the inputs, any other file that is neither a shard nor parquet
    (a url list). A lone unknown file is still an error."""
    if forced != "auto":
        return paths, None
    listed = set(paths)
    stems = {p[: -len(next(x for x in TAR_SUFFIXES if p.lower().endswith(x)))]
             for p in paths if is_tar(p)}
    # --output_format files: shard NNNNN is a folder, with NNNNN.parquet and _stats.json beside.
    stems |= {p for p in paths if f"{p}.parquet" in listed or f"{p}_stats.json" in listed}
    # --output_format parquet: the shards are the parquet files with a stats json beside them.
    shards = bool(stems) or any(p.lower().endswith(".parquet") and
                                f"{p[: -len('.parquet')]}_stats.json" in listed for p in paths)
    kept, dropped = [], []
    for p in paths:
        low = p.lower()
        side = (low.endswith("_stats.json")
                or (low.endswith(".parquet") and p[: -len(".parquet")] in stems)
                or (shards and not is_tar(p) and not low.endswith(".parquet")
                    and not storage.isdir(p)))
        (dropped if side else kept).append(p)
    if not dropped:
        return paths, None
    names = [storage.basename(p) for p in dropped]
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return kept, f"skipped {len(names)} file(s) that are not shards: {shown}"


def plan_units(patterns: Iterable[str], forced: str = "auto", rows_per_unit: int = 2000,
               image_column: Optional[str] = None,
               text_column: Optional[str] = None) -> tuple[list[Unit], list[str]]:
    """(sorted units, notes for the log). Raises InputError before any write."""
    units: list[Unit] = []
    notes: list[str] = []
    paths, note = drop_side_files(expand_inputs(patterns), forced)
    if note:
        notes.append(note)
    for path in paths:
        before = len(units)
        fmt = detect_format(path, forced)
        if fmt == "webdataset":
            shards = ([path] if is_tar(path) else
                      [storage.join(path, n) for n in storage.listdir(path) if is_tar(n)])
            units.extend(Unit("webdataset", s) for s in shards)
        elif fmt == "folder":
            units.extend(folder_units(path, rows_per_unit, notes))
        else:
            files = ([path] if not storage.isdir(path) else [
                storage.join(path, n) for n in storage.listdir(path)
                if n.lower().endswith(".parquet") and not n.startswith(("_", "."))])
            for f in files:
                units.extend(parquet_units(f, rows_per_unit, image_column, text_column))
        if len(units) == before:
            notes.append(f"{path}: nothing to ingest as {fmt} (no shards, images or rows)")
    unique = {u.id: u for u in units}
    return sorted(unique.values(), key=lambda u: (u.path, u.start)), notes


def folder_units(folder: str, rows_per_unit: int, notes: list[str]) -> list[Unit]:
    """Image files (recursive) joined with the captions file, sorted by relative name."""
    files: set[str] = set()
    top = folder.rstrip("/")
    for root, dirs, names in storage.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        inside = root.rstrip("/")[len(top):].strip("/").replace(os.sep, "/")
        for n in names:
            if is_image(n) and not n.startswith("."):
                files.add(f"{inside}/{n}" if inside else n)
    captions = read_captions_file(folder, notes)
    names = sorted(files | set(captions))
    entries = []
    for name in names:
        entry = dict(captions.get(name) or {"caption": None, "uid": None, "url": None,
                                            "warnings": []})
        entry.update(name=name, file=name in files)
        entries.append(entry)
    return [Unit("folder", folder, i, min(i + rows_per_unit, len(entries)),
                 tuple(entries[i: i + rows_per_unit]))
            for i in range(0, len(entries), rows_per_unit)]


def read_captions_file(folder: str, notes: list[str]) -> dict[str, dict]:
    """{relative file name: {"caption", "uid", "url", "warnings"}} from the folder's captions
    file (jsonl or csv; the first found of CAPTION_FILES). Unreadable lines are skipped and
    counted in `notes`; a name listed twice keeps its first entry."""
    present = set(storage.listdir(folder))
    path = next((storage.join(folder, n) for n in CAPTION_FILES if n in present), None)
    if path is None:
        return {}
    with storage.open_input(path) as fh:
        text, warning = decode_bytes(fh.read())
    records, bad = (_jsonl_records(text) if path.endswith(".jsonl") else _csv_records(text))
    out: dict[str, dict] = {}
    repeated = unsafe = 0
    for rec in records:
        name = next((str(rec[k]) for k in FILE_FIELDS if rec.get(k) not in (None, "")), None)
        if name is None:
            bad += 1
            continue
        name = safe_relpath(name)
        if name is None:
            unsafe += 1
            continue
        if name in out:
            repeated += 1
            continue
        caption = next((rec[k] for k in TEXT_FIELDS if k in rec), None)
        extra = {k: v for k, v in rec.items() if k not in _ENTRY_FIELDS and v not in (None, "")}
        out[name] = {"caption": None if caption is None else str(caption),
                     "uid": _str_or_none(rec.get("uid")), "url": _str_or_none(rec.get("url")),
                     "meta": extra,
                     "warnings": [warning.replace("caption", "captions file")] if warning else []}
    if bad:
        notes.append(f"{path}: {bad} unreadable line(s) skipped (no file name or not valid)")
    if unsafe:
        notes.append(f"{path}: {unsafe} entr(y/ies) naming a file outside the folder ignored")
    if repeated:
        notes.append(f"{path}: {repeated} file name(s) listed more than once; first entry kept")
    return out


def safe_relpath(name: str) -> Optional[str]:
    """A normalised relative name inside its folder, or None for a name that leaves it
    (`../x.jpg`, `/abs/x.jpg`, `a/../../x`), is empty, or holds a NUL."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or \
            re.match(r"^[A-Za-z]:", name):
        return None
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm in (".", "..") or norm.startswith("../") or norm.startswith("/"):
        return None
    return norm


def _str_or_none(value: Any) -> Optional[str]:
    return None if value is None or value == "" else str(value)


def _jsonl_records(text: str) -> tuple[list[dict], int]:
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def _csv_records(text: str) -> tuple[list[dict], int]:
    try:
        return [dict(r) for r in csv.DictReader(io.StringIO(text))], 0
    except csv.Error:
        return [], 1


def parquet_units(path: str, rows_per_unit: int, image_column: Optional[str] = None,
                  text_column: Optional[str] = None) -> list[Unit]:
    """Row-group ranges of about `rows_per_unit` rows (a row group is never split)."""
    import pyarrow.parquet as pq

    try:
        with storage.open_input(path) as fh:
            pf = pq.ParquetFile(fh)
            meta, schema = pf.metadata, pf.schema_arrow
    except Exception as exc:
        raise InputError(f"cannot read parquet file {path}: {exc}") from None
    options = {"image": _image_column(schema, path, image_column),
               "text": _text_column(schema, path, text_column)}
    units, start, rows = [], 0, 0
    for rg in range(meta.num_row_groups):
        rows += meta.row_group(rg).num_rows
        if rows >= rows_per_unit or rg == meta.num_row_groups - 1:
            units.append(Unit("parquet", path, start, rg + 1, options=options))
            start, rows = rg + 1, 0
    return units


def _image_column(schema, path: str, wanted: Optional[str]) -> str:
    import pyarrow as pa

    names = [wanted] if wanted else list(IMAGE_COLUMNS)
    for name in names:
        if name in schema.names:
            tp = schema.field(name).type
            if pa.types.is_binary(tp) or pa.types.is_large_binary(tp) or (
                    pa.types.is_struct(tp) and tp.get_field_index("bytes") >= 0):
                return name
            raise InputError(f"parquet file {path}: column {name!r} holds {tp}, not image bytes "
                             "(binary, or a struct with a `bytes` field)")
    if not wanted and {"key", "status", "error_message"} <= set(schema.names):
        raise InputError(f"parquet file {path} is img2dataset's shard metadata, not images; "
                         f"{IMG2DATASET_LAYOUTS}")
    hint = f"column {wanted!r} not found" if wanted else \
        f"no image column (looked for {', '.join(IMAGE_COLUMNS)})"
    raise InputError(f"parquet file {path}: {hint}; set ingest.image_column")


def _text_column(schema, path: str, wanted: Optional[str]) -> Optional[str]:
    if wanted:
        if wanted not in schema.names:
            raise InputError(f"parquet file {path}: text column {wanted!r} not found")
        return wanted
    return next((n for n in TEXT_FIELDS if n in schema.names), None)
