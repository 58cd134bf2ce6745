"""capmix: curate image-text training data with synthetic captions (Spark + Delta + torch).

One distribution with the top-level packages the design names (capmix, jobs, udfs, training).
`sql/` and `conf/` ship inside the wheel as `capmix.sql` and `capmix.conf`, so a cluster that
installs the wheel finds the mixing queries and presets without the source tree.
Exact versions for development and CI live in requirements.lock; the ranges below are what the
code needs when the wheel is installed on a cluster or Databricks runtime.
"""
from setuptools import setup

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
    install_requires=[
        "pyspark>=4.0,<4.1",
        "pyarrow>=12,<15",  # petastorm 0.13 needs pyarrow.filesystem (removed in 15)
        "numpy>=1.23,<2",
        "pandas>=2.0,<3",
        "deltalake>=1.0,<2",
        "pyyaml>=6",
        "pillow>=10",
        "ftfy>=6",
        "tqdm>=4",
        "matplotlib>=3.7",
        "nltk>=3.8",
        "torch>=2.1",
        "torchvision>=0.16",
        "open_clip_torch>=3.0,<4",
        "transformers>=4.40,<4.57",  # open_clip CoCa generate() breaks on 4.57+
        "fsspec>=2023.1",  # every path capmix opens itself (capmix/storage.py)
        # cluster: k-means and nearest-centroid search; a GPU cluster may install faiss-gpu
        # instead (same `faiss` module), which jobs.cluster uses when it sees GPUs.
        "faiss-cpu>=1.8",
    ],
    extras_require={
        # On clusters with the Delta jars (Databricks, spark-submit --packages io.delta:...).
        "delta": ["delta-spark>=4.0,<4.1"],
        # petastorm pins setuptools<70, which clashes with torch: install it with --no-deps.
        "train": ["petastorm>=0.13"],
        # Object stores from Python: s3:// through s3fs (gs:// needs gcsfs, abfss:// adlfs).
        "s3": ["s3fs>=2023.1"],
        # moto's S3 server on loopback stands in for an object store in the tests.
        "dev": ["pytest>=8", "chispa>=0.10", "duckdb>=1.0", "moto[s3]>=5", "flask>=2",
                "flask-cors>=4", "s3fs>=2023.1"],
    },
    entry_points={"console_scripts": ["capmix=capmix.cli:main"]},
)
