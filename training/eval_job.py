"""Zero-shot evaluation of a checkpoint; results go to `eval_results` and are printed.

    capmix eval --checkpoint runs/mix50 --task classification --data evalsets/fashion_mnist \
        --classnames fashion-mnist
    capmix eval --checkpoint runs/mix50 --task retrieval --data exports/coco_val
    capmix eval --checkpoint runs/mix50 --task classification --data table:my_labelled_set
    capmix eval --checkpoint runs/mix50 --task datacomp --benchmark-root /data/datacomp_eval

--data is an export or any parquet dataset (image bytes + label or text columns), an image
folder with one sub-folder per class, or a lake table (`table:NAME`). `--checkpoint random:ARCH`
scores a randomly initialised model (the chance baseline). The evaluation itself is Spark-free
(training/evaluate.py); Spark is used only to read a lake table and to write the results.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError
from training import evaluate as ev

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

TASKS = ("classification", "retrieval", "datacomp")


def run(spark: "SparkSession", cfg: Config, checkpoint: str, task: str, data: Optional[str],
        dataset: Optional[str] = None, run_name: Optional[str] = None,
        write: bool = True) -> dict[str, float]:
    """Evaluate, write one `eval_results` row per metric (upsert by run, task, dataset,
    metric), return the metrics."""
    check_session(spark, "eval")  # Connect / Spark < 4.0: one line, no I/O
    import torch

    ecfg = cfg.eval
    device = ("cuda" if torch.cuda.is_available() else "cpu") if ecfg.device == "auto" \
        else ecfg.device
    model = ev.load_model(checkpoint, device)
    if task == "datacomp":
        from training.benchmark import run_suite

        per_task = run_suite(model, data)
        metrics = {f"{name}/{k}": v for name, m in per_task.items() for k, v in m.items()}
        dataset = dataset or "datacomp"
    else:
        if not data:
            raise InputError(f"--task {task} needs --data")
        dataset = dataset or _dataset_name(data)
        metrics = _evaluate(spark, cfg, model, task, data, device)
    if not run_name:
        run_name = model.run_name or (model.checkpoint if model.step is None
                                      else Path(model.checkpoint).parent.parent.name)
    if write:
        _write(spark, cfg, run_name, task, dataset, metrics, model, data)
    _print(run_name, task, dataset, metrics)
    return metrics


def _evaluate(spark, cfg: Config, model: ev.LoadedModel, task: str, data: str,
              device: str) -> dict[str, float]:
    ecfg = cfg.eval
    if task == "classification":
        cols = [ecfg.image_column, ecfg.label_column]
        if ev.is_image_folder(data):
            classes, frames = ev.folder_frames(data, ecfg.batch_size, ecfg.limit)
            names = ev.classnames_for(ecfg.classnames, classes)
            return ev.classify(model, frames, names, ev.templates_for(ecfg.templates), device,
                               "image", "label")
        labels = [] if ecfg.classnames else [
            v for df in _frames(spark, cfg, data, [ecfg.label_column], 65536)
            for v in df[ecfg.label_column]]
        names = ev.classnames_for(ecfg.classnames, labels)
        return ev.classify(model, _frames(spark, cfg, data, cols, ecfg.batch_size), names,
                           ev.templates_for(ecfg.templates), device, *cols)
    cols = ["uid", ecfg.image_column, ecfg.text_column]
    return ev.retrieve(model, _frames(spark, cfg, data, cols, ecfg.batch_size), device,
                       ecfg.image_column, ecfg.text_column, gallery=ecfg.retrieval_gallery)


def _frames(spark, cfg: Config, data: str, columns: list[str],
            batch: int) -> Iterator["pd.DataFrame"]:
    table = _table_name(data)
    if table is None:
        frames = ev.parquet_frames(data, columns, batch, cfg.eval.limit)
        first = next(frames, None)
        missing = [c for c in columns if c != "uid" and (first is None or c not in first)]
        if missing:
            raise InputError(f"{data}: missing column(s) {', '.join(missing)}")
        yield first
        yield from frames
        return
    yield from _table_frames(spark, cfg, table, columns, batch)


def _table_frames(spark, cfg: Config, table: str, columns: list[str],
                  batch: int) -> Iterator["pd.DataFrame"]:
    import pandas as pd

    from capmix.lake import open_lake

    lake = open_lake(spark, cfg.lake)
    lake.require(table)
    df = lake.read(table)
    missing = [c for c in columns if c != "uid" and c not in df.columns]
    if missing:
        raise InputError(f"table {table}: missing column(s) {', '.join(missing)}")
    df = df.select(*[c for c in columns if c in df.columns])
    if cfg.eval.limit:
        df = df.limit(cfg.eval.limit)
    rows: list = []
    for row in df.toLocalIterator():  # a partition at a time, never the whole set
        rows.append(row.asDict())
        if len(rows) == batch:
            yield pd.DataFrame(rows)
            rows = []
    if rows:
        yield pd.DataFrame(rows)


def _table_name(data: str) -> Optional[str]:
    for prefix in ("table:", "lake:"):
        if data.startswith(prefix):
            return data[len(prefix):]
    return None


def _dataset_name(data: str) -> str:
    return _table_name(data) or Path(data.rstrip("/")).name or data


def _write(spark, cfg: Config, run_name: str, task: str, dataset: str,
           metrics: dict[str, float], model: ev.LoadedModel, data: Optional[str]) -> None:
    import datetime

    from capmix.lake import open_lake
    from capmix.tables import EVAL_RESULTS

    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    rows = [(run_name, task, dataset, name, float(value), model.checkpoint, model.step,
             model.samples_seen, data, now) for name, value in metrics.items()]
    df = spark.createDataFrame(rows, EVAL_RESULTS.schema())
    open_lake(spark, cfg.lake).merge("eval_results", EVAL_RESULTS.conform(df),
                                     EVAL_RESULTS.keys, update=True)


def _print(run_name: str, task: str, dataset: str, metrics: dict[str, float]) -> None:
    width = max(len(k) for k in metrics)
    print(f"{run_name} | {task} | {dataset}")
    for name, value in metrics.items():
        shown = f"{value:,.0f}" if name in ("n", "classes", "images", "texts") \
            else f"{value:.4f}"
        print(f"  {name.ljust(width)}  {shown}")


# --------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint file, a training output folder, or random:ARCH")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", metavar="PATH",
                        help="export / parquet, image folder, or table:NAME (datacomp: the "
                             "benchmark datasets root)")
    parser.add_argument("--dataset", help="name recorded in eval_results (default: from --data)")
    parser.add_argument("--run", dest="run_name", help="run name (default: the checkpoint's)")
    parser.add_argument("--classnames", help="imagenet, fashion-mnist, a file, or a,b,c")
    parser.add_argument("--templates", help="openai, simple, a file, or 'a photo of a {}.'")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--limit", type=int, help="evaluate at most this many rows")
    parser.add_argument("--no-write", action="store_true", help="print only")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"eval.classnames": args.classnames, "eval.templates": args.templates,
            "eval.batch_size": args.batch_size, "eval.limit": args.limit}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    if args.task != "datacomp" and not args.data:
        raise InputError(f"--task {args.task} needs --data")
    if args.data and _table_name(args.data) is None and "://" not in args.data \
            and not os.path.exists(args.data):
        raise InputError(f"--data {args.data}: no such file or folder (a lake table is "
                         "written table:NAME)")
    if not args.checkpoint.startswith("random:") and not os.path.exists(args.checkpoint):
        raise InputError(f"--checkpoint {args.checkpoint}: no such file or folder")
    if args.task == "classification":
        ev.templates_for(cfg.eval.templates)  # a bad template fails before any work


def run_args(spark, cfg: Config, args: argparse.Namespace) -> int:
    started = time.monotonic()
    run(spark, cfg, args.checkpoint, args.task, args.data, args.dataset, args.run_name,
        write=not args.no_write)
    print(f"[eval] done in {time.monotonic() - started:.0f}s"
          + ("" if args.no_write else f"; results in {cfg.table('eval_results')}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("training.eval_job", argv, prog="capmix eval")


if __name__ == "__main__":
    sys.exit(main())
