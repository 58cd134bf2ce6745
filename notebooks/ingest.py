# Databricks notebook source
# MAGIC %md
# MAGIC # Ingest: image-text inputs -> the `pool` Delta table
# MAGIC
# MAGIC Reads webdataset shards (img2dataset / DataComp layout), image folders with a captions
# MAGIC file, or parquet files with image bytes, and merges them into `pool` by uid. Re-running
# MAGIC adds nothing new; an interrupted run resumes where it stopped. The same `jobs.ingest.run`
# MAGIC serves `capmix ingest` and `spark-submit jobs/ingest.py`.

# COMMAND ----------

DEFAULTS = {
    # comma-separated: /dbfs/pools/shards/{00000..00099}.tar, image folders, parquet files
    "inputs": "",
    "format": "auto",      # auto | webdataset | folder | parquet
    "lake": "",            # a folder/URI, or catalog.schema on Databricks; empty: from the config
    "config": "",          # a YAML preset; empty: conf/databricks.yaml if present, else defaults
    "units_per_commit": "",
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.compute import check_session  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.ingest import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
overrides = {"lake.path": params["lake"] or None}
cfg = load_config(config, overrides)
spark, _ = get_or_create(cfg.spark, cfg.lake)  # the notebook's session on Databricks
check_session(spark, "ingest")  # shared/serverless compute (Spark Connect): one clear line

# COMMAND ----------

inputs = [p.strip() for p in params["inputs"].split(",") if p.strip()]
if inputs or cfg.ingest.inputs:
    summary = run(spark, cfg, inputs or None, format=params["format"],
                  units_per_commit=int(params["units_per_commit"]) if params["units_per_commit"]
                  else None)
    print(summary.line())
else:
    print("set the `inputs` widget (or ingest.inputs in the config) to ingest something")

# COMMAND ----------

# MAGIC %md Look at what arrived: rows by status, and the most common errors.

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
if lake.exists("pool"):
    pool = lake.read("pool")
    pool.groupBy("status").count().show()
    pool.where("status = 'error'").groupBy("error").count().orderBy("count", ascending=False) \
        .show(10, truncate=100)
