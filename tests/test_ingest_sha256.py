"""The shard metadata's sha256 is compared with the image bytes only when the shard says they are
the hashed originals (img2dataset --disable_all_reencoding, or a shard without img2dataset's
stats file), and the result is a count in the ingest summary, never a warning per row."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from capmix.inputs import Unit
from capmix.samples import RowSettings, unit_rows
from jobs.ingest import IngestSummary
from pools import make_samples, make_shard


def _reencoded_shard(tmp_path, stats: dict | None):
    """A shard as img2dataset writes it by default: the parquet hashes the downloaded bytes,
    the tar holds the re-encoded ones (here: other bytes), and a failed download is a row."""
    samples = make_samples(4)
    tar = make_shard(tmp_path, "00000", samples)
    table = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    for row in table:
        row["sha256"] = "0" * 64  # the original download's hash
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "00000.parquet")
    if stats is not None:
        (tmp_path / "00000_stats.json").write_text(json.dumps(stats))
    return tar


@pytest.mark.parametrize("stats, counts", [
    ({"count": 4, "successes": 4, "config": {"disable_all_reencoding": False}},
     {"sha256_skipped": 4}),
    ({"count": 4, "successes": 4, "config": {"disable_all_reencoding": True}},
     {"sha256_differ": 4}),
    (None, {"sha256_differ": 4}),
])
def test_hash_compared_only_for_original_bytes_and_counted(tmp_path, stats, counts):
    tar = _reencoded_shard(tmp_path, stats)
    tally: dict = {}
    rows = list(unit_rows(Unit("webdataset", str(tar)), RowSettings(1000, 10_000_000), tally))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert not any("sha256" in (r["warnings"] or "") for r in rows)
    assert {k: v for k, v in tally.items() if k.startswith("sha256")} == counts


def test_matching_hashes_count_as_equal_and_the_summary_says_so(tmp_path):
    tar = make_shard(tmp_path, "00000", make_samples(3))  # parquet hashes the stored bytes
    tally: dict = {}
    list(unit_rows(Unit("webdataset", str(tar)), RowSettings(1000, 10_000_000), tally))
    assert tally.get("sha256_match") == 3 and "sha256_differ" not in tally
    line = IngestSummary(1, 0, 3, 0, 3, 0, 1.0, sha256_match=3, sha256_skipped=2).line()
    assert line.endswith("; sha256: 0 of 3 compared differ, 2 not compared (the shard's images "
                         "were re-encoded; img2dataset --disable_all_reencoding keeps the "
                         "hashed bytes)")
