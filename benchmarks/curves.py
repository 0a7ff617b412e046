"""The learning-curve table: every point of a grid study trained for real, every per-epoch metric kept.

    python -m benchmarks.curves studies/curves.yaml [--workers 2] [--out benchmarks/curves]

Each configuration of the study's grid (`search.algorithm: grid`) is trained `search.replicates` times
(seeds train.seed, +1, ...) with the project's own Trainer, in plain worker processes (no Ray), each
with `resources.cpu` torch threads at low priority, so it is safe to leave running in the background.
Every finished run is appended to OUT/runs.partial.jsonl; a stopped command started again skips the runs
found there. When every run is done the table is packed into OUT/curves.csv.gz (one row per run and epoch:
the grid's fields, seed, epoch, every metric, the epoch's wall seconds) and OUT/curves.json (the command,
the study, the budget, the hardware and the wall time). A study with `replay.table: OUT/curves.csv.gz`
replays it. `--summary` prints what a finished table shows: main effects, the best configurations, seed
noise, and how well each epoch ranks the configurations by their final value.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import json
import math
import multiprocessing
import os
import platform
import time
from pathlib import Path

import pandas as pd

from vmistudy import config
from vmistudy.cli import ArgumentParser, check_writable, command, load_study
from vmistudy.errors import InputError

PARTIAL, TABLE, META = "runs.partial.jsonl", "curves.csv.gz", "curves.json"
DIGITS = 6  # significant digits kept per metric: far below the seed-to-seed noise, and a small file


def grid(spec: config.StudySpec) -> list[dict]:
    """Every point of the study's grid x replicate, as {field path: value, ..., 'seed': seed}."""
    search = spec.search
    if search.algorithm != "grid":
        raise InputError("search.algorithm: the curve table is built from a grid study (grid)")
    paths = list(search.space)
    points = itertools.product(*(search.space[p].choice for p in paths))
    return [{**dict(zip(paths, values)), "seed": spec.train.seed + r}
            for values in points for r in range(search.replicates)]


def key(run: dict) -> str:
    return json.dumps(run, sort_keys=True)


def run_spec(spec: config.StudySpec, run: dict) -> config.StudySpec:
    raw = spec.model_dump()
    raw["search"] = None
    for path, value in run.items():
        *parents, leaf = ("train.seed" if path == "seed" else path).split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config.validate(raw, source="curves")


def train(spec_dump: dict, run: dict) -> dict:
    """One run in a worker: train it to the end, return its per-epoch metrics."""
    import torch

    from vmistudy import data
    from vmistudy.trainer import Trainer

    spec = run_spec(config.StudySpec.model_validate(spec_dump), run)
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    trainer = Trainer(spec.recipe, data.load(spec.data))
    epochs = []
    for _ in range(spec.train.epochs):
        start = time.perf_counter()
        metrics = trainer.train_epoch()
        epochs.append({**metrics, "seconds": time.perf_counter() - start})
    return {"run": run, "epochs": epochs}


def done_runs(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    finished = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            finished[key(record["run"])] = record
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill, or damaged: that run is trained again
    return finished


def append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def pack(records: list[dict], runs: list[dict], out: Path) -> pd.DataFrame:
    """One row per (run, epoch), in grid order; numbers rounded to DIGITS significant digits."""
    order = {key(run): i for i, run in enumerate(runs)}
    rows = [{**record["run"], **epoch} for record in sorted(records, key=lambda r: order[key(r["run"])])
            for epoch in record["epochs"]]
    table = pd.DataFrame(rows)
    table.to_csv(out, index=False, float_format=f"%.{DIGITS}g", compression={"method": "gzip", "mtime": 0})
    return table


def hardware() -> dict:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__}


def summarize(table: pd.DataFrame, metric: str) -> None:
    """What the table says about the knobs: main effects, the best configurations, seed noise, and how well
    an early epoch ranks the configurations by their final value (what early stopping relies on)."""
    fields = list(table.columns[:table.columns.get_loc("seed")])
    table = table.assign(**{f: table[f].astype(object).fillna("none") for f in fields})
    last = table[table.epoch == table.epoch.max()]
    per_config = last.groupby(fields)[metric].agg(["mean", "std"])
    print(f"{len(per_config)} configurations x {last.seed.nunique()} seeds, final {metric} (epoch {table.epoch.max()})")
    print(f"seed noise: mean standard deviation within a configuration {per_config['std'].mean():.4f}; "
          f"spread of the configuration means {per_config['mean'].std():.4f}\n")
    for field in fields:
        effect = per_config.groupby(level=field)["mean"].agg(["mean", "min", "max"])
        print(f"{field}: " + "; ".join(f"{v}: {r['mean']:.3f} [{r['min']:.3f}, {r['max']:.3f}]"
                                       for v, r in effect.iterrows()))
    print("\nbest configurations (mean +- sd over seeds):")
    print(per_config.sort_values("mean", ascending=False).head(8).round(4).to_string())
    means = table.groupby([*fields, "epoch"])[metric].mean().unstack("epoch")
    ranks = means.rank().corr(method="pearson")[table.epoch.max()]  # Spearman: Pearson of the ranks
    print("\nrank correlation of each epoch's mean with the final one: "
          + ", ".join(f"{e}: {r:+.2f}" for e, r in ranks.items()))
    top = per_config["mean"].nlargest(math.ceil(0.05 * len(per_config))).index
    print(f"\nwhere the top 5% ({len(top)} configurations) rank among all at early epochs, what a rung sees "
          "(percentile per seed; median, lowest):")
    for early in dict.fromkeys([metric, "kl_categorical", "mi_lower_bound"]):
        cells = []
        for epoch in range(1, 5):
            at = table[table.epoch == epoch].set_index(fields)
            percentiles = pd.concat([rows[early].rank(pct=True).loc[top] for _, rows in at.groupby("seed")])
            cells.append(f"epoch {epoch}: {percentiles.median():.2f}, {percentiles.min():.2f}")
        print(f"  {early}: " + "; ".join(cells))


def _read_table(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as e:  # missing, not a CSV, not UTF-8
        raise InputError(f"--summary: cannot read {path} ({type(e).__name__}); build the table first "
                         "(the same command without --summary)") from None


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m benchmarks.curves", description=__doc__.split("\n\n")[0], examples=[
        "python -m benchmarks.curves studies/curves.yaml            # the table: about 2 h on 2 cores",
        "python -m benchmarks.curves studies/curves.yaml --summary  # what the finished table shows"])
    parser.add_argument("study", type=Path, help="a grid study, e.g. studies/curves.yaml")
    parser.add_argument("--workers", type=int, default=2, help="runs trained at once (default 2)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/curves"), help="folder of the table")
    parser.add_argument("--summary", action="store_true", help="print what the finished table shows, train nothing")
    args = parser.parse_args(argv)
    spec = load_study(args.study, [], service=True)
    runs = grid(spec)
    if args.summary:
        summarize(_read_table(args.out / TABLE), spec.search.metric)
        return
    if args.workers < 1:
        raise InputError("--workers must be >= 1")
    check_writable(args.out, "--out")
    args.out.mkdir(parents=True, exist_ok=True)
    partial = args.out / PARTIAL
    finished = done_runs(partial)
    todo = [run for run in runs if key(run) not in finished]
    print(f"{len(runs)} runs ({len(runs) // spec.search.replicates} configurations x {spec.search.replicates} seeds "
          f"x {spec.train.epochs} epochs); {len(finished)} already done, {len(todo)} to train "
          f"with {args.workers} workers", flush=True)
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context, initializer=os.nice,
                                                initargs=(10,)) as pool:  # background priority
        futures = [pool.submit(train, spec.model_dump(), run) for run in todo]
        for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
            record = future.result()
            record["seconds"] = sum(e["seconds"] for e in record["epochs"])
            append(partial, record)
            finished[key(record["run"])] = record
            elapsed = time.perf_counter() - start
            print(f"[{len(finished)}/{len(runs)}] {record['run']} final "
                  f"{spec.search.metric} {record['epochs'][-1][spec.search.metric]:.4f}; "
                  f"eta {elapsed / i * (len(todo) - i) / 60:.0f} min", flush=True)
    table = pack(list(finished.values()), runs, args.out / TABLE)
    meta = {"command": f"python -m benchmarks.curves {args.study} --workers {args.workers} --out {args.out}",
            "study": spec.model_dump(mode="json"), "runs": len(runs), "rows": len(table),
            "budget": {"configurations": len(runs) // spec.search.replicates, "seeds": spec.search.replicates,
                       "epochs": spec.train.epochs, "train_images": spec.data.subset,
                       "test_images": spec.data.test_subset, "threads_per_run": int(spec.resources.cpu),
                       "workers": args.workers},
            "training_seconds": round(sum(r["seconds"] for r in finished.values()), 1),
            "hardware": hardware(), "date": time.strftime("%Y-%m-%d")}
    (args.out / META).write_text(json.dumps(meta, indent=2) + "\n")
    print(f"table: {args.out / TABLE} ({len(table)} rows, {(args.out / TABLE).stat().st_size / 1e6:.2f} MB); "
          f"about it: {args.out / META}")


if __name__ == "__main__":
    main()
