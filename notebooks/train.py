# Databricks notebook source
# MAGIC %md
# MAGIC # Train CLIP / CLIPS on an export
# MAGIC
# MAGIC DDP over the GPUs of this node (NCCL; gloo on CPU), DataComp's hyper-parameters by
# MAGIC default, budget in samples seen (the pool size the export recorded). On Databricks the
# MAGIC ranks are started by Spark's `TorchDistributor`; elsewhere by `torchrun`, exactly as
# MAGIC `capmix train` does. Checkpoints, `log.jsonl` and `train_config.json` go to `out`;
# MAGIC re-run with `resume` = true after an interruption.

# COMMAND ----------

DEFAULTS = {
    "data": "exports/raw_top_plus_synthetic_filtered_30",
    "out": "runs/raw_top_plus_synthetic_filtered_30",
    "model": "ViT-B-32",       # an open_clip architecture, or tiny-clip
    "objective": "clip",       # clip | clips
    "nproc": "1",              # ranks on this node (GPUs)
    "samples": "",             # empty: the pool size recorded by the export
    "batch_size": "",          # empty: train.batch_size (4096, global)
    "resume": "false",
    "config": "",              # a YAML preset; empty: conf/databricks.yaml on Databricks
}


def widget_values(defaults: dict) -> dict:
    """Widget values on Databricks. Run as a plain Python file, the defaults, each replaced by
    the environment variable CAPMIX_WIDGET_<NAME> when set (CAPMIX_WIDGET_LAKE=/tmp/lake)."""
    try:
        for name, value in defaults.items():
            dbutils.widgets.text(name, value)  # noqa: F821 (defined by Databricks)
        return {name: dbutils.widgets.get(name) for name in defaults}  # noqa: F821
    except NameError:
        import os

        return {name: os.environ.get(f"CAPMIX_WIDGET_{name.upper()}", value)
                for name, value in defaults.items()}


params = widget_values(DEFAULTS)

# COMMAND ----------

import os  # noqa: E402

from capmix.resources import resource_dir  # noqa: E402

config = params["config"] or None
if config is None and os.environ.get("DATABRICKS_RUNTIME_VERSION"):
    config = str(resource_dir("conf") / "databricks.yaml")
argv = ["--data", params["data"], "--out", params["out"], "--model", params["model"],
        "--objective", params["objective"]]
argv += ["--config", config] if config else []
argv += ["--samples", params["samples"]] if params["samples"] else []
argv += ["--batch-size", params["batch_size"]] if params["batch_size"] else []
argv += ["--resume"] if params["resume"].strip().lower() == "true" else []
nproc = int(params["nproc"])

# COMMAND ----------

if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
    import torch  # noqa: E402
    from pyspark.ml.torch.distributor import TorchDistributor  # noqa: E402

    from training.train import main  # noqa: E402

    TorchDistributor(num_processes=nproc, local_mode=True,
                     use_gpu=torch.cuda.is_available()).run(main, argv)
else:
    from capmix.cli import main  # noqa: E402

    code = main(["train", *argv, "--nproc", str(nproc)])
    assert code == 0, f"training failed (exit {code})"

# COMMAND ----------

# MAGIC %md The training log (one record per logged step).

# COMMAND ----------

import pandas as pd  # noqa: E402

log = pd.read_json(os.path.join(params["out"], "log.jsonl"), lines=True)
print(log[log["event"] == "step"][["step", "samples_seen", "loss", "lr", "samples_per_s"]]
      .tail(20).to_string(index=False))
