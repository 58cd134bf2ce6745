"""The DataComp evaluation suite (38 tasks) through `clip_benchmark`, an optional dependency.

`clip_benchmark` is not installed by capmix and needs the benchmark datasets (a local copy, or
internet access to their webdataset mirrors). It runs as its own CLI, once per task, on the
checkpoint's weights exported as a plain open_clip state dict; the per-task JSON results are read
back into `eval_results`. Untested on the development machines (no clip_benchmark, no internet).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from capmix.errors import InputError

# DataComp's 38 tasks, named as clip_benchmark's webdataset mirrors name them.
DATACOMP_TASKS = (
    "imagenet1k", "imagenet_sketch", "imagenetv2", "imagenet-a", "imagenet-o", "imagenet-r",
    "objectnet", "vtab/caltech101", "cars", "vtab/cifar10", "vtab/cifar100",
    "vtab/clevr_count_all", "vtab/clevr_closest_object_distance", "country211", "vtab/dtd",
    "vtab/eurosat", "fgvc_aircraft", "vtab/flowers", "food101", "gtsrb",
    "vtab/kitti_closest_vehicle_distance", "mnist", "vtab/pcam", "vtab/pets", "renderedsst2",
    "vtab/resisc45", "stl10", "sun397", "vtab/svhn", "voc2007", "fairness/dollar_street",
    "fairness/geode", "flickr30k", "mscoco_captions", "winogavil", "wilds/iwildcam",
    "wilds/fmow", "wilds/camelyon17",
)
WDS_ROOT = "https://huggingface.co/datasets/clip-benchmark/wds_{dataset_cleaned}/tree/main"


def available() -> bool:
    try:
        import clip_benchmark  # noqa: F401
    except ImportError:
        return False
    return True


def run_suite(model, root: Optional[str], tasks: tuple[str, ...] = DATACOMP_TASKS,
              batch_size: int = 64) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} for every task clip_benchmark could run (failures are logged
    and skipped, as DataComp's own evaluation does)."""
    if not available():
        raise InputError("--task datacomp needs clip_benchmark, which is not installed "
                         "(pip install clip_benchmark; it also needs the benchmark datasets: "
                         "internet access or --data pointing at a local copy)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="capmix-bench-") as tmp:
        weights = Path(tmp) / "weights.pt"
        import torch

        torch.save(model.clip.state_dict(), weights)
        for task in tasks:
            out = Path(tmp) / (task.replace("/", "_") + ".json")
            cmd = [sys.executable, "-m", "clip_benchmark.cli", "eval", "--model", model.arch,
                   "--pretrained", str(weights), "--dataset", f"wds/{task}",
                   "--dataset_root", root or WDS_ROOT, "--batch_size", str(batch_size),
                   "--output", str(out)]
            code = subprocess.call(cmd, env={**os.environ})
            if code != 0 or not out.is_file():
                print(f"[eval] datacomp task {task}: clip_benchmark failed (exit {code})",
                      file=sys.stderr)
                continue
            metrics = json.loads(out.read_text()).get("metrics", {})
            results[task] = {k: float(v) for k, v in metrics.items()
                             if isinstance(v, (int, float))}
    if not results:
        raise InputError("clip_benchmark produced no results (datasets unreachable?)")
    return results
