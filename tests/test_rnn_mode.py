"""Event-driven equivalence: RWKV token by token with its state equals the parallel pass, thresholds on."""

from __future__ import annotations

import torch
from conftest import chunks_of

from thresh_opt.calibration import activation_stats


@torch.no_grad()
def test_token_by_token_equals_parallel_with_thresholds(rwkv):
    tm = rwkv.thresholded
    ids = chunks_of(rwkv, 2, ctx_len=48)
    tm.set_thresholds(activation_stats(tm, ids).at(0.5))

    with tm.counting():
        parallel = tm(input_ids=ids).logits
    parallel_counts = tm.zero_counts()
    parallel_report = tm.sparsity()

    # One sequence at a time, as the chip runs it (transformers' single-token path broadcasts a batch
    # of several sequences wrongly: its shifted state is (batch, channels) against (batch, 1, channels)).
    with tm.counting():
        rows = []
        for seq in ids:
            state, steps = None, []
            for t in range(len(seq)):
                out = tm(input_ids=seq[None, t : t + 1], state=state, use_cache=True)
                state = out.state
                steps.append(out.logits)
            rows.append(torch.cat(steps, dim=1))
    recurrent = torch.cat(rows, dim=0)
    recurrent_counts = tm.zero_counts()

    assert torch.allclose(parallel, recurrent, atol=1e-4, rtol=0)
    assert parallel_counts == recurrent_counts
    assert tm.sparsity() == parallel_report
    assert parallel_report.mac_weighted > 0.4
