"""bench/scale.py works end to end at one small size (a check that it runs, not a timing)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_scale_benchmark_runs_every_stage_and_prints_its_line():
    cmd = [sys.executable, "-m", "bench.scale", "--sizes", "200", "--shard-rows", "50",
           "--units-per-commit", "2", "--caption-chunk", "100", "--score-chunk", "200",
           "--image", "16", "--master", "local[1]", "--warmup", "0", "--no-split",
           "--no-write"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    written = {}
    for line in lines:
        found = re.match(r"N=200 chunks x1 (\w+) +rows +([\d,]+) ", line)
        if found:
            written[found.group(1)] = int(found.group(2).replace(",", ""))
    # 200 images: 200 pool rows and captions; 200 embeddings + 200 raw + 200 synthetic scores;
    # raw top 30% + synthetic for the rest is one row per image, and the export keeps them all.
    assert written == {"ingest": 200, "caption": 200, "score": 600, "mix": 200, "export": 200}
    last = re.fullmatch(r"scale: per-row cost ratio ([\d.]+), rows read per row written "
                        r"([\d.]+)", lines[-1])
    assert last and float(last.group(2)) >= 1.0, lines[-1]
