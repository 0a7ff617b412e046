"""Replayed studies: a learning-curve table looked up at the nearest point, and a 50-trial study through the real
service (local Ray, Optuna, Replicates, ASHA, checkpoints, MLflow) whose reported numbers are the table's."""
from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import make_spec, write_study
from benchmarks import scale, study_efficiency
from ray_support import results, run_study
from vmistudy import config, replay
from vmistudy.errors import InputError
from vmistudy.tracking import TRIAL_TAG

LAMBDAS, BETAS, CAPS, SEEDS, EPOCHS = (0.0, 1.0, 10.0), (1.0, 2.0), (None, 5.0), (0, 1), 4


def accuracy(lam: float, beta: float, cap: float | None, seed: int, epoch: int) -> float:
    """A made-up curve with a distinct value for every point, seed and epoch."""
    return 0.1 + 0.02 * epoch + 0.01 * lam + 0.003 * beta + (0.05 if cap else 0.0) + 0.0007 * seed


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    rows = [{"mi.lambda_mi": lam, "train.beta": beta, "train.capacity.gaussian.cap": cap, "seed": seed,
             "epoch": epoch, "step": 10 * epoch, "accuracy_hungarian": accuracy(lam, beta, cap, seed, epoch),
             "mi_lower_bound": lam * epoch / 10, "kl_categorical": (1 + lam) * epoch / 20, "elbo": -100.0 - epoch,
             "seconds": 0.5}
            for lam, beta, cap, seed in itertools.product(LAMBDAS, BETAS, CAPS, SEEDS)
            for epoch in range(1, EPOCHS + 1)]
    path = tmp_path_factory.mktemp("table") / "curves.csv.gz"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def replayed_study(name: str, tmp_path, table_path, **search) -> dict:
    """A study file's contents: the table replayed by Optuna, 2 seeds per configuration, 4 trials at a time."""
    return {"name": name, "data": {"name": "synthetic"},
            "model": {"hidden": 32, "gaussian_dims": 4, "categories": 4}, "train": {"epochs": EPOCHS},
            "mi": {"lambda_mi": 1.0}, "replay": {"table": str(table_path)},
            "search": {"metric": "accuracy_hungarian", "algorithm": "optuna", "replicates": 2, "max_concurrent": 4,
                       "storage": str(tmp_path / "results"), **search},
            "tracking": {"figures_every": 0, "log_model": False}}


def spec_at(table_path, **sections):
    return make_spec(replay={"table": str(table_path)}, train={"epochs": EPOCHS, **sections.pop("train", {})},
                     **sections)


def test_a_table_point_is_found_at_the_nearest_configuration(table_path):
    table = replay.read(str(table_path))
    assert table.fields == ["mi.lambda_mi", "train.beta", "train.capacity.gaussian.cap"]
    assert table.nearest({"mi.lambda_mi": 0.0, "train.beta": 1.2, "train.capacity.gaussian.cap": None}) == \
        (0.0, 1.0, None)
    # lambda spans decades from 0, so it is linear: 4 is nearer 1 than 10; a cap of 4 is nearer 5 than no cap
    assert table.nearest({"mi.lambda_mi": 4.0, "train.beta": 1.9, "train.capacity.gaussian.cap": 4.0}) == \
        (1.0, 2.0, 5.0)
    curve, seconds = table.curve(spec_at(table_path, mi={"lambda_mi": 9.0}, train={"beta": 2.0, "seed": 1}))
    assert [m["epoch"] for m in curve] == [1, 2, 3, 4] and seconds == [0.5] * 4
    assert [m["accuracy_hungarian"] for m in curve] == [accuracy(10.0, 2.0, None, 1, e) for e in range(1, 5)]


@pytest.mark.parametrize("change, message", [
    ({"search": {"space": {"train.lr": {"choice": [0.1, 0.2]}}}}, "search.space.train.lr: the replayed table has no"),
    ({"search": {"replicates": 3}}, "train.seed: the replayed table has seeds [0, 1]; this study needs [0, 1, 2]"),
    ({"train": {"epochs": 5}, "search": {}}, "train.epochs: the replayed table has 4 epochs per run, got 5"),
    ({"search": {"metric": "nmi"}}, "search.metric: the replayed table has no nmi column (it has step,"),
    ({"search": {"scheduler": {"metric": "kl_z0"}}}, "search.scheduler.metric: the replayed table has no kl_z0"),
])
def test_a_study_the_table_cannot_replay_is_refused_naming_the_field(table_path, change, message):
    spec = spec_at(table_path, **change)
    with pytest.raises(InputError) as error:
        replay.read(str(table_path)).check(spec)
    assert str(error.value).startswith(message)


def test_a_file_that_is_not_a_table_is_refused_in_one_line(tmp_path):
    path = tmp_path / "not-a-table.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"^replay.table: .*not a learning-curve table"):
        replay.read(str(path))


@pytest.mark.ray
def test_a_50_trial_replayed_study_reports_the_tables_numbers_to_tune_and_mlflow(tmp_path, table_path):
    raw = replayed_study("replayed", tmp_path, table_path, num_samples=25,
                         space={"mi.lambda_mi": {"choice": list(LAMBDAS)}, "train.beta": {"uniform": [1.0, 2.0]},
                                "train.capacity.gaussian.cap": {"choice": list(CAPS)}},
                         scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 2})
    start = time.perf_counter()
    code, log = run_study(write_study(tmp_path / "replayed.yaml", raw), log=tmp_path / "run.log")
    print(f"50 replayed trials through the service in {time.perf_counter() - start:.1f} s")
    assert code == 0, log[-3000:]
    table = replay.read(str(table_path))
    trials = results(tmp_path / "results" / "replayed")
    assert len(trials) == 50
    stopped_early = 0
    client = MlflowClient(f"sqlite:///{tmp_path / 'results'}/mlflow.db")
    for rows in trials.values():
        point = table.nearest({"mi.lambda_mi": rows[0]["config"]["mi.lambda_mi"],
                               "train.beta": rows[0]["config"]["train.beta"],
                               "train.capacity.gaussian.cap": rows[0]["config"]["train.capacity.gaussian.cap"]})
        curve = table.curves[point][rows[0]["seed"]]
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        assert [r["accuracy_hungarian"] for r in rows] == [m["accuracy_hungarian"] for m in curve[:len(rows)]]
        stopped_early += len(rows) < EPOCHS
        run = client.search_runs([client.get_experiment_by_name("replayed").experiment_id],
                                 f"tags.`{TRIAL_TAG}` = '{rows[0]['trial_id']}'")[0]
        logged = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "accuracy_hungarian"))
        assert logged == [(r["epoch"], r["accuracy_hungarian"]) for r in rows]
        assert run.info.status == "FINISHED"
        # a trial's params are what it varies (the searched fields, the seed, lambda_mi); the study's run has the rest
        assert set(run.data.params) == {*raw["search"]["space"], "train.seed", "mi.lambda_mi"}
        assert float(run.data.params["train.beta"]) == rows[0]["config"]["train.beta"]
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.params["replay.table"] == str(table_path) and parent.data.params["train.epochs"] == str(EPOCHS)
    assert stopped_early > 0, "ASHA stopped some replayed trials early"


@pytest.mark.ray
def test_a_discrete_space_trains_each_configuration_once_and_the_study_ends_when_it_is_exhausted(tmp_path, table_path):
    raw = replayed_study("exhausted", tmp_path, table_path, num_samples=20, startup_trials=2,
                         space={"mi.lambda_mi": {"choice": list(LAMBDAS)},
                                "train.capacity.gaussian.cap": {"choice": list(CAPS)}},
                         scheduler={"name": "none"})
    code, log = run_study(write_study(tmp_path / "exhausted.yaml", raw), log=tmp_path / "run.log")
    assert code == 0, log[-3000:]
    assert f"proposed had all been tried: the space is exhausted or the search has converged; it ends after " \
           f"{len(LAMBDAS) * len(CAPS)}" in log
    trials = results(tmp_path / "results" / "exhausted").values()
    configurations = [(rows[0]["config"]["mi.lambda_mi"], rows[0]["config"]["train.capacity.gaussian.cap"],
                       rows[0]["seed"]) for rows in trials]
    assert sorted(configurations, key=str) == sorted(itertools.product(LAMBDAS, CAPS, SEEDS), key=str)
    assert all(len(rows) == EPOCHS for rows in trials)


def test_the_efficiency_benchmarks_default_strategy_is_the_services_default_search(tmp_path):
    """Its "default" row must measure what a study that says nothing gets (the table's own grid dropped)."""
    def search(strategy):
        return study_efficiency.spec(strategy, 7, 3, study_efficiency.TABLE, str(tmp_path), 2, 96).search

    default, service = search("default"), config.SearchSpec()
    assert (default.algorithm, default.startup_trials, default.multivariate, default.scheduler) == \
        (service.algorithm, service.startup_trials, service.multivariate, service.scheduler)
    assert (default.seed, default.replicates, default.num_samples) == (7, 1, 96)
    assert {name: search(name).algorithm for name in ("random", "tpe+asha kl", "gp")} == \
        {"random": "random", "tpe+asha kl": "optuna", "gp": "gp"}


def test_the_good_set_is_stable_without_seed_noise_and_unstable_with_it():
    """benchmarks.study_efficiency says how much of its good set is the table's seed noise."""
    def table(noise):  # 40 configurations 1 point apart, 3 seeds each, the last epoch's metric only
        rng = np.random.default_rng(1)
        return SimpleNamespace(curves={(p,): {s: [{"m": p / 100 + noise * rng.normal()}] for s in range(3)}
                                       for p in range(40)})

    assert study_efficiency.good_set_stability(table(0.0), "m", draws=200) == (1.0, 2)  # top 5%: the best 2
    stay, ever = study_efficiency.good_set_stability(table(0.03), "m", draws=200)
    assert stay < 0.9 and ever > 2


def test_the_ratio_to_random_has_an_interval_that_covers_it_and_excludes_1_only_when_the_costs_differ():
    """benchmarks.study_efficiency prints each median's ratio to random's with a 95% bootstrap interval."""
    rng = np.random.default_rng(2)
    same, base = rng.exponential(100, 50), rng.exponential(100, 50)
    low, high = study_efficiency.ratio_interval(list(same), list(base))
    assert low < np.median(same) / np.median(base) < high and low < 1 < high
    low, high = study_efficiency.ratio_interval(list(same / 3), list(base))
    assert low < np.median(same / 3) / np.median(base) < high < 1
    assert study_efficiency.ratio_interval([50.0] * 10, [100.0] * 10) == (0.5, 0.5)


def test_the_scale_study_has_new_configurations_for_all_its_trials(tmp_path):
    """benchmarks.scale asks for 1,000 trials of the 96-point table. As choices its points would all be tried
    after 288 trials and the study would end there (a configuration proposed again is told, not run); its
    all-number knobs are ranges instead, each spanning the table's values, and a trial replays the nearest point."""
    search = config.load(scale.study_file(tmp_path, 1000, None, scale.TABLE)).search
    assert search.num_samples * search.replicates == 999
    assert search.algorithm == config.SearchSpec().algorithm  # the service's default searcher, not the grid
    assert {field: param.kind for field, param in search.space.items()} == {
        "mi.lambda_mi": "uniform", "train.temperature.min": "uniform", "train.temperature.rate": "loguniform",
        "train.beta": "uniform", "train.capacity.gaussian.cap": "choice"}
    assert scale.ranged({"choice": [True, False]}) == {"choice": [True, False]}  # a switch is no range
    table = replay.read(str(scale.TABLE))
    for end in (0, 1):  # the ranges' ends replay the table's extreme points
        values = {field: param.choice[0] if param.kind == "choice" else getattr(param, param.kind)[end]
                  for field, param in search.space.items()}
        point = table.nearest(values)
        for field, value in zip(table.fields, point):
            if search.space[field].kind != "choice":
                assert value == sorted(p[table.fields.index(field)] for p in table.points)[-end]
