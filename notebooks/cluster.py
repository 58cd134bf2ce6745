# Databricks notebook source
# MAGIC %md
# MAGIC # Cluster: DataComp's image-based filter -> `clusters`
# MAGIC
# MAGIC faiss k-means on a uniform sample of one scorer's image embeddings (centroids in
# MAGIC `cluster_centroids`), every embedding assigned by faiss in an Arrow UDF; the clusters that
# MAGIC are the nearest centroid of at least one reference image are kept (ImageNet-1k train images
# MAGIC in the paper). Apply it to any mix with `intersect_clusters`. The same `jobs.cluster.run`
# MAGIC serves `capmix cluster` and `spark-submit jobs/cluster.py`.

# COMMAND ----------

DEFAULTS = {
    "k": "",                   # empty: DataComp's 100,000 scaled to the pool
    "sample_size": "",         # empty: 64 embeddings per centroid
    "seed": "0",
    "reference_images": "",    # a folder/URI of images (embedded with the scorer), or
    "reference_table": "",     # a table with an `embedding` or an `image` column, or
    "reference_embeddings": "",  # precomputed embeddings: .npy or parquet
    "scorer": "",              # empty: cluster.scorer, else score.scorer
    "lake": "",
    "config": "",
}

from capmix.notebook import widget_values  # noqa: E402

params = widget_values(DEFAULTS, globals().get("dbutils"))  # dbutils: Databricks

# COMMAND ----------

from capmix.config import load_config  # noqa: E402
from capmix.notebook import preset  # noqa: E402
from capmix.spark import get_or_create  # noqa: E402
from jobs.cluster import run  # noqa: E402

config = preset(params["config"])  # conf/databricks.yaml on Databricks
cfg = load_config(config, {
    "lake.path": params["lake"] or None, "cluster.k": int(params["k"]) if params["k"] else None,
    "cluster.sample_size": int(params["sample_size"]) if params["sample_size"] else None,
    "cluster.seed": int(params["seed"]),
    "cluster.reference_images": params["reference_images"] or None,
    "cluster.reference_table": params["reference_table"] or None,
    "cluster.reference_embeddings": params["reference_embeddings"] or None,
    "cluster.scorer": params["scorer"] or None})
spark, _ = get_or_create(cfg.spark, cfg.lake)

# COMMAND ----------

c = cfg.cluster
if c.reference_images or c.reference_table or c.reference_embeddings:
    print(run(spark, cfg))
else:
    print("set the `reference_images`, `reference_table` or `reference_embeddings` widget")

# COMMAND ----------

# MAGIC %md Images per cluster, kept clusters first.

# COMMAND ----------

from capmix.lake import open_lake  # noqa: E402

lake = open_lake(spark, cfg.lake)
if lake.exists("clusters"):
    lake.read("clusters").groupBy("cluster", "keep").count() \
        .orderBy("keep", "count", ascending=False).show(20)
