"""The study engine with real Optuna, MLflow and the embedded model: runs, resumes, constraints, errors."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from thresh_opt.cli import main
from thresh_opt.study.config import REPO_DIR, load_space

FAST = {"model": {"source": "embedded:rwkv4-tiny"}, "calibration": {"ctx_len": 32, "count": 2},
        "search_space": {"grouping": "kind", "levels": "linear"},
        "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}],
        "constraints": [{"objective": "loss_ratio", "max": 1.05}],
        "baselines": {"dense": True, "uniform": [0.5]}}


def write_study(tmp_path, name="s", **overrides):
    cfg = {**FAST, "name": name, "run_dir": str(tmp_path / name), **overrides}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def load(tmp_path, name="s"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / name / "optuna.journal")))
    return optuna.load_study(study_name=name, storage=storage)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_a_study_runs_with_constraints_and_is_tracked(tmp_path, capsys, sampler):
    path = write_study(tmp_path, sampler=sampler and {"name": sampler}, trials=8)
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(study.trials) == 8 and len(done) == 8
    assert done[0].params == dict.fromkeys(done[0].params, 0.0)  # the enqueued dense baseline comes first
    assert all(any(k.startswith("constraints:") for k in t.system_attrs) for t in done)
    assert out["front"] and all(r["loss_ratio"] <= 1.05 for r in out["front"])
    client = MlflowClient(f"sqlite:///{tmp_path / 's' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("s")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if r.data.tags.get("thresh_opt_role") == "study"]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(nested) == 8
    assert "loss_ratio" in nested[0].data.metrics and "sparsity.blocks.0.att.key" in nested[0].data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id, "study")}
    assert {"study/pareto_front.json", "study/pareto_front.html", "study/hypervolume.png",
            "study/sparsity_heatmap.png"} <= artifacts
    assert parent[0].data.params["sampler"] == sampler and "version.optuna" in parent[0].data.params


def test_rerunning_resumes_without_repeating(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "random"}, trials=4)
    assert main(["study", "run", str(path)]) == 0
    first = {t.number: t.params for t in load(tmp_path).trials}
    assert main(["study", "run", str(path), "--trials", "7"]) == 0
    study = load(tmp_path)
    assert len(study.trials) == 7
    assert {t.number: t.params for t in study.trials[:4]} == first
    assert sum(1 for t in study.trials if t.params and all(v == 0.0 for v in t.params.values())) == 1  # dense once
    client = MlflowClient(f"sqlite:///{tmp_path / 's' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("s").experiment_id], max_results=100)
    assert sum(1 for r in runs if "trial_number" in r.data.tags) == 7
    capsys.readouterr()
    assert main(["study", "show", str(tmp_path / "s"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["trials"] == 7 and shown["hypervolume"] >= 0


def test_export_writes_thresholds_and_report(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "random"}, trials=2)
    assert main(["study", "run", str(path)]) == 0
    assert main(["study", "export", str(tmp_path / "s"), "--trial", "1", "--out", str(tmp_path / "x")]) == 0
    thresholds = json.loads((tmp_path / "x" / "thresholds.json").read_text())
    modules = [m for group in load(tmp_path).user_attrs["thresh_opt:groups"].values() for m in group]
    # trial 1 is the uniform 0.5 baseline: positive thresholds, except where half the inputs are already zero
    assert sorted(thresholds) == sorted(modules) and sum(v > 0 for v in thresholds.values()) > len(modules) // 2
    assert (tmp_path / "x" / "thresholds.safetensors").is_file()
    report = json.loads((tmp_path / "x" / "report.json").read_text())
    assert "energy_gain" in report["objectives"]
    assert report["seneca"]["gains"]["energy"] == pytest.approx(report["objectives"]["energy_gain"])
    assert main(["study", "export", str(tmp_path / "s"), "--trial", "9"]) == 2
    assert "no such trial" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"trials": 0}, "trials: Input should be greater than or equal to 1"),
        ({"sampler": {"name": "cmaes"}}, "sampler.name: unknown sampler 'cmaes'; allowed: greedy, hybrid"),
        ({"objectives": [{"name": "speed"}]}, "objectives.0.name: unknown objective 'speed'"),
        ({"constraints": [{"objective": "loss_ratio"}]}, "constraints.0: give exactly one of max"),
        ({"search_space": {"grouping": "layer"}}, "search_space.grouping: Input should be"),
        ({"modle": {}}, "modle: unknown field; allowed: name, model, calibration"),
        ({"sampler": {"name": "tpe", "options": {"n_startup": 3}}},
         "sampler.options.n_startup: not an option of TPESampler"),
        ({"search_space": "missing.yaml"}, "missing.yaml: (file): no such file"),
        ({"sampler": {"name": "greedy", "options": {"loss_key": "perplexity"}}},
         "sampler.options.loss_key: 'perplexity' is not computed by this study"),
        ({"sampler": {"name": "hybrid", "options": {"loss_inc": [1.01, 0.99]}}},
         "sampler.options.loss_inc: loss_inc must be"),
        ({"front_metrics": ["speed"]}, "front_metrics.0: unknown objective 'speed'"),
        ({"front_metrics": ["accuracy"]}, "tasks: objective 'accuracy' needs lm-eval tasks"),
        ({"tasks": ["piqa"]}, "tasks: lm-eval tasks are given but no objective runs them"),
        ({"tasks": ["/no/such/folder"], "front_metrics": ["accuracy"]},
         "tasks: task 'folder': folder /no/such/folder does not exist"),
        ({"evaluation": {"cache_mb": 0}}, "evaluation.cache_mb: Input should be greater than or equal to 1"),
        ({"evaluation": {"skip_expensive": "always"}}, "evaluation.skip_expensive: Input should be 'never'"),
        ({"search_space": {"statistics": "layerwise"}}, "search_space.statistics: Input should be 'auto'"),
    ],
)
def test_malformed_study_files_exit_2_naming_file_and_field(tmp_path, capsys, content, match):
    path = write_study(tmp_path, **content)
    code = main(["study", "run", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert match in err and "Traceback" not in err
    if "missing.yaml" not in match:
        assert str(path) in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_space_file(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("grouping: kind\nlevels: [0.1, 1.5]\n")
    path = write_study(tmp_path, search_space="space.yaml")
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{space}: levels" in err and "between 0 and 0.99" in err


def test_a_trial_that_raises_is_stored_as_fail_and_the_study_goes_on(tmp_path):
    from thresh_opt.study.config import load_study
    from thresh_opt.study.driver import StudyRun, run_study
    from thresh_opt.study.executors import SerialExecutor

    cfg, space = load_study(write_study(tmp_path, sampler={"name": "random"}, trials=4))
    executor = SerialExecutor(cfg, space)
    real = executor.worker.evaluator.evaluate
    calls = []

    def evaluate_failing_once(thresholds, **kwargs):  # the one injected fault: the evaluator raises on the 2nd trial
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated evaluation failure")
        return real(thresholds, **kwargs)

    executor.worker.evaluator.evaluate = evaluate_failing_once
    study = run_study(StudyRun(cfg, space, tmp_path / "s"), executor)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.COMPLETE) == 3
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert failed.user_attrs["error"] == "RuntimeError: simulated evaluation failure"


def test_greedy_module_order_option(tmp_path, capsys):
    from thresh_opt.samplers.factory import make_sampler
    from thresh_opt.study.config import SamplerConfig

    cands = {"a": [0.0, 0.5], "b": [0.0, 0.5]}
    reverse = make_sampler(SamplerConfig(name="greedy", options={"order": "reverse"}), cands, 0, 10)
    assert list(reverse.search_space) == ["b", "a"]
    path = write_study(tmp_path, sampler={"name": "greedy", "options": {"order": "sideways"}})
    assert main(["study", "run", str(path)]) == 2
    assert "sampler.options.order: 'sideways'; allowed: forward, reverse" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["embedded-rwkv4.yaml", "embedded-rwkv4-greedy-early.yaml", "embedded-rwkv4-tpe.yaml",
                                  "embedded-rwkv4-saliency.yaml",
                                  "embedded-rwkv4-saliency-back.yaml", "embedded-rwkv4-saliency-kinds.yaml",
                                  "rwkv4-169m.yaml", "opt-125m.yaml"])
def test_the_shipped_study_files_are_valid(name):
    from thresh_opt.study.config import REPO_DIR, load_study

    cfg, space = load_study(REPO_DIR / "studies" / name)  # checked as `study run` checks them, no model loaded
    assert space.statistics_for(cfg.sampler.name) == ("sequential" if cfg.sampler.name == "greedy" else "dense")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO_DIR / "search_spaces").glob("*.yaml")))
def test_the_shipped_search_spaces_are_valid(name):
    space = load_space(REPO_DIR / "search_spaces" / name)  # as `study run` loads it
    levels = space.level_list()
    assert levels is None or (levels[0] == 0.0 and levels == sorted(set(levels)) and max(levels) <= 0.99)


def test_the_journal_is_synced_once_per_trial_state_change_and_reads_as_optunas(tmp_path, monkeypatch):
    import os

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from thresh_opt import compat

    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    path = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="j", storage=compat.journal_storage(path))
    synced.clear()
    study.enqueue_trial({"x": 0.5})  # a WAITING trial: synced
    for _ in range(3):  # the first ask takes the enqueued trial (a state change: synced), the others are new
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("a", 1.0)
        study.tell(trial, trial.params["x"])  # synced: with it every earlier line
    assert len(synced) == 1 + 1 + 3
    assert len(path.read_text().splitlines()) > 12  # one line per write, most of them not synced alone
    plain = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(path))))
    assert [(t.state, t.params, t.user_attrs, t.value) for t in plain.trials] == \
        [(t.state, t.params, t.user_attrs, t.value) for t in study.trials]
    assert plain.trials[0].params == {"x": 0.5} and len(plain.trials) == 3
