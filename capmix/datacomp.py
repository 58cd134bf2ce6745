"""DataComp CommonPool metadata: a shard's parquet (uid, url, text, original_width,
original_height, sha256, clip_b32_similarity_score, clip_l14_similarity_score) and the .npz beside
it, rows aligned with the parquet, holding `b32_img`, `b32_txt`, `l14_img` and `l14_txt`.

A tower is named by its prefix (`l14`, `b32`, or any other a tool writes as PREFIX_img /
PREFIX_txt / clip_PREFIX_similarity_score). The two DataComp prefixes come from OpenAI's CLIP
weights, so they may only be loaded under a scorer of that architecture and those weights.

`check_shard` reads only the parquet footer and the npy headers inside the npz (no vectors), so
the driver checks every shard's row counts and dimensions before anything is written;
`read_shard` runs on an executor, one shard per task.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

# prefix -> (open_clip architecture, pretrained tag) of the weights that produced it
KNOWN_TOWERS = {"l14": ("ViT-L-14", "openai"), "b32": ("ViT-B-32", "openai")}
TOLERANCE = 1e-4  # |recomputed - stored| similarity above this counts as a disagreement


def npz_path(parquet: str) -> str:
    return parquet[: -len(".parquet")] + ".npz"


def score_column(prefix: str) -> str:
    return f"clip_{prefix}_similarity_score"


def npz_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """{array name: shape} from the npy headers of an .npz, without reading the arrays."""
    out = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            with zf.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                shape, _, _ = read(fh)
            out[name[: -len(".npy")]] = tuple(shape)
    return out


@dataclass(frozen=True)
class ShardCheck:
    rows: int
    dims: dict  # prefix -> embedding dimension


def check_shard(parquet: str, prefixes: list[str]) -> ShardCheck:
    """Row counts and dimensions of one shard for the wanted towers; ValueError with one line
    naming the shard and the mismatch."""
    import pyarrow.parquet as pq

    name = os.path.basename(parquet)
    npz = npz_path(parquet)
    if not os.path.isfile(npz):
        raise ValueError(f"{name}: no embeddings file {os.path.basename(npz)} beside it")
    rows = pq.ParquetFile(parquet).metadata.num_rows
    columns = set(pq.read_schema(parquet).names)
    shapes = npz_shapes(npz)
    if "uid" not in columns:
        raise ValueError(f"{name}: no `uid` column")
    dims = {}
    for prefix in prefixes:
        for kind in ("img", "txt"):
            shape = shapes.get(f"{prefix}_{kind}")
            if shape is None:
                raise ValueError(f"{os.path.basename(npz)}: no `{prefix}_{kind}` array (it has "
                                 f"{', '.join(sorted(shapes)) or 'none'})")
            if len(shape) != 2 or shape[0] != rows:
                raise ValueError(f"{os.path.basename(npz)}: `{prefix}_{kind}` has shape {shape}; "
                                 f"its parquet has {rows} rows")
            dims.setdefault(prefix, shape[1])
            if shape[1] != dims[prefix]:
                raise ValueError(f"{os.path.basename(npz)}: `{prefix}_img` and `{prefix}_txt` "
                                 "have different dimensions")
        if score_column(prefix) not in columns:
            raise ValueError(f"{name}: no `{score_column(prefix)}` column")
    if "uid" in shapes and shapes["uid"][0] != rows:
        raise ValueError(f"{os.path.basename(npz)}: {shapes['uid'][0]} uids for {rows} rows")
    return ShardCheck(rows, dims)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class ShardData:
    uids: list
    texts: list
    img: np.ndarray          # (rows, dim) float32, unit length
    similarity: np.ndarray   # recomputed from the stored embeddings
    stored: np.ndarray       # the shard's own score column
    problem: Optional[str] = None

    @property
    def disagree(self) -> int:
        return int(np.sum(~(np.abs(self.similarity - self.stored) <= TOLERANCE)))


def read_shard(parquet: str, prefix: str) -> ShardData:
    """One tower of one shard, checked row by row: uids present, unique, and the same as the
    npz's own `uid` array when it has one (then `problem` says what is wrong)."""
    import pyarrow.parquet as pq

    name = os.path.basename(parquet)
    table = pq.read_table(parquet, columns=["uid", "text", score_column(prefix)]
                          if "text" in pq.read_schema(parquet).names
                          else ["uid", score_column(prefix)])
    uids = table.column("uid").to_pylist()
    texts = table.column("text").to_pylist() if "text" in table.column_names else [None] * len(uids)
    stored = np.asarray(table.column(score_column(prefix)).to_numpy(zero_copy_only=False),
                        dtype=np.float64)
    with np.load(npz_path(parquet), allow_pickle=False) as z:
        img, txt = _unit(z[f"{prefix}_img"]), _unit(z[f"{prefix}_txt"])
        npz_uids = [str(u) for u in z["uid"]] if "uid" in z.files else None
    problem = None
    if any(u is None for u in uids):
        problem = f"{name}: {sum(u is None for u in uids)} row(s) without a uid"
    elif len(set(uids)) != len(uids):
        problem = f"{name}: {len(uids) - len(set(uids))} repeated uid(s)"
    elif npz_uids is not None and npz_uids != [str(u) for u in uids]:
        first = next(i for i, (a, b) in enumerate(zip(npz_uids, uids)) if a != str(b))
        problem = (f"{name}: the npz's uids differ from the parquet's from row {first} "
                   f"({npz_uids[first]} vs {uids[first]})")
    similarity = np.einsum("ij,ij->i", img, txt).astype(np.float64)
    return ShardData([str(u) for u in uids], texts, img, similarity, stored, problem)
