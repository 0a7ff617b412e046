"""Driver SIGKILL anywhere: the study's driver and its Ray killed at 10 random instants, resumed after each.

benchmarks/kills.py runs the campaign (`python -m benchmarks.kills` runs it with 50 kills): a replayed study of
10 trials, its driver (`python -m vmistudy.run`, a session of its own, started as every study of the tests is)
killed with SIGKILL together with every process it started, at instants drawn uniformly over the study's
progress, and resumed with --resume once they are all gone. At the end exactly the planned trials have finished,
none went back to epoch 0 (or to an earlier epoch than it had saved), each has one MLflow run, FINISHED, holding
every epoch of every metric once, and no run is left RUNNING.
"""
from __future__ import annotations

import pytest

from benchmarks import kills
from ray_support import start

SEED = 12  # of the kill instants and the study's searcher


@pytest.mark.ray
@pytest.mark.subprocess
def test_a_driver_killed_at_10_random_instants_resumes_to_exactly_the_planned_study(tmp_path):
    tally = kills.campaign(tmp_path, kills=10, seed=SEED, start=start)
    report = "\n".join(tally.lines())
    print(report)
    assert tally.kills == 10, report
    assert len(tally.phases) >= 3, f"the kills hit too few phases of the study:\n{report}"
    assert tally.finished == tally.planned == 10, report
    assert tally.restarts == tally.went_back == 0, report
    assert tally.missing == tally.duplicated == tally.running == 0, report
    assert not tally.failures, report
