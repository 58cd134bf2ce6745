"""Shared by the benchmarks: medians, a machine description, and writing one benchmark's
section of docs/benchmarks.md in place (between its own markers, under a file lock, so
benchmarks run separately or together never clobber each other's figures)."""
from __future__ import annotations

import fcntl
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Sequence

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by the scripts under `bench/` (`make bench` runs them all; each can run alone with
`python -m bench.<name>`). Figures are medians of repeated runs; ratios are measured side by side
in one run, on the machine named in each section, so they survive a noisy machine better than
absolute figures do.
"""


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def machine() -> str:
    """One line naming where the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {gpu}, Python {platform.python_version()}"


def write_section(name: str, body: str) -> Path:
    """Replace (or add) the section `name` of docs/benchmarks.md with `body`."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    stamp = time.strftime("%Y-%m-%d")
    block = f"{begin}\n{body.rstrip()}\n\n_Measured {stamp} on {machine()}._\n{end}"
    with open(DOC.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = DOC.read_text() if DOC.exists() else HEADER
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        DOC.write_text(text)
    return DOC
