"""Comparing search strategies: samplers x seeds on one model, equal budgets, the same baselines.

Every (sampler, seed) pair is an ordinary study in the comparison's journal, so a comparison resumes
like a study does, and each one can be opened with `thresh-opt study show`. The model is loaded once
and shared by all of them; the hypervolume reference point comes from the dense model, which is the
same for every study.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from pydantic import Field, field_validator, model_validator

from thresh_opt import keys
from thresh_opt.config import load_yaml, validate
from thresh_opt.errors import ConfigError, UserError
from thresh_opt.registry import SAMPLERS
from thresh_opt.samplers.factory import check_sampler_options, is_deterministic
from thresh_opt.study.config import (
    REPO_DIR,
    BaselineConfig,
    SamplerConfig,
    SearchSpaceConfig,
    StudyConfig,
    _Strict,
    check_loss_key,
    check_workers,
    load_space,
    load_study,
    walks_levels,
)
from thresh_opt.study.driver import StudyRun, TrialCallback, evaluated, run_study

if TYPE_CHECKING:
    from thresh_opt.study.contracts import Executor

DEFAULT_COMPARE = REPO_DIR / "studies" / "compare-embedded.yaml"


class CompareEntry(_Strict):
    """One contender: a sampler with its options, optionally on its own search space."""

    label: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    search_space: str | None = None

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        return SAMPLERS.check(v)

    @property
    def key(self) -> str:
        """The label, or the sampler name."""
        return self.label or self.name


class ReferenceEntry(_Strict):
    """A fixed configuration to draw and judge the contenders against, e.g. thresholds learned by training."""

    label: str = Field(pattern=r"^[A-Za-z0-9_.=-]+$")
    thresholds: str  # a thresholds file {module: threshold} (`baseline train --output`), relative to this file


class CompareConfig(_Strict):
    """Samplers x seeds on the template study's model, calibration, objectives and baselines."""

    name: str = Field("compare", pattern=r"^[A-Za-z0-9_.-]+$")
    study: str  # the template study file, relative to this file
    samplers: list[CompareEntry] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    trials: int = Field(60, ge=1)
    budgets: list[int] = Field(default_factory=list)  # trial counts to report hypervolume at
    forward_equivalents: float | None = Field(None, gt=0)  # each study's budget in FE (trials stays a cap)
    fe_budgets: list[float] = Field(default_factory=list)  # forward-equivalents to report hypervolume at
    search_space: str | None = None  # for every entry without its own (default: the template's)
    references: list[ReferenceEntry] = Field(default_factory=list)  # evaluated once, drawn in the fronts plot
    baselines: BaselineConfig | None = None  # enqueued first in every study (default: the template's)
    workers: int | None = Field(None, ge=1)
    run_dir: str | None = None
    tracking_uri: str | None = None

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("budgets are trial counts >= 1")
        return sorted(set(v))

    @field_validator("fe_budgets")
    @classmethod
    def _positive_fe(cls, v: list[float]) -> list[float]:
        if any(b <= 0 for b in v):
            raise ValueError("fe_budgets are forward-equivalents > 0")
        return sorted(set(v))

    @model_validator(mode="after")
    def _checks(self) -> CompareConfig:
        keys = [e.key for e in self.samplers]
        if len(set(keys)) != len(keys):
            raise ValueError("two samplers share a label: give each a distinct `label`")
        if len({r.label for r in self.references}) != len(self.references):
            raise ValueError("two references share a label: give each a distinct `label`")
        if not self.budgets:
            self.budgets = sorted({max(1, self.trials // 4), max(1, self.trials // 2), self.trials})
        if self.budgets[-1] > self.trials:
            raise ValueError(f"a budget ({self.budgets[-1]}) exceeds trials ({self.trials})")
        if self.forward_equivalents is not None:
            if not self.fe_budgets:
                fe = self.forward_equivalents
                self.fe_budgets = sorted({fe / 4, fe / 2, fe})
            if self.fe_budgets[-1] > self.forward_equivalents:
                raise ValueError(f"an FE budget ({self.fe_budgets[-1]:g}) exceeds forward_equivalents "
                                 f"({self.forward_equivalents:g})")
        return self


@dataclass
class Contender:
    """One (sampler, seed) study of a comparison."""

    label: str
    seed: int
    cfg: StudyConfig
    space: SearchSpaceConfig

    @property
    def study_name(self) -> str:
        """Its study name in the journal."""
        return self.cfg.name


def load_compare(path: Path, overrides: dict[str, Any] | None = None,
                 ray_address: str | None = None) -> tuple[CompareConfig, StudyConfig, list[Contender]]:
    """Validate a comparison file (with command-line overrides) and build its studies, all before any
    model loads."""
    data = load_yaml(path)
    if isinstance(data, dict) and overrides:
        for cap, listed in (("trials", "budgets"), ("forward_equivalents", "fe_budgets")):
            if cap in overrides and isinstance(data.get(listed), list):  # budgets beyond it are dropped
                kept = [b for b in data[listed] if not isinstance(b, (int, float)) or b <= overrides[cap]]
                overrides = {listed: kept or [overrides[cap]], **overrides}
        data = {**data, **overrides}
    ccfg = validate(data, CompareConfig, str(path))
    template, template_space = load_study((path.parent / ccfg.study).resolve())
    default_space = load_space((path.parent / ccfg.search_space).resolve()) if ccfg.search_space else template_space
    contenders = []
    for i, entry in enumerate(ccfg.samplers):
        sampler = SamplerConfig(name=entry.name, options=entry.options)
        space = load_space((path.parent / entry.search_space).resolve()) if entry.search_space else default_space
        try:
            check_sampler_options(sampler, str(path), space.level_list())
            check_loss_key(template.model_copy(update={"sampler": sampler}), str(path))
        except ConfigError as exc:
            raise ConfigError(str(path), exc.field.replace("sampler.", f"samplers.{i}.", 1), exc.problem) from None
        if walks_levels(entry.name) and space.level_list() is None:
            raise ConfigError(str(path), f"samplers.{i}.search_space",
                              f"the {entry.name} sampler needs discrete levels")
        seeds = ccfg.seeds[:1] if is_deterministic(sampler) else ccfg.seeds
        for seed in seeds:
            cfg = template.model_copy(update={
                "name": f"{ccfg.name}.{entry.key}.s{seed}", "sampler": sampler, "seed": seed, "trials": ccfg.trials,
                "max_forward_equivalents": ccfg.forward_equivalents, "baselines": ccfg.baselines or template.baselines,
                "workers": ccfg.workers or template.workers, "storage": None, "run_dir": None,
                "ray_address": ray_address or template.ray_address,
                "tracking_uri": ccfg.tracking_uri or template.tracking_uri,
                "refine": None})  # the budgets compare searches; a template's refined points would come after them
            contenders.append(Contender(entry.key, seed, cfg, space))
    for c in contenders[:1]:  # workers, cluster and device are the same for every contender
        check_workers(c.cfg, str(path))
    for i, ref in enumerate(ccfg.references):
        ref.thresholds = str(_thresholds_file((path.parent / ref.thresholds).resolve(), str(path),
                                              f"references.{i}.thresholds"))
    return ccfg, template, contenders


def _thresholds_file(file: Path, source: str, field: str) -> Path:
    """A readable thresholds file ({module: number}), or a ConfigError naming the field."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(source, field, f"{file}: no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(source, field, f"{file}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()):
        raise ConfigError(source, field, f"{file}: a thresholds file holds a JSON object {{module name: number}}")
    return file


def measure_references(ccfg: CompareConfig, executor: Executor, names: list[str]) -> list[dict[str, Any]]:
    """Each reference configuration's objective values on the comparison's model and calibration set."""
    out = []
    for ref in ccfg.references:
        thresholds = {k: float(v) for k, v in json.loads(Path(ref.thresholds).read_text(encoding="utf-8")).items()}
        try:
            result = executor.measure(thresholds, names)
        except UserError as exc:  # e.g. a module the model does not have
            raise UserError(f"references: {ref.label}: {ref.thresholds}: {exc}") from None
        out.append({"label": ref.label, "file": ref.thresholds, "values": dict(result.values)})
    return out


def compare_run_dir(ccfg: CompareConfig) -> Path:
    """runs/<comparison name> under the repository (or the configured folder)."""
    return Path(ccfg.run_dir) if ccfg.run_dir else REPO_DIR / "runs" / ccfg.name


def run_contender(c: Contender, run_dir: Path, executor: Any, source: str,
                  on_trial: TrialCallback | None = None) -> optuna.Study:
    """Run (or resume) one contender's study on a shared executor; wall time adds up over resumes."""
    cfg = c.cfg.model_copy(update={"storage": str(run_dir / keys.JOURNAL_FILE)})
    run = StudyRun(cfg, c.space, run_dir / "studies" / c.study_name, source=source)
    executor.begin_study(c.space, c.cfg.sampler)
    began = time.perf_counter()
    try:
        study = run_study(run, executor, on_trial)
    finally:
        try:
            existing = optuna.load_study(study_name=cfg.name, storage=run.storage())
            existing.set_user_attr(keys.WALL_SECONDS,
                                   existing.user_attrs.get(keys.WALL_SECONDS, 0.0) + time.perf_counter() - began)
        except KeyError:
            pass
    return study


def evaluations(study: optuna.Study) -> int:
    """Trials evaluated (complete, failed, or pruned after their cheap objectives)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if evaluated(t))
