"""benchmarks.bundle_study matches each bundle member with the same model trained as a trial of its own, and
refuses a study with nothing to bundle before it runs anything."""
from __future__ import annotations

import pytest
from ray.tune.search.repeater import TRIAL_INDEX

from benchmarks import bundle_study
from conftest import REPO, make_spec

SEARCH = {"replicates": 2, "paired_baseline": True, "space": {"mi.lambda_mi": {"choice": [3.0]}}}


def test_bundle_members_and_solo_trials_are_found_under_the_same_keys():
    solo, bundled = make_spec(search=SEARCH), make_spec(search={**SEARCH, "bundle": True})
    models = [{"seed": seed, "lambda_mi": lam, "epoch": 2, "elbo": -100.0 - 10 * seed - lam}
              for seed in (0, 1) for lam in (3.0, 0.0)]
    solo_rows = [{**m, "epoch": epoch, "trial_id": f"t{i}", "config": {"mi.lambda_mi": 3.0, TRIAL_INDEX: i}}
                 for i, m in enumerate(models) for epoch in (1, 2)]  # each trial's last row is its final one
    bundle_row = {"trial_id": "b", "epoch": 2, "config": {"mi.lambda_mi": 3.0, TRIAL_INDEX: 0}, "members": models}
    found = {key: m["elbo"] for key, m in bundle_study.models(solo_rows, solo).items()}
    assert found == {key: m["elbo"] for key, m in
                     bundle_study.models([{**bundle_row, "epoch": 1}, bundle_row], bundled).items()}
    assert found[((("mi.lambda_mi", 3.0),), 1, 0.0)] == -110.0 and len(found) == 4


def test_a_study_of_one_member_per_configuration_is_refused(capsys):
    with pytest.raises(SystemExit) as exited:
        bundle_study.main([str(REPO / "studies" / "quick.yaml"), "--set", "search.replicates=1",
                           "--set", "search.paired_baseline=false"])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: search.replicates: a bundle needs 2 or more members"), err
