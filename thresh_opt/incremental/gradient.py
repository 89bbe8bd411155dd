"""Sensitivities from one gradient pass: how much each module's thresholds would cost, predicted from the
model's activation gradients (at the dense model, or at any configuration) instead of measured one
configuration at a time.

Thresholding module m at t zeroes its inputs whose score is <= t (|x|, or |x| times the consuming map's
column norm under the weight_norm criterion), a perturbation ``dx = -x * [score <= t]``. The
saliency of that perturbation is ``sum (g * dx)^2`` over every element of the calibration set, g being the
gradient of the mean calibration loss with respect to the module's input: the diagonal-Fisher
(Optimal-Brain-Damage-like) estimate of the loss increase, up to a common factor. The first-order term
``sum g * dx`` is a poor predictor here (its sign varies from module to module: on rwkv4-tiny its rank
correlation with the measured one-at-a-time loss increases is 0.21, against 0.86 for the squared form).
Saliencies add up over modules (the diagonal assumption), which is what the allocation's knapsack assumes
of its table anyway. Grouping the products before squaring (per token, per channel along time, per
sequence) ranked measured losses no better on rwkv4-tiny (rank correlations 0.64 / 0.67 / 0.65 against
0.65 for the element-wise form, on 84 moves from a configuration at loss ratio 1.03).

At a configuration (``base``), g is the gradient there and x each site's input before its own threshold
(every other site thresholded): the saliency of a level is then that of zeroing everything below its
threshold, and the difference between two levels that of moving between them, at the base's gradient.

The pass costs one forward and one backward with frozen weights (about 2 forward-equivalents, the
convention of the learned baseline) and needs every site's input and its gradient for one batch at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from thresh_opt.models.thresholded import ThresholdedModel

PASS_FE = 2.0  # a forward and a backward with frozen weights, in forward-equivalents


def saliencies(tm: ThresholdedModel, batches: Sequence[torch.Tensor], thresholds: Mapping[int, Sequence[float]],
               base: Sequence[float] | None = None) -> dict[int, list[float]]:
    """Site index -> the saliency ``sum (g * x)^2`` over the elements each of its thresholds zeroes, over the
    calibration set (batch by batch; the gradient is that of the mean loss over the whole set, so batches
    only split the work). The model runs at ``base`` (site order; default dense), in eval mode, weights
    frozen, and is left dense.

    Args:
        tm: the thresholded model.
        batches: the calibration token chunks, in batches (chunks, positions) on the model's device.
        thresholds: site index -> the thresholds to score (sites not named are not scored).
        base: the thresholds every site runs at while the gradient is taken (default: all 0).
    """
    tm.reset_thresholds()
    if base is not None:
        tm.set_thresholds(list(base))
    model: Any = tm.model  # a transformers model: get_input_embeddings is not typed on nn.Module
    was_training = model.training
    model.eval()  # no dropout: the gradient of the model the study evaluates
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    seen: dict[int, torch.Tensor] = {}  # each site's thresholded input, its gradient retained
    before: dict[int, torch.Tensor] = {}  # each site's input before its own threshold

    def look(i: int, x: torch.Tensor, _mask: torch.Tensor | None) -> None:
        if i in thresholds:
            before[i] = x.detach()

    def keep(i: int, x: torch.Tensor) -> torch.Tensor:
        if i in thresholds and x.requires_grad:
            x.retain_grad()
            seen[i] = x
        return x

    # the input embedding is the graph's leaf: everything downstream then carries a gradient
    embeddings = model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda _m, _a, out: out.requires_grad_(True))
    scores = {i: [0.0] * len(ts) for i, ts in thresholds.items()}
    total = sum(b.shape[0] * (b.shape[1] - 1) for b in batches)  # next-token targets of the whole set
    try:
        with tm.observe(look), tm.transformed(keep):
            for ids in batches:
                seen.clear()
                before.clear()
                out = model(input_ids=ids, labels=ids, use_cache=False)  # no cache: no in-place state
                (out.loss * (ids.shape[0] * (ids.shape[1] - 1)) / total).backward()
                with torch.no_grad():
                    for i, ts in thresholds.items():
                        x = before[i]
                        grad = seen[i].grad
                        assert grad is not None  # the site is downstream of the embedding
                        terms = (grad.float() * x.float()).square()
                        score = tm.score(i, x)  # the criterion's score: |x|, or |x| x column norm
                        for j, t in enumerate(ts):
                            scores[i][j] += float(terms[score <= t].sum())
    finally:
        handle.remove()
        tm.reset_thresholds()
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return scores
