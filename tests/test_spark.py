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
