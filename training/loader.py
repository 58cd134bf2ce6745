"""A rank's batches: petastorm reads, a pool of decode workers decodes, in an order fixed by
(seed, rank, world) alone, so a run is reproducible and a resumed run sees what an uninterrupted
one would have.

The order. Each rank reads its own files (sources.shard_urls) one epoch at a time, with
petastorm's `make_batch_reader` on its in-process ("dummy") pool: row groups in an order seeded
by (seed, rank, epoch), rows permuted inside each row group and then through a shuffle buffer,
both seeded by (seed, rank, epoch) and emptied at the epoch's end. Sample n of a rank's stream is
therefore always the same sample, whatever happened before; its random crop (and CLIPS
fragment) is drawn from a generator seeded by (seed, rank, n). Resuming at step k starts at
sample k x batch: the samples of one epoch are counted once from the narrow columns, whole
epochs are skipped without reading, and the rest of the current one is read but not decoded.

Why not petastorm's own worker pool and TransformSpec: its workers return row groups in the
order they finish (not reproducible), and a TransformSpec goes row group -> pandas -> Arrow ->
numpy around every decode, which kept 8% of one core's decode rate. Here reading is one thread
(Arrow I/O, cheap next to decoding), and the decode workers write straight into the batch's
preallocated uint8 array and tokenise their share of the batch's captions in one call.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from training.sources import Sample, Source, shard_urls

_END = object()


@dataclass(frozen=True)
class StreamPosition:
    """Where a rank's stream starts: the first sample index (step x per-rank batch)."""

    sample: int = 0


def derive_seed(*parts: int) -> int:
    """A 32-bit seed from integers (petastorm's ventilator wants an int)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def epoch_samples(source: Source, urls: list[str], seed: int, rank: int, epoch: int,
                  shuffle_buffer: int, columns: Optional[list[str]] = None,
                  count_only: bool = False) -> Iterator[Any]:
    """One epoch of this rank's samples, in the epoch's fixed order (or, with `count_only`,
    the sample count of each row group)."""
    from petastorm import make_batch_reader

    from capmix.storage import petastorm_filesystem

    rng = np.random.default_rng([seed, rank, epoch, 7])
    # A store's files are read through fsspec (None for local files, which petastorm opens
    # itself): petastorm's own S3 wrapper calls an s3fs API that no longer exists.
    reader = make_batch_reader(urls, schema_fields=columns or source.columns,
                               reader_pool_type="dummy", num_epochs=1, shuffle_rows=False,
                               shuffle_row_groups=True, seed=derive_seed(seed, rank, epoch),
                               filesystem=petastorm_filesystem(urls[0]))
    buffer: list[Sample] = []
    try:
        for group in reader:
            if count_only:
                yield source.count(group)
                continue
            rows = source.samples(group)
            for i in rng.permutation(len(rows)):
                buffer.append(rows[i])
                if len(buffer) > shuffle_buffer:
                    # Swap a random buffered sample out: a bounded-memory shuffle across
                    # row groups.
                    j = int(rng.integers(len(buffer)))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
    finally:  # not `with reader`: its exit prints "Cache cleanup complete." every epoch
        reader.stop()
        reader.join()
    for i in rng.permutation(len(buffer)):
        yield buffer[i]


def epoch_size(source: Source, urls: list[str], seed: int, rank: int) -> int:
    """Samples in this rank's share per epoch (the same every epoch), from narrow columns."""
    return sum(epoch_samples(source, urls, seed, rank, 0, 0, source.count_columns,
                             count_only=True))


def sample_stream(source: Source, seed: int, rank: int, world: int, shuffle_buffer: int,
                  start: int = 0, epochs: Optional[int] = None) -> Iterator[tuple[int, Sample]]:
    """(index, sample) from sample `start` of this rank's endless (or `epochs`) stream."""
    from capmix.errors import InputError

    urls = shard_urls(source.urls, rank, world, seed)
    if not urls:
        raise InputError(f"{len(source.urls)} file(s) for {world} ranks: every rank reads its "
                         "own files (re-export with --min-files, or use fewer ranks)")
    epoch, skip = 0, start
    if start:
        size = epoch_size(source, urls, seed, rank)
        if size == 0:
            raise InputError(f"rank {rank} has no samples in its files")
        epoch, skip = divmod(start, size)
    index = start - skip
    while epochs is None or epoch < epochs:
        seen = 0
        for sample in epoch_samples(source, urls, seed, rank, epoch, shuffle_buffer):
            seen += 1
            if skip:  # resume inside an epoch: read, not decoded
                skip -= 1
                index += 1
                continue
            yield index, sample
            index += 1
        if seen == 0:
            raise InputError(f"rank {rank} has no samples in its files "
                             f"({len(urls)} file(s))")
        epoch += 1


class Decoder:
    """Decodes and tokenises a slice of a batch into preallocated arrays (runs in a worker)."""

    def __init__(self, spec, seed: int, rank: int):
        self.spec, self.seed, self.rank = spec, seed, rank

    def empty(self, n: int) -> dict[str, np.ndarray]:
        s = self.spec
        out = {"image": np.empty((n, 3, s.image_size, s.image_size), np.uint8)}
        names = ["raw", "fragment"] if s.objective == "clips" else ["text"]
        out.update({k: np.zeros((n, s.context_length), np.int64) for k in names})
        if s.objective == "clips":
            out["labels"] = np.zeros((n, s.decoder_length), np.int64)
        return out

    def fill(self, out: dict[str, np.ndarray], lo: int, rows: list[tuple[int, Sample]]) -> None:
        from training.data import load_image

        spec = self.spec
        rngs = [np.random.default_rng([self.seed, self.rank, n, 11]) for n, _ in rows]
        images = out["image"]
        for k, ((_, sample), rng) in enumerate(zip(rows, rngs)):
            images[lo + k] = load_image(sample.image, spec.image_size,
                                        rng if spec.augment else None)
        self._text(out, lo, [s for _, s in rows], rngs)

    def _text(self, out: dict, lo: int, samples: list[Sample], rngs: list) -> None:
        from training.clips import caption_labels, fragment_ids, wrap_ids
        from training.data import TextCodec, get_tokenizer

        spec, hi = self.spec, lo + len(samples)
        tok = get_tokenizer(spec.arch)
        if spec.objective != "clips":
            # One call for the slice: open_clip's tokenizer wraps, pads and cuts as wrap_ids.
            ids = tok([s.text or "" for s in samples], context_length=spec.context_length)
            out["text"][lo:hi] = ids.numpy()
            return
        codec, ctx = TextCodec(tok), spec.context_length
        for k, (s, rng) in enumerate(zip(samples, rngs)):
            raw = s.raw or ""
            syn = s.synthetic if isinstance(s.synthetic, str) and s.synthetic else raw
            out["raw"][lo + k] = wrap_ids(codec.encode(raw), ctx, codec.sot, codec.eot)
            out["fragment"][lo + k] = wrap_ids(
                fragment_ids(syn, spec.fragment, spec.fragment_tokens, codec.encode, rng,
                             fallback=raw), ctx, codec.sot, codec.eot)
            out["labels"][lo + k] = caption_labels(codec.encode(syn), spec.decoder_length,
                                                   codec.eot)


def _decode_slice(decoder: Decoder, n: int, lo: int,
                  rows: list[tuple[int, Sample]]) -> tuple[int, dict]:
    """Process-pool task: decode into arrays of the slice's own size (they travel back)."""
    out = decoder.empty(n)
    decoder.fill(out, 0, rows)
    return lo, out


def _executor(kind: str, workers: int) -> Executor:
    if kind == "process":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the trainer's process holds torch threads and a process group.
        return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
    from concurrent.futures import ThreadPoolExecutor

    # PIL releases the GIL while it decodes and resizes, so threads decode in parallel.
    return ThreadPoolExecutor(workers, thread_name_prefix="capmix-decode")


class Batches:
    """Iterator of batches (dicts of torch tensors, plus "index": the samples' stream indices
    and "uid") for one rank; a reader thread keeps `prefetch` batches in the decode pool."""

    def __init__(self, source: Source, spec, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, workers: int = 2, pool: str = "thread", shuffle_buffer: int = 1024,
                 start: int = 0, epochs: Optional[int] = None, prefetch: int = 2):
        self.batch_size = batch_size
        self.decoder = Decoder(spec, seed, rank)
        self.pool_kind = pool
        self.workers = max(1, workers)
        self.stream = sample_stream(source, seed, rank, world, shuffle_buffer, start, epochs)
        self.executor = _executor(pool, self.workers)
        self.ready: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._produce, name="capmix-reader", daemon=True)
        self.thread.start()

    def _submit(self, rows: list[tuple[int, Sample]]) -> tuple[Any, list[Future], list]:
        n = len(rows)
        # Slices of the batch, one per worker: each decodes and tokenises its own share.
        cuts = np.linspace(0, n, self.workers + 1).astype(int)
        if self.pool_kind == "process":
            futures = [self.executor.submit(_decode_slice, self.decoder, b - a, a, rows[a:b])
                       for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
            return None, futures, rows
        out = self.decoder.empty(n)
        futures = [self.executor.submit(self.decoder.fill, out, a, rows[a:b])
                   for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        return out, futures, rows

    def _produce(self) -> None:
        try:
            rows: list[tuple[int, Sample]] = []
            for item in self.stream:
                rows.append(item)
                if len(rows) == self.batch_size:
                    job = self._submit(rows)
                    rows = []
                    while not self.stop.is_set():
                        try:
                            self.ready.put(job, timeout=0.2)
                            break
                        except queue.Full:
                            continue
                    if self.stop.is_set():
                        return
        except BaseException as exc:  # handed to the consumer, raised there
            self.error = exc
        finally:
            self._put_end()

    def _put_end(self) -> None:
        while not self.stop.is_set():
            try:
                self.ready.put(_END, timeout=0.2)
                return
            except queue.Full:
                continue

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> dict:
        import torch

        job = self.ready.get()
        if job is _END:
            if self.error is not None:
                raise self.error
            raise StopIteration
        out, futures, rows = job
        if out is None:  # process pool: put the slices together
            out = self.decoder.empty(len(rows))
            for f in futures:
                lo, part = f.result()
                for k, v in part.items():
                    out[k][lo:lo + len(v)] = v
        else:
            for f in futures:
                f.result()
        batch = {k: torch.from_numpy(v) for k, v in out.items()}
        batch["index"] = torch.tensor([n for n, _ in rows], dtype=torch.int64)
        batch["uid"] = [s.uid for _, s in rows]
        return batch

    def close(self) -> None:
        self.stop.set()
        try:
            while True:
                self.ready.get_nowait()
        except queue.Empty:
            pass
        self.thread.join(timeout=30)
        if not self.thread.is_alive():  # else the generator is still running in it
            self.stream.close()  # stops the epoch's petastorm reader
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
