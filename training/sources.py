"""Where a rank's training rows come from: an export, or the pool's own Delta files.

A source names the parquet files to read, the columns of them to read, and how a row group
(petastorm's `make_batch_reader` output: a namedtuple of numpy arrays) becomes samples. The
export is one sample per row. The pool path (`capmix train --train-set NAME`) reads the pool's
current Delta data files, the images in place, and turns each ok image whose uid is in the train
set into one sample per train-set row of that uid (a concatenation strategy keeps two captions
of one image): no image is copied before training.

The train set itself (uid -> text, source, raw and synthetic caption) is small next to the
images: it is read once per rank from `train_sets` (and `captions` for CLIPS) with delta-rs, so
`training` needs neither Spark nor `jobs`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence

from capmix.errors import InputError


class Sample(NamedTuple):
    """One training example before decoding: the encoded image and its captions."""

    uid: str
    image: bytes
    text: str  # the caption CLIP trains on
    raw: str  # the image's raw (web) caption: CLIPS's contrastive text
    synthetic: Optional[str]  # CLIPS's full synthetic caption (None: falls back to raw)


@dataclass
class Source:
    """Files and the row -> sample mapping, for one dataset (export or pool + train set)."""

    urls: list[str]  # file:// URLs (or other URIs), sorted
    columns: list[str]  # the columns a row group is read with
    count_columns: list[str]  # the (narrow) columns that suffice to count samples
    kind: str = "export"
    train_set: Optional[str] = None
    version: Optional[int] = None  # train_sets' Delta version when read (pool path)
    # The train set's content (its sorted uid, source, text rows), hashed: what a resume
    # compares. Not the table's version, which every other strategy's mix moves too.
    digest: Optional[str] = None
    pool_rows: Optional[int] = None  # the default samples-seen budget
    clips: bool = False
    # pool path: uid -> [(text, source, synthetic)]; the raw caption comes with the image
    members: dict[str, list[tuple[str, str, Optional[str]]]] = field(default_factory=dict)

    def samples(self, group: Any) -> list[Sample]:
        """A row group -> its samples, in row order."""
        if self.kind == "export":
            syn = group.synthetic_text if self.clips else None
            raw = group.raw_text if self.clips else group.text
            return [Sample(u, i, t, r or "", None if syn is None else syn[n])
                    for n, (u, i, t, r) in enumerate(zip(group.uid, group.image, group.text,
                                                         raw))]
        out: list[Sample] = []
        members = self.members
        for uid, ok, image, raw in zip(group.uid, group.status, group.image, group.text):
            rows = members.get(uid) if ok == "ok" else None
            if rows:
                out.extend(Sample(uid, image, text, raw or "", syn) for text, _, syn in rows)
        return out

    def count(self, group: Any) -> int:
        """Samples in a row group read with `count_columns` only (resume's position search)."""
        if self.kind == "export":
            return len(group.uid)
        members = self.members
        return sum(len(members.get(u, ())) for u, ok in zip(group.uid, group.status)
                   if ok == "ok")


def export_source(info, objective: str) -> Source:
    """An export (training.data.ExportInfo): every row is a sample."""
    from training.data import list_files

    clips = objective == "clips"
    cols = ["uid", "image", "text"] + (["raw_text", "synthetic_text"] if clips else [])
    return Source(urls=list_files(info.url), columns=cols, count_columns=["uid"],
                  pool_rows=info.pool_rows or info.rows, clips=clips)


def table_path(lake_path: str, table: str) -> str:
    """A Delta table's location in a path lake, as delta-rs opens it."""
    from capmix.lake import is_catalog

    if is_catalog(lake_path):
        raise InputError(f"lake {lake_path} is a catalog schema: --train-set reads the pool's "
                         "files by path; use a path lake, or capmix export")
    root = lake_path[len("file://"):] if lake_path.startswith("file://") else lake_path
    if "://" in root:
        return f"{root.rstrip('/')}/{table}"
    return os.path.join(os.path.abspath(os.path.expanduser(root)), table)


def _delta(lake_path: str, table: str):
    from deltalake import DeltaTable

    loc = table_path(lake_path, table)
    if not DeltaTable.is_deltatable(loc):
        raise InputError(f"missing table {table!r} in lake {lake_path} (run the stage that "
                         "writes it first)")
    return DeltaTable(loc)


def pool_source(lake_path: str, tables: dict[str, str], train_set: str, objective: str,
                captioner: Optional[str] = None) -> Source:
    """The pool's current data files, filtered to `train_set`'s uids by a map built here."""
    import pyarrow.compute as pc

    name = {t: tables.get(t, t) for t in ("pool", "train_sets", "captions")}
    sets = _delta(lake_path, name["train_sets"])
    rows = sets.to_pyarrow_table(columns=["uid", "source", "text"],
                                 filters=[("name", "=", train_set)])
    rows = rows.filter(pc.is_valid(rows.column("text")))
    if rows.num_rows == 0:
        known = sorted(set(sets.to_pyarrow_table(columns=["name"]).column(0).to_pylist()))
        raise InputError(f"train set {train_set!r} not found in train_sets; known: "
                         f"{', '.join(known[:20]) or '(none)'}")
    clips = objective == "clips"
    synthetic: dict[str, Optional[str]] = {}
    if clips:
        synthetic = _synthetic_captions(_delta(lake_path, name["captions"]), rows, captioner)
    members: dict[str, list[tuple[str, str, Optional[str]]]] = {}
    for uid, source, text in zip(*(rows.column(c).to_pylist() for c in ("uid", "source",
                                                                           "text"))):
        members.setdefault(uid, []).append((text, source, synthetic.get(f"{uid}\0{source}")))
    if clips:  # CLIPS trains on images: one row per uid, as the export keeps (jobs/export.py)
        members = {u: [sorted(v, key=lambda r: (r[2] is None, r[1]))[0]]
                   for u, v in members.items()}
    pool = _delta(lake_path, name["pool"])
    status = pool.to_pyarrow_table(columns=["status"]).column(0)
    ok = int(pc.sum(pc.equal(status, "ok")).as_py() or 0)
    urls = sorted(_uri(u) for u in pool.file_uris())
    return Source(urls=urls, columns=["uid", "status", "text", "image"],
                  count_columns=["uid", "status"], kind="pool", train_set=train_set,
                  version=sets.version(), digest=_digest(rows), pool_rows=ok, clips=clips,
                  members=members)


def _digest(rows) -> str:
    """blake2b of the rows sorted by (uid, source, text): Arrow sorts, the hash reads buffers."""
    import hashlib

    import pyarrow.compute as pc

    order = pc.sort_indices(rows, sort_keys=[("uid", "ascending"), ("source", "ascending"),
                                             ("text", "ascending")])
    table = rows.take(order).combine_chunks()
    h = hashlib.blake2b(digest_size=16)
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    h.update(buf)
    return h.hexdigest()


def _synthetic_captions(captions, rows, captioner: Optional[str]) -> dict[str, Optional[str]]:
    """(uid, source) -> the full synthetic caption CLIPS decodes: the caption a source names
    (CAPTIONER:SAMPLE), else `captioner`'s (given sample, else lowest) - as `capmix export
    --clips` chooses it."""
    import pyarrow.compute as pc

    uids = pc.unique(rows.column("uid"))
    caps = captions.to_pyarrow_table(columns=["uid", "captioner", "sample", "text"])
    caps = caps.filter(pc.is_in(caps.column("uid"), value_set=uids))
    names = sorted(set(caps.column("captioner").to_pylist()))
    chosen, _, want = (captioner or "").rpartition(":")
    if not (chosen and want.isdigit()):
        chosen, want = captioner or "", ""
    if not chosen:
        if len(names) != 1:
            raise InputError("captions holds " + (f"several captioners ({', '.join(names)})"
                                                  if names else "no captions")
                             + ": choose the synthetic caption CLIPS decodes with "
                               "--set export.captioner=NAME[:SAMPLE]")
        chosen = names[0]
    own: dict[str, str] = {}
    default: dict[str, tuple[int, str]] = {}
    for uid, cap, sample, text in zip(*(caps.column(c).to_pylist()
                                        for c in ("uid", "captioner", "sample", "text"))):
        own[f"{uid}\0{cap}:{sample}"] = text
        if cap == chosen and (not want or sample == int(want)):
            if uid not in default or sample < default[uid][0]:
                default[uid] = (sample, text)
    out: dict[str, Optional[str]] = {}
    for uid, source in zip(rows.column("uid").to_pylist(), rows.column("source").to_pylist()):
        key = f"{uid}\0{source}"
        out[key] = own.get(key) or (default[uid][1] if uid in default else None)
    return out


def _uri(path: str) -> str:
    return path if "://" in path else "file://" + os.path.abspath(path)


def shard_urls(urls: Sequence[str], rank: int, world: int, seed: int) -> list[str]:
    """This rank's disjoint share of the files: a seeded shuffle (the same on every rank), then
    every world-th file. Each rank opens only its own files' footers."""
    import random

    order = sorted(urls)
    random.Random(seed).shuffle(order)
    return order[rank::world]
