"""A study of many replayed trials through the real service: what the driver, MLflow and the report cost.

    python -m benchmarks.scale [--trials 1000] [--stores sqlite,server] [--table benchmarks/curves/curves.csv.gz]

For each store (the embedded sqlite store, a real `mlflow server` on 127.0.0.1 over its own sqlite file) it
runs `python -m vmistudy.run` as a user would, on studies/curves.yaml with `replay.table` set (so epochs cost
nothing and every cost left is the service's) and its all-number knobs searched as ranges (`ranged`), by the
default searcher and ASHA, `--trials` trials (configurations x 3 replicates), 8 at a time. Then
`python -m vmistudy.report` over the study. Printed per store, against goals: the driver's CPU time per reported
result (goal <= 50 ms), wall time, the driver's peak memory, MLflow time per logged epoch (one `log_epoch` timed
in a process of its own against the same store), and the report's wall time (goal <= 5 s).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from vmistudy import config, replay
from vmistudy.cli import ArgumentParser, command
from vmistudy.errors import InputError

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "curves.yaml"
TABLE = REPO / "benchmarks" / "curves" / "curves.csv.gz"
CONCURRENT = 8
GOALS = {"driver_ms_per_result": 50.0, "report_s": 5.0}
STORES = ("sqlite", "server")

# Runs as the driver: the study command in this process, then its own CPU time and peak memory on stderr.
DRIVER = """
import json, resource, sys
from vmistudy import run
try:
    run.main(sys.argv[1:])
except SystemExit as e:
    code = e.code
usage = resource.getrusage(resource.RUSAGE_SELF)
print("DRIVER " + json.dumps({"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024,
                              "code": code}), file=sys.stderr)
"""

# One epoch's metrics logged through the service's tracker, timed, in a process of its own.
LOG_EPOCH = """
import json, sys, time
from vmistudy import config, tracking
spec = config.load(sys.argv[1])
tracker = tracking.find_study(spec, sys.argv[2])
run = tracker.trial("timing", "timing", spec, "node")
metrics = json.loads(sys.argv[3])
start = time.perf_counter()
for epoch in range(1, 51):
    run.log_epoch({**metrics, "epoch": epoch})
print(json.dumps((time.perf_counter() - start) / 50))
"""


def study_file(folder: Path, trials: int, uri: str | None, table: Path) -> Path:
    raw = yaml.safe_load(STUDY.read_text())
    raw["name"] = "scale"
    raw["replay"] = {"table": str(table)}
    raw["resources"] = {"cpu": 2 / CONCURRENT}
    del raw["search"]["algorithm"]  # the table's grid: the service's default searcher instead
    raw["search"].update(num_samples=trials // raw["search"]["replicates"],
                         max_concurrent=CONCURRENT, storage=str(folder / "results"),
                         space={field: ranged(param) for field, param in raw["search"]["space"].items()})
    raw["tracking"] = {"uri": uri, "figures_every": 0, "log_model": False}
    path = folder / "scale.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def ranged(param: dict) -> dict:
    """An all-number choice as the range it spans (log where it spans a decade), others as they are. With ranges
    every configuration is new, so the study runs all its trials: the service tells a configuration proposed
    again its outcome instead of running it, and ends a study whose points are all tried (the table's 96 are,
    after 288 trials). Each trial replays the table's point nearest its values."""
    values = param.get("choice", [None])
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return param
    low, high = min(values), max(values)
    return {"loguniform" if low > 0 and high >= 10 * low else "uniform": [low, high]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{folder}/server.db",
                               "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "2"],
                              stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server, uri
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"mlflow server did not start; see {folder / 'server.log'}")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group; SIGKILL it if its workers are still draining after 30 s."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def measure(store: str, trials: int, table: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, uri = start_server(folder) if store == "server" else (None, None)
        try:
            study = study_file(folder, trials, uri, table)
            env = dict(os.environ, RAY_DEDUP_LOGS="0")
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", DRIVER, str(study)], cwd=REPO, env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            driver = json.loads(next(line for line in done.stderr.splitlines() if line.startswith("DRIVER "))[7:])
            if driver["code"] not in (0, None):
                raise RuntimeError(f"the study failed ({driver['code']}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
            experiment = folder / "results" / "scale"
            trials = len(list(experiment.glob("*/result.json")))
            asked = config.load(study).search
            if trials < asked.num_samples * asked.replicates:
                raise RuntimeError(f"the study ran {trials} of its {asked.num_samples * asked.replicates} trials:\n"
                                   f"{done.stdout[-2000:]}")
            results = sum(len(p.read_text().splitlines()) for p in experiment.glob("*/result.json"))
            metrics = json.loads(next(experiment.glob("*/result.json")).read_text().splitlines()[0])
            epoch_metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "epoch"
                             and not k.startswith(("time_", "timestamp", "training_iteration", "pid", "done"))}
            logged = subprocess.run([sys.executable, "-c", LOG_EPOCH, str(study), str(folder / "results"),
                                     json.dumps(epoch_metrics)], cwd=REPO, capture_output=True, text=True, check=True)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "vmistudy.report", str(study)], cwd=REPO, capture_output=True,
                           check=True)
            report = time.perf_counter() - start
        finally:
            if server:
                stop(server)
    return {"store": store, "trials": trials, "results": results, "wall_s": wall,
            "driver_ms_per_result": 1000 * driver["cpu_s"] / results, "driver_peak_mb": driver["max_rss_mb"],
            "mlflow_ms_per_epoch": 1000 * json.loads(logged.stdout), "report_s": report}


def _check(args) -> None:
    """The arguments, before a server or a study starts."""
    unknown = [s for s in args.stores.split(",") if s not in STORES]
    if unknown:
        raise InputError(f"--stores: unknown {unknown[0]!r}; comma-separated, from {', '.join(STORES)}")
    if not args.table.is_file():
        raise InputError(f"--table {args.table}: no such file; write it with python -m benchmarks.curves")
    replicates = config.load(STUDY).search.replicates
    if args.trials < replicates:
        raise InputError(f"--trials: at least {replicates} ({STUDY.name}'s replicates), got {args.trials}")
    replay.read(str(args.table.resolve()))  # a table that is not one, refused here rather than by each driver


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0], examples=[
        "python -m benchmarks.scale --trials 1000",
        "python -m benchmarks.scale --trials 96 --stores sqlite"])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--stores", default=",".join(STORES), help=f"comma-separated: {', '.join(STORES)}")
    parser.add_argument("--table", type=Path, default=TABLE, help="the learning-curve table to replay")
    args = parser.parse_args(argv)
    _check(args)
    rows = []
    for store in args.stores.split(","):
        print(f"{store}: {args.trials} replayed trials ...", flush=True)
        rows.append(measure(store, args.trials, args.table))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'store':8s}{'trials':>7s}{'results':>9s}{'wall s':>8s}{'driver ms/result':>18s}{'peak MB':>9s}"
          f"{'mlflow ms/epoch':>17s}{'report s':>10s}")
    for r in rows:
        print(f"{r['store']:8s}{r['trials']:7d}{r['results']:9d}{r['wall_s']:8.0f}{r['driver_ms_per_result']:18.1f}"
              f"{r['driver_peak_mb']:9.0f}{r['mlflow_ms_per_epoch']:17.1f}{r['report_s']:10.1f}")
    for key, goal in GOALS.items():
        worst = max(r[key] for r in rows)
        print(f"goal {key} <= {goal:g}: {'met' if worst <= goal else 'not met'} (worst {worst:.1f})")


if __name__ == "__main__":
    main()
