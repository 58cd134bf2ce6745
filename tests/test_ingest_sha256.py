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


def test_img2dataset_default_output_failed_rows_are_counted_error_rows(tmp_path):
    """A shard as img2dataset 1.47 writes it by default: re-encoded images, failed downloads
    listed in the parquet with their status and error, a stats json beside it."""
    tar = _reencoded_shard(tmp_path, {"count": 6, "successes": 4,
                                      "config": {"disable_all_reencoding": False}})
    table = pq.read_table(tmp_path / "00000.parquet").to_pylist()
    table += [{**table[0], "key": f"00{i}", "url": f"https://example.com/gone{i}.jpg",
               "status": "failed_to_download", "error_message": "HTTP Error 404: Not Found",
               "sha256": None} for i in (8, 9)]
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "00000.parquet")
    tally: dict = {}
    rows = list(unit_rows(Unit("webdataset", str(tar)), RowSettings(1000, 10_000_000), tally))
    failed = [r for r in rows if r["status"] == "error"]
    assert len(rows) == 6 and len(failed) == 2
    assert {r["url"] for r in failed} == {"https://example.com/gone8.jpg",
                                          "https://example.com/gone9.jpg"}
    assert all(r["error"] == "download failed (failed_to_download): HTTP Error 404: Not Found"
               for r in failed)
    assert (tally["ok"], tally["error"], tally["failed_download"], tally["sha256_skipped"]) == \
        (4, 2, 2, 4)
    assert not any(r["warnings"] for r in rows if r["status"] == "ok")
    line = IngestSummary(1, 0, 4, 2, 6, 0, 1.0, failed_downloads=2, sha256_skipped=4).line()
    assert "2 rows in error (2 failed downloads listed by the shard parquet)" in line


def test_an_img2dataset_output_folder_glob_skips_its_side_files(tmp_path):
    from capmix.inputs import plan_units

    _reencoded_shard(tmp_path, {"count": 4, "config": {}})
    (tmp_path / "urls.txt").write_text("https://example.com/a.jpg\n")
    units, notes = plan_units([str(tmp_path / "*")])
    assert [u.format for u in units] == ["webdataset"]
    assert notes == ["skipped 3 file(s) that are not shards: 00000.parquet, 00000_stats.json, "
                     "urls.txt"]
