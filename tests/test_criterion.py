"""Threshold criteria (magnitude | weight_norm): masks, statistics, studies, export and errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import chunks_of

from thresh_opt.calibration import CalibrationSpec, activation_stats, calibration_chunks
from thresh_opt.calibration.stats import QuantileSums, stats_cache_path
from thresh_opt.cli import main
from thresh_opt.incremental import IncrementalEngine
from thresh_opt.models.criterion import CRITERIA
from thresh_opt.study.config import SearchSpaceConfig
from thresh_opt.study.export import ExportedThresholds


@pytest.fixture
def weight_norm(request):
    """A model fixture switched to weight_norm for one test, magnitude again afterwards."""
    loaded = request.getfixturevalue(request.param)
    loaded.thresholded.set_criterion("weight_norm")
    yield loaded
    loaded.thresholded.set_criterion("magnitude")


def _raw_input(tm, site: int, ids: torch.Tensor) -> torch.Tensor:
    seen = []
    with tm.observe(lambda i, x, _m: seen.append(x.detach().clone()) if i == site else None), torch.no_grad():
        tm(input_ids=ids)
    return seen[0]


@pytest.mark.parametrize(("weight_norm", "site", "consumers"), [
    ("rwkv", "blocks.1.att.key", ["attention.key"]),
    ("opt", "layers.1.qkv", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
], indirect=["weight_norm"])
def test_thresholds_and_zero_counts_follow_the_column_norms(weight_norm, site, consumers):
    tm = weight_norm.thresholded
    i = tm.names.index(site)
    block = tm.sites[i].block
    blocks = weight_norm.model.rwkv.blocks if tm.spec.arch == "rwkv4" else weight_norm.model.model.decoder.layers
    # the column norm of the stacked consumers (W is (out, in): column j multiplies input j)
    norms = torch.stack([blocks[block].get_submodule(c).weight.detach().norm(dim=0) ** 2 for c in consumers])
    s = norms.sum(dim=0).sqrt()
    ids = chunks_of(weight_norm, 2, 32)
    x = _raw_input(tm, i, ids)
    score = x.abs().float() * s
    # the statistic: the mean over tokens of each token's score quantile
    stats = activation_stats(tm, ids, levels=[0.5])
    expected = torch.quantile(score.reshape(-1, score.shape[-1]), 0.5, dim=-1).mean()
    assert stats.thresholds[site][0] == pytest.approx(float(expected), rel=1e-5)
    t = stats.thresholds[site][0]
    tm.set_thresholds({site: t})
    with tm.counting(), torch.no_grad():
        tm(input_ids=ids)
    assert tm.zero_counts()[site] == int(((score <= t) | (x == 0)).sum())
    magnitude_zeros = int((x.abs() <= t).sum())
    assert tm.zero_counts()[site] != magnitude_zeros  # the scale changes which inputs are zeroed
    channel = tm.channel_thresholds()[site]
    assert torch.allclose(channel, t / s, rtol=1e-6)


@pytest.mark.parametrize("weight_norm", ["rwkv"], indirect=True)
def test_a_target_sparsity_gives_that_sparsity(weight_norm):
    tm = weight_norm.thresholded
    ids = chunks_of(weight_norm, 2, 32)
    stats = activation_stats(tm, ids, levels=[0.3, 0.6])
    with tm.counting(), torch.no_grad():
        tm(input_ids=ids)
    dense = tm.sparsity().per_module
    for target in (0.3, 0.6):
        tm.set_thresholds(stats.at(target))
        with tm.counting(), torch.no_grad():
            tm(input_ids=ids)
        got = tm.sparsity().per_module
        # modules with fewer exact zeros than the target (relu^2 inputs have more) reach it, per token on
        # average: each module within a few tokens' spread, the mean much closer
        free = [n for n in tm.names if dense[n] < target - 0.05]
        assert len(free) > len(tm.names) // 2
        misses = [abs(got[n] - target) for n in free]
        assert max(misses) < 0.06 and sum(misses) / len(misses) < 0.015


def test_magnitude_is_unchanged(rwkv, tmp_path):
    tm = rwkv.thresholded
    assert tm.criterion == "magnitude" and all(s is None for s in tm.scales)
    ids = chunks_of(rwkv, 2, 32)
    plain = QuantileSums(tm.names, [0.3, 0.6], ids.device)  # the |x| statistic, no score given
    with tm.observe(plain), torch.no_grad():
        tm(input_ids=ids)
    assert activation_stats(tm, ids, levels=[0.3, 0.6]) == plain.result()
    thresholds = plain.result().at(0.6)
    tm.set_thresholds(thresholds)
    with torch.no_grad():
        logits = tm(input_ids=ids).logits
    # the same model hooked by hand with the hardshrink mask gives the same logits, bit for bit
    with tm.bare() as bare:
        hooks = [s.module.register_forward_pre_hook(
            lambda _m, a, t=thresholds[s.name]: (F.hardshrink(a[0], t), *a[1:])) for s in tm.sites]
        with torch.no_grad():
            by_hand = bare(input_ids=ids).logits
        for h in hooks:
            h.remove()
    assert torch.equal(logits, by_hand)
    key = stats_cache_path(rwkv, CalibrationSpec(ctx_len=32, count=2), cache=tmp_path)
    tm.set_criterion("weight_norm")
    try:
        assert stats_cache_path(rwkv, CalibrationSpec(ctx_len=32, count=2), cache=tmp_path) != key
        with torch.no_grad():
            assert not torch.equal(tm(input_ids=ids).logits, logits)
    finally:
        tm.set_criterion("magnitude")
    with torch.no_grad():
        assert torch.equal(tm(input_ids=ids).logits, logits)


def test_the_engine_drops_statistics_of_another_criterion(rwkv):
    tm = rwkv.thresholded
    ids = chunks_of(rwkv, 2, 32)
    engine = IncrementalEngine(tm, ids, levels=[0.5])
    before = engine.thresholds_for([0.5] * len(tm.names), "dense")
    tm.set_criterion("weight_norm")
    try:
        engine.reset()  # what a worker does when a study begins
        after = engine.thresholds_for([0.5] * len(tm.names), "dense")
        tm.reset_thresholds()
        direct = activation_stats(tm, ids, levels=[0.5]).at(0.5)
    finally:
        tm.set_criterion("magnitude")
    assert after != before
    assert after == pytest.approx([direct[n] for n in tm.names], rel=1e-6)


def _study(tmp_path, criterion: str, trials: int = 2):
    cfg = {"name": "c", "run_dir": str(tmp_path / "c"), "model": {"source": "embedded:rwkv4-tiny"},
           "calibration": {"ctx_len": 32, "count": 2}, "sampler": {"name": "random"}, "trials": trials,
           "search_space": {"grouping": "kind", "levels": "linear", "criterion": criterion},
           "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}], "baselines": {"uniform": [0.5]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_weight_norm_study_runs_and_its_export_reproduces_the_mask(tmp_path, rwkv, capsys):
    assert main(["study", "run", str(_study(tmp_path, "weight_norm"))]) == 0
    out = tmp_path / "x"
    assert main(["study", "export", str(tmp_path / "c"), "--trial", "1", "--out", str(out)]) == 0
    exported = ExportedThresholds.read(out)
    report = json.loads((out / "report.json").read_text())
    assert exported.criterion == report["criterion"] == "weight_norm"
    assert "nothing extra" in report["seneca"]["thresholds"]
    assert exported.thresholds == pytest.approx(json.loads((out / "thresholds.json").read_text()))
    tm = rwkv.thresholded
    # trial 1 is the uniform 0.5 baseline, from weight_norm statistics of the dense model
    chunks = calibration_chunks(rwkv, CalibrationSpec(ctx_len=32, count=2))
    tm.set_criterion("weight_norm")
    try:
        expected = activation_stats(tm, chunks).at(0.5)
        assert exported.thresholds == pytest.approx(expected, rel=1e-5)
        # a consumer of the export, without the model's code, zeroes what the model zeroes
        tm.set_thresholds(exported.thresholds)
        site = tm.names.index("blocks.2.ffn.key")
        before, after = [], []
        with tm.observe(lambda i, x, _m: before.append(x.clone()) if i == site else None), \
                tm.transformed(lambda i, x: after.append(x.clone()) or x if i == site else x), torch.no_grad():
            tm(input_ids=chunks)
    finally:
        tm.set_criterion("magnitude")
    zeroed = exported.zeroed("blocks.2.ffn.key", before[0])
    assert torch.equal(zeroed, after[0] == 0) and 0.3 < zeroed.float().mean() < 0.7
    channel = exported.channels["blocks.2.ffn.key"]
    assert torch.equal((before[0].abs() <= channel), zeroed) or \
        ((before[0].abs() <= channel) != zeroed).float().mean() < 1e-4  # t / s: equal up to boundary rounding
    capsys.readouterr()


def test_magnitude_exports_read_as_before(tmp_path):
    exported = ExportedThresholds("magnitude", {"a": 0.5})
    exported.write(tmp_path)
    back = ExportedThresholds.read(tmp_path)
    assert back == ExportedThresholds("magnitude", {"a": 0.5})
    assert torch.equal(back.zeroed("a", torch.tensor([0.2, -0.6, 0.5])), torch.tensor([True, False, True]))


def test_bad_criterion_is_one_clear_line(tmp_path, capsys):
    path = _study(tmp_path, "wina")
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{path}: search_space.criterion: unknown criterion 'wina'; allowed: magnitude, weight_norm" in err
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"criterion": "l1"}))
    study = yaml.safe_load(path.read_text()) | {"search_space": "space.yaml"}
    path.write_text(yaml.safe_dump(study))
    assert main(["study", "run", str(path)]) == 2
    assert f"{space}: criterion: unknown criterion 'l1'" in capsys.readouterr().err
    assert main(["calibrate", "embedded:rwkv4-tiny", "--criterion", "wina", "--count", "2", "--ctx-len", "32"]) == 2
    assert "--criterion: unknown criterion 'wina'; allowed: magnitude, weight_norm" in capsys.readouterr().err
    assert SearchSpaceConfig.model_fields["criterion"].annotation.__args__ == CRITERIA  # one list of names


def test_calibrate_and_evaluate_take_the_criterion(tmp_path, capsys):
    common = ["embedded:rwkv4-tiny", "--count", "2", "--ctx-len", "32", "--cache-dir", str(tmp_path), "--json"]
    out = {}
    for criterion in CRITERIA:
        assert main(["calibrate", *common, "--criterion", criterion]) == 0
        out[criterion] = json.loads(capsys.readouterr().out)
    assert out["weight_norm"]["criterion"] == "weight_norm"
    assert out["weight_norm"]["thresholds"] != out["magnitude"]["thresholds"]
    assert main(["evaluate", *common, "--criterion", "weight_norm", "--uniform-sparsity", "0.5",
                 "--objectives", "loss_ratio,sparsity"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["criterion"] == "weight_norm" and result["objectives"]["sparsity"] > 0.4
