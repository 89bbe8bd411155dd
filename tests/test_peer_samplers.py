"""The peer strategies as samplers: TEAL's block-wise greedy allocation (BlockwiseSampler) and WAS's
constrained block search (BlockSearchSampler), on synthetic ask/tell studies and one study each on the
embedded RWKV-4 model through the CLI."""

from __future__ import annotations

import json
import random
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState
from test_study import load, write_study

from thresh_opt import keys
from thresh_opt.cli import main
from thresh_opt.samplers import BlockSearchSampler, BlockwiseSampler, SteppedSampler
from thresh_opt.samplers._blocksearch import block_levels
from thresh_opt.samplers._blockwise import block_of, group_blocks
from thresh_opt.samplers._replay import Ledger, Missing, Result

optuna.logging.set_verbosity(optuna.logging.ERROR)

LEVELS = [0.0, 0.5, 1.0]
MACS = {"blocks.0.a": 0.1, "blocks.0.b": 0.3, "blocks.1.a": 0.2, "blocks.1.b": 0.4}
NAMES = list(MACS)
DENSE_LOSS = 2.0
# loss increase of each parameter at each level (additive, so every step's cost is known by hand)
INC = {"blocks.0.a": {0.5: 0.01, 1.0: 0.05}, "blocks.0.b": {0.5: 0.06, 1.0: 0.12},
       "blocks.1.a": {0.5: 0.04, 1.0: 0.05}, "blocks.1.b": {0.5: 0.02, 1.0: 0.30}}


def loss_of(params):
    return DENSE_LOSS + sum(INC[n].get(params[n], 0.0) for n in NAMES)


def sparsity_of(params):
    return 0.05 + sum(MACS[n] * params[n] for n in NAMES)


def role(t):
    return t.system_attrs.get("blockwise:role")


def tell(study, trial, fail=lambda p: False):
    if fail(trial.params):
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr("calibration_loss", loss_of(trial.params))
    trial.set_user_attr("sparsity", sparsity_of(trial.params))
    study.tell(trial, [loss_of(trial.params), sparsity_of(trial.params)])


def drive(study, sampler, max_trials=200, **kw):
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    while not sampler.is_finished(study) and len(study.trials) < max_trials:
        tell(study, study.ask(dists), **kw)


def new_study(sampler, storage=None):
    return optuna.create_study(study_name="s", storage=storage, sampler=sampler,
                               directions=["minimize", "maximize"], load_if_exists=True)


def test_block_names_and_the_replay_ledger():
    assert [block_of(n) for n in ["blocks.3.att.key", "block.2", "model.layers.11.mlp.fc1", "att.key", "all"]] == [
        3, 2, 11, None, None]
    assert group_blocks(["blocks.0.a", "blocks.1.a", "blocks.0.b", "att.key", "ffn.key"]) == [[0, 2], [1], [3, 4]]
    ledger = Ledger(("a", "b"), {(0.0, 0.0): Result(1.0, 0.1)}, pending=[(0.5, 0.0)])
    assert ledger.key({"a": 0.5, "b": 0}) == (0.5, 0.0) and ledger.key({"a": 0.5}) is None
    with pytest.raises(Missing) as missing:
        ledger.results([(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.0)])
    assert missing.value.keys == [(0.5, 0.0), (0.0, 0.5)]


@pytest.mark.parametrize("lazy", [True, False])
def test_each_block_walks_its_cheapest_raise_per_sparsity_then_the_targets_combine_the_paths(lazy):
    sampler = BlockwiseSampler(dict.fromkeys(NAMES, LEVELS), targets=[0.5, 1.0], lazy=lazy)
    assert isinstance(sampler, SteppedSampler) and sampler.blocks == [NAMES[:2], NAMES[2:]]
    study = new_study(sampler)
    drive(study, sampler)
    # By hand, cost = loss increase / MAC-weighted sparsity gained:
    # block 0 from dense: a 0.01/0.05 = 0.2, b 0.06/0.15 = 0.4 -> a; then a->1 0.04/0.05 = 0.8, b 0.4 -> b;
    # then a 0.8, b->1 0.06/0.15 = 0.4 -> b; then a.
    # block 1 from dense: a 0.04/0.1 = 0.4, b 0.02/0.2 = 0.1 -> b; then a 0.4, b->1 0.28/0.2 = 1.4 -> a;
    # then a->1 0.01/0.1 = 0.1 -> a; then b.
    raised = [[s["param"] for s in path[1:]] for path in sampler.paths(study)]
    assert raised == [["blocks.0.a", "blocks.0.b", "blocks.0.b", "blocks.0.a"],
                      ["blocks.1.b", "blocks.1.a", "blocks.1.a", "blocks.1.b"]]
    assert sampler.paths(study)[0][1]["ratio"] == pytest.approx(0.2)
    # block sparsity (weights 0.1/0.3 and 0.2/0.4 from the measured first steps):
    # target 0.5: block 0 first reaches it at (a 0.5, b 0.5); block 1 at (a 0.5, b 0.5) (0.5 exactly)
    # target 1.0: every parameter at 1.0
    assert sampler.final_params(study) == [dict.fromkeys(NAMES, 0.5), dict.fromkeys(NAMES, 1.0)]
    fronts = [t for t in study.trials if role(t) == "front"]
    assert [t.system_attrs["blockwise:targets"] for t in fronts] == [[0.5], [1.0]]
    steps = [t for t in study.trials if role(t) == "step"]
    # a step trial differs from dense only in its block
    for t in steps:
        block = t.system_attrs["blockwise:block"]
        assert all(v == 0.0 for n, v in t.params.items() if n not in sampler.blocks[block])
    done = [json.dumps(t.params, sort_keys=True) for t in study.trials]
    assert len(done) == len(set(done))  # nothing evaluated twice
    # exact, per block: both members measured at each of three steps, then the one that can rise;
    # lazy: both, then 2, 1, 1 (a cost measured earlier is kept while it is not the cheapest)
    assert len(steps) == (2 * (2 + 1 + 1 + 2) if lazy else 2 * (2 + 2 + 2 + 1))
    assert sampler.is_finished(study) and not sampler.needs_wait(study)
    extra = study.ask({n: CategoricalDistribution(LEVELS) for n in NAMES})
    assert role(study.trials[extra.number]) == "finished" and extra.params == dict.fromkeys(NAMES, 1.0)


def test_lazy_evaluation_saves_trials_where_costs_only_rise():
    counts = {}
    for lazy in (True, False):
        sampler = BlockwiseSampler({f"blocks.0.m{i}": [0.0, 0.25, 0.5, 0.75, 1.0] for i in range(4)}, lazy=lazy)
        study = optuna.create_study(sampler=sampler)
        dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
        while not sampler.is_finished(study):
            t = study.ask(dists)
            x = [t.params[f"blocks.0.m{i}"] for i in range(4)]
            t.set_user_attr("sparsity", sum(x) / 4)
            t.set_user_attr("calibration_loss", 1.0 + sum((i + 1) * v**2 for i, v in enumerate(x)))
            study.tell(t, t.user_attrs["calibration_loss"])
        counts[lazy] = (len(study.trials), [s["param"] for s in sampler.paths(study)[0]])
    assert counts[True][1] == counts[False][1]  # convex, separable costs: CELF is exact
    assert counts[True][0] < counts[False][0]


def test_the_cap_ends_a_path_and_a_failed_raise_freezes_its_member():
    broken = lambda p: p["blocks.1.b"] == 0.5 and p["blocks.1.a"] == 0.0  # noqa: E731
    sampler = BlockwiseSampler(dict.fromkeys(NAMES, LEVELS), max_loss_ratio=(DENSE_LOSS + 0.07) / DENSE_LOSS)
    study = new_study(sampler)
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))  # a dense baseline is the dense trial
    drive(study, sampler, fail=broken)
    assert role(study.trials[0]) is None and "dense" not in [role(t) for t in study.trials]
    paths = sampler.paths(study)
    # block 0: a (0.01), then b (0.07 total), then b->1 would be 0.13 > 0.07: the path ends
    assert [s["param"] for s in paths[0][1:]] == ["blocks.0.a", "blocks.0.b"]
    # block 1: b failed from dense, so a rises (0.04), a->1 (0.05), b stays at 0.0
    assert [s["param"] for s in paths[1][1:]] == ["blocks.1.a", "blocks.1.a"]
    assert all(p["blocks.1.b"] == 0.0 for p in sampler.final_params(study))
    # targets beyond a path's reach take its last allocation: the front's top is both paths' ends
    assert sampler.final_params(study)[-1] == {"blocks.0.a": 0.5, "blocks.0.b": 0.5, "blocks.1.a": 1.0,
                                               "blocks.1.b": 0.0}


def test_blocks_walk_in_parallel_the_front_waits_and_a_new_sampler_resumes():
    storage = optuna.storages.InMemoryStorage()
    first = BlockwiseSampler(dict.fromkeys(NAMES, LEVELS))
    study = new_study(first, storage)
    dists = {n: CategoricalDistribution(LEVELS) for n in NAMES}
    dense = study.ask(dists)
    assert first.needs_wait(study)  # everything depends on the dense loss
    tell(study, dense)
    batch = []
    while not first.needs_wait(study):
        batch.append(study.ask(dists))
    assert {study.trials[t.number].system_attrs["blockwise:block"] for t in batch} == {0, 1}
    assert len(batch) == 4  # each member of each block, from dense
    for t in batch[:-1]:
        tell(study, t)
    stale = batch[-1]  # left RUNNING by a killed driver: abandoned, then issued again
    second = BlockwiseSampler(dict.fromkeys(NAMES, LEVELS))
    study = optuna.load_study(study_name="s", storage=storage, sampler=second)
    study.tell(stale.number, state=TrialState.PRUNED)
    drive(study, second)
    assert [t.state for t in study.trials if t.params == stale.params] == [TrialState.PRUNED, TrialState.COMPLETE]
    reference = BlockwiseSampler(dict.fromkeys(NAMES, LEVELS))
    fresh = new_study(reference)
    drive(fresh, reference)
    assert second.final_params(study) == reference.final_params(fresh)


def test_invalid_blockwise_arguments():
    with pytest.raises(ValueError, match="at least one"):
        BlockwiseSampler({})
    with pytest.raises(ValueError, match="targets"):
        BlockwiseSampler({"a": LEVELS}, targets=[0.0])
    with pytest.raises(ValueError, match="max_loss_ratio"):
        BlockwiseSampler({"a": LEVELS}, max_loss_ratio=0.9)


def test_docstring_examples_run(capsys):
    for cls in (BlockwiseSampler, BlockSearchSampler):
        code = cls.__doc__.split(".. testcode::")[1].split("No state is kept")[0]
        exec(re.sub(r"(?m)^ {12}", "", code), {})
    out = capsys.readouterr().out
    assert "blocks.0.att" in out and "True" in out


# ---- the block search -------------------------------------------------------------------------------

SEARCH = {f"blocks.{b}.{k}": [0.0, 0.2, 0.4, 0.6, 0.8] for b in range(4) for k in ("att", "ffn")}


def search_study(sampler, storage=None, n=30):
    study = optuna.create_study(study_name="s", storage=storage, sampler=sampler,
                                directions=["minimize", "maximize"], load_if_exists=True)
    dists = {n: CategoricalDistribution(c) for n, c in SEARCH.items()}
    for _ in range(n):
        t = study.ask(dists)
        x = [t.params[n] for n in SEARCH]
        study.tell(t, [sum((8 - i) * v**2 for i, v in enumerate(x)), sum(x) / len(x)])
    return study


def test_block_levels_are_monotone_in_range_with_the_mean_held():
    for seed in range(50):
        rng = random.Random(seed)
        latent = {"mean": rng.uniform(0, 0.9), "spread": rng.uniform(0, 1), **{f"rise.{b}": rng.uniform(0, 1)
                                                                               for b in range(1, 5)}}
        levels = block_levels(latent, 5, 0.9)
        assert levels == sorted(levels) and all(0.0 <= lv <= 0.9 for lv in levels)
        assert sum(levels) / 5 == pytest.approx(latent["mean"])
    assert block_levels({"mean": 0.4, "spread": 0.0, **{f"rise.{b}": 1.0 for b in range(1, 5)}}, 5, 0.9) == [0.4] * 5
    full = block_levels({"mean": 0.3, "spread": 1.0, **{f"rise.{b}": 1.0 for b in range(1, 5)}}, 5, 0.9)
    assert full[0] == pytest.approx(0.0) and full == pytest.approx([0.0, 0.15, 0.3, 0.45, 0.6])


def test_the_block_search_proposes_monotone_block_profiles_and_reproduces_with_its_seed():
    sampler = BlockSearchSampler(SEARCH, seed=3, n_startup_trials=5)
    assert sampler.blocks == [[f"blocks.{b}.att", f"blocks.{b}.ffn"] for b in range(4)]
    study = search_study(sampler)
    for t in study.trials:
        per_block = [t.params[f"blocks.{b}.att"] for b in range(4)]
        assert per_block == sorted(per_block) and all(t.params[f"blocks.{b}.ffn"] == per_block[b] for b in range(4))
        assert set(t.system_attrs["blocksearch:latent"]) == {"mean", "spread", "rise.1", "rise.2", "rise.3"}
    again = search_study(BlockSearchSampler(SEARCH, seed=3, n_startup_trials=5))
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    other = search_study(BlockSearchSampler(SEARCH, seed=4, n_startup_trials=5))
    assert [t.params for t in other.trials] != [t.params for t in study.trials]
    profiles = {json.dumps(t.params, sort_keys=True) for t in study.trials}
    assert len(profiles) > 10


def test_the_block_search_resumes_on_the_same_storage_and_learns_from_uniform_baselines():
    storage = optuna.storages.InMemoryStorage()
    whole = search_study(BlockSearchSampler(SEARCH, seed=1, n_startup_trials=4), n=16)
    first = BlockSearchSampler(SEARCH, seed=1, n_startup_trials=4)
    search_study(first, storage, n=8)
    resumed = search_study(BlockSearchSampler(SEARCH, seed=1, n_startup_trials=4), storage, n=8)
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    sampler = BlockSearchSampler(SEARCH, seed=1)
    study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
    study.enqueue_trial(dict.fromkeys(SEARCH, 0.4))
    trial = study.ask({n: CategoricalDistribution(c) for n, c in SEARCH.items()})
    study.tell(trial, [1.0, 0.4])
    assert sampler._latent_of(study.trials[0])["mean"] == 0.4  # a uniform baseline joins the inner TPE


# ---- studies on the embedded model -------------------------------------------------------------------


def test_a_blockwise_study_on_the_embedded_model(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "blockwise", "options": {"targets": [0.3, 0.6, 0.9]}},
                       search_space={"grouping": "block", "levels": [0.0, 0.45, 0.9], "statistics": "dense"},
                       trials=40, baselines={"dense": True, "uniform": []})
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    roles = [role(t) for t in study.trials]
    assert roles[0] is None and "dense" not in roles and 1 <= roles.count("front") <= 3
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    steps = [t for t in study.trials if role(t) == "step"]
    assert len(steps) == 6 * 2  # one parameter per block: two raises each
    # a step starts at its block: the incremental engine reuses the dense model's upstream blocks
    cost = {b: max(t.user_attrs["forward_equivalents"] for t in steps if t.system_attrs["blockwise:block"] == b)
            for b in (0, 5)}
    assert cost[5] < 0.5 * cost[0]
    final = study.user_attrs[keys.FINAL]
    assert out["final"] == final and all(r["trial"] is not None for r in final)
    by_number = {t.number: t for t in study.trials}
    sparsity = [by_number[r["trial"]].user_attrs["sparsity"] for r in final]
    assert sparsity == sorted(sparsity) and sparsity[-1] > sparsity[0]


def test_a_blocksearch_study_on_the_embedded_model(tmp_path, capsys):
    path = write_study(tmp_path, sampler={"name": "blocksearch", "options": {"n_startup_trials": 3}},
                       search_space={"grouping": "block", "levels": "linear"}, trials=8)
    assert main(["study", "run", str(path), "--json"]) == 0
    study = load(tmp_path)
    assert len(study.trials) == 8 and all(t.state == TrialState.COMPLETE for t in study.trials)
    issued = [t for t in study.trials if "blocksearch:latent" in t.system_attrs]
    assert len(issued) == 6  # after the dense and uniform-0.5 baselines
    for t in issued:
        profile = [t.params[f"block.{b}"] for b in range(len(t.params))]
        assert profile == sorted(profile)


@pytest.mark.parametrize(("sampler", "message"), [
    ({"name": "blockwise", "options": {"max_loss_ratio": 0.5}}, "sampler.options.max_loss_ratio"),
    ({"name": "blockwise", "options": {"targets": []}}, "sampler.options.targets"),
    ({"name": "blockwise", "options": {"block_of": "x"}}, "sampler.options.block_of: takes a Python object"),
    ({"name": "blocksearch", "options": {"n_startup_trials": -1}}, "sampler.options.n_startup_trials"),
    ({"name": "blocksearch", "options": {"seed": 1}}, "sampler.options.seed"),
])
def test_bad_options_are_refused_when_the_file_loads(tmp_path, capsys, sampler, message):
    path = write_study(tmp_path, sampler=sampler, model={"source": str(tmp_path / "no-such-model")})
    assert main(["study", "run", str(path)]) == 2
    assert message in capsys.readouterr().err
