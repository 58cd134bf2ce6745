"""The chunk driver of the model stages: pending work decided once per run, processed one chunk
at a time, each chunk one atomic, idempotent append.

Cost that grows linearly with the pool (a 1B-row run plans thousands of chunks):
- Planning runs once per run: one aggregation over the input's key columns (never the image
  column) and the output table's keys. Nothing is re-planned per chunk.
- A chunk is a set of whole data files of the input table (or a hash part of one big file)
  and reads those files only (`Lake.read_files`: Delta's scan would not prune on a file-path
  filter), so the pool is read once over the whole run, however many chunks there are.
- Files whose rows are all pending need no per-row filter. The pending keys of the other files
  (partly done, e.g. a hash part committed before a kill) and any per-row work the stage needs
  (the texts to score) are staged once, at planning, as parquet partitioned by chunk under the
  lake's work folder: a chunk reads its own partition, never the whole output table.
- A chunk commits as an append carrying a Delta transaction identifier (`Fence`): one app id
  per stage and label, consecutive versions. No anti-join against the output table.

Exactly-once: a chunk's commit is atomic, so after a kill the next run's plan sees each chunk
either committed (not pending) or not at all. Two runs of one stage at once read the same fence
version before planning; the first commit of a version wins and the other run's append of that
version is skipped by Delta or conflicts, which stops that run with ConflictError (exit code 2)
before it commits anything its plan shares with the winner's.
"""
from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from capmix.errors import ConflictError
from capmix.progress import Progress

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from capmix.lake import Lake

log = logging.getLogger("capmix")
FILE_COLUMN = "__capmix_file"
CHUNK_COLUMN = "__capmix_chunk"
STALE_STAGING_S = 12 * 3600


@dataclass(frozen=True)
class Chunk:
    index: int
    files: tuple[str, ...]
    rows: int                              # pending rows it holds (its weight)
    part: Optional[tuple[int, int]] = None  # (k, m): only uids with pmod(xxhash64(uid), m) = k
    keyed: tuple[str, ...] = ()             # its partly done files: use their staged keys
    # Per-file side counts the caller passed to `plan`, summed over the chunk's files (a hash
    # part gets its share, rounded up).
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def select(self, df: "DataFrame") -> "DataFrame":
        """The rows of `df` (carrying FILE_COLUMN, see `with_file`) that belong to this chunk."""
        from pyspark.sql import functions as F

        cond = F.col(FILE_COLUMN).isin(list(self.files))
        if self.part is not None:
            k, m = self.part
            cond = cond & (F.pmod(F.xxhash64("uid"), F.lit(m)) == F.lit(k))
        return df.where(cond)

    def read(self, lake: "Lake", table: str) -> "DataFrame":
        """This chunk's rows of `table`, reading only its files (`Lake.read_files`)."""
        return self.select(with_file(lake.read_files(table, self.files)))

    def pending(self, rows: "DataFrame", keys: "DataFrame") -> "DataFrame":
        """This chunk's `rows` (from `read`), where rows of the partly done files must also be
        in `keys` (a small staged frame with uid): a broadcast left join, so no row of `rows`
        is shuffled. The columns of `keys` come along (NULL for rows of the other files)."""
        from pyspark.sql import functions as F

        if not self.keyed:
            return rows
        marked = keys.withColumn("__capmix_pending", F.lit(True))
        return (rows.join(F.broadcast(marked), "uid", "left")
                .where(~F.col(FILE_COLUMN).isin(list(self.keyed))
                       | F.col("__capmix_pending").isNotNull())
                .drop("__capmix_pending"))


def with_file(df: "DataFrame") -> "DataFrame":
    """`df` (straight from a table read) with the data file of each row as FILE_COLUMN. Must be
    applied before any projection drops the hidden `_metadata` column."""
    from pyspark.sql import functions as F

    try:
        return df.withColumn(FILE_COLUMN, F.col("_metadata.file_path"))
    except Exception:  # a source without the file metadata column: correct, but not pruned
        return df.withColumn(FILE_COLUMN, F.input_file_name())


def plan(counts: Sequence[tuple[str, int]], chunk_rows: int,
         extra: Optional[dict[str, dict[str, int]]] = None,
         keyed: Iterable[str] = ()) -> list[Chunk]:
    """Group files (with their pending row counts) into chunks of about `chunk_rows` rows, in
    file order, so a re-run plans the same chunks over the same pending work. `keyed` names
    the files whose pending rows are a subset (their keys are staged). Pure."""
    extra = extra or {}
    keyed = set(keyed)
    chunks: list[Chunk] = []
    files: list[str] = []
    rows = 0

    def summed(names, share: int = 1) -> dict:
        out: dict[str, int] = {}
        for name in names:
            for key, value in extra.get(name, {}).items():
                out[key] = out.get(key, 0) + math.ceil(value / share)
        return out

    def close() -> None:
        chunks.append(Chunk(len(chunks), tuple(files), rows, None,
                            tuple(f for f in files if f in keyed), summed(files)))

    for name, n in sorted(counts):
        if n <= 0:
            continue
        if n > chunk_rows:
            parts = math.ceil(n / chunk_rows)
            for k in range(parts):
                chunks.append(Chunk(len(chunks), (name,), math.ceil(n / parts), (k, parts),
                                    (name,) if name in keyed else (), summed([name], parts)))
            continue
        if rows + n > chunk_rows and files:
            close()
            files, rows = [], 0
        files.append(name)
        rows += n
    if files:
        close()
    return chunks


def assign(spark: "SparkSession", df: "DataFrame", chunks: Sequence[Chunk]) -> "DataFrame":
    """`df` (uid, FILE_COLUMN, ...) restricted to the planned chunks, with CHUNK_COLUMN: a
    broadcast join with the (file, part) -> chunk map, so no row of `df` is shuffled."""
    from pyspark.sql import functions as F

    table = [(f, c.part[0] if c.part else 0, c.part[1] if c.part else 0, c.index)
             for c in chunks for f in c.files]
    if not table:
        return df.where(F.lit(False)).withColumn(CHUNK_COLUMN, F.lit(0))
    mapping = spark.createDataFrame(table, f"{FILE_COLUMN}_m string, __k int, __m int, "
                                           f"{CHUNK_COLUMN} int")
    on = (F.col(FILE_COLUMN) == F.col(f"{FILE_COLUMN}_m")) & (
        (F.col("__m") == 0) | (F.pmod(F.xxhash64("uid"), F.col("__m")) == F.col("__k")))
    return (df.join(F.broadcast(mapping), on, "inner")
            .drop(f"{FILE_COLUMN}_m", "__k", "__m"))


class Staging:
    """One run's staged per-chunk work: parquet partitioned by chunk under the lake's work
    folder, written once at planning, read one partition per chunk, removed at the end."""

    def __init__(self, spark: "SparkSession", lake: "Lake", stage: str, label: str):
        self.spark = spark
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{stage}-{label}")
        self.root = lake.work_dir(safe)
        self.path = f"{self.root}/run-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.chunks: set[int] = set()
        _remove_stale(spark, self.root)

    def write(self, df: "DataFrame") -> set[int]:
        """Stage `df` (with CHUNK_COLUMN); returns the chunks that got rows."""
        (df.repartition(CHUNK_COLUMN).write.mode("overwrite").partitionBy(CHUNK_COLUMN)
         .parquet(self.path))
        self.chunks = {int(name.split("=", 1)[1]) for name in _list(self.spark, self.path)
                       if name.startswith(f"{CHUNK_COLUMN}=")}
        return self.chunks

    def read(self, chunk: Chunk, schema: str) -> "DataFrame":
        """The chunk's staged rows (an empty frame of `schema` when it has none)."""
        if chunk.index not in self.chunks:
            return self.spark.createDataFrame([], schema)
        return self.spark.read.schema(schema).parquet(
            f"{self.path}/{CHUNK_COLUMN}={chunk.index}")

    def remove(self) -> None:
        _remove(self.spark, self.path)


class Fence:
    """The exactly-once writer of one stage and label into one table: appends with consecutive
    transaction versions of one app id. Construct it BEFORE planning reads the table, so any
    chunk another run commits after that read takes a version this run also needs."""

    def __init__(self, lake: "Lake", table: str, app_id: str):
        from capmix.lake import Txn

        self.lake, self.table, self.app_id = lake, table, app_id
        recorded = lake.txn_version(table, app_id)
        self.next = 0 if recorded is None else recorded + 1
        self._txn = Txn

    def append(self, df: "DataFrame") -> int:
        rows = self.lake.append(self.table, df, self._txn(self.app_id, self.next))
        if rows is None:
            raise ConflictError(
                f"table {self.table!r}: another run of the same stage committed step "
                f"{self.next} of {self.app_id!r} first; this run stopped without committing "
                "it (no row is lost or duplicated); re-run to finish the work")
        self.next += 1
        return rows


def slots(conf: dict[str, str], executors: int, default_parallelism: int, gpu: bool) -> int:
    """Tasks a stage can run at once: on GPUs, each executor's GPUs over the GPUs a task takes
    (`spark.executor.resource.gpu.amount` / `spark.task.resource.gpu.amount`) times the live
    executors; otherwise (or without GPU resources) the session's default parallelism, which
    Spark sets to the executors' total cores. Pure: tested without a cluster."""
    per_executor = float(conf.get("spark.executor.resource.gpu.amount", "0") or 0)
    if gpu and per_executor > 0:
        per_task = float(conf.get("spark.task.resource.gpu.amount", "1") or 1)
        tasks = int(per_executor // per_task)
        cores = int(conf.get("spark.executor.cores", "0") or 0)
        if cores:  # Spark runs no more tasks than cores / spark.task.cpus allow either
            tasks = min(tasks, cores // max(1, int(conf.get("spark.task.cpus", "1") or 1)))
        return max(1, executors * tasks)
    return max(1, default_parallelism)


def task_slots(spark: "SparkSession", gpu: bool) -> int:
    """`slots` of this session. Executors: the live ones from Spark's status tracker (the
    driver is listed too), or the ones asked for when more (`spark.executor.instances`, a
    local-cluster master's count) since executors register some seconds after the session
    starts; each chunk asks again, so executors that join later are used from the next chunk."""
    sc = spark.sparkContext
    conf = dict(sc.getConf().getAll())
    master = sc.master
    if master.startswith("local[") or master == "local":
        return slots(conf, 1, sc.defaultParallelism, gpu)
    listed = len(sc._jsc.sc().statusTracker().getExecutorInfos())
    asked = int(conf.get("spark.executor.instances", "0") or 0)
    if master.startswith("local-cluster["):  # local-cluster[executors, cores, memory]
        count, cores = master[len("local-cluster["):].split(",")[:2]
        asked = max(asked, int(count))
        conf.setdefault("spark.executor.cores", cores.strip())
    return slots(conf, max(1, listed - 1, asked), sc.defaultParallelism, gpu)


def spread(spark: "SparkSession", df: "DataFrame", partitions: int | None,
           gpu: bool = False) -> "DataFrame":
    """One partition per task slot (`task_slots`, unless `partitions` is given), hashed on uid:
    a chunk of few files would otherwise run on few tasks (a parquet row group is never split),
    and after a join adaptive execution may coalesce it into one, leaving cores or GPUs idle.
    An explicit count is kept by AQE."""
    target = partitions or task_slots(spark, gpu)
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


# -- the work folder (local paths directly; URIs through the session's Hadoop file system) ----

def _local(uri: str) -> Optional[str]:
    if uri.startswith("file:"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(uri).path)
    return None if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", uri) else uri


def _hadoop(spark: "SparkSession", uri: str):
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path, path.getFileSystem(spark._jsc.hadoopConfiguration())


def _list(spark: "SparkSession", uri: str) -> list[str]:
    local = _local(uri)
    if local is not None:
        return sorted(os.listdir(local)) if os.path.isdir(local) else []
    path, fs = _hadoop(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(s.getPath().getName() for s in fs.listStatus(path))


def _remove(spark: "SparkSession", uri: str) -> None:
    local = _local(uri)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
        return
    path, fs = _hadoop(spark, uri)
    fs.delete(path, True)


def _remove_stale(spark: "SparkSession", root: str) -> None:
    """Staging left by runs that were killed long ago (a live concurrent run's is recent)."""
    local = _local(root)
    if local is None or not os.path.isdir(local):
        return  # object stores: expire `_capmix_work` with a lifecycle rule instead
    cutoff = time.time() - STALE_STAGING_S
    for name in os.listdir(local):
        path = os.path.join(local, name)
        if name.startswith("run-") and os.path.getmtime(path) < cutoff:
            shutil.rmtree(path, ignore_errors=True)
