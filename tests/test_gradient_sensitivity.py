"""Sensitivities from one gradient pass (thresh_opt.incremental.gradient) on the embedded model, the
sensitivity sampler reading them (probes: gradient) in an Optuna study, and a study through the CLI."""

from __future__ import annotations

import math

import optuna
import pytest
from test_sensitivity_sampler import DENSE_LOSS, LEVELS, MACS, NAMES, drive, kind_study, loss_of, new_study, role
from test_study import write_study

from thresh_opt import keys
from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.incremental import IncrementalEngine
from thresh_opt.incremental.gradient import saliencies
from thresh_opt.samplers import SensitivitySampler
from thresh_opt.samplers.allocation import front, spread

optuna.logging.set_verbosity(optuna.logging.ERROR)

SMALL = CalibrationSpec(source="heldout", ctx_len=32, count=4, seed=0)


def ranks(values):
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0] * len(values)
    for r, i in enumerate(order):
        out[i] = r
    return out


def correlation(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


def test_saliencies_grow_with_the_threshold_split_by_batch_and_rank_the_measured_losses(rwkv):
    tm = rwkv.thresholded
    chunks = calibration_chunks(rwkv, SMALL)
    n = len(tm.names)
    engine = IncrementalEngine(tm, chunks, batch_size=4)
    levels = [0.3, 0.6, 0.9]
    by_level = [engine.thresholds_for([lv] * n, "dense") for lv in levels]
    wanted = {i: [t[i] for t in by_level] for i in range(n)}
    scores = saliencies(tm, engine.runner.batches, wanted)
    one_by_one = saliencies(tm, [c[None] for c in chunks], wanted)  # the gradient is the whole set's anyway
    for i in range(n):
        assert scores[i] == pytest.approx(one_by_one[i], rel=1e-4, abs=1e-12)
        assert all(s >= 0 for s in scores[i]) and scores[i] == sorted(scores[i])  # more zeros, more saliency
    assert all(t == 0.0 for t in tm.thresholds.values())  # left dense
    # across modules at level 0.9, the ranking follows the measured one-at-a-time loss increases (on
    # chunks of 128 tokens: 0.74 on 4 of them, 0.81 on 8; short chunks of this recurrent model rank worse)
    engine = IncrementalEngine(tm, calibration_chunks(rwkv, SMALL.model_copy(update={"ctx_len": 128})))
    dense = engine.evaluate([0.0] * n)
    top = engine.thresholds_for([0.9] * n, "dense")
    predicted = saliencies(tm, engine.runner.batches, {i: [top[i]] for i in range(n)})
    measured = []
    for i in range(n):
        vector = [0.0] * n
        vector[i] = top[i]
        measured.append(engine.evaluate(vector).loss - dense.loss)
    assert correlation(ranks([predicted[i][0] for i in range(n)]), ranks(measured)) > 0.5


def scores_of(scale):
    """The study attribute a thresh-opt study sets, from the synthetic objective's true loss increases."""
    one = {n: [[lv, scale * (loss_of({**dict.fromkeys(NAMES, 0.0), n: lv}) - DENSE_LOSS)] for lv in LEVELS[1:]]
           for n in NAMES}
    return {"scores": one, "gains": {n: [[lv, MACS[n] * lv] for lv in LEVELS[1:]] for n in NAMES}}


def test_the_gradient_sampler_takes_the_front_from_the_study_attribute_without_probes():
    sampler = SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=5, probes="gradient")
    assert sampler.needs_gradient_scores
    study = new_study(sampler)
    with pytest.raises(RuntimeError, match=keys.GRADIENT_SCORES):
        study.ask()
    study = new_study(SensitivitySampler(dict.fromkeys(NAMES, LEVELS), front_size=5, probes="gradient"),
                      storage=optuna.storages.InMemoryStorage())
    sampler = study.sampler
    study.set_user_attr(keys.GRADIENT_SCORES, scores_of(1000.0))  # the scale does not matter
    drive(study, sampler)
    roles = [role(t) for t in study.trials]
    assert "probe" not in roles and roles[0] == "dense"
    table = {n: {0.0: 0.0, **{lv: loss_of({**dict.fromkeys(NAMES, 0.0), n: lv}) - DENSE_LOSS for lv in LEVELS[1:]}}
             for n in NAMES}
    gains = {n: {lv: MACS[n] * lv for lv in LEVELS} for n in NAMES}
    wanted = [a.levels for a in spread([a for a in front(table, gains) if any(a.levels.values())], 5)]
    assert sampler.final_params(study) == wanted
    assert len(study.trials) == 1 + len([p for p in wanted if p != dict.fromkeys(NAMES, 0.0)])
    with pytest.raises(ValueError, match="probes must be one of measured, gradient"):
        SensitivitySampler(dict.fromkeys(NAMES, LEVELS), probes="sampled")


def test_a_gradient_sensitivity_study_on_the_embedded_model(tmp_path, capsys):
    out, study, params = kind_study(tmp_path, capsys, {"probes": "gradient", "front_size": 4,
                                                       "refine_budgets": [1.02]})
    scores = study.user_attrs[keys.GRADIENT_SCORES]
    assert set(scores["scores"]) == set(params) and all(len(v) == 3 for v in scores["scores"].values())
    gains = [[g for _, g in v] for v in scores["gains"].values()]
    assert all(g == sorted(g) and g[0] >= 0 for g in gains) and max(max(g) for g in gains) > 0.1
    assert study.user_attrs[keys.REFERENCE_FE] >= 2.0  # the gradient pass is counted with the dense reference
    roles = [role(t) for t in study.trials]
    assert "probe" not in roles and roles.count("front") >= 1 and "refine" in roles
    assert out["final"] and study.user_attrs[keys.FINAL][-1]["trial"] is not None
    assert len(study.trials) < 40  # no probes: 7 parameters x 3 levels would be 21 trials alone
    capsys.readouterr()
    path = write_study(tmp_path, name="bad", sampler={"name": "sensitivity", "options": {"probes": "sampled"}})
    assert main(["study", "run", str(path)]) == 2
    assert "sampler.options.probes" in capsys.readouterr().err
