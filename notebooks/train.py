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

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

import os  # noqa: E402

from capmix.notebook import preset  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
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
