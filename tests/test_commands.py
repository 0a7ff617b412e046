"""Quiet, helpful commands (issue 13, point 5): `python -m vmistudy` lists every command, every command's --help
shows examples that work in this repository, and the libraries underneath stay quiet unless --verbose."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import PYTHON, REPO
from vmistudy import __main__ as listing, config

QUIET_VARIABLES = ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_LOGGING_LEVEL")  # what cli.quiet sets
NOISE = re.compile(r"Warning|WARNING|INFO|Downloading artifacts|\d+%\|")  # warnings, log lines, tqdm bars


def command_modules() -> list[str]:
    """The modules a user runs, found by their text: those with a __main__ block."""
    return [f"{folder}.{path.stem}" for folder in ("vmistudy", "benchmarks")
            for path in sorted((REPO / folder).glob("[!_]*.py"))
            if 'if __name__ == "__main__":' in path.read_text()]


def run_quietly(*args: str) -> subprocess.CompletedProcess:
    """A command with the environment a user has: without what cli.quiet may have set in this process."""
    env = {k: v for k, v in os.environ.items() if k not in QUIET_VARIABLES}
    return subprocess.run([PYTHON, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.subprocess
@pytest.mark.parametrize("argv", [[], ["--help"]])
def test_the_listing_names_every_command_with_its_docstrings_headline(argv):
    done = run_quietly("vmistudy", *argv)
    assert done.returncode == 0 and not done.stderr, done.stderr
    listed = dict(re.findall(r"^  python -m (\S+) +(.+)$", done.stdout, re.M))
    modules = command_modules()
    assert {"vmistudy.train", "vmistudy.run", "vmistudy.report", "vmistudy.evaluate"} <= set(modules)
    assert sorted(listed) == sorted(modules)
    for module, summary in listed.items():
        docstring = (REPO / module.replace(".", "/")).with_suffix(".py").read_text().split('"""')[1]
        assert " ".join(docstring.split()).startswith(summary), module


def test_the_listing_takes_no_arguments(capsys):
    assert listing.main(["train"]) == 2
    out, err = capsys.readouterr()
    assert not out and err.count("\n") == 1 and err.startswith("error: ") and "python -m vmistudy" in err


COMMANDS = {m: importlib.import_module(m) for m in command_modules()}  # now: importing MLflow starts a process


def help_text(module: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        COMMANDS[module].main(["--help"])
    assert stop.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("module", list(COMMANDS))
def test_every_commands_help_has_examples_that_work_here(module):
    text = help_text(module)
    assert "\nexamples:\n" in text, f"{module} --help shows no examples"
    examples = [line.split(" #")[0].split() for line in text.split("\nexamples:\n")[1].splitlines()]
    assert any(words[:3] == ["python", "-m", module] for words in examples), examples
    made = set()  # folders an earlier example writes: a later one may read from them
    for words in examples:
        made |= {value for flag, value in zip(words, words[1:]) if flag == "--out"}
        for word in words:
            if word.endswith((".yaml", ".csv.gz", ".pt")):
                assert (REPO / word).is_file() or str(Path(word).parent) in made, f"{module}: {word}"


# --- quiet output --------------------------------------------------------------------------------------------------

def tracked_study(root: Path) -> Path:
    """A study file and its MLflow runs, as `vmistudy.run` leaves them, without Ray: a run with lambda 5 and its
    lambda 0 twin, named as Tune names trials, with curves and final traversal figures the report downloads."""
    from vmistudy import tracking

    raw = yaml.safe_load((REPO / "tests" / "studies" / "tiny.yaml").read_text())
    raw["search"]["storage"] = str(root / "results")
    study = root / "tiny.yaml"
    study.write_text(yaml.safe_dump(raw))
    spec = config.load(study)
    tracker = tracking.start_study(spec, study, str(root / "results"))
    for i, lambda_mi in enumerate((5.0, 0.0)):
        trial = tracker.trial(f"t{i}", f"_train_trial_{i:04d}", config.load(study, [f"mi.lambda_mi={lambda_mi}"]),
                              "node")
        for epoch in (1, 2):
            trial.log_epoch({"epoch": epoch, "accuracy_hungarian": 0.2 + 0.1 * epoch - 0.05 * i,
                             "mi_lower_bound": 0.1 * epoch, "kl_categorical": 0.01 * epoch, "elbo": -200.0 + epoch})
        trial.log_figures(lambda folder: {"traversal_rows": _image(folder / "traversal_rows.png")}, 2, final=True)
        tracker.end_trial(f"t{i}", f"_train_trial_{i:04d}", "FINISHED", trial.run_id)
    tracker.finish({"trials": 2.0}, "FINISHED")
    return study


def _image(path: Path) -> Path:
    Image.new("RGB", (46, 46), "gray").save(path)
    return path


@pytest.mark.subprocess
def test_the_report_prints_no_library_noise_unless_verbose(tmp_path):
    study = tracked_study(tmp_path)
    done = run_quietly("vmistudy.report", str(study), "--out", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report: " in done.stdout and (tmp_path / "report" / "lambda_rows.png").is_file()
    assert done.stderr == "", f"the report's stderr is not empty:\n{done.stderr[-3000:]}"
    assert not NOISE.search(done.stdout), done.stdout
    # the test is not blind: --verbose brings back MLflow's progress bars for the figures it downloads
    loud = run_quietly("vmistudy.report", str(study), "--out", str(tmp_path / "loud"), "--verbose")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Downloading artifacts" in loud.stderr, loud.stderr[-3000:]


@pytest.mark.subprocess
def test_a_command_freezes_the_heap_after_every_other_exit_handler():
    """The final collection of a command's heap (seconds after a study) is skipped: by the last of the exit
    handlers, after those registered later (Ray's shutdown), everything left is frozen out of the collector's
    reach."""
    script = ("import atexit, gc\n"
              "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
              "import vmistudy.cli\n"
              "atexit.register(lambda: print('later', gc.get_freeze_count()))\n")
    done = subprocess.run([PYTHON, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["later", "0", "frozen", "True"]


@pytest.mark.subprocess
@pytest.mark.parametrize("setting", ["default", "the user's"])
def test_the_libraries_report_nothing_off_the_machine_unless_the_user_asks(setting):
    """MLflow's telemetry and Ray's usage stats are off once vmistudy is imported, before either library is;
    a value the user has set wins. Run without the variables by which MLflow itself guesses a CI or a test."""
    probe = ("import vmistudy.report\nfrom mlflow.telemetry.utils import is_telemetry_disabled\n"
             "from ray._common.usage.usage_lib import usage_stats_enabled\n"
             "print(is_telemetry_disabled(), usage_stats_enabled())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_CURRENT_TEST", "DO_NOT_TRACK")
           and "TELEMETRY" not in k and "USAGE_STATS" not in k}
    if setting == "the user's":
        env.update(MLFLOW_DISABLE_TELEMETRY="false", RAY_USAGE_STATS_ENABLED="1")
    done = subprocess.run([PYTHON, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == (["True", "False"] if setting == "default" else ["False", "True"]), done.stderr
