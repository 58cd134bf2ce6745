"""`capmix run`: the whole pipeline from one config, above the stages it orchestrates.

Import direction: `capmix` <- `udfs` <- `jobs`; `capmix` <- `training`; `pipeline` imports all
of them (lazily, inside the functions that run a stage) and nothing imports `pipeline` but the
CLI (by module name) and the notebooks. `capmix/` is a leaf library again: nothing in it imports
jobs, training, udfs or this package.

- `pipeline.run`: the stages in order, `runs/stages.json` (what each consumed, so a re-run skips
  what is complete), the report.
- `pipeline.report`: `report/index.md` from the lake's tables.
- `pipeline.demo`: the embedded default's data (Fashion-MNIST pool, curated split, eval sets).

The `run:` section of the config stays in `capmix/config_run.py`: it is plain data validated
with every other section, once, before any I/O.
"""
