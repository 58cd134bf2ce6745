"""The import direction of the design: capmix <- udfs <- jobs; capmix <- training; pipeline above
all. Checked on the source (every import statement, lazy ones inside functions included)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("capmix", "udfs", "jobs", "training", "pipeline")
# What each package may import of the others.
ALLOWED = {
    "capmix": set(),
    "udfs": {"capmix"},
    "jobs": {"capmix", "udfs"},
    "training": {"capmix"},
    "pipeline": {"capmix", "udfs", "jobs", "training"},
}
# capmix/cli.py names the layers above only as strings (importlib at dispatch), which this
# check rightly does not count: `capmix <stage>` and `capmix run` load them only when called.


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_package_imports_a_layer_above_it(package):
    wrong = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        above = imported_packages(path) - ALLOWED[package] - {package}
        if above:
            wrong[rel] = sorted(above)
    assert not wrong, f"{package} imports layers above it: {wrong}"


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from jobs.mix import run\n    import training.train\n")
    assert imported_packages(sample) == {"jobs", "training"}
