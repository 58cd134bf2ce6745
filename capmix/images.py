"""Image checks at ingest and normalisation for the models, shared by every stage.

The pool keeps each image's original bytes; `inspect_image` decides whether they decode (and
why not), `to_rgb` turns any valid image (CMYK, 16-bit, palette with transparency, animated,
EXIF-rotated) into the 8-bit RGB picture a model transform expects.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Optional

from PIL import Image, ImageOps, UnidentifiedImageError

# capmix applies its own, configurable pixel limit before decoding (inspect_image); PIL's global
# one would otherwise raise on images the configuration allows.
Image.MAX_IMAGE_PIXELS = None

# EXIF orientations that rotate by 90 degrees, i.e. swap width and height.
_TRANSPOSED = {5, 6, 7, 8}


@dataclass(frozen=True)
class ImageInfo:
    ok: bool
    width: Optional[int] = None
    height: Optional[int] = None
    format: Optional[str] = None
    error: Optional[str] = None


def inspect_image(data: bytes | None, max_pixels: int) -> ImageInfo:
    """Decode fully (first frame) and report size as displayed (after EXIF rotation)."""
    if not data:
        return ImageInfo(False, error="empty image: 0 bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            width, height = img.size
            if width * height > max_pixels:
                return ImageInfo(False, width, height, fmt,
                                 f"decompression bomb suspect: {width}x{height} = "
                                 f"{width * height:,} pixels > limit {max_pixels:,}")
            img.load()
            orientation = _orientation(img)
    except UnidentifiedImageError:
        return ImageInfo(False, error="not an image: unknown or unsupported format")
    except Image.DecompressionBombError as exc:
        return ImageInfo(False, error=f"decompression bomb suspect: {exc}")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return ImageInfo(False, error=f"corrupt or truncated image: {_short(exc)}")
    except Exception as exc:  # a decoder bug must not stop the ingest of everything else
        return ImageInfo(False, error=f"cannot decode image: {type(exc).__name__}: {_short(exc)}")
    if orientation in _TRANSPOSED:
        width, height = height, width
    return ImageInfo(True, width, height, fmt)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # broken EXIF is not a broken image
        return 1


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_rgb(data: bytes, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any valid image -> 8-bit RGB, upright, first frame, transparency flattened on `background`."""
    img = Image.open(io.BytesIO(data))
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _to_8bit(img)
        mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB") if mode != "RGB" else img


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and float greyscale -> 8-bit L, by the range the type can hold (not min/max,
    which would turn a flat dark image into noise)."""
    import numpy as np

    arr = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scale = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    else:
        # Mode "I" from a 16-bit PNG holds 0..65535; 8-bit data promoted to "I" stays <= 255.
        scale = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
    return Image.fromarray(np.clip(scale * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
