"""The evaluator: every named objective of one thresholds configuration on the loaded model."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from thresh_opt.calibration import CalibrationSpec, calibration_chunks
from thresh_opt.errors import UserError
from thresh_opt.incremental import Cost, IncrementalEngine
from thresh_opt.objectives.catalog import MEASUREMENTS, Measured, Measurement
from thresh_opt.objectives.text import token_chunks
from thresh_opt.registry import OBJECTIVES as OBJECTIVE_REGISTRY

if TYPE_CHECKING:
    from thresh_opt.models import LoadedModel


OBJECTIVES = OBJECTIVE_REGISTRY.targets()  # name -> Objective, declared in thresh_opt.objectives.catalog
DEFAULT_OBJECTIVES = ["loss_ratio", "sparsity", "energy_gain", "latency_gain"]


def check_objectives(names: list[str]) -> list[str]:
    """The names, or a clear error naming the unknown one and listing the allowed."""
    for n in names:
        if n not in OBJECTIVES:
            raise UserError(f"unknown objective {n!r}; allowed: {', '.join(OBJECTIVES)}")
    if not names:
        raise UserError(f"no objectives selected; allowed: {', '.join(OBJECTIVES)}")
    return list(names)


def check_tasks(tasks: list[str], objectives: list[str], include_path: list[str] | None = None) -> str | None:
    """Why these lm-eval tasks cannot be used with these objectives, or None: every include path is a
    folder, every local task folder exists, every task file is a valid lm-eval task whose data files exist,
    and tasks need an objective that runs them (so a task list is never ignored silently)."""
    from thresh_opt.objectives.lm_eval_tasks import check_include_path, parse_task

    try:
        dirs = check_include_path(include_path or [])
        for text in tasks:
            parse_task(text, dirs)
    except UserError as exc:
        return str(exc)
    users = [n for n, o in OBJECTIVES.items() if o.needs == "lm_eval"]
    if tasks and not any(n in users for n in objectives):
        return (f"lm-eval tasks are given but no objective runs them: add {' or '.join(map(repr, users))} "
                "to the objectives")
    return None


Gate = Callable[[dict[str, float]], "str | None"]


@dataclass
class Evaluation:
    """The objectives of one configuration, with the dense reference, the details behind them, the
    objectives skipped (name -> why) and the work it took."""

    values: dict[str, float]
    dense: dict[str, float]
    per_module_sparsity: dict[str, float] = field(default_factory=dict)
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"objectives": self.values, "dense": self.dense, "tasks": self.tasks, "skipped": self.skipped,
                "per_module_sparsity": self.per_module_sparsity, "hardware": self.hardware, "seconds": self.seconds,
                "forward_equivalents": self.cost.forward_equivalents, "cost": asdict(self.cost)}


class Evaluator:
    """Evaluates thresholds configurations on one loaded model, reusing tokens, statistics and lm-eval tasks.

    The calibration loss and zero counts come from one pass of the incremental engine
    (:class:`~thresh_opt.incremental.IncrementalEngine`: it starts at the first block whose upstream
    thresholds differ from a kept pass); the expensive objectives (held-out perplexity, next-word and lm-eval
    accuracy) run after it, unless a gate says they cannot matter.

    Example:
        >>> ev = Evaluator(load_model("embedded:rwkv4-tiny"), ["loss_ratio", "sparsity"])  # doctest: +SKIP
        >>> ev.evaluate({"blocks.0.att.key": 0.1}).values                                   # doctest: +SKIP

    Args:
        loaded: the model (its thresholded wrapper is used; thresholds are left as evaluated).
        objectives: names from OBJECTIVES.
        calibration: the calibration set (default: first half of the embedded held-out text).
        eval_text: text for perplexity and next-word accuracy (default: second half of the held-out text).
        tasks: lm-eval tasks (names, task files .yaml/.yml, local folders, NAME=FOLDER) for `accuracy`.
        limit: first N examples per lm-eval task, the same in every evaluation.
        profile: SENECA hardware profile file for the energy and latency objectives (default: shipped).
        cache: the disk cache folder for calibration tokens.
        batch_size: chunks per forward call.
        cache_mb: the incremental engine's memory budget (block inputs, recorded module inputs).
        incremental: False runs every calibration pass from the tokens (the published procedure's cost).
        include_path: folders whose lm-eval task files make their tasks loadable by name.
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
        cache_mb: float = 512.0,
        incremental: bool = True,
        include_path: list[str] | None = None,
    ) -> None:
        self.loaded = loaded
        self.objectives = check_objectives(objectives or DEFAULT_OBJECTIVES)
        self.needs = {OBJECTIVES[o].needs for o in self.objectives}
        if "lm_eval" in self.needs and not tasks:
            raise UserError("objective 'accuracy' needs lm-eval tasks (--tasks piqa,my_task.yaml,...)")
        hardware = None
        if "hardware" in self.needs:
            from thresh_opt.objectives.hardware_cost import seneca_cost

            hardware = seneca_cost(loaded, profile)
        self.calibration = calibration or CalibrationSpec()
        self._eval_text = eval_text
        self.tasks, self.limit, self.hardware = list(tasks or []), limit, hardware
        self.cache, self.batch_size = cache, batch_size
        self.eval_chunks, self.next_word_limit = eval_chunks, next_word_limit
        self.cache_mb, self.incremental = cache_mb, incremental
        self.include_path = list(include_path or [])
        self._known: dict[tuple[tuple[float, ...], str], tuple[dict[str, float], dict[str, dict[str, float]]]] = {}

    # ---- data, built once -------------------------------------------------------------------------
    @cached_property
    def calibration_chunks(self) -> torch.Tensor:
        """The calibration token chunks (disk-cached)."""
        return calibration_chunks(self.loaded, self.calibration, self.cache)

    @cached_property
    def engine(self) -> IncrementalEngine:
        """The incremental engine over the calibration chunks."""
        return IncrementalEngine(self.loaded.thresholded, self.calibration_chunks, self.batch_size, self.cache_mb,
                                 self.incremental)

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

        return LmEvalRunner(self.loaded.model, self.loaded.tokenizer, self.tasks, self.limit,
                            include_path=self.include_path)

    @cached_property
    def dense(self) -> Evaluation:
        """The unthresholded model's objectives: the reference for ratios, gains and constraints."""
        saved = self.loaded.thresholded.thresholds
        self.loaded.thresholded.reset_thresholds()
        try:
            return self._measure(None, self.objectives, None)
        finally:
            self.loaded.thresholded.set_thresholds(saved)

    # ---- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, thresholds: Mapping[str, float] | None, only: list[str] | None = None,
                 gate: Gate | None = None, first: str | None = None) -> Evaluation:
        """The selected objectives (or those in `only`) for these thresholds (None or {} = dense; unnamed
        modules get 0).

        With a gate, the cheap objectives (and `first`, when expensive) are computed first; if
        gate(values) gives a reason, the other expensive objectives are skipped, with that reason.
        """
        tm = self.loaded.thresholded
        full = dict.fromkeys(tm.names, 0.0) | dict(thresholds or {})
        dense = self.dense  # first, so that it runs dense
        tm.set_thresholds(full)
        names = check_objectives(only) if only is not None else self.objectives
        return self._measure(dense, names, gate, first)

    @staticmethod
    def _plan(names: list[str]) -> list[Measurement]:
        """The measurements these objectives take, with those they read, in running order."""
        wanted = {OBJECTIVES[o].needs for o in names}
        todo = list(wanted)
        while todo:
            for before in MEASUREMENTS[todo.pop()].after:
                if before not in wanted:
                    wanted.add(before)
                    todo.append(before)
        return [m for m in MEASUREMENTS.values() if m.name in wanted]

    @torch.no_grad()
    def _measure(self, dense: Evaluation | None, names: list[str], gate: Gate | None,
                 first: str | None = None) -> Evaluation:
        started = time.perf_counter()
        before = replace(self.engine.cost)
        plan = self._plan(names)
        raw: dict[str, float] = {}
        details = Measured()
        for m in plan:
            if not m.expensive:
                raw.update(m.compute(self, dense, details))
        expensive = [m for m in plan if m.expensive]
        skipped: dict[str, str] = {}
        if gate is not None:
            early = [m for m in expensive if first is not None and OBJECTIVES[first].measurement is m]
            self._expensive(early, raw, details, dense)
            reason = gate(dict(raw))
            if reason is not None:
                skipped = {o: reason for o in names if OBJECTIVES[o].measurement in expensive and o not in raw}
                expensive = []
            else:
                expensive = [m for m in expensive if m not in early]
        self._expensive(expensive, raw, details, dense)
        ev = Evaluation(values={k: raw[k] for k in names if k in raw}
                        | {k: v for k, v in raw.items() if k not in names},
                        dense=dense.values if dense else {}, per_module_sparsity=details.per_module_sparsity or {},
                        tasks=details.tasks or {}, hardware=details.hardware or {}, skipped=skipped)
        ev.seconds = time.perf_counter() - started
        ev.cost = replace(self.engine.cost.since(before), seconds=ev.seconds)
        return ev

    def _expensive(self, measurements: list[Measurement], raw: dict[str, float], details: Measured,
                   dense: Evaluation | None) -> None:
        """Run the expensive measurements (a configuration measured before is not measured again); their
        forwards count as `other` work, by tokens run."""
        tm = self.loaded.thresholded
        config = tuple(tm.thresholds[n] for n in tm.names)
        tokens = tm.tokens_run
        for m in measurements:
            if (config, m.name) not in self._known:
                own = Measured()
                self._known[config, m.name] = (m.compute(self, dense, own), own.tasks or {})
            values, tasks = self._known[config, m.name]
            raw.update(values)
            if tasks:
                details.tasks = {**(details.tasks or {}), **tasks}
        self.engine.cost.other_fe += (tm.tokens_run - tokens) / self.engine.runner.tokens
