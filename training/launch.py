"""Train CLIP / CLIPS on an export: a thin wrapper that launches `torchrun -m training.train`.

    capmix train --data exports/mix50 --model ViT-B-32 --nproc 8 --out runs/mix50
    capmix train --data exports/mix50_clips --objective clips --nproc 8 --out runs/clips --resume
    capmix train --lake lake --train-set mix50 --model ViT-B-32 --nproc 8 --out runs/mix50

The configuration is validated here first (one clear error, nothing started), the peak memory
of a rank is estimated and checked against the machine's (training/memory.py), then every
setting travels to the ranks as `--set key=value`, so `torchrun -m training.train` run by hand
with the same flags trains the same model. No Spark session is started.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any, Optional

import yaml

from capmix.config import Config
from capmix.errors import InputError
from training import train

NEEDS_SPARK = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_arguments(parser)
    parser.add_argument("--nproc", type=int, default=1,
                        help="processes (GPUs) per node; on CPU, ranks using gloo (default 1)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="rendezvous endpoint for multi-node runs (torchrun's)")
    parser.add_argument("--node-rank", type=int, default=None, help="this node's rank")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return train.overrides(args)


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    if args.nproc < 1 or args.nnodes < 1:
        raise InputError("--nproc and --nnodes must be positive")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise InputError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT")
    world = args.nproc * args.nnodes
    if cfg.train.batch_size % world:
        raise InputError(f"global batch {cfg.train.batch_size} is not divisible by {world} ranks")
    # A store that refuses us (no bucket, bad credentials, no endpoint) is one line, before any
    # rank starts, rather than a traceback from each rank.
    from capmix import storage

    for path, what in ((args.data, "--data"), (args.out, "--out")):
        if path:
            storage.check_reachable(path, what)
    # What the ranks would each refuse is refused here, once, before any rank starts.
    source = train.open_source(cfg, args.data, world)
    if args.resume and not args.restart:
        check_resume_here(cfg, args, source, world)


def check_resume_here(cfg: Config, args: argparse.Namespace, source, world: int) -> None:
    """The resume comparison of training/resume.py, before launching (one line, exit 2)."""
    from training import checkpoint as ckpt
    from training.resume import check_resume, run_settings, saved_settings

    latest = ckpt.latest(args.out)
    if latest is None:
        return
    samples = cfg.train.samples or source.pool_rows
    data = os.path.abspath(args.data) if args.data and "://" not in args.data else args.data
    now = run_settings(cfg.train, samples, world, data, source.train_set, source.digest)
    check_resume(saved_settings(ckpt.load(latest)), now, str(latest))


def torchrun_command(cfg: Config, args: argparse.Namespace) -> list[str]:
    """The exact command line the ranks run (pure: tested without launching anything)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc)]
    if args.nnodes > 1:
        cmd += ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", args.rdzv_endpoint]
        if args.node_rank is not None:
            cmd += ["--node-rank", str(args.node_rank)]
    else:
        cmd += ["--standalone"]
    cmd += ["-m", "training.train", "--out", args.out]
    if args.data:
        cmd += ["--data", args.data]
    if args.lake:
        cmd += ["--set", f"lake.path={args.lake}"]
    if args.config:
        cmd += ["--config", args.config]
    for key, value in settings(args).items():
        cmd += ["--set", f"{key}={_yaml_scalar(value)}"]
    if args.resume:
        cmd.append("--resume")
    if args.restart:
        cmd.append("--restart")
    if args.verbose:
        cmd.append("-v")
    return cmd


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every `--set` and flag the user gave, as dotted keys (the ranks re-validate them)."""
    from capmix.config import parse_override

    out: dict[str, Any] = dict(parse_override(s) for s in args.settings)
    out.update({k: v for k, v in overrides(args).items() if v is not None})
    return out


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def run(cfg: Config, args: argparse.Namespace, env: Optional[dict] = None) -> int:
    from training.memory import check

    # Refuse a run whose estimated peak does not fit before any rank starts (exit 2), instead
    # of the kernel's OOM killer ending a rank mid-step.
    check(cfg.train, args.nproc * args.nnodes, args.nproc)
    cmd = torchrun_command(cfg, args)
    return subprocess.call(cmd, env={**os.environ, **(env or {})})


def run_args(spark, cfg: Config, args: argparse.Namespace) -> int:
    return run(cfg, args)


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("training.launch", argv, prog="capmix train")


if __name__ == "__main__":
    sys.exit(main())
