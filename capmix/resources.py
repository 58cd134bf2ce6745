"""Where the files that ship with capmix are: `conf/` presets, `sql/` queries, `capmix/data/`.

In a source checkout they sit at the repository root; in an installed wheel setup.py maps them
to `capmix/conf` and `capmix/sql`. Look in both, source tree first.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def resource_dir(name: str) -> Path:
    """The folder `conf`, `sql` or `data` as shipped with this copy of capmix."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"capmix resource folder {name!r} not found next to {_PACKAGE}")
