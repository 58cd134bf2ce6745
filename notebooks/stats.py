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

from capmix.config import load_config  # noqa: E402
from capmix.resources import resource_dir  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.stats import run  # noqa: E402

config = params["config"] or None
if config is None and os.environ.get("DATABRICKS_RUNTIME_VERSION"):
    config = str(resource_dir("conf") / "databricks.yaml")
cfg = load_config(config, {
    "lake.path": params["lake"] or None, "stats.tagger": params["tagger"],
    "stats.report_dir": params["report_dir"],
    "stats.subset_sizes": [int(s) for s in params["subset_sizes"].split(",") if s.strip()],
    "stats.datasets": [d for d in params["datasets"].split(",") if d.strip()]})
spark, _ = get_or_create(cfg.spark)

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
