"""img2dataset output folders as its users make them (`--output_format webdataset`, its default
`files`, and `parquet`), ingested the way a user runs it: `capmix ingest --lake L 'out/*'`."""
from __future__ import annotations

import logging
import re
import subprocess

import pytest

from capmix.errors import InputError
from capmix.inputs import Unit, plan_units
from capmix.samples import RowSettings, unit_rows
from pools import make_img2dataset_output, make_samples

FAILED = "download failed (failed_to_download): HTTP Error 404: Not Found"
SETTINGS = RowSettings(1000, 10_000_000)


@pytest.fixture
def capmix_log():
    """The capmix log's messages during a CLI run in this process. main() adds no handler of its
    own while one is there; the saved handlers are put back after."""
    from capmix.cli import log

    lines: list[str] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    saved = (list(log.handlers), log.propagate, log.level)
    log.handlers[:] = [Lines()]
    log.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        log.handlers[:] = saved[0]
        log.propagate = saved[1]
        log.setLevel(saved[2])


def test_capmix_ingest_over_an_img2dataset_output_folder(spark, tmp_path, capsys, capmix_log):
    """A default webdataset run's folder: the shard is read, its side files are skipped with one
    note, the re-encoded images' sha256 is counted (not warned about on every row), and the
    failed downloads are counted and kept as error rows a query finds. The CLI's main runs in
    this process, so it reuses the test session's Spark."""
    from capmix.cli import main
    from capmix.config import LakeConfig
    from capmix.lake import open_lake

    samples = make_samples(3)
    out = make_img2dataset_output(tmp_path / "out", samples, failed=2)
    assert main(["ingest", "--lake", str(tmp_path / "lake"), str(out / "*")]) == 0

    assert [m for m in capmix_log if "not shards" in m] == [
        "skipped 3 file(s) that are not shards: 00000.parquet, 00000_stats.json, urls.txt"]
    assert not [m for m in capmix_log if "sha256" in m]
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"ingest: 1 shard, 3 rows ok, 2 rows in error \(2 failed downloads listed by the shard "
        r"parquet\), 0 unsafe members ignored, 0 already present \([^)]*\); sha256: 0 of 0 "
        r"compared differ, 3 not compared \(the shard's images were re-encoded; img2dataset "
        r"--disable_all_reencoding keeps the hashed bytes\)", summary), summary

    pool = open_lake(spark, LakeConfig(path=str(tmp_path / "lake"))).read("pool")
    failed = pool.where("status = 'error'").select("url", "status", "error").collect()
    assert sorted(tuple(r) for r in failed) == [
        (f"https://example.com/gone{i}.jpg", "error", FAILED) for i in range(2)]
    ok = pool.where("status = 'ok'").select("text", "warnings").collect()
    assert sorted(r.text for r in ok) == sorted(s.text for s in samples)
    assert not [r for r in ok if r.warnings and "sha256" in r.warnings]


@pytest.mark.parametrize("given", ["*", ".", "00000"])
def test_the_files_layout_is_refused_in_one_line(tmp_path, capsys, capmix_log, given):
    """img2dataset's default layout, a folder of KEY.jpg/.txt/.json per shard, read as an image
    folder would lose every caption: one line says which layouts are read, before Spark."""
    from capmix.cli import main

    out = make_img2dataset_output(tmp_path / "out", make_samples(2), failed=1, layout="files")
    target = out if given == "." else out / given
    assert main(["ingest", "--lake", str(tmp_path / "lake"), str(target)]) == 2
    err = capsys.readouterr().err.strip()
    refused = out if given == "." else out / "00000"
    assert err.startswith(f"capmix ingest: {refused}: img2dataset's `files` output (a folder of "
                          "KEY.jpg/.txt/.json per shard) is not supported; ingest reads "
                          "img2dataset's webdataset shards (--output_format webdataset"), err
    assert "--output_format parquet" in err and "\n" not in err
    assert not (tmp_path / "lake").exists()
    with pytest.raises(InputError, match="00000.parquet is img2dataset's shard metadata, not "
                                         "images; ingest reads"):
        plan_units([str(out / "*.parquet")])


def test_the_tar_the_files_layout_error_suggests_reads_like_a_webdataset_shard(tmp_path):
    """The refusal's way out, GNU tar over a shard folder, gives a shard read with its captions
    and its parquet (failed downloads included)."""
    out = make_img2dataset_output(tmp_path / "out", make_samples(2), failed=1, layout="files")
    subprocess.run(["tar", "--sort=name", "-cf", "00000.tar", "-C", "00000", "."], cwd=out,
                   check=True)
    units, _ = plan_units([str(out / "*.tar")])
    assert units == [Unit("webdataset", str(out / "00000.tar"))]
    rows = list(unit_rows(units[0], SETTINGS))
    assert sorted((r["key"], r["status"], r["text"], r["error"]) for r in rows) == [
        ("0000", "ok", (out / "00000" / "0000.txt").read_text(), None),
        ("0001", "ok", (out / "00000" / "0001.txt").read_text(), None),
        ("0002", "error", "gone 0", FAILED)]  # its caption from the parquet


def test_the_parquet_layout_skips_its_side_files_and_counts_failed_downloads(tmp_path):
    samples = make_samples(3)
    out = make_img2dataset_output(tmp_path / "out", samples, failed=2, layout="parquet")
    units, notes = plan_units([str(out / "*")])
    assert [(u.format, u.path) for u in units] == [("parquet", str(out / "00000.parquet"))]
    assert notes == ["skipped 2 file(s) that are not shards: 00000_stats.json, urls.txt"]
    tally: dict = {}
    rows = list(unit_rows(units[0], SETTINGS, tally))
    assert [r["text"] for r in rows if r["status"] == "ok"] == [s.text for s in samples]
    assert [r["error"] for r in rows if r["status"] == "error"] == [FAILED, FAILED]
    # Its images are re-encoded too (the stats json says so): the hash is not compared.
    assert (tally["ok"], tally["error"], tally["failed_download"], tally["sha256_skipped"]) == \
        (3, 2, 2, 3)
    assert "sha256_differ" not in tally and not any(r["warnings"] for r in rows)
