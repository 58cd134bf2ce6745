"""Write samples as webdataset shards in the img2dataset / DataComp layout: `NNNNN.tar` holding
KEY.png + KEY.txt + KEY.json per sample, and `NNNNN.parquet` beside it with the metadata
(uid, key, url, caption, width, height, sha256, status), so the demo pool goes through the same
ingest path as a real web pool."""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator


@dataclass
class Sample:
    uid: str
    image: bytes
    text: str | None  # None: the sample has no .txt member, as with missing alt-text
    url: str
    width: int
    height: int
    meta: dict = field(default_factory=dict)  # extra json fields (e.g. the demo's label)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(data))


def write_shards(out_dir: str | Path, samples: Iterable[Sample], shard_size: int,
                 image_ext: str = "png") -> list[Path]:
    """Write all samples, `shard_size` per shard; returns the tar paths in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, chunk in enumerate(_chunks(samples, shard_size)):
        tar_path = out / f"{index:05d}.tar"
        rows = []
        with tarfile.open(tar_path, "w") as tar:
            for offset, s in enumerate(chunk):
                key = f"{index:05d}{offset:04d}"
                sha = hashlib.sha256(s.image).hexdigest()
                record = {"uid": s.uid, "key": key, "url": s.url, "caption": s.text,
                          "width": s.width, "height": s.height, "sha256": sha,
                          "status": "success", **s.meta}
                _add(tar, f"{key}.{image_ext}", s.image)
                if s.text is not None:
                    _add(tar, f"{key}.txt", s.text.encode("utf-8"))
                _add(tar, f"{key}.json", json.dumps(record).encode("utf-8"))
                rows.append({k: record[k] for k in ("uid", "key", "url", "caption", "width",
                                                    "height", "sha256", "status")})
        pq.write_table(pa.Table.from_pylist(rows), out / f"{index:05d}.parquet")
        paths.append(tar_path)
    return paths


def _chunks(items: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    chunk: list[Sample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
