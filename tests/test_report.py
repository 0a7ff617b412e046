"""The report's reading of a study's MLflow runs, on a real sqlite store written by the project's own trackers."""
from __future__ import annotations

from conftest import make_spec
from vmistudy import report, tracking

SPACE = {"train.temperature.rate": {"loguniform": [1e-3, 1e-2]}}


def test_a_study_resumed_across_the_trimmed_params_reads_its_old_and_new_runs_alike(tmp_path):
    """Trial runs logged before 2026-12-02 carry every setting as a param (fields=None), later ones only what the
    trial varies: a study resumed across that change is read as the same configurations, and an old MI run is
    paired with the new run of its twin."""
    def spec(lambda_mi: float, rate: float):
        return make_spec(name="mixed", mi={"lambda_mi": lambda_mi}, train={"temperature": {"rate": rate}},
                         search={"storage": str(tmp_path), "space": SPACE, "paired_baseline": True},
                         tracking={"system_metrics": False})

    study_file = tmp_path / "mixed.yaml"
    study_file.write_text("name: mixed\n")
    study = spec(5.0, 1e-3)
    tracker = tracking.start_study(study, study_file, str(tmp_path))
    fields = study.search.trial_fields()
    trials = [(5.0, 1e-3, None, 0.9), (0.0, 1e-3, fields, 0.6), (5.0, 1e-2, fields, 0.8), (0.0, 1e-2, None, 0.7)]
    for i, (lambda_mi, rate, logged, accuracy) in enumerate(trials):
        run = tracker.trial(f"t{i}", f"trial_{i}", spec(lambda_mi, rate), "node", fields=logged)
        run.log_epoch({"accuracy_hungarian": accuracy})
        tracker.client.set_terminated(run.run_id)
        assert (len(tracker.client.get_run(run.run_id).data.params) > len(fields)) == (logged is None)

    runs = report.trial_runs(tracker, fields)
    assert report.configuration_columns(runs) == ["params.train.temperature.rate"]
    paired = report._pairs(runs, ["accuracy_hungarian"])
    assert sorted(zip(paired.run, paired.twin, paired["accuracy_hungarian diff"].round(6))) == [
        ("trial_0", "trial_1", 0.3), ("trial_2", "trial_3", 0.1)]
