# Databricks notebook source
# MAGIC %md
# MAGIC # Stats: caption quality and diversity -> `text_stats` and a report
# MAGIC
# MAGIC Per caption set (raw, each captioner, each train set): unique trigrams and nouns, words per
# MAGIC caption, grounding ratio, cosine similarity, and the same diversity counts on random
# MAGIC subsets of growing size; then the report (the paper's Figures 3, 4, 5 and 12). The same
# MAGIC `jobs.stats.run` serves `capmix stats` and `spark-submit jobs/stats.py`.

# COMMAND ----------

DEFAULTS = {
    "datasets": "",            # comma-separated, e.g. raw,captioner:blip2; empty: all
    "subset_sizes": "1000,10000,100000,1000000",
    "tagger": "auto",          # auto | nltk | lingua-hmm
    "report_dir": "report",    # on Databricks, e.g. /Volumes/main/capmix/files/report
    "scorer": "",              # whose similarities; empty: score.scorer
    "lake": "",
    "config": "",
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.stats import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {
    "lake.path": params["lake"] or None, "stats.tagger": params["tagger"],
    "stats.report_dir": params["report_dir"],
    "stats.subset_sizes": [int(s) for s in params["subset_sizes"].split(",") if s.strip()],
    "stats.datasets": [d for d in params["datasets"].split(",") if d.strip()]})
spark, _ = get_or_create(cfg.spark, cfg.lake)

# COMMAND ----------

result = run(spark, cfg, scorer=params["scorer"] or None)
print(result)

# COMMAND ----------

# MAGIC %md The main figures per caption set (the report's markdown has them all).

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
lake.read("text_stats").where(
    "metric IN ('captions', 'words_mean', 'grounding_mean', 'similarity_mean', "
    "'unique_trigrams', 'unique_nouns')").groupBy("dataset").pivot("metric") \
    .agg({"value": "max"}).show(truncate=False)
