"""Paths and URIs: one door to local folders and object stores for everything capmix opens itself.

Python code (ingest's planning and readers, exports, checkpoints) goes through fsspec, which
reads each store's standard credentials: the AWS_* environment variables (AWS_ENDPOINT_URL
included, through botocore) for `s3://`, gcsfs's and adlfs's own for `gs://` and `abfss://`,
pyarrow's HDFS client for `hdfs://`. Spark reads the same stores through Hadoop's filesystems
(`spark_path`: `s3://` becomes `s3a://`, configured by `spark.hadoop.fs.s3a.*`, see
`capmix.spark.object_store_conf`).

Databricks: `/Volumes/...` is a local (FUSE) path on every node; `dbfs:/X` is opened as `/dbfs/X`
by Python code, where Databricks mounts it, and handed to Spark as is.

Paths keep the scheme the user gave: listing `s3://b/shards/*.tar` returns `s3://b/shards/0.tar`,
and a local path stays an absolute local path (no `file://`), so what the pool's `source` column
records reads the same as the command line.
"""
from __future__ import annotations

import os
import posixpath
import re
from typing import IO, TYPE_CHECKING, Iterator, Optional

from capmix.errors import InputError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(//)?")
# Schemes fsspec knows under another name.
_FSSPEC_NAME = {"s3a": "s3", "s3n": "s3", "abfss": "abfs", "wasbs": "abfs"}
# Hadoop's names for what Python calls s3://.
_SPARK_NAME = {"s3": "s3a", "s3n": "s3a"}


def scheme(path: str) -> str:
    """'s3', 'gs', 'dbfs', ... or '' for a local path (a Windows drive letter is local)."""
    match = _SCHEME.match(path)
    if not match or (len(match.group(1)) == 1 and not match.group(2)):
        return ""
    return match.group(1).lower()


def is_uri(path: str) -> bool:
    """True for a remote URI; `file:` and plain paths are local."""
    return scheme(path) not in ("", "file")


def is_local(path: str) -> bool:
    return not is_uri(path) or _dbfs_fuse(path) is not None


def _dbfs_fuse(path: str) -> Optional[str]:
    """`dbfs:/X` as the FUSE path Databricks mounts at /dbfs, where it is mounted."""
    if scheme(path) != "dbfs":
        return None
    rest = path[len("dbfs:"):].lstrip("/")
    if rest.startswith("Volumes/"):
        return "/" + rest
    return "/dbfs/" + rest if os.path.isdir("/dbfs") else None


def local_path(path: str) -> str:
    """An absolute local path for a local input (`~` expanded, `file:` stripped)."""
    fuse = _dbfs_fuse(path)
    if fuse is not None:
        return fuse
    if scheme(path) == "file":
        path = re.sub(r"^file:(//)?", "", path)
    return os.path.abspath(os.path.expanduser(path))


def normalize(path: str) -> str:
    """What capmix records and hands on: local paths absolute, URIs as given (no trailing /)."""
    return local_path(path) if not is_uri(path) else path.rstrip("/")


def spark_path(path: str) -> str:
    """The same location as Hadoop names it (s3:// -> s3a://; local paths absolute)."""
    name = scheme(path)
    if name in _SPARK_NAME:
        return _SPARK_NAME[name] + path[len(name):]
    return path if is_uri(path) else local_path(path)


def filesystem(path: str) -> tuple["AbstractFileSystem", str]:
    """(fsspec filesystem, its path) for a local path or a URI. A store whose fsspec package is
    not installed (gcsfs, adlfs) is one line naming the package."""
    if is_local(path):
        from fsspec.implementations.local import LocalFileSystem

        return LocalFileSystem(), local_path(path)
    import fsspec

    name = scheme(path)
    target = _FSSPEC_NAME.get(name, name) + path[len(name):]
    try:
        fs, inner = fsspec.core.url_to_fs(target)
    except ImportError as exc:
        raise InputError(f"cannot open {path}: {exc}") from None
    except ValueError as exc:
        raise InputError(f"cannot open {path}: {exc}") from None
    return fs, inner


def _outer(path: str, fs: "AbstractFileSystem", inner: str) -> str:
    """`inner` (fsspec's scheme-less path) written the way the user wrote `path`."""
    if is_local(path):
        return inner
    name = scheme(path)
    return f"{name}://{inner.lstrip('/')}" if path[len(name):].startswith("://") else \
        f"{name}:/{inner.lstrip('/')}"


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def isdir(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.isdir(inner)


def isfile(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.isfile(inner)


def join(base: str, *names: str) -> str:
    if is_local(base) and not is_uri(base):
        return os.path.join(base, *names)
    return posixpath.join(base, *names)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_uri(path) else os.path.basename(path)


def listdir(path: str) -> list[str]:
    """Names (not paths) in a folder, sorted."""
    fs, inner = filesystem(path)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False)
                  if p.rstrip("/") != inner.rstrip("/"))


def glob(pattern: str) -> list[str]:
    """Matches of a glob pattern, sorted, written like the pattern (scheme kept)."""
    fs, inner = filesystem(pattern)
    return sorted(_outer(pattern, fs, p) for p in fs.glob(inner))


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """os.walk's (folder, dirs, files), folders written like `path`; prune `dirs` in place."""
    fs, inner = filesystem(path)
    for root, dirs, files in fs.walk(inner, topdown=True):
        yield _outer(path, fs, root), dirs, files


def open_input(path: str, mode: str = "rb") -> IO:
    """A streaming file object (object stores read in blocks as it is consumed: nothing is
    copied to local disk first)."""
    fs, inner = filesystem(path)
    return fs.open(inner, mode)


def size(path: str) -> int:
    fs, inner = filesystem(path)
    return int(fs.size(inner))


def makedirs(path: str) -> None:
    fs, inner = filesystem(path)
    fs.makedirs(inner, exist_ok=True)


def remove(path: str) -> None:
    """Remove a file or folder tree; a missing one is not an error."""
    fs, inner = filesystem(path)
    if fs.exists(inner):
        fs.rm(inner, recursive=True)


def pyarrow_fs(path: str):
    """(pyarrow FileSystem, its path) for pyarrow.parquet / pyarrow.dataset readers."""
    from pyarrow.fs import FSSpecHandler, LocalFileSystem, PyFileSystem

    if is_local(path):
        return LocalFileSystem(), local_path(path)
    fs, inner = filesystem(path)
    return PyFileSystem(FSSpecHandler(fs)), inner


def store_root(path: str) -> str:
    """`s3://bucket` of `s3://bucket/a/b` (the unit `check_reachable` asks about)."""
    if not is_uri(path):
        return path
    name = scheme(path)
    rest = path[len(name) + 1:].lstrip("/")
    return f"{name}://{rest.split('/', 1)[0]}"


def check_reachable(path: str, what: str) -> None:
    """Fail with one line when `path`'s store refuses us (bad credentials, no such bucket,
    unreachable endpoint), before anything is written. Local paths always pass here."""
    if is_local(path):
        return
    fs, inner = filesystem(path)
    bucket = inner.split("/", 1)[0]
    try:
        fs.info(bucket)  # one request (S3: HeadBucket), whatever the bucket holds
    except FileNotFoundError:
        raise InputError(f"{what} {path}: bucket or container {bucket!r} does not exist") \
            from None
    except PermissionError as exc:
        raise InputError(f"{what} {path}: access denied ({_short(exc)}); check the credentials "
                         "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the store's own)") from None
    except Exception as exc:  # connection refused, DNS, timeouts: botocore/aiohttp types vary
        raise InputError(f"{what} {path}: cannot reach the store ({_short(exc)}); check "
                         "AWS_ENDPOINT_URL / the network") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def petastorm_filesystem(path: str):
    """The legacy pyarrow filesystem petastorm 0.13 reads a store through (None for local
    paths, which it opens itself). Its own s3fs wrapper (pyarrow's S3FSWrapper) calls s3fs's
    old synchronous `_ls`, a coroutine in today's s3fs; this adapter uses fsspec's public,
    synchronous calls, so any fsspec store (s3, gs, abfs) works."""
    if is_local(path):
        return None
    import warnings

    from pyarrow.filesystem import DaskFileSystem

    fs, _ = filesystem(path)

    class _Fsspec(DaskFileSystem):
        def isdir(self, p):
            return self.fs.isdir(p)

        def isfile(self, p):
            return self.fs.isfile(p)

        def ls(self, p, detail=False):
            return self.fs.ls(p, detail=detail)

        def walk(self, p):
            for root, dirs, files in self.fs.walk(p):
                yield root, sorted(dirs), sorted(files)

    with warnings.catch_warnings():  # "deprecated since pyarrow 3": petastorm needs it still
        warnings.simplefilter("ignore", FutureWarning)
        return _Fsspec(fs)
