# Databricks notebook source
# MAGIC %md
# MAGIC # Score: CLIP similarity of raw and synthetic captions -> `scores`, `image_embeddings`
# MAGIC
# MAGIC Image embeddings once per image (normalised), then the cosine similarity of each image with
# MAGIC its raw caption (`source = 'raw'`) and every synthetic caption (`CAPTIONER:SAMPLE`), and
# MAGIC CLIP-S = 2.5 * max(cos, 0) in `clip_s`. The paper's scorer is `vit-l-14` (OpenAI
# MAGIC ViT-L/14). Resumable like the caption notebook. Same `jobs.score.run` as `capmix score`.

# COMMAND ----------

DEFAULTS = {
    "scorer": "tiny-clip",      # registry name or open_clip:<arch>/<pretrained>
    "weights": "",              # a checkpoint file / tag overriding the registry's weights
    "captioners": "",           # comma-separated labels; empty: every captioner
    "raw": "true",              # also score the raw captions
    "batch_size": "",           # empty: score.batch_size of the config
    "lake": "",
    "config": "",
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.score import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {
    "lake.path": params["lake"] or None,
    "score.scorer": params["scorer"], "score.weights": params["weights"] or None,
    "score.captioners": [c.strip() for c in params["captioners"].split(",") if c.strip()],
    "score.raw": params["raw"].strip().lower() in ("true", "1", "yes"),
    "score.batch_size": int(params["batch_size"]) if params["batch_size"] else None})
spark, _ = get_or_create(cfg.spark, cfg.lake)

# COMMAND ----------

summary = run(spark, cfg)
print(summary.line())

# COMMAND ----------

# MAGIC %md Mean similarity and CLIP-S per caption source.

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
lake.read("scores").where(f"scorer = '{cfg.score.scorer}'").groupBy("source").agg(
    {"similarity": "mean", "clip_s": "mean", "uid": "count"}).orderBy("source").show(20)
