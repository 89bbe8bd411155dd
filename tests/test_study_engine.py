"""The study engine's evaluation: cost per trial and in total, FE budgets, the statistics option, expensive
objectives skipped where they cannot matter, and metrics measured on the final front only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_study import load, write_study

from thresh_opt.cli import main
from thresh_opt.objectives import Evaluator
from thresh_opt.study.config import load_study

PERPLEXITY = [{"name": "loss_ratio"}, {"name": "energy_gain"}, {"name": "perplexity"}]


def test_a_loss_key_the_study_does_not_compute_fails_before_the_model_loads(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "greedy", "options": {"loss_key": "perplexity"}})
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: sampler.options.loss_key: 'perplexity' is not computed by this study" in err
    assert "Traceback" not in err and not (tmp_path / "s").exists()  # nothing created, no model loaded
    ok = write_study(tmp_path, sampler={"name": "greedy", "options": {"loss_key": "perplexity"}}, objectives=PERPLEXITY)
    assert load_study(ok)[0].sampler.options["loss_key"] == "perplexity"


def test_every_trial_records_its_cost_and_the_study_stops_at_its_fe_budget(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "random"}, trials=100, max_forward_equivalents=3.5)
    assert main(["study", "run", str(path)]) == 0
    study = load(tmp_path)
    fe = [t.user_attrs["forward_equivalents"] for t in study.trials]
    assert all(t.user_attrs["seconds"] > 0 and "cost.loss_fe" in t.user_attrs for t in study.trials)
    assert fe[0] == 0.0  # the dense baseline: the dense reference's result
    assert sum(fe[:-1]) < 3.5 <= sum(fe) and len(fe) < 100
    assert main(["study", "show", str(tmp_path / "s"), "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["cost"]
    assert cost["forward_equivalents"] == pytest.approx(sum(fe)) and cost["trials"] == len(fe)
    assert cost["reference_forward_equivalents"] >= 1.0 and cost["peak_cache_mb"] > 0
    client = MlflowClient(f"sqlite:///{tmp_path / 's' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("s").experiment_id], "tags.thresh_opt_role = 'study'")[0]
    assert parent.data.metrics["total.forward_equivalents"] == pytest.approx(sum(fe))


def test_sequential_statistics_map_the_same_levels_to_other_thresholds_at_a_stated_cost(tmp_path):
    trials = {}
    for statistics in ("dense", "sequential"):
        path = write_study(tmp_path, name=statistics, sampler={"name": "random"}, trials=6,
                           search_space={"grouping": "kind", "levels": "linear", "statistics": statistics})
        assert main(["study", "run", str(path)]) == 0
        trials[statistics] = load(tmp_path, statistics).trials
        assert load(tmp_path, statistics).user_attrs["thresh_opt:statistics"] == statistics
    for dense, sequential in zip(trials["dense"], trials["sequential"]):
        assert dense.params == sequential.params  # the random sampler's draws do not depend on values
        t_dense, t_seq = json.loads(dense.user_attrs["thresholds"]), json.loads(sequential.user_attrs["thresholds"])
        first = next(iter(t_dense))  # the first module sees no upstream threshold: both mappings agree
        assert t_dense[first] == pytest.approx(t_seq[first])
        assert dense.user_attrs["cost.stats_fe"] == 0.0  # dense statistics came with the reference pass
        if any(v > 0 for v in dense.params.values()):
            assert t_dense != t_seq and sequential.user_attrs["cost.stats_fe"] > 0.5  # a pass per module, in part


def test_rejected_greedy_candidates_skip_the_expensive_objectives(tmp_path):
    finals, studies = {}, {}
    for skip in ("never", "rejected"):
        path = write_study(tmp_path, name=skip, objectives=PERPLEXITY, trials=200,
                           baselines={"dense": True, "uniform": []},
                           search_space={"grouping": "kind", "levels": [0.3, 0.6, 0.9]},
                           sampler={"name": "greedy", "options": {"loss_inc": 1.01}},
                           evaluation={"skip_expensive": skip})
        assert main(["study", "run", str(path)]) == 0
        studies[skip] = study = load(tmp_path, skip)
        finals[skip] = study.user_attrs["thresh_opt:final"]
    assert finals["rejected"] == finals["never"]  # the decisions do not depend on the skipped objectives
    assert not [t for t in studies["never"].trials if t.state == TrialState.PRUNED]
    pruned = [t for t in studies["rejected"].trials if t.state == TrialState.PRUNED]
    assert pruned
    for t in studies["rejected"].trials:
        ratio = t.user_attrs["calibration_loss"] / t.system_attrs.get("greedy:reference", np.nan)
        if t.state == TrialState.PRUNED:  # stored with its cheap values and why
            assert t.system_attrs["greedy:role"] == "candidate" and not ratio < 1.01
            assert t.user_attrs["skipped"]["perplexity"].startswith("rejected by the calibration criterion")
            assert "perplexity" not in t.user_attrs and "energy_gain" in t.user_attrs
        else:
            assert "perplexity" in t.user_attrs
            if t.system_attrs.get("greedy:role") == "candidate":
                assert ratio < 1.01
    other = {s: sum(t.user_attrs["cost.other_fe"] for t in studies[s].trials) for s in studies}
    assert other["rejected"] < other["never"] - len(pruned) * 0.9 * other["never"] / len(studies["never"].trials)


def test_dominated_trials_skip_the_expensive_objectives(tmp_path):
    path = write_study(tmp_path, objectives=PERPLEXITY, sampler={"name": "tpe"}, trials=14,
                       baselines={"dense": True, "uniform": [0.2, 0.4]}, evaluation={"skip_expensive": "dominated"})
    assert main(["study", "run", str(path)]) == 0
    study = load(tmp_path)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and done and len(done) + len(pruned) == 14
    for t in pruned:
        reason = t.user_attrs["skipped"]["perplexity"]
        if reason.startswith("infeasible"):
            assert t.user_attrs["loss_ratio"] > 1.05
            continue
        assert reason.startswith("dominated on loss_ratio, energy_gain")
        earlier = [d for d in done if d.number < t.number and d.user_attrs["loss_ratio"] <= 1.05]
        assert any(d.user_attrs["loss_ratio"] <= t.user_attrs["loss_ratio"] and
                   d.user_attrs["energy_gain"] >= t.user_attrs["energy_gain"] for d in earlier)


def test_front_metrics_are_measured_on_the_final_front_only_and_logged(tmp_path, capsys, rwkv):
    path = write_study(tmp_path, sampler={"name": "random"}, trials=6, front_metrics=["perplexity"])
    assert main(["study", "run", str(path)]) == 0
    study = load(tmp_path)
    assert all("perplexity" not in t.user_attrs for t in study.trials)  # not computed during the search
    assert main(["study", "show", str(tmp_path / "s"), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    assert front and all("front:perplexity" in row for row in front)
    cfg, _ = load_study(path)
    evaluator = Evaluator(rwkv, ["perplexity"], calibration=cfg.calibration)
    row = front[-1]
    expected = evaluator.evaluate(json.loads(study.trials[row["trial"]].user_attrs["thresholds"])).values["perplexity"]
    assert row["front:perplexity"] == pytest.approx(expected)
    client = MlflowClient(f"sqlite:///{tmp_path / 's' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s").experiment_id
    run = client.search_runs([exp], f"tags.trial_number = '{row['trial']}'")[0]
    assert run.data.metrics["front.perplexity"] == pytest.approx(expected)
    cost = study.user_attrs["thresh_opt:front_cost"]  # the measurements' work counts in the totals
    # 32 chunks of 32 held-out tokens over 2 x 32 calibration tokens: 16 FE each; the dense trial (0) was
    # measured with the reference
    assert cost["forward_equivalents"] == pytest.approx(16 * sum(1 for r in front if r["trial"] != 0))
    # at most N front points: spread along the front, its ends included
    path = write_study(tmp_path, name="few", sampler={"name": "random"}, trials=12, front_metrics=["perplexity"],
                       front_points=2)
    assert main(["study", "run", str(path)]) == 0
    few = load(tmp_path, "few")
    front = [t.number for t in few.trials if t.state == TrialState.COMPLETE]
    measured = sorted(int(k) for k in few.user_attrs["thresh_opt:front_metrics"])
    assert len(measured) == 2 and set(measured) <= set(front)
