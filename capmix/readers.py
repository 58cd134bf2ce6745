"""Readers for the three ingest formats: pure generators from a work unit to raw samples.

Nothing is decided here about what is valid: a reader only collects the bytes and metadata that
belong to one sample (`RawSample`) and says why a sample is incomplete. `capmix.samples` turns
raw samples into pool rows. Readers run on Spark executors and never write to disk:

- webdataset: the .tar is STREAMED (`tarfile` mode "r|*", any compression); the members of a
  sample (`KEY.jpg`, `KEY.txt`, `KEY.json`, ...) are adjacent in webdataset shards, so a sample
  is complete when the key changes. A key that reappears later is read as a separate sample
  (with a warning). Members whose name leaves the shard's folder (`../x`, `/x`) are never read
  and are reported through `on_unsafe`. The shard's parquet beside it (img2dataset / DataComp
  metadata) is looked up by key, then by uid; its rows for failed downloads have no members
  and become error rows (`failed_downloads`).
- folder: the unit lists its entries (file names joined with the captions file on the driver).

Every path may be an object store's URI (`capmix.storage`): a shard streams from the store as
it is read, never copied to local disk.
- parquet: a row-group range, read in small batches. img2dataset's `--output_format parquet`
  keeps its failed downloads as rows without bytes: they become error rows like a shard's.
"""
from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

from capmix import storage
from capmix.inputs import IMAGE_EXTS, TAR_SUFFIXES, Unit, safe_relpath

# Image extensions in the order one is chosen when a sample has several.
IMAGE_PREFERENCE = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TEXT_EXTS = ("txt", "caption", "text")


@dataclass
class RawSample:
    key: Optional[str]
    image: Optional[bytes] = None
    ext: Optional[str] = None
    text: bytes | str | None = None
    sidecar: Optional[bytes] = None           # the raw .json member
    fields: dict = field(default_factory=dict)  # uid/url/caption/sha256 from metadata
    meta: dict = field(default_factory=dict)    # any other metadata, kept in `meta`
    error: Optional[str] = None               # why the sample cannot be an 'ok' row
    warnings: list = field(default_factory=list)
    # The bytes are the ones the metadata's sha256 hashed (not re-encoded by the downloader).
    bytes_original: bool = True


def read_unit(unit: Unit, text_limit: int,
              on_unsafe: Callable[[str, str], None] = lambda shard, member: None
              ) -> Iterator[RawSample]:
    if unit.format == "webdataset":
        return read_shard(unit.path, text_limit, on_unsafe)
    if unit.format == "folder":
        return read_folder(unit, text_limit)
    if unit.format == "parquet":
        return read_parquet(unit)
    raise ValueError(f"unknown unit format {unit.format!r}")


# -- webdataset ---------------------------------------------------------------------------------
def split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the extension starts at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def shard_metadata_path(shard: str) -> str:
    low = shard.lower()
    suffix = next(s for s in TAR_SUFFIXES if low.endswith(s))
    return shard[: len(shard) - len(suffix)] + ".parquet"


def read_shard(path: str, text_limit: int,
               on_unsafe: Callable[[str, str], None]) -> Iterator[RawSample]:
    lookup, shard_warning = _ShardMetadata.load(shard_metadata_path(path))
    original = bytes_original(path)
    seen: set[str] = set()
    key: Optional[str] = None
    members: dict[str, bytes] = {}
    count = 0
    name = storage.basename(path)
    try:
        with storage.open_input(path) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for member in tar:
                count += 1
                if not member.isfile():
                    continue  # folders, links, devices: never samples, never followed
                safe = safe_relpath(member.name)
                if safe is None:
                    on_unsafe(path, member.name)
                    continue
                member_key, ext = split_key(safe)
                ext = ext.lower()
                if not _wanted(ext):
                    continue
                if member_key != key:
                    if key is not None:
                        yield _shard_sample(key, members, lookup, shard_warning, key in seen,
                                            original)
                        seen.add(key)
                    key, members = member_key, {}
                data = tar.extractfile(member)
                limit = text_limit if ext in TEXT_EXTS or ext == "json" else -1
                members[ext] = data.read(limit) if data is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if members:  # the part of the damaged sample read before the damage
            yield _shard_sample(key, members, lookup, shard_warning, key in seen, original)
        key = None
        yield RawSample(key=None, error=f"shard {name} unreadable after "
                                        f"{count} member(s): {type(exc).__name__}: {exc}",
                        fields={"uid_hint": f"{name}:{count}"})
    if key is not None:
        yield _shard_sample(key, members, lookup, shard_warning, key in seen, original)
        seen.add(key)
    yield from failed_downloads(lookup, seen)


def failed_downloads(lookup: "_ShardMetadata", seen: set[str]) -> Iterator[RawSample]:
    """img2dataset's parquet lists every url it tried; those that failed (status other than
    'success', no members in the tar) become error rows of the pool, with img2dataset's error,
    so the summary counts them and `SELECT ... FROM pool WHERE status = 'error'` finds them."""
    read = seen | {k.rpartition("/")[2] for k in seen}
    for key, row in sorted(lookup.by_key.items()):
        status = row.get("status")
        if key in read or status in (None, "success"):
            continue
        sample = RawSample(key=key, error=download_error(row))
        sample.fields = {k: row.get(k) for k in ("uid", "url", "caption", "sha256")
                         if row.get(k) is not None}
        sample.meta = {k: v for k, v in row.items() if v is not None}
        sample.meta["failed_download"] = True
        yield sample


def download_error(row: dict) -> str:
    """The error of a url img2dataset could not download, from its status and error_message."""
    return (f"download failed ({row.get('status')}): "
            f"{row.get('error_message') or 'no error message'}")


def _wanted(ext: str) -> bool:
    return ext in IMAGE_EXTS or ext in TEXT_EXTS or ext == "json"


def stats_path(shard: str) -> str:
    """img2dataset's per-shard stats file: 00000.tar (or 00000.parquet, --output_format parquet)
    -> 00000_stats.json."""
    meta = shard if shard.lower().endswith(".parquet") else shard_metadata_path(shard)
    return meta[: -len(".parquet")] + "_stats.json"


def bytes_original(shard: str) -> bool:
    """Whether a shard's image bytes are the downloaded originals its sha256 column hashed.
    img2dataset records its arguments in the shard's stats json and re-encodes unless run with
    --disable_all_reencoding; a shard without a stats file (made another way, e.g. by DataComp's
    own tools or by hand) is taken at its word, as before."""
    import json

    path = stats_path(shard)
    if not storage.isfile(path):
        return True
    try:
        with storage.open_input(path) as fh:
            stats = json.loads(fh.read())
    except (OSError, ValueError):
        return False  # unreadable: the hash cannot be trusted to describe these bytes
    config = stats.get("config") if isinstance(stats, dict) else None
    config = config if isinstance(config, dict) else (stats if isinstance(stats, dict) else {})
    return bool(config.get("disable_all_reencoding", False))


def _shard_sample(key: str, members: dict[str, bytes], lookup: "_ShardMetadata",
                  shard_warning: Optional[str], reappeared: bool,
                  original: bool = True) -> RawSample:
    sample = RawSample(key=key, sidecar=members.get("json"), bytes_original=original)
    images = [e for e in IMAGE_PREFERENCE if e in members]
    if images:
        sample.ext, sample.image = images[0], members[images[0]]
        if len(images) > 1:
            sample.warnings.append(f"several images for one key ({', '.join(images)}); "
                                   f"kept .{images[0]}")
    else:
        sample.error = "no image member (.jpg/.png/.webp/.gif) for this key"
    text_ext = next((e for e in TEXT_EXTS if e in members), None)
    if text_ext is not None:
        sample.text = members[text_ext]
    if reappeared:
        sample.warnings.append("key reappears in the shard after other members; read as a "
                               "separate sample")
    if shard_warning:
        sample.warnings.append(shard_warning)
    row = lookup.find(key, members.get("json"))
    if row:
        sample.fields = {k: row.get(k) for k in ("uid", "url", "caption", "text", "sha256")
                         if row.get(k) is not None}
        sample.meta = {k: v for k, v in row.items() if v is not None}
    return sample


class _ShardMetadata:
    """The shard's parquet, indexed by key (img2dataset) and by uid (DataComp)."""

    def __init__(self, rows: list[dict]):
        self.by_key = {str(r["key"]): r for r in rows if r.get("key") is not None}
        self.by_uid = {str(r["uid"]): r for r in rows if r.get("uid") is not None}

    @classmethod
    def load(cls, path: str) -> tuple["_ShardMetadata", Optional[str]]:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq

            # Opening is the existence check: one request to a store, not two.
            with storage.open_input(path) as fh:
                pf = pq.ParquetFile(fh)
                # Image bytes, if a pool put them there, are not metadata.
                columns = [f.name for f in pf.schema_arrow if not (
                    pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))]
                return cls(pf.read(columns=columns).to_pylist()), None
        except FileNotFoundError:
            return cls([]), None
        except Exception as exc:
            return cls([]), f"shard parquet unreadable, not used: {type(exc).__name__}: {exc}"

    def find(self, key: str, sidecar: Optional[bytes]) -> Optional[dict]:
        row = self.by_key.get(key) or self.by_key.get(key.rpartition("/")[2])
        if row is None and self.by_uid and sidecar:
            row = self.by_uid.get(str(_sidecar_uid(sidecar)))
        return row


def _sidecar_uid(sidecar: bytes) -> Any:
    import json

    try:
        obj = json.loads(sidecar)
    except ValueError:
        return None
    return obj.get("uid") if isinstance(obj, dict) else None


# -- image folders ------------------------------------------------------------------------------
def read_folder(unit: Unit, text_limit: int) -> Iterator[RawSample]:
    for entry in unit.entries:
        name = entry["name"]
        sample = RawSample(key=name, ext=name.rsplit(".", 1)[-1].lower() if "." in name else None,
                           text=entry.get("caption"), warnings=list(entry.get("warnings") or []),
                           fields={k: entry[k] for k in ("uid", "url") if entry.get(k)},
                           meta=dict(entry.get("meta") or {}))
        if isinstance(sample.text, str) and len(sample.text) > text_limit:
            sample.text = sample.text[:text_limit]
        if not entry.get("file"):
            sample.error = f"captions file names a missing image file: {name}"
        else:
            try:
                with storage.open_input(storage.join(unit.path, name)) as fh:
                    sample.image = fh.read()
            except OSError as exc:
                sample.error = f"cannot read image file {name}: {exc.strerror or exc}"
        yield sample


# -- parquet ------------------------------------------------------------------------------------
def read_parquet(unit: Unit, batch_rows: int = 256) -> Iterator[RawSample]:
    import pyarrow.parquet as pq

    image_col, text_col = unit.options["image"], unit.options.get("text")
    original = bytes_original(unit.path)  # img2dataset's parquet output re-encodes them too
    with storage.open_input(unit.path) as fh:
        pf = pq.ParquetFile(fh)
        row = sum(pf.metadata.row_group(i).num_rows for i in range(unit.start))
        base = storage.basename(unit.path)
        for batch in pf.iter_batches(batch_size=batch_rows,
                                     row_groups=range(unit.start, unit.stop)):
            for record in batch.to_pylist():
                sample = _parquet_sample(record, image_col, text_col, f"{base}:{row}")
                sample.bytes_original = original
                yield sample
                row += 1


def _parquet_sample(record: dict, image_col: str, text_col: Optional[str],
                    position: str) -> RawSample:
    value = record.get(image_col)
    path = None
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {bytes, path}
        path = value.get("path")
        value = value.get("bytes")
    key = record.get("key")
    sample = RawSample(key=str(key) if key is not None else position, image=value,
                       ext=path.rsplit(".", 1)[-1].lower() if path and "." in path else None)
    # img2dataset's parquet output keeps the urls it could not download, without bytes.
    failed = value is None and record.get("status") not in (None, "success")
    if failed:
        sample.error = download_error(record)
    elif value is None:
        sample.error = (f"image bytes missing (only a path: {path})" if path
                        else f"image column {image_col!r} is empty")
    text = record.get(text_col) if text_col else None
    if isinstance(text, list):
        if len(text) > 1:
            sample.warnings.append(f"{len(text)} captions in one row; kept the first")
        text = text[0] if text else None
    sample.text = text
    sample.fields = {k: str(record[k]) for k in ("uid", "url", "sha256")
                     if record.get(k) is not None}
    if key is not None:
        sample.fields["name"] = str(key)
    elif path:
        sample.fields["name"] = path
    used = {image_col, text_col, "uid", "url", "key", "sha256"}
    sample.meta = {k: v for k, v in record.items()
                   if k not in used and v is not None and not isinstance(v, (bytes, bytearray))}
    if failed:
        sample.meta["failed_download"] = True
    return sample
