"""Early rejection: the paired sequential test on hand-made numbers, screened evaluations on the embedded
model (partial results never taken for full ones, every batch counted), and the greedy search in early
mode against paper mode, directly and as a study."""

import math

import pytest
import yaml
from test_study import FAST, load

from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.cli import main
from thresh_opt.greedy import greedy_search
from thresh_opt.incremental import IncrementalEngine
from thresh_opt.incremental.sequential import Screen, SequentialTest

SMALL = CalibrationSpec(source="heldout", ctx_len=64, count=4, seed=0)


def test_the_sequential_test_on_hand_made_numbers():
    test = SequentialTest(tolerance=1.01, n=8, z_accept=2.0, z_reject=2.0, min_chunks=2, min_reject_chunks=2)
    ref = [5.0, 6.0, 5.5, 4.0]
    # d = c - 1.01 r: 0.45, 0.54 -> mean 0.495, s = 0.0636, se = s sqrt((1 - 2/8)/2) = 0.0390: 0.495 - 0.078 > 0
    assert test.decide([5.5, 6.6], ref[:2]) == "reject"
    # d = -0.35, -0.26: mean -0.305 + 2 se < 0
    assert test.decide([4.7, 5.8], ref[:2]) == "accept"
    # d = 0.05, -0.06: mean -0.005, se 0.0476: undecided
    assert test.decide([5.1, 6.0], ref[:2]) == "continue"
    assert test.decide([5.5], ref[:1]) == "continue"  # nothing is decided before min_chunks
    # the same differences, with a z large enough to wait: mean 0.495 < 13 x 0.0390
    assert SequentialTest(1.01, 8, z_reject=13.0, min_reject_chunks=2).decide([5.5, 6.6], ref[:2]) == "continue"
    # the finite-population correction: at k = n the standard error is 0 and the decision is the rule's
    exact = SequentialTest(1.01, 4, z_accept=100.0, z_reject=100.0)
    assert exact.decide([5.06, 6.0, 5.5, 4.0], ref) == "accept"  # 20.56 / 20.5 = 1.0029 < 1.01
    assert exact.decide([5.3, 6.0, 5.6, 4.0], ref) == "reject"  # 20.9 / 20.5 = 1.0195
    d = [c - 1.01 * r for c, r in zip([5.3, 6.0, 5.6], ref)]  # k = 3 of 4: se = s sqrt((1 - 3/4) / 3)
    mean, s = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    z = 0.999 * mean / (s * math.sqrt(0.25 / 3))
    assert SequentialTest(1.01, 4, z_reject=z).decide([5.3, 6.0, 5.6], ref[:3]) == "reject"
    assert SequentialTest(1.01, 4, z_reject=1.002 * z).decide([5.3, 6.0, 5.6], ref[:3]) == "continue"
    with pytest.raises(ValueError):
        test.decide([1.0, 2.0], [1.0])


def test_a_two_sided_test_accepts_more_readily_than_it_rejects():
    # mirrored differences: d = -0.35, -0.26 (accept side) and +0.35, +0.26 (reject side), mean 0.305,
    # s = 0.0636, se at k = 2 of 8 = 0.0390: 0.305 / 0.0390 = 7.8 standard errors either way
    ref = [5.0, 6.0, 5.5]
    below = [1.01 * r - d for r, d in zip(ref, [0.35, 0.26, 0.30])]
    above = [1.01 * r + d for r, d in zip(ref, [0.35, 0.26, 0.30])]
    lenient = SequentialTest(1.01, 8, z_accept=2.0, z_reject=4.0, min_reject_chunks=3)
    assert lenient.decide(below[:2], ref[:2]) == "accept"  # from 2 batches on
    assert lenient.decide(above[:2], ref[:2]) == "continue"  # no rejection before 3 batches
    assert lenient.decide(above, ref) == "reject"
    assert SequentialTest(1.01, 8).decide(above[:2], ref[:2]) == "reject"  # the defaults: 2 batches, z = 4
    # between the two z: d = -0.10, -0.06, mean -0.08, s 0.0283, se 0.0173, -0.08 / 0.0173 = -4.6 ...
    near = [1.01 * r + d for r, d in zip(ref, [-0.10, -0.06])]
    assert SequentialTest(1.01, 8, z_accept=4.5).decide(near, ref[:2]) == "accept"
    assert SequentialTest(1.01, 8, z_accept=4.7).decide(near, ref[:2]) == "continue"


def test_a_screened_candidate_stops_early_and_its_batches_are_never_a_full_result(rwkv):
    tm = rwkv.thresholded
    chunks = calibration_chunks(rwkv, SMALL)
    n = len(tm.names)
    engine = IncrementalEngine(tm, chunks, batch_size=1)
    dense = (0.0,) * n
    reference = engine.evaluate(dense)
    candidate = tuple(engine.thresholds_for([0.9] * n, "dense"))  # far worse than 1.001 x dense: rejected at once
    before = engine.cost.loss_batches, engine.cost.loss_fe
    with engine.screening(Screen(candidate, dense, reference.loss, SequentialTest(1.001, engine.n_batches))):
        screened = engine.evaluate(candidate)
    assert screened.verdict == "reject" and screened.chunks == 2 < engine.n_batches
    assert screened.loss / reference.loss > 1.001 and screened.measured_loss is not None
    # two batches of four, each a quarter of a full pass (the reference's were known)
    assert engine.cost.loss_batches - before[0] == 2
    assert engine.cost.loss_fe - before[1] == pytest.approx(0.5)
    # the full evaluation measures only the two batches left, and equals a fresh engine's
    full = engine.evaluate(candidate)
    assert engine.cost.loss_batches - before[0] == 4 and not full.known
    fresh = IncrementalEngine(tm, chunks, batch_size=1)
    fresh.evaluate(dense)
    expected = fresh.evaluate(candidate)
    assert full.loss == expected.loss and full.counts == expected.counts
    assert full.loss != screened.loss and full.counts.tokens == 2 * screened.counts.tokens


def test_early_mode_costs_less_than_fast_mode_and_ends_near_paper_mode(rwkv):
    # fast mode makes paper mode's choices (tests/test_greedy_modes.py) at a fraction of its cost
    spec = SMALL.model_copy(update={"ctx_len": 32})
    levels = [0.3, 0.6, 0.9]
    fast = greedy_search(rwkv, spec, "fast", 1.003, levels, batch_size=4)
    early = greedy_search(rwkv, spec, "early", 1.003, levels)
    assert early.cost.forward_equivalents < fast.cost.forward_equivalents
    assert early.cost.loss_batches < 4 * fast.cost.loss_passes  # some candidates stopped before the last batch
    assert abs(early.sparsity - fast.sparsity) < 0.01
    assert early.final_loss / early.dense_loss < 1.003 * fast.final_loss / fast.dense_loss
    # the reported result is the final configuration measured on every batch
    fresh = IncrementalEngine(rwkv.thresholded, calibration_chunks(rwkv, spec), batch_size=1)
    assert fresh.evaluate([early.thresholds[name] for name in rwkv.thresholded.names]).loss == pytest.approx(
        early.final_loss, rel=1e-6)
    # the test's settings reach the screens: deciding nothing before the last batch is fast mode's search
    exact = greedy_search(rwkv, spec, "early", 1.003, levels, early_test={"min_chunks": SMALL.count})
    assert exact.levels == fast.levels and exact.final_loss == pytest.approx(fast.final_loss, rel=1e-6)


def test_an_early_rejection_study_stores_the_estimate_and_the_batches(tmp_path, capsys):
    levels = [0.3, 0.6, 0.9]
    cfg = {**FAST, "name": "e", "run_dir": str(tmp_path / "e"),
           "calibration": SMALL.model_copy(update={"ctx_len": 32}).model_dump(),
           "search_space": {"grouping": "module", "levels": levels}, "objectives": [{"name": "loss_ratio"}],
           "sampler": {"name": "greedy", "options": {"loss_inc": 1.003}}, "trials": 300,
           "baselines": {"dense": True, "uniform": []}, "evaluation": {"batch_size": 1, "early_rejection": True}}
    path = tmp_path / "e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", "run", str(path)]) == 0
    trials = load(tmp_path, "e").trials
    rejected = [t for t in trials if t.user_attrs.get("early_rejected") == 1]
    assert rejected and any(t.user_attrs.get("early_accepted") == 1 for t in trials)
    for t in rejected:
        assert t.user_attrs["calibration_batches"] < SMALL.count
        reference, tolerance = t.system_attrs["greedy:reference"], t.system_attrs["greedy:tolerance"]
        assert t.user_attrs["calibration_loss"] / reference >= tolerance  # what the sampler rejects
        assert t.user_attrs["partial_calibration_loss"] > 0
    # every candidate is screened, its reference too (ffn.value levels below the module's dense sparsity give
    # threshold 0 again): that one passes for free at the reference's loss, not by a full pass compared with
    # the reference's estimate (which rejected it when the full-set loss came out higher)
    candidates = [t for t in trials if t.system_attrs.get("greedy:role") == "candidate"]
    assert all("calibration_batches" in t.user_attrs for t in candidates)
    itself = [t for t in candidates if t.user_attrs["calibration_loss"] == t.system_attrs["greedy:reference"]]
    assert any(t.params["blocks.0.ffn.value"] == 0.3 for t in itself)
    assert all(t.user_attrs["cost.loss_batches"] == 0 for t in itself)  # its statistics pass aside, free
    cfg["evaluation"] = {"early_rejection": "yes"}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", "run", str(path)]) == 2
    cfg["evaluation"] = {"early_rejection": True, "incremental": False}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", "run", str(path)]) == 2
    capsys.readouterr()
    cfg["evaluation"] = {"batch_size": 1, "early_rejection": {"z_accept": 0, "z_reject": 4}}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "early_rejection.z_accept" in err and "greater than 0" in err and "Traceback" not in err
    cfg["evaluation"] = {"batch_size": 1, "early_rejection": True}
    cfg["sampler"]["options"]["start_level"] = 2
    path.write_text(yaml.safe_dump(cfg))
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "start_level" in err and "less than or equal to 1" in err and "Traceback" not in err


def test_greedy_command_runs_early_mode(capsys):
    import json

    code = main(["greedy", "embedded:rwkv4-tiny", "--mode", "early", "--ctx-len", "32", "--count", "4",
                 "--levels", "0.3,0.6,0.9", "--loss-inc", "1.003", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)["results"]["early"]
    assert result["mode"] == "early" and result["cost"]["loss_batches"] > 0
    # --early-test reaches the screens: no decision before the last of the 4 batches measures every batch
    # of every candidate (each candidate's batches are a multiple of 4; the default test stops some sooner)
    exact = ["greedy", "embedded:rwkv4-tiny", "--mode", "early", "--ctx-len", "32", "--count", "4",
             "--levels", "0.3,0.6,0.9", "--loss-inc", "1.003", "--json"]
    assert main([*exact, "--early-test", "min_chunks=4"]) == 0
    full = json.loads(capsys.readouterr().out)["results"]["early"]
    assert full["cost"]["loss_batches"] > result["cost"]["loss_batches"]
    assert full["cost"]["loss_batches"] % 4 == 0
    for bad, says in (("z_accept=0", "--early-test: z_accept: Input should be greater than 0"),
                      ("z=2", "allowed: z_accept, z_reject, min_chunks, min_reject_chunks"),
                      ("min_chunks=2.5", "--early-test: min_chunks")):
        assert main([*exact, "--early-test", bad]) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert main(["greedy", "embedded:rwkv4-tiny", "--early-test", "z_accept=2"]) == 2
    assert "only with --mode early" in capsys.readouterr().err
    # --start-level: the first module of each kind starts its walk there (the lower levels are not all tried)
    assert main([*exact, "--start-level", "0.6"]) == 0
    mid = json.loads(capsys.readouterr().out)["results"]["early"]
    assert all(c["tried"][0][0] == 0.6 for c in mid["choices"] if c["name"].startswith("blocks.0."))
    assert main([*exact, "--start-level", "1.5"]) == 2
    assert "--start-level: a target sparsity in [0, 1]" in capsys.readouterr().err
