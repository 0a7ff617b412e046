"""MLflow tracking of real studies: the embedded sqlite store, and a real `mlflow server` on 127.0.0.1."""
from __future__ import annotations

import pytest

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from conftest import PYTHON
from ray_support import results, run_study, saved_epochs, start, stop_group, tiny_study
from vmistudy import report
from vmistudy.cli import load_study
from vmistudy.tracking import ROLE_TAG, TRIAL_TAG

pytestmark = pytest.mark.ray

PNG = b"\x89PNG\r\n\x1a\n"


def child_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(ROLE_TAG) != "study"]


def assert_runs_match_trials(client: MlflowClient, experiment: Path, name: str) -> None:
    """One run per trial, each metric at every epoch up to the trial's last exactly once, every run ended.

    MLflow is the complete record. Tune's result.json may lack the epochs a killed driver had not yet synced
    to storage (it does so with its experiment state, see README "Resume"), never repeats one.
    """
    trials = results(experiment)
    runs = {r.data.tags[TRIAL_TAG]: r for r in child_runs(client, name)}
    assert len(runs) == len(trials)
    # Tune's logs: each trial's result.json (read above) and progress.csv; no TensorBoard files, which nothing reads
    assert len(list(experiment.glob("*/progress.csv"))) == len(trials)
    assert not list(experiment.rglob("events.out.tfevents*")), "Tune's TensorBoard logger is on"
    for history in trials.values():
        run = runs[history[0]["trial_id"]]
        assert run.info.status == "FINISHED", run.info.status
        epochs = [r["epoch"] for r in history]
        assert epochs == sorted(set(epochs)), f"Tune's record repeats an epoch: {epochs}"
        for key in ("mi_lower_bound", "accuracy_hungarian", "elbo", "kl_categorical", "temperature"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs[-1] + 1)), f"{key}: steps {sorted(steps)}, epochs {epochs}"
        assert run.data.params["mi.lambda_mi"] == str(history[-1]["lambda_mi"])


def test_embedded_store_records_every_trial_epoch_and_figure(tmp_path):
    study = tiny_study(tmp_path, tracking={"figures_every": 2, "log_model": True})
    code, log = run_study(study, log=tmp_path / "run.log")
    assert code == 0, log[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    assert_runs_match_trials(client, tmp_path / "results" / "tiny", "tiny")

    exp = client.get_experiment_by_name("tiny")
    assert exp.artifact_location.endswith(f"{tmp_path}/results/mlartifacts/tiny")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'study'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials"] == 4
    assert "search.space.mi.lambda_mi" in parent.data.params
    for run in child_runs(client, "tiny"):
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        if run.data.metrics["epoch"] == 3:  # ran to the end: final figures and the model
            folder = Path(client.download_artifacts(run.info.run_id, "figures/final", str(tmp_path / run.info.run_id)))
            pngs = sorted(folder.glob("*.png"))
            assert {p.stem for p in pngs} >= {"categorical_swaps", "contingency_heatmap", "reconstructions"}
            assert all(p.read_bytes()[:8] == PNG for p in pngs)


def test_resumed_study_has_no_duplicate_runs_or_steps(tmp_path):
    study = tiny_study(tmp_path, data__train_size=4096, train__epochs=5, search__scheduler__name="none",
                       tracking={"figures_every": 0, "log_model": False})
    experiment = tmp_path / "results" / "tiny"
    driver = start([PYTHON, "-m", "vmistudy.run", str(study)], tmp_path / "first.log")
    try:
        deadline = time.time() + 300
        while max(saved_epochs(experiment).values(), default=0) < 2:
            assert time.time() < deadline and driver.poll() is None, "no trial reached epoch 2"
            time.sleep(0.5)
        driver.kill()
        driver.wait()
    finally:
        stop_group(driver.pid)
    code, log = run_study(study, "--resume", log=tmp_path / "resume.log")
    assert code == 0, log[-3000:]
    assert_runs_match_trials(MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db"), experiment, "tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", method="POST" if body else "GET",
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.server
def test_real_mlflow_server_receives_every_run_metric_and_image(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(PYTHON).parent / "mlflow")
    server = subprocess.Popen([mlflow_bin, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                               "--artifacts-destination", str(tmp_path / "server-artifacts")],
                              stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=5)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(1)
        study = tiny_study(tmp_path, tracking={"uri": base, "figures_every": 0, "log_model": False})
        code, log = run_study(study, log=tmp_path / "run.log")
        assert code == 0, log[-3000:]

        experiment_id = rest(base, "experiments/get-by-name?experiment_name=tiny")["experiment"]["experiment_id"]
        runs = rest(base, "runs/search", {"experiment_ids": [experiment_id], "max_results": 100})["runs"]
        trials = {h[0]["trial_id"]: h for h in results(tmp_path / "results" / "tiny").values()}
        children = [r for r in runs if any(t["key"] == TRIAL_TAG for t in r["data"].get("tags", []))]
        assert len(children) == len(trials) == 4
        for run in children:
            run_id = run["info"]["run_id"]
            trial_id = next(t["value"] for t in run["data"]["tags"] if t["key"] == TRIAL_TAG)
            history = rest(base, f"metrics/get-history?run_id={run_id}&metric_key=mi_lower_bound")["metrics"]
            assert sorted(int(m["step"]) for m in history) == [r["epoch"] for r in trials[trial_id]]
            assert run["info"]["status"] == "FINISHED"
            if len(trials[trial_id]) == 3:
                listed = rest(base, f"artifacts/list?run_id={run_id}&path=figures/final")
                assert any(f["path"].endswith(".png") for f in listed.get("files", []))
        # the report asks a server in 16 parts, by the run id's last digit: every trial run once, newest first
        spec = load_study(str(study), [], service=True)
        read = report.trial_runs(report.open_study(spec, str(study)), spec.search.trial_fields())
        assert sorted(read.run_id) == sorted(r["info"]["run_id"] for r in children)
        assert read.start_time.is_monotonic_decreasing and read.lambda_mi.notna().all()
    finally:
        stop_group(server.pid)  # the whole group: the server's workers too
    assert server.poll() is not None


def test_report_compares_pairs_and_is_logged_to_the_study_run(tmp_path):
    study = tiny_study(tmp_path, search__algorithm="grid", search__replicates=2, search__paired_baseline=True,
                       search__space={"mi.lambda_mi": {"choice": [5.0]}}, search__scheduler__name="none",
                       tracking={"figures_every": 0, "log_model": False}, mi__fresh_q_steps=5)
    code, log = run_study(study, log=tmp_path / "run.log")
    assert code == 0, log[-3000:]
    # the run ends with the configuration beside its twins, the paired difference, and where to look next
    assert log.count("lambda_mi = 0 twin of lambda_mi=5") == 2 and "lambda_mi=5  (2 seeds)" in log, log[-3000:]
    assert re.search(r"accuracy_hungarian .* twin .* difference [+-]", log) and "report:  python -m" in log
    done = subprocess.run([PYTHON, "-m", "vmistudy.report", str(study), "--out", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## lambda_mi > 0 against its lambda_mi = 0 twin" in text
    assert text.count("- lambda 5: accuracy_hungarian difference, mean +- 95% CI over seeds") == 1
    assert "(n=2)" in text
    assert "## Mean +- std over seeds, per configuration" in text
    # the study's metric reads the labels, so the label-free pick is printed beside it
    assert "- by accuracy_hungarian (max, mean over seeds, among lambda_mi > 0; uses the labels)" in text
    assert "- by mi_lower_bound_categorical (max, mean over seeds, among lambda_mi > 0; uses no labels)" in text
    assert "- by invariance_mi (max, mean over seeds, among lambda_mi > 0; uses no labels)" in text
    # of each configuration's 2 seeds (lambda 5, and the twins), the one the MI bound keeps
    assert "## Restarts kept without labels" in text and "Over 2 configurations: gain " in text
    # benchmarks.label_free --study reads the same runs back as a learning-curve table, epoch by epoch
    from benchmarks import label_free

    table = label_free.study_table(str(study), "accuracy_hungarian")
    assert table.fields == ["mi.lambda_mi"] and table.seeds == [0, 1]
    read = sorted((lam, seed, [row["accuracy_hungarian"] for row in curve])
                  for (lam,), by_seed in table.curves.items() for seed, curve in by_seed.items())
    reported = sorted((rows[0]["lambda_mi"], rows[0]["seed"], [row["accuracy_hungarian"] for row in rows])
                      for rows in results(tmp_path / "results" / "tiny").values())
    assert read == reported and len(read) == 4
    # the trials' eq. 4.8 bounds (mi.fresh_q_steps) reach the tables, each twin's beside its run
    assert "frozen_mi_lower_bound_prior (twin)" in text
    assert "- lambda 5: frozen_mi_lower_bound_prior difference, mean +- 95% CI over seeds" in text
    for image in ("curves.png", "lambda_rows.png", "pair-0-categorical_swaps.png", "pair-0-contingency_heatmap.png"):
        assert (tmp_path / "report" / image).read_bytes()[:8] == PNG, image
    # the curves: the thesis' two panels and the study's own metric, 600 pixels each (the PNG header's width)
    assert "best runs and their twins (figs. 4.8/4.9 and accuracy_hungarian)" in text
    assert int.from_bytes((tmp_path / "report" / "curves.png").read_bytes()[16:20], "big") == 3 * 600
    client = MlflowClient(f"sqlite:///{tmp_path}/results/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'study'")
    assert "report/report.md" in {f.path for f in client.list_artifacts(parent.info.run_id, "report")}


def test_pairs_join_each_run_to_its_twin_of_the_same_configuration_and_seed():
    from vmistudy import report

    def run(name, lam, seed, cap, acc):
        return {"tags.mlflow.runName": name, "run_id": f"id-{name}", "lambda_mi": lam, "seed": seed,
                "params.mi.lambda_mi": lam, "params.train.seed": seed, "params.cap": cap, "metrics.acc": acc}

    runs = pd.DataFrame([run("a", 5.0, 0, None, 0.9), run("a0", 0.0, 0, None, 0.5), run("b", 5.0, 1, None, 0.8),
                         run("c", 2.0, 0, 2.0, 0.7), run("c0", 0.0, 0, 2.0, 0.6), run("d", 5.0, 0, 2.0, 0.4)])
    paired = report._pairs(runs, ["acc"])
    assert list(zip(paired.run, paired.twin)) == [("a", "a0"), ("c", "c0"), ("d", "c0")]  # b's seed has no twin
    assert paired["acc diff"].round(6).tolist() == [0.4, 0.1, -0.2] and paired.twin_id.tolist()[0] == "id-a0"


def test_the_restart_kept_is_each_configurations_seed_with_the_highest_mi_bound():
    from vmistudy import report

    def run(lam, seed, cap, mi, acc):
        return {"lambda_mi": lam, "seed": seed, "params.mi.lambda_mi": lam, "params.train.seed": seed,
                "params.cap": cap, "metrics.mi_lower_bound_categorical": mi, "metrics.accuracy_hungarian": acc}

    runs = pd.DataFrame([run(5.0, 0, 2.0, 2.1, 0.6), run(5.0, 1, 2.0, 2.2, 0.9), run(5.0, 2, 2.0, 2.0, 0.3),
                         run(0.0, 0, 2.0, 1.5, 0.5), run(0.0, 1, 2.0, 1.9, 0.4),
                         run(5.0, 0, 6.0, 2.0, 0.7)])  # one seed: nothing to choose
    table = report._restarts(runs, "mi_lower_bound_categorical")
    assert table[["cap", "lambda_mi", "seeds", "kept seed"]].values.tolist() == [[2.0, 0.0, 2, 1], [2.0, 5.0, 3, 1]]
    assert table["gain"].round(6).tolist() == [-0.05, 0.3] and table["rank correlation"].round(6).tolist() == [-1, 1]
    text = "\n".join(report._restarts_section(runs))
    assert "Over 2 configurations: gain +0.1250 on average, positive in 1, rank correlation +0.00 on average" in text
    assert "by seed_agreement" not in text  # a solo study's runs have no seed_agreement
    assert report._restarts(runs, "seed_agreement").empty
    # a bundle's runs also carry seed_agreement: a second table keeps the seed that agrees most with the others
    runs["metrics.seed_agreement"] = [0.7, 0.6, 0.8, 0.5, 0.5, None]
    text = "\n".join(report._restarts_section(runs))
    assert "## Restarts kept without labels: by mi_lower_bound_categorical" in text
    assert "## Restarts kept without labels: by seed_agreement" in text
    table = report._restarts(runs, "seed_agreement")
    assert table[["lambda_mi", "kept seed"]].values.tolist() == [[0.0, 0], [5.0, 2]]  # a tie: the first seed


def test_beside_a_label_free_metrics_pick_the_report_gives_the_labels_pick():
    from vmistudy import report

    accuracy, agreement = [0.63, 0.75, 0.73, 0.9], [1.5, 1.7, 1.6, 1.8]
    table = pd.DataFrame({"cap": [2.0, 5.0, 10.0, 5.0], "lambda_mi": [5.0, 5.0, 5.0, 0.0],
                          "accuracy_hungarian": map(str, accuracy), "_accuracy_hungarian": accuracy,
                          "seed_agreement": map(str, agreement), "_seed_agreement": agreement,
                          "_mi_lower_bound_categorical": [2.19, 2.21, 2.2, 2.1]})
    picks = report._picks(table, "seed_agreement", "max")
    assert picks[0].startswith("- by seed_agreement (max, mean over seeds, among lambda_mi > 0; uses no labels): "
                               "cap 5, lambda_mi 5")  # the twins (lambda_mi 0) are the comparison, not candidates
    assert picks[1].startswith("- by accuracy_hungarian (max, mean over seeds, among lambda_mi > 0; uses the labels): "
                               "cap 5") and len(picks) == 2  # no other label-free pick beside a label-free metric
    labelled = report._picks(table, "accuracy_hungarian", "max")
    assert [line.split(" (")[0] for line in labelled] == ["- by accuracy_hungarian", "- by mi_lower_bound_categorical",
                                                          "- by seed_agreement"]


def test_the_reports_search_pauses_the_cyclic_collector_and_restores_it_as_it_was():
    import gc

    from vmistudy import report

    assert gc.isenabled()
    with pytest.raises(RuntimeError), report._cyclic_gc_off():
        assert not gc.isenabled()
        raise RuntimeError("a failed search")
    assert gc.isenabled()
    gc.disable()
    try:
        with report._cyclic_gc_off():
            pass
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_the_reports_rank_correlation_is_spearmans_with_ties():
    from scipy.stats import spearmanr

    from vmistudy import report

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 7).astype(float), rng.normal(size=7)  # ties in a
        assert report.spearman(pd.Series(a), pd.Series(b)) == pytest.approx(spearmanr(a, b).statistic)
