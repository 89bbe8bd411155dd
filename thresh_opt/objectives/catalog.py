"""Every objective a study or `thresh-opt evaluate` can name, declared once with its computation.

Objectives that come from one pass share a measurement: one calibration pass gives the calibration loss,
the loss ratio and the sparsity; one SENECA estimate gives energy, latency and both gains. A
measurement is a function of the evaluator (the model with its thresholds set) that returns the values of
its objectives; it is cheap when the calibration pass gives it, expensive when it runs forward passes of
its own (those can be skipped for trials that cannot matter, see `Evaluator.evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from thresh_opt.objectives.text import mean_loss, next_word_accuracy, next_word_examples, perplexity
from thresh_opt.registry import OBJECTIVES

if TYPE_CHECKING:
    from thresh_opt.incremental import IncrementalEngine
    from thresh_opt.models import LoadedModel


class Measuring(Protocol):
    """What a measurement reads: the evaluator (``thresh_opt.objectives.evaluator.Evaluator``)."""

    @property
    def loaded(self) -> LoadedModel: ...
    @property
    def engine(self) -> IncrementalEngine: ...
    @property
    def hardware(self) -> Callable[[dict[str, float], dict[str, float]], dict[str, Any]] | None: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def next_word_limit(self) -> int: ...
    @property
    def eval_text(self) -> str: ...
    @property
    def eval_chunks_tensor(self) -> torch.Tensor: ...
    @property
    def lm_eval(self) -> Any: ...


@dataclass
class Measured:
    """A measurement's output besides its values: per-module sparsity, the SENECA report, task metrics."""

    per_module_sparsity: dict[str, float] | None = None
    hardware: dict[str, Any] | None = None
    tasks: dict[str, dict[str, float]] | None = None


class Reference(Protocol):
    """The dense model's evaluation (``Evaluation``): ratios and gains are taken against it."""

    values: dict[str, float]
    per_module_sparsity: dict[str, float]


# (evaluator, the dense reference or None while measuring the dense model, details to fill) -> values
Compute = Callable[[Measuring, Reference | None, Measured], dict[str, float]]


@dataclass(frozen=True)
class Measurement:
    """A computation that gives one or more objectives; `after` names the measurements it reads."""

    name: str
    compute: Compute
    expensive: bool
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Objective:
    """A named objective: what it measures, which way is better, and the measurement that computes it."""

    name: str
    direction: Literal["minimize", "maximize"]
    description: str
    measurement: Measurement

    @property
    def needs(self) -> str:
        """The name of its measurement (calibration, hardware, evaluation, next_word, lm_eval)."""
        return self.measurement.name

    @property
    def expensive(self) -> bool:
        """True when it takes forward passes of its own (the calibration pass gives the cheap ones)."""
        return self.measurement.expensive


def _calibration(ev: Measuring, dense: Reference | None,
                 out: Measured) -> dict[str, float]:
    tm = ev.loaded.thresholded
    outcome = ev.engine.evaluate([tm.thresholds[n] for n in tm.names])
    report = tm.sparsity(outcome.counts)
    out.per_module_sparsity = report.per_module
    reference = dense.values["calibration_loss"] if dense else outcome.loss
    return {"calibration_loss": outcome.loss, "loss_ratio": outcome.loss / reference, "sparsity": report.mac_weighted}


def _hardware(ev: Measuring, dense: Reference | None,
              out: Measured) -> dict[str, float]:
    assert ev.hardware is not None and out.per_module_sparsity is not None  # built for hardware objectives
    report = ev.hardware(out.per_module_sparsity, dense.per_module_sparsity if dense else out.per_module_sparsity)
    out.hardware = report
    return {k: report[k] for k in ("energy", "latency", "energy_gain", "latency_gain")}


def _evaluation(ev: Measuring, dense: Reference | None,
                out: Measured) -> dict[str, float]:
    return {"perplexity": perplexity(mean_loss(ev.loaded.model, ev.eval_chunks_tensor, ev.batch_size))}


def _next_word(ev: Measuring, dense: Reference | None,
               out: Measured) -> dict[str, float]:
    examples = next_word_examples(ev.eval_text, limit=ev.next_word_limit)
    return {"next_word_accuracy": next_word_accuracy(ev.loaded.model, ev.loaded.tokenizer, examples)}


def _lm_eval(ev: Measuring, dense: Reference | None,
             out: Measured) -> dict[str, float]:
    out.tasks = ev.lm_eval.evaluate()
    headline = [r[ref.metric] for ref, r in zip(ev.lm_eval.refs, out.tasks.values())]
    return {"accuracy": sum(headline) / len(headline)}


# in the order they run: the calibration pass first (the others read its sparsity), expensive ones last
MEASUREMENTS = {m.name: m for m in [
    Measurement("calibration", _calibration, expensive=False),
    Measurement("hardware", _hardware, expensive=False, after=("calibration",)),
    Measurement("evaluation", _evaluation, expensive=True),
    Measurement("next_word", _next_word, expensive=True),
    Measurement("lm_eval", _lm_eval, expensive=True),
]}


def _declare(name: str, direction: Literal["minimize", "maximize"], description: str, measurement: str) -> Objective:
    return Objective(name, direction, description, MEASUREMENTS[measurement])


for _objective in [
    _declare("calibration_loss", "minimize", "mean token cross-entropy on the calibration set (nats)", "calibration"),
    _declare("loss_ratio", "minimize", "calibration loss / dense calibration loss", "calibration"),
    _declare("perplexity", "minimize", "perplexity on the evaluation text", "evaluation"),
    _declare("next_word_accuracy", "maximize", "last word of evaluation-text lines, greedy", "next_word"),
    _declare("accuracy", "maximize", "mean headline lm-eval metric over the tasks", "lm_eval"),
    _declare("sparsity", "maximize", "MAC-weighted sparsity on the calibration set", "calibration"),
    _declare("energy", "minimize", "SENECA energy per token (nJ)", "hardware"),
    _declare("latency", "minimize", "SENECA latency per token (us)", "hardware"),
    _declare("energy_gain", "maximize", "dense SENECA energy / thresholded energy", "hardware"),
    _declare("latency_gain", "maximize", "dense SENECA latency / thresholded latency", "hardware"),
]:
    OBJECTIVES.register(_objective.name, _objective, direction=_objective.direction,
                        measurement=_objective.needs)
