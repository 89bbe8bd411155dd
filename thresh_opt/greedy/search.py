"""The published sequential greedy threshold search, run directly on a loaded model (design.md 1.3).

The decisions come from the same walk as :class:`~thresh_opt.samplers.GreedySampler` (plain scan or
warm start, `keep_first` quirk); only the source of statistics and losses differs by mode, so paper
and fast mode take the same decisions whenever their numbers agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from thresh_opt.greedy.oracles import Cost, make_oracle
from thresh_opt.models.thresholded import ThresholdedModel
from thresh_opt.samplers._greedy_state import Spec, default_kind, walk

LINEAR_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


@dataclass
class ModuleChoice:
    """One module's search: the candidates tried (level, loss, accepted) and the choice."""

    name: str
    level: float
    threshold: float
    tried: list[tuple[float, float, bool]]


@dataclass
class GreedyResult:
    """A finished search: choices per module, final loss and sparsity, and what it cost."""

    mode: str
    loss_inc: float
    dense_loss: float
    final_loss: float
    sparsity: float
    choices: list[ModuleChoice]
    cost: Cost
    seconds: float
    per_module_sparsity: dict[str, float] = field(default_factory=dict)

    @property
    def thresholds(self) -> dict[str, float]:
        """Chosen threshold per module."""
        return {c.name: c.threshold for c in self.choices}

    @property
    def levels(self) -> dict[str, float]:
        """Chosen target sparsity per module (0.0: dense)."""
        return {c.name: c.level for c in self.choices}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"mode": self.mode, "loss_inc": self.loss_inc, "dense_loss": self.dense_loss,
                "final_loss": self.final_loss, "loss_ratio": self.final_loss / self.dense_loss,
                "sparsity": self.sparsity, "seconds": self.seconds,
                "forward_equivalents": self.cost.forward_equivalents, "cost": asdict(self.cost),
                "choices": [asdict(c) for c in self.choices]}


@torch.no_grad()
def greedy_search(
    tm: ThresholdedModel,
    chunks: torch.Tensor,
    mode: str = "fast",
    loss_inc: float = 1.0005,
    levels: list[float] | None = None,
    warm_start: bool = True,
    keep_first: bool = False,
    batch_size: int = 8,
    on_module: Callable[[int, int, ModuleChoice], None] | None = None,
) -> GreedyResult:
    """Choose every module's threshold front to back; leaves the model at the chosen thresholds.

    Args:
        tm: the thresholded model (its thresholds are reset to 0 first).
        chunks: calibration token chunks; the same set gives statistics and losses.
        mode: "paper" (a full pass per statistics request and per loss) or "fast".
        loss_inc: accept a candidate while loss / last accepted loss < loss_inc.
        levels: candidate target sparsities, ascending (default 0.1..0.9).
        warm_start: start each module at the most frequent choice of its kind so far.
        keep_first: the public code's quirk: keep the first candidate even when it fails.
        batch_size: chunks per forward call.
        on_module: progress callback (module index, module count, its choice).
    """
    levels = sorted(levels or LINEAR_LEVELS)
    began = time.perf_counter()
    tm.reset_thresholds()
    oracle = make_oracle(mode, tm, chunks, levels, batch_size)
    names = tm.names
    spec = Spec(names=tuple(names), candidates={n: tuple(levels) for n in names},
                kinds={n: default_kind(n) for n in names}, warm_start=warm_start, keep_first=keep_first)
    l_ref = dense = oracle.loss(None)
    oracle.accept(None, 0)
    accepted: dict[str, float] = {}
    choices = []
    for m, name in enumerate(names):
        stats = oracle.stats(m)
        thresholds = [stats.threshold(name, lvl) for lvl in levels]
        losses: dict[int, tuple[int, float]] = {}  # candidate index -> (evaluation index, loss)
        tried = []

        def outcome(i: int) -> bool:
            tm.set_thresholds({name: thresholds[i - 1]})
            loss = oracle.loss(m)
            losses[i] = (len(losses), loss)
            tried.append((levels[i - 1], loss, loss / l_ref < loss_inc))
            return loss / l_ref < loss_inc

        choice, _ = walk(len(levels), spec.start_index(name, accepted), outcome)
        if choice == 0 and keep_first and 1 in losses:
            choice = 1
        if choice:
            evaluation, l_ref = losses[choice]
            tm.set_thresholds({name: thresholds[choice - 1]})
            oracle.accept(m, evaluation)
        else:
            tm.set_thresholds({name: 0.0})
            oracle.accept(m, None)
        accepted[name] = levels[choice - 1] if choice else 0.0
        choices.append(ModuleChoice(name, accepted[name], thresholds[choice - 1] if choice else 0.0, tried))
        if on_module is not None:
            on_module(m, len(names), choices[-1])
    with tm.counting():
        final = oracle.runner.run()  # one full pass for the final loss and sparsity, in both modes
        report = tm.sparsity()
    oracle.cost.other_fe += final.cost
    return GreedyResult(mode, loss_inc, dense, final.loss, report.mac_weighted, choices, oracle.cost,
                        time.perf_counter() - began, report.per_module)
