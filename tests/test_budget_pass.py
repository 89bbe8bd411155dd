"""The budget pass (thresh_opt.samplers._greedy_state.replay_budget): GreedySampler's `budget` and
SensitivitySampler's `refine_budgets` against a direct computation on a synthetic loss, resumed studies,
option checks, and one study of each on the embedded RWKV-4 model through the CLI."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_study import load, write_study

from thresh_opt import keys
from thresh_opt.cli import main
from thresh_opt.samplers import Acceptance, GreedySampler, SensitivitySampler
from thresh_opt.samplers._greedy_state import budgets

optuna.logging.set_verbosity(optuna.logging.ERROR)

LEVELS = [round(0.1 * i, 1) for i in range(1, 10)]
WEIGHTS = {"blocks.0.att.key": 0.004, "blocks.0.ffn.key": 0.05, "blocks.1.att.key": 0.006,
           "blocks.1.ffn.key": 0.001, "blocks.2.att.key": 0.003, "blocks.2.ffn.key": 0.02}
NAMES = list(WEIGHTS)
DENSE = 3.0


def loss(params):
    """Quadratic in each level, plus an interaction (so modules do not add up) and a bump (not monotone)."""
    x = params
    bump = 0.004 if x["blocks.1.ffn.key"] == 0.5 else 0.0
    return DENSE * (1 + sum(WEIGHTS[n] * x[n] ** 2 for n in NAMES) + bump
                    + 0.03 * x["blocks.0.att.key"] * x["blocks.2.att.key"])


def budget_reference(start, budget):
    """The budget pass as the brief writes it: (final configuration, loss evaluations)."""
    config, evals = dict(start), 0
    if loss(config) / DENSE >= budget:
        return config, 0  # nothing left to spend
    for n in NAMES:
        for c in [c for c in LEVELS if c > config[n]]:
            evals += 1
            if not loss({**config, n: c}) / DENSE < budget:
                break
            config[n] = c
    return config, evals


def journal(path):
    return JournalStorage(JournalFileBackend(str(path)))


def drive(study, sampler, batch=1, max_trials=None, sparsity=False):
    """Ask up to `batch` trials (fewer at a barrier), evaluate them, tell them."""
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    while not sampler.is_finished(study):
        if max_trials is not None and len(study.trials) >= max_trials:
            return
        asked = [study.ask(dists)]
        while len(asked) < batch and not sampler.needs_wait(study):
            asked.append(study.ask(dists))
        for t in asked:
            t.set_user_attr("calibration_loss", loss(t.params))
            if sparsity:
                t.set_user_attr("sparsity", sum(t.params.values()) / len(NAMES))
            study.tell(t, loss(t.params))


def greedy_keys(study):
    return [(a["greedy:pass"], a["greedy:module"], a["greedy:candidate"])
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if (a := t.system_attrs).get("greedy:role") in ("dense", "candidate")]


# ---- GreedySampler(budget=...) ---------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_budget_passes_match_the_direct_computation(batch):
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, budget=[1.003, 1.01, 1.02])
    study = optuna.create_study(sampler=sampler)
    drive(study, sampler, batch=batch)
    finals = sampler.final_params(study)
    assert len(finals) == 4
    tolerance_trials = sum(1 for t in study.trials if t.system_attrs.get("greedy:pass") == 0
                           and t.system_attrs["greedy:role"] != "wait")
    start, expected_evals = finals[0], 0
    for budget, final in zip([1.003, 1.01, 1.02], finals[1:]):
        expected, evals = budget_reference(start, budget)
        assert final == expected
        start, expected_evals = expected, expected_evals + evals
    assert finals[3] != finals[2] != finals[1] != finals[0]  # every budget spends something here
    assert loss(finals[3]) / DENSE < 1.02 <= loss({**finals[3], NAMES[-1]: 0.9}) / DENSE or finals[3][NAMES[-1]] == 0.9
    budget_trials = [t for t in study.trials if t.system_attrs.get("greedy:pass_kind") == "budget"
                     and t.system_attrs["greedy:role"] == "candidate"]
    if batch == 1:  # serial: no speculation, exactly the direct computation's evaluations
        assert len(budget_trials) == expected_evals and len(study.trials) == tolerance_trials + expected_evals
    assert sampler.is_finished(study) and sampler.progress(study)["passes"] == 4


def test_budget_trials_are_stamped_and_judged_against_the_dense_loss():
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.001, budget=1.01)
    study = optuna.create_study(sampler=sampler)
    drive(study, sampler)
    trial = next(t for t in study.trials if t.system_attrs.get("greedy:pass_kind") == "budget")
    a = trial.system_attrs
    assert (a["greedy:role"], a["greedy:pass"], a["greedy:tolerance"]) == ("candidate", 1, 1.01)
    assert sampler.acceptance(study, trial.number) == Acceptance(DENSE, 1.01)
    assert all(t.system_attrs["greedy:pass_kind"] == "tolerance" for t in study.trials
               if t.system_attrs["greedy:pass"] == 0)
    # the budget pass starts from the tolerance pass's end: unchanged modules keep those values
    tolerance_end, budget_end = sampler.final_params(study)
    assert all(budget_end[n] >= tolerance_end[n] for n in NAMES)
    passes = sampler.passes(study)
    assert passes[1].start == tolerance_end and passes[1].loss == pytest.approx(loss(budget_end))
    # once finished, a trial repeats the last pass's configuration
    t = study.ask({n: CategoricalDistribution(c) for n, c in sampler.search_space.items()})
    assert t.params == budget_end and study.get_trials(deepcopy=False)[-1].system_attrs["greedy:role"] == "finished"


def test_a_budget_the_start_already_fails_costs_nothing():
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.002, budget=[1.001, 1.02])
    study = optuna.create_study(sampler=sampler)
    drive(study, sampler)
    finals = sampler.final_params(study)
    assert loss(finals[0]) / DENSE > 1.001
    assert finals[1] == finals[0]  # nothing to spend
    assert not any(t.system_attrs.get("greedy:pass") == 1 for t in study.trials)
    assert finals[2] == budget_reference(finals[0], 1.02)[0]


@pytest.mark.parametrize("stop_in", [0, 1, 2])  # the pass in which the first sampler stops
def test_a_new_sampler_on_the_same_storage_continues(tmp_path, stop_in):
    def make():
        return GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, budget=[1.01, 1.02])

    fresh = make()
    reference_study = optuna.create_study(sampler=fresh)
    drive(reference_study, fresh)
    stop_after = 2 + next(t.number for t in reference_study.trials if t.system_attrs["greedy:pass"] == stop_in)
    storage = journal(tmp_path / "j.log")
    first = make()
    study = optuna.create_study(study_name="g", storage=storage, sampler=first)
    drive(study, first, max_trials=stop_after)
    assert first.progress(study)["pass"] == stop_in and not first.is_finished(study)
    second = make()
    study = optuna.load_study(study_name="g", storage=storage, sampler=second)
    drive(study, second)
    done = greedy_keys(study)
    assert len(done) == len(set(done)) == len(greedy_keys(reference_study))  # nothing evaluated twice
    assert second.final_params(study) == fresh.final_params(reference_study)


def test_adding_a_budget_reuses_the_tolerance_pass_and_a_changed_budget_starts_afresh(tmp_path):
    storage = journal(tmp_path / "j.log")
    plain = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005)
    study = optuna.create_study(study_name="g", storage=storage, sampler=plain)
    drive(study, plain)
    n_plain = len(study.trials)
    with_budget = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, budget=1.01)
    study = optuna.load_study(study_name="g", storage=storage, sampler=with_budget)
    assert not with_budget.is_finished(study) and with_budget.progress(study)["pass"] == 1
    drive(study, with_budget)
    n_budget = len(study.trials) - n_plain
    assert with_budget.final_params(study)[0] == plain.final_params(study)[0]
    assert all(t.system_attrs["greedy:pass_kind"] == "budget" for t in study.trials[n_plain:])
    other = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, budget=1.02)
    study = optuna.load_study(study_name="g", storage=storage, sampler=other)
    drive(study, other)
    assert other.final_params(study)[1] == budget_reference(plain.final_params(study)[0], 1.02)[0]
    assert len(study.trials) == n_plain + n_budget + budget_reference(plain.final_params(study)[0], 1.02)[1]


@pytest.mark.parametrize("bad", [1.0, 0.9, [1.01, 1.0], "1.01", True, float("inf")])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="budget must be a loss ratio > 1"):
        GreedySampler(dict.fromkeys(NAMES, LEVELS), budget=bad)
    with pytest.raises(ValueError, match="refine_budgets must be a loss ratio > 1"):
        SensitivitySampler(dict.fromkeys(NAMES, LEVELS), refine_budgets=bad if isinstance(bad, list) else [bad])
    assert budgets(None) == budgets([]) == ()


# ---- SensitivitySampler(refine_budgets=...) -----------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
def test_refinement_starts_from_the_best_measured_front_point_under_each_budget(batch):
    budgets_ = [1.0005, 1.01, 1.03]
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=5, refine_budgets=budgets_)
    plain = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=5)
    study, reference_study = optuna.create_study(sampler=sampler), optuna.create_study(sampler=plain)
    drive(study, sampler, batch=batch, sparsity=True)
    drive(reference_study, plain, sparsity=True)
    front = plain.final_params(reference_study)
    assert sampler.final_params(study)[: len(front)] == front  # the front is today's
    measured = [(loss(p) / DENSE, sum(p.values()) / len(NAMES), p) for p in front]
    rows = sampler.refined(study)
    assert [r["budget"] for r in rows] == budgets_ and all(r["done"] for r in rows)
    for budget, row in zip(budgets_, rows):
        fits = [m for m in measured if m[0] < budget]
        start = max(fits, key=lambda m: m[1])[2] if fits else dict.fromkeys(NAMES, 0.0)
        assert row["start"] == start
        assert row["params"] == budget_reference(start, budget)[0]
        assert row["loss_ratio"] == pytest.approx(loss(row["params"]) / DENSE) and row["loss_ratio"] < budget
        assert row["sparsity"] == pytest.approx(sum(row["params"].values()) / len(NAMES))
    assert rows[0]["start"] == dict.fromkeys(NAMES, 0.0) or measured[0][0] < 1.0005
    assert any(r["sparsity"] > sum(r["start"].values()) / len(NAMES) for r in rows)  # refinement gains
    assert sampler.final_params(study)[len(front):] == [r["params"] for r in rows]
    refine = [t for t in study.trials if t.system_attrs.get("sensitivity:role") == "refine"]
    assert refine and all(t.system_attrs["sensitivity:refine"]["budget"] in budgets_ for t in refine)
    assert all(sampler.acceptance(study, t.number) == Acceptance(DENSE, t.system_attrs["sensitivity:refine"]["budget"])
               for t in refine) and sampler.acceptance(study, 0) is None
    if batch == 1:  # serial: no speculation, exactly the direct computation's evaluations
        assert len(study.trials) == len(reference_study.trials) + sum(
            budget_reference(r["start"], r["budget"])[1] for r in rows)


def test_refinement_resumes_on_the_same_storage(tmp_path):
    def make():
        return SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=3, refine_budgets=[1.01, 1.02])

    storage = journal(tmp_path / "j.log")
    first = make()
    study = optuna.create_study(study_name="s", storage=storage, sampler=first)
    drive(study, first, max_trials=1 + len(NAMES) * len(LEVELS) + 3 + 4, sparsity=True)  # inside phase 3
    assert first.refined(study) and not first.is_finished(study)
    second = make()
    study = optuna.load_study(study_name="s", storage=storage, sampler=second)
    drive(study, second, sparsity=True)
    refine = [(a["sensitivity:refine"]["pass"], a["sensitivity:param"], a["sensitivity:level"])
              for t in study.trials if (a := t.system_attrs).get("sensitivity:role") == "refine"]
    assert len(refine) == len(set(refine))
    fresh = make()
    other = optuna.create_study(sampler=fresh)
    drive(other, fresh, sparsity=True)
    assert second.refined(study) == fresh.refined(other) and len(study.trials) == len(other.trials)


# ---- studies on the embedded model ------------------------------------------------------------------

SPACE = {"grouping": "kind", "levels": [0.0, 0.5, 0.9], "statistics": "dense"}  # one statistics pass


def best_under(study, bound):
    return max((t.user_attrs["sparsity"] for t in study.get_trials(states=(TrialState.COMPLETE,))
                if t.user_attrs.get("loss_ratio", 9) <= bound), default=0.0)


def test_a_greedy_study_with_a_budget_on_the_embedded_model(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "greedy", "options": {"loss_inc": 1.002, "budget": [1.05]}},
                       search_space=SPACE, trials=40, baselines={"dense": True, "uniform": []})
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    final = study.user_attrs[keys.FINAL]
    assert out["final"] == final and len(final) == 2
    kinds = [t.system_attrs.get("greedy:pass_kind") for t in study.trials]
    assert "budget" in kinds and len(study.trials) < 40  # finished before the trial budget
    by_number = {t.number: t for t in study.trials}
    ratios = [by_number[r["trial"]].user_attrs["loss_ratio"] if r["trial"] is not None else 1.0 for r in final]
    targets = [sum(r["params"].values()) for r in final]
    assert ratios[1] < 1.05 and targets[1] > targets[0]  # the budget was spent
    assert best_under(study, 1.05) > best_under(study, 1.0 + 1e-9)


def test_a_sensitivity_study_with_refinement_on_the_embedded_model(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "sensitivity", "options": {"front_size": 2,
                                                                            "refine_budgets": [1.05]}},
                       search_space=SPACE, trials=40, baselines={"dense": True, "uniform": []})
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    roles = [t.system_attrs.get("sensitivity:role") for t in study.trials]
    assert roles.count("probe") == 7 * 2 and 1 <= roles.count("front") <= 2 and roles.count("refine") >= 1
    final = study.user_attrs[keys.FINAL]
    assert out["final"] == final and len(final) == roles.count("front") + 1
    refined = {t.number: t for t in study.trials}[final[-1]["trial"]]
    assert refined.user_attrs["loss_ratio"] < 1.05
    front_under = [t.user_attrs["sparsity"] for t in study.trials if t.system_attrs.get("sensitivity:role") == "front"
                   and t.user_attrs["loss_ratio"] < 1.05]
    assert refined.user_attrs["sparsity"] >= max(front_under, default=0.0)


@pytest.mark.parametrize(("sampler", "message"), [
    ({"name": "greedy", "options": {"budget": 0.99}}, "sampler.options.budget"),
    ({"name": "greedy", "options": {"budget": [1.02, "x"]}}, "sampler.options.budget"),
    ({"name": "sensitivity", "options": {"refine_budgets": [1.0]}}, "refine_budgets must be a loss ratio > 1"),
    ({"name": "sensitivity", "options": {"refine_budgets": 1.03}}, "sampler.options.refine_budgets"),
])
def test_bad_budget_options_are_refused_when_the_file_loads(tmp_path, capsys, sampler, message):
    path = write_study(tmp_path, sampler=sampler, model={"source": str(tmp_path / "no-such-model")})
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
