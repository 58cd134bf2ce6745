"""Shared fixtures: one local SparkSession for the whole test session, lakes under tmp_path."""
from __future__ import annotations

import os
import sys

import pytest

# Workers must run this interpreter; no test may reach a model hub.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(__file__))
import s3  # noqa: E402  (the local S3 server's endpoint, fixed before any JVM starts)

s3.set_environment()

TEST_SPARK = {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "2g",
              "arrow_batch_rows": 64}


@pytest.fixture(scope="session")
def spark():
    from capmix.config import SparkConfig
    from capmix.spark import get_or_create

    from capmix.lake import spark_has_delta

    session, created = get_or_create(SparkConfig(**TEST_SPARK))
    # Spark's own Delta Lake is the default lake: the suite tests it, never silently without.
    assert spark_has_delta(session), \
        "the test session has no Delta Lake: fetch its jars first (python -m capmix.jars fetch)"
    yield session
    if created:
        session.stop()


@pytest.fixture
def cfg(tmp_path):
    """A validated config whose lake is a fresh folder under tmp_path."""
    from capmix.config import from_dict

    return from_dict({"spark": TEST_SPARK, "lake": {"path": str(tmp_path / "lake")}})


@pytest.fixture
def lake(spark, cfg):
    from capmix.lake import open_lake

    return open_lake(spark, cfg.lake)
