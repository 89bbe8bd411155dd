"""Refined points: warm-started threshold training from a study's own points after its search (real Optuna,
MLflow, the embedded model and the training of `baseline train`)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_study import load, write_study

from thresh_opt import keys
from thresh_opt.baseline import TrainConfig, train_thresholds
from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.cli._common import console
from thresh_opt.objectives import Evaluator

REFINE = {"targets": [1.02, 1.5], "penalties": [1.0, 2.0], "steps": 3, "batch_size": 2}
STUDY = {"sampler": {"name": "random"}, "trials": 6, "baselines": {"dense": True, "uniform": [0.3, 0.5]},
         "objectives": [{"name": "loss_ratio"}, {"name": "sparsity"}], "constraints": [],
         "refine": REFINE}


def refined_runs(tmp_path, name="s"):
    client = MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, [r for r in runs if "refined_target" in r.data.tags]


def test_a_study_refines_its_sparsest_points_by_training_and_keeps_them_apart_from_the_trials(tmp_path, capsys,
                                                                                                monkeypatch, rwkv):
    monkeypatch.setattr(console, "width", 200)  # tables unwrapped
    path = write_study(tmp_path, **STUDY)
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == 6  # the refined points are not trials
    records = {r["setting"]["target"]: r for r in out["refined"]}
    assert set(records) == {1.02, 1.5}
    chunks = calibration_chunks(rwkv, CalibrationSpec(ctx_len=32, count=2))
    evaluator = Evaluator(rwkv, ["loss_ratio", "sparsity"], calibration=CalibrationSpec(ctx_len=32, count=2))
    for target, penalty in zip(REFINE["targets"], REFINE["penalties"]):
        r = records[target]
        # the start is the sparsest trial at or below the target
        below = [t for t in done if t.user_attrs["loss_ratio"] <= target]
        start = max(below, key=lambda t: t.user_attrs["sparsity"])
        assert r["setting"]["from_trial"] == start.number
        assert r["start"] == {"loss_ratio": start.user_attrs["loss_ratio"], "sparsity": start.user_attrs["sparsity"]}
        # trained by the one training implementation, from the start's thresholds
        init = json.loads(start.user_attrs["thresholds"])
        direct = train_thresholds(rwkv.thresholded, chunks, init,
                                  TrainConfig(steps=3, batch_size=2, penalty=penalty, lr=0.05))
        assert r["thresholds"] == pytest.approx(direct.thresholds, rel=1e-5)
        assert r["thresholds"] != pytest.approx(init, rel=1e-3)  # training moved them
        # measured like any configuration, every objective the study computes
        values = evaluator.evaluate(r["thresholds"]).values
        assert r["values"]["loss_ratio"] == pytest.approx(values["loss_ratio"], rel=1e-4)
        assert r["values"]["sparsity"] == pytest.approx(values["sparsity"], rel=1e-4)
        # the training's 3 steps of 2 of the 2 chunks, forward and backward (2 FE each), and one measurement
        assert r[keys.FORWARD_EQUIVALENTS] == pytest.approx(3 * 2 + 1, abs=0.01)
    # the higher penalty from the sparser start ends sparser
    assert records[1.5]["values"]["sparsity"] > records[1.02]["values"]["sparsity"]
    assert out["cost"]["refined_forward_equivalents"] == pytest.approx(2 * 7, abs=0.02)
    assert out["cost"]["total_forward_equivalents"] == pytest.approx(
        out["cost"]["forward_equivalents"] + out["cost"]["reference_forward_equivalents"] + 14, abs=0.02)
    # tracked: a nested run per refined point with its setting, values and thresholds
    client, runs = refined_runs(tmp_path)
    assert sorted(r.data.tags["refined_target"] for r in runs) == ["1.02", "1.5"]
    run = next(r for r in runs if r.data.tags["refined_target"] == "1.5")
    assert run.data.params["penalty"] == "2.0" and run.data.params["steps"] == "3"
    assert run.data.metrics["sparsity"] == pytest.approx(records[1.5]["values"]["sparsity"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["thresholds.json"]
    # plotted with the trials, as their own series
    assert "refined (trained from trial)" in (tmp_path / "s" / keys.PLOTS_DIR / "pareto_front.html").read_text()
    # show prints them
    assert main(["study", "show", str(tmp_path / "s")]) == 0
    shown = capsys.readouterr().err  # tables go to stderr, JSON to stdout
    assert "refined points" in shown and "p 2, 3 steps" in shown

    # a rerun of the same file trains nothing again; another setting refines again
    assert main(["study", "run", str(path), "--json"]) == 0
    again = {r["setting"]["target"]: r for r in json.loads(capsys.readouterr().out)["refined"]}
    assert again == records and len(refined_runs(tmp_path)[1]) == 2
    path = write_study(tmp_path, **{**STUDY, "refine": {**REFINE, "steps": 1}})
    assert main(["study", "run", str(path), "--json"]) == 0
    changed = {r["setting"]["target"]: r for r in json.loads(capsys.readouterr().out)["refined"]}
    assert all(r["setting"]["steps"] == 1 for r in changed.values())
    assert changed[1.5][keys.FORWARD_EQUIVALENTS] == pytest.approx(1 * 2 + 1, abs=0.01)

    # exported like a trial: the thresholds `baseline train --init-thresholds` and `evaluate` read
    out_dir = tmp_path / "exported"
    assert main(["study", "export", str(tmp_path / "s"), "--refined", "1.5", "--out", str(out_dir)]) == 0
    assert json.loads((out_dir / "thresholds.json").read_text()) == changed[1.5]["thresholds"]
    report = json.loads((out_dir / "report.json").read_text())
    assert report["refined"]["target"] == 1.5 and report["criterion"] == "magnitude" and "seneca" in report
    capsys.readouterr()
    assert main(["study", "export", str(tmp_path / "s"), "--refined", "1.1"]) == 2
    assert "--refined 1.1: no refined point at this target; refined targets: 1.02, 1.5" in capsys.readouterr().err


def test_a_target_no_trial_reaches_is_recorded_as_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(console, "width", 200)
    path = write_study(tmp_path, **{**STUDY, "trials": 2, "baselines": {"dense": False, "uniform": [0.5, 0.7]},
                                    "refine": {**REFINE, "targets": [1.000001], "penalties": 1.0}})
    assert main(["study", "run", str(path), "--json"]) == 0
    (record,) = json.loads(capsys.readouterr().out)["refined"]
    assert record["skipped"] == "no feasible trial with loss_ratio <= 1.000001"
    assert record["setting"]["from_trial"] is None and "thresholds" not in record
    assert main(["study", "show", str(tmp_path / "s")]) == 0
    assert "no feasible trial with loss_ratio <= 1.000001" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("refine", "space", "match"),
    [
        ({"targets": [0.99]}, None, "refine.targets: targets are calibration-loss ratios above 1"),
        ({"targets": [1.03, 1.05], "penalties": [1, 2, 3]}, None, "refine: penalties: one number, or "
                                                                  "one per target (2)"),
        ({"penalties": [0]}, None, "refine: penalties must be > 0"),
        ({"steps": 0}, None, "refine.steps: Input should be greater than or equal to 1"),
        ({"epochs": 3}, None, "refine.epochs: unknown field"),
        ({}, {"grouping": "kind", "levels": "linear", "criterion": "weight_norm"},
         "refine: training learns magnitude thresholds; the search space's criterion is 'weight_norm'"),
    ],
)
def test_bad_refine_settings_exit_2_naming_file_and_field(tmp_path, capsys, refine, space, match):
    extra = {"search_space": space} if space else {}
    path = write_study(tmp_path, **{**STUDY, "refine": refine, **extra})
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "s" / "optuna.journal").exists()  # refused when the file loads


def test_a_diverged_training_is_kept_as_a_failed_refined_point_and_tried_again(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(console, "width", 200)
    # Adam moves log-thresholds by about lr per step: with lr 1e4 they run off to nan, a real failure
    path = write_study(tmp_path, **{**STUDY, "trials": 3, "refine": {**REFINE, "targets": [1.5], "penalties": 1.0,
                                                                     "lr": 1e4}})
    assert main(["study", "run", str(path), "--json"]) == 0  # the search's trials are kept; the study finishes
    out = json.loads(capsys.readouterr().out)
    (record,) = out["refined"]
    assert "thresholds must be finite" in record["error"] and "thresholds" not in record
    assert record[keys.FORWARD_EQUIVALENTS] == pytest.approx(3 * 2, abs=0.01)  # its 3 steps were done and count
    assert len(load(tmp_path).get_trials(states=(TrialState.COMPLETE,))) == 3
    assert main(["study", "show", str(tmp_path / "s")]) == 0
    assert "failed: " in capsys.readouterr().err
    assert main(["study", "run", str(path), "--json"]) == 0  # a failed target is tried again
    capsys.readouterr()
    _client, runs = refined_runs(tmp_path)
    assert len(runs) == 2 and all(r.info.status == "FAILED" and "finite" in r.data.tags["error"] for r in runs)
    assert main(["study", "export", str(tmp_path / "s"), "--refined", "1.5"]) == 2
