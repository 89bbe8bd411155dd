"""GreedySampler against a literal reference of the published greedy search (design.md 1.3)."""

from __future__ import annotations

import re
from collections import Counter
from itertools import pairwise

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from thresh_opt.samplers import GreedySampler
from thresh_opt.samplers._greedy_state import default_kind

optuna.logging.set_verbosity(optuna.logging.ERROR)

LEVELS = [round(0.1 * i, 1) for i in range(1, 10)]  # 0.1 .. 0.9; the sampler adds 0.0
WEIGHTS = {
    "blocks.0.att.key": 0.004,
    "blocks.0.ffn.key": 0.05,
    "blocks.1.att.key": 0.006,
    "blocks.1.ffn.key": 0.001,
    "blocks.2.att.key": 0.003,
    "blocks.2.ffn.key": 2.0,  # nothing passes: 0.0 (or the first candidate with keep_first)
    "blocks.3.att.key": 0.02,
    "blocks.3.ffn.key": 0.01,
    "head": 0.0005,
}
NAMES = list(WEIGHTS)
# A bump makes the loss non-monotone, so plain scan and warm start can choose differently.
BUMPS = {("blocks.1.att.key", 0.1): 0.01, ("blocks.3.ffn.key", 0.2): 0.01}


def make_loss(bumps=None):
    bumps = bumps or {}

    def loss(params):
        return 3.0 * (1 + sum(WEIGHTS[m] * s**2 + bumps.get((m, s), 0.0) for m, s in params.items()))

    return loss


def reference(loss, tol, warm_start=False, keep_first=False, kind=default_kind, start_level=0.0):
    """The greedy search as design.md 1.3 writes it: returns (choices, number of loss evaluations)."""
    config = dict.fromkeys(NAMES, 0.0)
    l_ref, evals = loss(config), 1
    for n in NAMES:
        tried = {}

        def ok(c, tried=tried, n=n, l_ref=l_ref):  # called only within this iteration
            nonlocal evals
            evals += 1
            tried[c] = loss({**config, n: c})
            return tried[c] / l_ref < tol

        prior = [config[o] for o in NAMES[: NAMES.index(n)] if kind(o) == kind(n)]
        counts = Counter(prior)
        start = max(counts, key=lambda v: (counts[v], -v)) if warm_start and prior else start_level
        choice = 0.0
        if start > 0 and ok(start):
            choice = start
            for c in [c for c in LEVELS if c > start]:
                if not ok(c):
                    break
                choice = c
        elif start > 0:
            for c in reversed([c for c in LEVELS if c < start]):
                if ok(c):
                    choice = c
                    break
        else:
            for c in LEVELS:
                if not ok(c):
                    break
                choice = c
        if choice == 0.0 and keep_first:
            choice = LEVELS[0]  # evaluated (and failed) on every path that ends at 0.0
        config[n] = choice
        if choice > 0:
            l_ref = tried[choice]
    return config, evals


def new_study(sampler, storage=None, name="greedy"):
    return optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, directions=["minimize", "maximize"], load_if_exists=True
    )


def journal(path):
    return JournalStorage(JournalFileBackend(str(path)))


def tell(study, trial, loss, fail):
    if fail(trial.params):
        study.tell(trial, state=TrialState.FAIL)
        return
    value = loss(trial.params)
    trial.set_user_attr("calibration_loss", value)
    study.tell(trial, [value, sum(trial.params.values())])  # values are ignored by the sampler


def drive(study, sampler, loss, batch=1, reverse=False, fail=lambda p: False, max_trials=None):
    """The driver's loop: ask up to `batch` trials (fewer at the barrier), evaluate, tell."""
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    while not sampler.is_finished(study):
        if max_trials is not None and len(study.trials) >= max_trials:
            return
        asked = [study.ask(dists)]
        while len(asked) < batch and not sampler.needs_wait(study):
            asked.append(study.ask(dists))
        for t in reversed(asked) if reverse else asked:
            tell(study, t, loss, fail)


def stamp(study, trial):
    """The system attributes of an asked (live) trial."""
    return study.get_trials(deepcopy=False)[trial.number].system_attrs


def keys(study, states=(TrialState.COMPLETE,)):
    out = []
    for t in study.get_trials(deepcopy=False, states=states):
        a = t.system_attrs
        if a.get("greedy:role") in ("dense", "candidate"):
            out.append((a["greedy:pass"], a["greedy:module"], a["greedy:candidate"]))
    return out


@pytest.mark.parametrize(
    "name, kind",
    [("blocks.3.att.key", "att.key"), ("model.layers.12.mlp.fc1", "mlp.fc1"), ("head", "head"), ("b1.x", "b1.x")],
)
def test_default_kind(name, kind):
    assert default_kind(name) == kind


def test_invalid_arguments():
    with pytest.raises(ValueError, match="at least one"):
        GreedySampler({})
    with pytest.raises(ValueError, match=">= 0"):
        GreedySampler({"a": [0.1, -0.2]})
    with pytest.raises(ValueError, match="list"):
        GreedySampler({"a": 0.5})
    with pytest.raises(ValueError, match="non-empty"):
        GreedySampler({"a": [0.1]}, loss_inc=[])
    for bad in (float("nan"), 1.0, 0.5, [1.001, True]):
        with pytest.raises(ValueError, match="a number > 1"):
            GreedySampler({"a": [0.1]}, loss_inc=bad)
    for bad in (float("nan"), -0.1, 1.5, True, "0.5", [0.5]):
        with pytest.raises(ValueError, match="start_level"):
            GreedySampler({"a": [0.1]}, start_level=bad)


def test_search_space_adds_zero_sorts_and_dedupes():
    sampler = GreedySampler({"b": [0.5, 0.1, 0.5], "a": [0, 0.3]})
    assert sampler.search_space == {"b": [0.0, 0.1, 0.5], "a": [0.0, 0.3]}


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("tol", [1.0002, 1.0005, 1.002])
def test_serial_matches_reference(warm_start, tol):
    loss = make_loss(BUMPS)
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=tol, warm_start=warm_start)
    study = new_study(sampler)
    drive(study, sampler, loss)
    expected, evals = reference(loss, tol, warm_start)
    assert sampler.is_finished(study)
    assert sampler.final_params(study) == [expected]
    assert len(study.trials) == evals  # the reference's evaluations, its dense one included
    assert len(set(keys(study))) == len(keys(study))
    assert [t.system_attrs["greedy:role"] for t in study.trials].count("dense") == 1


def test_custom_kind_of():
    loss = make_loss(BUMPS)

    def kind(name):
        return "all"  # one kind: every module starts at the most frequent choice so far

    expected, evals = reference(loss, 1.0005, warm_start=True, kind=kind)
    assert expected != reference(loss, 1.0005, warm_start=True)[0]
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, kind_of=kind)
    study = new_study(sampler)
    drive(study, sampler, loss)
    assert sampler.final_params(study) == [expected] and len(study.trials) == evals


@pytest.mark.parametrize("bumps", [None, BUMPS])
def test_warm_start_against_plain_scan(bumps):
    loss = make_loss(bumps)
    plain, plain_evals = reference(loss, 1.002, warm_start=False)
    warm, warm_evals = reference(loss, 1.002, warm_start=True)
    if bumps:  # a non-monotone loss: the warm start skips the bump
        assert plain["blocks.1.att.key"] == 0.0 and warm["blocks.1.att.key"] > 0.0
    else:  # a monotone loss: the same choices from fewer evaluations (design.md 5)
        assert plain == warm and warm_evals < plain_evals
    got = []
    for warm_start in (False, True):
        sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.002, warm_start=warm_start)
        study = new_study(sampler)
        drive(study, sampler, loss)
        got.append((sampler.final_params(study)[0], len(study.trials)))
    assert got == [(plain, plain_evals), (warm, warm_evals)]


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("bumps", [None, BUMPS])
def test_start_level_walks_from_a_middle_level(warm_start, bumps):
    loss = make_loss(bumps)
    expected, evals = reference(loss, 1.002, warm_start, start_level=0.5)
    scanned, scan_evals = reference(loss, 1.002, warm_start)
    assert evals < scan_evals  # a kind's first module no longer tries every level below its choice
    if bumps is None:  # a monotone loss: the same choices
        assert expected == scanned
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.002, warm_start=warm_start, start_level=0.5)
    study = new_study(sampler)
    drive(study, sampler, loss)
    assert sampler.final_params(study) == [expected] and len(study.trials) == evals
    # another setting, another pass: a study resumed with the published setting does not take its results
    published = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.002, warm_start=warm_start)
    assert published._pass_ids != sampler._pass_ids
    assert published._pass_ids == GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.002, warm_start=warm_start,
                                                start_level=None)._pass_ids


def test_tolerance_list_traces_a_front():
    loss = make_loss()
    tols = [1.0002, 1.0005, 1.002]
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=tols)
    study = new_study(sampler)
    drive(study, sampler, loss)
    finals = sampler.final_params(study)
    refs = [reference(loss, t, warm_start=True) for t in tols]
    assert finals == [r[0] for r in refs]
    assert len(study.trials) == sum(r[1] for r in refs)
    for tighter, looser in pairwise(finals):
        assert all(looser[n] >= tighter[n] for n in NAMES)
        assert sum(looser.values()) > sum(tighter.values())
    roles = [(t.system_attrs["greedy:pass"], t.system_attrs["greedy:role"]) for t in study.trials]
    assert [r for r in roles if r[1] == "dense"] == [(0, "dense"), (1, "dense"), (2, "dense")]
    assert [p for p, _ in roles] == sorted(p for p, _ in roles)  # one pass after another


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("batch, reverse", [(2, False), (4, True), (4, False)])
def test_batches_give_the_same_choices(warm_start, batch, reverse):
    loss = make_loss(BUMPS)
    tols = [1.0005, 1.002]
    serial = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=tols, warm_start=warm_start)
    s_study = new_study(serial)
    drive(s_study, serial, loss)
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=tols, warm_start=warm_start)
    study = new_study(sampler)
    drive(study, sampler, loss, batch=batch, reverse=reverse)
    assert sampler.final_params(study) == serial.final_params(s_study)
    assert len(study.trials) >= len(s_study.trials)
    assert len(set(keys(study))) == len(keys(study))  # speculation never repeats a candidate
    assert "wait" not in [t.system_attrs["greedy:role"] for t in study.trials]


@pytest.mark.parametrize("batch, on_journal", [(1, True), (3, False)])
def test_resume(tmp_path, batch, on_journal):
    """A new sampler and a new study object on the same storage finish the search."""
    loss = make_loss(BUMPS)
    tols = [1.0005, 1.002]
    path = tmp_path / "j.log"
    memory = optuna.storages.InMemoryStorage()
    storage = (lambda: journal(path)) if on_journal else (lambda: memory)
    first = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=tols)
    study = new_study(first, storage())
    drive(study, first, loss, batch=batch, max_trials=40)
    assert 40 <= len(study.trials) < 50 and not first.is_finished(study)
    # A killed driver leaves a trial RUNNING; the next driver marks it abandoned (PRUNED).
    dists = {n: CategoricalDistribution(c) for n, c in first.search_space.items()}
    stale = study.ask(dists)
    stale_key = tuple(stamp(study, stale)[k] for k in ("greedy:pass", "greedy:module", "greedy:candidate"))
    del study, first

    second = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=tols)
    study = optuna.load_study(study_name="greedy", storage=storage(), sampler=second)
    study.tell(stale.number, state=TrialState.PRUNED)
    again = study.ask(dists)  # the abandoned candidate is the next one needed: issued again
    assert tuple(stamp(study, again)[k] for k in ("greedy:pass", "greedy:module", "greedy:candidate")) == stale_key
    tell(study, again, loss, lambda p: False)
    drive(study, second, loss, batch=batch)
    assert second.final_params(study) == [reference(loss, t, warm_start=True)[0] for t in tols]
    assert len(set(keys(study))) == len(keys(study))
    assert stale_key in keys(study)  # issued again
    assert Counter(keys(study, (TrialState.PRUNED,))) == Counter([stale_key])


def test_enqueued_baselines_and_other_samplers_are_ignored():
    loss = make_loss()
    storage = optuna.storages.InMemoryStorage()
    other = new_study(optuna.samplers.RandomSampler(seed=0), storage)
    dists = {n: CategoricalDistribution([0.0, *LEVELS]) for n in NAMES}
    for _ in range(3):
        tell(other, other.ask(dists), loss, lambda p: False)
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS))
    study = new_study(sampler, storage)
    study.enqueue_trial(dict.fromkeys(NAMES, 0.0))
    study.enqueue_trial(dict.fromkeys(NAMES, 0.5))
    drive(study, sampler, loss)
    expected, evals = reference(loss, 1.0005, warm_start=True)
    assert sampler.final_params(study) == [expected]
    assert len(study.trials) == 3 + 2 + evals
    assert all("greedy:role" not in t.system_attrs for t in study.trials[:5])
    assert study.trials[4].params == dict.fromkeys(NAMES, 0.5)


@pytest.mark.parametrize("warm_start", [False, True])
def test_keep_first(warm_start):
    loss = make_loss()
    plain, _ = reference(loss, 1.0005, warm_start)
    kept, evals = reference(loss, 1.0005, warm_start, keep_first=True)
    assert plain["blocks.2.ffn.key"] == 0.0 and kept["blocks.2.ffn.key"] == 0.1
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), warm_start=warm_start, keep_first=True)
    study = new_study(sampler)
    drive(study, sampler, loss)
    assert sampler.final_params(study) == [kept]
    assert len(study.trials) == evals


def test_a_failed_trial_rejects_its_candidate():
    loss = make_loss()
    broken = ("blocks.1.ffn.key", 0.4)
    fail = lambda p: p[broken[0]] == broken[1]  # noqa: E731

    def loss_with_failure(params):
        return float("inf") if fail(params) else loss(params)

    expected, evals = reference(loss_with_failure, 1.0005, warm_start=True)
    assert expected[broken[0]] < reference(loss, 1.0005, warm_start=True)[0][broken[0]]
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS))
    study = new_study(sampler)
    drive(study, sampler, loss, fail=fail)
    assert sampler.final_params(study) == [expected]
    assert len(study.trials) == evals
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1


def test_a_failed_dense_trial_is_issued_again():
    loss = make_loss()
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS))
    study = new_study(sampler)
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    study.tell(study.ask(dists), state=TrialState.FAIL)
    trial = study.ask(dists)
    assert stamp(study, trial)["greedy:role"] == "dense"
    tell(study, trial, loss, lambda p: False)
    drive(study, sampler, loss)
    assert sampler.final_params(study) == [reference(loss, 1.0005, warm_start=True)[0]]


def test_needs_wait_holds_exactly_at_the_barrier():
    loss = make_loss()
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), warm_start=False)
    study = new_study(sampler)
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    assert not sampler.needs_wait(study)
    asked = []
    while not sampler.needs_wait(study):
        asked.append(study.ask(dists))
    # The dense trial, then every candidate of the first module (speculation up the scan).
    assert [stamp(study, t)["greedy:candidate"] for t in asked] == [0.0, *LEVELS]
    assert [stamp(study, t)["greedy:role"] for t in asked] == ["dense"] + ["candidate"] * 9
    assert sampler.progress(study)["module"] == NAMES[0] and not sampler.is_finished(study)

    extra = study.ask(dists)  # asked anyway: a harmless duplicate, ignored
    assert stamp(study, extra)["greedy:role"] == "wait" and extra.params == dict.fromkeys(NAMES, 0.0)
    study.tell(extra, state=TrialState.FAIL)

    choice = reference(loss, 1.0005)[0][NAMES[0]]  # 0.3: 0.4 is the first failure
    by_candidate = {stamp(study, t)["greedy:candidate"]: t for t in asked[1:]}
    tell(study, asked[0], loss, lambda p: False)
    for c in LEVELS[: LEVELS.index(choice) + 1]:
        assert sampler.needs_wait(study)  # the first failure is still unknown
        tell(study, by_candidate[c], loss, lambda p: False)
    assert sampler.needs_wait(study)
    tell(study, by_candidate[round(choice + 0.1, 1)], loss, lambda p: False)  # the first failure
    assert not sampler.needs_wait(study)  # the module is decided: the next one can start
    nxt = study.ask(dists)
    assert stamp(study, nxt)["greedy:module"] == NAMES[1] and nxt.params[NAMES[0]] == choice
    assert sampler.progress(study)["done_modules"] == 1


def test_finished_study_repeats_the_final_configuration():
    loss = make_loss()
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=[1.0005, 1.002])
    study = new_study(sampler)
    assert sampler.final_params(study) == []
    drive(study, sampler, loss)
    assert sampler.is_finished(study) and not sampler.needs_wait(study)
    trial = study.ask({n: CategoricalDistribution(c) for n, c in sampler.search_space.items()})
    assert stamp(study, trial)["greedy:role"] == "finished"
    assert trial.params == sampler.final_params(study)[-1]
    study.tell(trial, state=TrialState.FAIL)
    assert len(sampler.final_params(study)) == 2
    assert sampler.progress(study) == {
        "pass": 1, "passes": 2, "tolerance": 1.002, "module": None, "done_modules": len(NAMES),
        "total_modules": len(NAMES), "done_steps": 2 * len(NAMES), "total_steps": 2 * len(NAMES), "finished": True,
    }


def test_progress_during_a_pass():
    loss = make_loss()
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=[1.0005, 1.002])
    study = new_study(sampler)
    assert sampler.progress(study)["done_steps"] == 0
    _, evals = reference(loss, 1.0005, warm_start=True)
    drive(study, sampler, loss, max_trials=evals + 1)  # the first pass and the second dense trial
    p = sampler.progress(study)
    assert (p["pass"], p["module"], p["done_modules"], p["done_steps"]) == (1, NAMES[0], 0, len(NAMES))


def test_choices_must_contain_every_value():
    sampler = GreedySampler({"a": [0.2, 0.4]})
    study = new_study(sampler)
    with pytest.raises(ValueError, match="search_space"):
        study.ask({"a": CategoricalDistribution([0.2, 0.4])})  # the dense trial needs 0.0


def test_docstring_example_runs(capsys):
    code = GreedySampler.__doc__.split(".. testcode::")[1].split("No state is kept")[0]
    exec(re.sub(r"(?m)^ {12}", "", code), {})
    assert "blocks.0.att.key" in capsys.readouterr().out


def drive_window(study, sampler, loss, workers, finish_newest_first):
    """A sliding window, as the study driver with Ray actors runs it: a new trial is asked as soon as
    one finishes, so a candidate can finish while the dense trial of its pass is still running."""
    dists = {n: CategoricalDistribution(c) for n, c in sampler.search_space.items()}
    running = []
    while not sampler.is_finished(study) or running:
        while (len(running) < workers and not sampler.is_finished(study)
               and not (running and sampler.needs_wait(study))):
            running.append(study.ask(dists))
        trial = running.pop() if finish_newest_first else running.pop(0)
        tell(study, trial, loss, lambda p: False)


@pytest.mark.parametrize("warm_start", [False, True])
@pytest.mark.parametrize("workers, newest_first", [(2, True), (3, True), (2, False)])
def test_a_sliding_window_gives_the_same_choices_without_repeats(warm_start, workers, newest_first):
    loss = make_loss(BUMPS)
    serial = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, warm_start=warm_start)
    s_study = new_study(serial)
    drive(s_study, serial, loss)
    sampler = GreedySampler(dict.fromkeys(NAMES, LEVELS), loss_inc=1.0005, warm_start=warm_start)
    study = new_study(sampler)
    drive_window(study, sampler, loss, workers, newest_first)
    assert sampler.final_params(study) == serial.final_params(s_study)
    assert len(set(keys(study))) == len(keys(study))  # no candidate evaluated twice
    assert "wait" not in [t.system_attrs["greedy:role"] for t in study.trials]
