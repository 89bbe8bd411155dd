"""The greedy search run directly on the model: fast mode takes the published procedure's decisions
with less work; block-input caching gives the same numbers as full passes."""

import json

import pytest

from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.greedy import greedy_search
from thresh_opt.models.prefix import PrefixRunner

SMALL = CalibrationSpec(source="heldout", ctx_len=64, count=4, seed=0)
TINY = CalibrationSpec(source="heldout", ctx_len=64, count=2, seed=0)


@pytest.mark.parametrize("which", ["rwkv", "opt"])
def test_a_pass_from_a_cached_block_input_equals_a_full_pass(which, request):
    loaded = request.getfixturevalue(which)
    tm = loaded.thresholded
    runner = PrefixRunner(tm, calibration_chunks(loaded, SMALL), batch_size=2)
    tm.set_thresholds({n: 0.05 for n in tm.names[: len(tm.names) // 2]})
    full = runner.run(capture=3)
    runner.adopt(3, full.captured)
    tm.set_thresholds({tm.names[-1]: 0.3})  # a change downstream of block 3
    again_full, from_cache = runner.run(), runner.run(start=3)
    assert from_cache.loss == again_full.loss != full.loss
    assert from_cache.cost < 0.6 * again_full.cost and again_full.cost == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no cached input"):
        runner.run(start=2)


@pytest.mark.parametrize("which, loss_inc, levels", [("rwkv", 1.002, None), ("opt", 1.003, [0.2, 0.5, 0.8])])
def test_fast_and_paper_mode_take_the_same_decisions_with_less_work(which, loss_inc, levels, request):
    loaded = request.getfixturevalue(which)
    chunks = calibration_chunks(loaded, TINY if which == "rwkv" else SMALL)
    paper = greedy_search(loaded.thresholded, chunks, "paper", loss_inc, levels, batch_size=4)
    fast = greedy_search(loaded.thresholded, chunks, "fast", loss_inc, levels, batch_size=4)
    assert fast.levels == paper.levels and fast.thresholds == paper.thresholds
    assert [c.tried for c in fast.choices] == [c.tried for c in paper.choices]  # every loss identical too
    assert fast.final_loss == paper.final_loss and fast.sparsity == paper.sparsity > 0.3
    assert paper.cost.stats_passes == len(loaded.thresholded.names) and fast.cost.stats_passes < paper.cost.stats_passes
    assert fast.cost.loss_passes == paper.cost.loss_passes
    assert fast.cost.forward_equivalents < 0.8 * paper.cost.forward_equivalents
    # the tolerance compounds: every accepted step stayed within it
    accepted = [loss for c in fast.choices for (_, loss, ok) in c.tried if ok]
    assert fast.final_loss / fast.dense_loss < loss_inc ** len(accepted) and fast.final_loss > fast.dense_loss
    assert loaded.thresholded.thresholds == fast.thresholds  # the model is left at the choices


def test_plain_scan_stops_at_the_first_failure_and_warm_start_begins_at_the_most_frequent_choice(rwkv):
    from collections import Counter

    chunks = calibration_chunks(rwkv, TINY)
    levels = [0.3, 0.6, 0.9]
    scan = greedy_search(rwkv.thresholded, chunks, "fast", 1.002, levels, warm_start=False, batch_size=2)
    for c in scan.choices:
        oks = [ok for (_, _, ok) in c.tried]
        assert [lvl for (lvl, _, _) in c.tried] == levels[: len(oks)] and oks[:-1] == [True] * (len(oks) - 1)
    warm = greedy_search(rwkv.thresholded, chunks, "fast", 1.002, levels, warm_start=True, batch_size=2)
    started = 0
    for m, c in enumerate(warm.choices):
        kind = c.name.split(".", 2)[2]
        earlier = Counter(e.level for e in warm.choices[:m] if e.name.endswith(kind) and e.level > 0)
        if earlier:
            most = max(earlier, key=lambda v: (earlier[v], -v))
            assert c.tried[0][0] == most
            started += 1
    assert started > 10 and warm.cost.loss_passes < scan.cost.loss_passes


def test_greedy_command_compares_both_modes(tmp_path, capsys):
    out = tmp_path / "thr.json"
    code = main(["greedy", "embedded:rwkv4-tiny", "--mode", "both", "--ctx-len", "64", "--count", "2",
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
