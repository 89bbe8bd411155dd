"""The evaluator and its objectives on the embedded models, including real lm-eval on local tasks."""

from __future__ import annotations

import pytest

from thresh_opt import UserError
from thresh_opt.calibration import CalibrationSpec, cached_activation_stats
from thresh_opt.objectives.evaluator import OBJECTIVES, Evaluator
from thresh_opt.objectives.lm_eval_tasks import LmEvalRunner, parse_task

CAL = CalibrationSpec(ctx_len=64, count=4)


@pytest.fixture
def evaluator(rwkv, tmp_path):
    return Evaluator(rwkv, ["loss_ratio", "sparsity", "perplexity", "next_word_accuracy"], calibration=CAL,
                     cache=tmp_path, eval_chunks=4, next_word_limit=32)


def test_dense_configuration_reproduces_the_reference(evaluator):
    result = evaluator.evaluate({})
    assert result.values["loss_ratio"] == 1.0
    assert result.values == evaluator.dense.values


def test_thresholds_raise_loss_and_sparsity(evaluator, rwkv, tmp_path):
    stats = cached_activation_stats(rwkv, CAL, cache=tmp_path)
    mild = evaluator.evaluate(stats.at(0.3)).values
    strong = evaluator.evaluate(stats.at(0.8)).values
    dense = evaluator.dense.values
    assert dense["sparsity"] < mild["sparsity"] < strong["sparsity"]
    assert strong["loss_ratio"] > 1.0 and mild["loss_ratio"] < strong["loss_ratio"]
    assert strong["perplexity"] > dense["perplexity"]


def test_calibration_and_evaluation_text_do_not_overlap(rwkv):
    lines = rwkv.heldout_text.splitlines()
    cal, ev = rwkv.heldout_part("calibration").splitlines(), rwkv.heldout_part("evaluation").splitlines()
    assert cal and ev and cal + ev == lines  # two halves by position: no line is in both


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objectives": ["loss_ratio", "bogus"]}, "unknown objective 'bogus'; allowed: calibration_loss"),
        ({"objectives": ["accuracy"]}, "needs lm-eval tasks"),
    ],
)
def test_objective_errors(rwkv, kwargs, match):
    with pytest.raises(UserError, match=match):
        Evaluator(rwkv, **kwargs)


def test_every_objective_has_a_direction():
    assert {o.direction for o in OBJECTIVES.values()} == {"minimize", "maximize"}


def test_task_folder_errors(tmp_path, shared_data):
    with pytest.raises(UserError, match="does not exist"):
        parse_task(str(tmp_path / "piqa"))
    (tmp_path / "piqa").mkdir()
    with pytest.raises(UserError, match=r"holds no test.jsonl"):
        parse_task(str(tmp_path / "piqa"))
    (tmp_path / "mytask").mkdir()
    (tmp_path / "mytask" / "test.jsonl").write_text((shared_data / "piqa" / "validation.jsonl").read_text()[:2000])
    with pytest.raises(UserError, match="'mytask' is not an lm-eval task"):
        LmEvalRunner(None, None, [str(tmp_path / "mytask")])


def test_real_lm_eval_on_local_tasks_sees_the_thresholds(rwkv, shared_data, tmp_path):
    tasks = [str(shared_data / "piqa"), f"lambada_openai={shared_data / 'lambada_openai'}"]
    ev = Evaluator(rwkv, ["accuracy", "loss_ratio"], calibration=CAL, tasks=tasks, limit=12, cache=tmp_path)
    dense = ev.dense
    assert set(dense.tasks) == {"piqa", "lambada_openai"}
    assert 0.0 <= dense.values["accuracy"] <= 1.0
    assert dense.values["accuracy"] == pytest.approx(
        (dense.tasks["piqa"]["acc"] + dense.tasks["lambada_openai"]["acc"]) / 2)
    again = ev.evaluate({})
    assert again.tasks == dense.tasks  # the same fixed subset every time
    wrecked = ev.evaluate(dict.fromkeys(rwkv.thresholded.names, 5.0))
    assert wrecked.tasks["lambada_openai"]["perplexity"] != dense.tasks["lambada_openai"]["perplexity"]
    assert wrecked.values["loss_ratio"] > 1.05


def test_hardware_objectives_follow_sparsity(rwkv, tmp_path):
    ev = Evaluator(rwkv, ["energy_gain", "latency_gain", "energy"], calibration=CAL, cache=tmp_path)
    assert ev.dense.values["energy_gain"] == ev.dense.values["latency_gain"] == 1.0
    stats = cached_activation_stats(rwkv, CAL, cache=tmp_path)
    half, most = ev.evaluate(stats.at(0.5)), ev.evaluate(stats.at(0.8))
    assert 1.0 < half.values["energy_gain"] < most.values["energy_gain"]
    assert 1.0 < half.values["latency_gain"] < most.values["latency_gain"]
    assert most.values["energy"] < half.values["energy"] < ev.dense.values["energy"]
    assert most.hardware["dense_energy"] == pytest.approx(ev.dense.values["energy"])


def test_evaluate_command(capsys, tmp_path, shared_data):
    import json

    from thresh_opt.cli import main

    base = ["evaluate", "embedded:opt-tiny", "--uniform-sparsity", "0.4", "--count", "4", "--ctx-len", "64",
            "--cache-dir", str(tmp_path)]
    assert main([*base, "--objectives", "loss_ratio,sparsity,energy_gain,accuracy", "--tasks",
                 str(shared_data / "winogrande"), "--limit", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["objectives"]) >= {"loss_ratio", "sparsity", "energy_gain", "accuracy"}
    assert out["tasks"]["winogrande"]["acc"] == out["objectives"]["accuracy"]
    assert out["objectives"]["sparsity"] > out["dense"]["sparsity"]
    assert main([*base, "--objectives", "loss_ratio,speed"]) == 2
    assert "unknown objective 'speed'" in capsys.readouterr().err
    assert main([*base, "--objectives", "accuracy", "--tasks", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
