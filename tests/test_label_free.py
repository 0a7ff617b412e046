"""benchmarks.label_free on constructed tables whose answers are known."""
from __future__ import annotations

import re

import pandas as pd
import pytest

from benchmarks import label_free
from vmistudy import replay


def table(rows: dict[tuple[float, float], list[tuple[float, float, float]]]) -> pd.DataFrame:
    """(lambda_mi, cap) -> per seed (accuracy, MI bound, ELBO) at the last of two epochs."""
    records = []
    for (lam, cap), seeds in rows.items():
        for seed, (accuracy, mi, elbo) in enumerate(seeds):
            for epoch in (1, 2):
                last = epoch == 2  # only the final epoch counts: earlier ones carry decoys
                records.append({"mi.lambda_mi": lam, "train.capacity.gaussian.cap": cap, "seed": seed, "epoch": epoch,
                                "accuracy_hungarian": accuracy if last else 0.99,
                                "mi_lower_bound_categorical": mi if last else -mi, "elbo": elbo})
    return pd.DataFrame.from_records(records)


ROWS = {(1.0, 2.0): [(0.50, 1.0, -100), (0.60, 2.0, -110), (0.40, 0.5, -90)],   # MI keeps 0.60, ELBO 0.40
        (3.0, 2.0): [(0.45, 2.2, -120), (0.45, 2.1, -121), (0.45, 2.0, -119)],  # highest MI, lower accuracy
        (0.0, 2.0): [(0.30, 0.0, -80), (0.20, 0.1, -85), (0.40, 0.0, -95)]}


def printed(frame: pd.DataFrame, tmp_path, capsys) -> str:
    """What `python -m benchmarks.label_free --table T` prints for the table `frame`."""
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    label_free.main(["--table", str(path)])
    return capsys.readouterr().out


def test_restarts_keep_the_seed_each_score_prefers_and_compare_it_with_the_mean_seed():
    curves = replay.CurveTable(table(ROWS))
    gains = label_free.restarts(label_free.finals(curves, "accuracy_hungarian"), "accuracy_hungarian")
    assert gains["mi_lower_bound_categorical"] == pytest.approx([0.10, 0.0, 0.20 - 0.30])
    assert gains["elbo"] == pytest.approx([-0.10, 0.0, 0.30 - 0.30])
    assert gains["best seed (labels)"] == pytest.approx([0.10, 0.0, 0.10])


def test_early_restarts_keep_the_seed_the_bound_prefers_at_each_epoch_and_score_its_final_accuracy(tmp_path, capsys):
    curves = replay.CurveTable(table(ROWS))
    gains = label_free.early_restarts(curves, "accuracy_hungarian")
    # epoch 1's bound is the decoy, reversed: it keeps the seed with the lowest final bound
    assert gains[(1.0, 2.0)] == pytest.approx([0.40 - 0.50, 0.60 - 0.50])
    assert gains[(3.0, 2.0)] == pytest.approx([0.0, 0.0])
    assert gains[(0.0, 2.0)] == pytest.approx([0.0, 0.20 - 0.30])
    out = printed(table(ROWS), tmp_path, capsys)
    assert "early restarts: 3 seeds to epoch k, the one the categorical MI bound prefers then trained to epoch 2" in out
    assert "epoch  1: -5.00 +- 63.53 points; 4 trial-epochs of 6; the same final metric as the last epoch's pick " \
           "in 50%" in out
    assert "epoch  2: +5.00 +- 63.53 points; 6 trial-epochs of 6; the same final metric as the last epoch's pick " \
           "in 100%" in out


def test_a_group_of_one_configuration_prints_its_gains_without_an_interval(tmp_path, capsys):
    """A study of one configuration and its twins (best_mnist's) has one configuration on each side of lambda."""
    out = printed(table(ROWS), tmp_path, capsys)
    assert out.count("  lambda_mi = 0 (1 configuration):") == 2  # restarts, early restarts
    assert re.search(r"the categorical MI bound +-10\.00 points \(one configuration: no interval\)", out)
    assert "epoch  2: -10.00 points (one configuration: no interval); 6 trial-epochs of 6" in out


def test_the_command_prints_both_answers_and_says_when_the_label_free_pick_misses(tmp_path, capsys):
    out = printed(table(ROWS), tmp_path, capsys)
    assert "lambda_mi > 0 (2 configurations)" in out  # and its one twin configuration without an interval (above)
    assert "the labels pick lambda_mi=1 cap=2: accuracy_hungarian 0.5000" in out
    assert "the categorical MI bound picks lambda_mi=3 cap=2: accuracy_hungarian 0.4500, 5.0 points below " \
           "(goal 2: not met)" in out
    assert "the ELBO picks lambda_mi=1 cap=2: accuracy_hungarian 0.5000, 0.0 points below (goal 2: met)" in out


def test_the_picks_are_also_made_at_each_lambda_mi_among_its_configurations(tmp_path, capsys):
    rows = {**ROWS, (3.0, 6.0): [(0.46, 1.9, -118)] * 3}  # at lambda 3 the bound keeps cap 2 (0.45), the labels 6
    out = printed(table(rows), tmp_path, capsys)
    assert "configurations at lambda_mi=3 (2): the labels pick lambda_mi=3 cap=6: accuracy_hungarian 0.4600" in out
    assert "  the categorical MI bound picks lambda_mi=3 cap=2: accuracy_hungarian 0.4500, 1.0 points below " \
           "(goal 2: met)" in out
    assert "the ELBO picks lambda_mi=3 cap=6: accuracy_hungarian 0.4600, 0.0 points below (goal 2: met)" in out
    assert "at lambda_mi=1" not in out  # one configuration there: nothing to choose


def test_a_table_without_lambda_mi_is_one_group(tmp_path, capsys):
    frame = table(ROWS).drop(columns="mi.lambda_mi").rename(columns={"train.capacity.gaussian.cap": "train.beta"}) \
        .assign(**{"train.beta": lambda f: f.index // 6})  # 3 configurations
    out = printed(frame, tmp_path, capsys)
    # one group under each of the two restart questions
    assert out.count("configurations):") == 2 == out.count("all configurations (3 configurations):")
    assert "lambda_mi" not in out and "the labels pick beta=0: accuracy_hungarian 0.5000" in out


@pytest.mark.parametrize("args, field", [(["--metric", "purity"], "--metric"), (["--table", "nowhere.csv"], "--table")])
def test_bad_arguments_are_one_line_and_exit_2(args, field, capsys):
    with pytest.raises(SystemExit) as exited:
        label_free.main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}")


def test_a_study_that_has_not_run_is_refused_and_no_store_is_made(tmp_path, capsys):
    from ray_support import tiny_study

    with pytest.raises(SystemExit) as exited:
        label_free.main(["--study", str(tiny_study(tmp_path))])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: search.storage: no study has run there")
    assert not (tmp_path / "results").exists()


def test_a_run_stopped_early_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "t.csv"
    frame = table(ROWS)
    frame.drop(frame.index[(frame["mi.lambda_mi"] == 3.0) & (frame.seed == 1) & (frame.epoch == 2)]) \
        .to_csv(path, index=False)
    with pytest.raises(SystemExit) as exited:
        label_free.main(["--table", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --table {path}: the run of lambda_mi=3 cap=2 at seed 1 has 1 epochs, others 2 "
                   "(stopped early?); the restart questions compare whole runs"]


def test_one_seed_per_configuration_is_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    table({k: v[:1] for k, v in ROWS.items()}).to_csv(path, index=False)
    with pytest.raises(SystemExit) as exited:
        label_free.main(["--table", str(path)])
    assert exited.value.code == 2 and "restarts need two or more" in capsys.readouterr().err


def test_a_table_with_the_invariance_metric_scores_it_too(tmp_path, capsys):
    frame = table(ROWS)
    # the invariance score keeps the seed the labels keep, and picks the labels' configuration
    frame["invariance_mi"] = frame["accuracy_hungarian"] * 2
    out = printed(frame, tmp_path, capsys)
    assert "the code's invariance I(c; c')" in out
    assert "the code's invariance I(c; c') picks lambda_mi=1 cap=2: accuracy_hungarian 0.5000, 0.0 points below " \
           "(goal 2: met)" in out
    gains = label_free.restarts(label_free.finals(replay.CurveTable(frame), "accuracy_hungarian"), "accuracy_hungarian")
    assert gains["invariance_mi"] == pytest.approx(gains["best seed (labels)"])
