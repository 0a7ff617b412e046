"""The study's console (console.py): each configuration beside its lambda_mi = 0 twins, as the run command ends."""
from __future__ import annotations

import argparse
import shlex

from conftest import make_spec
from ray.tune.search.repeater import TRIAL_INDEX

from vmistudy import console
from vmistudy.launch import command_line

SPACE = {"mi.lambda_mi": {"choice": [2.0, 8.0]}}


def rows(values: dict[float, list[tuple[float, float]]]) -> list[dict]:
    """Trials of a paired study: {lambda: [(MI trial's bound, twin's bound) per seed]}, in Tune's config form."""
    out = []
    for lam, pairs in values.items():
        for seed, (mi, twin) in enumerate(pairs):
            for index, bound in ((2 * seed, mi), (2 * seed + 1, twin)):
                out.append({"config": {"mi.lambda_mi": lam, TRIAL_INDEX: index},
                            "metrics": {"seed": seed, "mi_lower_bound": bound, "accuracy_hungarian": bound / 4}})
    return out


def test_each_configuration_is_shown_beside_its_twins_best_first_with_paired_differences():
    spec = make_spec(search={"metric": "mi_lower_bound", "replicates": 3, "paired_baseline": True, "space": SPACE})
    lines = console.comparison(rows({2.0: [(1.0, 0.0), (1.2, 0.1), (1.1, 0.2)],
                                     8.0: [(2.0, 0.0), (2.2, 0.0), (2.4, 0.3)]}), spec)
    assert lines[0] == "lambda_mi=8  (3 seeds)" and lines[3] == "lambda_mi=2  (3 seeds)"
    bound = lines[1].split()
    assert bound[:2] == ["mi_lower_bound", "2.2"] and bound[bound.index("twin") + 1] == "0.1"
    difference = bound[bound.index("difference") + 1:]
    # paired over seeds: 2.0, 2.2, 2.1 -> mean 2.1, t(2) 4.30 * 0.1 / sqrt(3) = 0.25
    assert difference == ["+2.1", "+-", "0.25"], lines[1]
    assert lines[2].split()[0] == "accuracy_hungarian"


def test_without_twins_a_configuration_shows_its_mean_alone():
    spec = make_spec(search={"metric": "mi_lower_bound", "replicates": 2, "space": SPACE})
    trials = [{"config": {"mi.lambda_mi": 2.0, TRIAL_INDEX: i}, "metrics": {"seed": i, "mi_lower_bound": v}}
              for i, v in enumerate([1.0, 3.0])]
    lines = console.comparison(trials, spec)
    assert lines[0] == "lambda_mi=2  (2 seeds)"
    assert lines[1].split()[:4] == ["mi_lower_bound", "2", "+-", "13"] and "twin" not in lines[1]
    assert lines[2].split()[1] == "-"  # no accuracy reported


def test_the_next_commands_paste_into_a_shell():
    space = '{"mi.lambda_mi": {"choice": [5.0]}, "train.capacity.gaussian.cap": {"choice": [null, 5.0]}}'
    args = argparse.Namespace(study="studies/my study.yaml", set=[f"search.space={space}", "name=it's"])
    line = command_line("vmistudy.run", args, "--resume")
    assert shlex.split(line) == ["python", "-m", "vmistudy.run", "studies/my study.yaml", "--set",
                                 f"search.space={space}", "--set", "name=it's", "--resume"]
