"""Spark's own Delta Lake and S3A (hadoop-aws): fetched once, then loaded from disk.

    python -m capmix.jars fetch          # `make` runs this once: resolves through Maven Central
    python -m capmix.jars show           # what is cached, and the `spark.jars` a session gets

Why not `spark.jars.packages` on every session: Ivy then resolves on each start (a second of
network checks, and a page of resolution output on the console), and a machine without a
repository fails at start. Here `fetch` asks Spark's own Ivy to resolve the packages once (so
transitive jars and versions are Spark's choice) and records the resolved jar files in a
manifest beside Ivy's cache; a session capmix builds then lists those files in `spark.jars` and
starts with no resolution at all. Nothing here runs during a test.

The Delta version follows the installed `delta-spark` Python package (its jar and its Python API
must match), which follows pyspark's minor version (delta-spark 4.0.x <-> pyspark 4.0.x).

S3A (`s3a://` paths, and `s3://` mapped to it) is `org.apache.hadoop:hadoop-aws` in the version
of the Hadoop client pyspark bundles (hadoop-client-api-X.jar), with the AWS SDK v2 modules it
needs (s3, s3-transfer-manager: ~15 MB) instead of the SDK's 540 MB `bundle` jar; jars Spark
already ships (netty, slf4j, commons-*, httpclient) are left out so Spark's own versions load.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger("capmix")

DELTA_EXTENSIONS = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
MANIFEST = "capmix-jars.json"


def delta_version() -> str:
    """The delta-spark version whose jar matches the installed Python API."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("delta-spark")
    except PackageNotFoundError:  # the jar alone: the line that matches pyspark's minor
        import pyspark

        major, minor = pyspark.__version__.split(".")[:2]
        return f"{major}.{minor}.0"


def scala_version() -> str:
    return "2.13"  # Spark 4 is built for Scala 2.13 only


def delta_coordinates() -> list[str]:
    return [f"io.delta:delta-spark_{scala_version()}:{delta_version()}"]


# The SDK modules S3A 3.4 calls, at the oldest release Maven Central serves for both (the one
# hadoop-aws 3.4.1 declares, 2.24.6, has no s3-transfer-manager there).
AWS_SDK_VERSION = "2.25.0"
S3A_EXCLUDES = ("software.amazon.awssdk:bundle",)
# Jars of the S3A resolution that Spark's own jars/ already holds in a newer version.
_SPARK_HAS = ("io.netty_", "org.slf4j_", "commons-codec_", "commons-logging_",
              "org.apache.httpcomponents_")


def hadoop_version() -> str:
    """The Hadoop client version pyspark bundles (hadoop-aws must match it exactly)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in sorted(jars.glob("hadoop-client-api-*.jar")):
        return jar.name[len("hadoop-client-api-"):-len(".jar")]
    return "3.4.1"  # pyspark 4.0's


def s3a_coordinates() -> list[str]:
    """One group (resolved together, as one manifest entry): hadoop-aws and its SDK modules."""
    return [",".join([f"org.apache.hadoop:hadoop-aws:{hadoop_version()}",
                      f"software.amazon.awssdk:s3:{AWS_SDK_VERSION}",
                      f"software.amazon.awssdk:s3-transfer-manager:{AWS_SDK_VERSION}"])]


def all_coordinates() -> list[str]:
    return delta_coordinates() + s3a_coordinates()


def ivy_dir() -> Path:
    """Ivy's folder as Spark uses it (`spark.jars.ivy`, default ~/.ivy2.5.2 in Spark 4)."""
    configured = os.environ.get("CAPMIX_IVY_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".ivy2.5.2"


def _manifest_path() -> Path:
    return ivy_dir() / MANIFEST


def _read_manifest() -> dict[str, list[str]]:
    try:
        return json.loads(_manifest_path().read_text())
    except (OSError, ValueError):
        return {}


def cached_jars(coordinates: Sequence[str]) -> Optional[list[str]]:
    """The jar files resolved for `coordinates` by an earlier `fetch`, or None if any is
    missing from the cache (then Spark would have to resolve them now)."""
    manifest = _read_manifest()
    jars: list[str] = []
    for coordinate in coordinates:
        files = manifest.get(coordinate)
        if not files or not all(Path(f).is_file() for f in files) \
                or not _names_its_artifacts(coordinate, files):
            return None
        jars.extend(f for f in files if f not in jars)
    return jars


def _names_its_artifacts(coordinate: str, files: Sequence[str]) -> bool:
    """Whether `files` hold each artifact of the group as Ivy names it (group_artifact-version
    .jar). An entry written by a fetch that resolved two groups in one JVM listed the first
    group's jars under the second: such an entry is stale and is fetched again."""
    names = {Path(f).name for f in files}
    for item in coordinate.split(","):
        group, artifact, version = item.strip().split(":")[:3]
        if f"{group}_{artifact}-{version}.jar" not in names:
            return False
    return True


def fetch(coordinates: Sequence[str]) -> dict[str, list[str]]:
    """Resolve `coordinates` through Spark's Ivy (downloading what is missing) and record the
    resolved jar files per coordinate (a comma-separated group resolves together). Each group
    resolves in a Python process of its own (`_resolve`)."""
    manifest = _read_manifest()
    for coordinate in coordinates:
        if cached_jars([coordinate]) is not None:
            continue
        files = [f for f in _resolve(coordinate) if not Path(f).name.startswith(_SPARK_HAS)]
        if not files:
            raise RuntimeError(f"Spark resolved no jar for {coordinate}")
        manifest[coordinate] = files
        ivy_dir().mkdir(parents=True, exist_ok=True)
        _manifest_path().write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return {c: manifest[c] for c in coordinates}


_JAR = "capmix-jar "


def _resolve(coordinate: str) -> list[str]:
    """The jar files Ivy resolves for one group, in a fresh Python process. Why not here: a
    Python process launches its JVM once, and Spark resolves `spark.jars.packages` only at that
    launch, so a second group resolved in the same process would silently report the first
    group's jars (S3A's manifest entry listed Delta's jars that way)."""
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, "-c", "import sys; from capmix.jars import "
                           "_resolve_here; _resolve_here(sys.argv[1])", coordinate],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"resolving {coordinate} failed:\n{done.stderr[-3000:]}")
    return [line[len(_JAR):] for line in done.stdout.splitlines() if line.startswith(_JAR)]


def _resolve_here(coordinate: str) -> None:
    """Start one short-lived local session that resolves `coordinate`; print its jar files."""
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[1]").appName("capmix-fetch-jars")
             .config("spark.jars.packages", coordinate)
             .config("spark.jars.ivy", str(ivy_dir()))
             .config("spark.jars.excludes", ",".join(S3A_EXCLUDES))
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        resolved = spark.sparkContext.getConf().get("spark.jars", "")
    finally:
        spark.stop()
    for uri in resolved.split(","):
        if uri.strip():
            print(_JAR + _local_file(uri), flush=True)


def _local_file(uri: str) -> str:
    from urllib.parse import unquote, urlparse

    uri = uri.strip()
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m capmix.jars", description=__doc__.split(
        "\n")[0])
    parser.add_argument("action", choices=["fetch", "show"])
    args = parser.parse_args(argv)
    coordinates = all_coordinates()
    if args.action == "fetch":
        for coordinate, files in fetch(coordinates).items():
            print(f"{coordinate}: {len(files)} jar(s) in {ivy_dir()}")
        return 0
    missing = 0
    for coordinate in coordinates:
        jars = cached_jars([coordinate])
        missing += jars is None
        print(f"{coordinate}: " + ("not cached (run: python -m capmix.jars fetch)"
                                   if jars is None else ",".join(jars)))
    return 1 if missing else 0


def delta_loaded(jvm: object) -> bool:
    """True when Delta's classes are on this JVM: through py4j's own lookup, which sees a
    session's `spark.jars` (the context class loader); Class.forName would only see the JVM's
    start-up classpath."""
    from py4j.java_gateway import JavaClass

    return jvm is not None and isinstance(jvm.io.delta.tables.DeltaTable, JavaClass)


if __name__ == "__main__":
    sys.exit(main())
