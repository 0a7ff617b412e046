"""Compare the trials of a study from its MLflow runs.

    python -m vmistudy.report STUDY.yaml [--out DIR]

Prints the best trials and writes DIR/report.md (default <storage>/<name>/report) with: the best trials;
lambda_mi > 0 against its lambda_mi = 0 twin, per seed and as mean +- 95% CI over seeds; mi_lower_bound
and kl_categorical over epochs overlaid (thesis figs. 4.8/4.9); one traversal row per lambda (fig. 4.4);
each pair's final figures side by side; Optuna's views of the search (history.py). The report is also logged
to the study's parent run.
"""
from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import tempfile
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from PIL import Image

from . import config, layout, tracking
from .cli import ArgumentParser, check_writable, command, load_study, quiet
from .errors import InputError

CURVES = ("mi_lower_bound", "kl_categorical")
SHOWN = ("epoch", "mi_lower_bound", "accuracy_hungarian", "accuracy_majority", "accuracy_majority_train", "nmi",
         "kl_categorical", "elbo")
SUMMARY = ("accuracy_hungarian", "accuracy_majority_train", "nmi", "mi_lower_bound", "mi_lower_bound_categorical",
           "invariance_mi", "seed_agreement", "frozen_mi_lower_bound_encoder", "frozen_mi_lower_bound_prior", "elbo")
LABELED = ("accuracy_hungarian", "accuracy_majority", "accuracy_majority_train", "nmi")  # metrics that read labels
# the picks that use no labels: the most informative categorical code, the code most stable under transformations,
# the code its seeds agree on most (a bundle's)
LABEL_FREE = ("mi_lower_bound_categorical", "invariance_mi", "seed_agreement")
RESTART_SCORES = ("mi_lower_bound_categorical", "seed_agreement")  # per run: what can keep one seed of several
PAD = 2  # torchvision make_grid's padding, to cut rows out of a traversal grid
# What the figures show of a large study (each costs MLflow calls, and more lines make a plot unreadable):
CURVE_RUNS, LAMBDA_ROWS, PAIR_FIGURES = 12, 8, 4  # best runs (and their twins), lambdas, best pairs
PAIR_NAMES = ("categorical_swaps", "contingency_heatmap", "traversal_pair")  # a pair's final figures, side by side
FETCHES = 8  # MLflow reads at a time (fetched)
RUN_ID_DIGITS = "0123456789abcdef"  # a run id is a uuid's hex: its last digit splits a search into 16 even parts


def trial_runs(tracker: tracking.StudyTracker, fields: Collection[str]) -> pd.DataFrame:
    """The study's trial runs (final metrics, params as numbers where they all are), with lambda_mi and seed.
    `fields`: what a trial's run logs (SearchSpec.trial_fields). A run logged before that rule (2026-12-02) also
    has the study's other settings, and a study resumed across it has both kinds: only `fields` are read, so
    that its runs compare alike (another param would tell the old runs from the new as configurations)."""
    mlflow.set_tracking_uri(tracker.uri)
    with _cyclic_gc_off():
        runs = _search_runs(tracker, f"tags.`{tracking.PARENT_TAG}` = '{tracker.parent_run_id}'")
    read = {f"params.{field}" for field in fields}
    runs = runs.drop(columns=[c for c in runs if c.startswith("params.") and c not in read])
    for column in [c for c in runs if c.startswith("params.")]:
        numbers = pd.to_numeric(runs[column], errors="coerce")
        if numbers.notna().all():
            runs[column] = numbers
    runs["lambda_mi"] = runs["params.mi.lambda_mi"].astype(float)
    runs["seed"] = runs["params.train.seed"].astype(int)
    return runs


def _search_runs(tracker: tracking.StudyTracker, where: str) -> pd.DataFrame:
    """mlflow.search_runs, in MLflow's order (newest first). A tracking server is asked in 16 parts at once, one
    per last digit of the run id, which its workers answer in parallel: the same server CPU, less waiting (4.4 ->
    2.6 s at 1,000 runs, 2 workers). A local store answers one search faster than 16."""
    if not tracking.served(tracker.uri):
        return mlflow.search_runs([tracker.experiment_id], where)

    def part(digit: str) -> pd.DataFrame:
        return mlflow.search_runs([tracker.experiment_id], f"{where} and attributes.run_id LIKE '%{digit}'")

    parts = fetched(part, [(digit,) for digit in RUN_ID_DIGITS])
    found = [runs for runs in parts.values() if len(runs)]
    if not found:
        return parts[(RUN_ID_DIGITS[0],)]
    return pd.concat(found, ignore_index=True).sort_values(["start_time", "run_id"], ascending=[False, True],
                                                           ignore_index=True)


@contextlib.contextmanager
def _cyclic_gc_off():
    """A search of 1,000 runs builds ~100k objects that all live to its end; every collection of the oldest
    generation rescans them all, half of the search's time. They form no cycles worth collecting meanwhile."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def configuration_columns(runs: pd.DataFrame) -> list[str]:
    """Params that differ between runs, other than lambda and seed: what defines a sampled configuration."""
    varying = [c for c in runs if c.startswith("params.") and runs[c].nunique(dropna=False) > 1]
    return [c for c in varying if c not in ("params.mi.lambda_mi", "params.train.seed")]


def _pairs(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Each lambda > 0 run beside its lambda = 0 twin (same configuration, same seed), with the differences."""
    keys = configuration_columns(runs) + ["seed"]
    shown = ["tags.mlflow.runName", "run_id", *(f"metrics.{m}" for m in metrics)]
    twins = runs[runs.lambda_mi == 0].drop_duplicates(keys)[keys + shown]  # a join, not a lookup per run: 1,000s
    merged = runs[runs.lambda_mi > 0].merge(twins, on=keys, suffixes=("", " (twin)"))
    paired = pd.DataFrame({"run": merged["tags.mlflow.runName"], "twin": merged["tags.mlflow.runName (twin)"],
                           "seed": merged["seed"], "lambda_mi": merged["lambda_mi"], "run_id": merged["run_id"],
                           "twin_id": merged["run_id (twin)"]})
    for m in metrics:
        run, twin = merged[f"metrics.{m}"], merged[f"metrics.{m} (twin)"]
        paired[m], paired[f"{m} (twin)"], paired[f"{m} diff"] = run, twin, run - twin
    return paired


def markdown(frame: pd.DataFrame) -> str:
    cells = frame.map(lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)).values.tolist()
    return "\n".join(["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns),
                      *("| " + " | ".join(row) + " |" for row in cells)])


def _mean_ci(values: pd.Series) -> str:
    """mean +- half-width of the 95% t interval over seeds."""
    values = values.dropna()
    if len(values) < 2:
        return f"{values.mean():.4f} (n={len(values)})"
    return f"{values.mean():.4f} +- {t_half_width(values.tolist()):.4f} (n={len(values)})"


def t_half_width(values: list[float]) -> float:
    """Half the width of the 95% Student t interval of the mean of `values` (two or more)."""
    from scipy.special import stdtrit  # the t quantile; here, since scipy costs half a second to import

    return float(stdtrit(len(values) - 1, 0.975) * np.std(values, ddof=1) / np.sqrt(len(values)))


def _summary(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Final metrics (the study's and SUMMARY) per configuration and lambda_mi, mean +- std over seeds."""
    keys = configuration_columns(runs) + ["lambda_mi"]
    shown = [m for m in dict.fromkeys([metric, *SUMMARY]) if f"metrics.{m}" in runs]
    rows = []
    for key, group in runs.groupby(keys, dropna=False):
        row = _configuration(keys, key) | {"seeds": len(group)}
        for m in shown:
            values = group[f"metrics.{m}"]
            row[m] = f"{values.mean():.4g} +- {values.std(ddof=1):.2g}" if len(values) > 1 else f"{values.mean():.4g}"
            row[f"_{m}"] = values.mean()
        rows.append(row)
    return pd.DataFrame(rows)


def _configuration(keys: list[str], key) -> dict:
    """A groupby key as {field: value}, `params.` dropped from the field."""
    return dict(zip([k.split(".", 1)[-1] for k in keys], key if isinstance(key, tuple) else (key,)))


def _restarts(runs: pd.DataFrame, score: str) -> pd.DataFrame:
    """Per configuration and lambda_mi with several seeds, the restart (seed) that `score` keeps, which reads no
    labels: its accuracy against the mean over the seeds, and the rank correlation of the score with accuracy
    over the seeds."""
    score, accuracy = f"metrics.{score}", "metrics.accuracy_hungarian"
    if not {score, accuracy} <= set(runs):
        return pd.DataFrame()
    keys = configuration_columns(runs) + ["lambda_mi"]
    rows = []
    for key, group in runs.dropna(subset=[score, accuracy]).groupby(keys, dropna=False):
        if len(group) > 1:
            kept = group.loc[group[score].idxmax()]
            mean = group[accuracy].mean()
            rows.append(_configuration(keys, key) | {
                "seeds": len(group), "kept seed": int(kept.seed), "its accuracy": kept[accuracy],
                "mean accuracy": mean, "gain": kept[accuracy] - mean,
                "rank correlation": spearman(group[score], group[accuracy])})
    return pd.DataFrame(rows)


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation: Pearson's of the ranks, ties sharing their mean rank (pandas' own spearman
    imports scipy.stats, a second at each report)."""
    return a.rank().corr(b.rank())


def _restarts_section(runs: pd.DataFrame) -> list[str]:
    lines = []
    for score in RESTART_SCORES:
        table = _restarts(runs, score)
        if not len(table):
            continue
        gain = table["gain"]
        lines += [f"## Restarts kept without labels: by {score}", "",
                  f"Of each configuration's seeds, the one with the highest {score} (no labels read): its "
                  "accuracy_hungarian against the mean over the seeds, and the score's rank correlation (Spearman) "
                  "with accuracy over the seeds.", "", markdown(table), "",
                  f"Over {len(table)} configurations: gain {gain.mean():+.4f} on average, positive in "
                  f"{(gain > 0).sum()}, rank correlation {table['rank correlation'].mean():+.2f} on average.", ""]
    return lines


def _picks(table: pd.DataFrame, metric: str, mode: str) -> list[str]:
    """Which configuration the study's metric picks, and beside it the label-free picks (a labelled metric) or
    the labels' pick (a label-free one)."""
    mi_models = (table.lambda_mi > 0).any()  # the twins are the comparison, not candidates
    candidates = table[table.lambda_mi > 0] if mi_models else table
    among = ", among lambda_mi > 0" if mi_models else ""
    # beside a labelled metric's pick, the label-free ones; beside a label-free metric's, the labels' own
    others = LABEL_FREE if metric in LABELED else LABELED[:1]
    chosen = {metric: mode} | {name: "max" for name in others if name != metric and f"_{name}" in table}
    lines = []
    for name, how in chosen.items():
        best = candidates.sort_values(f"_{name}", ascending=how == "min").iloc[0]
        described = ", ".join(f"{k} {best[k]:.4g}" if isinstance(best[k], float) else f"{k} {best[k]}"
                              for k in table.columns if not k.startswith("_") and k != "seeds"
                              and k not in (metric, *SUMMARY))
        labels = "uses the labels" if name in LABELED else "uses no labels"
        lines.append(f"- by {name} ({how}, mean over seeds{among}; {labels}): {described}; "
                     f"accuracy_hungarian {best.get('accuracy_hungarian', 'n/a')}")
    return lines


def fetched(fetch: Callable, calls: list[tuple]) -> dict[tuple, Any]:
    """{call: fetch(*call)}, FETCHES at a time: MLflow reads, over a tracking server each a request that mostly
    waits."""
    with ThreadPoolExecutor(FETCHES) as pool:
        return dict(zip(calls, pool.map(lambda call: fetch(*call), calls)))


def _curve_lines(client: MlflowClient, runs: pd.DataFrame, keys: Sequence[str]
                 ) -> dict[str, list[tuple[str, bool, list]]]:
    """Per metric in keys, a line per run that logged it: (label, lambda_mi = 0, its (epoch, value) points)."""
    histories = fetched(client.get_metric_history, [(run_id, key) for key in keys for run_id in runs["run_id"]])
    return {key: [(f"lambda {run['lambda_mi']:.3g}: {run['tags.mlflow.runName']}", run["lambda_mi"] == 0, points)
                  for _, run in runs.iterrows()
                  if (points := sorted((m.step, m.value) for m in histories[run["run_id"], key]))]
            for key in keys}


def _draw_curves(lines: dict[str, list[tuple[str, bool, list]]], path: Path) -> Path | None:
    """The curves of _curve_lines, one panel per metric, twins dashed; None when no run logged any."""
    if not any(lines.values()):
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lines), figsize=(6 * len(lines), 4))
    for ax, (key, runs) in zip(axes, lines.items()):
        for label, twin, points in runs:  # the label starts with lambda: matplotlib leaves out "_"-labels (trials')
            ax.plot(*zip(*points), linestyle="--" if twin else "-", label=label)
        ax.set(xlabel="epoch", ylabel=f"{key} ({'nats, ' if key in CURVES else ''}test split)", title=key)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _artifact(root: str, run_id: str, name: str, folder: Path) -> Path | None:
    """A run's final figure `name`, downloaded from its artifact root (which the search gave: asking the store
    for the run again would cost a query per figure)."""
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/figures/final/{name}.png",
                                                        dst_path=str(folder / run_id)))
    except Exception:  # noqa: BLE001 - a trial stopped early has no final figures
        return None


def _side_by_side(images: list[Path], path: Path, vertical: bool = False) -> Path:
    opened = [Image.open(p).convert("RGB") for p in images]
    sizes = [im.size for im in opened]
    width = max(w for w, _ in sizes) if vertical else sum(w for w, _ in sizes) + 8 * (len(sizes) - 1)
    height = sum(h for _, h in sizes) + 8 * (len(sizes) - 1) if vertical else max(h for _, h in sizes)
    canvas, offset = Image.new("RGB", (width, height), "white"), 0
    for im in opened:
        canvas.paste(im, (0, offset) if vertical else (offset, 0))
        offset += (im.size[1] if vertical else im.size[0]) + 8
    canvas.save(path)
    return path


def _first_row(grid: Path, folder: Path) -> Path:
    """The first row (Gaussian dim z0) of a traversal_rows grid; its rows are equal squares."""
    image = Image.open(grid)
    columns = 11  # figures.traversal_rows' default steps
    cell = (image.size[0] - PAD) // columns
    out = folder / f"row-{grid.parent.name}.png"
    image.crop((0, 0, image.size[0], cell + PAD)).save(out)
    return out


def write(spec: config.StudySpec, tracker: tracking.StudyTracker, out: Path) -> Path:
    """Print the best trials, write out/report.md with its figures, and log the folder to the study's run."""
    out.mkdir(parents=True, exist_ok=True)
    with _other_process() as other:  # the drawing on another core while MLflow is read
        views = other.submit(_optuna_section, spec, out)
        lines = _mlflow_sections(spec, tracker, out, other) + views.result()
    report = out / "report.md"
    report.write_text("\n".join(lines))
    tracker.client.log_artifacts(tracker.parent_run_id, str(out), "report")
    return report


def _other_process() -> Executor:
    """One worker, forked: it starts in milliseconds with this process' imports (a spawned one would import
    the report's frameworks again, for seconds). Forking is safe only without other threads (one could hold a
    lock the child then waits on forever): with them, as where a caller runs Ray, a thread does it."""
    if threading.active_count() > 1:
        return ThreadPoolExecutor(1)
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))


def _mlflow_sections(spec: config.StudySpec, tracker: tracking.StudyTracker, out: Path, other: Executor
                     ) -> list[str]:
    """The report's parts read from the trials' MLflow runs; prints the best trials. `other` draws the curves."""
    runs = trial_runs(tracker, spec.search.trial_fields())
    metric = spec.search.metric
    best = _best_trials(runs, metric, spec.search.mode)
    print(best.head(10).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    paired = _pairs(runs, [m for m in ("accuracy_hungarian", "mi_lower_bound", "frozen_mi_lower_bound_encoder",
                                       "frozen_mi_lower_bound_prior") if f"metrics.{m}" in runs])
    ranked = runs.loc[best.index]  # best first
    return [f"# Study {spec.name}", "", f"{len(runs)} trials; metric {metric} ({spec.search.mode}), test split.",
            "", "## Best trials", "", markdown(best.head(10)), "",
            *_summary_section(runs, metric, spec.search.mode), *_restarts_section(runs), *_pairs_section(paired),
            *_figures_section(tracker.client, ranked, paired.loc[_ranked_pairs(paired, ranked)], metric, out, other)]


def _best_trials(runs: pd.DataFrame, metric: str, mode: str) -> pd.DataFrame:
    shown = [m for m in dict.fromkeys([metric, *SHOWN]) if f"metrics.{m}" in runs]
    table = runs[["tags.mlflow.runName", "status", "seed", "lambda_mi", *configuration_columns(runs),
                  *[f"metrics.{m}" for m in shown]]]
    table = table.rename(columns=lambda c: "trial" if c == "tags.mlflow.runName" else
                         c.split(".", 1)[-1] if c.startswith(("metrics.", "params.")) else c)
    return table.sort_values(metric, ascending=mode == "min")


def _summary_section(runs: pd.DataFrame, metric: str, mode: str) -> list[str]:
    means = _summary(runs, metric)
    return ["## Mean +- std over seeds, per configuration", "",
            markdown(means[[c for c in means if not c.startswith("_")]]), "", "Picks:", "",
            *_picks(means, metric, mode), ""]


def _pairs_section(paired: pd.DataFrame) -> list[str]:
    if not len(paired):
        return []
    lines = ["## lambda_mi > 0 against its lambda_mi = 0 twin (same seed, same initial weights)", "",
             markdown(paired.drop(columns=["run_id", "twin_id"])), ""]
    for m in [c[:-5] for c in paired if c.endswith(" diff")]:
        for lam, group in paired.groupby("lambda_mi"):
            lines.append(f"- lambda {lam:.3g}: {m} difference, mean +- 95% CI over seeds: "
                         f"{_mean_ci(group[f'{m} diff'])}")
    return lines + [""]


def _ranked_pairs(paired: pd.DataFrame, ranked: pd.DataFrame) -> list:
    """The index of the pairs whose MI run ranks best, at most PAIR_FIGURES of them."""
    if not len(paired):
        return []
    rank = {run_id: i for i, run_id in enumerate(ranked["run_id"])}
    return sorted(paired.index, key=lambda i: rank[paired.at[i, "run_id"]])[:PAIR_FIGURES]


def _curve_runs(ranked: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """The CURVE_RUNS best runs and the twins of those that have one."""
    best = ranked.head(CURVE_RUNS)
    twins = paired.loc[paired.run_id.isin(best.run_id), "twin_id"] if len(paired) else []
    return ranked[ranked.run_id.isin(best.run_id) | ranked.run_id.isin(twins)]


def _lambda_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One run per lambda_mi, ascending; at most LAMBDA_ROWS lambdas, spread over the range."""
    first = runs.sort_values("lambda_mi").groupby("lambda_mi").first()
    keep = sorted({round(i * (len(first) - 1) / max(LAMBDA_ROWS - 1, 1)) for i in range(LAMBDA_ROWS)})
    return first.iloc[[i for i in keep if i < len(first)]]


def _figures_section(client: MlflowClient, ranked: pd.DataFrame, paired: pd.DataFrame, metric: str, out: Path,
                     other: Executor) -> list[str]:
    """The curves of the best runs (the thesis' two and the study's metric, drawn by `other`), z0's traversal per
    lambda and the best pairs' final figures, downloaded from the runs (`ranked`: every run, best first;
    `paired`: the pairs to show)."""
    keys = list(dict.fromkeys([*CURVES, metric]))
    curves = other.submit(_draw_curves, _curve_lines(client, _curve_runs(ranked, paired), keys), out / "curves.png")
    lines = []
    lambda_runs = _lambda_runs(ranked)["run_id"].tolist()
    wanted = [(run_id, "traversal_rows") for run_id in lambda_runs] + [
        (pair[k], name) for _, pair in paired.iterrows() for name in PAIR_NAMES for k in ("run_id", "twin_id")]
    with tempfile.TemporaryDirectory() as tmp:
        downloads, roots = Path(tmp), ranked.set_index("run_id")["artifact_uri"]
        found = fetched(lambda run_id, name: _artifact(roots[run_id], run_id, name, downloads), wanted)
        rows = [_first_row(found[r, "traversal_rows"], downloads) for r in lambda_runs if found[r, "traversal_rows"]]
        if rows:
            _side_by_side(rows, out / "lambda_rows.png", vertical=True)
            lines += ["## z0 over +-5 standard deviations of q(z0), one row per lambda_mi, ascending (fig. 4.4)", "",
                      "![lambda rows](lambda_rows.png)", ""]
        for i, pair in paired.iterrows():
            for name in PAIR_NAMES:
                images = [found[pair[k], name] for k in ("run_id", "twin_id")]
                if all(images):
                    image = _side_by_side(images, out / f"pair-{i}-{name}.png")
                    lines += [f"### {pair['run']} (lambda {pair['lambda_mi']:.3g}, left) and its twin "
                              f"{pair['twin']} (right): {name}", "", f"![{name}]({image.name})", ""]
    if curves.result():
        lines = [f"## Curves of the {CURVE_RUNS} best runs and their twins (figs. 4.8/4.9 and {metric})", "",
                 "![curves](curves.png)", "", *lines]
    return lines


def _optuna_section(spec: config.StudySpec, out: Path) -> list[str]:
    """Optuna's views of the search, drawn from the study's Optuna history (study.OptunaHistory)."""
    from . import history  # here, in the other process: Optuna and matplotlib import while MLflow is read

    lines = ["## Optuna's views of the search (one point per configuration that ran every epoch: the mean over its "
             "seeds)", ""]
    study = history.load(spec)
    if study is None:
        where = history.storage_url(spec)
        why = f"no study {spec.name} in {where}" if where else "none is kept beside a storage URI"
        return lines + [f"Not drawn: {why}.", ""]
    lines += [f"Live while the study runs: `{history.dashboard_command(spec)}`", ""]
    for name, drawn in history.draw(study, out).items():
        lines += [f"![{name}]({drawn.name})" if isinstance(drawn, Path) else f"{name}: not drawn ({drawn}).", ""]
    return lines


@command
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m vmistudy.report", description=__doc__.split("\n\n")[0], examples=[
        "python -m vmistudy.report studies/quick.yaml        # after python -m vmistudy.run studies/quick.yaml",
        "python -m vmistudy.report studies/reproduce.yaml --out reports/reproduce"])
    parser.add_argument("study", help="the study file the study was run with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="report folder (default <storage>/<name>/report)")
    parser.add_verbose()
    args = parser.parse_args(argv)
    quiet(args.verbose)
    spec = load_study(args.study, args.set, service=True, reads_data=False)  # it reads MLflow, not the images
    tracker = open_study(spec, args.study)
    out = args.out or Path(layout.experiment_path(spec)) / "report"
    check_writable(out, "--out")
    print(f"report: {write(spec, tracker, out)}")


def open_study(spec: config.StudySpec, study: str) -> tracking.StudyTracker:
    """The tracker of the study `spec` names, to read it back; InputError if it has not run (`study`: its file)."""
    storage = layout.storage_path(spec)
    _check_store(spec, storage, study)
    return tracking.find_study(spec, storage)


def _check_store(spec: config.StudySpec, storage: str, study: str) -> None:
    """A sqlite store must exist: MLflow would create an empty one (and its folders) to find no study in it."""
    uri = tracking.tracking_uri(spec, storage)
    path = uri.removeprefix("sqlite:///")
    if spec.tracking.enabled and path != uri and not os.path.isfile(path):
        field = "tracking.uri" if spec.tracking.uri else "search.storage"
        raise InputError(f"{field}: no study has run there ({path} does not exist); run it first: "
                         f"python -m vmistudy.run {study}")


if __name__ == "__main__":
    main()
