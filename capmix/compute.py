"""Which compute a stage can run on, checked once at its start, before any I/O.

Two limits, each one clear line and exit code 2 instead of a failure halfway through a stage:
- Spark Connect (Databricks shared/standard access mode and serverless compute, or any
  `SparkSession.builder.remote(...)` session) has no `sparkContext` and no JVM handle. Each
  stage (`CLASSIC_ONLY` says why) stops and says which compute it needs: a classic session,
  which on Databricks is a cluster in dedicated (single-user) access mode.
- Apache Spark older than 4.0 (Databricks Runtime 15.4 LTS and 16.4 LTS run Spark 3.5): capmix
  is built and tested on Spark 4.0 only (Databricks Runtime 17.x). Newer Spark is allowed with
  a warning, since nothing here has run on it.
"""
from __future__ import annotations

import logging
from typing import Any

from capmix.errors import CapmixError

log = logging.getLogger("capmix")

MIN_SPARK = (4, 0)
TESTED_SPARK = (4, 0)
DEDICATED = ("a classic Spark session: on Databricks a cluster in dedicated (single user) access "
             "mode, not shared/standard access mode or serverless compute (Spark Connect)")

# Stage -> why it needs a classic session. Every stage is here: those that call sparkContext or
# the JVM directly, and those whose only Spark Connect trouble is the lake. Delta over Connect
# needs the server's Delta Connect plugin (Databricks has it; a local Connect server here does
# not load it, so no stage's lake I/O has been run on Connect: tests/test_connect.py).
_LAKE = "its Delta lake I/O has not been run on Spark Connect"
CLASSIC_ONLY: dict[str, str] = {
    "ingest": "it spreads shards with sparkContext.parallelize, counts rows in accumulators and "
              "reads Delta transaction ids from the JVM",
    "caption": "it sizes chunks from the executors' task slots (sparkContext's status tracker), "
               "reads Delta transaction ids from the JVM and stages work through Hadoop's "
               "file system",
    "score": "it sizes chunks from the executors' task slots (sparkContext's status tracker), "
             "reads Delta transaction ids from the JVM and stages work through Hadoop's file "
             "system",
    "export": f"it counts the pool with a JVM observation, and {_LAKE}",
    "cluster": f"its k-means (Spark ML) and {_LAKE}",
    "mix": _LAKE, "stats": _LAKE, "sql": _LAKE, "eval": _LAKE,
    "run": "it runs ingest, caption and score",
}


class ComputeError(CapmixError):
    """The session is the wrong kind of compute for this stage; found before any I/O."""

    exit_code = 2


def is_connect(spark: Any) -> bool:
    """True for a Spark Connect session (pyspark.sql.connect), whatever created it."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # pyspark without the connect extra's grpcio: no Connect session exists
        return False
    return isinstance(spark, ConnectSession)


def spark_version(spark: Any) -> tuple[int, int]:
    """(major, minor) of the Spark the session runs (the server's on Connect)."""
    parts = str(spark.version).split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def check_spark_version(version: tuple[int, int], stage: str) -> None:
    """ComputeError below `MIN_SPARK`; a warning above the tested release."""
    if version < MIN_SPARK:
        raise ComputeError(
            f"{stage} needs Apache Spark {MIN_SPARK[0]}.{MIN_SPARK[1]} or newer; this session "
            f"runs Spark {version[0]}.{version[1]} (on Databricks: use Runtime 17.3 LTS ML or "
            "another 17.x ML runtime, not 15.4 LTS or 16.4 LTS)")
    if version[:2] > TESTED_SPARK:
        log.warning("capmix was tested on Spark %d.%d; this session runs %d.%d",
                    *TESTED_SPARK, *version)


def check_session(spark: Any, stage: str) -> None:
    """Stop `stage` now, with one line, if `spark` cannot run it (see the module doc)."""
    if spark is None:
        return
    if is_connect(spark) and stage in CLASSIC_ONLY:
        raise ComputeError(f"{stage} cannot run on Spark Connect ({CLASSIC_ONLY[stage]}); it "
                           f"needs {DEDICATED}")
    check_spark_version(spark_version(spark), stage)
