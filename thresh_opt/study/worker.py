"""A study worker: loads the model once, then turns trial parameters into objective values."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from thresh_opt.study.config import SearchSpaceConfig, StudyConfig


@dataclass
class TrialResult:
    """What one trial measured (or the error it raised)."""

    values: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    per_module_sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


class TrialWorker:
    """Holds the loaded model, calibration statistics and evaluator; evaluates parameter sets.

    The same class runs in the driver process (serial executor) and inside Ray actors, so a worker
    never reloads the model between trials.
    """

    def __init__(self, cfg: StudyConfig, space_cfg: SearchSpaceConfig, threads: int | None = None) -> None:
        import torch

        from thresh_opt.calibration import cached_activation_stats
        from thresh_opt.models import load_model
        from thresh_opt.objectives import Evaluator
        from thresh_opt.study.space import SearchSpace

        if threads:
            torch.set_num_threads(threads)
        m = cfg.model
        self.loaded = load_model(m.source, dtype=m.dtype, device=m.device, placement=m.placement)
        self.space = SearchSpace.build(space_cfg, self.loaded.thresholded.sites)
        self.evaluator = Evaluator(self.loaded, objectives_needed(cfg), calibration=cfg.calibration, tasks=cfg.tasks,
                                   limit=cfg.limit, profile=cfg.profile)
        self.stats = cached_activation_stats(self.loaded, cfg.calibration)

    def set_space(self, space_cfg: SearchSpaceConfig) -> None:
        """Map later trials' parameters through another search space (a comparison switches spaces)."""
        from thresh_opt.study.space import SearchSpace

        self.space = SearchSpace.build(space_cfg, self.loaded.thresholded.sites)

    def dense(self) -> dict[str, Any]:
        """The dense model's objective values and per-module sparsity (computed once per worker)."""
        return {"values": dict(self.evaluator.dense.values), "per_module_sparsity": self.evaluator.dense.per_module_sparsity}

    def run(self, params: dict[str, float]) -> TrialResult:
        """Evaluate one parameter set; an exception becomes an error result, not a crash."""
        started = time.perf_counter()
        try:
            thresholds = self.space.thresholds(params, self.stats)
            ev = self.evaluator.evaluate(thresholds)
            return TrialResult(ev.values, thresholds, ev.per_module_sparsity, time.perf_counter() - started)
        except Exception as exc:  # noqa: BLE001 - stored as a FAIL trial with its error; the study goes on
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            return TrialResult(seconds=time.perf_counter() - started, error=last)

    def info(self) -> dict[str, Any]:
        """What the driver records about the model and space."""
        info: dict[str, Any] = {"modules": self.loaded.thresholded.names, "params": self.space.params,
                                "groups": self.space.groups}
        if self.loaded.thresholded.spec.arch in ("rwkv4", "opt"):
            from thresh_opt.objectives.hardware_cost import model_dims

            dims, _ = model_dims(self.loaded)
            info["hardware"] = {"dims": dims.to_dict(), "sites": [
                {"name": s.name, "kind": s.kind, "block": s.block, "macs": s.macs} for s in self.loaded.thresholded.sites]}
        return info


def objectives_needed(cfg: StudyConfig) -> list[str]:
    """The study's objectives, plus those its constraints use, plus the greedy criterion."""
    names = [o.name for o in cfg.objectives]
    extra = [c.objective for c in cfg.constraints] + ["calibration_loss", "loss_ratio", "sparsity"]
    return names + [n for n in dict.fromkeys(extra) if n not in names]
