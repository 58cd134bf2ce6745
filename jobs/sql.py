"""Run Spark SQL over the lake: every table is registered under its name, the result printed.

    capmix sql --lake /tmp/l "SELECT status, count(*) FROM pool GROUP BY status"
    capmix sql --lake /tmp/l "DESCRIBE HISTORY captions"
    capmix sql --lake /tmp/l "SELECT count(*) FROM pool VERSION AS OF 0"
    capmix sql --file caption_lengths --param bucket_words=5
    capmix sql --file my_query.sql --param scorer=vit-l-14

`--file` takes a path, or the bare name of a query shipped in sql/queries/ (caption_lengths,
score_quantiles, synthetic_beats_raw, captioner_comparison; capmix.sql/queries in the wheel).
Those are examples to read and run, not mixing strategies: `capmix mix` only runs the
strategies it names, from sql/<strategy>.sql.

On Spark's Delta Lake (the default) each table is a real Delta table of the session catalog,
so Delta's SQL works on it as on Databricks: time travel (`VERSION AS OF`, `TIMESTAMP AS OF`),
`DESCRIBE HISTORY`, `DESCRIBE DETAIL`. The delta-rs fallback registers plain views.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from capmix.compute import check_session
from capmix.config import Config
from capmix.errors import InputError
from capmix.lake import is_catalog, open_lake
from capmix.resources import resource_dir

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def run(spark: "SparkSession", cfg: Config, query: str,
        params: Mapping[str, Any] | None = None) -> "DataFrame":
    """The query's result as a DataFrame, with every lake table visible by name.

    `params` fill named markers (`:percent`) through Spark's parameterized SQL, so values are
    never pasted into the query text."""
    check_session(spark, "sql")  # Connect / Spark < 4.0: one line, no I/O
    lake = open_lake(spark, cfg.lake)
    lake.register_views()
    from pyspark.errors import AnalysisException, ParseException

    try:
        with _current_schema(spark, cfg.lake.path if is_catalog(cfg.lake.path) else None):
            # Analysis is eager: names resolve here, so the schema can be restored after.
            return spark.sql(query, args=dict(params) if params else None)
    except (AnalysisException, ParseException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"SQL error: {first}") from None


@contextlib.contextmanager
def _current_schema(spark: "SparkSession", catalog_schema: str | None):
    """A catalog.schema lake's tables by bare name (`FROM pool`) for one query."""
    if catalog_schema is None:
        yield
        return
    catalog, schema = catalog_schema.split(".", 1)
    saved = (spark.catalog.currentCatalog(), spark.catalog.currentDatabase())
    spark.catalog.setCurrentCatalog(catalog)
    spark.catalog.setCurrentDatabase(schema)
    try:
        yield
    finally:
        spark.catalog.setCurrentCatalog(saved[0])
        spark.catalog.setCurrentDatabase(saved[1])


def query_names() -> list[str]:
    """The queries shipped in sql/queries/, by bare name."""
    folder = resource_dir("sql") / "queries"
    return sorted(p.stem for p in folder.glob("*.sql")) if folder.is_dir() else []


def query_file(name: str) -> Path:
    """`name` as a path when that file exists, else a bare name (`caption_lengths`, with or
    without `.sql`) looked up in the shipped sql/queries/."""
    path = Path(name)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        shipped = resource_dir("sql") / "queries" / (name if name.endswith(".sql")
                                                     else f"{name}.sql")
        if shipped.is_file():
            return shipped
    raise InputError(f"SQL file not found: {name} (shipped queries: "
                     f"{', '.join(query_names()) or 'none'})")


def query_text(name: str) -> str:
    """The text of a query file or of a shipped query (see `query_file`)."""
    return query_file(name).read_text(encoding="utf-8")


def missing_params(query: str, params: Mapping[str, Any]) -> list[str]:
    """The named markers (`:scorer`) of `query` that `params` gives no value."""
    from jobs.mix import sql_parameters

    return sorted(sql_parameters(query) - set(params))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", help="the SQL text (or use --file)")
    parser.add_argument("--file", metavar="SQL_FILE",
                        help="read the query from a file, or run a shipped query by name: "
                             + ", ".join(query_names()))
    parser.add_argument("--param", metavar="NAME=VALUE", action="append", default=[],
                        help="a named parameter, used in the query as :NAME")
    parser.add_argument("--limit", type=int, default=50, help="rows to print (default 50)")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {}


def check_args(cfg: Config, args: argparse.Namespace) -> None:
    if bool(args.query) == bool(args.file):
        raise InputError("give a query, or --file, but not both")
    if args.limit <= 0:
        raise InputError("--limit must be positive")
    params = parse_params(args.param)
    if args.file:
        missing = missing_params(query_text(args.file), params)
        if missing:
            raise InputError(f"{args.file} needs " + " ".join(
                f"--param {name}=VALUE" for name in missing))


def parse_params(items: list[str]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise InputError(f"--param expects NAME=VALUE, got {item!r}")
        params[name] = yaml.safe_load(value) if value.strip() else ""
    return params


def run_args(spark: "SparkSession", cfg: Config, args: argparse.Namespace) -> int:
    query = query_text(args.file) if args.file else args.query
    df = run(spark, cfg, query, parse_params(args.param))
    print_frame(df, args.limit, args.format)
    return 0


def print_frame(df: "DataFrame", limit: int, fmt: str = "table") -> None:
    """Print up to `limit` rows; binary columns show their size, not their bytes."""
    rows = df.limit(limit + 1).toPandas()
    more = len(rows) > limit
    rows = rows.head(limit)
    for col in rows.columns:
        if rows[col].map(lambda v: isinstance(v, (bytes, bytearray))).any():
            rows[col] = rows[col].map(lambda v: f"<{len(v)} bytes>" if v is not None else None)
    if fmt == "csv":
        rows.to_csv(sys.stdout, index=False)
    elif fmt == "json":
        rows.to_json(sys.stdout, orient="records", lines=True, default_handler=str)
    else:
        print(rows.to_string(index=False, max_colwidth=80) if len(rows) else "(no rows)")
        if more:
            print(f"(showing the first {limit} rows)")


def main(argv: list[str] | None = None) -> int:
    from capmix.cli import stage_main

    return stage_main("jobs.sql", argv)


if __name__ == "__main__":
    sys.exit(main())
