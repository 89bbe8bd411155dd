"""The saliency path: its step knapsack on a hand-made table, the sampler in an Optuna study on a synthetic
objective whose saliencies are known, gradient passes at a configuration on the embedded model, and a
study through the CLI."""

from __future__ import annotations

from itertools import pairwise

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from test_sensitivity_sampler import DENSE_LOSS, MACS, NAMES, loss_of, new_study, sparsity_of
from test_study import load, write_study

from thresh_opt import keys
from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.incremental import IncrementalEngine
from thresh_opt.incremental.gradient import saliencies
from thresh_opt.samplers import SaliencyPathSampler, allocation
from thresh_opt.samplers._path_steps import BACK_MARGIN, envelope, interpolated
from thresh_opt.samplers._saliency_path import PREDICTED, ROLE, TARGET
from thresh_opt.samplers.allocation import Allocation, increment_tables, lagrangian_within, stepped

optuna.logging.set_verbosity(optuna.logging.ERROR)

FINE = [round(0.1 * i, 1) for i in range(10)]  # 0.0 .. 0.9
SCALE = 250.0  # saliency units per unit of loss ratio: the sampler must find it from the measured steps


def test_increment_tables_put_the_current_level_at_zero_and_steps_map_back():
    scores = {"a": {0.3: 1.0, 0.6: 3.0, 0.9: 8.0}, "b": {0.3: 0.5, 0.6: 0.6, 0.9: 4.0}}
    gains = {"a": {0.3: 0.3, 0.6: 0.6, 0.9: 0.9}, "b": {0.3: 0.03, 0.6: 0.06, 0.9: 0.09}}
    table, gain = increment_tables(scores, gains, {"a": 0.3, "b": 0.0})
    assert table == {"a": {0.6: 2.0, 0.9: 7.0}, "b": {0.3: 0.5, 0.6: 0.6, 0.9: 4.0}}
    assert gain["a"] == pytest.approx({0.6: 0.3, 0.9: 0.6}) and gain["b"] == gains["b"]
    pick = lagrangian_within(table, 2.0, gain)
    assert pick is not None and stepped({"a": 0.3, "b": 0.0}, pick) == {"a": 0.6, "b": 0.0}
    assert stepped({"a": 0.3, "b": 0.6}, Allocation({"a": 0.0, "b": 0.9}, 0.0, 0.0)) == {"a": 0.3, "b": 0.9}
    # a level below the current one is never offered; a score that fell below the current level's counts 0
    table, _ = increment_tables({"a": {0.3: 2.0, 0.6: 1.5}}, {"a": {0.3: 0.3, 0.6: 0.6}}, {"a": 0.3})
    assert table == {"a": {0.6: 0.0}}



def test_step_down_tables_save_the_most_score_for_the_least_gain_and_steps_map_back():
    scores = {"a": {0.3: 1.0, 0.6: 3.0, 0.9: 8.0}, "b": {0.3: 0.5, 0.6: 0.6, 0.9: 4.0}}
    gains = {"a": {0.3: 0.3, 0.6: 0.6, 0.9: 0.9}, "b": {0.3: 0.03, 0.6: 0.06, 0.9: 0.09}}
    now = {"a": 0.6, "b": 0.9}
    lost, saved, back = allocation.decrement_tables(scores, gains, now)
    assert sorted(back["a"].values()) == [0.0, 0.3] and sorted(back["b"].values()) == [0.0, 0.3, 0.6]
    assert sorted(saved["b"].values()) == pytest.approx([3.4, 3.5, 4.0])
    assert sorted(lost["a"].values()) == pytest.approx([0.3, 0.6])
    points = allocation.front(lost, saved)

    def down(need):
        pick = allocation.first_saving(points, need)
        return None if pick is None else allocation.lowered(now, pick, back)
    # b's 0.9 -> 0.6 saves 3.4 for 0.03 of gain; 5.0 needs b -> 0 (4.0 for 0.09) and a -> 0.3 (2.0 for 0.3)
    assert down(3.0) == {"a": 0.6, "b": 0.6}
    assert down(5.0) == {"a": 0.3, "b": 0.0}
    assert down(100.0) == {"a": 0.0, "b": 0.0}  # the most it can save
    nothing = allocation.decrement_tables(scores, gains, {"a": 0.0, "b": 0.0})  # all at 0: nothing to take back
    assert allocation.first_saving(allocation.front(nothing[0], nothing[1]), 1.0) is None
    line = envelope([(1.0, 0.1), (1.02, 0.3), (1.01, 0.05), (1.04, 0.5)])
    assert line == [(1.0, 0.1), (1.02, 0.3), (1.04, 0.5)]
    assert interpolated(line, 1.03) == pytest.approx(0.4) and interpolated(line, 1.1) == 0.5


def saliency_of(params):
    """What a worker would store: each level's loss increase alone at the trial's configuration (the
    synthetic loss is additive, so that is its one-at-a-time increase), in saliency units."""
    def alone(n, lv):
        return SCALE * (loss_of({**dict.fromkeys(NAMES, 0.0), n: lv}) - DENSE_LOSS) / DENSE_LOSS
    return {"scores": {n: [[lv, alone(n, lv)] for lv in FINE[1:]] for n in NAMES},
            "gains": {n: [[lv, MACS[n] * lv] for lv in FINE[1:]] for n in NAMES}}


def run(study, sampler, max_trials=100, loss=loss_of, table=saliency_of, sparsity=sparsity_of):
    """Drive the study; the tables always predict the additive `loss_of`, `loss` is what is measured."""
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    while not sampler.is_finished(study) and len(study.trials) < max_trials:
        trial = study.ask(dists)
        if sampler.wants_saliency(study, trial.number):
            trial.set_user_attr(keys.SALIENCY, table(trial.params))
        trial.set_user_attr("calibration_loss", loss(trial.params))
        trial.set_user_attr("sparsity", sparsity(trial.params))
        study.tell(trial, [loss(trial.params), sparsity(trial.params)])


def test_the_path_calibrates_its_scale_and_lands_on_the_targets():
    sampler = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.05,
                                  targets=[1.02, 1.045])
    storage = optuna.storages.InMemoryStorage()
    study = new_study(sampler, storage)
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))  # the study's dense baseline: the path's start
    run(study, sampler)
    assert sampler.is_finished(study)
    trials = study.trials
    assert trials[0].user_attrs[keys.SALIENCY]  # the enqueued dense trial was asked for its table
    path = [t for t in trials if t.system_attrs.get(ROLE) == "path"]
    ratios = [loss_of(t.params) / DENSE_LOSS for t in [trials[0], *path]]
    assert ratios == sorted(ratios) and ratios[-2] <= 1.05 < ratios[-1]  # it stops past max_loss_ratio
    # the first step calibrates (no prediction); after it the additive model is predicted exactly
    assert path[0].system_attrs[PREDICTED] is None
    for t in path[1:]:
        assert t.system_attrs[PREDICTED] == pytest.approx(loss_of(t.params) / DENSE_LOSS, abs=1e-9)
    # a step spends `step` (its budget doubles only where no level fits in it: the coarse last levels)
    deltas = [b - a for a, b in pairwise(ratios[1:])]
    assert all(d <= 0.005 + 1e-9 for d in deltas[:5])
    assert len(path) >= 8
    plan = sampler.plan(study)
    for target in (1.02, 1.045):
        landed = plan.landings[target]
        ratio = loss_of(dict(zip(NAMES, landed))) / DENSE_LOSS
        below = max(r for r in ratios if r <= target)
        assert below <= ratio <= target
    landings = [t for t in trials if t.system_attrs.get(ROLE) == "landing"]
    assert {t.system_attrs[TARGET] for t in landings} <= {1.02, 1.045}
    finals = sampler.final_params(study)
    assert finals[0] == dict.fromkeys(NAMES, 0.0) and len(finals) == len(ratios) - 1 + len(landings)
    # no state in the sampler: a new one on the storage reads the same path and issues nothing new
    again = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.05, targets=[1.02, 1.045])
    assert again.is_finished(new_study(again, storage)) and again.final_params(study) == finals
    # a trial the path reads without its table is measured again with it
    copy = new_study(SaliencyPathSampler(dict.fromkeys(NAMES, FINE)), optuna.storages.InMemoryStorage())
    copy.add_trial(optuna.trial.create_trial(
        params=dict.fromkeys(NAMES, 0.0), distributions={n: CategoricalDistribution(FINE) for n in NAMES},
        values=[DENSE_LOSS, sparsity_of(dict.fromkeys(NAMES, 0.0))], user_attrs={"calibration_loss": DENSE_LOSS}))
    trial = copy.ask({n: CategoricalDistribution(FINE) for n in NAMES})
    assert trial.params == dict.fromkeys(NAMES, 0.0) and copy.sampler.wants_saliency(copy, trial.number)


def dead_zone_loss(params):
    """A hundredth of the additive loss increase until it reaches 1e-4 of the dense loss, then 200 times
    steeper: the first calibration step barely moves the loss, so the scale it sets is far too small and
    the next step overshoots (as on opt-tiny, whose fc2 inputs are a third zeros in the dense model)."""
    excess = loss_of(params) / DENSE_LOSS - 1
    return DENSE_LOSS * (1 + 0.01 * excess + 200 * max(0.0, excess - 1e-4))


def test_a_step_that_overshoots_by_far_is_taken_again_smaller_from_the_point_before():
    sampler = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.03, targets=[1.02])
    study = new_study(sampler, optuna.storages.InMemoryStorage())
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))
    run(study, sampler, loss=dead_zone_loss)
    assert sampler.is_finished(study)
    path = [t for t in study.trials if t.system_attrs.get(ROLE) == "path"]
    ratios = [dead_zone_loss(t.params) / DENSE_LOSS for t in path]
    assert 1.0 < ratios[0] < 1.00001 and ratios[1] > 1.03  # the nearly flat step, then the overshoot
    plan = sampler.plan(study)
    kept = [dead_zone_loss(dict(zip(NAMES, p.key))) / DENSE_LOSS for p in plan.path]
    # the overshoot is not a path point: the path goes on from the flat point with the scale it measured
    assert plan.path[1].key == tuple(path[0].params[n] for n in NAMES) and kept[2] <= 1.03
    assert plan.path[2].key == tuple(path[2].params[n] for n in NAMES) and plan.path[2].scale is not None
    assert kept == sorted(kept) and sum(1.0 < r <= 1.03 for r in kept) >= 2 and kept[-1] > 1.03
    assert 1.0 < dead_zone_loss(dict(zip(NAMES, plan.landings[1.02]))) / DENSE_LOSS <= 1.02


def test_block_steps_measure_candidate_steps_as_wholes_and_take_the_most_efficient():
    sampler = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.03, steps="blocks")
    # every parameter, then each block, then each family (the segment after the block index)
    assert sampler._step_groups("blocks") == [tuple(NAMES), ("blocks.0.att", "blocks.0.ffn"),
                                              ("blocks.1.att", "blocks.1.ffn"), ("blocks.0.att", "blocks.1.att"),
                                              ("blocks.0.ffn", "blocks.1.ffn")]
    study = new_study(sampler, optuna.storages.InMemoryStorage())
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))
    run(study, sampler, max_trials=300)
    assert sampler.is_finished(study)
    trials = study.trials
    roles = [t.system_attrs.get(ROLE) for t in trials]
    assert "candidate" in roles and all(keys.SALIENCY not in t.user_attrs
                                        for t, r in zip(trials, roles) if r == "candidate")
    path = [t for t, r in zip(trials, roles) if r == "path"]
    assert all(keys.SALIENCY in t.user_attrs for t in path)
    # after the calibration step, each path point is its predecessor's candidate with the most measured
    # sparsity per measured loss-ratio increase, evaluated again for its table
    for before, after in pairwise(path[1:]):
        cands = [t for t in trials[before.number + 1:after.number] if t.system_attrs.get(ROLE) == "candidate"]
        # measured as a candidate first (at this point, or at an earlier one that proposed it too)
        assert cands and any(t.system_attrs.get(ROLE) == "candidate" and t.params == after.params
                             for t in trials[:after.number])

        def value(t, ref=before):
            return (sparsity_of(t.params) - sparsity_of(ref.params)) / (
                (loss_of(t.params) - loss_of(ref.params)) / DENSE_LOSS)
        assert value(after) >= max(value(c) for c in cands) - 1e-9
    # lazily (one candidate at a time, the best-looking by its group's earlier value): on this objective a
    # group's value falls along the path, so the same path for fewer candidates
    lazy = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.03, steps="lazy")
    lazily = new_study(lazy, optuna.storages.InMemoryStorage())
    lazily.enqueue_trial(dict.fromkeys(NAMES, 0.0))
    issued = []
    while not lazy.is_finished(lazily):
        issued.append(len(lazy.plan(lazily).issue))
        run(lazily, lazy, max_trials=len(lazily.trials) + 1)
    assert max(issued) == 1
    assert [p.key for p in lazy.plan(lazily).path] == [p.key for p in sampler.plan(study).path]
    count = [sum(t.system_attrs.get(ROLE) == "candidate" for t in s.trials) for s in (study, lazily)]
    assert 0 < count[1] < count[0]
    single = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.03)
    plain = new_study(single, optuna.storages.InMemoryStorage())
    plain.enqueue_trial(dict.fromkeys(NAMES, 0.0))
    run(plain, single)
    assert not any(t.system_attrs.get(ROLE) == "candidate" for t in plain.trials)
    assert len(plain.trials) < len(trials)


# two blocks of three modules, two kinds in one family: kind groups (every att.key) differ from families
KINDS = [f"blocks.{b}.{k}" for b in (0, 1) for k in ("att.key", "att.value", "ffn.key")]
KIND_SENS = dict(zip(KINDS, [0.004, 0.002, 0.03, 0.006, 0.003, 0.02]))
KIND_MACS = {n: 0.1 if ".att." in n else 0.3 for n in KINDS}


def kind_loss(params, cheap=0.2):
    """Additive, but every att.key costs `cheap` times what the tables predict (as the element-wise
    saliency overprices rwkv4-tiny's ffn.key maps)."""
    return DENSE_LOSS * (1 + sum(KIND_SENS[n] * params[n] ** 3 * (cheap if n.endswith("att.key") else 1)
                                 for n in KINDS))


def kind_table(params):
    return {"scores": {n: [[lv, SCALE * KIND_SENS[n] * lv ** 3] for lv in FINE[1:]] for n in KINDS},
            "gains": {n: [[lv, KIND_MACS[n] * lv] for lv in FINE[1:]] for n in KINDS}}


def kind_sparsity(params):
    return sum(KIND_MACS[n] * params[n] for n in KINDS)


def test_kind_groups_propose_a_step_per_module_kind_and_find_a_kind_the_tables_overprice():
    def path_study(groups):
        sampler = SaliencyPathSampler(dict.fromkeys(KINDS, FINE), step=0.005, max_loss_ratio=1.03,
                                      steps="blocks", groups=groups)
        study = new_study(sampler, optuna.storages.InMemoryStorage())
        study.enqueue_trial(dict.fromkeys(KINDS, 0.0))
        run(study, sampler, max_trials=400, loss=kind_loss, table=kind_table, sparsity=kind_sparsity)
        assert sampler.is_finished(study)
        return sampler, study

    with_kinds, study = path_study(["block", "family", "kind"])
    b0, b1 = KINDS[:3], KINDS[3:]
    assert with_kinds._groups == [tuple(KINDS), tuple(b0), tuple(b1), (*b0[:2], *b1[:2]), (b0[2], b1[2]),
                                  (b0[0], b1[0]), (b0[1], b1[1])]  # ffn.key's kind is the ffn family
    path = [dict(zip(KINDS, p.key)) for p in with_kinds.plan(study).path]
    moved = [{n for n in KINDS if b[n] != a[n]} for a, b in pairwise(path)]
    # a step of the att.key kind alone was taken (measured as the most efficient candidate), which no
    # candidate of the blocks and families proposes
    assert {"blocks.0.att.key", "blocks.1.att.key"} in moved
    without, plain = path_study(["block", "family"])
    assert len(without._groups) == 5
    path = [dict(zip(KINDS, p.key)) for p in without.plan(plain).path]
    assert {"blocks.0.att.key", "blocks.1.att.key"} not in [{n for n in KINDS if b[n] != a[n]}
                                                            for a, b in pairwise(path)]


def interacting_loss(params):
    """The additive loss plus blocks.0.att's cost growing with the ffn maps' levels: the tables (taken at the
    dense model) call it cheap, so the path raises it early, and later it is worth taking back."""
    ffn = params["blocks.0.ffn"] + params["blocks.1.ffn"]
    return loss_of(params) + DENSE_LOSS * 0.03 * params["blocks.0.att"] ** 2 * ffn ** 2


def test_steps_down_take_back_what_the_path_raised_early_when_they_measure_above_its_front():
    def path_study(backward):
        sampler = SaliencyPathSampler(dict.fromkeys(NAMES, FINE), step=0.005, max_loss_ratio=1.06,
                                      targets=[1.02, 1.04], backward=backward)
        study = new_study(sampler, optuna.storages.InMemoryStorage())
        study.enqueue_trial(dict.fromkeys(NAMES, 0.0))
        run(study, sampler, max_trials=300, loss=interacting_loss)
        assert sampler.is_finished(study)
        return sampler, study

    def best(study, ratio):
        return max(sparsity_of(t.params) for t in study.trials if interacting_loss(t.params) / DENSE_LOSS <= ratio)

    sampler, study = path_study(2)
    path = sampler.plan(study).path
    downs = [i for i in range(1, len(path)) if any(a < b for a, b in zip(path[i].key, path[i - 1].key))]
    assert downs
    for i in downs:  # each one measured above the front of the path points before it
        before = envelope([(p.ratio, sparsity_of(dict(zip(NAMES, p.key)))) for p in path[:i]])
        # and taken from a point no earlier one dominates
        assert (path[i - 1].ratio, sparsity_of(dict(zip(NAMES, path[i - 1].key)))) in before
        assert sparsity_of(dict(zip(NAMES, path[i].key))) > interpolated(before, path[i].ratio) + BACK_MARGIN
        assert i + 1 == len(path) or not any(a < b for a, b in zip(path[i + 1].key, path[i].key))  # then up
    roles = [t.system_attrs.get(ROLE) for t in study.trials]
    assert "back" in roles
    assert all(keys.SALIENCY not in t.user_attrs for t, r in zip(study.trials, roles) if r == "back")
    _, plain = path_study(0)
    assert "back" not in [t.system_attrs.get(ROLE) for t in plain.trials]
    assert best(study, 1.02) > best(plain, 1.02) + 0.03 and best(study, 1.04) > best(plain, 1.04)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"step": 0}, "step must be a loss-ratio increase > 0"),
    ({"max_loss_ratio": 1.0}, "max_loss_ratio must be a loss ratio > 1"),
    ({"targets": [0.9]}, "targets must be a loss ratio > 1"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1"),
    ({"steps": "sideways"}, "steps must be one of single, blocks, lazy"),
    ({"groups": ["layer"]}, "groups must be a non-empty list of block, family, kind"),
    ({"groups": []}, "groups must be a non-empty list of block, family, kind"),
    ({"backward": -1}, "backward must be an integer >= 0"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SaliencyPathSampler(dict.fromkeys(NAMES, FINE), **kwargs)


SMALL = CalibrationSpec(source="heldout", ctx_len=32, count=4, seed=0)


def test_saliencies_at_a_configuration_score_what_it_zeroes_from_its_gradient(rwkv):
    tm = rwkv.thresholded
    engine = IncrementalEngine(tm, calibration_chunks(rwkv, SMALL), batch_size=4)
    n = len(tm.names)
    half, most = engine.thresholds_for([0.5] * n, "dense"), engine.thresholds_for([0.8] * n, "dense")
    wanted = {i: [half[i], most[i]] for i in range(n)}
    dense = saliencies(tm, engine.runner.batches, wanted)
    zero = saliencies(tm, engine.runner.batches, wanted, [0.0] * n)
    assert all(zero[i] == pytest.approx(dense[i], rel=1e-6, abs=1e-15) for i in range(n))  # base 0 is dense
    at = saliencies(tm, engine.runner.batches, wanted, half)
    assert all(t == 0.0 for t in tm.thresholds.values())  # left dense
    for i in range(n):
        assert 0 <= at[i][0] <= at[i][1]  # zeroing more scores more, from the base's own inputs
    # the gradient is the configuration's: the model's other zeros change every site's scores
    assert sum(abs(at[i][1] - dense[i][1]) for i in range(n)) > 0.05 * sum(dense[i][1] for i in range(n))


def test_a_saliency_path_study_on_the_embedded_model(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "saliency_path",
                                          "options": {"max_loss_ratio": 1.02, "targets": [1.01]}},
                       search_space={"grouping": "kind", "levels": FINE}, trials=60,
                       baselines={"dense": True, "uniform": []})
    assert main(["study", "run", str(path), "--json"]) == 0
    capsys.readouterr()
    study = load(tmp_path)
    assert study.user_attrs[keys.STATISTICS] == "dense"  # statistics: auto maps its levels as its tables do
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    path_trials = [t for t in done if t.system_attrs.get(ROLE) == "path"]
    assert done[0].user_attrs[keys.SALIENCY] and all(keys.SALIENCY in t.user_attrs for t in path_trials)
    assert all(keys.SALIENCY not in t.user_attrs for t in done if t.system_attrs.get(ROLE) == "landing")
    # a path trial's cost holds its gradient pass (2 forward-equivalents) on top of its evaluation
    assert all(t.user_attrs[keys.FORWARD_EQUIVALENTS] >= 2.0 for t in path_trials)
    scores = done[0].user_attrs[keys.SALIENCY]["scores"]
    assert len(scores) == 7 and all(len(v) == 9 for v in scores.values())
    ratios = [t.user_attrs["loss_ratio"] for t in [done[0], *path_trials]]
    sparsity = [t.user_attrs["sparsity"] for t in [done[0], *path_trials]]
    assert ratios[-1] > 1.02 and sparsity[-2] > sparsity[0] + 0.2  # it went far, then stopped past the cap
    final = study.user_attrs[keys.FINAL]
    assert final and all(r["trial"] is not None for r in final)
    capsys.readouterr()
    bad = write_study(tmp_path, name="bad", sampler={"name": "saliency_path", "options": {"targets": [0.5]}})
    assert main(["study", "run", str(bad)]) == 2
    assert "sampler.options.targets" in capsys.readouterr().err
