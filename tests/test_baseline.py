"""The training-based baseline: learned thresholds (real gradients through the embedded model), its
thresholds file in every command that takes one, and the comparison with the greedy search."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from thresh_opt.baseline import TrainConfig, train_thresholds
from thresh_opt.baseline.learned import _ArctanStep
from thresh_opt.calibration import CalibrationSpec, cached_activation_stats, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.study.export import ExportedThresholds

SMALL = CalibrationSpec(source="heldout", ctx_len=32, count=4, seed=0)


def test_the_surrogate_is_an_exact_step_forward_and_arctan_backward():
    z = torch.tensor([-0.5, -0.01, 0.0, 0.01, 0.5], requires_grad=True)
    y = _ArctanStep.apply(z, 4.0)
    assert y.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    y.sum().backward()
    expected = [4.0 / (2 * (1 + (math.pi / 2 * 4.0 * v) ** 2)) for v in z.detach().tolist()]
    assert z.grad.tolist() == pytest.approx(expected)


def test_training_moves_thresholds_toward_sparsity_and_the_model_is_unchanged(rwkv):
    tm = rwkv.thresholded
    chunks = calibration_chunks(rwkv, SMALL)
    init = cached_activation_stats(rwkv, SMALL).at(0.1)
    before = {k: v.clone() for k, v in tm.model.state_dict().items()}
    result = train_thresholds(tm, chunks, init, TrainConfig(steps=6, batch_size=2, lr=0.2, penalty=5.0))
    assert len(result.history) == 6 and result.forward_equivalents == pytest.approx(6 * 2 / 4 * 2)
    assert result.history[-1]["density"] < result.history[0]["density"] - 0.05
    grew = sum(result.thresholds[n] > init[n] for n in tm.names)
    assert grew > 0.9 * len(tm.names)
    assert tm.thresholds == result.thresholds  # the model is left at the learned thresholds (hard step)
    assert all(torch.equal(before[k], v) for k, v in tm.model.state_dict().items())  # frozen weights
    assert not any(p.requires_grad for p in tm.model.parameters())
    assert result.peak_memory_mb > 0


def test_a_checkpoint_resumes_training_where_it_stopped(rwkv, tmp_path):
    tm = rwkv.thresholded
    chunks = calibration_chunks(rwkv, SMALL)
    init = cached_activation_stats(rwkv, SMALL).at(0.1)
    full = train_thresholds(tm, chunks, init, TrainConfig(steps=4, batch_size=2, penalty=2.0))
    ckpt = tmp_path / "ckpt.pt"
    train_thresholds(tm, chunks, init, TrainConfig(steps=2, batch_size=2, penalty=2.0, checkpoint=str(ckpt),
                                                    checkpoint_every=2))
    resumed = train_thresholds(tm, chunks, init, TrainConfig(steps=4, batch_size=2, penalty=2.0,
                                                             checkpoint=str(ckpt), checkpoint_every=2))
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.thresholds == pytest.approx(full.thresholds, rel=1e-5)


def test_the_thresholds_file_works_in_evaluate_hardware_estimate_and_study_enqueue(tmp_path, capsys):
    thr = tmp_path / "thr.json"
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--steps", "3", "--count", "2", "--ctx-len", "32",
                 "--penalty", "3", "--output", str(thr), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["steps_done"] == 3 and json.loads(thr.read_text()) == trained["thresholds"]

    assert main(["evaluate", "embedded:rwkv4-tiny", "--thresholds", str(thr), "--objectives", "sparsity,loss_ratio",
                 "--count", "2", "--ctx-len", "32", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["objectives"]["sparsity"] > 0.1

    assert main(["hardware", "estimate", "--model", "embedded:rwkv4-tiny", "--thresholds", str(thr), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gains"]["energy"] > 1.0

    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "run_dir": str(tmp_path / "s"),
                                     "model": {"source": "embedded:rwkv4-tiny"},
                                     "calibration": {"ctx_len": 32, "count": 2},
                                     "search_space": {"grouping": "module", "levels": "linear"},
                                     "sampler": {"name": "random"}, "trials": 1, "baselines": {"dense": False,
                                                                                              "uniform": []}}))
    assert main(["study", "enqueue", str(study), "--thresholds", str(thr), "--json"]) == 0
    params = json.loads(capsys.readouterr().out)["params"]
    assert len(params) == 42 and max(params.values()) > 0
    assert main(["study", "run", str(study), "--json"]) == 0
    capsys.readouterr()
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    s = optuna.load_study(study_name="s",
                          storage=JournalStorage(JournalFileBackend(str(tmp_path / "s" / "optuna.journal"))))
    assert s.trials[0].params == params and s.trials[0].user_attrs["enqueued_from"] == str(thr)


def test_training_starts_from_a_thresholds_file_where_it_gives_one(tmp_path, capsys):
    names = [f"blocks.{b}.{k}" for b in range(6) for k in ("att.key", "att.receptance", "att.value", "att.output",
                                                              "ffn.receptance", "ffn.key", "ffn.value")]
    given = {n: 0.05 * (i + 1) for i, n in enumerate(names[:40])} | {names[40]: 0.0}  # names[41]: not given
    start = tmp_path / "start.json"
    start.write_text(json.dumps(given))
    out = tmp_path / "out.json"
    common = ["--count", "2", "--ctx-len", "32", "--steps", "1", "--lr", "1e-9", "--json"]
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-thresholds", str(start), "--output", str(out),
                 *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["init_thresholds"] == str(start)
    learned = json.loads(out.read_text())
    assert all(learned[n] == pytest.approx(v, rel=1e-6) for n, v in given.items() if v > 0)
    assert learned[names[40]] < 1e-5  # a module at 0 stays (all but) dense
    # the module the file leaves out starts where --init-sparsity puts it, as without a file
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--output", str(tmp_path / "cold.json"), *common]) == 0
    capsys.readouterr()
    cold = json.loads((tmp_path / "cold.json").read_text())
    assert learned[names[41]] == pytest.approx(cold[names[41]], rel=1e-6)
    assert learned[names[0]] != pytest.approx(cold[names[0]], rel=1e-3)
    # a `study export` folder reads the same (written by the exporter itself)
    ExportedThresholds("magnitude", given).write(tmp_path / "export")
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-thresholds", str(tmp_path / "export"),
                 "--output", str(out), *common]) == 0
    capsys.readouterr()
    assert json.loads(out.read_text()) == pytest.approx(learned, rel=1e-6)  # float32 in the export


def test_a_bad_thresholds_file_to_start_from_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"blocks.0.att.kee": 0.1}))
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-thresholds", str(bad), "--count", "2"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "blocks.0.att.kee" in err and "did you mean" in err
    folder = tmp_path / "export"
    ExportedThresholds("weight_norm", {"blocks.0.att.key": 0.1}).write(folder)
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-thresholds", str(folder), "--count", "2"]) == 2
    assert "weight_norm criterion" in capsys.readouterr().err
    bad.write_text(json.dumps({"blocks.0.att.key": -1}))
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-thresholds", str(bad), "--count", "2"]) == 2
    assert ">= 0" in capsys.readouterr().err
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-thresholds", str(tmp_path / "none.json")]) == 2
    assert "no such thresholds file" in capsys.readouterr().err


def test_bad_training_options_exit_2(capsys):
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--fine-tune"]) == 2
    assert "--save-model" in capsys.readouterr().err
    assert main(["baseline", "train", "embedded:rwkv4-tiny", "--init-sparsity", "1.5"]) == 2


def test_the_comparison_places_trained_beside_greedy(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["baseline", "compare", "embedded:rwkv4-tiny", "--loss-inc", "1.02,1.1", "--penalties", "2",
                 "--levels", "0.4,0.8", "--steps", "3", "--count", "2", "--ctx-len", "32",
                 "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    methods = [p["method"] for p in data["points"]]
    assert methods == ["greedy", "greedy", "trained"]
    for p in data["points"]:
        assert p["forward_equivalents"] > 0 and p["peak_memory_mb"] > 0 and 0 < p["values"]["sparsity"] < 1
    greedy = [p for p in data["points"] if p["method"] == "greedy"]
    assert greedy[1]["values"]["sparsity"] >= greedy[0]["values"]["sparsity"]  # a looser tolerance goes further
    report = (out / "report.md").read_text()
    assert "## Verdicts" in report and "trained penalty=2" in report and (out / "comparison.png").is_file()
