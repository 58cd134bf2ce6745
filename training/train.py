"""Train CLIP or CLIPS on an export: `torchrun --nproc_per_node N -m training.train --data D
--out O [--objective clips] [--resume]` (`capmix train` launches exactly this).

DDP over NCCL on GPUs, gloo on CPU; open_clip's ClipLoss with features gathered across ranks
(local_loss, gather_with_grad); bf16 autocast on GPUs; AdamW with open_clip's cosine schedule
and warmup. Defaults are DataComp's (the paper's Appendix B). The budget is counted in samples
seen: `train.samples`, else the candidate pool's size recorded by the export, split into
ceil(samples / global batch) steps; each rank reads endless epochs of its own shard, so ranks
never run out of data at different times. Checkpoints every `checkpoint_every` steps and at the
end; `--resume` restores the latest and continues at its step (samples seen = step x global
batch) with exactly the samples, order and crops an uninterrupted run would have had there
(training/loader.py), after checking the run's settings against the checkpoint's
(training/resume.py). `--train-set NAME` trains from the pool's own files (training/sources.py).
`--data` and `--out` may be object-store URIs (s3://, gs://, ...): the export is read and the
checkpoints, log and config are written through fsspec (training/outdir.py).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from capmix.config import Config, TrainConfig
from capmix.errors import CapmixError, InputError
from training import outdir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by `torchrun -m training.train` and `capmix train`."""
    parser.add_argument("--data", metavar="PATH", help="an export (parquet)")
    parser.add_argument("--train-set", metavar="NAME",
                        help="train on this train set, reading the pool's own Delta files in "
                             "--lake (no export); instead of --data")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="output folder or store URI (s3://...): checkpoints/, log.jsonl, "
                             "train_config.json")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoint in --out")
    parser.add_argument("--restart", action="store_true",
                        help="start over at step 0 in --out, removing its checkpoints, even if "
                             "they were trained with other settings")
    parser.add_argument("--model", help="open_clip architecture or registry name (ViT-B-32)")
    parser.add_argument("--objective", choices=["clip", "clips", "coca"],
                        help="clip; clips (fragments + decoder); coca (a CoCa captioner)")
    parser.add_argument("--samples", type=int, help="samples seen (default: the pool size)")
    parser.add_argument("--batch-size", type=int, help="global batch size (default 4096)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--warmup", type=int, help="warmup steps")
    parser.add_argument("--workers", type=int, help="petastorm loader workers per rank")
    parser.add_argument("--checkpoint-every", type=int, metavar="STEPS")
    parser.add_argument("--fragment", choices=["sub-caption", "block", "truncation", "random"],
                        help="CLIPS fragment strategy")
    parser.add_argument("--fragment-tokens", type=int, help="CLIPS fragment length (32)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--run-name")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"train.model": args.model, "train.objective": args.objective,
            "train.samples": args.samples, "train.batch_size": args.batch_size,
            "train.lr": args.lr, "train.warmup": args.warmup, "train.workers": args.workers,
            "train.checkpoint_every": args.checkpoint_every, "train.clips.fragment": args.fragment,
            "train.clips.fragment_tokens": args.fragment_tokens, "train.seed": args.seed,
            "train.run_name": args.run_name, "train.train_set": args.train_set}


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """open_clip's schedule: linear warmup to `base` over `warmup` steps, then cosine to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = total - warmup
    return base if span <= 0 else 0.5 * (1 + math.cos(math.pi * (step - warmup) / span)) * base


def plan_steps(samples: int, global_batch: int) -> int:
    """Steps that see at least `samples` samples."""
    return max(1, math.ceil(samples / global_batch))


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: Any
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_dist(cfg: TrainConfig) -> Dist:
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        raise InputError("train.device is cuda, but no GPU is visible")
    if cuda:
        torch.cuda.set_device(local)
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    backend = "nccl" if cuda else "gloo"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(rank, world, local, device, backend)


def param_groups(module) -> list[dict]:
    """open_clip's split: no weight decay on gains, biases, norms and the temperature."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name \
            or "logit_scale" in name
        (no_decay if skip else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay}]


def open_source(cfg: Config, data: Optional[str], world: int):
    """The rows to train on: an export (`data`), or the train set `train.train_set` read from
    the pool's own files in the lake. Checks what the objective and the ranks need."""
    from training.data import check_export, read_export
    from training.sources import export_source, pool_source

    tcfg = cfg.train
    if bool(data) == bool(tcfg.train_set):
        raise InputError("give either --data (an export) or --train-set (a train set in the "
                         "lake), not both" if data else "give --data EXPORT or --train-set NAME")
    if data:
        info = read_export(data)
        check_export(info, tcfg.objective, world)
        return export_source(info, tcfg.objective)
    source = pool_source(cfg.lake.path, cfg.lake.tables, tcfg.train_set, tcfg.objective,
                         cfg.export.captioner)
    if len(source.urls) < world:
        raise InputError(f"pool has {len(source.urls)} file(s) for {world} ranks: every rank "
                         "reads its own files (use fewer ranks, or capmix export --min-files)")
    return source


def run(cfg: Config, data: Optional[str], out: str, resume: bool = False,
        restart: bool = False) -> dict[str, Any]:
    """Train on this process's rank (torchrun sets RANK/WORLD_SIZE; alone: one process)."""
    from training import checkpoint as ckpt
    from training.data import LoaderOptions, batches
    from training.resume import check_resume, run_settings, saved_settings
    from training.tracking import Tracker, check_mlflow, mlflow_uri

    tcfg = cfg.train
    check_mlflow(tcfg.mlflow_uri)
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    source = open_source(cfg, data, world_env)
    ctx = init_dist(tcfg)
    if tcfg.batch_size % ctx.world:
        raise InputError(f"global batch {tcfg.batch_size} is not divisible by {ctx.world} ranks")
    samples = tcfg.samples or source.pool_rows
    steps = plan_steps(samples, tcfg.batch_size)
    settings = run_settings(tcfg, samples, ctx.world,
                            os.path.abspath(data) if data and "://" not in data else data,
                            source.train_set, source.digest)
    if restart:
        _barrier(ctx)  # every rank has looked at --out before rank 0 clears it
        if ctx.main:
            ckpt.remove_all(out)
            outdir.remove_tree(outdir.join(out, "samples"))
        _barrier(ctx)
    module, optimizer, pre, context = _model(tcfg, ctx)
    latest = ckpt.latest(out) if resume and not restart else None
    start = 0
    if latest:
        state = ckpt.load(latest)
        check_resume(saved_settings(state), settings, str(latest))
        start = _restore(state, tcfg, module, optimizer)
    run_name = tcfg.run_name or outdir.run_name(out)
    meta = {"arch": _arch(tcfg), "run_name": run_name, "data": data,
            "train_set": source.train_set, "train_set_version": source.version,
            "world_size": ctx.world, "context_length": context, "steps": steps,
            "samples": samples, "settings": settings,
            "preprocess": {"size": pre.size, "mean": list(pre.mean), "std": list(pre.std)},
            "config": asdict(tcfg)}
    tracker = Tracker(out, ctx.main, steps, start, meta,
                      mlflow_uri(tcfg.mlflow_uri), tcfg.mlflow_experiment, run_name)
    if ctx.main:
        outdir.write_text(outdir.join(out, "train_config.json"),
                          json.dumps(meta, indent=1, default=str))
    from training.memory import estimate

    peak = estimate(tcfg, module, tcfg.batch_size // ctx.world, ctx.world, ctx.device.type)
    tracker.record("start", start_step=start, samples_seen=start * tcfg.batch_size,
                   steps=steps, samples=samples, global_batch=tcfg.batch_size,
                   world_size=ctx.world, resumed_from=str(latest) if latest else None,
                   device=str(ctx.device), objective=tcfg.objective,
                   source=source.kind, train_set=source.train_set,
                   estimated_peak_mb=round(peak.total / 2**20), params=peak.params)
    if start < steps:
        per_rank = tcfg.batch_size // ctx.world
        # One seed for every rank and every resume: the order is a function of (seed, rank,
        # sample), so step k's batch is the same whether or not the run stopped before it.
        stream = batches(source, _sample_spec(tcfg, pre.size, context), LoaderOptions(
            batch_size=per_rank, rank=ctx.rank, world=ctx.world, seed=tcfg.seed,
            workers=tcfg.workers, pool=tcfg.reader_pool, shuffle_buffer=tcfg.shuffle_buffer),
            start=start * per_rank)
        samples_log = _samples_log(out, ctx.rank) if tcfg.log_samples else None
        try:
            _loop(tcfg, ctx, _ddp(module, ctx), module, optimizer, stream, tracker, start,
                  steps, out, meta, samples_log)
        finally:
            stream.close()
            if samples_log is not None:
                samples_log.close()
    done = max(start, steps)
    tracker.close(step=done, samples_seen=done * tcfg.batch_size)
    return {"step": done, "steps": steps, "samples_seen": done * tcfg.batch_size}


def _barrier(ctx: Dist) -> None:
    if ctx.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _samples_log(out: str, rank: int) -> outdir.AppendLog:
    """OUT/samples/rank_N.jsonl: {"step", "uids"} per step (appended: a resume continues it)."""
    return outdir.AppendLog(outdir.join(out, "samples", f"rank_{rank}.jsonl"))


def _model(tcfg: TrainConfig, ctx: Dist):
    """(module on its device, AdamW, Preprocess, text context length), seeded per rank."""
    import torch

    from training.model import build, train_module

    torch.manual_seed(tcfg.seed + ctx.rank)
    clip, decoder, pre, context = build(tcfg)
    module = train_module(clip, decoder, pre, tcfg.objective).to(ctx.device)
    optimizer = torch.optim.AdamW(param_groups(module), lr=tcfg.lr,
                                  betas=(tcfg.beta1, tcfg.beta2), eps=tcfg.eps,
                                  weight_decay=tcfg.weight_decay)
    return module, optimizer, pre, context


def _ddp(module, ctx: Dist):
    if ctx.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)


def _sample_spec(tcfg: TrainConfig, size: int, context: int):
    from training.data import SampleSpec

    return SampleSpec(arch=_arch(tcfg), image_size=size, context_length=context,
                      objective=tcfg.objective, fragment=tcfg.clips.fragment,
                      fragment_tokens=tcfg.clips.fragment_tokens,
                      decoder_length=tcfg.clips.decoder_length)


def _arch(tcfg: TrainConfig) -> str:
    from training.model import resolve_train_arch

    return resolve_train_arch(tcfg.model, tcfg.objective)


def _restore(state: dict, tcfg: TrainConfig, module, optimizer) -> int:
    saved = state["config"]  # the settings were compared before (training/resume.py)
    module.clip.load_state_dict(state["model"])
    if module.decoder is not None:
        _check_decoder(saved.get("clips") or {}, module.decoder)
        module.decoder.load_state_dict(state["decoder"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def _check_decoder(saved: dict, decoder) -> None:
    """A checkpoint from before the decoder was sized like the text tower (512/12/8 for every
    model) resumes only with those sizes given again: say which."""
    built = {"decoder_width": int(decoder.queries.shape[1]),
             "decoder_layers": len(decoder.blocks.layers),
             "decoder_heads": int(decoder.blocks.layers[0].self_attn.num_heads)}
    wrong = {k: saved[k] for k, v in built.items() if saved.get(k) not in (None, v)}
    if wrong:
        sets = " ".join(f"--set train.clips.{k}={v}" for k, v in wrong.items())
        raise InputError(f"cannot resume: the checkpoint's CLIPS decoder has "
                         f"{', '.join(f'{k}={v}' for k, v in wrong.items())}; resume with {sets}")


def _loop(tcfg: TrainConfig, ctx: Dist, wrapped, module, optimizer, stream, tracker,
          start: int, steps: int, out: str, meta: dict, samples_log=None) -> None:
    import torch

    from training import checkpoint as ckpt

    losses = _loss_fn(tcfg, ctx)
    use_bf16 = tcfg.precision == "bf16" or (tcfg.precision == "auto"
                                             and ctx.device.type == "cuda")
    last_time, last_step = time.monotonic(), start
    for step in range(start, steps):
        lr = lr_at(step, tcfg.lr, tcfg.warmup, steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = next(stream)
        uids, _ = batch.pop("uid"), batch.pop("index")
        if samples_log is not None:
            samples_log.write(json.dumps({"step": step + 1, "uids": uids}) + "\n")
        batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            parts = losses(wrapped(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if tcfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), tcfg.grad_clip)
        optimizer.step()
        with torch.no_grad():  # as open_clip: the temperature stays within [1, 100]
            module.clip.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        metrics = None
        if done % tcfg.log_every == 0 or done == steps or step == start:
            now = time.monotonic()
            metrics = _metrics(parts, ctx, lr, module, done, tcfg.batch_size,
                               (done - last_step) * tcfg.batch_size / max(now - last_time, 1e-9))
            last_time, last_step = now, done
        tracker.step(done, 1, metrics)
        checkpoint = done % tcfg.checkpoint_every == 0 or done == steps
        if checkpoint and samples_log is not None:
            samples_log.sync()  # every rank's log, in a store, as far as the checkpoint
        if ctx.main and checkpoint:
            state = {"step": done, "samples_seen": done * tcfg.batch_size, **meta,
                     "model": module.clip.state_dict(),
                     "decoder": module.decoder.state_dict() if module.decoder is not None
                     else None, "optimizer": optimizer.state_dict()}
            path = ckpt.save(out, done, state, keep=tcfg.keep_checkpoints)
            tracker.record("checkpoint", step=done, samples_seen=done * tcfg.batch_size,
                           path=str(path))


def _loss_fn(tcfg: TrainConfig, ctx: Dist):
    from open_clip.loss import ClipLoss

    from training.clips import clips_loss, coca_loss

    contrastive = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                           rank=ctx.rank, world_size=ctx.world)
    weights = tcfg.clips

    def compute(out: dict, batch: dict) -> dict:
        if "caption_logits" in out:
            return coca_loss(contrastive, out, tcfg.coca_caption_weight, tcfg.caption_loss)
        if "logits" not in out:
            loss = contrastive(out["image"], out["text"], out["logit_scale"])
            return {"loss": loss}
        return clips_loss(contrastive, out["image"], out["raw"], out["fragment"],
                          out["logit_scale"], out["logits"], batch["labels"],
                          weights.contrastive_weight, weights.caption_weight,
                          tcfg.caption_loss)

    return compute


def _metrics(parts: dict, ctx: Dist, lr: float, module, step: int, batch: int,
             rate: float) -> dict[str, float]:
    """Losses averaged over ranks (each rank's local-loss differs), plus rate and lr."""
    import torch

    names = sorted(parts)
    values = torch.stack([parts[n].detach().float() for n in names])
    if ctx.world > 1:
        import torch.distributed as dist

        dist.all_reduce(values)
        values /= ctx.world
    metrics = {("loss" if n == "loss" else f"loss_{n}"): float(v) for n, v in zip(names, values)}
    metrics.update(lr=lr, samples_seen=step * batch, samples_per_s=rate,
                   logit_scale=float(module.clip.logit_scale.exp()),
                   peak_memory_mb=_peak_memory_mb(ctx))
    return metrics


def _peak_memory_mb(ctx: Dist) -> float:
    """This rank's peak so far: allocated on a GPU, resident on CPU (the estimate's terms)."""
    if ctx.device.type == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv: Optional[list[str]] = None) -> int:
    from capmix.cli import common_parser, setup_logging
    from capmix.config import load_config, parse_override

    import warnings

    # Library deprecation noise, repeated by every rank and loader worker.
    for module in ("open_clip", "petastorm", "torch.distributed"):
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    parser = common_parser("training.train", "Train CLIP / CLIPS on an export (run by torchrun)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        sets = dict(parse_override(s) for s in args.settings)
        sets.update({k: v for k, v in overrides(args).items() if v is not None})
        if args.lake:
            sets["lake.path"] = args.lake
        cfg = load_config(args.config, sets)
        run(cfg, args.data, args.out, resume=args.resume, restart=args.restart)
        return 0
    except CapmixError as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"capmix train: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
