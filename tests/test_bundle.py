"""The Databricks Asset Bundle (databricks.yml + resources/*.yml), checked without Databricks:
every task runs a stage notebook that exists (or `capmix <stage>` from the wheel), with widgets
(or flags) that notebook (or command) has, on a cluster that exists, GPU for the model stages,
and the tasks depend on each other in stage order, data flowing from each stage to the next.

`bundle_problems` lists what is wrong; the tests after the first break a copy of the bundle on
purpose and check that the problem is reported, so the check can fail."""
from __future__ import annotations

import ast
import copy
import glob
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
# Stage order (design.md, "Stages and tables") and what each stage reads from which earlier one.
STAGES = ("ingest", "caption", "score", "cluster", "mix", "stats", "export", "train", "eval")
READS = {"caption": {"ingest"}, "score": {"ingest", "caption"}, "cluster": {"score"},
         "mix": {"score"}, "stats": {"ingest", "caption", "score", "mix"}, "export": {"mix"},
         "train": {"export"}, "eval": {"train"}}
GPU_STAGES = ("caption", "score", "cluster", "train")
VAR = re.compile(r"\$\{var\.([A-Za-z_][\w-]*)\}")


# -- reading the bundle -------------------------------------------------------------------------
def load_bundle(root: Path = REPO) -> dict:
    """databricks.yml with its `include`d resource files merged in; each job remembers the
    folder of the file that defined it (task paths are relative to that file)."""
    bundle = yaml.safe_load((root / "databricks.yml").read_text(encoding="utf-8"))
    bundle.setdefault("resources", {}).setdefault("jobs", {})
    for pattern in bundle.get("include", []):
        for path in sorted(glob.glob(str(root / pattern))):
            part = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            for name, job in part.get("resources", {}).get("jobs", {}).items():
                job["__dir__"] = str(Path(path).parent)
                bundle["resources"]["jobs"][name] = job
    return bundle


def resolve(value, variables: dict):
    """${var.NAME} -> the variable's default (other ${...} references stay as they are)."""
    if isinstance(value, str):
        return VAR.sub(lambda m: str(variables.get(m.group(1), m.group(0))), value)
    if isinstance(value, list):
        return [resolve(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, variables) for k, v in value.items()}
    return value


def notebook_defaults(path: Path) -> dict:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets
                                             if isinstance(t, ast.Name)] == ["DEFAULTS"]:
            return ast.literal_eval(node.value)
    return {}


def console_scripts() -> dict[str, str]:
    """setup()'s package name and console scripts, read from setup.py without running it."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", None) == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords
          if k.arg in ("name", "entry_points")}
    scripts = dict(s.replace(" ", "").split("=", 1) for s in
                   kw["entry_points"]["console_scripts"])
    return {"name": kw["name"], **scripts}


def parse_stage_args(command: str, args: list[str]) -> str | None:
    """None when `capmix COMMAND ARGS...` parses, else argparse's complaint."""
    import contextlib
    import importlib
    import io

    from capmix.cli import COMMANDS, common_parser

    module = importlib.import_module(COMMANDS[command][0])
    parser = common_parser(f"capmix {command}", "")
    module.add_arguments(parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(args)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1]
    return None


# -- the check ----------------------------------------------------------------------------------
def task_stage(task: dict, job_dir: Path, problems: list[str]) -> tuple[str | None, dict]:
    """(the stage this task runs, its parameters by name), after checking what it points at."""
    from capmix.cli import COMMANDS

    key = task.get("task_key")
    if "notebook_task" in task:
        nb = task["notebook_task"]
        path = (job_dir / nb.get("notebook_path", "")).resolve()
        if path.suffix == "":
            path = path.with_suffix(".py")
        if not path.is_file():
            problems.append(f"{key}: notebook {nb.get('notebook_path')} not found")
            return None, {}
        text = path.read_text(encoding="utf-8")
        if not text.startswith("# Databricks notebook source"):
            problems.append(f"{key}: {path.name} is not a Databricks notebook source")
        stage = path.stem
        if stage not in COMMANDS:
            problems.append(f"{key}: notebook {path.name} is no `capmix <stage>` notebook")
            return None, {}
        module = COMMANDS[stage][0]
        if f"from {module} import" not in text and f'main(["{stage}"' not in text:
            problems.append(f"{key}: {path.name} does not run {module} (`capmix {stage}`)")
        params = dict(nb.get("base_parameters") or {})
        unknown = sorted(set(params) - set(notebook_defaults(path)))
        if unknown:
            problems.append(f"{key}: {path.name} has no widget(s) {', '.join(unknown)}")
        return stage, {k: str(v) for k, v in params.items()}
    if "python_wheel_task" in task:
        wt = task["python_wheel_task"]
        setup = console_scripts()
        if wt.get("package_name") != setup["name"]:
            problems.append(f"{key}: package_name {wt.get('package_name')!r} is not "
                            f"{setup['name']!r}")
        if wt.get("entry_point") not in setup:
            problems.append(f"{key}: entry point {wt.get('entry_point')!r} is not a console "
                            "script of setup.py")
        args = [str(a) for a in wt.get("parameters") or []]
        if not args or args[0] not in COMMANDS:
            problems.append(f"{key}: `capmix {args[0] if args else ''}` is no capmix command "
                            f"({', '.join(COMMANDS)})")
            return None, {}
        complaint = parse_stage_args(args[0], args[1:])
        if complaint:
            problems.append(f"{key}: capmix {args[0]} {' '.join(args[1:])}: {complaint}")
        flags = {a.lstrip("-").replace("-", "_"): b for a, b in zip(args[1:], args[2:] + [""])
                 if a.startswith("--")}
        return args[0], flags
    problems.append(f"{key}: neither a notebook_task nor a python_wheel_task")
    return None, {}


def ancestors(deps: dict[str, list[str]], key: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(key, []))
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo.extend(deps.get(k, []))
    return seen


def bundle_problems(bundle: dict) -> list[str]:
    from capmix.models import resolve as resolve_model

    problems: list[str] = []
    declared = bundle.get("variables") or {}
    defaults = {k: (v or {}).get("default") for k, v in declared.items()}
    used = set(VAR.findall(yaml.safe_dump(bundle)))
    for name in sorted(used - set(declared)):
        problems.append(f"variable {name} is used but not declared")
    for name in ("catalog", "schema", "captioner", "scorer"):
        if name not in declared:
            problems.append(f"no variable {name}")
    for name, kind in (("captioner", "captioner"), ("scorer", "scorer")):
        try:
            resolve_model(str(defaults.get(name)), kind, None, f"var.{name}")
        except Exception as exc:  # noqa: BLE001 (the registry's one-line error)
            problems.append(f"variable {name}: {exc}")
    conf = yaml.safe_load((REPO / "conf" / "databricks.yaml").read_text(encoding="utf-8"))
    lake = f"{defaults.get('catalog')}.{defaults.get('schema')}"
    if conf["lake"]["path"] != lake:
        problems.append(f"catalog.schema {lake} is not conf/databricks.yaml's lake.path "
                        f"{conf['lake']['path']}")
    artifacts = bundle.get("artifacts") or {}
    if not any((a or {}).get("type") == "whl" for a in artifacts.values()):
        problems.append("no wheel artifact")

    jobs = bundle["resources"]["jobs"]
    if not jobs:
        problems.append("no job")
    for job_name, job in jobs.items():
        job = resolve(job, defaults)
        job_dir = Path(job.get("__dir__", REPO))
        clusters = {c["job_cluster_key"]: c.get("new_cluster", {})
                    for c in job.get("job_clusters", [])}
        tasks = job.get("tasks", [])
        keys = [t.get("task_key") for t in tasks]
        if len(set(keys)) != len(keys):
            problems.append(f"{job_name}: duplicate task keys")
        stage_of, params, deps = {}, {}, {}
        for task in tasks:
            key = task.get("task_key")
            stage, values = task_stage(task, job_dir, problems)
            deps[key] = [d.get("task_key") for d in task.get("depends_on", [])]
            for d in deps[key]:
                if d not in keys:
                    problems.append(f"{key}: depends on unknown task {d}")
            cluster = task.get("job_cluster_key")
            if cluster not in clusters:
                problems.append(f"{key}: unknown job cluster {cluster}")
            elif stage in GPU_STAGES and "gpu" not in str(clusters[cluster].get("spark_version")):
                problems.append(f"{key}: {stage} needs a GPU cluster, {cluster} is not one")
            if not any(str(lib.get("whl", "")).endswith(".whl")
                       for lib in task.get("libraries", [])):
                problems.append(f"{key}: the capmix wheel is not installed")
            if stage is not None:
                if stage in stage_of.values():
                    problems.append(f"{key}: a second {stage} task")
                stage_of[key], params[stage] = stage, values
        for stage in STAGES:
            if stage not in stage_of.values():
                problems.append(f"{job_name}: no {stage} task")
        rank = {s: i for i, s in enumerate(STAGES)}
        task_of = {s: k for k, s in stage_of.items()}
        for key, stage in stage_of.items():
            for d in deps[key]:
                if d in stage_of and rank[stage_of[d]] >= rank[stage]:
                    problems.append(f"{key}: depends on {d}, a later stage")
            above = ancestors(deps, key)
            if key in above:
                problems.append(f"{key}: a dependency cycle")
                continue
            needs = set(READS.get(stage, set()))
            if stage == "mix" and params[stage].get("intersect_clusters", "").lower() == "true":
                needs.add("cluster")
            for need in sorted(needs, key=rank.get):
                if need in task_of and task_of[need] not in above:
                    problems.append(f"{key}: runs without waiting for {task_of[need]}")
        problems += data_flow_problems(params)
    return problems


def data_flow_problems(p: dict[str, dict]) -> list[str]:
    """What one stage writes is what the next one reads."""
    out = []

    def same(a: tuple[str, str], b: tuple[str, str]) -> None:
        x, y = p.get(a[0], {}).get(a[1]), p.get(b[0], {}).get(b[1])
        if x != y:
            out.append(f"{a[0]}.{a[1]} = {x!r} but {b[0]}.{b[1]} = {y!r}")

    same(("mix", "name"), ("export", "train_set"))
    same(("export", "out"), ("train", "data"))
    same(("train", "out"), ("eval", "checkpoint"))
    lakes = {s: v.get("lake") for s, v in p.items() if s != "train"}
    if len(set(lakes.values())) != 1:
        out.append(f"the stages use different lakes: {lakes}")
    if int(p.get("export", {}).get("min_files") or 8) < int(p.get("train", {}).get("nproc") or 1):
        out.append("export.min_files is below train.nproc (a rank would get no row group)")
    return out


# -- the tests ----------------------------------------------------------------------------------
@pytest.fixture
def bundle() -> dict:
    return load_bundle()


def task(bundle: dict, key: str) -> dict:
    job = bundle["resources"]["jobs"]["capmix_pipeline"]
    return next(t for t in job["tasks"] if t["task_key"] == key)


def test_the_bundle_is_consistent(bundle):
    assert bundle_problems(bundle) == []


def test_the_bundle_names_the_papers_models_and_the_lake(bundle):
    variables = {k: v["default"] for k, v in bundle["variables"].items()}
    assert variables["captioner"] == "blip2-opt-2.7b" and variables["scorer"] == "vit-l-14"
    assert (variables["catalog"], variables["schema"]) == ("main", "capmix")
    job = bundle["resources"]["jobs"]["capmix_pipeline"]
    assert [t["task_key"] for t in job["tasks"]] == list(STAGES)
    caption = task(bundle, "caption")["notebook_task"]["base_parameters"]
    assert caption["captioner"] == "${var.captioner}"
    assert task(bundle, "score")["notebook_task"]["base_parameters"]["scorer"] == "${var.scorer}"


def _rename_notebook(b):
    task(b, "score")["notebook_task"]["notebook_path"] = "../notebooks/scoring.py"


def _bad_widget(b):
    task(b, "caption")["notebook_task"]["base_parameters"]["captoner"] = "x"


def _backwards(b):
    task(b, "caption")["depends_on"] = [{"task_key": "score"}]


def _skips_a_stage(b):
    task(b, "export")["depends_on"] = [{"task_key": "score"}]


def _cpu_caption(b):
    task(b, "caption")["job_cluster_key"] = "cpu"


def _undeclared(b):
    task(b, "mix")["notebook_task"]["base_parameters"]["percent"] = "${var.pct}"


def _broken_flow(b):
    task(b, "train")["notebook_task"]["base_parameters"]["data"] = "/Volumes/main/other"


def _bad_model(b):
    b["variables"]["captioner"]["default"] = "blip3-nonexistent"


def _wheel_task(command: str, *args: str):
    def mutate(b):
        t = task(b, "stats")
        del t["notebook_task"]
        t["python_wheel_task"] = {"package_name": "capmix", "entry_point": "capmix",
                                  "parameters": [command, *args]}
    return mutate


@pytest.mark.parametrize("mutate, expected", [
    (_rename_notebook, "score: notebook ../notebooks/scoring.py not found"),
    (_bad_widget, "caption: caption.py has no widget(s) captoner"),
    (_backwards, "caption: depends on score, a later stage"),
    (_skips_a_stage, "export: runs without waiting for mix"),
    (_cpu_caption, "caption: caption needs a GPU cluster, cpu is not one"),
    (_undeclared, "variable pct is used but not declared"),
    (_broken_flow, "export.out = "),
    (_bad_model, "variable captioner: "),
    (_wheel_task("statz", "--lake", "main.capmix"), "stats: `capmix statz` is no capmix command"),
    (_wheel_task("stats", "--lake", "main.capmix", "--subsets", "10"),
     "stats: capmix stats --lake main.capmix --subsets 10: capmix stats: error: unrecognized"),
], ids=["missing notebook", "unknown widget", "backwards dependency", "skipped stage",
        "caption on CPU", "undeclared variable", "broken data flow", "unknown model",
        "unknown command", "unknown flag"])
def test_the_check_fails_on_a_broken_bundle(bundle, mutate, expected):
    broken = copy.deepcopy(bundle)
    mutate(broken)
    problems = bundle_problems(broken)
    assert any(p.startswith(expected) for p in problems), problems


def test_a_good_wheel_task_passes(bundle):
    """The check accepts `capmix <stage>` from the wheel as well as a notebook."""
    good = copy.deepcopy(bundle)
    _wheel_task("stats", "--lake", "${var.catalog}.${var.schema}", "--scorer", "${var.scorer}",
                "--subset-sizes", "1000,10000")(good)
    assert bundle_problems(good) == []
