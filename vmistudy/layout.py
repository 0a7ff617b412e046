"""Where a study lives: its storage root, its experiment folder and the spec it was started with.

Local paths and URIs (s3://, gs://, through pyarrow's file systems); no framework is imported here, so
the run command, the Tune adapter and the report all take the layout from one place.
"""
from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
from pathlib import Path
from typing import Iterator

import pyarrow.fs

from .config import StudySpec, validate
from .errors import InputError

SPEC_FILE = "vmistudy-spec.json"
TRIAL_STATE = "vmistudy-state.pt"  # a trial's resume state, in its Tune folder, replaced after every epoch
# a trial's configuration and the trial id its MLflow run is tagged with, in its Tune folder from its first start
TRIAL_MARKER = "vmistudy-trial.json"
TUNER_STATE = "tuner.pkl"  # Tune's own, in the study folder: what Tuner.can_restore looks for
EXPERIMENT_STATE = "experiment_state-*.json"  # Tune's record of every trial, one file per driver's life
ENDED = ("TERMINATED", "ERROR")  # the statuses of trials that will not run again (unless resumed: errored ones)


def storage_path(spec: StudySpec) -> str:
    """search.storage as Tune needs it: an absolute path or a URI."""
    storage = spec.search.storage
    return storage if "://" in storage else str(Path(os.path.expanduser(storage)).resolve())


def experiment_path(spec: StudySpec) -> str:
    return f"{storage_path(spec).rstrip('/')}/{spec.name}"


def write_spec(spec: StudySpec) -> None:
    """Keep the spec a study starts with in its folder, so that --resume can refuse a changed one."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(spec))
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root}/{SPEC_FILE}") as f:
        f.write(spec.model_dump_json(indent=2).encode())


def saved_spec(spec: StudySpec) -> StudySpec | None:
    """The spec the study named by `spec` was started with; None for a study that predates the file.
    InputError for a damaged one, naming the file and what to do."""
    path = f"{experiment_path(spec)}/{SPEC_FILE}"
    data = read_bytes(path)
    if data is None:
        return None
    hint = "restore it, or delete it to resume without checking the study file against it"
    try:
        return validate(json.loads(data), source=path)
    except InputError as e:
        raise InputError(f"{e}; {hint}") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep
        raise InputError(f"{path}: damaged, not the JSON of a study ({e}); {hint}") from None


def has_study(spec: StudySpec) -> bool:
    """Whether a study named as `spec` names has started in its storage (Tune saved its state to resume from)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(spec))
    return fs.get_file_info(f"{root}/{TUNER_STATE}").type != pyarrow.fs.FileType.NotFound


def newest_file(spec: StudySpec, pattern: str) -> str | None:
    """The path of the study folder's newest file matching `pattern` (Tune puts the time in its names), or None."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(spec))
    names = fnmatch.filter([info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root))], pattern)
    return f"{experiment_path(spec)}/{max(names)}" if names else None


def trial_statuses(experiment_state: dict) -> dict[str, str]:
    """Each trial's status (PENDING, RUNNING, PAUSED, TERMINATED or ERROR) in a Tune experiment state's JSON."""
    trials = (json.loads(data) for data, _ in experiment_state["trial_data"])
    return {trial["custom_trial_name"]: trial["status"] for trial in trials}


def unended_trials(spec: StudySpec) -> list[str]:
    """The trials Tune's newest record of the study left running or waiting: after Ctrl-C, those it stopped
    (it writes the record before it marks every trial TERMINATED in memory)."""
    path = newest_file(spec, EXPERIMENT_STATE)
    statuses = trial_statuses(json.loads(read_bytes(path))) if path else {}
    return [name for name, status in statuses.items() if status not in ENDED]


def trial_state_path(spec: StudySpec, trial_name: str) -> str:
    return f"{experiment_path(spec)}/{trial_name}/{TRIAL_STATE}"


def read_marker(spec: StudySpec, trial_name: str) -> dict | None:
    data = read_bytes(f"{experiment_path(spec)}/{trial_name}/{TRIAL_MARKER}")
    return json.loads(data) if data else None


def write_marker(spec: StudySpec, trial_name: str, marker: dict) -> None:
    write_bytes(f"{experiment_path(spec)}/{trial_name}/{TRIAL_MARKER}", json.dumps(marker).encode())


def unknown_trials(spec: StudySpec, known: set[str]) -> dict[str, dict]:
    """The markers of trial folders (those with a marker) whose names are not in `known`, by folder name."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(spec))
    folders = [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(root))
               if info.type == pyarrow.fs.FileType.Directory and info.base_name not in known]
    markers = {name: read_marker(spec, name) for name in folders}
    return {name: marker for name, marker in markers.items() if marker}


def move_trial(spec: StudySpec, source: str, target: str) -> None:
    """Give trial folder `source`'s files to trial folder `target`: a rename where `target` does not exist yet
    (atomic on a local disk), else a copy, marker last, then `source` deleted; a kill midway leaves `source`
    whole."""
    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path(spec))
    source, target = f"{root}/{source}", f"{root}/{target}"
    if fs.get_file_info(target).type == pyarrow.fs.FileType.NotFound:
        fs.move(source, target)
        return
    for name in sorted((info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(source))),
                       key=lambda name: name == TRIAL_MARKER):
        pyarrow.fs.copy_files(f"{source}/{name}", f"{target}/{name}", source_filesystem=fs, destination_filesystem=fs)
    fs.delete_dir(source)


def write_bytes(path: str, data: bytes) -> None:
    """Replace the file at `path` whole: a local file by an atomic rename (a kill mid-write leaves the old
    one), an object store's object by one put."""
    if "://" in path:
        fs, root = pyarrow.fs.FileSystem.from_uri(path)
        fs.create_dir(root.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(root) as f:
            f.write(data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def read_bytes(path: str) -> bytes | None:
    """The file at `path`, or None where there is none."""
    fs, root = pyarrow.fs.FileSystem.from_uri(path if "://" in path else str(Path(path).resolve()))
    try:
        with fs.open_input_stream(root) as f:
            return f.read()
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold a lock file beside a sqlite store (no-op for other stores) while a driver creates the store, the
    experiment and the parent run: two studies starting at once would both create the store's tables and run
    its migrations, and one would fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri.removeprefix("sqlite:///").split("?")[0] + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield
