"""Activation statistics: per-module thresholds that reach a target sparsity (the published statistic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from thresh_opt.models.thresholded import ThresholdedModel


@dataclass(frozen=True)
class ActivationStats:
    """Per module, the mean over tokens of the per-token |x| quantile at each target sparsity level."""

    levels: list[float]
    thresholds: dict[str, list[float]]

    def at(self, sparsity: float) -> dict[str, float]:
        """Thresholds for one target sparsity, interpolated linearly between the measured levels."""
        if not 0.0 <= sparsity <= self.levels[-1]:
            raise ValueError(f"target sparsity {sparsity} outside [0, {self.levels[-1]}]")
        grid = [0.0, *self.levels]
        return {name: float(np.interp(sparsity, grid, [0.0, *ts])) for name, ts in self.thresholds.items()}


DEFAULT_LEVELS = [round(0.01 * i, 2) for i in range(1, 100)]


@torch.no_grad()
def activation_stats(
    tm: ThresholdedModel,
    chunks: torch.Tensor,
    levels: list[float] = DEFAULT_LEVELS,
    batch_size: int = 8,
) -> ActivationStats:
    """All modules' statistics in one pass under the model's current thresholds.

    Each module sees the activations produced with the thresholds set now; the published
    procedure instead recomputes a module's statistics after every upstream choice.
    """
    device = next(tm.model.parameters()).device
    q = torch.tensor(levels, device=device)
    sums = [torch.zeros(len(levels), dtype=torch.float64, device=device) for _ in tm.names]
    counts = [0] * len(tm.names)

    def observe(i: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        per_token = torch.quantile(x.detach().abs().float().reshape(-1, x.shape[-1]), q, dim=-1)  # (levels, tokens)
        if mask is not None:
            per_token = per_token[:, mask.reshape(-1)]
        sums[i] += per_token.sum(dim=1).double()
        counts[i] += per_token.shape[1]

    with tm.observe(observe):
        for batch in chunks.split(batch_size):
            tm(input_ids=batch.to(device))
    thresholds = {n: (s / max(c, 1)).tolist() for n, s, c in zip(tm.names, sums, counts)}
    return ActivationStats(list(levels), thresholds)
