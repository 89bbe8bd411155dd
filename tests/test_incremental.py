"""Incremental evaluation: passes from kept block inputs equal full passes, sequential statistics, the cost in
forward-equivalents, the memory bound."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from thresh_opt.calibration import CalibrationSpec, activation_stats, calibration_chunks
from thresh_opt.incremental import IncrementalEngine, LRUStore
from thresh_opt.models import PlacementSpec, ThresholdedModel
from thresh_opt.models.prefix import PrefixRunner

SMALL = CalibrationSpec(source="heldout", ctx_len=64, count=4, seed=0)


class _Block(nn.Module):
    """h + b(a(h)) with identity maps: site `a` sees h, site `b` sees h thresholded at a's threshold."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(d, d, bias=False), nn.Linear(d, d, bias=False)
        for lin in (self.a, self.b):
            lin.weight.data.copy_(torch.eye(d))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.b(self.a(hidden_states))


class Toy(nn.Module):
    """Token i embeds to row i of `rows`; two blocks; a linear head over a vocabulary of len(rows)."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        vocab, d = len(rows), len(rows[0])
        self.embed = nn.Embedding(vocab, d)
        self.embed.weight.data.copy_(torch.tensor(rows))
        self.blocks = nn.ModuleList([_Block(d), _Block(d)])
        self.head = nn.Linear(d, vocab, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return SimpleNamespace(logits=self.head(h))


TOY_SPEC = PlacementSpec(arch="toy", model_classes=["Toy"], blocks="blocks", name_prefix="blocks",
                         sites=[{"name": "a", "hook": "a", "consumers": ["a"]},
                                {"name": "b", "hook": "b", "consumers": ["b"]}])


def toy_engine(**kwargs) -> IncrementalEngine:
    # token 0 -> |x| = 1, 2, 3, 4; token 1 -> 2, 4, 6, 8. Two chunks of both tokens: per-token quantiles are
    # those of one row each, means over tokens are means over the two rows.
    tm = ThresholdedModel(Toy([[1.0, -2.0, 3.0, -4.0], [2.0, 4.0, -6.0, 8.0]]), TOY_SPEC)
    return IncrementalEngine(tm, torch.tensor([[0, 1], [1, 0]]), batch_size=1, levels=[0.25, 0.5, 0.75], **kwargs)


def test_sequential_statistics_on_a_hand_checkable_case():
    engine = toy_engine()
    # site blocks.0.a sees the embeddings: median |x| of row 0 is 2.5 (torch's linear rule), of row 1 5.0
    dense = engine.thresholds_for([0.5, 0.5, 0, 0], "dense")
    assert dense == [pytest.approx(3.75), pytest.approx(3.75), 0.0, 0.0]
    # sequential: blocks.0.b sees the embeddings zeroed below 3.75: row 0 -> 0, 0, 0, 4 (median 0), row 1 ->
    # 0, 4, 6, 8 (median 5): threshold 2.5 instead of 3.75
    sequential = engine.thresholds_for([0.5, 0.5, 0, 0], "sequential")
    assert sequential == [pytest.approx(3.75), pytest.approx(2.5), 0.0, 0.0]
    # statistics are those of one pass of the model with the upstream threshold set
    engine.tm.set_thresholds([3.75, 0, 0, 0])
    assert activation_stats(engine.tm, engine.runner.batches[0].new_tensor([[0, 1], [1, 0]]), [0.5], 1).thresholds[
        "blocks.0.b"] == [pytest.approx(2.5)]


def test_forward_equivalents_on_a_case_counted_by_hand():
    # MACs per token: each site's consumer 4 x 4 = 16, two per block, head 4 x 2 = 8: a full pass is 72
    engine = toy_engine()
    engine.evaluate([0.0] * 4)  # the dense pass: 72/72; it records the raw input of the first site
    assert (engine.cost.loss_passes, engine.cost.loss_fe, engine.cost.stats_fe) == (1, pytest.approx(1.0), 0.0)
    t = engine.thresholds_for([0.5, 0.5, 0.5, 0.5], "sequential")
    # blocks.0.a from the record (free); blocks.0.b: a pass stopped before b, after a's consumer (16);
    # blocks.1.a: block 0 whole (32) then stop, keeping block 1's input; blocks.1.b: from it, after a (16)
    assert engine.cost.stats_passes == 3 and engine.cost.stats_fe == pytest.approx((16 + 32 + 16) / 72)
    engine.evaluate(t)  # block 1's input under t's block 0 was kept by the last statistics pass: (32 + 8)/72
    assert engine.last_start == 1 and engine.cost.loss_fe == pytest.approx(1 + 40 / 72)
    engine.evaluate(t[:1] + [0.0] * 3)  # block 0 differs from every kept pass: from the tokens, 72/72
    assert engine.last_start == 0 and engine.cost.loss_fe == pytest.approx(2 + 40 / 72)
    engine.evaluate(t)  # evaluated before: free
    assert engine.last_start is None and engine.cost.loss_passes == 3
    paper = toy_engine(incremental=False)
    paper.evaluate([0.0] * 4)
    paper.thresholds_for([0.5, 0.5, 0.5, 0.5], "sequential")  # the published way: a full pass per module
    assert paper.cost.stats_passes == 4 and paper.cost.stats_fe == pytest.approx(4.0)


@pytest.mark.parametrize("which", ["rwkv", "opt"])
def test_passes_from_kept_block_inputs_equal_full_passes(which, request):
    loaded = request.getfixturevalue(which)
    tm = loaded.thresholded
    chunks = calibration_chunks(loaded, SMALL)
    plain = PrefixRunner(tm, chunks, batch_size=2)
    engine = IncrementalEngine(tm, chunks, batch_size=2)
    n = len(tm.names)
    engine.evaluate([0.0] * n)
    upstream = engine.thresholds_for([0.3] * (n // 2) + [0.0] * (n - n // 2))
    last = engine.thresholds_for([0.0] * (n - 2) + [0.5, 0.0])  # a site of the last block (not RWKV's ffn.value:
    configs = [upstream, [*upstream[:-1], 0.0], upstream[: n // 2] + last[n // 2:]]  # at 0.5 its threshold is 0)
    for t in configs:
        outcome = engine.evaluate(t)
        tm.set_thresholds(t)
        tm.reset_counts()
        full = plain.run()
        assert outcome.loss == full.loss and outcome.counts == tm.counts()  # zero counts of skipped blocks too
    assert engine.last_start == tm.sites[-1].block  # the last one changed only the last block
    assert engine.cost.loss_fe < 1 + len(configs) - 0.5


def test_the_store_keeps_what_fits_and_evicts_the_least_recently_used():
    store = LRUStore(100)
    store.put("a", torch.zeros(10))  # 40 bytes
    store.put("b", torch.zeros(10))
    store.get("a")
    store.put("c", torch.zeros(10))  # 120 > 100: "b", the least recently used, goes
    assert "a" in store and "c" in store and "b" not in store
    assert not store.put("big", torch.zeros(30))  # larger than the budget: not kept
    store.put("pinned", torch.zeros(20), pin=True)
    store.clear()
    usage = store.usage()
    assert "pinned" in store and usage.entries == 1 and usage.peak_bytes <= 180 and usage.evictions >= 1


def test_a_small_cache_bounds_memory_and_changes_no_result(rwkv):
    tm = rwkv.thresholded
    chunks = calibration_chunks(rwkv, SMALL)
    n = len(tm.names)
    targets = [[0.0] * m + [0.5] + [0.0] * (n - m - 1) for m in range(0, n, 5)]
    results = {}
    for mb in (512, 1):
        engine = IncrementalEngine(tm, chunks, batch_size=2, cache_mb=mb)
        engine.evaluate([0.0] * n)
        results[mb] = [engine.evaluate(engine.thresholds_for(t)).loss for t in targets]
        usage = engine.usage()
        assert usage.peak_bytes <= max(usage.max_bytes, 0) + 2**20  # a pinned dense entry may sit on top
        if mb == 1:
            assert usage.evictions > 0 and usage.bytes <= usage.max_bytes
    assert results[1] == results[512]
