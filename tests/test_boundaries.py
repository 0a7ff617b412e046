"""The design's boundaries (shared/DESIGN.md): each module, imported in a fresh interpreter, pulls in no
framework its layer must not know. The core runs in a plain process without Ray or MLflow; the MLflow
adapter and the report read a study's runs without Ray or torch. A new module must join the table."""
from __future__ import annotations

import pytest

import functools
import json
import subprocess

from conftest import PYTHON, REPO

CORE = {"ray", "mlflow", "optuna"}
READERS = {"ray", "optuna", "torch"}  # MLflow's side: reading or writing runs needs neither Ray nor torch
LAYERS = {
    # the core, and the commands built on it alone
    "errors": CORE | {"torch", "pyarrow"}, "config": CORE | {"torch"}, "cli": CORE | {"torch"},
    "data": CORE, "latents": CORE, "networks": CORE, "objective": CORE, "metrics": CORE, "figures": CORE,
    "trainer": CORE, "bundle": CORE, "train": CORE, "evaluate": CORE,
    # the study's on-disk layout and the learning-curve tables: no framework at all
    "layout": CORE | {"torch"}, "replay": CORE | {"torch"},
    # the MLflow adapter and what reads through it; Optuna's record of a study (history), whose views the
    # report draws in a process of its own while it reads MLflow: history needs no MLflow
    "tracking": READERS, "report": READERS - {"optuna"}, "history": {"ray", "torch", "mlflow"},
    # the study command checks its input with none of them (a typo is refused at once), then launches
    "run": CORE | {"torch"},
    # the Ray Tune side: may use everything
    "study": set(), "launch": set(), "console": set(),
}
COMMANDS_FIRST = ["train", "evaluate", "report", "figures"]  # few probes load every module


@functools.cache
def _probe(module: str) -> tuple[set[str], set[str]]:
    """(vmistudy modules, top-level packages) in sys.modules after importing vmistudy.<module> alone."""
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([PYTHON, "-c", code, f"vmistudy.{module}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"vmistudy.{module} does not import: {done.stderr.strip().splitlines()[-1:]}"
    names = json.loads(done.stdout)
    return ({n.split(".", 1)[1] for n in names if n.startswith("vmistudy.")}, {n.split(".")[0] for n in names})


def layer_violations() -> dict[str, set[str]]:
    """{module: the forbidden packages it pulls in when imported alone}.

    What a module imports is part of what any interpreter that loaded it holds, so one fresh interpreter
    clears every module it loaded without that module's forbidden packages; a module not cleared so is
    imported alone. The commands go first: a handful of interpreters covers the table.
    """
    cleared, violations = set(), {}
    for module in COMMANDS_FIRST + sorted(LAYERS):
        if module in cleared or module in violations or not LAYERS[module]:
            continue
        loaded, packages = _probe(module)
        if packages & LAYERS[module]:
            violations[module] = packages & LAYERS[module]
        cleared |= {m for m in loaded if m in LAYERS and not packages & LAYERS[m]}
    return violations


def test_every_module_has_a_layer():
    modules = {p.stem for p in (REPO / "vmistudy").glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(LAYERS), "a new module joins LAYERS with what it must not import"


@pytest.mark.subprocess
def test_no_layer_imports_a_framework_it_must_not_know():
    assert layer_violations() == {}


@pytest.mark.subprocess
def test_the_probe_sees_the_frameworks_a_module_loads():
    # the probes the table uses are not blind: they do see torch under the core, MLflow under the report
    assert "torch" in _probe("train")[1] and {"mlflow", "pyarrow"} <= _probe("report")[1]
