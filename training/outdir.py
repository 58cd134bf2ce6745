"""A training run's output folder (`--out`): a local folder, or a prefix in an object store.

Local folders keep pathlib and `os.replace`, exactly as before stores were accepted. A store's
URI (s3://, gs://, abfss://, hdfs://) is written through fsspec (capmix.storage), with the
store's standard credentials and endpoint (AWS_* variables, AWS_ENDPOINT_URL included). Stores
have no append and no atomic rename, which shapes two things here: JSON-lines logs are kept in
a local copy and uploaded whole (`AppendLog.sync`), and small files are written with one PUT,
which a store shows all at once or not at all. Checkpoints (training/checkpoint.py) add a
temporary key and a move on top, because fsspec commits what was buffered even when the writer
fails.

DBFS (`dbfs:/...`) is local here: Databricks mounts it as /dbfs (and /Volumes) on every node.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Union

from capmix import storage

Where = Union[str, "os.PathLike[str]"]


def is_remote(path: Where) -> bool:
    """True for a store's URI, written through fsspec; False for local paths and DBFS."""
    text = os.fspath(path)
    return storage.is_uri(text) and not storage.is_local(text)


def local(path: Where) -> Path:
    """A local path as pathlib sees it (plain paths untouched; dbfs:/X as its FUSE path)."""
    text = os.fspath(path)
    return Path(storage.local_path(text)) if storage.is_uri(text) else Path(path)


def join(out: Where, *names: str) -> Union[str, Path]:
    """OUT/names...: a URI string for a store, a Path otherwise."""
    if is_remote(out):
        return storage.join(os.fspath(out).rstrip("/"), *names)
    return local(out).joinpath(*names)


def run_name(out: Where) -> str:
    """The folder's own name: the default run name."""
    if is_remote(out):
        return storage.basename(os.fspath(out))
    return local(out).resolve().name


def write_text(path: Where, text: str) -> None:
    """Replace a small file whole: a rename locally, one PUT in a store (either shows the old
    content or the new, never part of it)."""
    if is_remote(path):
        fs, inner = storage.filesystem(os.fspath(path))
        fs.pipe_file(inner, text.encode("utf-8"))
        return
    target = local(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def remove_tree(path: Where) -> None:
    """Remove a folder and everything under it; a missing one is not an error."""
    if is_remote(path):
        storage.remove(os.fspath(path))
    else:
        shutil.rmtree(local(path), ignore_errors=True)


class AppendLog:
    """A JSON-lines file that a resumed run appends to.

    Local: opened in append mode and flushed per line, so a kill loses at most the line being
    written. In a store, which cannot append: the store's earlier lines are copied to a local
    file, appended to, and uploaded whole by `sync` (the caller's checkpoints) and `close`; a
    kill loses the lines since the last sync, which the resumed run writes again from its
    checkpoint on."""

    def __init__(self, path: Where):
        self.path = path
        self.staged: str | None = None
        if is_remote(path):
            fs, inner = storage.filesystem(os.fspath(path))
            fd, self.staged = tempfile.mkstemp(prefix="capmix-", suffix=".jsonl")
            os.close(fd)
            if fs.exists(inner):
                fs.get_file(inner, self.staged)
            self.fh = open(self.staged, "a", encoding="utf-8")
        else:
            target = local(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(target, "a", encoding="utf-8")

    def write(self, line: str) -> None:
        self.fh.write(line)
        self.fh.flush()

    def sync(self) -> None:
        """Upload the staged copy (a store only; local lines are on disk already)."""
        if self.staged is not None:
            self.fh.flush()
            fs, inner = storage.filesystem(os.fspath(self.path))
            fs.put_file(self.staged, inner)

    def close(self) -> None:
        if self.fh.closed:
            return
        try:
            self.sync()
        finally:
            self.fh.close()
            if self.staged is not None:
                os.unlink(self.staged)
