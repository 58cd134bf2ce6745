"""Memory and speed of one training step: clip vs clips, and clips' caption loss chunked (now)
vs full logits (before), tiny-clip with the full CLIP vocabulary (49,408 tokens).

Each configuration runs in its own child process, so peaks never mix: the child builds the
model the trainer builds (training.model.build + train_module, the trainer's own loss), runs
one warm-up step and `--steps` timed steps (forward, loss, backward, AdamW) on random in-memory
batches of the trainer's shapes, and reports its peak resident memory (ru_maxrss; with `--gpu`,
torch.cuda.max_memory_allocated in bf16 autocast) and the median samples/s of the timed steps;
`--repeats` processes per configuration, medians of both.
One torch thread per child on CPU, as torchrun gives each of 2 ranks on 2 cores. The estimate
column is training/memory.py's for the same step (without the loader's share), the figure the
trainer checks before it starts.

    python -m bench.train_memory [--batches 32,64,128] [--full-batches 32,64] [--repeats 3]
                                 [--gpu] [--no-write]

The last line printed is the clips/clip memory ratio at batch 64 (goal: <= 1.5).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from bench.report import median, write_section

MODEL = "tiny-clip"


def child(spec: dict) -> dict:
    """One configuration's step, measured in this process (see the module docstring)."""
    import torch

    from capmix.config import ClipsConfig, TrainConfig
    from capmix.models import register_model_configs
    from training.memory import estimate, rss
    from training.model import build, train_module
    from training.train import Dist, _loss_fn, param_groups

    register_model_configs()
    start_rss = rss()
    gpu = spec["device"] == "cuda"
    if not gpu:
        torch.set_num_threads(1)
    batch, objective = spec["batch"], spec["objective"]
    tcfg = TrainConfig(model=MODEL, objective=objective, caption_loss=spec["loss"],
                       batch_size=batch, clips=ClipsConfig())
    torch.manual_seed(0)
    clip, decoder, pre, context = build(tcfg)
    device = torch.device(spec["device"])
    module = train_module(clip, decoder, pre, objective).to(device)
    opt = torch.optim.AdamW(param_groups(module), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)
    losses = _loss_fn(tcfg, Dist(0, 1, 0, device, "gloo"))
    data = _batch(objective, batch, pre.size, context, tcfg.clips.decoder_length, device)
    model_rss = rss()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(spec["steps"] + 1):
        if gpu:
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            parts = losses(module(data), data)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        opt.step()
        if gpu:
            torch.cuda.synchronize()
        if step:  # the first step (allocator warm-up, AdamW state creation) is not timed
            times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated() if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    est = estimate(tcfg, module, batch, world=1, device=spec["device"], loader=False,
                   runtime=start_rss)
    return {**spec, "peak_mb": peak / 2**20, "samples_s": batch / median(times),
            "estimate_mb": est.total / 2**20, "params": est.params,
            "start_rss_mb": start_rss / 2**20, "model_rss_mb": model_rss / 2**20}


def _batch(objective: str, batch: int, size: int, context: int, length: int, device) -> dict:
    """Random tokens in the shapes the loader makes; captions fill ~half the decoder queries."""
    import torch

    from training.clips import IGNORE_INDEX

    g = torch.Generator().manual_seed(0)
    out = {"image": torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8,
                                  generator=g)}
    tokens = lambda: torch.randint(1, 49000, (batch, context), generator=g)  # noqa: E731
    if objective == "clips":
        labels = torch.randint(1, 49000, (batch, length), generator=g)
        labels[:, length // 2:] = IGNORE_INDEX
        out.update(raw=tokens(), fragment=tokens(), labels=labels)
    else:
        out["text"] = tokens()
    return {k: v.to(device) for k, v in out.items()}


def measure(spec: dict) -> dict:
    """`child(spec)` in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.train_memory", "--child",
                           json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{spec}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="32,64,128", help="batch sizes per rank")
    parser.add_argument("--full-batches", default="32,64",
                        help="batches for the old full-logits clips step (128: ~10 GB on CPU)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per process")
    parser.add_argument("--repeats", type=int, default=3,
                        help="processes per configuration (medians are reported)")
    parser.add_argument("--gpu", action="store_true", help="one GPU, bf16, peak allocated")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    device = "cuda" if args.gpu else "cpu"
    batches = [int(b) for b in args.batches.split(",") if b]
    full = [int(b) for b in args.full_batches.split(",") if b]
    configs = [(o, b, "chunked") for b in batches for o in ("clip", "clips")]
    configs += [("clips", b, "full") for b in full]
    load = os.getloadavg()[0]
    rows = {}
    for objective, batch, loss in configs:
        spec = {"objective": objective, "batch": batch, "loss": loss, "device": device,
                "steps": args.steps}
        runs = [measure(spec) for _ in range(args.repeats)]
        r = rows[objective, batch, loss] = {
            **runs[0], **{k: median([x[k] for x in runs]) for k in ("peak_mb", "samples_s")}}
        print(f"{objective:5} {loss:7} batch {batch:4}: peak {r['peak_mb']:8,.0f} MB "
              f"(estimate {r['estimate_mb']:7,.0f}; {r['start_rss_mb']:,.0f} MB after imports, "
              f"{r['model_rss_mb']:,.0f} with the model), {r['samples_s']:7.1f} samples/s",
              flush=True)
    what = "peak allocated, GPU bf16" if args.gpu else "peak RSS, CPU fp32, 1 thread"
    body = ["## Training step memory: clip vs clips (`bench/train_memory.py`)", "",
            f"One training step (forward, loss, backward, AdamW) of {MODEL} with the full CLIP "
            f"vocabulary (49,408 tokens), CLIPS decoder sized like the text tower (default) "
            f"with 128 queries; {what}; each configuration in {args.repeats} processes of its "
            f"own, {args.steps} timed steps each after one warm-up; medians. \"full\" is the clips step "
            "before this change (whole batch x 128 x 49,408 logits, "
            "`train.caption_loss=full`). Estimate: training/memory.py's formula for the "
            f"same step (no loader). Load average {load:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end ({os.cpu_count()} cores, shared).", "",
            "| objective | caption loss | batch / rank | peak MB | estimate MB | samples/s |",
            "| --- | --- | ---: | ---: | ---: | ---: |"]
    for (objective, batch, loss), r in rows.items():
        body.append(f"| {objective} | {loss if objective == 'clips' else '-'} | {batch} | "
                    f"{r['peak_mb']:,.0f} | {r['estimate_mb']:,.0f} | {r['samples_s']:.1f} |")
    lines = []
    for b in batches:
        clip, clips = rows.get(("clip", b, "chunked")), rows.get(("clips", b, "chunked"))
        old = rows.get(("clips", b, "full"))
        text = (f"batch {b}: clips/clip memory {clips['peak_mb'] / clip['peak_mb']:.2f}x "
                f"(above the {clip['start_rss_mb']:,.0f} MB a process holds after importing "
                f"torch and open_clip: {(clips['peak_mb'] - clips['start_rss_mb']) / (clip['peak_mb'] - clip['start_rss_mb']):.2f}x)")
        if old:
            text += (f"; chunked vs full clips: memory {clips['peak_mb'] / old['peak_mb']:.2f}x,"
                     f" samples/s {clips['samples_s'] / old['samples_s']:.2f}x")
        lines.append(text)
    body += [""] + [f"- {t}" for t in lines]
    for t in lines:
        print(t)
    if not args.no_write:
        print(f"wrote {write_section('train_memory' + ('_gpu' if args.gpu else ''), chr(10).join(body))}")
    ratio = rows["clips", 64, "chunked"]["peak_mb"] / rows["clip", 64, "chunked"]["peak_mb"] \
        if ("clip", 64, "chunked") in rows else float("nan")
    print(f"clips/clip memory ratio at batch 64: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
