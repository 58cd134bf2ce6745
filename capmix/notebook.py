"""What every notebook under notebooks/ needs before it calls its job: its widget values and the
config. One place, so the ten notebooks stay thin and agree.

On Databricks the values come from widgets (created with the defaults on first run) and the
preset is conf/databricks.yaml; run as a plain Python file, each default can be replaced by the
environment variable CAPMIX_WIDGET_<NAME> (CAPMIX_WIDGET_LAKE=/tmp/lake), which is how the
tests run every notebook against a tiny lake.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from capmix.resources import resource_dir


def widget_values(defaults: Mapping[str, str], dbutils: Any = None) -> dict[str, str]:
    """The notebook's parameters; pass the notebook's `dbutils` (None off Databricks)."""
    if dbutils is not None:
        for name, value in defaults.items():
            dbutils.widgets.text(name, value)
        return {name: dbutils.widgets.get(name) for name in defaults}
    return {name: os.environ.get(f"CAPMIX_WIDGET_{name.upper()}", value)
            for name, value in defaults.items()}


def preset(config: Optional[str]) -> Optional[str]:
    """The preset a notebook uses: the `config` widget, else conf/databricks.yaml on
    Databricks, else the embedded default (None)."""
    if config:
        return config
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return str(resource_dir("conf") / "databricks.yaml")
    return None

