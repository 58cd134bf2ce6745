"""Progress on the driver for long jobs: done / total, rate, ETA, at most every few seconds,
and a summary line at the end. Plain log lines, so they read the same in a terminal, a
spark-submit log and a Databricks cell."""
from __future__ import annotations

import logging
import time

log = logging.getLogger("capmix")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """`Progress("caption", total=10_000, unit="images")`, then `.advance(n, note)` per chunk."""

    def __init__(self, label: str, total: int | None, unit: str = "rows", every_s: float = 5.0,
                 already: int = 0):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.done = already  # work found complete from an earlier run: not counted in the rate
        self.new = 0
        self.started = time.monotonic()
        self._last = 0.0

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.new / elapsed if elapsed > 0 else 0.0

    def line(self, note: str = "") -> str:
        parts = [f"[{self.label}]"]
        if self.total:
            pct = 100.0 * self.done / self.total
            parts.append(f"{self.done:,}/{self.total:,} {self.unit} ({pct:.1f}%)")
        else:
            parts.append(f"{self.done:,} {self.unit}")
        parts.append(f"{self.rate:,.1f} {self.unit}/s")
        if self.total and self.rate > 0 and self.done < self.total:
            parts.append(f"eta {_duration((self.total - self.done) / self.rate)}")
        if note:
            parts.append(note)
        return " ".join(parts)

    def advance(self, n: int, note: str = "", force: bool = False) -> None:
        self.done += n
        self.new += n
        now = time.monotonic()
        if force or now - self._last >= self.every_s or (self.total and self.done >= self.total):
            self._last = now
            log.info(self.line(note))

    def elapsed(self) -> str:
        return _duration(time.monotonic() - self.started)
