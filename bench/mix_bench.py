"""Every mixing strategy (sql/*.sql) on a generated `scores` table of DataComp's small scale
(12.8M rows by default: raw + two synthetic samples for 4.27M images), in Spark and in DuckDB
on the same parquet files, same SQL text (parameter markers `:x` become DuckDB's `$x`). Each
result is materialized (Spark: the noop sink; DuckDB: a temp table), and both engines must
return the same number of rows.

    python -m bench.mix_bench                       # 12.8M rows (about 10 minutes on 2 cores)
    python -m bench.mix_bench --rows 300000 --strategies raw_top,best_synthetic
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from bench.report import write_section

SOURCES = ("raw", "blip2:0", "blip2:1")


def generate(spark, rows: int, out: str, seed: int = 0) -> int:
    """`scores` rows: for each image a raw caption and two samples of captioner blip2, with
    cosine similarities of about the paper's spread (raw mean ~0.21, synthetic ~0.25), rounded
    to 1e-4 so there are ties, as CLIP scores in float16 have."""
    from pyspark.sql import functions as F

    images = rows // len(SOURCES)

    def uniform(k: int):
        return F.pmod(F.xxhash64(F.lit(seed), F.lit(k), "id"), F.lit(1 << 30)) / float(1 << 30)

    base = spark.range(images).withColumn("uid", F.format_string("%012d", "id"))
    parts = []
    for i, source in enumerate(SOURCES):
        mean = 0.21 if source == "raw" else 0.25
        bell = (uniform(3 * i) + uniform(3 * i + 1) + uniform(3 * i + 2) - 1.5) * 0.12
        parts.append(base.select(
            "uid", F.lit(source).alias("source"), F.lit("bench").alias("scorer"),
            F.concat(F.lit(f"{source} caption "), "uid").alias("text"),
            F.round(F.lit(mean) + bell, 4).alias("similarity")))
    df = parts[0].unionByName(parts[1]).unionByName(parts[2])
    df.write.mode("overwrite").parquet(out)
    return images * len(SOURCES)


def duckdb_sql(text: str) -> str:
    """Spark's named markers (:percent) -> DuckDB's ($percent); comments and strings kept."""
    from jobs.mix import sql_parameters

    for name in sql_parameters(text):
        text = re.sub(rf"(?<![:\w]):{name}\b", f"${name}", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12_800_000)
    parser.add_argument("--percent", type=float, default=30.0)
    parser.add_argument("--strategies", help="comma-separated (default: all)")
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import duckdb

    from capmix.config import SparkConfig
    from capmix.spark import get_or_create
    from capmix.tables import CLUSTERS
    from jobs.mix import STRATEGIES, run_sql, sql_parameters, strategy_sql, strategy_values

    names = args.strategies.split(",") if args.strategies else list(STRATEGIES)
    spark, _ = get_or_create(SparkConfig(master=args.master, driver_memory="6g",
                                         shuffle_partitions=8))
    values = strategy_values(scorer="bench", percent=args.percent, captioner="blip2",
                             captioners=["blip2"], intersect_clusters=False)
    lines = []
    with tempfile.TemporaryDirectory(prefix="capmix-mix-bench-") as tmp:
        path = str(Path(tmp) / "scores")
        started = time.perf_counter()
        total = generate(spark, args.rows, path)
        gen_s = time.perf_counter() - started
        spark.read.parquet(path).createOrReplaceTempView("scores")
        spark.createDataFrame([], CLUSTERS.schema()).createOrReplaceTempView("clusters")
        con = duckdb.connect()
        con.execute(f"CREATE VIEW scores AS SELECT * FROM read_parquet('{path}/*.parquet')")
        con.execute("CREATE TABLE clusters (uid VARCHAR, cluster INTEGER, keep BOOLEAN)")
        threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
        for name in names:
            text = strategy_sql(name)
            started = time.perf_counter()
            df = run_sql(spark, text, values)
            df.write.format("noop").mode("overwrite").save()
            spark_s = time.perf_counter() - started
            spark_rows = df.count()
            used = {k: values[k] for k in sql_parameters(text)}
            started = time.perf_counter()
            con.execute(f"CREATE OR REPLACE TEMP TABLE result AS {duckdb_sql(text)}", used)
            duck_s = time.perf_counter() - started
            duck_rows = con.execute("SELECT count(*) FROM result").fetchone()[0]
            if duck_rows != spark_rows:
                print(f"MISMATCH {name}: spark {spark_rows} duckdb {duck_rows}", file=sys.stderr)
                return 1
            lines.append(f"| {name} | {spark_rows:,} | {spark_s:.1f} | {duck_s:.2f} | "
                         f"{spark_s / duck_s:.1f} |")
            print(lines[-1], flush=True)
    md = "\n".join([
        "## Mixing strategies (`bench/mix_bench.py`)", "",
        f"A generated `scores` table of {total:,} rows (raw + 2 synthetic samples for "
        f"{total // 3:,} images; written in {gen_s:.0f} s), top {args.percent:g}%, each "
        f"strategy's SQL file run as is by Spark `{args.master}` and by DuckDB ({threads} "
        "threads, one process) over the same parquet files, results materialized. Both engines "
        "return the same row counts.", "",
        "| strategy | rows | Spark s | DuckDB s | Spark / DuckDB |",
        "| --- | ---: | ---: | ---: | ---: |", *lines, "",
        f"Load average at the end: {os.getloadavg()[0]:.1f} (2 cores, shared machine)."])
    print(md)
    write_section("mix", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
