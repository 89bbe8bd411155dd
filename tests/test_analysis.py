"""Pareto front and hypervolume on a study with a known front."""

from __future__ import annotations

import optuna
import pytest

from thresh_opt import analysis


def known_study():
    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_user_attr("thresh_opt:objectives", ["loss_ratio", "energy_gain"])
    study.set_user_attr("thresh_opt:dense", {"loss_ratio": 1.0, "energy_gain": 1.0})
    # (loss ratio, energy gain): three points on the front, one dominated, one infeasible
    for values, feasible in [((1.0, 1.0), True), ((1.02, 1.5), True), ((1.05, 2.0), True), ((1.04, 1.4), True),
                             ((1.01, 3.0), False)]:
        trial = study.ask()
        trial.set_constraint("loss_ratio<=1.05", -1.0 if feasible else 1.0)
        study.tell(trial, list(values))
    return study


def test_pareto_front_skips_dominated_and_infeasible_trials():
    front = analysis.pareto_front(known_study())
    assert [t.number for t in front] == [0, 1, 2]


def test_hypervolume_of_a_known_front():
    study = known_study()
    # minimization form: (loss, -gain); reference = dense (1.0, -1.0) pushed 10% worse -> (1.1, -0.9)
    ref = analysis.reference_point(study)
    assert ref == pytest.approx([1.1, -0.9], abs=1e-6)
    # points (1.0,-1.0), (1.02,-1.5), (1.05,-2.0): staircase area against (1.1, -0.9)
    expected = (1.1 - 1.05) * (2.0 - 0.9) + (1.05 - 1.02) * (1.5 - 0.9) + (1.02 - 1.0) * (1.0 - 0.9)
    history = analysis.hypervolume_history(study)
    assert history[-1] == pytest.approx(expected, rel=1e-6)
    assert history == sorted(history)  # never shrinks as trials arrive
    assert history[3] == history[2] and history[4] == history[3]  # dominated and infeasible add nothing
