"""ChainSampler: samplers one after another on one study (a quick sensitivity run, then a full one), on the
synthetic objective of the sensitivity tests, through Optuna's sampler contract, and through the CLI on the
embedded RWKV-4 model."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.testing.pytest_samplers import BasicSamplerTestCase
from optuna.trial import TrialState
from test_sensitivity_sampler import LEVELS, NAMES, expected_front, new_study, probes, role, tell
from test_sensitivity_sampler import drive as sensitivity_drive
from test_study import load, write_study

from thresh_opt import keys
from thresh_opt.cli import main
from thresh_opt.errors import ConfigError
from thresh_opt.samplers import ChainSampler, GreedySampler, SensitivitySampler, SteppedSampler
from thresh_opt.samplers.factory import check_sampler_options, is_deterministic
from thresh_opt.study.config import SamplerConfig, SearchSpaceConfig

optuna.logging.set_verbosity(optuna.logging.ERROR)

QUICK = [0.3, 0.9]  # the first stage's probe levels


def stage_of(t):
    return t.system_attrs.get("chain:stage")


def config(t):
    return json.dumps(t.params, sort_keys=True)


def drive(study, chain, batch=1, max_trials=200):
    """The sensitivity tests' loop, with the chain's choices (a chain has no search space of its own)."""
    choices = {n: CategoricalDistribution(LEVELS) for n in NAMES}
    sensitivity_drive(study, chain, batch=batch, max_trials=max_trials, dists=choices)


def quick_then_full():
    space = dict.fromkeys(NAMES, LEVELS)
    quick = SensitivitySampler(space, front_size=3, probe_levels=QUICK)
    full = SensitivitySampler(space, front_size=6, refine_budgets=[1.02])
    return quick, full, ChainSampler([quick, full])


@pytest.mark.parametrize("batch", [1, 4])
def test_a_full_sensitivity_run_continues_a_quick_one_without_evaluating_anything_twice(batch):
    quick, full, chain = quick_then_full()
    assert isinstance(chain, SteppedSampler) and chain.loss_key == "calibration_loss"
    study = new_study(chain)
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))  # a dense baseline: the current stage's dense trial
    assert chain.stage(study) == 0 and chain.final_params(study) == []
    drive(study, chain, batch=batch)
    trials = study.trials
    assert chain.is_finished(study) and quick.is_finished(study) and chain.stage(study) == 1
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # stage 0, then stage 1, never back; the enqueued baseline belongs to stage 0
    stages = [stage_of(t) for t in trials]
    first = stages.index(1)
    assert stages == [0] * first + [1] * (len(trials) - first) and role(trials[0]) is None
    # every probe once over both stages: the first stage's levels by the first, the rest by the second
    assert [t.params for t in trials if role(t) == "probe"] == (
        [p for p in probes() if set(p.values()) <= {0.0, *QUICK}] + [p for p in probes() if 0.6 in p.values()])
    assert [role(t) for t in trials].count("dense") == 0  # the baseline is both stages' dense trial
    assert all(role(t) in ("probe", "front", "refine") for t in trials[first:])  # no wait, no repeat
    # what the second stage issues is new: its dense trial and the shared probes come from the first stage
    earlier = {config(t) for t in trials[:first]}
    assert not any(config(t) in earlier for t in trials[first:])
    # no configuration evaluated twice (the refine pass happens not to meet an earlier one here; the
    # sensitivity sampler reads refine trials by their stamps, so in general one may repeat)
    assert len({config(t) for t in trials}) == len(trials)
    refine = [t for t in trials if role(t) == "refine"]
    assert refine and all(stage_of(t) == 1 for t in refine)
    # the second stage's front is the full one, as if it had run alone
    assert [row["params"] for row in full.front(study)] == expected_front(6)
    # both stages' finals, the first stage's first, each configuration once (6 front points, 1 refined)
    first_finals, full_finals = quick.final_params(study), full.final_params(study)
    assert len(first_finals) == 3 and len(full_finals) == 7
    assert chain.final_params(study) == first_finals + [p for p in full_finals if p not in first_finals]
    # acceptance: the stamping stage's rule (the refine trials'), None for the others
    for t in trials:
        rule = chain.acceptance(study, t.number)
        assert (rule is not None) == (role(t) == "refine")
        if rule is not None:
            assert rule == full.acceptance(study, t.number)
    # finished: an enqueued or asked trial goes to the last stage
    study.enqueue_trial(dict.fromkeys(NAMES, 0.9))
    extra = study.ask({n: CategoricalDistribution(LEVELS) for n in NAMES})
    assert extra.params == dict.fromkeys(NAMES, 0.9) and stage_of(study.trials[extra.number]) == 1
    assert not chain.needs_wait(study)


def test_the_hand_over_waits_for_the_first_stage_and_a_new_chain_resumes():
    storage = optuna.storages.InMemoryStorage()
    quick, _, chain = quick_then_full()
    study = new_study(chain, storage)
    dists = {n: CategoricalDistribution(LEVELS) for n in NAMES}
    asked = []
    while not chain.needs_wait(study):
        asked.append(study.ask(dists))
    assert len(asked) == 1 + len(NAMES) * len(QUICK)  # the first stage's phase 1, all at once
    for t in asked:
        tell(study, t)
    front = []
    while not chain.needs_wait(study) and not chain.is_finished(study):
        front.append(study.ask(dists))
    assert [role(study.trials[t.number]) for t in front] == ["front"] * len(front)
    assert chain.stage(study) == 0 and chain.needs_wait(study)  # the first stage's front is running
    for t in front:
        tell(study, t)
    assert chain.stage(study) == 1 and not chain.needs_wait(study)
    # a new chain on the same storage goes on with the second stage
    _, full2, chain2 = quick_then_full()
    study = optuna.load_study(study_name="s", storage=storage, sampler=chain2)
    assert chain2.stage(study) == 1 and chain2.final_params(study) == quick.final_params(study)
    drive(study, chain2)
    assert [stage_of(t) for t in study.trials].count(0) == len(asked) + len(front)
    assert [row["params"] for row in full2.front(study)] == expected_front(6)


def test_a_stage_that_cannot_finish_before_the_last_is_refused():
    space = dict.fromkeys(NAMES, LEVELS)
    with pytest.raises(ValueError, match=r"stage 0 \(TPESampler\) never finishes"):
        ChainSampler([optuna.samplers.TPESampler(), SensitivitySampler(space)])
    with pytest.raises(ValueError, match="at least one stage"):
        ChainSampler([])
    with pytest.raises(ValueError, match="different loss keys"):
        ChainSampler([SensitivitySampler(space), SensitivitySampler(space, loss_key="loss_ratio")])
    # the last stage may be any sampler: the chain then never finishes
    chain = ChainSampler([SensitivitySampler(space, front_size=2), optuna.samplers.RandomSampler(seed=0)])
    study = new_study(chain)
    drive(study, chain, max_trials=30)
    assert len(study.trials) == 30 and not chain.is_finished(study) and chain.stage(study) == 1
    assert {stage_of(t) for t in study.trials[-5:]} == {1}
    # a study file's chain is checked the same way when it loads
    choice = SamplerConfig(name="chain", options={"stages": [{"name": "tpe"}, {"name": "sensitivity"}]})
    with pytest.raises(ConfigError, match=r"stage 0 \('tpe'\) never finishes.*allowed before the last stage: "
                                          r"greedy, sensitivity, saliency_path, blockwise"):
        check_sampler_options(choice, "s.yaml", [0.0, *QUICK])


def test_a_chain_is_deterministic_when_every_stage_is():
    def chain(*names):
        return SamplerConfig(name="chain", options={"stages": [{"name": n} for n in names]})

    assert is_deterministic(chain("sensitivity", "greedy")) and is_deterministic(SamplerConfig(name="greedy"))
    assert not is_deterministic(chain("sensitivity", "tpe")) and not is_deterministic(SamplerConfig(name="tpe"))


def test_docstring_example_runs(capsys):
    code = ChainSampler.__doc__.split(".. testcode::")[1].split("The sampler keeps no progress")[0]
    exec(re.sub(r"(?m)^ {12}", "", code), {})
    assert "[0, 0, 0, 0, 0, 1, 1" in capsys.readouterr().out


class TestChainBasic(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        space = {"blocks.0.a": [0.0, 0.2, 0.4], "blocks.1.a": [0.0, 0.2, 0.4]}
        return lambda: ChainSampler([GreedySampler(space, loss_inc=1.01), optuna.samplers.RandomSampler(seed=0)])


# ---- studies on the embedded model -------------------------------------------------------------------

STAGES = [{"name": "sensitivity", "options": {"probe_levels": [0.6], "front_size": 2}},
          {"name": "sensitivity", "options": {"front_size": 3}}]


def test_a_chain_study_on_the_embedded_model(tmp_path, capsys):
    # it walks levels as its stages do: sequential statistics by default; dense ones here keep the test short
    assert SearchSpaceConfig().statistics_for("chain") == "sequential"
    # with its stages known, a chain maps as its first stage does (the saliency path's tables assume dense)
    first = {"name": "saliency_path"}
    then_tpe = SamplerConfig(name="chain", options={"stages": [first, {"name": "tpe"}]})
    assert SearchSpaceConfig().statistics_for(then_tpe) == "dense"
    assert SearchSpaceConfig().statistics_for(SamplerConfig(name="chain", options={"stages": STAGES})) == "sequential"
    assert SearchSpaceConfig(statistics="sequential").statistics_for(
        SamplerConfig(name="chain", options={"stages": [first]})) == "sequential"  # an explicit choice wins
    path = write_study(tmp_path, sampler={"name": "chain", "options": {"stages": STAGES}},
                       search_space={"grouping": "kind", "levels": [0.3, 0.6, 0.9], "statistics": "dense"},
                       trials=60, baselines={"dense": True, "uniform": []})
    assert main(["study", "run", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    study = load(tmp_path)
    trials = study.trials
    kinds = len(trials[0].params)
    stages = [stage_of(t) for t in trials]
    first = stages.index(1)
    assert stages == [0] * first + [1] * (len(trials) - first)
    assert [role(t) for t in trials[:first]].count("probe") == kinds  # level 0.6 only
    assert [role(t) for t in trials[first:]].count("probe") == 2 * kinds  # 0.3 and 0.9, the 0.6 ones kept
    assert len({config(t) for t in trials}) == len(trials) and all(t.state == TrialState.COMPLETE for t in trials)
    final = study.user_attrs[keys.FINAL]
    assert out["final"] == final and 2 <= len(final) <= 5 and all(r["trial"] is not None for r in final)


@pytest.mark.parametrize(("stages", "message"), [
    ([{"name": "nope"}], "sampler.options.stages.0.name: 'nope'; allowed: greedy, tpe,"),
    ([{"name": "hybrid"}], "sampler.options.stages.0.name: 'hybrid'; allowed: greedy, tpe,"),
    ([], "sampler.options.stages: List should have at least 1 item"),
    ([{"name": "tpe"}, {"name": "sensitivity"}], "sampler.options.stages: stage 0 ('tpe') never finishes"),
    ([STAGES[0], {"name": "sensitivity", "options": {"front_size": 0}}],
     "sampler.options.stages.1.options.front_size: Input should be greater than or equal to 1"),
    ([STAGES[0], {"name": "sensitivity", "options": {"probe_levels": [0.3, 0.55]}}],
     "sampler.options.stages.1.options.probe_levels: [0.55] are not levels of the search space; allowed: [0.3,"),
    ([{"name": "sensitivity", "options": {"weights": {"att.key": 1.0}}}],
     "sampler.options.stages.0.options.weights: takes a Python object"),
    ([STAGES[0], {"name": "greedy", "options": {"loss_key": "loss_ratio"}}],
     "sampler.options.stages.1.options.loss_key: 'loss_ratio' differs from stage 0's 'calibration_loss'"),
    ([{"name": "sensitivity", "options": {"loss_key": "perplexity"}}, {"name": "tpe"}],
     "sampler.options.stages.0.options.loss_key: 'perplexity' is not computed by this study"),
])
def test_bad_stage_options_are_refused_when_the_file_loads(tmp_path, capsys, stages, message):
    path = write_study(tmp_path, sampler={"name": "chain", "options": {"stages": stages}},
                       search_space={"grouping": "kind", "levels": [0.3, 0.6, 0.9]},
                       model={"source": str(tmp_path / "no-such-model")})
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "no-such-model" not in err, err
