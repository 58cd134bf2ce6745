# Databricks notebook source
# MAGIC %md
# MAGIC # capmix: synthetic captions for CLIP training data
# MAGIC
# MAGIC capmix turns a noisy web image-text pool into a better CLIP training set: it captions every
# MAGIC image with a captioning model (BLIP-2 in the paper), scores the raw and the synthetic
# MAGIC captions with CLIP (ViT-L/14), mixes the two with SQL (the paper's Tables 4 and 5), measures
# MAGIC caption diversity, and trains and evaluates CLIP (or CLIPS) on the result. Every stage reads
# MAGIC and writes Delta tables in one lake: a Unity Catalog `catalog.schema` here (see
# MAGIC `conf/databricks.yaml`), a local folder with the embedded default.
# MAGIC
# MAGIC Run the stage notebooks in this order (each is thin: widgets -> `jobs.<stage>.run`, the
# MAGIC same code as `capmix <stage>` and `spark-submit jobs/<stage>.py`); the bundle in
# MAGIC `databricks.yml` runs them as one job.
# MAGIC
# MAGIC | # | notebook | reads | writes |
# MAGIC | --- | --- | --- | --- |
# MAGIC | 1 | [ingest]($./ingest) | webdataset shards, image folders, parquet | `pool` |
# MAGIC | 2 | [caption]($./caption) | `pool` | `captions` |
# MAGIC | 3 | [score]($./score) | `pool`, `captions` | `scores`, `image_embeddings` |
# MAGIC | 4 | [cluster]($./cluster) | `image_embeddings` + reference images | `clusters` |
# MAGIC | 5 | [mix]($./mix) | `scores`, `clusters` | `train_sets`, `mix_runs` |
# MAGIC | 6 | [stats]($./stats) | `captions`, `scores`, `train_sets` | `text_stats`, report |
# MAGIC | 7 | [export]($./export) | `train_sets`, `pool` | a Petastorm parquet dataset |
# MAGIC | 8 | [train]($./train) | the export | checkpoints, `log.jsonl` |
# MAGIC | 9 | [eval]($./eval) | a checkpoint + an eval set | `eval_results` |
# MAGIC
# MAGIC Below: what the lake holds now, and a few SQL queries over it. More queries ship in
# MAGIC `sql/queries/` (run them with `capmix sql --file NAME --param ...`, or paste them into
# MAGIC Databricks SQL); the mixing strategies themselves are `sql/<strategy>.sql`.

# COMMAND ----------

DEFAULTS = {
    "scorer": "",              # whose scores the queries read; empty: score.scorer
    "lake": "",                # a folder/URI, or catalog.schema on Databricks
    "config": "",              # a YAML preset; empty: conf/databricks.yaml on Databricks
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from pyspark.sql import functions as F  # noqa: E402

from capmix.config import TABLES, load_config  # noqa: E402
from capmix.lake import open_lake  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.sql import query_text, run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {"lake.path": params["lake"] or None})
spark, _ = get_or_create(cfg.spark, cfg.lake)
scorer = params["scorer"] or cfg.score.scorer


def show(df) -> None:
    """Databricks' table view in a notebook, plain text elsewhere."""
    try:
        display(df)  # noqa: F821 (defined by Databricks)
    except NameError:
        df.show(50, truncate=False)


# COMMAND ----------

# MAGIC %md ## The lake: rows per table

# COMMAND ----------

lake = open_lake(spark, cfg.lake)
table_rows = {name: lake.read(name).count() for name in TABLES if lake.exists(name)}
for name, rows in table_rows.items():
    print(f"{cfg.table(name):<18} {rows:>12,}")

# COMMAND ----------

# MAGIC %md ## Train set sizes
# MAGIC Rows and images per train set, and how many of its captions are raw or synthetic.

# COMMAND ----------

train_set_sizes = run(spark, cfg, """
SELECT name, count(*) AS rows, count(DISTINCT uid) AS images,
       count_if(source = 'raw') AS raw_captions, count_if(source <> 'raw') AS synthetic_captions,
       avg(similarity) AS mean_similarity
FROM train_sets GROUP BY name ORDER BY name
""") if "train_sets" in table_rows else None
if train_set_sizes is not None:
    show(train_set_sizes)

# COMMAND ----------

# MAGIC %md ## Mean cosine similarity per caption source
# MAGIC `raw` is the web alt-text; `CAPTIONER:SAMPLE` a synthetic caption. NULL and NaN
# MAGIC similarities (nothing scored) are left out.

# COMMAND ----------

mean_cosine = run(spark, cfg, """
SELECT source, count(*) AS captions, avg(similarity) AS mean_cosine,
       avg(clip_s) AS mean_clip_s
FROM scores
WHERE scorer = :scorer AND similarity IS NOT NULL AND NOT isnan(similarity)
GROUP BY source ORDER BY source <> 'raw', source
""", {"scorer": scorer}) if "scores" in table_rows else None
if mean_cosine is not None:
    show(mean_cosine)

# COMMAND ----------

# MAGIC %md ## Shipped queries: score quantiles and the captioners side by side
# MAGIC `sql/queries/score_quantiles.sql` and `sql/queries/captioner_comparison.sql`.

# COMMAND ----------

quantiles = comparison = None
if "scores" in table_rows:
    quantiles = run(spark, cfg, query_text("score_quantiles")).where(F.col("scorer") == scorer)
    show(quantiles)
if {"pool", "captions", "scores"} <= set(table_rows):
    comparison = run(spark, cfg, query_text("captioner_comparison"), {"scorer": scorer})
    show(comparison)

# COMMAND ----------

# MAGIC %md ## Mixing runs and evaluation results

# COMMAND ----------

if "mix_runs" in table_rows:
    show(lake.read("mix_runs").select("name", "strategy", "percent", "captioner", "threshold",
                                      "rows", "images").orderBy("name"))
if "eval_results" in table_rows:
    show(lake.read("eval_results").select("run", "task", "dataset", "metric", "value")
         .orderBy("run", "task", "dataset", "metric"))
