"""A rank's peak memory, estimated before the ranks start, and the memory a rank can have.

The estimate is affine in the batch per rank b, so the largest batch that fits is one division:

    peak(b) = runtime + state + caption_fixed + b x (activations + caption_per_sample + input)

- runtime: what a rank holds besides its model and batch. CPU: the interpreter with torch and
  open_clip imported, measured (RSS of the process that makes the estimate, after it imported
  them to size the model: ~960 MB with a CUDA build of torch), + STEP_CPU (kernels and
  allocator arenas the first step brings in) and, in training, LOADER_CPU (petastorm, pyarrow,
  reader threads' row groups) plus the loader's shuffle buffer of uint8 images. GPU: RUNTIME_GPU
  for the CUDA context and cuBLAS workspace (they come out of the free memory checked).
- state: P parameters x (4 weights + 4 gradients + 8 AdamW moments) bytes, all fp32; +4 P for
  DDP's gradient buckets when there is more than one rank.
- activations, per sample: for every transformer the step runs (vision tower; text tower, twice
  for clips (raw caption + fragment); the CLIPS decoder over image + text + query tokens; CoCa's
  decoder, self- and cross-attention), per layer of s tokens, width w and MLP ratio r, what a
  pre-LN block keeps for backward: s x w x (9 + 2r) values (Korthikanti et al. 2022, without
  dropout; no s x s term: PyTorch's SDPA kernels keep none), at 4 bytes (fp32) or 2 (bf16
  autocast), times ACTIVATION_FACTOR (the block's other temporaries and allocator slack).
- caption loss, over q predicted positions and vocabulary V: chunked (training/caption_loss.py)
  holds one chunk of C rows (C x V x 4 bytes, x CHUNK_COPIES) and a float32 head gradient
  (V x w x 4), plus per sample the states and their gradient (2 x q x w x 4); full holds
  q x V x 4 x FULL_COPIES per sample (logits, log-softmax, their gradients).
- input, per sample: uint8 image, its float and normalised copies (3 x H x W x 9 bytes).

Calibration (bench/train_memory.py, tiny-clip, CPU fp32, one process per configuration;
docs/benchmarks.md has the estimate next to each measured peak): clip's peak grows 0.66 MB per
sample (the block values: 0.45 MB -> ACTIVATION_FACTOR 1.45), clips' 3.1 MB (formula 3.2); the
old full-logits clips step 66 MB per sample more than the chunked one (q x V x 4 = 25.3 MB, so
2.6 copies -> FULL_COPIES 3); the fixed parts (STEP_CPU, CHUNK_COPIES) to within 3% of the
measured peaks at batch 32-128. A real 2-rank run (`capmix train --model tiny-clip --nproc 2
--objective clips --samples 200` on a 114-image export: 64 per rank, loader with 2 threads)
peaked at 1,666 and 1,736 MB against an estimate of 1,801 (LOADER_CPU is the high side). The GPU constants are not calibrated (no GPU was measured).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from capmix.config import TrainConfig

MB = 2**20
STEP_CPU = 120 * MB
LOADER_CPU = 200 * MB
RUNTIME_GPU = 1024 * MB
ACTIVATION_FACTOR = 1.45
CHUNK_COPIES = 4
FULL_COPIES = 3


@dataclass(frozen=True)
class Estimate:
    fixed: int  # bytes that do not grow with the batch
    per_sample: int  # bytes per sample of the batch per rank
    batch: int  # batch per rank
    params: int

    @property
    def total(self) -> int:
        return self.fixed + self.per_sample * self.batch

    def largest_batch(self, available: float) -> int:
        """The largest batch per rank whose estimate fits in `available` bytes (0: none)."""
        return max(0, int((available - self.fixed) // max(self.per_sample, 1)))


@dataclass(frozen=True)
class Tower:
    tokens: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    passes: int = 1  # forward passes per sample

    def values(self) -> float:
        return self.passes * self.layers * self.tokens * self.width * (9 + 2 * self.mlp_ratio)


def estimate(tcfg: "TrainConfig", module, batch: int, world: int, device: str = "cpu",
             loader: bool = True, runtime: Optional[int] = None) -> Estimate:
    """The peak of one rank training `module` (training.model.train_module, may be on the meta
    device) at `batch` samples per rank. `runtime`: the CPU runtime's RSS (default: this
    process's, which must have imported torch and open_clip); `loader=False` leaves out the
    loader's share."""
    params = sum(p.numel() for p in module.parameters())
    gpu = device.startswith("cuda")
    width = 2 if gpu and tcfg.precision != "fp32" else 4
    if gpu:
        runtime = RUNTIME_GPU
    else:
        runtime = (rss() if runtime is None else runtime) + STEP_CPU
    size = _image_size(module.clip)
    if loader and not gpu:
        # The shuffle buffer holds decoded uint8 images and token rows.
        runtime += LOADER_CPU + tcfg.shuffle_buffer * (3 * size * size + 8 * 3 * 128)
    state = params * (16 + (4 if world > 1 else 0))
    towers = _towers(tcfg, module)
    activations = ACTIVATION_FACTOR * width * sum(t.values() for t in towers)
    fixed, per_sample = runtime + state, activations + 3 * size * size * 9
    head = _caption_head(tcfg, module)
    if head is not None:
        positions, vocab, dim = head
        if tcfg.caption_loss == "full":
            per_sample += positions * vocab * 4 * FULL_COPIES
        else:
            from training.caption_loss import chunk_rows

            fixed += chunk_rows(vocab) * vocab * 4 * CHUNK_COPIES + vocab * dim * 4
            per_sample += 2 * positions * dim * 4
    return Estimate(int(fixed), int(per_sample), batch, params)


def _block_shape(block, width: int) -> tuple[int, float]:
    """(heads, MLP ratio) of an open_clip or torch transformer block."""
    attn = getattr(block, "attn", None) or getattr(block, "self_attn", None)
    heads = getattr(attn, "num_heads", None) or getattr(attn, "heads", None) or max(1, width // 64)
    fc = getattr(getattr(block, "mlp", None), "c_fc", None) or getattr(block, "linear1", None)
    return int(heads), (fc.out_features / width if fc is not None else 4.0)


def _transformer(t, tokens: int, passes: int = 1) -> Tower:
    heads, ratio = _block_shape(t.resblocks[0], t.width)
    return Tower(tokens, int(t.width), len(t.resblocks), heads, ratio, passes)


def _image_size(clip) -> int:
    size = getattr(clip.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _towers(tcfg: "TrainConfig", module) -> list[Tower]:
    clip = module.clip
    towers = []
    visual = getattr(clip.visual, "transformer", None)
    grid = getattr(clip.visual, "grid_size", None)
    patches = int(grid[0] * grid[1]) if grid else 49
    if visual is not None:
        towers.append(_transformer(visual, patches + 1))
    else:  # a ResNet or timm tower: counted as a ViT-B/32-sized one
        towers.append(Tower(50, 768, 12, 12, 4.0))
    text = getattr(clip, "transformer", None) or clip.text.transformer
    context = int(getattr(clip, "context_length", 0) or clip.text.context_length)
    towers.append(_transformer(text, context, 2 if tcfg.objective == "clips" else 1))
    if module.decoder is not None:
        dec = module.decoder
        layer = dec.blocks.layers[0]
        width = int(dec.queries.shape[1])
        heads, ratio = _block_shape(layer, width)
        towers.append(Tower(patches + context + dec.length, width, len(dec.blocks.layers),
                            heads, ratio))
    decoder = getattr(clip, "text_decoder", None)
    if decoder is not None:  # CoCa: self-attention + cross-attention blocks, one each per layer
        towers.append(_transformer(decoder, context, 2))
    return towers


def _caption_head(tcfg: "TrainConfig", module) -> Optional[tuple[int, int, int]]:
    """(predicted positions, vocabulary, width) of the caption loss, None without one."""
    if module.decoder is not None:
        vocab, dim = module.decoder.head.weight.shape
        return tcfg.clips.decoder_length, int(vocab), int(dim)
    decoder = getattr(module.clip, "text_decoder", None)
    if decoder is not None:
        dim, vocab = decoder.text_projection.shape
        return int(decoder.context_length), int(vocab), int(dim)
    return None


def rss() -> int:
    """Resident bytes of this process now."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def available_cpu(ranks_per_node: int) -> float:
    """Bytes a rank may use: MemAvailable, or what the cgroup limit leaves if smaller,
    shared by the ranks of this node."""
    avail = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap = Path(limit).read_text().strip()
            if cap != "max" and int(cap) < 2**60:
                avail = min(avail, int(cap) - int(Path(usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return avail / max(1, ranks_per_node)


def available_gpu(devices: int) -> float:
    """The smallest free memory of the first `devices` GPUs, read in a child process: CUDA
    initialised here would keep a context on GPU 0 for the whole run."""
    import subprocess
    import sys

    code = ("import torch\nprint(min(torch.cuda.mem_get_info(i)[0] for i in "
            f"range(min({devices}, torch.cuda.device_count()))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "CUDA_MODULE_LOADING": "LAZY"})
    return float(out.stdout.strip()) if out.returncode == 0 else float("inf")


def uses_gpu(tcfg: "TrainConfig") -> bool:
    if tcfg.device == "cpu":
        return False
    import torch

    return tcfg.device == "cuda" or torch.cuda.is_available()


def gb(n: float) -> str:
    """Bytes for a message: MB below 10 GB (where 0.1 GB would blur the comparison)."""
    return f"{n / 2**30:.1f} GB" if n >= 10 * 2**30 else f"{n / MB:,.0f} MB"


def plan(tcfg: "TrainConfig", world: int, ranks_per_node: int
         ) -> tuple[Estimate, float, str]:
    """(estimate, bytes available per rank, where that figure comes from) for a run of
    `world` ranks, `ranks_per_node` of them on this machine; the model is sized on the meta
    device, so any architecture costs no memory here."""
    from training.model import build, train_module

    gpu = uses_gpu(tcfg)
    clip, decoder, pre, _ = build(tcfg, device="meta")
    module = train_module(clip, decoder, pre, tcfg.objective)
    est = estimate(tcfg, module, tcfg.batch_size // world, world, "cuda" if gpu else "cpu")
    if tcfg.memory_mb:
        return est, tcfg.memory_mb * MB, "train.memory_mb"
    if gpu:
        return est, available_gpu(ranks_per_node), "free GPU memory"
    return est, available_cpu(ranks_per_node), f"available RAM / {ranks_per_node} rank(s)"


def check(tcfg: "TrainConfig", world: int, ranks_per_node: int) -> Optional[Estimate]:
    """The estimate, logged; ResourceError (one line: the estimate and the largest batch that
    fits) when it exceeds what a rank has. train.memory_mb=0 skips the check."""
    import logging

    from capmix.errors import ResourceError

    if tcfg.memory_mb == 0:
        return None
    est, available, source = plan(tcfg, world, ranks_per_node)
    per_rank = tcfg.batch_size // world
    if est.total > available:
        fits = est.largest_batch(available)
        advice = (f"the largest batch that fits is {fits * world} ({fits} per rank): "
                  f"--batch-size {fits * world}" if fits else
                  "no batch fits: the model's state alone needs "
                  f"{gb(est.fixed)} (a smaller model, fewer ranks per node, or more memory)")
        raise ResourceError(f"estimated peak memory {gb(est.total)} per rank at batch "
                            f"{per_rank} per rank exceeds the {gb(available)} a rank has "
                            f"({source}); {advice} (train.memory_mb=0 skips this check)")
    logging.getLogger("capmix").info(
        "estimated peak memory %s per rank at batch %d per rank (%s available: %s)",
        gb(est.total), per_rank, gb(available), source)
    return est
