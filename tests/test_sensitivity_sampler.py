"""The sensitivity allocation (thresh_opt.samplers.allocation) against brute force, SensitivitySampler in
Optuna studies on a synthetic objective, and one study on the embedded RWKV-4 model through the CLI."""

from __future__ import annotations

import itertools
import json
import math
import random
import re

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from test_study import load, write_study

from thresh_opt import keys
from thresh_opt.cli import main
from thresh_opt.samplers import SensitivitySampler, SteppedSampler
from thresh_opt.samplers.allocation import (
    breakpoints,
    choose,
    exact_within,
    front,
    hull,
    lagrangian_within,
    level_gains,
    spread,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)

# ---- the allocation --------------------------------------------------------------------------------


def brute(table, gains):
    """Every configuration with its (gain, loss)."""
    names = list(table)
    out = []
    for combo in itertools.product(*(sorted(table[n]) for n in names)):
        levels = dict(zip(names, combo))
        if any(math.isinf(table[n][lv]) for n, lv in levels.items()):
            continue
        gain = sum(gains[n][lv] for n, lv in levels.items())
        out.append((levels, gain, sum(table[n][lv] for n, lv in levels.items())))
    return out


def pareto(points):
    """The configurations no other one dominates (more gain, less loss)."""
    return [p for p in points if not any(q[1] >= p[1] - 1e-12 and q[2] <= p[2] + 1e-12
                                         and (q[1] > p[1] + 1e-12 or q[2] < p[2] - 1e-12) for q in points)]


def random_table(seed, params=4, levels=(0.0, 0.2, 0.4, 0.6, 0.8)):
    """Losses in whole thousandths, some negative, some levels dominated, one failed (inf)."""
    rng = random.Random(seed)
    table = {f"p{i}": {0.0: 0.0, **{lv: rng.randint(-3, 60) / 1000 for lv in levels[1:]}} for i in range(params)}
    table["p1"][0.6] = math.inf
    weights = {n: rng.uniform(0.05, 1.0) for n in table}
    return table, weights


def test_the_documented_example_has_the_front_by_hand():
    table = {"a": {0.0: 0.0, 0.5: 0.01, 0.9: 0.10}, "b": {0.0: 0.0, 0.5: 0.002, 0.9: 0.03}}
    weights = {"a": 0.6, "b": 0.4}
    path = front(table, weights=weights)
    assert [tuple(a.levels.values()) for a in path] == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 0.9), (0.9, 0.9)]
    assert [a.lam for a in path[1:]] == pytest.approx([100.0, 30.0, 0.16 / 0.028, 0.24 / 0.09])
    assert breakpoints(table, weights=weights) == pytest.approx([a.lam for a in path[1:]])
    assert path[3].gain == pytest.approx(0.66) and path[3].loss == pytest.approx(0.04)
    assert lagrangian_within(table, 0.02, weights=weights).levels == {"a": 0.5, "b": 0.5}
    assert lagrangian_within(table, -0.001, weights=weights) is None
    # given multipliers: the choice of each, deduplicated, by gain
    assert [tuple(a.levels.values()) for a in front(table, weights=weights, lambdas=[1e4, 50, 40, 1])] == [
        (0.0, 0.0), (0.0, 0.5), (0.9, 0.9)]
    assert exact_within(table, 0.02, weights=weights, step=0.001).levels == {"a": 0.5, "b": 0.5}
    # between two hull points the knapsack can do better than the hull: budget 0.031 fits a alone at 0.9
    # (gain 0.54 at 0.03), more than the hull's (0.5, 0.5) (0.5 at 0.012; its next point costs 0.032)
    table["a"][0.9] = 0.03
    assert lagrangian_within(table, 0.031, weights=weights).levels == {"a": 0.5, "b": 0.5}
    assert exact_within(table, 0.031, weights=weights, step=0.001).levels == {"a": 0.9, "b": 0.0}


def test_hull_drops_dominated_and_concave_points_and_keeps_collinear_ones():
    pts = [(0.0, 0.0, 0.0), (0.1, 0.01, 0.1), (0.2, 0.02, 0.2), (0.3, 0.05, 0.25), (0.4, 0.04, 0.3),
           (0.5, 0.08, 0.3)]
    # 0.3 lies under the hull (0.2 -> 0.4), 0.5 has no more gain than 0.4; 0.1 and 0.2 are collinear
    assert [p[0] for p in hull(pts)] == [0.0, 0.1, 0.2, 0.4]
    # a level with a negative loss increase starts the hull (it is the choice at lam -> infinity)
    assert [p[0] for p in hull([(0.0, 0.0, 0.0), (0.1, -0.001, 0.1), (0.2, 0.01, 0.2)])] == [0.1, 0.2]


@pytest.mark.parametrize("seed", range(6))
def test_the_lagrangian_front_is_on_the_brute_force_pareto_front(seed):
    table, weights = random_table(seed)
    gains = level_gains(table, weights)
    everything = brute(table, gains)
    best = {tuple(p[0].values()) for p in pareto(everything)}
    path = front(table, gains)
    assert len(path) >= 2 and len({tuple(a.levels.values()) for a in path}) == len(path)
    assert [a.gain for a in path] == sorted(a.gain for a in path)
    assert all(b.loss > a.loss for a, b in itertools.pairwise(path))  # more gain costs more loss
    for a in path:
        assert tuple(a.levels.values()) in best
        assert all(lv != 0.6 for n, lv in a.levels.items() if n == "p1")  # the failed level is never chosen
        if math.isfinite(a.lam):  # optimal for its multiplier: nothing beats gain - lam * loss
            assert a.gain - a.lam * a.loss >= max(g - a.lam * c for _, g, c in everything) - 1e-9
    # the start: the least loss
    assert path[0].loss == pytest.approx(min(c for _, _, c in everything))
    # the multipliers between the breakpoints select exactly the front's configurations
    lams = breakpoints(table, gains)
    mids = [lams[0] * 2] + [(a + b) / 2 for a, b in itertools.pairwise(lams)] + [lams[-1] / 2]
    between = {tuple(choose(table, m, gains).levels.values()) for m in mids}
    assert between <= {tuple(a.levels.values()) for a in path}
    assert len(between) == len(mids)


@pytest.mark.parametrize("seed", range(4))
def test_budget_picks(seed):
    table, weights = random_table(seed, params=3)
    gains = level_gains(table, weights)
    everything = brute(table, gains)
    for budget in (0.0, 0.005, 0.02, 0.05, 0.1, 0.2):
        fits = [p for p in everything if p[2] <= budget + 1e-12]
        optimum = max(g for _, g, _ in fits)
        exact = exact_within(table, budget, gains, step=0.001)  # losses are whole thousandths: exact
        assert exact.loss <= budget + 1e-12 and exact.gain == pytest.approx(optimum)
        hull_pick = lagrangian_within(table, budget, gains)
        on_front = [a for a in front(table, gains) if a.loss <= budget + 1e-12]
        assert hull_pick.loss <= budget + 1e-12 and hull_pick.gain == pytest.approx(max(a.gain for a in on_front))
        assert hull_pick.gain <= optimum + 1e-12
        coarse = exact_within(table, budget, gains)  # default step: budget / 1000; always fits
        assert coarse is None or coarse.loss <= budget + 1e-12


def test_spread_keeps_both_ends():
    table, weights = random_table(0, params=6)
    path = front(table, weights=weights)
    picked = spread(path, 5)
    assert len(picked) == 5 and picked[0] is path[0] and picked[-1] is path[-1]
    assert spread(path, len(path) + 3) == path and spread(path, 1) == [path[-1]]
    with pytest.raises(ValueError):
        spread(path, 0)


# ---- the sampler on a synthetic objective -----------------------------------------------------------

LEVELS = [0.0, 0.3, 0.6, 0.9]
MACS = {"blocks.0.att": 0.1, "blocks.0.ffn": 0.4, "blocks.1.att": 0.1, "blocks.1.ffn": 0.4}
SENS = {"blocks.0.att": 0.002, "blocks.0.ffn": 0.05, "blocks.1.att": 0.02, "blocks.1.ffn": 0.01}
NAMES = list(MACS)
DENSE_LOSS = 3.0


def loss_of(params):
    return DENSE_LOSS * (1 + sum(SENS[n] * params[n] ** 3 for n in NAMES))


def sparsity_of(params):
    return 0.05 + sum(MACS[n] * params[n] for n in NAMES)  # the dense model has some natural zeros


def new_study(sampler, storage=None):
    return optuna.create_study(study_name="s", storage=storage, sampler=sampler,
                               directions=["minimize", "maximize"], load_if_exists=True)


def tell(study, trial, fail=lambda p: False, sparsity=True):
    if fail(trial.params):
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr("calibration_loss", loss_of(trial.params))
    if sparsity:
        trial.set_user_attr("sparsity", sparsity_of(trial.params))
    study.tell(trial, [loss_of(trial.params), sparsity_of(trial.params)])


def drive(study, sampler, batch=1, max_trials=200, dists=None, **kw):
    """Ask up to `batch` trials at a time (as parallel workers would), tell them, until the sampler is finished."""
    dists = dists or {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    while not sampler.is_finished(study) and len(study.trials) < max_trials:
        asked = [study.ask(dists)]
        while len(asked) < batch and not sampler.needs_wait(study) and not sampler.is_finished(study):
            asked.append(study.ask(dists))
        for t in asked:
            tell(study, t, **kw)


def role(t):
    return t.system_attrs.get("sensitivity:role")


def probes():
    return [{**dict.fromkeys(NAMES, 0.0), n: lv} for n in NAMES for lv in LEVELS[1:]]


def expected_front(front_size=16, weights=None, fail=lambda p: False):
    """The configurations phase 2 should evaluate, from the true (additive) tables."""
    table = {n: {lv: (math.inf if fail({**dict.fromkeys(NAMES, 0.0), n: lv}) else
                      loss_of({**dict.fromkeys(NAMES, 0.0), n: lv}) - DENSE_LOSS) for lv in LEVELS} for n in NAMES}
    gains = level_gains(table, weights) if weights else {n: {lv: MACS[n] * lv for lv in LEVELS} for n in NAMES}
    path = [a for a in front(table, gains) if any(a.levels.values())]
    return [a.levels for a in spread(path, front_size)]


def test_phase_one_probes_each_parameter_alone_then_phase_two_evaluates_the_predicted_front():
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=6)
    assert isinstance(sampler, SteppedSampler) and sampler.loss_key == "calibration_loss"
    study = new_study(sampler)
    assert sampler.final_params(study) == [] and sampler.front(study) == []
    drive(study, sampler)
    trials = study.trials
    assert role(trials[0]) == "dense" and trials[0].params == dict.fromkeys(NAMES, 0.0)
    phase1 = [t.params for t in trials if role(t) == "probe"]
    assert phase1 == probes()  # each parameter alone at each positive level, in order, once
    assert [t.number for t in trials if role(t) == "probe"] == list(range(1, 1 + len(phase1)))
    wanted = expected_front(6)
    assert sampler.final_params(study) == wanted
    front_trials = [t for t in trials if role(t) == "front"]
    measured_before = [t.params for t in trials if role(t) != "front"]
    assert [t.params for t in front_trials] == [p for p in wanted if p not in measured_before]
    assert len(trials) == 1 + len(NAMES) * 3 + len(front_trials)
    assert sampler.is_finished(study) and not sampler.needs_wait(study)
    # the prediction is stamped and, the loss being additive here, exact
    for row in sampler.front(study):
        assert row["gains_measured"] and row["measured_gain"] == pytest.approx(row["gain"])
        assert row["measured_loss_increase"] == pytest.approx(row["loss_increase"])
    for t in front_trials:
        assert t.system_attrs["sensitivity:predicted"]["loss_increase"] == pytest.approx(
            loss_of(t.params) - DENSE_LOSS)
    # finished: a trial asked anyway repeats the last front configuration
    extra = study.ask({n: CategoricalDistribution(LEVELS) for n in NAMES})
    assert role(study.trials[extra.number]) == "finished" and extra.params == wanted[-1]
    assert sampler.acceptance(study, extra.number) is None
    sens = sampler.sensitivities(study)
    assert sens["blocks.0.ffn"][0.9] == pytest.approx(3.0 * 0.05 * 0.9**3)



def test_probe_levels_bring_the_front_sooner_and_refinement_walks_every_level():
    probed = [0.3, 0.9]
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=6, probe_levels=probed,
                                 refine_budgets=[1.02])
    study = new_study(sampler)
    drive(study, sampler)
    trials = study.trials
    allowed = {0.0, *probed}
    assert [t.params for t in trials if role(t) == "probe"] == [p for p in probes() if set(p.values()) <= allowed]
    # the front is the Lagrangian front of the probed levels only
    table = {n: {lv: loss_of({**dict.fromkeys(NAMES, 0.0), n: lv}) - DENSE_LOSS for lv in [0.0, *probed]}
             for n in NAMES}
    gains = {n: {lv: MACS[n] * lv for lv in table[n]} for n in NAMES}
    path = [a for a in front(table, gains) if any(a.levels.values())]
    assert [row["params"] for row in sampler.front(study)] == [a.levels for a in spread(path, 6)]
    assert all(set(row["params"].values()) <= allowed for row in sampler.front(study))
    # refinement raises by the search space's own steps, unprobed 0.6 included
    refine = [t for t in trials if role(t) == "refine"]
    assert refine and any(t.system_attrs["sensitivity:level"] == 0.6 for t in refine)
    (row,) = sampler.refined(study)
    assert row["done"] and row["loss_ratio"] < 1.02 and row["sparsity"] >= max(
        sparsity_of(r["params"]) for r in sampler.front(study) if loss_of(r["params"]) / DENSE_LOSS < 1.02)
    with pytest.raises(ValueError, match=r"probe_levels \[0.5\] are not levels of 'blocks.0.att'"):
        SensitivitySampler(dict.fromkeys(NAMES, LEVELS), probe_levels=[0.3, 0.5])
    with pytest.raises(ValueError, match="at least one level > 0"):
        SensitivitySampler(dict.fromkeys(NAMES, LEVELS), probe_levels=[0.0])

def test_an_enqueued_dense_baseline_is_the_dense_trial():
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=4)
    study = new_study(sampler)
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))
    study.enqueue_trial(dict.fromkeys(NAMES, 0.3))  # another baseline: ignored unless it is on the front
    drive(study, sampler)
    assert [role(t) for t in study.trials[:2]] == [None, None]
    assert [role(t) for t in study.trials].count("dense") == 0
    assert [t.params for t in study.trials if role(t) == "probe"] == probes()
    assert sampler.final_params(study) == expected_front(4)


def test_phase_two_waits_for_every_probe():
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS))
    study = new_study(sampler)
    dists = {n: CategoricalDistribution(LEVELS) for n in NAMES}
    asked = []
    while not sampler.needs_wait(study):
        asked.append(study.ask(dists))
    assert len(asked) == 1 + 3 * len(NAMES)  # all of phase 1 at once
    extra = study.ask(dists)  # asked anyway: a repeat of the dense configuration
    assert role(study.trials[extra.number]) == "wait" and extra.params == dict.fromkeys(NAMES, 0.0)
    for t in asked[:-1]:
        tell(study, t)
        assert sampler.needs_wait(study) and not sampler.final_params(study)
    study.tell(extra, state=TrialState.FAIL)
    tell(study, asked[-1])
    assert not sampler.needs_wait(study)
    front_asked = []
    while not sampler.needs_wait(study) and not sampler.is_finished(study):
        front_asked.append(study.ask(dists))
    assert [role(study.trials[t.number]) for t in front_asked] == ["front"] * len(front_asked)
    assert sampler.needs_wait(study) and not sampler.is_finished(study)  # the front trials are running
    for t in front_asked:
        tell(study, t)
    assert sampler.is_finished(study) and sampler.final_params(study) == expected_front()


def test_a_failed_probe_is_never_chosen_and_a_failed_dense_trial_is_issued_again():
    broken = lambda p: p["blocks.1.ffn"] == 0.6 and sum(p.values()) == 0.6  # noqa: E731
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS))
    study = new_study(sampler)
    dists = {n: CategoricalDistribution(LEVELS) for n in NAMES}
    study.tell(study.ask(dists), state=TrialState.FAIL)  # the dense trial
    again = study.ask(dists)
    assert role(study.trials[again.number]) == "dense"
    tell(study, again)
    drive(study, sampler, fail=broken)
    assert sampler.final_params(study) == expected_front(fail=broken)
    assert all(p["blocks.1.ffn"] != 0.6 for p in sampler.final_params(study))
    assert math.isinf(sampler.sensitivities(study)["blocks.1.ffn"][0.6])


def test_gains_from_weights_or_equal_weights_without_measured_sparsity():
    weights = {"blocks.0.att": 0.3, "blocks.0.ffn": 0.2, "blocks.1.att": 0.3, "blocks.1.ffn": 0.2}
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), weights=weights, front_size=5)
    study = new_study(sampler)
    drive(study, sampler)
    assert sampler.final_params(study) == expected_front(5, weights=weights)
    assert not sampler.front(study)[0]["gains_measured"]
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=5)
    study = new_study(sampler)
    drive(study, sampler, sparsity=False)
    assert sampler.final_params(study) == expected_front(5, weights=dict.fromkeys(NAMES, 0.25))


def test_a_new_sampler_on_the_same_storage_resumes_and_abandoned_trials_are_issued_again():
    storage = optuna.storages.InMemoryStorage()
    first = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=6)
    study = new_study(first, storage)
    drive(study, first, max_trials=7)
    dists = {n: CategoricalDistribution(LEVELS) for n in NAMES}
    stale = study.ask(dists)  # left RUNNING by a killed driver
    stale_params = stale.params
    second = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=6)
    study = optuna.load_study(study_name="s", storage=storage, sampler=second)
    study.tell(stale.number, state=TrialState.PRUNED)
    again = study.ask(dists)
    assert again.params == stale_params
    tell(study, again)
    drive(study, second)
    assert second.final_params(study) == expected_front(6)
    done = [json.dumps(t.params, sort_keys=True) for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == len(set(done))  # no configuration evaluated twice


def test_invalid_arguments_and_foreign_parameters(caplog):
    with pytest.raises(ValueError, match="at least one"):
        SensitivitySampler({})
    with pytest.raises(ValueError, match="front_size"):
        SensitivitySampler({"a": LEVELS}, front_size=0)
    with pytest.raises(ValueError, match=">= 0"):
        SensitivitySampler({"a": [0.0, -0.1]})
    with pytest.raises(ValueError, match="weights"):
        SensitivitySampler({"a": LEVELS, "b": LEVELS}, weights={"a": 1.0})
    assert SensitivitySampler({"a": [0.5, 0.2, 0.5]}).search_space == {"a": [0.0, 0.2, 0.5]}
    sampler = SensitivitySampler({"a": LEVELS})
    study = new_study(sampler)
    with caplog.at_level("WARNING", logger="thresh_opt.samplers._sensitivity"):
        for _ in range(2):
            trial = study.ask({"a": CategoricalDistribution(LEVELS)})
            assert 0.0 <= trial.suggest_float("x", 0.0, 1.0) <= 1.0
            study.tell(trial, [1.0, 0.0])
    assert sum("'x'" in r.message for r in caplog.records) == 1


def test_docstring_example_runs(capsys):
    code = SensitivitySampler.__doc__.split(".. testcode::")[1].split("No state is kept")[0]
    exec(re.sub(r"(?m)^ {12}", "", code), {})
    assert "blocks.0.att.key" in capsys.readouterr().out


# ---- a study on the embedded model ------------------------------------------------------------------


def kind_study(tmp_path, capsys, options):
    """A sensitivity study through the CLI on the embedded model, per-kind space, 3 levels: its --json
    output, the study and its parameters."""
    path = write_study(tmp_path, sampler={"name": "sensitivity", "options": options},
                       search_space={"grouping": "kind", "levels": [0.0, 0.3, 0.6, 0.9]}, trials=100,
                       baselines={"dense": True, "uniform": []})
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    return out, study, list(study.trials[0].params)


def test_a_sensitivity_study_on_the_embedded_model(tmp_path, capsys):
    out, study, params = kind_study(tmp_path, capsys, {"front_size": 5})
    assert len(params) == 7  # the RWKV-4 site kinds
    roles = [role(t) for t in study.trials]
    assert roles[0] is None and study.trials[0].params == dict.fromkeys(params, 0.0)  # the enqueued dense one
    assert roles.count("probe") == len(params) * 3 and "dense" not in roles
    fronts = [t for t in study.trials if role(t) == "front"]
    assert len(study.trials) == 1 + len(params) * 3 + len(fronts) and 1 <= len(fronts) <= 5
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    final = study.user_attrs[keys.FINAL]
    assert out["final"] == final and len(final) == 5 and all(r["trial"] is not None for r in final)
    by_number = {t.number: t for t in study.trials}
    measured = [by_number[r["trial"]] for r in final]
    sparsity = [t.user_attrs["sparsity"] for t in measured]
    ratios = [t.user_attrs["loss_ratio"] for t in measured]
    assert sparsity == sorted(sparsity) and sparsity[-1] > sparsity[0] + 0.3  # along the front
    assert all(0.98 < r < 3.0 for r in ratios) and ratios[-1] > ratios[0]
    predicted = [t.system_attrs["sensitivity:predicted"] for t in fronts]
    assert all(p["gain"] > 0 for p in predicted)


@pytest.mark.parametrize(("options", "message"), [
    ({"front_size": 0}, "sampler.options.front_size: Input should be greater than or equal to 1"),
    ({"weights": {"att.key": 1.0}}, "sampler.options.weights: takes a Python object"),
    ({"loss_inc": 1.01}, "sampler.options.loss_inc"),
    ({"loss_key": "accuracy"}, "sampler.options.loss_key: 'accuracy' is not computed by this study"),
    ({"probe_levels": [0.3, 0.55]}, "sampler.options.probe_levels: [0.55] are not levels of the search space; "
                                    "allowed: [0.1, 0.2,"),
    ({"probe_levels": []}, "sampler.options.probe_levels: []; allowed: a non-empty list"),
])
def test_bad_options_are_refused_when_the_file_loads(tmp_path, capsys, options, message):
    path = write_study(tmp_path, sampler={"name": "sensitivity", "options": options},
                       model={"source": str(tmp_path / "no-such-model")})
    assert main(["study", "run", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_comparison_runs_the_sensitivity_sampler_once(tmp_path, capsys):
    (tmp_path / "tmpl.yaml").write_text(yaml.safe_dump({
        "name": "tmpl", "model": {"source": "embedded:rwkv4-tiny"}, "calibration": {"ctx_len": 32, "count": 2},
        "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}]}))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"grouping": "kind", "levels": [0.0, 0.3, 0.6, 0.9]}))
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "cmp", "study": "tmpl.yaml", "trials": 26, "seeds": [0, 1], "budgets": [13, 26],
        "run_dir": str(tmp_path / "run"), "search_space": "space.yaml",
        "baselines": {"dense": True, "uniform": [0.5]},
        "samplers": [{"label": "sens", "name": "sensitivity", "options": {"front_size": 3}}]}))
    assert main(["study", "compare", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "run" / "optuna.journal")))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["cmp.sens.s0"]  # deterministic
    study = optuna.load_study(study_name="cmp.sens.s0", storage=storage)
    roles = [role(t) for t in study.trials]
    assert roles[:2] == [None, None] and roles.count("probe") == 21 and 1 <= roles.count("front") <= 3
    assert out["rows"][0]["sampler"] == "sens" and out["rows"][0]["seeds"] == 1
