# Databricks notebook source
# MAGIC %md
# MAGIC # Export: a train set -> a Petastorm-readable parquet dataset
# MAGIC
# MAGIC Joins `train_sets` (one named set) with the pool's image bytes (and, for CLIPS, the raw
# MAGIC and the full synthetic caption) and writes plain parquet with row groups sized for
# MAGIC streaming. The trainer reads it with petastorm's `make_batch_reader`, each rank its own
# MAGIC row groups. The same `jobs.export.run` serves `capmix export` and `spark-submit`.

# COMMAND ----------

DEFAULTS = {
    "train_set": "raw_top_plus_synthetic_filtered_30",
    "out": "exports/raw_top_plus_synthetic_filtered_30",  # a folder or URI (dbfs:/, s3://)
    "clips": "false",          # true: add raw_text + synthetic_text, one row per image
    "captioner": "",           # CLIPS: the synthetic caption, NAME or NAME:SAMPLE
    "row_group_mb": "",        # empty: export.row_group_mb (32)
    "min_files": "",           # empty: export.min_files (8); >= the number of training ranks
    "overwrite": "false",
    "lake": "",                # a folder/URI, or catalog.schema on Databricks
    "config": "",              # a YAML preset; empty: conf/databricks.yaml on Databricks
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.compute import check_session  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.export import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {
    "lake.path": params["lake"] or None,
    "export.clips": params["clips"].strip().lower() == "true",
    "export.captioner": params["captioner"] or None,
    "export.row_group_mb": float(params["row_group_mb"]) if params["row_group_mb"] else None,
    "export.min_files": int(params["min_files"]) if params["min_files"] else None,
})
spark, _ = get_or_create(cfg.spark, cfg.lake)  # the notebook's session on Databricks
check_session(spark, "export")  # shared/serverless compute (Spark Connect): one clear line

# COMMAND ----------

result = run(spark, cfg, params["train_set"], params["out"],
             overwrite=params["overwrite"].strip().lower() == "true")
print(result)
