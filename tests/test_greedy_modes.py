"""The greedy search run directly on the model: paper mode is the published procedure (checked against a
line-by-line implementation of it), fast mode takes the same decisions with less work, and a study with the
greedy sampler takes them too (one code path)."""

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_study import FAST, load

from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.greedy import greedy_search

SMALL = CalibrationSpec(source="heldout", ctx_len=64, count=4, seed=0)
TINY = CalibrationSpec(source="heldout", ctx_len=32, count=2, seed=0)


def published(tm, chunks, loss_inc, levels):
    """design.md 1.3 as written, with its own statistic and loss: plain scan, no warm start."""

    def loss():
        with torch.no_grad():
            logits = tm.model(input_ids=chunks, use_cache=False).logits[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), chunks[:, 1:].reshape(-1)).item()

    def candidates(m):
        seen = []
        with tm.observe(lambda i, x, _mask: seen.append(x) if i == m else None), torch.no_grad():
            tm.model(input_ids=chunks, use_cache=False)
        x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).abs().float()
        return [torch.quantile(x, level, dim=-1).double().mean().item() for level in levels]  # mean per-token quantile

    tm.reset_thresholds()
    l_ref, choices = loss(), {}
    for m, name in enumerate(tm.names):
        choice = 0.0
        for level, t in zip(levels, candidates(m)):
            tm.set_thresholds({name: t})
            value = loss()
            if not value / l_ref < loss_inc:
                break
            choice, accepted = level, (t, value)
        tm.set_thresholds({name: accepted[0] if choice else 0.0})
        if choice:
            l_ref = accepted[1]
        choices[name] = choice
    return choices, l_ref


@pytest.mark.parametrize("which, loss_inc, levels",
                         [("rwkv", 1.003, [0.3, 0.5, 0.7, 0.9]), ("opt", 1.003, [0.2, 0.5, 0.8])])
def test_paper_mode_is_the_published_procedure(which, loss_inc, levels, request):
    loaded = request.getfixturevalue(which)
    chunks = calibration_chunks(loaded, TINY)
    expected, final_loss = published(loaded.thresholded, chunks, loss_inc, levels)
    paper = greedy_search(loaded, TINY, "paper", loss_inc, levels, warm_start=False, batch_size=2)
    assert paper.levels == expected and sum(v > 0 for v in expected.values()) > len(expected) // 3
    assert paper.final_loss == pytest.approx(final_loss, rel=1e-6)


@pytest.mark.parametrize("which, loss_inc, levels", [("rwkv", 1.002, None), ("opt", 1.003, [0.2, 0.5, 0.8])])
def test_fast_and_paper_mode_take_the_same_decisions_with_less_work(which, loss_inc, levels, request):
    loaded = request.getfixturevalue(which)
    spec = TINY if which == "rwkv" else SMALL
    paper = greedy_search(loaded, spec, "paper", loss_inc, levels, batch_size=4)
    fast = greedy_search(loaded, spec, "fast", loss_inc, levels, batch_size=4)
    assert fast.levels == paper.levels and fast.thresholds == paper.thresholds
    assert [c.tried for c in fast.choices] == [c.tried for c in paper.choices]  # every loss identical too
    assert fast.final_loss == paper.final_loss and fast.sparsity == paper.sparsity > 0.3
    n = len(loaded.thresholded.names)
    assert paper.cost.stats_passes == n and paper.cost.stats_fe == pytest.approx(n)  # a full pass per module
    assert paper.cost.loss_passes == 1 + sum(len(c.tried) for c in paper.choices)  # and per candidate
    assert fast.cost.stats_passes < paper.cost.stats_passes and fast.cost.loss_passes <= paper.cost.loss_passes
    assert fast.cost.forward_equivalents < 0.7 * paper.cost.forward_equivalents
    # the tolerance compounds: every accepted step stayed within it
    accepted = [loss for c in fast.choices for (_, loss, ok) in c.tried if ok]
    assert fast.final_loss / fast.dense_loss < loss_inc ** len(accepted) and fast.final_loss > fast.dense_loss
    assert loaded.thresholded.thresholds == fast.thresholds  # the model is left at the choices


@pytest.mark.parametrize("which, source", [("rwkv", "embedded:rwkv4-tiny"), ("opt", "embedded:opt-tiny")])
def test_a_greedy_study_makes_the_published_choices(which, source, tmp_path, request):
    loaded = request.getfixturevalue(which)
    levels = [0.3, 0.6, 0.9]
    fast = greedy_search(loaded, TINY, "fast", 1.005, levels, batch_size=2)  # paper mode's choices (test above)
    cfg = {**FAST, "name": "g", "run_dir": str(tmp_path / "g"), "model": {"source": source},
           "calibration": TINY.model_dump(), "search_space": {"grouping": "module", "levels": levels},
           "sampler": {"name": "greedy", "options": {"loss_inc": 1.005}}, "trials": 300,
           "baselines": {"dense": True, "uniform": []}, "evaluation": {"batch_size": 2}}
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", "run", str(path)]) == 0
    study = load(tmp_path, "g")
    final = study.user_attrs["thresh_opt:final"][0]
    assert final["params"] == fast.levels and final["thresholds"] == pytest.approx(fast.thresholds)
    trial = study.trials[final["trial"]]
    assert trial.user_attrs["calibration_loss"] == fast.final_loss and trial.user_attrs["sparsity"] == fast.sparsity
    assert study.user_attrs["thresh_opt:statistics"] == "sequential"
    # the study's trials cost no more than fast mode's passes
    spent = sum(t.user_attrs["forward_equivalents"] for t in study.trials)
    assert spent + study.user_attrs["thresh_opt:reference_forward_equivalents"] <= fast.cost.forward_equivalents + 1e-9


def test_plain_scan_stops_at_the_first_failure_and_warm_start_begins_at_the_most_frequent_choice(rwkv):
    levels = [0.3, 0.6, 0.9]
    scan = greedy_search(rwkv, TINY, "fast", 1.002, levels, warm_start=False, batch_size=2)
    for c in scan.choices:
        oks = [ok for (_, _, ok) in c.tried]
        assert [lvl for (lvl, _, _) in c.tried] == levels[: len(oks)] and oks[:-1] == [True] * (len(oks) - 1)
    warm = greedy_search(rwkv, TINY, "fast", 1.002, levels, warm_start=True, batch_size=2)
    started = 0
    for m, c in enumerate(warm.choices):
        kind = c.name.split(".", 2)[2]
        earlier = Counter(e.level for e in warm.choices[:m] if e.name.endswith(kind))
        if earlier:
            most = max(earlier, key=lambda v: (earlier[v], -v))  # 0.0 (nothing accepted) counts as a choice
            assert c.tried[0][0] == (most or levels[0])
            started += most > 0
    assert started > 10 and warm.trials < scan.trials


def test_greedy_command_compares_both_modes(tmp_path, capsys):
    out = tmp_path / "thr.json"
    code = main(["greedy", "embedded:rwkv4-tiny", "--mode", "both", "--ctx-len", "32", "--count", "2",
                 "--levels", "0.3,0.6,0.9", "--loss-inc", "1.003", "--output", str(out), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["comparison"]["same_choices"] and data["comparison"]["fe_ratio"] < 0.8
    assert set(data["results"]) == {"paper", "fast"}
    assert json.loads(out.read_text()) == {c["name"]: c["threshold"] for c in data["results"]["fast"]["choices"]}


def test_greedy_command_rejects_bad_options(capsys):
    assert main(["greedy", "embedded:rwkv4-tiny", "--loss-inc", "0.99"]) == 2
    assert "--loss-inc" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["greedy", "embedded:rwkv4-tiny", "--levels", "0.5,1.5"])
    assert exc.value.code == 2
