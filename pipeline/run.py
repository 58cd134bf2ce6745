"""`capmix run`: every stage in order from one config, skipping what is already complete.

    prepare -> pretrain -> ingest -> caption -> score -> cluster -> mix -> stats
            -> export -> train -> eval -> report

Each stage calls the same `run` a user calls (`jobs.<stage>.run`, the torchrun trainer,
`training.eval_job.run`), so the pipeline is an orchestrator and nothing more. Completeness:
ingest, caption and score skip by key what is already committed; the other stages record in
`WORKDIR/stages.json` the inputs they consumed (lake table versions and their settings) and are
skipped while those are unchanged. Training resumes from its latest checkpoint when its inputs
are unchanged, and starts afresh when they changed.

Like the CLI, this module sits above both `jobs` and `training` and imports them lazily.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger("capmix")
KEY_FILE = "_capmix_key.json"  # in a training folder: the inputs it was started from


class Markers:
    """What each stage consumed when it last completed (`stages.json`, replaced atomically)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}

    def done(self, stage: str, key: dict) -> bool:
        return self.data.get(stage) == _plain(key)

    def mark(self, stage: str, key: dict) -> None:
        self.data[stage] = _plain(key)
        _write_json(self.path, self.data)


@dataclass
class StrategyRun:
    """One row of the report: a train set and the model trained on it (once per seed)."""

    strategy: str  # a mixing strategy, or clips / clips_full (a CLIPS on `clips_on`'s set)
    intersect: bool
    name: str  # the row's name: its training runs and eval runs (seed 0; then NAME_seedS)
    train_set: str  # the train set (and export) it reads
    export: Path
    out: Path  # seed 0's training folder
    objective: str = "clip"
    fragment: Optional[str] = None  # CLIPS: train.clips.fragment for this row

    def seed_name(self, seed: int) -> str:
        return self.name if seed == 0 else f"{self.name}_seed{seed}"

    def seed_out(self, seed: int) -> Path:
        return self.out.with_name(self.seed_name(seed))


@dataclass
class PipelineResult:
    stages: list[str] = field(default_factory=list)     # stages that did work
    skipped: list[str] = field(default_factory=list)    # stages found complete
    report: Optional[str] = None
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds of the stages that ran
    # Where those accumulate across runs (a re-run that skips a stage keeps its last time).
    timings_path: Optional[Path] = None

    def line(self) -> str:
        return (f"capmix run: {len(self.stages)} stage step(s) run, {len(self.skipped)} "
                f"already complete, {self.seconds:.0f}s; report {self.report or '-'}")


def run(spark: "SparkSession", cfg: Config) -> PipelineResult:
    """Run the pipeline `cfg.run` describes; returns what ran and where the report is."""
    check_session(spark, "run")  # Connect / Spark < 4.0: one line, no I/O
    started = time.monotonic()
    rc = cfg.run
    work = Path(rc.workdir)
    work.mkdir(parents=True, exist_ok=True)
    markers = Markers(work / "stages.json")
    result = PipelineResult(timings_path=work / TIMINGS_FILE)
    cfg = _prepare(cfg, work, result) if rc.demo is not None else _check_real(cfg)
    if rc.demo is not None:
        cfg = _pretrain(cfg, work, result)
    rc = cfg.run  # the demo filled in its evaluation sets
    if rc.train_samples:
        cfg = replace(cfg, train=replace(cfg.train, samples=rc.train_samples))
    lake = _lake(spark, cfg)
    if rc.wants("ingest"):
        _stage(result, "ingest", lambda: _ingest(spark, cfg))
    if rc.wants("caption"):
        _stage(result, "caption", lambda: _job("jobs.caption").run(spark, cfg))
    if rc.wants("score"):
        _stage(result, "score", lambda: _job("jobs.score").run(spark, cfg))
    runs = _strategy_runs(cfg, work)
    if rc.wants("cluster") and (rc.intersect_clusters or cfg.cluster.reference_images
                                or cfg.cluster.reference_table
                                or cfg.cluster.reference_embeddings):
        _marked(result, markers, "cluster", {
            "image_embeddings": lake.version("image_embeddings"), "cluster": cfg.cluster},
            lambda: _job("jobs.cluster").run(spark, cfg))
    if rc.wants("mix"):
        for r in (r for r in runs if r.objective == "clip"):
            _marked(result, markers, f"mix:{r.name}", _mix_key(lake, cfg, r),
                    lambda r=r: _mix(spark, cfg, r))
    if rc.wants("stats"):
        _marked(result, markers, "stats", {t: lake.version(t) for t in (
            "pool", "captions", "scores", "train_sets")} | {"stats": cfg.stats},
            lambda: _job("jobs.stats").run(
                spark, cfg, report_dir=str(Path(rc.report_dir) / "captions")))
    exported: set[str] = set()
    for r in runs:
        # What this train set was made from (not train_sets' version, which every other
        # strategy's mix moves too): adding a strategy re-exports and re-trains no other.
        export_key = {"mix": _mix_key(lake, cfg, _by_set(runs, r.train_set)),
                      "pool": lake.version("pool"), "export": cfg.export, "name": r.train_set,
                      **({"clips": True} if r.objective == "clips" else {})}
        if (rc.wants("export") and rc.train_from == "export"
                and str(r.export) not in exported):
            exported.add(str(r.export))
            ecfg = replace(cfg, export=replace(cfg.export, clips=r.objective == "clips"))
            _marked(result, markers, f"export:{r.export.name}", export_key,
                    lambda r=r, c=ecfg: _job("jobs.export").run(
                        spark, c, r.train_set, str(r.export), overwrite=True))
        for seed in range(rc.seeds):
            _train_and_eval(spark, cfg, result, markers, r, seed, export_key)
    if rc.wants("report"):
        from pipeline.report import Row, write_index

        result.report = str(write_index(spark, cfg, [
            Row(r.name, r.strategy, r.intersect, tuple(r.seed_name(s) for s in range(rc.seeds)),
                r.train_set) for r in runs], timings=_read_timings(work)))
        result.stages.append("report")
    result.seconds = time.monotonic() - started
    log.info(result.line())
    return result


def _train_and_eval(spark: "SparkSession", cfg: Config, result: PipelineResult,
                    markers: Markers, r: StrategyRun, seed: int, export_key: dict) -> None:
    """One seed of one row: train its model (resuming when its inputs are unchanged), then
    evaluate it on each task the run has data for."""
    rc = cfg.run
    name, out = r.seed_name(seed), r.seed_out(seed)
    tcfg = replace(cfg.train, seed=cfg.train.seed + seed, objective=r.objective)
    if r.fragment is not None:
        tcfg = replace(tcfg, clips=replace(tcfg.clips, fragment=r.fragment))
    tcfg_run = replace(cfg, train=tcfg)
    train_key = {"export": export_key, "train": tcfg, "nproc": rc.nproc,
                 **({"from": "pool"} if rc.train_from == "pool" else {})}
    if rc.wants("train"):
        # From the pool, the trainer reads the train set's images where they are.
        data = None if rc.train_from == "pool" else r.export
        _marked(result, markers, f"train:{name}", train_key,
                lambda: _train(tcfg_run, data, out, name, train_key, rc.nproc,
                               train_set=r.train_set))
    if rc.wants("eval"):
        for task, data in (("classification", rc.classification),
                           ("retrieval", rc.retrieval)):
            if data:
                _marked(result, markers, f"eval:{task}:{name}",
                        {"train": train_key, "eval": cfg.eval, "data": data},
                        lambda t=task, d=data: _job("training.eval_job").run(
                            spark, cfg, str(out), t, d, dataset=_dataset(t, cfg),
                            run_name=name))


def _by_set(runs: list[StrategyRun], train_set: str) -> StrategyRun:
    """The mixing row that makes `train_set` (a CLIPS row reads another row's set)."""
    return next(r for r in runs if r.name == train_set and r.objective == "clip")


# --------------------------------------------------------------------------------------------
# Stages


def _prepare(cfg: Config, work: Path, result: PipelineResult) -> Config:
    """Build the miniature's files and point the config at them."""
    from pipeline.demo.build import DemoData, prepare, prepared

    demo = cfg.run.demo
    root = work / "data"
    if cfg.run.wants("prepare") and not prepared(root, demo):
        _stage(result, "prepare", lambda: prepare(root, demo))
    elif prepared(root, demo):
        result.skipped.append("prepare")
    data = DemoData(root)
    if not prepared(root, demo):
        raise InputError(f"{root}: the demo data is not prepared (run the `prepare` stage)")
    run = replace(cfg.run, classification=cfg.run.classification or str(data.classification),
                  retrieval=cfg.run.retrieval or str(data.retrieval))
    return replace(cfg, run=run,
                   ingest=replace(cfg.ingest, inputs=data.shard_paths()),
                   cluster=replace(cfg.cluster, reference_images=str(data.reference)),
                   eval=replace(cfg.eval, classnames=cfg.eval.classnames or "fashion-mnist",
                                retrieval_gallery=cfg.eval.retrieval_gallery
                                or demo.retrieval_gallery))


def _check_real(cfg: Config) -> Config:
    if cfg.run.wants("ingest") and not cfg.ingest.inputs:
        raise InputError("capmix run without run.demo needs ingest.inputs (shards, folders or "
                         "parquet files of the pool)")
    return cfg


def _pretrain(cfg: Config, work: Path, result: PipelineResult) -> Config:
    """Train the demo's scorer (CLIP) and captioner (CoCa) on the curated split, then use
    them through the caption and score jobs by their weights."""
    from pipeline.demo.build import DemoData

    demo = cfg.run.demo
    curated = DemoData(work / "data").curated
    models = work / "models"
    chosen = {}
    for role, pre, objective in (("scorer", demo.scorer, "clip"),
                                 ("captioner", demo.captioner, "coca")):
        weights = models / f"{role}.pt"
        key = {"model": pre, "data": demo}  # the data prepare() built from these settings
        out = work / "pretrain" / role
        if (weights.is_file() and _same_inputs(out, key)) or not cfg.run.wants("pretrain"):
            if not weights.is_file():
                raise InputError(f"{weights} is missing: run the `pretrain` stage")
            result.skipped.append(f"pretrain:{role}")
        else:
            tcfg = replace(cfg.train, model=pre.model, objective=objective, samples=pre.samples,
                           batch_size=pre.batch_size, lr=pre.lr, warmup=pre.warmup,
                           run_name=f"pretrain-{role}")
            _stage(result, f"pretrain:{role}", lambda t=tcfg, o=out, k=key: _train(
                replace(cfg, train=t), curated, o, f"pretrain-{role}", k, cfg.run.nproc))
            from training.checkpoint import export_weights

            export_weights(out, weights)
        chosen[role] = (pre.model, str(weights))
    return replace(cfg,
                   caption=replace(cfg.caption, captioner=chosen["captioner"][0],
                                   weights=chosen["captioner"][1]),
                   score=replace(cfg.score, scorer=chosen["scorer"][0],
                                 weights=chosen["scorer"][1]))


def _ingest(spark: "SparkSession", cfg: Config) -> int:
    from jobs.ingest import run as ingest

    summary = ingest(spark, cfg)
    log.info(summary.line())
    return summary.inserted


def _strategy_runs(cfg: Config, work: Path) -> list[StrategyRun]:
    from jobs.mix import default_name

    rc = cfg.run
    pairs = [(s, False) for s in rc.strategies] + [(s, True) for s in rc.intersect_clusters]
    out = []
    for strategy, intersect in pairs:
        name = default_name(strategy, rc.percent, intersect)
        out.append(StrategyRun(strategy, intersect, name, name, work / "exports" / name,
                               work / "train" / name))
    if rc.clips:
        base = next(r for r in out if r.strategy == rc.clips_on and not r.intersect)
        # CLIPS reads both captions of each image: an export of its own (export.clips).
        export = work / "exports" / f"{base.train_set}_clips"
        rows = [("clips", cfg.train.clips.fragment)] + ([("clips_full", "full")]
                                                       if rc.clips_full else [])
        for strategy, fragment in rows:
            name = f"{strategy}_{base.train_set}"
            out.append(StrategyRun(strategy, False, name, base.train_set, export,
                                   work / "train" / name, "clips", fragment))
    return out


def _mix_key(lake, cfg: Config, r: StrategyRun) -> dict:
    return {"scores": lake.version("scores"),
            "clusters": lake.version("clusters") if r.intersect else None,
            "strategy": r.strategy, "percent": cfg.run.percent, "mix": cfg.mix,
            "captioner": cfg.caption.captioner, "scorer": cfg.score.scorer}


def _mix(spark: "SparkSession", cfg: Config, r: StrategyRun):
    from jobs.mix import run as mix

    return mix(spark, cfg, r.strategy, percent=cfg.run.percent, intersect_clusters=r.intersect,
               name=r.name)


def _train(cfg: Config, data: Optional[Path], out: Path, name: str, key: dict,
           nproc: int, train_set: Optional[str] = None) -> None:
    """One torchrun training run `name` (on export `data`, or None: `train_set` in the pool);
    resumes when `out` was started with the same inputs."""
    from capmix.cli import common_parser
    from training import launch

    resume = _same_inputs(out, key)
    if out.exists() and not resume:
        shutil.rmtree(out)  # trained on other inputs: its checkpoints are not this run's
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / KEY_FILE, _plain(key))
    source = ["--data", str(data)] if data is not None else [
        "--train-set", train_set or name, "--lake", cfg.lake.path]
    argv = [*source, "--out", str(out), "--nproc", str(nproc)]
    argv += ["--config", cfg.source] if cfg.source else []
    argv += [a for k, v in _dotted("train", asdict(cfg.train)) for a in ("--set", f"{k}={v}")]
    argv += ["--set", f"train.run_name={name}"] + (["--resume"] if resume else [])
    parser = common_parser("capmix run", "train")
    launch.add_arguments(parser)
    args = parser.parse_args(argv)
    code = launch.run(cfg, args)
    if code != 0:
        raise InputError(f"training {name} failed (exit {code}); its log: {out}/log.jsonl; "
                         "re-run capmix run to resume it")


def _same_inputs(out: Path, key: dict) -> bool:
    """Whether the training in `out` was started from exactly these inputs."""
    stored = out / KEY_FILE
    return stored.is_file() and json.loads(stored.read_text()) == _plain(key)


def _dataset(task: str, cfg: Config) -> Optional[str]:
    return f"demo-{task}" if cfg.run.demo is not None else None


# --------------------------------------------------------------------------------------------
# Helpers


def _job(module: str):
    """A stage module, imported when its stage runs (torch and friends load only then)."""
    import importlib

    return importlib.import_module(module)


def _lake(spark: "SparkSession", cfg: Config):
    from capmix.lake import open_lake

    return open_lake(spark, cfg.lake)


TIMINGS_FILE = "timings.json"  # in the workdir: the last time each stage took to do its work


def _stage(result: PipelineResult, name: str, work) -> Any:
    log.info("[run] %s ...", name)
    started = time.monotonic()
    value = work()
    seconds = time.monotonic() - started
    result.stages.append(name)
    result.timings[name] = seconds
    if result.timings_path is not None:
        _write_json(result.timings_path, {**_read_timings(result.timings_path.parent),
                                          name: round(seconds, 1)})
    log.info("[run] %s done in %.1fs", name, seconds)
    return value


def _read_timings(work: Path) -> dict[str, float]:
    path = work / TIMINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _marked(result: PipelineResult, markers: Markers, name: str, key: dict, work) -> None:
    if markers.done(name, key):
        result.skipped.append(name)
        return
    _stage(result, name, work)
    markers.mark(name, key)


def _dotted(prefix: str, data: dict) -> list[tuple[str, str]]:
    """Nested settings as `prefix.key=value` pairs, values as YAML scalars (None: null)."""
    from training.launch import _yaml_scalar

    out = []
    for k, v in data.items():
        if isinstance(v, dict):
            out += _dotted(f"{prefix}.{k}", v)
        else:
            out.append((f"{prefix}.{k}", "null" if v is None else _yaml_scalar(v)))
    return out


def _plain(value: Any) -> Any:
    """JSON-comparable form of dataclasses, paths and containers."""
    return json.loads(json.dumps(value, default=lambda o: asdict(o) if hasattr(
        o, "__dataclass_fields__") else str(o), sort_keys=True))


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# CLI (capmix run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stages", metavar="A,B", help="run only these stages (in pipeline "
                        "order): prepare, pretrain, ingest, caption, score, cluster, mix, "
                        "stats, export, train, eval, report")
    parser.add_argument("--workdir", help="shards, exports, models, checkpoints (run.workdir)")
    parser.add_argument("--report-dir", help="where report/index.md goes (run.report_dir)")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    return {"run.stages": stages, "run.workdir": args.workdir,
            "run.report_dir": args.report_dir}


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    result = run(spark, cfg)
    print(result.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("pipeline.run", argv, prog="capmix run")


if __name__ == "__main__":  # python -m pipeline.run / spark-submit pipeline/run.py
    import sys

    sys.exit(main())
