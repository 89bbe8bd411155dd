"""`thresh-opt study compare` and the hybrid sampler, with real Optuna, MLflow and the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from thresh_opt import analysis
from thresh_opt.cli import main
from thresh_opt.samplers.factory import make_sampler
from thresh_opt.study.config import SamplerConfig

TEMPLATE = {"model": {"source": "embedded:rwkv4-tiny"}, "calibration": {"ctx_len": 32, "count": 2},
            "search_space": {"grouping": "kind", "levels": "linear"},
            "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}],
            "constraints": [{"objective": "loss_ratio", "max": 1.05}],
            "baselines": {"dense": True, "uniform": [0.5]}}


def write(tmp_path, **overrides):
    (tmp_path / "tmpl.yaml").write_text(yaml.safe_dump({**TEMPLATE, "name": "tmpl"}))
    cfg = {"name": "cmp", "study": "tmpl.yaml", "trials": 8, "seeds": [0, 1], "budgets": [4, 8],
           "run_dir": str(tmp_path / "run"),
           "samplers": [{"name": "random"},
                        {"label": "greedy", "name": "greedy", "options": {"loss_inc": [1.01, 1.05]}},
                        {"label": "hybrid", "name": "hybrid", "options": {"base": "nsga2", "loss_inc": [1.02],
                                                                          "greedy_share": 0.5}}],
           **overrides}
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def studies(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "run" / "optuna.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def test_a_small_comparison_runs_reports_tracks_and_resumes(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["study", "compare", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    stored = studies(tmp_path)
    # the greedy sampler is deterministic: one study; the others one per seed
    assert sorted(stored) == ["cmp.greedy.s0", "cmp.hybrid.s0", "cmp.hybrid.s1", "cmp.random.s0", "cmp.random.s1"]
    firsts = {json.dumps([t.params for t in s.trials[:2]], sort_keys=True) for s in stored.values()}
    assert len(firsts) == 1  # the same enqueued baselines, first, in every study
    assert all(len(s.trials) == 8 for s in stored.values())
    rows = {r["sampler"]: r for r in out["rows"]}
    assert set(rows) == {"random", "greedy", "hybrid"} and rows["random"]["seeds"] == 2
    for s in stored.values():  # the table is the studies' own hypervolume history
        hv = analysis.hypervolume_history(s)
        assert len(hv) == 8 and hv == sorted(hv) and hv[-1] > 0
    randoms = [analysis.hypervolume_history(stored[f"cmp.random.s{i}"]) for i in (0, 1)]
    assert rows["random"]["hv@4"]["mean"] == pytest.approx(sum(h[3] for h in randoms) / 2)
    hybrid = stored["cmp.hybrid.s0"]
    phases = [t.system_attrs.get("hybrid:phase") for t in hybrid.trials]
    assert phases[:2] == ["base", "base"] and phases[2:6] == ["greedy"] * 4 and phases[6:] == ["base"] * 2
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "reference point" in report and "| greedy | 1 |" in report and "dense 1" in report
    for png in ("hypervolume.png", "fronts.png"):
        assert (tmp_path / "run" / "report" / png).stat().st_size > 5000

    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cmp")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parent = next(r for r in runs if r.data.tags.get("thresh_opt_role") == "compare")
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["thresh_opt_study"] for r in nested) == sorted(stored)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md",
                                                                                      "report/hypervolume.png"}

    # resume with a larger budget: the same studies go on, the same MLflow runs are updated
    assert main(["study", "compare", str(path), "--trials", "10", "--json"]) == 0
    capsys.readouterr()
    stored = studies(tmp_path)
    assert len(stored) == 5 and all(len(s.trials) == 10 for s in stored.values())
    runs = client.search_runs([exp.experiment_id], max_results=100)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == 5
    assert len(client.get_metric_history(nested[0].info.run_id, "hypervolume")) == 10


@pytest.mark.parametrize("overrides, match", [
    ({"samplers": [{"name": "annealing"}]}, "samplers.0.name"),
    ({"samplers": [{"name": "tpe"}, {"name": "tpe"}]}, "distinct `label`"),
    ({"budgets": [4, 20]}, "exceeds trials"),
    ({"samplers": [{"name": "tpe", "options": {"n_startup": 3}}]}, "samplers.0"),
    ({"samplers": [{"name": "hybrid", "options": {"base": "cmaes"}}]}, "samplers.0.options.base"),
    ({"study": "missing.yaml"}, "no such file"),
    ({"references": [{"label": "learned", "thresholds": "missing.json"}]}, "references.0.thresholds"),
])
def test_bad_comparison_files_exit_2_naming_file_and_field(tmp_path, capsys, overrides, match):
    path = write(tmp_path, **overrides)
    assert main(["study", "compare", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing created before the input is known good


def test_budgets_in_forward_equivalents_and_reference_points(tmp_path, capsys):
    from thresh_opt.models import load_model

    names = load_model("embedded:rwkv4-tiny").thresholded.names
    (tmp_path / "dense.json").write_text(json.dumps(dict.fromkeys(names, 0.0)))
    (tmp_path / "all-zero.json").write_text(json.dumps(dict.fromkeys(names, 1e9)))  # nothing passes: 100% sparse
    path = write(tmp_path, trials=40, budgets=[10], forward_equivalents=4.0, baselines={"dense": True, "uniform": []},
                 samplers=[{"name": "random"}, {"label": "greedy", "name": "greedy", "options": {"loss_inc": [1.01]}}],
                 references=[{"label": "dense", "thresholds": "dense.json"},
                             {"label": "all-zero", "thresholds": "all-zero.json"}])
    assert main(["study", "compare", str(path), "--json", "--seeds", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    refs = {r["label"]: r["values"] for r in out["references"]}
    assert refs["dense"]["loss_ratio"] == pytest.approx(1.0) and refs["all-zero"]["loss_ratio"] > 1.05
    summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
    reached = {r["label"]: r["reached_by"] for r in summary["references"]}
    # every study's dense baseline reaches the dense point; no feasible trial reaches 100% sparsity
    assert sorted(reached["dense"]) == ["greedy", "random"] and reached["all-zero"] == []
    assert out["fe_budgets"] == [1.0, 2.0, 4.0]  # a quarter, half and all of the budget
    for s in studies(tmp_path).values():
        fe = analysis.cost_history(s)
        assert fe[-2] < 4.0 <= fe[-1] and len(s.trials) < 40  # every study stopped at its FE budget
        assert s.trials[0].params == dict.fromkeys(s.trials[0].params, 0.0) and len(s.trials) > 2  # its own baselines
    for row in out["rows"]:
        study = studies(tmp_path)[f"cmp.{row['sampler']}.s0"]
        hv, fe = analysis.hypervolume_history(study), analysis.cost_history(study)
        assert row["hv@2fe"]["mean"] == max([h for h, f in zip(hv, fe) if f <= 2.0], default=0.0)
        assert row["forward_equivalents"] == pytest.approx(fe[-1])
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "HV @2 FE" in report and "| FE |" in report
    assert "| all-zero |" in report and "| none |" in report
    assert "Stopped early" not in report  # the FE budget ended them, not their samplers


def test_only_names_a_label(tmp_path, capsys):
    assert main(["study", "compare", str(write(tmp_path)), "--only", "tpe"]) == 2
    assert "--only" in capsys.readouterr().err


def test_hybrid_hands_over_after_its_greedy_share_and_seeds_nsga2():
    levels = [0.0, 0.2, 0.4, 0.6, 0.8]
    weights = {f"blocks.{i}.k": 0.01 * (i + 1) for i in range(4)}
    sampler = make_sampler(SamplerConfig(name="hybrid", options={"base": "nsga2", "loss_inc": [1.001, 1.01],
                                                                 "greedy_share": 0.3}),
                           dict.fromkeys(weights, levels), seed=0, trials=40)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    dist = {n: CategoricalDistribution(levels) for n in weights}
    for _ in range(40):
        t = study.ask(dist)
        loss = 3 * (1 + sum(w * t.params[n] ** 2 for n, w in weights.items()))
        t.set_user_attr("calibration_loss", loss)
        study.tell(t, [loss, sum(t.params.values())])
    phases = [t.system_attrs["hybrid:phase"] for t in study.trials]
    assert phases == ["greedy"] * 12 + ["base"] * 28  # 0.3 x 40 trials, then NSGA-II
    gen = "NSGAIISampler:generation"
    assert all(gen in t.system_attrs for t in study.trials)  # the greedy trials are NSGA-II's first parents
    assert [t.system_attrs["greedy:role"] for t in study.trials[:2]] == ["dense", "candidate"]


@pytest.mark.parametrize("name", ["compare-embedded.yaml", "compare-embedded-5seeds.yaml"])
def test_the_shipped_comparison_files_are_valid(name):
    from thresh_opt.study.compare import load_compare
    from thresh_opt.study.config import REPO_DIR

    ccfg, _template, contenders = load_compare(REPO_DIR / "studies" / name)
    labels = {c.label for c in contenders}
    assert {"tpe", "nsga2", "greedy", "hybrid-nsga2"} <= labels and ccfg.budgets[-1] == ccfg.trials
    assert sum(c.label == "greedy" for c in contenders) == 1  # deterministic: one run
    assert ccfg.baselines.uniform == [0.3, 0.5, 0.7]  # stated in the file: every study gets the same
    assert all(c.cfg.baselines == ccfg.baselines for c in contenders)


def test_the_deciding_comparison_file():
    from thresh_opt.study.compare import load_compare
    from thresh_opt.study.config import REPO_DIR

    ccfg, _template, contenders = load_compare(REPO_DIR / "studies" / "compare-embedded-10seeds.yaml")
    assert len(ccfg.seeds) >= 10 and ccfg.fe_budgets == [30, 60, 120, 240]
    assert sum(c.label == "tpe" for c in contenders) == 10 and sum(c.label == "sensitivity" for c in contenders) == 1
    learned = [json.loads(Path(r.thresholds).read_text()) for r in ccfg.references]
    assert len(learned) == 3 and all(len(t) == 42 for t in learned)  # one threshold per rwkv4-tiny module


def test_a_templates_refine_section_is_not_run_by_a_comparison(tmp_path):
    from thresh_opt.study.compare import load_compare

    path = write(tmp_path)
    (tmp_path / "tmpl.yaml").write_text(yaml.safe_dump({**TEMPLATE, "name": "tmpl", "refine": {"steps": 2}}))
    _cfg, template, contenders = load_compare(path)
    assert template.refine is not None and template.refine.steps == 2
    assert contenders and all(c.cfg.refine is None for c in contenders)  # budgets compare the searches alone
