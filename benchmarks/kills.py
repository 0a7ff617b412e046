"""Driver SIGKILL anywhere: one replayed study whose driver is killed at random instants and resumed after each.

    python -m benchmarks.kills [--kills 50] [--seed S] [--folder DIR]

The study (Optuna configurations x 2 seeds, trials of 10 epochs, 2 at a time, each to its last epoch: 10 trials,
more for more than 10 kills, EPOCHS_PER_KILL planned epochs a kill) replays the repository's learning-curve table
at TIME_SCALE of its recorded seconds (0.2-0.4 s an epoch): with 10 trials about 20 s of trials after the
driver's and Ray's start (15-40 s on 2 cores, by load). It logs to a sqlite MLflow store beside it, as a user's
study does. `python -m vmistudy.run` runs in a session of its own; a kill is SIGKILL
to every process of that session and every child of the driver (the driver, Ray's GCS, raylet and workers), and
the next life starts, with --resume, only once none of them is left.

Kill instants are drawn (seeded) uniformly over the study's progress: K points over its planned trial-epochs,
each killing the life in which the study has saved that many epochs, up to EPOCH_GAP s after the epoch, once
that life has saved one of its own (so that every life moves the study on). One kill in 5 (START_SHARE; never the
first) falls instead at a random instant of the driver's start, as long as the last life's took. The phase a kill
hit (driver start, Ray start, restore, trial start, training, MLflow write, checkpoint write, report to Tune,
experiment-state snapshot, study end) is read from what it froze: the processes, the driver's log, files being
written and the latest writes.

At the end: exactly the planned trials finished (the last experiment state, each trial's saved state and
result.json); no trial went back to epoch 0, or to an earlier epoch than it had saved, after a kill (each
result.json line against the trial's saved state when the life before it was killed; the saved states across
kills); one MLflow run per trial; every epoch of every metric once in each run's history; no run RUNNING.
Printed: the tally, then PASS or FAIL with the evidence. The folder is removed on PASS and kept on FAIL.
Needs psutil (the test extra: pip install -e ".[test]").
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import psutil
import torch
import yaml
from mlflow import MlflowClient

from vmistudy import replay
from vmistudy.cli import ArgumentParser, command
from vmistudy.errors import InputError
from vmistudy.layout import TRIAL_MARKER, TRIAL_STATE
from vmistudy.tracking import ROLE_TAG, TRIAL_TAG

REPO = Path(__file__).resolve().parents[1]
TABLE = REPO / "benchmarks" / "curves" / "curves.csv.gz"
NAME = "kills"
EPOCHS, CONFIGURATIONS, REPLICATES = 10, 5, 2  # configurations: at least
EPOCHS_PER_KILL = 5  # planned trial-epochs at least: a life moves the study on by an epoch or more of each trial
TIME_SCALE = 0.08  # of the table's 2-5 s an epoch
START_SHARE = 0.2  # of the kills fall in a driver's start rather than in the study's progress
EPOCH_GAP = 0.5  # s: a progress kill falls up to this long after the study saved the epoch it was drawn in
RECENT = 0.1  # s: a write this recent at a kill tells the phase it hit
TRIAL_START = 0.5  # s: ... and a trial started (says the log) this recently
POLL = 0.1  # s between looks at the study while a life runs
LIFE_LIMIT = 900  # s: a life that runs longer hangs
EXTRA_LIVES = 3  # unkilled lives to finish the study after the kills (more than one: a trial errored)
RAY_UP, TRIAL_STARTED, SUMMARY = "Started a local Ray instance", "started with configuration", "trials of study"

Start = Callable[[list[str], Path], subprocess.Popen]  # a command in a session of its own, output to a log


@dataclass(frozen=True)
class Study:
    """The study a campaign kills: its file in `folder`, its results beside it."""
    folder: Path
    configurations: int

    @classmethod
    def write(cls, folder: Path, kills: int, seed: int) -> Study:
        study = cls(folder, max(CONFIGURATIONS, math.ceil(kills * EPOCHS_PER_KILL / (EPOCHS * REPLICATES))))
        study.path.write_text(yaml.safe_dump(study.raw(seed), sort_keys=False))
        return study

    @property
    def path(self) -> Path:
        return self.folder / f"{NAME}.yaml"

    @property
    def experiment(self) -> Path:
        return self.folder / "results" / NAME

    @property
    def trials(self) -> int:
        return self.configurations * REPLICATES

    def raw(self, seed: int) -> dict:
        return {"name": NAME, "data": {"name": "synthetic"}, "model": {"gaussian_dims": 16, "categories": 10},
                "train": {"epochs": EPOCHS}, "mi": {"lambda_mi": 1.0},
                "replay": {"table": str(TABLE), "time_scale": TIME_SCALE},
                "search": {"metric": "accuracy_hungarian", "algorithm": "optuna", "seed": seed,
                           "num_samples": self.configurations, "replicates": REPLICATES, "max_concurrent": 2,
                           "storage": str(self.folder / "results"), "scheduler": {"name": "none"},  # all to the end
                           "space": {"mi.lambda_mi": {"choice": [0.0, 1.0, 3.0, 10.0]},
                                     "train.beta": {"uniform": [1.0, 2.0]},
                                     "train.capacity.gaussian.cap": {"choice": [None, 2.0, 6.0]}}},
                "tracking": {"figures_every": 0, "log_model": False}}


@dataclass(frozen=True)
class Kill:
    """When a life is killed: `delay` s after the study has saved `epochs` epochs (over all trials) and the life
    one of its own; or, with `start` set, at that share of a driver's start (as long as the last one took)."""
    epochs: int
    delay: float
    start: float | None = None


def plan(kills: int, seed: int, study: Study) -> list[Kill]:
    rng = random.Random(seed)
    points = sorted(rng.uniform(0, study.trials * EPOCHS) for _ in range(kills))
    return [Kill(int(p), (p % 1) * EPOCH_GAP, rng.random() if i and rng.random() < START_SHARE else None)
            for i, p in enumerate(points)]


@dataclass
class Life:
    """One run of the driver: how it ended (`code` on its own; killed at `killed_at`, in `phase`), how long its
    start took (until it saved an epoch), and each trial's saved epoch once it was over."""
    log: Path
    began: float = field(default_factory=time.time)
    code: int | None = None
    killed_at: float | None = None
    phase: str | None = None
    start_s: float | None = None
    due_at: float | None = None  # when the study reached the kill's epoch in this life
    trial_start: float = 0.0  # when the log last said a trial started
    processes: list[str] = field(default_factory=list)  # the command lines it had when it was killed
    saved: dict[str, int] = field(default_factory=dict)


def saved_epochs(experiment: Path, by_origin: bool = False) -> dict[str, int]:
    """The epoch of each trial's saved resume state (layout.TRIAL_STATE), by trial folder (or by the folder it
    began as: a trial lost with a driver is taken over, folder and all, by the trial the resumed study starts
    with its configuration)."""
    name = _origin if by_origin else (lambda folder: folder.name)
    return {name(p.parent): torch.load(p, weights_only=True)["epoch"] for p in experiment.glob(f"*/{TRIAL_STATE}")}


def markers(experiment: Path) -> dict[str, dict]:
    """The trial folders' markers (layout.TRIAL_MARKER), by folder."""
    return {p.parent.name: json.loads(p.read_text()) for p in experiment.glob(f"*/{TRIAL_MARKER}")}


def _origin(folder: Path) -> str:
    """The name of the trial folder `folder` began as: its first owner's."""
    marker = folder / TRIAL_MARKER
    owners = json.loads(marker.read_text())["owners"] if marker.exists() else []
    return f"{folder.name.rsplit('_', 1)[0]}_{owners[0]}" if owners else folder.name


def session(driver: int) -> list[psutil.Process]:
    """The live processes a driver started: its session (it is the session's leader) and its children."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        found = psutil.Process(driver).children(recursive=True)
    for proc in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getsid(proc.pid) == driver:
                found.append(proc)
    return [p for p in {p.pid: p for p in found}.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_all(driver: subprocess.Popen, procs: list[psutil.Process], timeout: float = 60) -> None:
    """SIGKILL the driver, the processes given and any its session still holds, until none is left alive; only
    then reap the driver (a zombie keeps its PID, hence its session's id, from being reused meanwhile)."""
    deadline = time.time() + timeout
    while procs:
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)  # psutil checks the PID is still that process
        time.sleep(POLL)
        procs = [p for p in {*procs, *session(driver.pid)} if _alive(p)]
        if time.time() > deadline:
            raise RuntimeError(f"processes of driver {driver.pid} survive SIGKILL: {[p.pid for p in procs]}")
    driver.wait()


def _exited(driver: subprocess.Popen) -> bool:
    """Whether the driver has ended, without reaping it (see kill_all)."""
    return os.waitid(os.P_PID, driver.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def live(study: Study, resume: bool, kill: Kill | None, last_start: float | None, start: Start) -> Life:
    """Run the driver until it ends or `kill` falls; whatever it started is gone when this returns."""
    experiment = study.experiment
    life = Life(study.folder / f"life-{time.time_ns()}.log")
    before = saved_epochs(experiment, by_origin=True)
    # --verbose: Ray's and Tune's own lines, which tell the phase a kill hit
    driver = start([sys.executable, "-m", "vmistudy.run", str(study.path), "--verbose",
                    *(["--resume"] if resume else [])], life.log)
    procs: list[psutil.Process] = []
    try:
        with open(life.log, "rb") as log:
            while not (_exited(driver) or
                       _due(life, kill, last_start, saved_epochs(experiment, by_origin=True), before, log)):
                if time.time() - life.began > LIFE_LIMIT:
                    raise RuntimeError(f"the driver ran {LIFE_LIMIT} s; see {life.log}")
                time.sleep(POLL)
        if not _exited(driver):
            procs = session(driver.pid)
            life.processes = _command_lines(procs)
            life.killed_at = time.time()
    finally:
        kill_all(driver, procs or session(driver.pid))
    if driver.returncode != -signal.SIGKILL:  # it ended on its own, if just before the kill
        life.killed_at, life.code = None, driver.returncode
    life.saved = saved_epochs(experiment, by_origin=True)
    if life.killed_at:
        life.phase = phase(life, study)
    return life


def _command_lines(procs: list[psutil.Process]) -> list[str]:
    lines = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            lines.append(" ".join(proc.cmdline()))
    return lines


def _due(life: Life, kill: Kill | None, last_start: float | None, saved: dict[str, int], before: dict[str, int],
         log) -> bool:
    """Whether the kill falls now; notes when the life first saved an epoch and when the log says a trial started."""
    now = time.time()
    if TRIAL_STARTED.encode() in log.read():
        life.trial_start = now
    if life.start_s is None and any(epoch > before.get(name, 0) for name, epoch in saved.items()):
        life.start_s = now - life.began
    if kill is None:
        return False
    if kill.start is not None and last_start:
        return now - life.began >= kill.start * last_start
    if life.due_at is None and life.start_s is not None and sum(saved.values()) >= kill.epochs:
        life.due_at = now
    return life.due_at is not None and now >= life.due_at + kill.delay


def phase(life: Life, study: Study) -> str:
    """What the killed life was doing, as best its frozen remains tell: its processes, its log, a file being
    written when it died (sqlite keeps a journal while it writes; a trial's state is written to a .tmp file and
    renamed, in milliseconds), else the step after its latest write, if that was recent: a trial logs its epoch to
    MLflow, then saves its state, then reports the epoch to Tune (whose driver may then snapshot the experiment)."""
    log, experiment = life.log.read_text(errors="replace"), study.experiment
    if len(life.processes) <= 1:
        return "driver start"
    if RAY_UP not in log:
        return "Ray start"
    if SUMMARY in log or (len(life.saved) >= study.trials and set(life.saved.values()) == {EPOCHS}):
        return "study end"
    if life.start_s is None:
        return "trial start" if any("ImplicitFunc" in line for line in life.processes) else "restore"
    if (experiment.parent / "mlflow.db-journal").exists():
        return "MLflow write"
    if _age(experiment.glob("*/*.tmp"), life.killed_at) < 1:  # older: left by an earlier kill
        return "checkpoint write"
    if life.killed_at - life.trial_start < TRIAL_START:
        return "trial start"
    ages = {"experiment-state snapshot": _age(experiment.glob("experiment_state-*.json"), life.killed_at),
            "MLflow write": _age([experiment.parent / "mlflow.db"], life.killed_at),
            "report to Tune": _age(experiment.glob(f"*/{TRIAL_STATE}"), life.killed_at)}
    latest = min(ages, key=ages.get)
    return latest if ages[latest] < RECENT else "training"


def _age(paths, at: float) -> float:
    return min((at - p.stat().st_mtime for p in paths if p.exists()), default=float("inf"))


@dataclass
class Tally:
    kills: int = 0
    planned_kills: int = 0
    planned: int = 0  # trials
    phases: Counter = field(default_factory=Counter)
    resumes: int = 0
    finished: int = 0
    restarts: int = 0  # trials that went back to epoch 0 after a kill, with a saved state
    went_back: int = 0  # ... or to an earlier epoch than saved
    points: int = 0
    missing: int = 0
    duplicated: int = 0
    running: int = 0
    lost: int = 0  # trials lost with a driver that no trial of the resumed study took over (runs ended KILLED)
    taken_over: int = 0  # trials of the study that went on from a lost trial's folder
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        phases = ", ".join(f"{name} {n}" for name, n in self.phases.most_common())
        return [f"kills made:              {self.kills} of {self.planned_kills} ({phases})",
                f"resumes needed:          {self.resumes}",
                f"trials finished:         {self.finished} of {self.planned} planned",
                f"restarts from epoch 0:   {self.restarts} (to an earlier epoch than saved: {self.went_back})",
                f"metric points:           {self.missing} missing, {self.duplicated} duplicated, of {self.points}",
                f"runs left RUNNING:       {self.running}",
                f"lost, then taken over:   {self.taken_over} (not taken over: {self.lost}, their runs ended KILLED)",
                f"wall time:               {self.seconds:.0f} s",
                *(f"failure: {failure}" for failure in self.failures),
                "PASS" if not self.failures else "FAIL"]


def campaign(folder: Path, kills: int, seed: int, start: Start | None = None) -> Tally:
    """Run the study, killed at `kills` instants and resumed after each, to its end; then check what it left."""
    began = time.time()
    study = Study.write(folder, kills, seed)
    tally = Tally(planned_kills=kills, planned=study.trials)
    with _environment():
        lives = _lives(study, plan(kills, seed, study), start or _start, tally)
    tally.kills = sum(life.killed_at is not None for life in lives)
    tally.phases = Counter(life.phase for life in lives if life.phase)
    tally.resumes = len(lives) - 1
    trial_ids = check_trials(tally, study.experiment)
    check_restarts(tally, study.experiment, lives)
    check_runs(tally, study.experiment, trial_ids, lives)
    tally.seconds = time.time() - began
    return tally


def _lives(study: Study, kills: list[Kill], start: Start, tally: Tally) -> list[Life]:
    """A life per kill until the study ends, then lives to its end; a life that exits 1 (a trial errored) is
    resumed, as a user would (up to EXTRA_LIVES times unkilled); one that exits otherwise ends the campaign."""
    lives: list[Life] = []
    for kill in [*kills, *[None] * EXTRA_LIVES]:
        last_start = next((life.start_s for life in reversed(lives) if life.start_s), None)
        life = live(study, bool(lives), kill, last_start, start)
        lives.append(life)
        print(describe(life, len(lives), study), flush=True)
        if life.code not in (None, 0):
            tally.failures.append(f"life {len(lives)} exited {life.code}: {_reason(life.log)}")
        if life.code not in (None, 1):
            break
    return lives


def describe(life: Life, number: int, study: Study) -> str:
    head = f"life {number}{' (--resume)' if number > 1 else ''}: "
    start = f"its start {life.start_s:.1f} s" if life.start_s else "before it saved an epoch"
    if life.killed_at is None:
        return f"{head}exited {life.code} after {time.time() - life.began:.0f} s"
    return (f"{head}killed after {life.killed_at - life.began:.1f} s ({start}): {life.phase}; its trial folders "
            f"held {sum(life.saved.values())} saved epochs (planned: {study.trials * EPOCHS})")


def check_trials(tally: Tally, experiment: Path) -> dict[str, str]:
    """Exactly the planned trials, each TERMINATED in the last experiment state at its last epoch (saved state
    and result.json), and no trial folder besides theirs. Returns their trial ids by name."""
    states = sorted(experiment.glob("experiment_state-*.json"))  # the newest last: Tune puts the time in the name
    if not states:
        tally.failures.append(f"{experiment} holds no experiment state")
        return {}
    trials = [json.loads(trial) for trial, _ in json.loads(states[-1].read_text())["trial_data"]]
    status = {t["custom_trial_name"]: t["status"] for t in trials}
    saved, logs = saved_epochs(experiment), results(experiment)
    done = [n for n, s in status.items() if s == "TERMINATED" and saved.get(n) == EPOCHS and
            (logs.get(n) or [{}])[-1].get("epoch") == EPOCHS]
    tally.finished = len(done)
    if len(status) != tally.planned or len(done) != tally.planned:
        tally.failures.append(f"{len(done)} of {len(status)} trials (planned {tally.planned}) finished: {status}, "
                              f"saved epochs {saved}")
    marked = markers(experiment)
    tally.taken_over = sum(len(marker["owners"]) > 1 for name, marker in marked.items() if name in status)
    stray = {p.name for p in experiment.glob("replay_trial_*") if p.is_dir()} - set(status)
    tally.lost = len({name for name in stray if marked.get(name, {}).get("ended")})
    stray = {name for name in stray if not marked.get(name, {}).get("ended")}  # a lost trial nobody took over
    if stray:
        tally.failures.append(f"trial folders of no trial of the study: {sorted(stray)}")
    return {t["custom_trial_name"]: t["trial_id"] for t in trials}


def results(experiment: Path) -> dict[str, list[dict]]:
    """Every trial's reported results, in order, from its result.json."""
    return {p.parent.name: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
            for p in sorted(experiment.glob("*/result.json"))}


def check_restarts(tally: Tally, experiment: Path, lives: list[Life]) -> None:
    """After a kill a trial goes on from the epoch it saved: every epoch it reports later (result.json's time
    stamps are whole seconds, and a life takes seconds to start) is a later one, or its last again (it ended but
    Tune had not recorded it), and its saved state never goes back."""
    kills = [life for life in lives if life.killed_at]
    for name, rows in results(experiment).items():
        origin = _origin(experiment / name)  # the saved epochs are by the folder a trial began as
        for row in rows:
            after = sum(row["timestamp"] > k.killed_at for k in kills)  # the kills before this report
            had = kills[after - 1].saved.get(origin, 0) if after else 0
            if had and row["epoch"] <= had and not row["epoch"] == had == EPOCHS:
                _went_back(tally, name, row["epoch"], had, f"reported after kill {after} ({kills[after - 1].phase})")
    for i, (life, later) in enumerate(zip(lives, lives[1:]), 2):
        for name, had in life.saved.items():
            if later.saved.get(name, 0) < had:
                _went_back(tally, name, later.saved.get(name, 0), had, f"saved at the end of life {i}")


def _went_back(tally: Tally, name: str, epoch: int, had: int, when: str) -> None:
    if epoch == 1:
        tally.restarts += 1
    else:
        tally.went_back += 1
    tally.failures.append(f"{name}: epoch {epoch} {when}, though it had saved epoch {had}")


def check_runs(tally: Tally, experiment: Path, trial_ids: dict[str, str], lives: list[Life]) -> None:
    """One MLflow run per trial, FINISHED, with every epoch of every metric of the table once; no run RUNNING."""
    client = MlflowClient(f"sqlite:///{experiment.parent}/mlflow.db")
    found = client.get_experiment_by_name(NAME)
    if found is None:
        tally.failures.append(f"no MLflow experiment {NAME} in {experiment.parent}/mlflow.db")
        return
    runs = client.search_runs([found.experiment_id], max_results=10_000)
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    tally.running = len(running)
    if running:
        tally.failures.append(f"runs left RUNNING: {running}")
    children = [r for r in runs if r.data.tags.get(ROLE_TAG) != "study"]
    count = Counter(r.data.tags.get(TRIAL_TAG) for r in children)
    wrong = {name: count[i] for name, i in trial_ids.items() if count[i] != 1}
    if wrong:
        tally.failures.append(f"runs per trial not 1: {wrong}")
    ours = [r for r in children if r.data.tags.get(TRIAL_TAG) in trial_ids.values()]
    for run in ours:
        _check_points(tally, client, run)
    ended = {owner for marker in markers(experiment).values() if marker.get("ended") for owner in marker["owners"]}
    for run in children:
        if run.data.tags.get(TRIAL_TAG) not in trial_ids.values():
            _check_stray(tally, run, ours, lives, saved_epochs(experiment), ended)


def _check_stray(tally: Tally, run, ours: list, lives: list[Life], saved: dict[str, int], ended: set[str]) -> None:
    """A run of a trial that the resumed study does not know: it began after Tune's last snapshot of the
    experiment before a kill. If a trial of the study has its configuration and seed, that one ran it again, from
    epoch 1: a restart from epoch 0 of a trial that had saved its state. If none has, the resumed searcher chose
    another configuration: the lost trial's run ends KILLED (its folder's marker says it ended)."""
    name, began = run.info.run_name, run.info.start_time / 1000
    life = next((i for i, x in enumerate(lives, 1) if x.began <= began <= (x.killed_at or time.time())), None)
    twin = next((r.info.run_name for r in ours if r.data.params == run.data.params), None)
    if not twin and run.info.status == "KILLED" and run.data.tags.get(TRIAL_TAG) in ended:
        return
    if twin and saved.get(name):
        tally.restarts += 1
    again = f"{twin}, same configuration and seed, ran it again from epoch 1" if twin else "no trial took it up"
    tally.failures.append(f"run {name} ({run.info.status}; saved epoch {saved.get(name)}) began in life {life}, and "
                          f"the study resumed after its kill does not know its trial: {again}")


def _check_points(tally: Tally, client: MlflowClient, run) -> None:
    wanted = set(range(1, EPOCHS + 1))
    for key in replay.read(str(TABLE)).metrics:
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
        missing, extra = wanted - set(steps), sum(steps.values()) - len(set(steps) & wanted)
        tally.points += sum(steps.values())
        tally.missing += len(missing)
        tally.duplicated += extra
        if missing or extra:
            tally.failures.append(f"run {run.info.run_name}: {key} at steps {sorted(steps.elements())}, "
                                  f"wanted {min(wanted)}..{max(wanted)} once each")
    if run.info.status != "FINISHED":
        tally.failures.append(f"run {run.info.run_name} ended {run.info.status}")


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A command in a session of its own, output to `log`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@contextlib.contextmanager
def _environment() -> Iterator[None]:
    """The drivers' environment while the campaign runs (whoever starts them copies this process's): Ray's files
    (RAY_TMPDIR) in a folder of the campaign's own, removed after it, since a killed Ray leaves its session folder
    behind (short, under /tmp: Ray's socket paths must fit in 107 bytes); output unbuffered, so that a driver's
    log holds what it did up to the kill."""
    folder = tempfile.mkdtemp(prefix="vmistudy-ray-")
    values = {"RAY_TMPDIR": folder, "PYTHONUNBUFFERED": "1"}
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                del os.environ[key]
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def _reason(log: Path) -> str:
    """Why a driver exited badly, from its log: the errored trials it lists, else its error, else its last line."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join([line for line in lines if line.startswith(("errored:", "error:"))] or lines[-1:])


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.kills", description=__doc__.split("\n\n")[0], examples=[
        "python -m benchmarks.kills                 # 50 kills, about 25 minutes on 2 cores",
        "python -m benchmarks.kills --kills 10 --seed 12 --folder /tmp/kills   # the test's campaign, kept"])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="of the kill instants and the study's searcher")
    parser.add_argument("--folder", type=Path, help="where the study runs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the driver's session is killed on the way out
    if args.kills < 1:
        raise InputError(f"--kills: at least 1, got {args.kills}")
    folder = args.folder or Path(tempfile.mkdtemp(prefix="vmistudy-kills-"))
    if args.folder and (folder.exists() and any(folder.iterdir())):
        raise InputError(f"--folder {folder}: not empty; give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"{args.kills} kills of study {NAME} in {folder} (seed {args.seed}) ...", flush=True)
    tally = campaign(folder, args.kills, args.seed)
    print("\n".join(tally.lines()))
    if tally.failures:
        print(f"kept: {folder}")
        sys.exit(1)
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
