"""Raw samples -> pool rows, on the executors (the worker side of `jobs.ingest`).

The uid rule (the pool's key, so re-ingesting never duplicates a sample):
1. the sample's own uid, when its metadata has one: the json sidecar's `uid`, else the shard
   parquet's `uid` (DataComp), the captions file's `uid` column, or a parquet input's `uid`;
2. otherwise the first 32 hex digits of sha256 over `capmix-uid-v1`, the sample's name (its url
   if known, else the webdataset key / the file's path relative to its folder / a parquet
   `key` column or HF image path), the sha256 of its image bytes and the sha256 of its raw
   caption bytes. Nothing in it depends on where the files are mounted or on the shard name.

A row is 'ok' when its image decodes within `max_image_pixels`; otherwise 'error' with the
reason in `error`. The original image bytes are kept either way (models normalise them later
with `capmix.images.to_rgb`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from pyspark.accumulators import AccumulatorParam

from capmix.images import inspect_image
from capmix.inputs import Unit
from capmix.readers import RawSample, read_unit
from capmix.text import clean_caption, read_limit

# pool columns produced by the workers (`ingested_at` is added per commit on the driver side).
ROW_COLUMNS = ("uid", "key", "url", "text", "image", "width", "height", "format", "sha256",
               "status", "error", "warnings", "meta", "source")
_LIFTED = {"uid", "url", "key", "caption", "text"}  # columns of their own, not repeated in meta
MAX_UNSAFE_NAMES = 20
BATCH_ROWS = 128
BATCH_BYTES = 32 << 20


@dataclass(frozen=True)
class RowSettings:
    max_chars: int
    max_pixels: int


def compute_uid(name: Optional[str], image_sha: Optional[str], raw_text: Any) -> str:
    if isinstance(raw_text, str):
        raw_text = raw_text.encode("utf-8", "surrogatepass")
    text_sha = hashlib.sha256(raw_text).hexdigest() if raw_text is not None else ""
    material = "\x1f".join(("capmix-uid-v1", name or "", image_sha or "", text_sha))
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def parse_sidecar(data: Optional[bytes]) -> tuple[dict, dict, Optional[str]]:
    """(fields, meta, warning) from a json sidecar; a broken one gives no fields, its raw text
    (at most 2000 characters) in meta["broken_json"], and a warning."""
    if data is None:
        return {}, {}, None
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    except (ValueError, RecursionError) as exc:
        raw = data.decode("utf-8", errors="replace")[:2000]
        return {}, {"broken_json": raw}, \
            f"json sidecar unreadable ({str(exc)[:120]}); ingested from the other files"
    return obj, obj, None


def _first(*values: Any) -> Optional[str]:
    for v in values:
        if v is not None and v != "":
            return str(v)
    return None


def to_row(sample: RawSample, source: str, settings: RowSettings) -> dict:
    """One pool row (without `ingested_at`) for one raw sample. Never raises."""
    warnings = list(sample.warnings)
    side, side_meta, warning = parse_sidecar(sample.sidecar)
    if warning:
        warnings.append(warning)
    fields = sample.fields
    raw_text = sample.text
    if raw_text is None:
        raw_text = _first(side.get("caption"), side.get("text"), fields.get("caption"),
                          fields.get("text"))
    text, text_warnings = clean_caption(raw_text, settings.max_chars)
    warnings.extend(text_warnings)

    image = sample.image
    sha = hashlib.sha256(image).hexdigest() if image is not None else None
    expected = _first(fields.get("sha256"), side.get("sha256"))
    # img2dataset hashes the download and then re-encodes it by default: the hash says nothing
    # about the stored bytes unless the shard says they are the original ones. Counted in the
    # ingest summary (unit_rows), never a warning per row.
    check = None
    if sha and expected:
        check = ("skipped" if not sample.bytes_original
                 else "match" if expected.lower() == sha else "differ")
    error, width, height, fmt = sample.error, None, None, None
    if error is None:
        info = inspect_image(image, settings.max_pixels)
        width, height, error = info.width, info.height, info.error
        fmt = info.format.lower() if info.ok and info.format else None

    url = _first(side.get("url"), fields.get("url"))
    name = _first(url, fields.get("name"), sample.key, fields.get("uid_hint"))
    uid = _first(side.get("uid"), fields.get("uid")) or compute_uid(name, sha, raw_text)
    meta = {k: v for k, v in {**sample.meta, **side_meta}.items() if k not in _LIFTED}
    return {
        "uid": uid, "key": sample.key, "url": url, "text": text, "image": image,
        "width": width, "height": height, "format": fmt, "sha256": sha,
        "status": "ok" if error is None else "error", "error": error,
        "warnings": "; ".join(warnings) if warnings else None,
        "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False, default=str) if meta else None,
        "source": source, SHA_CHECK: check,
    }


SHA_CHECK = "_sha256_check"  # to_row's hash comparison, popped and counted by unit_rows


def arrow_schema():
    import pyarrow as pa

    types = {"image": pa.binary(), "width": pa.int32(), "height": pa.int32()}
    return pa.schema([(c, types.get(c, pa.string())) for c in ROW_COLUMNS])


def unit_rows(unit: Unit, settings: RowSettings, stats: Optional[dict] = None) -> Iterator[dict]:
    """Every pool row of one work unit; `stats` (if given) counts ok/error/unsafe."""
    def on_unsafe(shard: str, member: str) -> None:
        if stats is not None:
            stats["unsafe"] = stats.get("unsafe", 0) + 1
            names = stats.setdefault("unsafe_names", [])
            if len(names) < MAX_UNSAFE_NAMES:
                names.append(f"{shard}: {member}")

    for sample in read_unit(unit, read_limit(settings.max_chars), on_unsafe):
        row = to_row(sample, unit.id, settings)
        check = row.pop(SHA_CHECK, None)
        if stats is not None:
            stats[row["status"]] = stats.get(row["status"], 0) + 1
            if sample.meta.get("failed_download"):
                stats["failed_download"] = stats.get("failed_download", 0) + 1
            if check is not None:
                stats[f"sha256_{check}"] = stats.get(f"sha256_{check}", 0) + 1
        yield row


def first_per_uid(rows: Iterator[dict], max_held_bytes: int = 64 << 20) -> Iterator[dict]:
    """One row per uid within a unit, in the task (so the pool write needs no shuffle): the
    first 'ok' row of a uid, else its first error row. Error rows wait until the unit ends (an
    'ok' row of the same uid may follow); past `max_held_bytes` they are let through, and the
    ingest's once-per-run duplicate pass settles the rest."""
    seen: set[str] = set()
    held: dict[str, dict] = {}
    held_bytes = 0
    for row in rows:
        uid = row["uid"]
        if uid in seen:
            continue
        if row["status"] == "ok":
            seen.add(uid)
            if held.pop(uid, None) is not None:
                held_bytes = sum(len(r["image"] or b"") for r in held.values())
            yield row
        elif uid not in held:
            held[uid] = row
            held_bytes += len(row["image"] or b"")
            if held_bytes > max_held_bytes:
                for waiting in held.values():
                    seen.add(waiting["uid"])
                    yield waiting
                held, held_bytes = {}, 0
    yield from held.values()


def rows_in_arrow(batches: Iterator, settings: RowSettings, accumulator=None) -> Iterator:
    """`mapInArrow` function: batches of serialised units -> batches of pool rows, bounded by
    rows and bytes so a shard of large images never sits in memory as one batch."""
    import pyarrow as pa

    schema = arrow_schema()
    for batch in batches:
        for unit_json in batch.column(0).to_pylist():
            stats: dict = {"units": 1}
            rows, size = [], 0
            for row in first_per_uid(unit_rows(Unit.from_json(unit_json), settings, stats)):
                rows.append(row)
                size += len(row["image"] or b"")
                if len(rows) >= BATCH_ROWS or size >= BATCH_BYTES:
                    yield pa.RecordBatch.from_pylist(rows, schema=schema)
                    rows, size = [], 0
            if rows:
                yield pa.RecordBatch.from_pylist(rows, schema=schema)
            if accumulator is not None:
                accumulator.add(stats)


def _add_stats(total: dict, more: dict) -> dict:
    for k, v in more.items():
        if k == "unsafe_names":
            names = total.setdefault(k, [])
            names.extend(v[: max(0, MAX_UNSAFE_NAMES - len(names))])
        else:
            total[k] = total.get(k, 0) + v
    return total


class StatsParam(AccumulatorParam):
    """Per-unit counts ({"units", "ok", "error", "unsafe", "unsafe_names"}) added up across
    executors; the driver reads them after each commit."""

    def zero(self, value: dict) -> dict:
        return {}

    def addInPlace(self, a: dict, b: dict) -> dict:
        return _add_stats(a, b)


def stats_accumulator(spark_context):
    return spark_context.accumulator({}, StatsParam())
