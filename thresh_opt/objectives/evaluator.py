"""The evaluator: every named objective of one thresholds configuration on the loaded model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.errors import UserError
from thresh_opt.objectives.text import mean_loss, next_word_accuracy, next_word_examples, perplexity, token_chunks

if TYPE_CHECKING:
    from thresh_opt.models import LoadedModel


@dataclass(frozen=True)
class Objective:
    """A named objective: what it measures and which way is better."""

    name: str
    direction: str  # minimize | maximize
    description: str
    needs: str  # calibration | evaluation | next_word | lm_eval | hardware


OBJECTIVES = {
    o.name: o
    for o in [
        Objective("calibration_loss", "minimize", "mean token cross-entropy on the calibration set (nats)", "calibration"),
        Objective("loss_ratio", "minimize", "calibration loss / dense calibration loss", "calibration"),
        Objective("perplexity", "minimize", "perplexity on the evaluation text", "evaluation"),
        Objective("next_word_accuracy", "maximize", "last word of evaluation-text lines, greedy", "next_word"),
        Objective("accuracy", "maximize", "mean headline lm-eval metric over the tasks", "lm_eval"),
        Objective("sparsity", "maximize", "MAC-weighted sparsity on the calibration set", "calibration"),
        Objective("energy", "minimize", "SENECA energy per token (nJ)", "hardware"),
        Objective("latency", "minimize", "SENECA latency per token (us)", "hardware"),
        Objective("energy_gain", "maximize", "dense SENECA energy / thresholded energy", "hardware"),
        Objective("latency_gain", "maximize", "dense SENECA latency / thresholded latency", "hardware"),
    ]
}
DEFAULT_OBJECTIVES = ["loss_ratio", "sparsity", "energy_gain", "latency_gain"]


def check_objectives(names: list[str]) -> list[str]:
    """The names, or a clear error naming the unknown one and listing the allowed."""
    for n in names:
        if n not in OBJECTIVES:
            raise UserError(f"unknown objective {n!r}; allowed: {', '.join(OBJECTIVES)}")
    if not names:
        raise UserError(f"no objectives selected; allowed: {', '.join(OBJECTIVES)}")
    return list(names)


@dataclass
class Evaluation:
    """The objectives of one configuration, with the dense reference and the details behind them."""

    values: dict[str, float]
    dense: dict[str, float]
    per_module_sparsity: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"objectives": self.values, "dense": self.dense, "tasks": self.tasks,
                "per_module_sparsity": self.per_module_sparsity, "hardware": self.hardware, "seconds": self.seconds}


class Evaluator:
    """Evaluates thresholds configurations on one loaded model, reusing tokens, statistics and lm-eval tasks.

    Example:
        >>> ev = Evaluator(load_model("embedded:rwkv4-tiny"), ["loss_ratio", "sparsity"])  # doctest: +SKIP
        >>> ev.evaluate({"blocks.0.att.key": 0.1}).values                                   # doctest: +SKIP

    Args:
        loaded: the model (its thresholded wrapper is used; thresholds are left as evaluated).
        objectives: names from OBJECTIVES.
        calibration: the calibration set (default: first half of the embedded held-out text).
        eval_text: text for perplexity and next-word accuracy (default: second half of the held-out text).
        tasks: lm-eval tasks (names, local folders, NAME=FOLDER) for `accuracy`.
        limit: first N examples per lm-eval task, the same in every evaluation.
        profile: SENECA hardware profile file for the energy and latency objectives (default: shipped).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        objectives: list[str] | None = None,
        calibration: CalibrationSpec | None = None,
        eval_text: str | None = None,
        tasks: list[str] | None = None,
        limit: int | None = None,
        profile: Path | str | None = None,
        cache: Path | None = None,
        batch_size: int = 8,
        eval_chunks: int = 32,
        next_word_limit: int = 200,
    ) -> None:
        self.loaded = loaded
        self.objectives = check_objectives(objectives or DEFAULT_OBJECTIVES)
        self.needs = {OBJECTIVES[o].needs for o in self.objectives}
        if "lm_eval" in self.needs and not tasks:
            raise UserError("objective 'accuracy' needs lm-eval tasks (--tasks piqa,../shared/data/arc_easy,...)")
        hardware = None
        if "hardware" in self.needs:
            from thresh_opt.objectives.hardware_cost import seneca_cost

            hardware = seneca_cost(loaded, profile)
        self.calibration = calibration or CalibrationSpec()
        self._eval_text = eval_text
        self.tasks, self.limit, self.hardware = list(tasks or []), limit, hardware
        self.cache, self.batch_size, self.eval_chunks, self.next_word_limit = cache, batch_size, eval_chunks, next_word_limit

    # ---- data, built once -------------------------------------------------------------------------
    @cached_property
    def calibration_chunks(self) -> torch.Tensor:
        """The calibration token chunks (disk-cached)."""
        return calibration_chunks(self.loaded, self.calibration, self.cache)

    @cached_property
    def eval_text(self) -> str:
        """Text for perplexity and next-word accuracy."""
        return self._eval_text if self._eval_text is not None else self.loaded.heldout_part("evaluation")

    @cached_property
    def eval_chunks_tensor(self) -> torch.Tensor:
        """Evaluation-text chunks of the calibration context length."""
        return token_chunks(self.loaded.tokenizer, self.eval_text, self.calibration.ctx_len)[: self.eval_chunks]

    @cached_property
    def lm_eval(self) -> Any:
        """The lm-eval runner, with its tasks loaded once."""
        from thresh_opt.objectives.lm_eval_tasks import LmEvalRunner

        return LmEvalRunner(self.loaded.model, self.loaded.tokenizer, self.tasks, self.limit)

    @cached_property
    def dense(self) -> Evaluation:
        """The unthresholded model's objectives: the reference for ratios, gains and constraints."""
        saved = self.loaded.thresholded.thresholds
        self.loaded.thresholded.reset_thresholds()
        try:
            return self._measure(None)
        finally:
            self.loaded.thresholded.set_thresholds(saved)

    # ---- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, thresholds: Mapping[str, float] | None) -> Evaluation:
        """All selected objectives for these thresholds (None or {} = dense); unnamed modules get 0."""
        tm = self.loaded.thresholded
        full = {n: 0.0 for n in tm.names} | dict(thresholds or {})
        dense = self.dense  # first, so that it runs dense
        tm.set_thresholds(full)
        return self._measure(dense)

    @torch.no_grad()
    def _measure(self, dense: Evaluation | None) -> Evaluation:
        started = time.perf_counter()
        tm = self.loaded.thresholded
        raw: dict[str, float] = {}
        ev = Evaluation(values={}, dense=dense.values if dense else {})
        if self.needs & {"calibration", "hardware"}:
            with tm.counting():
                raw["calibration_loss"] = mean_loss(self.loaded.model, self.calibration_chunks, self.batch_size)
            report = tm.sparsity()
            raw["sparsity"] = report.mac_weighted
            ev.per_module_sparsity = report.per_module
        if "evaluation" in self.needs:
            raw["perplexity"] = perplexity(mean_loss(self.loaded.model, self.eval_chunks_tensor, self.batch_size))
        if "next_word" in self.needs:
            examples = next_word_examples(self.eval_text, limit=self.next_word_limit)
            raw["next_word_accuracy"] = next_word_accuracy(self.loaded.model, self.loaded.tokenizer, examples)
        if "lm_eval" in self.needs:
            ev.tasks = self.lm_eval.evaluate()
            raw["accuracy"] = sum(r[ref.metric] for ref, r in zip(self.lm_eval.refs, ev.tasks.values())) / len(ev.tasks)
        if "hardware" in self.needs:
            dense_sparsity = dense.per_module_sparsity if dense else ev.per_module_sparsity
            ev.hardware = self.hardware(ev.per_module_sparsity, dense_sparsity)
            raw.update({k: ev.hardware[k] for k in ("energy", "latency", "energy_gain", "latency_gain")})
        if "calibration_loss" in raw:
            raw["loss_ratio"] = raw["calibration_loss"] / (dense.values["calibration_loss"] if dense else raw["calibration_loss"])
        ev.values = {k: raw[k] for k in self.objectives if k in raw} | {k: v for k, v in raw.items() if k not in self.objectives}
        ev.seconds = time.perf_counter() - started
        return ev
