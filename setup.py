"""capmix: curate image-text training data with synthetic captions (Spark + Delta + torch).

One distribution with the top-level packages the design names (capmix, jobs, udfs, training).
`sql/` and `conf/` ship inside the wheel as `capmix.sql` and `capmix.conf`, so a cluster that
installs the wheel finds the mixing queries and presets without the source tree.
Exact versions for development and CI live in requirements.lock; the ranges below are what the
code needs when the wheel is installed on a cluster or Databricks runtime. `make wheel` builds
dist/capmix-*.whl.
"""
from setuptools import setup

SPARK = ["pyspark>=4.0,<4.1"]
DELTA = ["delta-spark>=4.0,<4.1"]
# The lake's fallback where Spark's Delta jars are missing. Not a plain requirement: Databricks
# has Delta built in, and deltalake 1.x needs deprecated>=1.2.18, newer than 15.4 ML's 1.2.14.
DELTA_RS = ["deltalake>=1.0,<2"]
TRAIN = ["petastorm>=0.13", "pyarrow>=14.0.1,<15"]
# fsspec's S3 implementation (s3:// inputs and exports); gs://, abfss:// need gcsfs / adlfs.
S3 = ["s3fs>=2023.5"]
# The cluster stage's k-means and nearest-centroid search (faiss-cpu 1.15 needs numpy >= 1.25,
# newer than 15.4 ML's 1.23.5; a GPU cluster may install faiss-gpu, the same `faiss` module).
CLUSTER = ["faiss-cpu>=1.8"]
CONNECT = ["grpcio>=1.67", "grpcio-status>=1.67", "googleapis-common-protos>=1.65"]

setup(
    name="capmix",
    version="0.1.0",
    description="Synthetic-caption curation of image-text pools: caption, score, mix, train CLIP",
    python_requires=">=3.10",
    packages=["capmix", "jobs", "udfs", "training", "pipeline", "pipeline.demo", "capmix.sql",
              "capmix.conf"],
    package_dir={"capmix.sql": "sql", "capmix.conf": "conf"},
    package_data={"capmix.sql": ["*.sql", "queries/*.sql"], "capmix.conf": ["*.yaml"],
                  "capmix": ["data/*", "model_configs/*.json"]},
    # Every range below is met by what Databricks Runtime 15.4 LTS ML, 16.4 LTS ML and 17.3 LTS ML
    # have preinstalled (resources/databricks_runtimes.json, checked by tests/test_packaging.py),
    # so `pip install capmix` on one replaces none of the runtime's packages. pyspark is not
    # here: a runtime or cluster provides Spark (capmix[spark] installs it elsewhere), and
    # capmix refuses Spark < 4.0 at start (capmix/compute.py), which is why the 15.4 and 16.4
    # runtimes' pandas 1.5 / numpy 1.23-1.26 floors never meet capmix's Spark code (Spark 4 itself
    # needs pandas >= 2.0).
    install_requires=[
        "pyarrow>=14.0.1",
        "fsspec>=2023.5",  # every path and URI capmix opens itself (capmix/storage.py)
        "numpy>=1.23.5,<3",
        "pandas>=1.5.3,<3",
        "pyyaml>=6",
        "pillow>=9.4",
        "ftfy>=6",
        "tqdm>=4.65",
        "matplotlib>=3.7",
        "nltk>=3.8",
        "torch>=2.3",
        "torchvision>=0.18",
        "open_clip_torch>=3.0,<4",
        "transformers>=4.41,<4.57",  # open_clip CoCa generate() breaks on 4.57+
    ],
    extras_require={
        # Spark itself, where no runtime provides it (spark-submit clusters bring their own).
        "spark": SPARK,
        # On clusters with the Delta jars (Databricks has Delta built in; no extra needed there).
        "delta": DELTA,
        "delta-rs": DELTA_RS,
        "s3": S3,
        "cluster": CLUSTER,
        # The trainer's loader: petastorm 0.13 calls pyarrow's legacy ParquetDataset API, gone in
        # pyarrow 15, so this extra pins pyarrow < 15; Databricks 16.4/17.x ML (pyarrow 15.0.2,
        # 19.0.1, no petastorm) cannot take it. petastorm pins setuptools<70, which clashes with
        # torch: install it with --no-deps (the lock does).
        "train": TRAIN,
        # The whole local pipeline, as `make install` runs it (requirements.lock pins it exactly).
        "local": SPARK + DELTA + DELTA_RS + TRAIN + CONNECT + S3 + CLUSTER,
        # pyspark's Spark Connect client, for Connect sessions (tests/test_compute.py).
        "connect": CONNECT,
        # moto's S3 server on loopback stands in for an object store in the tests.
        "dev": ["pytest>=8", "chispa>=0.10", "duckdb>=1.0", "moto[s3]>=5", "flask>=2",
                "flask-cors>=4"] + S3,
    },
    entry_points={"console_scripts": ["capmix=capmix.cli:main"]},
)
