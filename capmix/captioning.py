"""Caption generation with per-row reproducible sampling, for every captioner type.

Sampling is the paper's: top-K (50), softmax temperature (0.75), a minimum and maximum caption
length in tokens (5 and 40). Each caption row (uid, sample) has its own seed, derived from the
run's seed and the row's identity only, and its own stream of uniform numbers derived from that
seed. A token is drawn by inverting the top-K CDF at the row's uniform for that step, so a row's
caption does not depend on which other rows share its batch, on the batch size, on the worker
or on the machine: a re-run reproduces it, and a resumed job writes the same rows a
straight-through run would.

Lengths count caption tokens (no start/end token): the end token is blocked until `min_length`
tokens exist, and generation stops after `max_length` tokens (min == max forces a fixed length,
as the benchmark does).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from capmix.models import ModelSpec

_U53 = float(1 << 53)


@dataclass(frozen=True)
class Sampling:
    top_k: int = 50
    temperature: float = 0.75
    min_length: int = 5
    max_length: int = 40


def row_seed(seed: int, uid: str, sample: int) -> int:
    """The seed of caption row (uid, sample) in a run seeded `seed`: the first 63 bits of
    sha256("{seed}:{uid}:{sample}") (stable across Python versions and machines)."""
    digest = hashlib.sha256(f"{seed}:{uid}:{sample}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def row_uniforms(seed: int, steps: int) -> list[float]:
    """Uniform numbers in [0, 1) for the row's generation steps: step t uses the first 53 bits
    of sha256("{seed}:{t}")."""
    out = []
    for t in range(steps):
        digest = hashlib.sha256(f"{seed}:{t}".encode("ascii")).digest()
        out.append((int.from_bytes(digest[:8], "big") >> 11) / _U53)
    return out


class RowSampler:
    """Draws one token per row per call from logits, each row from its own uniform stream."""

    def __init__(self, seeds: Sequence[int], sampling: Sampling, eos_ids: Sequence[int],
                 device: Any):
        import torch

        self.sampling = sampling
        self.eos_ids = list(eos_ids)
        steps = max(1, sampling.max_length)
        self.uniforms = torch.tensor([row_uniforms(s, steps) for s in seeds],
                                     dtype=torch.float64, device=device).reshape(len(seeds), steps)
        self.step = 0

    def __call__(self, logits):
        import torch

        s = self.sampling
        logits = logits.float() / s.temperature
        if self.step < s.min_length and self.eos_ids:
            logits[:, self.eos_ids] = float("-inf")
        k = min(s.top_k, logits.shape[-1])
        values, indices = torch.topk(logits, k, dim=-1, sorted=True)
        cdf = torch.softmax(values.double(), dim=-1).cumsum(dim=-1)
        u = self.uniforms[:, min(self.step, self.uniforms.shape[1] - 1)]
        choice = (cdf < (u * cdf[:, -1]).unsqueeze(1)).sum(dim=-1).clamp_(max=k - 1)
        self.step += 1
        return indices.gather(1, choice.unsqueeze(1)).squeeze(1)


class Captioner:
    """A loaded captioning model: `preprocess` turns decoded images into a batch (CPU work a
    prefetch thread can do), `generate` captions rows of that batch (row i shows image
    `row_image[i]`, sampled with `seeds[i]`). `last_lengths` holds the caption length in tokens
    of each row of the last `generate` call (for checks and benchmarks)."""

    spec: ModelSpec
    device: str
    last_lengths: list[int] = []

    def preprocess(self, images: list, prompt: str | None = None) -> Any:
        raise NotImplementedError

    def generate(self, batch: Any, row_image: Sequence[int], seeds: Sequence[int],
                 sampling: Sampling) -> list[str]:
        raise NotImplementedError


class CoCaCaptioner(Captioner):
    """OpenCLIP-CoCa: the image is encoded once per batch, each row decodes with its sampler."""

    def __init__(self, spec: ModelSpec, model: Any, transform: Any, device: str,
                 tokenizer: Any = None):
        import open_clip

        self.spec, self.model, self.transform, self.device = spec, model, transform, device
        self.dtype = next(model.parameters()).dtype
        # The model's own BPE tokenizer (a config may ship a smaller vocabulary than CLIP's).
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer) or open_clip.tokenizer._tokenizer
        self.sot = self.tokenizer.sot_token_id
        self.eot = self.tokenizer.eot_token_id
        self.context = int(getattr(model.text, "context_length", 76))

    def preprocess(self, images: list, prompt: str | None = None) -> Any:
        import torch

        if prompt:
            raise ValueError("CoCa captioners take no prompt")
        return torch.stack([self.transform(im) for im in images])

    def generate(self, batch, row_image, seeds, sampling):
        import torch

        with torch.inference_mode():
            pixels = batch.to(self.device, self.dtype)
            latent, embs = self.model._encode_image(pixels)
            index = torch.as_tensor(list(row_image), device=self.device)
            latent, embs = latent[index], embs[index]
            rows = len(seeds)
            out = torch.full((rows, 1), self.sot, dtype=torch.long, device=self.device)
            done = torch.zeros(rows, dtype=torch.bool, device=self.device)
            sampler = RowSampler(seeds, sampling, [self.eot], self.device)
            for _ in range(sampling.max_length):
                # CoCa attends over a fixed context; a longer caption slides, as open_clip does.
                x = out[:, -self.context:]
                logits = self._next_logits(x, embs)
                token = sampler(logits)
                token = torch.where(done, torch.full_like(token, self.eot), token)
                out = torch.cat([out, token.unsqueeze(1)], dim=1)
                done |= token == self.eot
                if bool(done.all()):
                    break
        rows_ids = [row[1:] for row in out.tolist()]
        self.last_lengths = [r.index(self.eot) if self.eot in r else len(r) for r in rows_ids]
        return [self._decode(r) for r in rows_ids]

    def _next_logits(self, tokens, image_embs):
        """Logits of the next token only. open_clip's forward projects every position onto the
        49k vocabulary at every step; only the last one is needed."""
        _, text_embs = self.model._encode_text(tokens)
        dec = self.model.text_decoder
        seq_len = text_embs.shape[1]
        x, img = text_embs, image_embs
        if not dec.batch_first:
            x, img = x.permute(1, 0, 2), img.permute(1, 0, 2)
        for block, cross in zip(dec.resblocks, dec.cross_attn):
            x = block(x, attn_mask=dec.attn_mask[:seq_len, :seq_len])
            x = cross(x, k_x=img, v_x=img)
        last = x[:, -1] if dec.batch_first else x[-1]
        return dec.ln_final(last) @ dec.text_projection

    def _decode(self, ids: list[int]) -> str:
        if self.eot in ids:
            ids = ids[: ids.index(self.eot)]
        ids = [i for i in ids if i != self.sot]
        return self.tokenizer.decode(ids).strip()


class HFCaptioner(Captioner):
    """Any transformers captioner (BLIP, BLIP-2, instruction models with a prompt). Generation
    runs greedy over a logits processor that does the sampling, so HF's own sampler (one global
    RNG for the batch) never draws."""

    def __init__(self, spec: ModelSpec, model: Any, processor: Any, device: str):
        self.spec, self.model, self.processor, self.device = spec, model, processor, device
        self.dtype = model.dtype
        tokenizer = getattr(processor, "tokenizer", processor)
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos])
                        if e is not None]
        pad = gen.pad_token_id if gen.pad_token_id is not None else tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)
        self._prompt_text: dict[str, str] = {}

    def _text(self, prompt: str | None) -> str | None:
        if not prompt or not self.spec.chat:
            return prompt or None
        if prompt not in self._prompt_text:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": prompt}]}]
            self._prompt_text[prompt] = self.processor.apply_chat_template(
                messages, add_generation_prompt=True)
        return self._prompt_text[prompt]

    def preprocess(self, images: list, prompt: str | None = None) -> Any:
        text = self._text(prompt)
        kwargs = {"text": [text] * len(images), "padding": True} if text else {}
        return self.processor(images=images, return_tensors="pt", **kwargs)

    def generate(self, batch, row_image, seeds, sampling):
        import torch
        from transformers import LogitsProcessor, LogitsProcessorList

        sampler = RowSampler(seeds, sampling, self.eos_ids, self.device)

        class _Draw(LogitsProcessor):  # one-hot on the drawn token: greedy then picks it
            def __call__(self, input_ids, scores):
                token = sampler(scores)
                out = torch.full_like(scores, float("-inf"))
                return out.scatter_(1, token.unsqueeze(1), 0.0)

        index = torch.as_tensor(list(row_image))
        inputs = {k: v[index].to(self.device) for k, v in batch.items()
                  if isinstance(v, torch.Tensor)}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        gen = copy.deepcopy(self.model.generation_config)
        gen.update(do_sample=False, num_beams=1, max_new_tokens=sampling.max_length,
                   min_new_tokens=None, min_length=0, temperature=None, top_k=None, top_p=None,
                   repetition_penalty=None, no_repeat_ngram_size=None,
                   pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=gen,
                                      logits_processor=LogitsProcessorList([_Draw()]))
        # One token per step, appended: the last `steps` columns are the caption, whatever
        # prefix (prompt, image placeholders, start token) the model echoes before them.
        out = out[:, out.shape[1] - sampler.step:] if sampler.step else out[:, :0]
        self.last_lengths = [_length(row, self.eos_ids) for row in out.tolist()]
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        return [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]


def _length(ids: list[int], eos_ids: Sequence[int]) -> int:
    """Caption tokens of one generated row: those before its first end token."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return i
    return len(ids)


def caption_rows(captioner: Captioner, images: list, uids: Sequence[str], samples: int,
                 seed: int, sampling: Sampling, prompt: str | None = None
                 ) -> list[tuple[str, int, int, str]]:
    """(uid, sample, seed, text) for `samples` captions of each image: the plain batch that the
    Spark UDF and the benchmark's baseline loop both run."""
    batch = captioner.preprocess(images, prompt)
    row_image, seeds, keys = [], [], []
    for i, uid in enumerate(uids):
        for s in range(samples):
            row_image.append(i)
            seeds.append(row_seed(seed, uid, s))
            keys.append((uid, s))
    texts = captioner.generate(batch, row_image, seeds, sampling)
    return [(u, s, sd, t) for (u, s), sd, t in zip(keys, seeds, texts)]
