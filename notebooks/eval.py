# Databricks notebook source
# MAGIC %md
# MAGIC # Zero-shot evaluation of a checkpoint
# MAGIC
# MAGIC Classification (top-1 / top-5 from class names x prompt templates) or retrieval
# MAGIC (Recall@1/5/10 both ways, and their mean R@1) on an export, a parquet dataset, an image
# MAGIC folder or a lake table (`table:NAME`); results are upserted into `eval_results`.
# MAGIC `task` = datacomp runs DataComp's 38 tasks through clip_benchmark (installed separately).

# COMMAND ----------

DEFAULTS = {
    "checkpoint": "runs/raw_top_plus_synthetic_filtered_30",  # a folder, a .pt, random:ARCH
    "task": "classification",  # classification | retrieval | datacomp
    "data": "",                # export / parquet / image folder / table:NAME
    "classnames": "",          # imagenet, fashion-mnist, a file, a,b,c; empty: the labels
    "templates": "",           # openai, simple, a file, 'a photo of a {}.'; empty: openai
    "dataset": "",             # the name recorded in eval_results; empty: from data
    "lake": "",
    "config": "",
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from training.eval_job import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {"lake.path": params["lake"] or None,
                           "eval.classnames": params["classnames"] or None,
                           "eval.templates": params["templates"] or None})
spark, _ = get_or_create(cfg.spark, cfg.lake)

# COMMAND ----------

metrics = None
if params["data"] or params["task"] == "datacomp":
    metrics = run(spark, cfg, params["checkpoint"], params["task"], params["data"] or None,
                  dataset=params["dataset"] or None)
else:
    print("set the `data` widget (an export, a parquet dataset, an image folder or table:NAME)"
          f" to run the {params['task']} evaluation")

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
if lake.exists("eval_results"):
    lake.read("eval_results").orderBy("created_at", ascending=False).show(40, truncate=60)
