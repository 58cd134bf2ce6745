"""DataComp-shaped CommonPool metadata for tests: a parquet (uid, url, text, original_width,
original_height, sha256, clip_PREFIX_similarity_score) and an aligned .npz (PREFIX_img,
PREFIX_txt) per shard, with scores that are the cosine of the stored vectors."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_shard(folder: Path, name: str, uids: list[str], texts: list[Optional[str]],
                towers: dict[str, tuple[np.ndarray, np.ndarray]],
                scores: Optional[dict[str, np.ndarray]] = None,
                npz_extra: Optional[dict[str, np.ndarray]] = None,
                dtype: type = np.float16) -> Path:
    """One shard; `scores[prefix]` replaces the consistent score column (to test disagreement).
    Embeddings are stored as float16 unless `dtype` says, as DataComp ships them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n = len(uids)
    columns = {"uid": uids, "url": [f"http://x/{u}.jpg" for u in uids], "text": texts,
               "original_width": [64] * n, "original_height": [48] * n,
               "sha256": [f"{i:064x}" for i in range(n)]}
    arrays = {}
    for prefix, (img, txt) in towers.items():
        arrays[f"{prefix}_img"], arrays[f"{prefix}_txt"] = img.astype(dtype), txt.astype(dtype)
        half_img = img.astype(dtype).astype(np.float32)
        half_txt = txt.astype(dtype).astype(np.float32)
        half_img /= np.linalg.norm(half_img, axis=1, keepdims=True)
        half_txt /= np.linalg.norm(half_txt, axis=1, keepdims=True)
        consistent = np.einsum("ij,ij->i", half_img, half_txt)
        columns[f"clip_{prefix}_similarity_score"] = (scores or {}).get(prefix, consistent)
    pq.write_table(pa.table(columns), folder / f"{name}.parquet")
    np.savez(folder / f"{name}.npz", **arrays, **(npz_extra or {}))
    return folder / f"{name}.parquet"


def datacomp_pool(folder: Path, shards: int = 2, rows: int = 5, seed: int = 0,
                  dims: Optional[dict[str, int]] = None) -> dict[str, dict[str, np.ndarray]]:
    """`shards` shards with DataComp's two towers (l14: 768, b32: 512 unless `dims` says);
    returns {prefix: {uid: image vector}}."""
    rng = np.random.default_rng(seed)
    dims = dims or {"l14": 768, "b32": 512}
    out: dict[str, dict[str, np.ndarray]] = {p: {} for p in dims}
    for s in range(shards):
        uids = [f"{s:02d}{i:030x}" for i in range(rows)]
        texts = [None if i == 1 else f"caption {s}.{i}" for i in range(rows)]
        towers = {p: (unit(rng, rows, d), unit(rng, rows, d)) for p, d in dims.items()}
        write_shard(folder, f"{s:08d}", uids, texts, towers)
        for p, (img, _) in towers.items():
            out[p].update(zip(uids, img))
    return out
