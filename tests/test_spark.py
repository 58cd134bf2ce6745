from capmix.config import SparkConfig
from capmix.spark import build_conf, get_or_create


def test_build_conf_sizes_for_local_cores():
    conf = build_conf(SparkConfig(master="local[3]"))
    assert conf["spark.sql.shuffle.partitions"] == "6"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert conf["spark.sql.parquet.outputTimestampType"] == "TIMESTAMP_MICROS"
    explicit = build_conf(SparkConfig(shuffle_partitions=7, conf={"spark.x": "1"}))
    assert explicit["spark.sql.shuffle.partitions"] == "7" and explicit["spark.x"] == "1"


def test_active_session_is_reused_not_recreated(spark):
    again, created = get_or_create(SparkConfig(master="local[1]"))
    assert again is spark and not created
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_observed_counts_on_the_way_and_never_blocks(spark, tmp_path):
    """An observation read after a write gives the count; one whose subtree Spark dropped (an
    empty join side) falls back instead of blocking forever as Observation.get would."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from capmix.spark import observed

    rows = spark.range(500).withColumn("ok", (F.col("id") % 5 != 0).cast("int"))
    calls = []

    def fallback() -> int:
        calls.append(1)
        return -1

    def write(keys, name: str) -> Observation:
        seen = Observation(name)
        (rows.observe(seen, F.sum("ok").alias("ok"))
         .join(F.broadcast(keys), "id", "left_semi").repartition(2, "id")
         .write.mode("overwrite").parquet(str(tmp_path / name)))
        return seen

    assert observed(write(spark.range(0, 500, 7), "some"), "ok", fallback) == 400
    assert calls == []
    assert observed(write(spark.range(0), "none"), "ok", fallback, wait_s=1) == -1
    assert calls == [1]
