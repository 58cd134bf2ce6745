"""CLIP scoring with an open_clip model: L2-normalised image and text embeddings (float32), and
their cosine similarity, which for normalised vectors is their dot product. CLIP-S (Hessel et
al.) is 2.5 * max(cos, 0)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from capmix.models import ModelSpec

CLIP_S_WEIGHT = 2.5


def clip_s(cosine: float) -> float:
    return CLIP_S_WEIGHT * max(float(cosine), 0.0)


class Scorer:
    def __init__(self, spec: ModelSpec, model: Any, transform: Any, tokenizer: Any, device: str):
        self.spec, self.model, self.transform = spec, model, transform
        self.tokenizer, self.device = tokenizer, device
        self.dtype = next(model.parameters()).dtype

    def preprocess(self, images: list) -> Any:
        import torch

        return torch.stack([self.transform(im) for im in images])

    def embed_pixels(self, pixels: Any) -> np.ndarray:
        """(n, dim) float32, unit norm."""
        import torch

        with torch.inference_mode():
            x = self.model.encode_image(pixels.to(self.device, self.dtype))
        return _normalise(x)

    def embed_images(self, images: list) -> np.ndarray:
        return self.embed_pixels(self.preprocess(images))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit norm; texts longer than the context are truncated."""
        import torch

        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            x = self.model.encode_text(tokens)
        return _normalise(x)


def _normalise(x: Any) -> np.ndarray:
    import torch

    x = x.float()
    return torch.nn.functional.normalize(x, dim=-1).cpu().numpy().astype(np.float32)


def cosine(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise dot products of unit vectors, computed in float64."""
    a = np.asarray(image_embeddings, dtype=np.float64)
    b = np.asarray(text_embeddings, dtype=np.float64)
    return np.einsum("ij,ij->i", a, b)
