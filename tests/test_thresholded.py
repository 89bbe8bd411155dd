"""The thresholded wrapper: dense equivalence, sparsity accounting, in-place changes, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import chunks_of

from thresh_opt import UserError
from thresh_opt.calibration import activation_stats


@pytest.fixture(params=["rwkv", "opt"])
def loaded(request):
    return request.getfixturevalue(request.param)


@torch.no_grad()
def test_zero_thresholds_give_the_dense_logits_exactly(loaded):
    ids = chunks_of(loaded, 2)
    tm = loaded.thresholded
    tm.set_thresholds([0.0] * len(tm.names))
    wrapped = loaded.model(input_ids=ids).logits
    with tm.bare() as model:  # the Hugging Face model with no hooks at all
        bare = model(input_ids=ids).logits
    assert torch.equal(wrapped, bare)
    assert torch.equal(loaded.model(input_ids=ids).logits, wrapped)  # hooks are back


@torch.no_grad()
def test_thresholds_change_in_place_without_reloading(loaded):
    ids = chunks_of(loaded, 1)
    tm = loaded.thresholded
    weights_before = [p.data_ptr() for p in loaded.model.parameters()]
    dense = tm(input_ids=ids).logits
    tm.set_thresholds(dict.fromkeys(tm.names, 0.5))
    sparse = tm(input_ids=ids).logits
    tm.reset_thresholds()
    again = tm(input_ids=ids).logits
    assert not torch.allclose(dense, sparse)
    assert torch.equal(dense, again)
    assert weights_before == [p.data_ptr() for p in loaded.model.parameters()]


@torch.no_grad()
def test_sparsity_rises_with_the_thresholds(loaded):
    ids = chunks_of(loaded, 4)
    tm = loaded.thresholded
    stats = activation_stats(tm, ids)
    measured = []
    for target in (0.0, 0.2, 0.4, 0.6, 0.8):
        tm.set_thresholds(stats.at(target))
        with tm.counting():
            tm(input_ids=ids)
        report = tm.sparsity()
        measured.append(report.mac_weighted)
        if target > 0:  # the published statistic lands near its target on the same tokens
            for kind, value in report.per_kind.items():
                assert value >= target - 0.1, (kind, target, value)
    assert measured == sorted(measured) and measured[-1] > measured[0] + 0.5


@torch.no_grad()
def test_mac_weighted_sparsity_is_the_mac_weighted_mean(loaded):
    tm = loaded.thresholded
    tm.set_thresholds({n: 0.1 * (i % 3) for i, n in enumerate(tm.names)})
    with tm.counting():
        tm(input_ids=chunks_of(loaded, 2))
    r = tm.sparsity()
    by_hand = sum(r.per_module[n] * m for n, m in tm.macs.items()) / sum(tm.macs.values())
    assert math.isclose(r.mac_weighted, by_hand)
    assert r.tokens == 2 * 64


@torch.no_grad()
def test_padding_tokens_are_not_counted(loaded):
    tm = loaded.thresholded
    tm.set_thresholds(dict.fromkeys(tm.names, 0.2))
    ids = chunks_of(loaded, 1)[:, :40]
    with tm.counting():
        tm(input_ids=ids)
    alone = tm.sparsity()
    pad = loaded.tokenizer.pad_token_id
    padded = torch.cat([ids, torch.full((1, 24), pad)], dim=1)
    mask = torch.cat([torch.ones(1, 40, dtype=torch.long), torch.zeros(1, 24, dtype=torch.long)], dim=1)
    with tm.counting():
        tm(input_ids=padded, attention_mask=mask)
    with_padding = tm.sparsity()
    assert with_padding.tokens == alone.tokens == 40
    assert with_padding.per_module == alone.per_module


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"blocks.0.att.kee": 0.1}, "unknown module name"),
        ({"__first__": -0.1}, "finite numbers >= 0"),
        ({"__first__": float("nan")}, "finite numbers >= 0"),
        ({"__first__": float("inf")}, "finite numbers >= 0"),
        ({"__first__": "0.1"}, "finite numbers >= 0"),
        ([0.1, 0.2], "threshold vector has 2 values"),
    ],
)
def test_bad_thresholds_are_clear_errors_and_change_nothing(rwkv, values, match):
    tm = rwkv.thresholded
    first = tm.names[0]
    tm.set_thresholds({tm.names[1]: 0.3})
    before = tm.thresholds
    if isinstance(values, dict):
        values = {first if k == "__first__" else k: v for k, v in values.items()} | {tm.names[2]: 0.7}
    with pytest.raises(UserError, match=match):
        tm.set_thresholds(values)
    assert tm.thresholds == before


def test_unknown_name_suggests_the_closest(rwkv):
    with pytest.raises(UserError, match=r"did you mean blocks.0.att.key"):
        rwkv.thresholded.set_thresholds({"blocks.0.att.kee": 0.1})


def test_vector_in_site_order(rwkv):
    tm = rwkv.thresholded
    tm.set_thresholds(torch.arange(len(tm.names), dtype=torch.float32) / 100)
    assert tm.thresholds[tm.names[3]] == pytest.approx(0.03)
