"""The wheel on Databricks ML runtimes (resources/databricks_runtimes.json, their preinstalled
versions): every requirement is met by what each runtime has, so pip replaces none of it (checked
with `packaging` and with pip's own resolver, offline); runtimes capmix cannot run on (Spark < 4.0)
are refused at start."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
RUNTIMES = json.loads((REPO / "resources" / "databricks_runtimes.json").read_text())["runtimes"]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
# The stand-in runtime must see only its own packages: no PYTHONPATH (a source tree on it holds
# capmix.egg-info, which pip would take for an installed capmix).
CLEAN = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(PIP + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(out),
                          str(REPO)], check=True, capture_output=True, timeout=300)
    (found,) = out.glob("capmix-*.whl")
    return found


def _metadata(wheel: Path) -> tuple[list[Requirement], SpecifierSet]:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(name).decode().splitlines()
    reqs = [Requirement(line.split(":", 1)[1]) for line in lines
            if line.startswith("Requires-Dist:")]
    python = next(line.split(":", 1)[1].strip() for line in lines
                  if line.startswith("Requires-Python:"))
    return reqs, SpecifierSet(python)


def test_runtime_data_names_its_sources():
    assert {r["runtime"].split(" (")[0] for r in RUNTIMES} == {
        "15.4 LTS ML", "16.4 LTS ML", "17.3 LTS ML"}
    for runtime in RUNTIMES:
        assert runtime["sources"] and all(s.startswith("https://") for s in runtime["sources"])
        assert {"numpy", "pandas", "pyarrow", "torch", "transformers"} <= set(runtime["packages"])


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r["runtime"])
def test_each_runtime_meets_every_requirement(wheel, runtime):
    reqs, python = _metadata(wheel)
    core = [r for r in reqs if r.marker is None]
    # Spark comes from the runtime, outside pip's view: never a plain requirement.
    assert "pyspark" not in {canonicalize_name(r.name) for r in core}
    assert Version(runtime["python"] + ".0") in python
    have = runtime["packages"]
    unmet = [f"{r} (runtime: {have[canonicalize_name(r.name)]})" for r in core
             if canonicalize_name(r.name) in have
             and not r.specifier.contains(have[canonicalize_name(r.name)], prereleases=True)]
    assert not unmet, f"{runtime['runtime']}: pip would replace {unmet}"


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r["runtime"])
def test_runtimes_capmix_cannot_run_on_are_refused_at_start(runtime):
    from capmix.compute import ComputeError, check_spark_version

    major, minor = (int(p) for p in runtime["apache_spark"].split(".")[:2])
    if runtime["supported"]:
        check_spark_version((major, minor), "caption")
    else:
        with pytest.raises(ComputeError, match="needs Apache Spark 4.0"):
            check_spark_version((major, minor), "caption")


# --------------------------------------------------------------------------------------------
# pip's own resolver, offline, against a stand-in of each runtime's environment


def _stub(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """An empty wheel that only declares `name` `version` and its requirements."""
    dist = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    info = f"{dist}.dist-info"
    meta = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                      *[f"Requires-Dist: {r}" for r in requires]]) + "\n"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{info}/METADATA", meta)
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: capmix-tests\n"
                                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if "GPU" in r["runtime"]],
                         ids=lambda r: r["runtime"])
def test_pip_dry_run_on_a_runtime_replaces_nothing(wheel, runtime, tmp_path):
    """A venv holding the runtime's packages (stubs at its versions); an index offering newer
    versions of each and, for what the runtime lacks, the versions of this machine's lock with
    their real requirements. pip may add packages; it must change none of the runtime's."""
    env, index = tmp_path / "env", tmp_path / "index"
    index.mkdir()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   env=CLEAN)
    have = runtime["packages"]
    preinstalled = [_stub(tmp_path, n, v) for n, v in have.items()]
    subprocess.run(PIP + ["--python", str(env / "bin" / "python"), "install", "--no-index",
                          "--no-deps", *map(str, preinstalled)], check=True, timeout=300,
                   env=CLEAN)
    for name in have:  # tempting upgrades: taken only if the runtime's version does not do
        _stub(index, name, "999.0")
    for name in json.loads((REPO / "resources" / "databricks_runtimes.json").read_text())[
            "closure"]:
        if name not in have:
            dist = metadata.distribution(name)
            _stub(index, name, dist.version, dist.requires or [])
    report = tmp_path / "report.json"
    run = subprocess.run(PIP + ["--python", str(env / "bin" / "python"), "install", "--dry-run",
                                "--no-index", "--find-links", str(index), "--report",
                                str(report), str(wheel)], capture_output=True, text=True,
                         timeout=300, env=CLEAN)
    assert run.returncode == 0, run.stderr[-3000:]
    chosen = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    assert "capmix" in chosen
    replaced = {n: v for n, v in chosen.items() if n in have}
    assert not replaced, f"{runtime['runtime']}: pip would replace {replaced}"
