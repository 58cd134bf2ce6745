"""Fashion-MNIST (Debian's dataset-fashion-mnist) as the real images of the embedded default.

Reads the IDX files and writes captions for them: *descriptive* captions built from what is
visible in each picture (its class, how dark it is, how much texture it has, its shape), in many
phrasings, and *web noise* of the kinds the paper's Figure 1 shows (file names, SEO text, text
about something else, nothing at all). Everything is seeded, so a config always builds the same
pool.
"""
from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot"]

# Several names per class, so descriptive captions are varied, as web text and BLIP-2 are.
SYNONYMS = [
    ["t-shirt", "tee", "short-sleeved top", "crew-neck t-shirt", "casual top"],
    ["pair of trousers", "pair of pants", "trousers", "slacks", "pair of jeans"],
    ["pullover", "sweater", "jumper", "knit pullover", "long-sleeved sweater"],
    ["dress", "sleeveless dress", "summer dress", "women's dress", "shift dress"],
    ["coat", "jacket", "winter coat", "overcoat", "buttoned coat"],
    ["sandal", "open-toe sandal", "summer sandal", "strappy sandal", "flat sandal"],
    ["shirt", "button-up shirt", "collared shirt", "long-sleeved shirt", "blouse"],
    ["sneaker", "running shoe", "trainer", "athletic shoe", "low-top sneaker"],
    ["bag", "handbag", "tote bag", "shoulder bag", "purse"],
    ["ankle boot", "boot", "leather boot", "short boot", "heeled ankle boot"],
]

_TEMPLATES = [
    "a {tone} {item}",
    "a photo of a {tone} {item}",
    "{tone} {item} on a black background",
    "a {texture} {tone} {item}",
    "product photo of a {shape} {item} in {tone_noun}",
    "a {item} in {tone_noun}, {texture}",
    "close-up of a {texture} {item}",
    "a grayscale picture of a {shape} {tone} {item}",
    "the {item} is {tone} and {texture}",
    "a {shape} {item} with a {texture} look",
]

_FILE_STEMS = ["IMG_", "DSC", "DSC_", "P", "image", "photo_", "product-", "SKU", "item_", "pic"]
_FILE_EXTS = [".jpg", ".JPG", ".jpeg", ".png", "_large.jpg", "_thumb.jpg", ".webp"]
_SEO = [
    "Best Deals Online | Free Shipping on Orders Over $50",
    "Shop Now - New Arrivals 2023 - Up To 70% Off",
    "Buy Cheap Fashion Online | Top Brands | Fast Delivery",
    "Click here to view more products",
    "Sale! Limited time offer, add to cart today",
    "Wholesale Clothing Supplier - Contact Us For Price List",
    "Trending Now: Must-Have Looks For Every Season",
    "Customer Reviews 4.8/5 - Order Today",
]
_GENERIC = [
    "Image Not Found", "untitled", "No description available", "Italien - Ligurien",
    "Home > Products > Category", "Welcome to our store", "thumbnail", "default image",
    "2016.07.01 Nametags with Pronouns - Avery 5392_nonbranded", "placeholder",
]

NOISE_KINDS = ("filename", "seo", "unrelated", "missing", "generic")


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 [n, 28, 28]
    labels: np.ndarray  # int64 [n]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    _, dtype, ndim = struct.unpack(">HBB", data[:4])
    if dtype != 0x08:
        raise ValueError(f"{path}: unsupported IDX element type {dtype:#x}")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{stem}[.gz] not found in {folder} (apt-get install "
                            "dataset-fashion-mnist, or set demo.fashion_mnist_dir)")


def load(folder: str | Path = DEFAULT_DIR) -> tuple[Split, Split]:
    """(train, test) splits: 60,000 and 10,000 labelled 28x28 greyscale photos."""
    folder = Path(folder)
    out = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        out.append(Split(images, labels))
    return out[0], out[1]


def visual_attributes(image: np.ndarray) -> dict[str, str]:
    """Words a captioner could ground in the pixels: tone, texture and shape."""
    fg = image[image > 20]
    mean = float(fg.mean()) if fg.size else 0.0
    spread = float(fg.std()) if fg.size else 0.0
    tone, tone_noun = (("dark", "dark grey") if mean < 90 else ("grey", "mid grey") if mean < 140
                       else ("light", "light grey") if mean < 190 else ("white", "white"))
    texture = "plain" if spread < 35 else "textured" if spread < 60 else "patterned"
    ys, xs = np.nonzero(image > 20)
    if xs.size:
        width, height = xs.ptp() + 1, ys.ptp() + 1
        ratio = width / height
        shape = "wide" if ratio > 1.3 else "tall" if ratio < 0.6 else "boxy"
    else:
        shape = "small"
    return {"tone": tone, "tone_noun": tone_noun, "texture": texture, "shape": shape}


def describe(image: np.ndarray, label: int, rng: np.random.Generator) -> str:
    """A descriptive caption of this picture, in one of many phrasings."""
    words = visual_attributes(image)
    words["item"] = SYNONYMS[label][rng.integers(len(SYNONYMS[label]))]
    return _TEMPLATES[rng.integers(len(_TEMPLATES))].format(**words)


def web_noise(kind: str, rng: np.random.Generator, other: str | None = None) -> str | None:
    """A raw caption that says nothing true about the picture (None: the text is missing)."""
    if kind == "filename":
        return (f"{_FILE_STEMS[rng.integers(len(_FILE_STEMS))]}{rng.integers(10, 99999):05d}"
                f"{_FILE_EXTS[rng.integers(len(_FILE_EXTS))]}")
    if kind == "seo":
        return _SEO[rng.integers(len(_SEO))]
    if kind == "unrelated":
        return other
    if kind == "missing":
        return None
    if kind == "generic":
        return _GENERIC[rng.integers(len(_GENERIC))]
    raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}")


def web_captions(split: Split, descriptive_share: float, seed: int) -> tuple[list, list[str]]:
    """Raw captions for a web-like pool: `descriptive_share` of them describe their image, the
    rest are noise of a kind drawn uniformly from NOISE_KINDS. Returns (captions, kinds)."""
    rng = np.random.default_rng(seed)
    n = len(split.labels)
    captions: list = []
    kinds: list[str] = []
    for i in range(n):
        if rng.random() < descriptive_share:
            captions.append(describe(split.images[i], int(split.labels[i]), rng))
            kinds.append("descriptive")
            continue
        kind = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
        other = None
        if kind == "unrelated":  # the true description of some other-class picture
            j = int(rng.integers(n))
            while split.labels[j] == split.labels[i]:
                j = int(rng.integers(n))
            other = describe(split.images[j], int(split.labels[j]), rng)
        captions.append(web_noise(kind, rng, other))
        kinds.append(kind)
    return captions, kinds


def clean_captions(split: Split, seed: int) -> list[str]:
    """Descriptive captions for every picture (the curated and held-out splits)."""
    rng = np.random.default_rng(seed)
    return [describe(split.images[i], int(split.labels[i]), rng) for i in range(len(split.labels))]


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()
