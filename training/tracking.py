"""What a training run reports, on rank 0 only: a tqdm bar (samples/s, loss, lr), a JSON-lines
log under the output folder (one record per log step, appended across resumes; in an object
store, uploaded at every event other than a step: training/outdir.py), and MLflow
when it is installed and configured (`train.mlflow_uri` or $MLFLOW_TRACKING_URI); MLflow is an
optional dependency, never imported otherwise.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Optional

from training.outdir import AppendLog, Where, join

log = logging.getLogger("capmix")


def mlflow_uri(configured: Optional[str]) -> Optional[str]:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or None


def check_mlflow(configured: Optional[str]) -> None:
    """Fail before training when MLflow is asked for explicitly but missing."""
    if configured:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            from capmix.errors import ConfigError

            raise ConfigError("train.mlflow_uri", "is set, but mlflow is not installed "
                                                  "(pip install mlflow)") from None


class Tracker:
    def __init__(self, out: Where, enabled: bool, total_steps: int, start_step: int,
                 params: dict[str, Any], uri: Optional[str], experiment: str,
                 run_name: str):
        self.enabled = enabled
        self.bar = None
        self.mlflow = None
        self.fh = None
        if not enabled:
            return
        self.fh = AppendLog(join(out, "log.jsonl"))
        from tqdm import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0, desc=f"train {run_name}")
        if uri:
            self.mlflow = _start_mlflow(uri, experiment, run_name, params)

    def record(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self.fh.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields})
                      + "\n")
        if event != "step":  # start, checkpoint, end: a store's copy is brought up to date
            self.fh.sync()

    def step(self, step: int, advanced: int, metrics: Optional[dict[str, float]]) -> None:
        """Advance the bar; with metrics (a log step), also log them everywhere."""
        if not self.enabled:
            return
        self.bar.update(advanced)
        if metrics is None:
            return
        self.bar.set_postfix({"samples/s": f"{metrics['samples_per_s']:,.0f}",
                              "loss": f"{metrics['loss']:.4f}", "lr": f"{metrics['lr']:.2e}"},
                             refresh=False)
        self.record("step", step=step, **metrics)
        if self.mlflow is not None:
            try:
                self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
            except Exception as exc:  # tracking must never stop training
                log.warning("mlflow logging failed, disabled: %s", exc)
                self.mlflow = None

    def close(self, **fields: Any) -> None:
        if not self.enabled:
            return
        self.record("end", **fields)
        self.bar.close()
        self.fh.close()
        if self.mlflow is not None:
            try:
                self.mlflow.end_run()
            except Exception:
                pass


def _start_mlflow(uri: str, experiment: str, run_name: str, params: dict[str, Any]):
    try:
        import mlflow
    except ImportError:
        log.info("MLFLOW_TRACKING_URI is set but mlflow is not installed; not tracking")
        return None
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(experiment)
        mlflow.start_run(run_name=run_name)
        mlflow.log_params({k: str(v)[:500] for k, v in _flat(params).items()})
        return mlflow
    except Exception as exc:
        log.warning("mlflow unavailable (%s); not tracking", exc)
        return None


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = value
    return flat
