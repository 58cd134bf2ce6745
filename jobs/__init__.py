"""Spark jobs, one module per stage. Each has pure DataFrame transforms, `run(spark, cfg, ...)`
and `main(argv)`, so notebooks, the CLI, spark-submit and tests all call the same `run`."""
