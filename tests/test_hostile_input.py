"""Hostile and malformed input to every command, and damaged saved state on resume (issue 12, points 4 and 5).

Every case ends the same way: exit status 2, exactly one line on stderr that starts with "error:" and names the
field or file, no traceback, and nothing started or written: the case's folders (what it gives the command, and
an empty storage folder that is its working directory, its search.storage and the home of every output) are
byte for byte as they were. Most cases call the command's `main` in this process (a refusal then costs no
interpreter start, and starting Ray or any other process would fail the test, see conftest.py); a subset runs
the real command, `python -m ...`, as a user does.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import multiprocessing.util
import os
import pickle
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from conftest import NO_MNIST, PYTHON, REPO, has_torchvision_set, make_spec
from vmistudy import config, layout, run

# A study that loads without data files (synthetic images), with a grid over a choice list
BASE = {
    "name": "hostile",
    "data": {"name": "synthetic", "classes": 4, "train_size": 64, "test_size": 32},
    "model": {"hidden": 16, "gaussian_dims": 2, "categories": 4},
    "train": {"epochs": 2, "batch_size": 32, "lr": 0.001},
    "mi": {"lambda_mi": 1.0},
    "search": {"metric": "mi_lower_bound", "algorithm": "grid", "space": {"mi.lambda_mi": {"choice": [1.0, 2.0]}}},
}
STUDY_COMMANDS = ["vmistudy.train", "vmistudy.run", "vmistudy.report", "benchmarks.overhead", "benchmarks.curves"]
OUTPUTS = {"vmistudy.train": "--out", "benchmarks.curves": "--out"}  # the commands' own output folders
# The report reads MLflow, not the images: where its study's data root is missing it goes on, to the study's store
NO_STUDY = ("search.storage", "no study has run there")
Result = tuple[int, str, str]  # exit status, stdout, stderr


class Scene:
    """A case's folders: `inputs` holds what it gives the command, `storage` (empty) everything it may write."""

    def __init__(self, root: Path):
        self.root, self.inputs, self.storage = root, root / "in", root / "storage"
        self.inputs.mkdir()
        self.storage.mkdir()

    def raw(self, **changes) -> dict:
        """BASE with its storage here and dotted-path changes: raw(**{"train.lr": 0.1})."""
        raw = copy.deepcopy(BASE)
        raw["search"]["storage"] = str(self.storage)
        for path, value in changes.items():
            *parents, leaf = path.split(".")
            node = raw
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return raw

    def file(self, content: str | bytes | dict | None = None, name: str = "study.yaml") -> Path:
        """A file in `inputs`: text, bytes, or a dict as YAML (default: the study BASE)."""
        content = self.raw() if content is None else content
        if isinstance(content, dict):
            content = yaml.safe_dump(content, sort_keys=False)
        path = self.inputs / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def args(self, module: str, study: Path, *extra: str) -> list[str]:
        """A study command's arguments, its output folder in the storage."""
        out = [OUTPUTS[module], str(self.storage / "out")] if module in OUTPUTS else []
        return [str(study), *extra, *out]


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None: a folder or a FIFO, which must not be read)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def call(module: str, argv: list[str]) -> Result:
    """`python -m module argv`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            importlib.import_module(module).main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def spawn(module: str, argv: list[str], cwd: Path, env: dict) -> Result:
    """`python -m module argv` as a user runs it; `env` values of None remove the variable."""
    environ = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run([PYTHON, "-m", module, *argv], cwd=cwd, capture_output=True, text=True, timeout=180,
                          env={k: v for k, v in environ.items() if v is not None})
    return done.returncode, done.stdout, done.stderr


def assert_refused(result: Result, expected: tuple[str, ...], scene: Scene, before: dict) -> str:
    """Exit 2, one 'error:' line holding every `expected` text, no traceback, the scene's folders unchanged."""
    code, out, err = result
    assert "Traceback" not in out + err, err[-3000:]
    assert code == 2, (code, out[-2000:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert snapshot(scene.root) == before, "the command wrote or changed files"
    return lines[0]


def refused(scene: Scene, module: str, argv: list, expected: tuple[str, ...]) -> str:
    """Call the command in this process; it must refuse (see assert_refused)."""
    before = snapshot(scene.root)
    return assert_refused(call(module, [str(a) for a in argv]), expected, scene, before)


@pytest.fixture
def scene(tmp_path, monkeypatch) -> Scene:
    s = Scene(tmp_path)
    monkeypatch.chdir(s.storage)  # default outputs (runs/<name>) would land here
    return s


@pytest.fixture(autouse=True)
def no_workers(monkeypatch):
    """Worker processes (benchmarks.curves trains in a process pool) start without subprocess.Popen, which
    conftest.py guards: a case that got that far must fail, not train."""
    def refuse(*args, **kwargs):
        raise AssertionError("a bad input started a worker process")
    monkeypatch.setattr(multiprocessing.util, "spawnv_passfds", refuse)
    monkeypatch.setattr(os, "fork", refuse)


def fifo(scene: Scene) -> Path:
    os.mkfifo(scene.inputs / "fifo")
    return scene.inputs / "fifo"


def with_literal(scene: Scene, path: str, literal: str) -> str:
    """BASE as YAML with the value at `path` written as `literal`, as is (YAML would dump 1e400 quoted)."""
    return yaml.safe_dump(scene.raw(**{path: "@@"}), sort_keys=False).replace("'@@'", literal)


def laughs(levels: int = 9) -> str:
    """'Billion laughs': anchors of 9 aliases each, 9 ** (levels + 1) strings once expanded."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# --- study files, to every command that reads one -------------------------------------------------------------

# id: (the study file, as a path or its content, given the scene), texts the error line must hold
STUDY_FILES: dict[str, tuple[Callable[[Scene], Path | str | bytes | dict], tuple[str, ...]]] = {
    "binary": (lambda s: bytes(range(256)) * 4, ("study.yaml", "not UTF-8 text", "0x80")),
    "latin-1": (lambda s: "name: caf\xe9\n".encode("latin-1"), ("study.yaml", "not UTF-8 text", "0xe9")),
    "utf-16": (lambda s: yaml.safe_dump(s.raw()).encode("utf-16"), ("study.yaml", "not UTF-8 text")),
    "nul-byte": (lambda s: b"name: a\x00b\n", ("study.yaml", "unacceptable character #x0000")),
    "directory": (lambda s: s.inputs, ("/in:", "is a directory", "study file")),
    "fifo": (fifo, ("/in/fifo:", "not a regular file")),
    "device": (lambda s: Path("/dev/zero"), ("/dev/zero:", "not a regular file")),
    "missing": (lambda s: s.inputs / "nowhere.yaml", ("nowhere.yaml", "No such file")),
    "empty": (lambda s: "", ("study.yaml", "empty")),
    "only-comments": (lambda s: "# a study\n\n", ("study.yaml", "empty")),
    "a-list": (lambda s: "- data\n- model\n", ("study.yaml", "must be a mapping", "got list")),
    "a-scalar": (lambda s: "42\n", ("study.yaml", "must be a mapping", "got int")),
    "over-1-MiB": (lambda s: "# " + "x" * (1 << 20) + "\n", ("study.yaml", "larger than 1 MiB")),
    "syntax-error": (lambda s: "data: {name: synthetic\n", ("study.yaml", "line 2", "YAML syntax error")),
    "float-1e400": (lambda s: with_literal(s, "train.lr", "1e400"), ("train.lr", "finite number", "1e400")),
    "float-nan": (lambda s: with_literal(s, "mi.lambda_mi", ".nan"), ("mi.lambda_mi", "finite number")),
    "float-inf": (lambda s: with_literal(s, "train.beta", ".inf"), ("train.beta", "finite number")),
    "inf-in-a-bound": (lambda s: with_literal(s, "search.space", "{train.beta: {uniform: [0.5, .inf]}}"),
                       ("search.space.train.beta.uniform", "finite number")),
    "int-beyond-64-bits": (lambda s: with_literal(s, "train.epochs", "1" + "0" * 30), ("train.epochs", "2**63")),
    "int-of-5000-digits": (lambda s: with_literal(s, "train.seed", "1" * 5000), ("study.yaml", "4300 digits")),
    "sampler-seed-beyond-numpy": (lambda s: with_literal(s, "search.seed", str(2 ** 32)),
                                  ("search.seed", "less than 4294967296")),
    "impossible-date": (lambda s: with_literal(s, "name", "2024-13-45"), ("study.yaml", "month must be in 1..12")),
    "deep-flow-nesting": (lambda s: "data: " + "[" * 100_000 + "]" * 100_000 + "\n",
                          ("study.yaml", "line 1", "nesting deeper than 20 levels")),
    "deep-block-nesting": (lambda s: "".join(" " * i + f"k{i}:\n" for i in range(200)),
                           ("study.yaml", "line 20", "nesting deeper than 20 levels")),
    "billion-laughs": (lambda s: laughs(), ("study.yaml", "line 5", "more than 10000 values, aliases expanded")),
    "recursive-alias": (lambda s: "data: &d [*d]\n", ("study.yaml", "aliases expanded")),
    "duplicate-key": (lambda s: "data: {name: synthetic}\nname: a\nname: b\n", ("study.yaml", "'name' is given twice")),
    "unknown-key": (lambda s: {**s.raw(), "epochz": 3}, ("epochz", "unknown key", "allowed here")),
    "section-not-a-mapping": (lambda s: s.raw(train=5), ("train:", "valid dictionary")),
    "unknown-metric": (lambda s: s.raw(**{"search.metric": "accuracy"}),
                       ("search.metric", "accuracy is not a per-epoch metric", "allowed: ")),
    "grid-over-a-continuous-parameter": (lambda s: s.raw(**{"search.space": {"train.beta": {"uniform": [0.5, 2.0]}}}),
                                         ("search.space.train.beta", "grid search takes", "choice lists only")),
    "grid-over-an-int-range": (lambda s: s.raw(**{"search.space": {"train.epochs": {"int": [1, 3]}}}),
                               ("search.space.train.epochs", "choice lists only")),
    "relative-storage": (lambda s: s.raw(**{"search.storage": "results"}), ("search.storage", "absolute path")),
    "storage-of-an-unknown-user": (lambda s: s.raw(**{"search.storage": "~no-such-user-xyz/results"}),
                                   ("search.storage", "absolute path")),
    "data-root-a-file": (lambda s: s.raw(data={"name": "mnist", "root": str(s.file("", "root"))}),
                         ("data:", "root/MNIST/raw does not exist")),
}


def study_file(scene: Scene, case: str) -> Path:
    made = STUDY_FILES[case][0](scene)
    return made if isinstance(made, Path) else scene.file(made)


@pytest.mark.parametrize("module", STUDY_COMMANDS)
@pytest.mark.parametrize("case", list(STUDY_FILES))
def test_a_bad_study_file_is_refused_by_every_command(scene, case, module):
    path = study_file(scene, case)
    start = time.perf_counter()
    data_only = case.startswith("data-root") and module == "vmistudy.report"
    refused(scene, module, scene.args(module, path), NO_STUDY if data_only else STUDY_FILES[case][1])
    assert time.perf_counter() - start < 5  # refused as it is read: nothing expanded, nothing waited for


@pytest.mark.parametrize("module", STUDY_COMMANDS)
@pytest.mark.parametrize("root", ["unset", "nowhere"])
def test_a_missing_data_root_is_refused(scene, monkeypatch, module, root):
    if root == "unset":
        monkeypatch.delenv(config.DATA_ENV, raising=False)
        monkeypatch.setenv("HOME", str(scene.inputs))  # and no cache under the home either
    else:
        monkeypatch.setenv(config.DATA_ENV, str(scene.inputs / "nowhere"))
    path = scene.file(scene.raw(data={"name": "mnist"}))
    missing = ("data:", "MNIST/raw does not exist", "$VMISTUDY_DATA")
    refused(scene, module, scene.args(module, path), NO_STUDY if module == "vmistudy.report" else missing)


# --- overrides ---------------------------------------------------------------------------------------------------

OVERRIDES = {
    "no-equals-sign": ("train.epochs", ("--set 'train.epochs'", "expected key.path=value")),
    "no-key": ("=3", ("--set '=3'", "expected key.path=value")),
    "unknown-key": ("train.bogus=3", ("train.bogus", "unknown key")),
    "invalid-yaml": ("mi.gaussian=[0,", ("--set mi.gaussian", "not valid YAML")),
    "through-a-value": ("train.epochs.max=3", ("--set train.epochs.max", "train.epochs is not a section")),
    "nan": ("train.lr=.nan", ("train.lr", "finite number")),
    "deep-nesting": ("train.epochs=" + "[" * 50, ("--set train.epochs", "nesting deeper than 20")),
    "recursive-alias": ("name=&a [*a]", ("--set name", "aliases expanded")),
    "undefined-alias": ("name=*a", ("--set name", "undefined alias")),
    "python-tag": ("name=!!python/name:os.system", ("--set name", "not valid YAML")),
}


@pytest.mark.parametrize("module", ["vmistudy.train", "vmistudy.run", "vmistudy.report"])
@pytest.mark.parametrize("case", list(OVERRIDES))
def test_a_bad_override_is_refused(scene, module, case):
    item, expected = OVERRIDES[case]
    refused(scene, module, scene.args(module, scene.file(), "--set", item), expected)


def test_an_override_without_its_value_is_refused_in_one_line_too(scene):
    line = refused(scene, "vmistudy.run", [scene.file(), "--set"], ("--set", "expected one argument"))
    assert line.endswith("(see python -m vmistudy.run --help)")


# --- where a command writes --------------------------------------------------------------------------------------

STORAGES = {  # id: (search.storage given the scene, texts of run's error line)
    "a-file": (lambda s: str(s.file("", "results")), ("search.storage", "/in/results is not a folder")),
    "under-a-file": (lambda s: f"{s.file('', 'results')}/deeper", ("search.storage", "so", "cannot be made")),
}


@pytest.mark.parametrize("module", ["vmistudy.run", "vmistudy.report"])
@pytest.mark.parametrize("case", list(STORAGES))
def test_a_storage_that_cannot_be_a_folder_is_refused(scene, module, case):
    storage, expected = STORAGES[case]
    if module == "vmistudy.report":  # the report looks for the study's store, and creates none
        expected = ("search.storage", "no study has run there", "mlflow.db does not exist")
    refused(scene, module, [scene.file(scene.raw(**{"search.storage": storage(scene)}))], expected)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write in a read-only folder")
def test_a_read_only_storage_is_refused(scene):
    locked = scene.inputs / "locked"
    locked.mkdir(mode=0o555)
    study = scene.file(scene.raw(**{"search.storage": str(locked / "results")}))
    refused(scene, "vmistudy.run", [study], ("search.storage", "locked is not writable"))


@pytest.mark.parametrize("under", [False, True])
def test_a_train_output_that_cannot_be_a_folder_is_refused(scene, under):
    taken = scene.file("", "taken")
    refused(scene, "vmistudy.train", [scene.file(), "--out", taken / "out" if under else taken],
            ("--out", "taken is not a folder"))


def test_the_report_creates_no_store_for_a_study_that_never_ran(scene):
    refused(scene, "vmistudy.report", [scene.file()], ("search.storage", "mlflow.db does not exist",
                                                       "python -m vmistudy.run"))


# --- checkpoints: evaluate, the rescaling benchmark, train --resume ----------------------------------------------

def torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def good_state() -> dict:
    return {"spec": make_spec().recipe.model_dump(), "epoch": 1, "vae": {"w": torch.zeros(4096)}}


def _fifo_checkpoint(folder: Path) -> Path:
    os.mkfifo(folder / "fifo.pt")
    return folder / "fifo.pt"


DAMAGED = "truncated, damaged or not a checkpoint"
# id: (the checkpoint, as a path or its bytes, given the folder it goes in), texts the error line must hold
CHECKPOINTS: dict[str, tuple[Callable[[Path], Path | bytes], tuple[str, ...]]] = {
    "truncated": (lambda d: torch_bytes(good_state())[:5000], ("checkpoint.pt", DAMAGED)),
    "garbage": (lambda d: os.urandom(5000), ("checkpoint.pt", DAMAGED)),
    "empty": (lambda d: b"", ("checkpoint.pt", DAMAGED)),
    "yaml-text": (lambda d: b"data: {name: synthetic}\n", ("checkpoint.pt", DAMAGED)),
    "directory": (lambda d: d, ("/in:", "not a file")),
    "fifo": (_fifo_checkpoint, ("fifo.pt:", "not a file")),
    "missing": (lambda d: d / "nowhere.pt", ("nowhere.pt:", "no such file")),
    "a-tensor": (lambda d: torch_bytes(torch.zeros(3)), ("checkpoint.pt", "not a checkpoint of python -m vmistudy")),
    "no-spec": (lambda d: torch_bytes({"epoch": 1, "vae": {}}), ("checkpoint.pt", "no spec, epoch and vae")),
    "invalid-spec": (lambda d: torch_bytes({**good_state(), "spec": {"data": {"name": "cifar"}}}),
                     ("checkpoint.pt: data.name",)),
    "nan-in-spec": (lambda d: torch_bytes({**good_state(), "spec": {**good_state()["spec"],
                                                                    "train": {"lr": float("nan")}}}),
                    ("checkpoint.pt: train.lr", "finite number")),
}


def checkpoint(folder: Path, case: str) -> Path:
    made = CHECKPOINTS[case][0](folder)
    if isinstance(made, Path):
        return made
    (folder / "checkpoint.pt").write_bytes(made)
    return folder / "checkpoint.pt"


@pytest.mark.parametrize("module", ["vmistudy.evaluate", "benchmarks.rescaling"])
@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_a_bad_checkpoint_is_refused(scene, module, case):
    refused(scene, module, [checkpoint(scene.inputs, case), "--steps", "1"], CHECKPOINTS[case][1])


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "a-tensor", "no-spec", "invalid-spec"])
def test_train_resume_refuses_a_damaged_checkpoint_and_changes_nothing(scene, case):
    path = checkpoint(scene.inputs, case)
    line = refused(scene, "vmistudy.train", [scene.file(), "--resume", scene.inputs], CHECKPOINTS[case][1])
    assert line.startswith(f"error: {path}: ")
    if case != "invalid-spec":  # that one says what its spec may hold instead
        assert line.endswith(f"train again with --out NEW (nothing in {scene.inputs} was changed)"), line


@pytest.mark.slow
@pytest.mark.parametrize("module", ["vmistudy.train", "vmistudy.evaluate"])
def test_a_checkpoint_whose_state_does_not_fit_its_model_is_refused(scene, module):
    spec = config.validate(scene.raw())
    path = scene.inputs / "checkpoint.pt"
    path.write_bytes(torch_bytes({"spec": spec.recipe.model_dump(), "epoch": 1, "vae": {"w": torch.zeros(2)}}))
    argv = [scene.file(), "--resume", scene.inputs] if module == "vmistudy.train" else [path, "--steps", "1"]
    refused(scene, module, argv, ("checkpoint.pt: damaged: its state does not fit the model of its spec",
                                  "--out NEW" if module == "vmistudy.train" else "written by python -m vmistudy"))


# --- arguments -------------------------------------------------------------------------------------------------

NEEDS_MNIST = pytest.mark.skipif(not has_torchvision_set("MNIST"), reason=NO_MNIST)  # studies/curves.yaml's data
# id: (module, arguments: STUDY, RANDOM, NOSEARCH and OUT stand for files of the scene), texts of the error line
ARGUMENTS = {
    "evaluate-steps-zero": ("vmistudy.evaluate", ["x.pt", "--steps", "0"], ("--steps", ">= 1")),
    "evaluate-steps-a-word": ("vmistudy.evaluate", ["x.pt", "--steps", "many"], ("--steps", "invalid int value")),
    "evaluate-seed-negative": ("vmistudy.evaluate", ["x.pt", "--seed", "-1"], ("--seed", "2**63")),
    "evaluate-no-checkpoint": ("vmistudy.evaluate", [], ("required", "checkpoint")),
    "rescaling-alphas-nan": ("benchmarks.rescaling", ["x.pt", "--alphas", "1,nan"], ("--alphas", "finite number")),
    "rescaling-alphas-words": ("benchmarks.rescaling", ["x.pt", "--alphas", "a,b"], ("--alphas", "numbers > 0")),
    "pretrain-start-epochs-zero": ("benchmarks.pretrain_start", ["--epochs", "0"], ("--epochs", "1 or more")),
    "pretrain-start-seeds-words": ("benchmarks.pretrain_start", ["--seeds", "a,b"], ("--seeds", "0 or more")),
    "pretrain-start-standard-prior": ("benchmarks.pretrain_start", ["STUDY"], ("model.prior", "mixture prior")),
    "throughput-seconds-nan": ("benchmarks.throughput", ["--seconds", "nan"], ("--seconds", "finite number")),
    "throughput-threads-zero": ("benchmarks.throughput", ["--threads", "0"], ("--threads", ">= 1")),
    "throughput-data-nowhere": ("benchmarks.throughput", ["--data", "/nonexistent/vmistudy"],
                                ("--data", "/nonexistent/vmistudy/MNIST/raw does not exist")),
    "scale-trials-zero": pytest.param("benchmarks.scale", ["--trials", "0"], ("--trials", "at least 3"),
                                      marks=NEEDS_MNIST),
    "scale-unknown-store": ("benchmarks.scale", ["--stores", "sqlite,postgres"], ("--stores", "'postgres'")),
    "scale-table-missing": ("benchmarks.scale", ["--table", "/nonexistent/c.csv.gz"], ("--table", "no such file")),
    "scale-table-a-folder": ("benchmarks.scale", ["--table", "OUT"], ("--table", "no such file")),
    "efficiency-seeds-zero": ("benchmarks.study_efficiency", ["--seeds", "0"], ("--seeds", ">= 1")),
    "efficiency-unknown-strategy": ("benchmarks.study_efficiency", ["--strategies", "default,magic"],
                                    ("--strategies", "'magic'")),
    "efficiency-table-missing": ("benchmarks.study_efficiency", ["--table", "/nonexistent/c.csv.gz"],
                                 ("--table", "no such file")),
    "curves-workers-zero": ("benchmarks.curves", ["STUDY", "--workers", "0", "--out", "OUT"], ("--workers", ">= 1")),
    "curves-summary-without-a-table": ("benchmarks.curves", ["STUDY", "--summary", "--out", "OUT"],
                                       ("--summary", "curves.csv.gz", "without --summary")),
    "curves-not-a-grid": ("benchmarks.curves", ["RANDOM", "--out", "OUT"], ("search.algorithm", "grid")),
    "overhead-no-search-section": ("benchmarks.overhead", ["NOSEARCH"], ("nosearch.yaml: search: required",)),
    "run-no-search-section": ("vmistudy.run", ["NOSEARCH"], ("nosearch.yaml: search: required",)),
    "train-unknown-option": ("vmistudy.train", ["STUDY", "--epochs", "3"], ("unrecognized arguments: --epochs",)),
}


@pytest.mark.parametrize("module, argv, expected", list(ARGUMENTS.values()), ids=list(ARGUMENTS))
def test_bad_arguments_are_refused(scene, module, argv, expected):
    files = {"STUDY": scene.file(), "RANDOM": scene.file(scene.raw(**{"search.algorithm": "random"}), "random.yaml"),
             "NOSEARCH": scene.file({k: v for k, v in scene.raw().items() if k != "search"}, "nosearch.yaml"),
             "OUT": scene.storage}
    refused(scene, module, [files.get(a, a) for a in argv], expected)


@pytest.mark.parametrize("module", ["benchmarks.scale", "benchmarks.study_efficiency"])
def test_a_table_that_is_not_a_table_is_refused(scene, module):
    refused(scene, module, ["--table", scene.file(os.urandom(3000), "curves.csv.gz")],
            ("replay.table", "curves.csv.gz", "cannot read"))


# --- a resumed study's saved state (point 4) -------------------------------------------------------------------

TRIAL = "train_trial_0001"  # the unfinished trial, which resumes from its saved state


def saved_study(scene: Scene) -> Path:
    """A stopped study as Tune and the service leave it (what a resume reads), one trial finished and one not;
    the study's folder."""
    spec = config.validate(scene.raw())
    folder = Path(layout.experiment_path(spec))
    layout.write_spec(spec)
    (folder / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    trials = [[json.dumps({"status": status, "custom_trial_name": name}), "{}"]
              for status, name in (("TERMINATED", "train_trial_0000"), ("RUNNING", TRIAL))]
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trials}))
    (folder / "search_gen_state-2026-01-01_00-00-00.json").write_bytes(pickle.dumps({"generator": 1}))
    (folder / "searcher-state-2026-01-01_00-00-00.pkl").write_bytes(pickle.dumps({"searcher": 1}))
    for name in ("train_trial_0000", TRIAL):
        (folder / name).mkdir()
        (folder / name / layout.TRIAL_STATE).write_bytes(torch_bytes({"epoch": 1, "vae": torch.zeros(1024)}))
    return folder


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _edit_spec(folder: Path, **changes) -> None:
    raw = json.loads((folder / layout.SPEC_FILE).read_text())
    raw["mi"].update(changes)
    (folder / layout.SPEC_FILE).write_text(json.dumps(raw))


STATE = f"{TRIAL}/{layout.TRIAL_STATE}"
# id: how the saved study is damaged, given its folder; texts the error line must hold
DAMAGES: dict[str, tuple[Callable[[Path], object], tuple[str, ...]]] = {
    "spec-not-json": (lambda f: (f / layout.SPEC_FILE).write_text('{"name": "hostile", "da'),
                      (layout.SPEC_FILE, "damaged, not the JSON of a study", "or delete it to resume")),
    "spec-binary": (lambda f: (f / layout.SPEC_FILE).write_bytes(b"\xff" + os.urandom(200)),
                    (layout.SPEC_FILE, "damaged", "restore it")),
    "spec-a-list": (lambda f: (f / layout.SPEC_FILE).write_text("[1, 2]"),
                    (layout.SPEC_FILE, "valid dictionary", "or delete it to resume")),
    "spec-nested-too-deep": (lambda f: (f / layout.SPEC_FILE).write_text("[" * 100_000 + "]" * 100_000),
                             (layout.SPEC_FILE, "damaged", "restore it")),
    "spec-of-another-study": (lambda f: _edit_spec(f, lambda_mi=7.0), ("--resume", "mi.lambda_mi", "7.0")),
    "tuner-truncated": (lambda f: _truncate(f / "tuner.pkl"), ("tuner.pkl: damaged", "--set name=NEW")),
    "experiment-state-truncated": (lambda f: _truncate(next(f.glob("experiment_state-*"))),
                                   ("experiment_state-2026", "damaged", "--set name=NEW")),
    "experiment-state-not-tunes": (lambda f: next(f.glob("experiment_state-*")).write_text('{"trial_data": 5}'),
                                   ("experiment_state-2026", "not a Tune experiment state")),
    "search-state-empty": (lambda f: next(f.glob("search_gen_state-*")).write_bytes(b""),
                           ("search_gen_state-2026", "damaged (pickle exhausted")),
    "searcher-state-garbage": (lambda f: next(f.glob("searcher-state-*")).write_bytes(b"\xfe\x00garbage"),
                               ("searcher-state-2026", "damaged")),
    # a study started by another version, whose Tune state names a class this one lacks (protocol 2 and 4 pickles)
    "tuner-of-another-version": (lambda f: (f / "tuner.pkl").write_bytes(b"\x80\x02cvmistudy.study\nGone\nq\x00."),
                                 ("tuner.pkl: saved by another version", "vmistudy.study.Gone", "--set name=NEW")),
    "searcher-of-another-version": (lambda f: next(f.glob("searcher-state-*")).write_bytes(
        b"\x80\x04\x8c\x0evmistudy.study\x94\x8c\x04Gone\x94\x93\x94."),
        ("searcher-state-2026", "vmistudy.study.Gone")),
    "no-experiment-state": (lambda f: next(f.glob("experiment_state-*")).unlink(),
                            ("has no experiment_state-*.json", "--set name=NEW")),
    "trial-state-truncated": (lambda f: _truncate(f / STATE),
                              (STATE, "truncated, damaged", f"delete it to run trial {TRIAL} again from epoch 0")),
    "trial-state-not-a-state": (lambda f: (f / STATE).write_bytes(torch_bytes([1, 2])),
                                (STATE, "not a trial's state (list)")),
}


def test_an_undamaged_saved_study_passes_the_resume_checks(scene):
    """The control: each refusal below is the damage's, not the made-up study's."""
    folder = saved_study(scene)
    spec = config.validate(scene.raw())
    run.check_start(spec, resume=True)
    (folder / STATE).unlink()  # a trial that saved no epoch yet starts from epoch 0
    run.check_start(spec, resume=True)
    (folder / "train_trial_0000" / layout.TRIAL_STATE).write_bytes(b"")  # a finished trial's is never read
    run.check_start(spec, resume=True)


@pytest.mark.parametrize("case", list(DAMAGES))
def test_resume_refuses_damaged_saved_state_and_overwrites_nothing(scene, case):
    DAMAGES[case][0](saved_study(scene))
    refused(scene, "vmistudy.run", [scene.file(), "--resume"], DAMAGES[case][1])


@pytest.mark.parametrize("gone", ["experiment-folder", "storage-folder"])
def test_resume_refuses_a_study_that_is_not_there(scene, gone):
    study = scene.file(scene.raw(**{"search.storage": str(scene.storage / "gone")})) if gone == "storage-folder" \
        else scene.file()
    refused(scene, "vmistudy.run", [study, "--resume"], ("--resume: no study named hostile", "without --resume"))


# --- the real commands -----------------------------------------------------------------------------------------

def _resume_damaged_trial(s: Scene) -> list[str]:
    _truncate(saved_study(s) / STATE)
    return [str(s.file()), "--resume"]


# One case or two per command (id: module, its arguments given the scene, environment changes, texts the error
# line must hold); the in-process tests above cover the rest
COMMANDS: dict[str, tuple[str, Callable[[Scene], list[str]], dict, tuple[str, ...]]] = {
    "train-binary-study": ("vmistudy.train", lambda s: s.args("vmistudy.train", s.file(bytes(range(256)))), {},
                           ("study.yaml", "not UTF-8 text")),
    "run-fifo-study": ("vmistudy.run", lambda s: [str(fifo(s))], {}, ("/in/fifo:", "not a regular file")),
    "run-resume-damaged-trial-state": ("vmistudy.run", _resume_damaged_trial, {}, (STATE, "truncated, damaged")),
    "report-directory-as-study": ("vmistudy.report", lambda s: [str(s.inputs)], {}, ("is a directory",)),
    "evaluate-truncated-checkpoint": ("vmistudy.evaluate", lambda s: [str(checkpoint(s.inputs, "truncated"))], {},
                                      ("checkpoint.pt", DAMAGED)),
    "throughput-no-data-root": ("benchmarks.throughput", lambda s: [], {config.DATA_ENV: None, "HOME": "INPUTS"},
                                ("--data", "MNIST/raw does not exist")),
    "overhead-billion-laughs": ("benchmarks.overhead", lambda s: [str(s.file(laughs(12)))], {},
                                ("study.yaml", "aliases expanded")),
    "curves-grid-over-a-continuous-parameter": ("benchmarks.curves", lambda s: s.args("benchmarks.curves", s.file(
        s.raw(**{"search.space": {"train.beta": {"uniform": [0.5, 2.0]}}}))), {},
        ("search.space.train.beta", "choice lists only")),
    "scale-unknown-store": ("benchmarks.scale", lambda s: ["--stores", "nosql"], {}, ("--stores", "'nosql'")),
    "study-efficiency-binary-table": ("benchmarks.study_efficiency", lambda s: [
        "--table", str(s.file(os.urandom(2000), "curves.csv.gz"))], {}, ("curves.csv.gz", "cannot read")),
    "rescaling-garbage-checkpoint": ("benchmarks.rescaling", lambda s: [str(checkpoint(s.inputs, "garbage"))], {},
                                     ("checkpoint.pt", DAMAGED)),
}


@pytest.fixture(scope="module")
def command_results(tmp_path_factory) -> dict[str, tuple[Scene, dict, Result, float]]:
    """Every real command once, two at a time (each start imports torch, some Ray as well: seconds)."""
    def one(case: str):
        module, argv, env, _ = COMMANDS[case]
        scene = Scene(tmp_path_factory.mktemp(case))
        argv = argv(scene)
        env = {k: str(scene.inputs) if v == "INPUTS" else v for k, v in env.items()}
        before = snapshot(scene.root)
        start = time.perf_counter()
        result = spawn(module, argv, scene.storage, env)
        return case, (scene, before, result, time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, COMMANDS))


@pytest.mark.subprocess
@pytest.mark.parametrize("case", list(COMMANDS))
def test_the_real_command_refuses_in_one_line(command_results, case):
    scene, before, result, seconds = command_results[case]
    assert_refused(result, COMMANDS[case][3], scene, before)
    assert seconds < 90


@pytest.mark.subprocess
@pytest.mark.parametrize("case", ["bad-study-file", "no-study-to-resume"])
def test_the_run_command_refuses_before_importing_the_frameworks(scene, case):
    """A typo is answered at once: the study command checks its input before it imports torch, Ray or MLflow."""
    if case == "bad-study-file":
        argv = [str(scene.file(scene.raw(**{"train.lr": -1.0})))]
    else:
        argv = [str(scene.file()), "--resume"]
    probe = ("import sys\nfrom vmistudy import run\ntry:\n    run.main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    print(e.code, sorted({'torch', 'ray', 'mlflow', 'optuna'} & set(sys.modules)))\n")
    done = subprocess.run([PYTHON, "-c", probe, *argv], cwd=scene.storage, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stderr.startswith("error: ") and done.stdout.strip() == "2 []", (done.stdout, done.stderr)
