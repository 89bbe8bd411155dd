"""Activation statistics: per-module thresholds that reach a target sparsity (the published statistic)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from thresh_opt.calibration.data import CalibrationSpec, cache_dir, calibration_chunks, chunks_key
from thresh_opt.config import atomic_write

if TYPE_CHECKING:
    from thresh_opt.models import LoadedModel, ThresholdedModel


@dataclass(frozen=True)
class ActivationStats:
    """Per module, the mean over tokens of the per-token quantile of the criterion's score (|x|, or
    |x| * column norm under ``weight_norm``) at each target sparsity level."""

    levels: list[float]
    thresholds: dict[str, list[float]]

    def at(self, sparsity: float) -> dict[str, float]:
        """Thresholds for one target sparsity, interpolated linearly between the measured levels."""
        if not 0.0 <= sparsity <= self.levels[-1]:
            raise ValueError(f"target sparsity {sparsity} outside [0, {self.levels[-1]}]")
        return {name: self.threshold(name, sparsity) for name in self.thresholds}

    def sparsity_for(self, module: str, threshold: float) -> float:
        """The target sparsity whose threshold is `threshold` (inverse of `threshold`, clipped to the levels)."""
        return float(np.interp(threshold, [0.0, *self.thresholds[module]], [0.0, *self.levels]))

    def threshold(self, module: str, sparsity: float) -> float:
        """One module's threshold for a target sparsity (0 below the first level's threshold at 0)."""
        return float(np.interp(sparsity, [0.0, *self.levels], [0.0, *self.thresholds[module]]))


DEFAULT_LEVELS = [round(0.01 * i, 2) for i in range(1, 100)]


Score = Callable[[int, torch.Tensor], torch.Tensor]


def _magnitude(_i: int, x: torch.Tensor) -> torch.Tensor:
    return x.detach().abs().float()


class QuantileSums:
    """An observer (see ThresholdedModel.observe) summing each token's score quantiles at the levels.

    Args:
        names: all site names, in site order.
        levels: target sparsities.
        device: where the sums live.
        only: site indices to observe (default: all).
        score: site index, input -> what its threshold is compared with (float32); pass the model's
            `ThresholdedModel.score` so that the statistics follow its criterion (default: |x|).
    """

    def __init__(self, names: list[str], levels: list[float], device: torch.device,
                 only: set[int] | None = None, score: Score | None = None) -> None:
        self.names, self.levels, self.only = names, list(levels), only
        self._score = score or _magnitude
        self._q = torch.tensor(self.levels, device=device)
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {}

    def __call__(self, i: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Add one site's tokens."""
        if self.only is not None and i not in self.only:
            return
        # (levels, tokens)
        per_token = torch.quantile(self._score(i, x).reshape(-1, x.shape[-1]), self._q, dim=-1)
        if mask is not None:
            per_token = per_token[:, mask.reshape(-1)]
        self._sums[i] = self._sums.get(i, 0) + per_token.sum(dim=1).double()
        self._counts[i] = self._counts.get(i, 0) + per_token.shape[1]

    def result(self) -> ActivationStats:
        """Mean quantiles of the observed sites."""
        return ActivationStats(self.levels, {self.names[i]: (s / max(self._counts[i], 1)).tolist()
                                             for i, s in sorted(self._sums.items())})


@torch.no_grad()
def activation_stats(
    tm: ThresholdedModel,
    chunks: torch.Tensor,
    levels: list[float] = DEFAULT_LEVELS,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> ActivationStats:
    """All modules' statistics in one pass under the model's current thresholds.

    Each module sees the activations produced with the thresholds set now; the published
    procedure instead recomputes a module's statistics after every upstream choice.
    """
    device = next(tm.model.parameters()).device
    sums = QuantileSums(tm.names, levels, device, score=tm.score)
    with tm.observe(sums):
        batches = chunks.split(batch_size)
        for done, batch in enumerate(batches, 1):
            tm(input_ids=batch.to(device))
            if on_batch is not None:
                on_batch(done, len(batches))
    return sums.result()


def model_fingerprint(model: torch.nn.Module) -> str:
    """A cheap digest of a model: its config and a sample of every weight tensor."""
    h = hashlib.sha256(getattr(getattr(model, "config", None), "to_json_string", lambda: "")().encode())
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()


def stats_cache_path(loaded: LoadedModel, spec: CalibrationSpec, levels: list[float] = DEFAULT_LEVELS,
                     cache: Path | None = None, thresholds: dict[str, float] | None = None) -> Path:
    """Where the statistics of the calibration set under these thresholds (default: the model's current
    ones) are cached, under the model's criterion."""
    tm = loaded.thresholded
    thresholds = tm.thresholds if thresholds is None else thresholds
    parts = [model_fingerprint(loaded.model), chunks_key(spec, loaded), json.dumps(levels), json.dumps(thresholds)]
    if tm.criterion != "magnitude":  # magnitude statistics keep the keys they were cached under
        parts.append(tm.criterion)
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]
    return (cache or cache_dir()) / "stats" / f"{key}.json"


def read_stats(path: Path) -> ActivationStats | None:
    """Statistics cached at `path`, or None."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return ActivationStats(data["levels"], data["thresholds"])


def write_stats(path: Path, stats: ActivationStats) -> None:
    """Cache statistics at `path` (atomically)."""
    text = json.dumps({"levels": stats.levels, "thresholds": stats.thresholds})
    atomic_write(path, lambda tmp: tmp.write_text(text))


def cached_activation_stats(
    loaded: LoadedModel,
    spec: CalibrationSpec | None = None,
    levels: list[float] = DEFAULT_LEVELS,
    cache: Path | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> ActivationStats:
    """activation_stats of the calibration set under the current thresholds, cached on disk (JSON)."""
    spec = spec or CalibrationSpec()
    path = stats_cache_path(loaded, spec, levels, cache)
    stats = read_stats(path)
    if stats is None:
        stats = activation_stats(loaded.thresholded, calibration_chunks(loaded, spec, cache), levels, on_batch=on_batch)
        write_stats(path, stats)
    return stats
