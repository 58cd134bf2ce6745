"""The chunk driver of the model stages: pending work, grouped by the data files of the input
table, processed one chunk at a time, each chunk one atomic lake commit.

Why by file: a chunk must read only its own rows. Spark prunes files on `_metadata.file_path`
filters, so a chunk made of whole input files reads those files and nothing else, and the pool
(images: the big column) is read once over the whole run however many chunks there are. A file
holding more than `chunk_rows` pending rows is split into hash parts of its uids (each part
re-reads that one file).

What is pending is decided by an anti-join on the output table's key, so a re-run, or a run
resumed after a kill, skips every committed chunk; writes are insert-missing merges, so a chunk
that is redone (killed after Spark wrote its files, before the commit) adds each key once.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from capmix.progress import Progress

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger("capmix")
FILE_COLUMN = "__capmix_file"


@dataclass(frozen=True)
class Chunk:
    files: tuple[str, ...]
    rows: int                              # pending rows it holds (its weight)
    part: Optional[tuple[int, int]] = None  # (k, m): only uids with pmod(xxhash64(uid), m) = k
    # Per-file side counts the caller passed to `plan`, summed over the chunk's files (a hash
    # part gets its whole file's counts: an upper bound).
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def select(self, df: "DataFrame") -> "DataFrame":
        """The rows of `df` (carrying FILE_COLUMN, see `with_file`) that belong to this chunk."""
        from pyspark.sql import functions as F

        cond = F.col(FILE_COLUMN).isin(list(self.files))
        if self.part is not None:
            k, m = self.part
            cond = cond & (F.pmod(F.xxhash64("uid"), F.lit(m)) == F.lit(k))
        return df.where(cond)


def with_file(df: "DataFrame") -> "DataFrame":
    """`df` (straight from a table read) with the data file of each row as FILE_COLUMN. Must be
    applied before any projection drops the hidden `_metadata` column."""
    from pyspark.sql import functions as F

    try:
        return df.withColumn(FILE_COLUMN, F.col("_metadata.file_path"))
    except Exception:  # a source without the file metadata column: correct, but not pruned
        return df.withColumn(FILE_COLUMN, F.input_file_name())


def plan(counts: Sequence[tuple[str, int]], chunk_rows: int,
         extra: Optional[dict[str, dict[str, int]]] = None) -> list[Chunk]:
    """Group files (with their pending row counts) into chunks of about `chunk_rows` rows, in
    file order, so a re-run plans the same chunks over the same pending work. Pure."""
    extra = extra or {}
    chunks: list[Chunk] = []
    files: list[str] = []
    rows = 0

    def summed(names) -> dict:
        out: dict[str, int] = {}
        for name in names:
            for key, value in extra.get(name, {}).items():
                out[key] = out.get(key, 0) + value
        return out

    for name, n in sorted(counts):
        if n <= 0:
            continue
        if n > chunk_rows:
            parts = math.ceil(n / chunk_rows)
            for k in range(parts):
                chunks.append(Chunk((name,), math.ceil(n / parts), (k, parts), summed([name])))
            continue
        if rows + n > chunk_rows and files:
            chunks.append(Chunk(tuple(files), rows, None, summed(files)))
            files, rows = [], 0
        files.append(name)
        rows += n
    if files:
        chunks.append(Chunk(tuple(files), rows, None, summed(files)))
    return chunks


def spread(spark: "SparkSession", df: "DataFrame", partitions: int | None) -> "DataFrame":
    """One partition per task slot, hashed on uid: a chunk of few files would otherwise run on
    few tasks (a parquet row group is never split), and after a join adaptive execution may
    coalesce it into one, leaving cores or GPUs idle. An explicit count is kept by AQE."""
    target = partitions or spark.sparkContext.defaultParallelism
    return df.repartition(target, "uid")


@dataclass
class RunSummary:
    label: str
    unit: str
    total: int                 # pending at the start of this run
    done: int = 0              # processed by this run
    already: int = 0           # found complete from earlier runs
    skipped: int = 0           # not processed by design (e.g. images in error)
    chunks: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        notes = "".join(f", {k} {v:,}" if isinstance(v, int) else f", {k} {v}"
                        for k, v in self.extra.items())
        return (f"[{self.label}] done: {self.done:,} {self.unit} in {self.chunks} chunk(s), "
                f"{self.seconds:.1f}s ({self.rate:,.1f} {self.unit}/s); {self.already:,} already "
                f"done, {self.skipped:,} skipped{notes}")


def run(label: str, chunks: Sequence[Chunk], work: Callable[[Chunk], int], unit: str = "rows",
        already: int = 0, skipped: int = 0, extra: Optional[dict] = None) -> RunSummary:
    """Process chunks in order with `work(chunk) -> rows done` (which must commit atomically),
    logging progress on the driver and a summary line at the end (with `extra`, a dict the
    work function may update: counts it wants in that line)."""
    total = sum(c.rows for c in chunks)
    summary = RunSummary(label, unit, total, already=already, skipped=skipped,
                         extra=extra if extra is not None else {})
    progress = Progress(label, total + already, unit, already=already)
    log.info("[%s] %s %s pending in %d chunk(s); %s already done, %s skipped", label,
             f"{total:,}", unit, len(chunks), f"{already:,}", f"{skipped:,}")
    started = time.monotonic()
    for i, chunk in enumerate(chunks, 1):
        n = work(chunk)
        summary.done += n
        summary.chunks = i
        progress.advance(n, f"chunk {i}/{len(chunks)} committed", force=True)
    summary.seconds = time.monotonic() - started
    log.info(summary.line())
    return summary
