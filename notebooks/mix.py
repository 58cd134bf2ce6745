# Databricks notebook source
# MAGIC %md
# MAGIC # Mix: raw and synthetic captions -> a named train set
# MAGIC
# MAGIC One of the paper's mixing strategies (Tables 4 and 5), each a parameterized query in
# MAGIC `sql/<strategy>.sql`, over `scores` (and `clusters` for the image-cluster filter). The rows
# MAGIC replace the train set of that name in `train_sets`; the run is recorded in `mix_runs`.
# MAGIC The same `jobs.mix.run` serves `capmix mix` and `spark-submit jobs/mix.py`.

# COMMAND ----------

DEFAULTS = {
    # raw, synthetic, raw_top, synthetic_top, synthetic_for_raw_top, raw_top_plus_synthetic,
    # raw_top_plus_synthetic_filtered, synthetic_top_plus_raw_filtered,
    # concat_top_plus_synthetic_filtered, raw_top_and_synthetic_top, best_synthetic
    "strategy": "raw_top_plus_synthetic_filtered",
    "percent": "30",
    "captioner": "",           # empty: mix.captioner, else caption.captioner
    "captioners": "",          # best_synthetic: comma-separated, e.g. blip2_t0.5,blip2_t1.0
    "scorer": "",              # empty: mix.scorer, else score.scorer
    "intersect_clusters": "false",
    "name": "",                # empty: strategy_percent
    "lake": "",                # a folder/URI, or catalog.schema on Databricks
    "config": "",              # a YAML preset; empty: conf/databricks.yaml on Databricks
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.mix import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {"lake.path": params["lake"] or None})
spark, _ = get_or_create(cfg.spark, cfg.lake)  # the notebook's session on Databricks

# COMMAND ----------

result = run(
    spark, cfg, params["strategy"], percent=float(params["percent"]),
    captioner=params["captioner"] or None,
    captioners=[c for c in params["captioners"].split(",") if c.strip()] or None,
    scorer=params["scorer"] or None,
    intersect_clusters=params["intersect_clusters"].strip().lower() == "true",
    name=params["name"] or None)
print(result)

# COMMAND ----------

# MAGIC %md The train set by source, and every run so far.

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
lake.read("train_sets").where(f"name = '{result.name}'").groupBy("source").count().show()
lake.read("mix_runs").orderBy("created_at", ascending=False).show(20, truncate=60)
