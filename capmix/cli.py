"""`capmix <command>`: one subcommand per stage, each also runnable as `spark-submit jobs/X.py`.

A job module supplies `add_arguments(parser)`, `overrides(args) -> {dotted key: value}` and
`run_args(spark, cfg, args) -> int` (a module with `NEEDS_SPARK = False`, such as the torchrun
trainer, gets `spark=None` and no JVM); `stage_main` does the rest in the same order everywhere:
parse, load and validate the config (before any I/O), get the session, run. User errors print
one line and exit 2; nothing is written after a failed validation.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from types import ModuleType
from typing import Any, Sequence

from capmix import __version__
from capmix.config import Config, load_config, parse_override
from capmix.errors import CapmixError

# command -> (module, one-line help). Modules are imported only when their command runs, so
# `capmix --help` and a CPU-only driver stay cheap.
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("jobs.ingest", "load webdataset shards, image folders or parquet into `pool`"),
    "caption": ("jobs.caption", "caption every pool image into `captions` (resumable)"),
    "score": ("jobs.score", "CLIP-score raw and synthetic captions into `scores` (resumable)"),
    "sql": ("jobs.sql", "run Spark SQL over every lake table and print the result"),
    "export": ("jobs.export", "a train set -> a Petastorm-readable parquet dataset"),
    "train": ("training.launch", "train CLIP / CLIPS on an export (torchrun, DDP)"),
    "eval": ("training.eval_job", "zero-shot classification / retrieval -> `eval_results`"),
    "cluster": ("jobs.cluster", "k-means image clusters near a reference set -> `clusters`"),
    "mix": ("jobs.mix", "one mixing strategy (sql/) -> a named set in `train_sets`"),
    "stats": ("jobs.stats", "caption quality/diversity stats -> `text_stats` + report"),
    "run": ("capmix.pipeline", "every stage in order from one config (the embedded default: "
                               "the paper in miniature) -> report/index.md"),
}

log = logging.getLogger("capmix")


def setup_logging(verbose: bool = False) -> None:
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[capmix %(asctime)s] %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE",
                        help="YAML preset (default: conf/local.yaml, the embedded default)")
    parser.add_argument("--lake", metavar="PATH",
                        help="the lake: a folder/URI, or catalog.schema on Databricks")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="settings", help="override any config value, e.g. spark.master=local[2]")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def build_config(args: argparse.Namespace, module: ModuleType) -> Config:
    overrides: dict[str, Any] = {}
    for text in args.settings:
        key, value = parse_override(text)
        overrides[key] = value
    overrides.update({k: v for k, v in module.overrides(args).items() if v is not None})
    if args.lake:
        overrides["lake.path"] = args.lake
    return load_config(args.config, overrides)


def stage_main(module_name: str, argv: Sequence[str] | None = None,
               prog: str | None = None) -> int:
    """Parse, validate, get the Spark session, run. Returns the exit code."""
    module = importlib.import_module(module_name)
    name = module_name.rsplit(".", 1)[-1]
    parser = common_parser(prog or f"capmix {name}", (module.__doc__ or "").strip().splitlines()[0])
    module.add_arguments(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    setup_logging(args.verbose)
    try:
        cfg = build_config(args, module)
        if hasattr(module, "check_args"):
            module.check_args(cfg, args)  # argument checks that need no I/O, before the session
        started = time.monotonic()
        if getattr(module, "NEEDS_SPARK", True):
            from capmix.lake import is_catalog
            from capmix.storage import check_reachable

            if not is_catalog(cfg.lake.path):  # a refusing store: one line, before Spark starts
                check_reachable(cfg.lake.path, "lake")
            from capmix.spark import session

            with session(cfg.spark, cfg.lake) as spark:
                code = module.run_args(spark, cfg, args)
        else:
            code = module.run_args(None, cfg, args)
        log.debug("%s finished in %.1fs", name, time.monotonic() - started)
        return int(code or 0)
    except CapmixError as exc:
        print(f"{prog or f'capmix {name}'}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"capmix {name}: interrupted; committed work is kept, re-run to resume",
              file=sys.stderr)
        return 130


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"usage: capmix <command> [options]   (capmix <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {c.ljust(width)}  {h}" for c, (_, h) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"capmix {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"capmix: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return stage_main(COMMANDS[command][0], rest, prog=f"capmix {command}")


if __name__ == "__main__":
    sys.exit(main())
