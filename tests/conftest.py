"""Shared fixtures and small spec builders for the vmistudy tests.

The MNIST/FashionMNIST root is $VMISTUDY_DATA if set, else <repo>/../shared/datasets if it exists.
It is exported as $VMISTUDY_DATA so that subprocesses (the CLI) see it too. Tests that need MNIST
skip with a clear reason when no root is found; nothing is ever downloaded.

Markers (pyproject.toml) split the suite: `ray`, `server` and `subprocess` for tests that start Ray, a
server or a command, `slow` for in-process training of more than a second or so. `make test-fast` runs the
rest; a test outside those markers that starts a process fails, naming the marker it needs.
"""
from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vmistudy import config

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

torch.set_num_threads(2)

# Where the training tests run: the CPU always; a CUDA GPU where there is one, skipped elsewhere
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]

PROCESS_MARKERS = ("ray", "server", "subprocess")
_starts_processes = {"allowed": True}
_popen_init = subprocess.Popen.__init__


def _guarded_popen_init(self, *args, **kwargs):
    if not _starts_processes["allowed"]:
        raise AssertionError(f"this test starts a process ({args[0] if args else kwargs.get('args')}) but has none of "
                             f"the markers {', '.join(PROCESS_MARKERS)}; mark it, so that make test-fast leaves it out")
    _popen_init(self, *args, **kwargs)


subprocess.Popen.__init__ = _guarded_popen_init
# Python finds the processor by running `uname -p` once and caches it; importing MLflow asks (its telemetry), and a
# command called in a test's own process may be the first to import it
platform.processor()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Before any fixture of the test: may it start processes?"""
    _starts_processes["allowed"] = any(item.get_closest_marker(m) for m in PROCESS_MARKERS)


def _find_data_root() -> Path | None:
    env = os.environ.get(config.DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidate = REPO.parent / "shared" / "datasets"
    return candidate if candidate.is_dir() else None


DATA_ROOT = _find_data_root()
if DATA_ROOT is not None:
    os.environ[config.DATA_ENV] = str(DATA_ROOT)


def has_torchvision_set(folder: str) -> bool:
    return DATA_ROOT is not None and (DATA_ROOT / folder / "raw").is_dir()


NO_MNIST = (f"no MNIST found: set ${config.DATA_ENV} or place it at {REPO.parent / 'shared' / 'datasets'}"
            "/MNIST/raw (torchvision layout); the tests never download")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not has_torchvision_set("MNIST"):
        pytest.skip(NO_MNIST)
    return DATA_ROOT


@pytest.fixture(scope="session")
def fashion_root() -> Path:
    if not has_torchvision_set("FashionMNIST"):
        pytest.skip(f"no FashionMNIST found under {DATA_ROOT} (set ${config.DATA_ENV}); the tests never download")
    return DATA_ROOT


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# A small, fast study on the synthetic data set (no files needed): 300 train / 100 test images of 4 classes.
SYNTHETIC = {
    "name": "synthetic-test",
    "data": {"name": "synthetic", "classes": 4, "train_size": 300, "test_size": 100},
    "model": {"backbone": "mlp", "hidden": 32, "gaussian_dims": 4, "categories": 4},
    "train": {"epochs": 3, "batch_size": 64, "seed": 0},
    "mi": {"lambda_mi": 2.0, "categorical": True, "gaussian": [1, 3]},
}

# A small MNIST study; needs the data root (resolved through $VMISTUDY_DATA).
MNIST_SMALL = {
    "name": "mnist-test",
    "data": {"name": "mnist", "subset": 1000, "test_subset": 200},
    "model": {"backbone": "mlp", "hidden": 64, "gaussian_dims": 16, "categories": 10},
    "train": {"epochs": 3, "batch_size": 100, "seed": 0},
    "mi": {"lambda_mi": 5.0, "categorical": True},
}


def raw_study(base: dict = SYNTHETIC, **sections) -> dict:
    """A copy of `base` with the given sections merged in, e.g. raw_study(mi={'lambda_mi': 0})."""
    return _merge(base, sections)


def make_spec(base: dict = SYNTHETIC, **sections) -> config.StudySpec:
    """A validated StudySpec built through the real schema."""
    return config.validate(raw_study(base, **sections), source="test")


def write_study(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m vmistudy.<module> args...` in a subprocess with the resolved data root in its environment."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([PYTHON, "-m", f"vmistudy.{module}", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def state_equal(a: dict, b: dict) -> list[str]:
    """Names of tensors that differ between two state dicts (empty when identical)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def strip_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("images_per_second", "epoch_seconds")} for m in history]
