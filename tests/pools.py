"""Build small ingest inputs in tests: webdataset shards, image folders, parquet files, images.

    from pools import make_samples, make_shard      # tests/ is on sys.path under pytest
    samples = make_samples(8, prefix="00")          # Fashion-MNIST photos + captions
    make_shard(tmp_path, "00000", samples)          # 00000.tar + 00000.parquet (img2dataset)
    make_img2dataset_output(tmp_path, samples, failed=2)  # + stats json, url list, failures

Images are real Fashion-MNIST photos (28x28, Debian's dataset-fashion-mnist) when installed,
otherwise PIL-drawn shapes; captions name the garment ("a photo of a sneaker").
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_LABELS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                  "sneaker", "bag", "ankle boot")


# -- images ---------------------------------------------------------------------------------------
def fashion_mnist(n: int, offset: int = 0) -> Optional[tuple[np.ndarray, list[int]]]:
    """(n x 28 x 28 uint8 images, labels) from the test split, or None when not installed."""
    images, labels = FASHION_DIR / "t10k-images-idx3-ubyte.gz", \
        FASHION_DIR / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file() or offset + n > 10_000:
        return None
    with gzip.open(images, "rb") as fh:
        fh.read(16 + offset * 784)
        pixels = np.frombuffer(fh.read(n * 784), dtype=np.uint8).reshape(n, 28, 28)
    with gzip.open(labels, "rb") as fh:
        fh.read(8 + offset)
        found = list(fh.read(n))
    return pixels.copy(), found


def _drawn(i: int, size: int = 28) -> tuple[Image.Image, int]:
    rng = np.random.default_rng(i)
    img = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(img)
    a, b = sorted(rng.integers(0, size, 2))
    draw.ellipse((a, a, max(b, a + 2), max(b, a + 2)), fill=tuple(int(c) for c in
                                                                 rng.integers(0, 256, 3)))
    return img, i % len(FASHION_LABELS)


def encode(img: Image.Image, fmt: str = "jpeg", **kwargs) -> bytes:
    buf = io.BytesIO()
    fmt = {"jpg": "jpeg"}.get(fmt.lower(), fmt.lower())
    img.save(buf, format=fmt.upper(), **kwargs)
    return buf.getvalue()


def sample_pictures(n: int, offset: int = 0) -> list[tuple[Image.Image, int]]:
    """n (RGB PIL image, label) pairs: Fashion-MNIST if installed, else drawn shapes."""
    data = fashion_mnist(n, offset)
    if data is None:
        return [_drawn(offset + i) for i in range(n)]
    pixels, labels = data
    return [(Image.fromarray(p).convert("RGB"), lab) for p, lab in zip(pixels, labels)]


def sample_images(n: int, fmt: str = "jpeg", offset: int = 0) -> list[bytes]:
    return [encode(img, fmt) for img, _ in sample_pictures(n, offset)]


def caption_for(label: int) -> str:
    return f"a photo of a {FASHION_LABELS[label]}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- webdataset shards --------------------------------------------------------------------------
@dataclass
class Sample:
    """One webdataset sample: KEY.<ext> image, KEY.txt caption, KEY.json sidecar.
    `json` may be a dict (written as JSON) or raw bytes (for broken sidecars)."""

    key: str
    image: Optional[bytes]
    ext: str = "jpg"
    text: Union[str, bytes, None] = None
    json: Union[dict, bytes, None] = None
    url: Optional[str] = None
    extra: dict = field(default_factory=dict)  # more members: {ext: bytes}


def make_samples(n: int, prefix: str = "", offset: int = 0, fmt: str = "jpg",
                 uids: bool = False) -> list[Sample]:
    """n good samples with keys `{prefix}{i:04d}`, captions from the labels, a json sidecar
    (img2dataset fields; DataComp's `uid` too when `uids`)."""
    out = []
    for i, (img, label) in enumerate(sample_pictures(n, offset)):
        key = f"{prefix}{i:04d}"
        url = f"https://example.com/{key}.{fmt}"
        side = {"key": key, "url": url, "caption": caption_for(label), "status": "success",
                "width": img.width, "height": img.height}
        if uids:
            side["uid"] = hashlib.md5(key.encode()).hexdigest()
        out.append(Sample(key, encode(img, fmt), fmt, caption_for(label), side, url))
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def make_shard(directory: Union[str, Path], name: str, samples: Iterable[Sample],
               parquet: Optional[str] = "img2dataset",
               members: Iterable[tuple[str, bytes]] = ()) -> Path:
    """Write `name`.tar (members in sample order, then `members` as raw (name, bytes)) and,
    unless `parquet` is None, `name`.parquet beside it in the "img2dataset" layout (key, url,
    caption, status, width, height, sha256) or the "datacomp" one (uid, url, text,
    original_width, original_height, sha256; no key). Returns the .tar path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    samples = list(samples)
    path = directory / f"{name}.tar"
    with tarfile.open(path, "w") as tar:
        for s in samples:
            if s.image is not None:
                _add(tar, f"{s.key}.{s.ext}", s.image)
            if s.text is not None:
                _add(tar, f"{s.key}.txt", s.text.encode() if isinstance(s.text, str) else s.text)
            if s.json is not None:
                raw = s.json if isinstance(s.json, bytes) else json.dumps(s.json).encode()
                _add(tar, f"{s.key}.json", raw)
            for ext, data in s.extra.items():
                _add(tar, f"{s.key}.{ext}", data)
        for member, data in members:
            _add(tar, member, data)
    if parquet:
        _shard_parquet(directory / f"{name}.parquet", samples, parquet)
    return path


def _shard_parquet(path: Path, samples: list[Sample], flavor: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for s in samples:
        side = s.json if isinstance(s.json, dict) else {}
        caption = s.text if isinstance(s.text, str) else side.get("caption")
        sha = sha256(s.image) if s.image is not None else None
        if flavor == "datacomp":
            rows.append({"uid": side.get("uid"), "url": s.url, "text": caption,
                         "original_width": side.get("width"),
                         "original_height": side.get("height"), "sha256": sha})
        else:
            rows.append({"key": s.key, "url": s.url, "caption": caption, "status": "success",
                         "error_message": None, "width": side.get("width"),
                         "height": side.get("height"), "sha256": sha})
    pq.write_table(pa.Table.from_pylist(rows), path)


def make_img2dataset_output(directory: Union[str, Path], samples: list[Sample], failed: int = 0,
                            layout: str = "webdataset") -> Path:
    """An output folder as a default img2dataset 1.47 run leaves it (`--output_format layout`):
    shard 00000 (webdataset: 00000.tar; files: a folder 00000/ of KEY.jpg/.txt/.json; parquet:
    images in 00000.parquet's `jpg` column) and 00000.parquet listing every url tried, `failed`
    of them as failed downloads with status and error_message; the images are re-encoded, so the
    parquet's sha256 (of the download) is not theirs; 00000_stats.json and the url list
    urls.txt beside them. Returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [{"key": s.key, "url": s.url, "caption": s.text, "status": "success",
             "error_message": None, "width": s.json["width"], "height": s.json["height"],
             "sha256": sha256(b"downloaded " + s.key.encode())} for s in samples]
    rows += [{"key": f"{len(samples) + i:04d}", "url": f"https://example.com/gone{i}.jpg",
              "caption": f"gone {i}", "status": "failed_to_download",
              "error_message": "HTTP Error 404: Not Found", "width": None, "height": None,
              "sha256": None} for i in range(failed)]
    if layout == "webdataset":
        make_shard(directory, "00000", samples, parquet=None)
    elif layout == "files":
        (directory / "00000").mkdir(exist_ok=True)
        for s in samples:
            (directory / "00000" / f"{s.key}.jpg").write_bytes(s.image)
            (directory / "00000" / f"{s.key}.txt").write_text(s.text)
            (directory / "00000" / f"{s.key}.json").write_text(json.dumps(s.json))
    else:
        images = {s.key: s.image for s in samples}
        rows = [{**r, "jpg": images.get(r["key"]), "txt": r["caption"]} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), directory / "00000.parquet")
    stats = {"count": len(rows), "successes": len(samples), "failed_to_download": failed,
             "config": {"output_format": layout, "disable_all_reencoding": False}}
    (directory / "00000_stats.json").write_text(json.dumps(stats))
    (directory / "urls.txt").write_text("".join(f"{r['url']}\n" for r in rows))
    return directory


# -- image folders and parquet ------------------------------------------------------------------
def make_folder(directory: Union[str, Path], images: dict[str, bytes],
                captions: Optional[dict[str, Union[str, dict, None]]] = None,
                fmt: str = "jsonl") -> Path:
    """Images at relative paths + `captions.jsonl` (or `.csv`) mapping file -> caption.
    A caption value may be a dict with `caption` and optional `uid`/`url`."""
    directory = Path(directory)
    for rel, data in images.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    directory.mkdir(parents=True, exist_ok=True)
    if captions is None:
        return directory
    records = [{"file": rel, **(v if isinstance(v, dict) else {"caption": v})}
               for rel, v in captions.items()]
    if fmt == "jsonl":
        lines = [json.dumps(r, ensure_ascii=False) for r in records]
        (directory / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        fields = sorted({k for r in records for k in r}, key=lambda k: (k != "file", k))
        with open(directory / "captions.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
    return directory


def make_parquet(path: Union[str, Path], rows: list[dict],
                 row_group_rows: Optional[int] = None) -> Path:
    """A parquet file of `rows` (e.g. {"image": bytes, "text": str}, or HF's
    {"image": {"bytes": ..., "path": ...}}), in row groups of `row_group_rows`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_rows)
    return path


# -- odd and bad images -------------------------------------------------------------------------
def odd_images() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Valid but unusual images -> (bytes, (width, height) as displayed)."""
    rgb = Image.new("RGB", (30, 10), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    pal = Image.new("P", (12, 12), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(pal).rectangle((3, 3, 8, 8), fill=1)
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    deep = np.linspace(0, 65535, 24 * 8, dtype=np.uint16).reshape(8, 24)
    return {
        "cmyk.jpg": (encode(Image.new("CMYK", (20, 10), (0, 255, 255, 0)), "jpeg"), (20, 10)),
        "gray16.png": (encode(Image.fromarray(deep), "png"), (24, 8)),
        "palette_transparent.png": (encode(pal, "png", transparency=0), (12, 12)),
        "animated.gif": (gif.getvalue(), (16, 12)),
        "photo.webp": (encode(Image.new("RGB", (18, 14), (10, 120, 200)), "webp"), (18, 14)),
        "exif_rotated.jpg": (encode(rgb, "jpeg", exif=exif.tobytes()), (10, 30)),
        "tiny.png": (encode(Image.new("RGB", (1, 1), (1, 2, 3)), "png"), (1, 1)),
        "tall.png": (encode(Image.new("L", (1, 2000), 128), "png"), (1, 2000)),
    }


def bomb_png(width: int, height: int) -> bytes:
    """A few-byte PNG whose header claims width x height pixels (a decompression bomb shape)."""
    data = bytearray(encode(Image.new("1", (1, 1)), "png"))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


def bad_images() -> dict[str, tuple[bytes, str]]:
    """Images that must become error rows -> (bytes, a fragment of the expected error)."""
    good = encode(Image.new("RGB", (64, 64), (90, 90, 90)), "jpeg", quality=95)
    return {
        "empty.jpg": (b"", "0 bytes"),
        "truncated.jpg": (good[: len(good) // 2], "truncated"),
        "not_an_image.jpg": (b"<html><body>404 not found</body></html>", "not an image"),
        "bomb.png": (bomb_png(100_000, 100_000), "decompression bomb"),
    }
