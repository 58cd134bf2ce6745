# Databricks notebook source
# MAGIC %md
# MAGIC # Caption: synthetic captions for every pool image -> `captions`
# MAGIC
# MAGIC The paper's sampling: top-K 50, temperature 0.75, 5 to 40 tokens; each row (uid, sample)
# MAGIC has its own seed, so a re-run reproduces it. Resumable: re-run the notebook after any
# MAGIC interruption and it continues where the last commit left off. The same `jobs.caption.run`
# MAGIC serves `capmix caption` and `spark-submit jobs/caption.py`. On a GPU cluster use
# MAGIC `blip2-opt-2.7b` (the paper's captioner) and one GPU per task (see conf/cluster.yaml).

# COMMAND ----------

DEFAULTS = {
    "captioner": "tiny-coca",   # registry name, hf:<id or folder>, open_clip:<coca>/<tag>
    "weights": "",              # a folder / file overriding the registry's weights
    "name": "",                 # label in captions.captioner; empty: the captioner name
    "prompt": "",               # instruction-following captioners only
    "samples": "1",
    "top_k": "50",
    "temperature": "0.75",
    "min_length": "5",
    "max_length": "40",
    "seed": "0",
    "batch_size": "",           # empty: caption.batch_size of the config
    "lake": "",
    "config": "",
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.caption import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {
    "lake.path": params["lake"] or None,
    "caption.captioner": params["captioner"], "caption.weights": params["weights"] or None,
    "caption.name": params["name"] or None, "caption.prompt": params["prompt"] or None,
    "caption.samples": int(params["samples"]), "caption.top_k": int(params["top_k"]),
    "caption.temperature": float(params["temperature"]),
    "caption.min_length": int(params["min_length"]),
    "caption.max_length": int(params["max_length"]), "caption.seed": int(params["seed"]),
    "caption.batch_size": int(params["batch_size"]) if params["batch_size"] else None})
spark, _ = get_or_create(cfg.spark, cfg.lake)

# COMMAND ----------

summary = run(spark, cfg)
print(summary.line())

# COMMAND ----------

# MAGIC %md A few captions next to the raw text.

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
raw = lake.read("pool").selectExpr("uid", "text AS raw")
(lake.read("captions").where(f"captioner = '{cfg.caption.label}'").join(raw, "uid")
 .select("uid", "sample", "raw", "text").orderBy("uid", "sample").show(10, truncate=80))
