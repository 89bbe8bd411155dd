"""Study and search-space files: validated YAML with defaults that run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thresh_opt.calibration import CalibrationSpec
from thresh_opt.config import PACKAGE_DIR, load_config, load_yaml, validate
from thresh_opt.errors import ConfigError

REPO_DIR = PACKAGE_DIR.parent
DEFAULT_STUDY = REPO_DIR / "studies" / "embedded-rwkv4.yaml"

# Keep fractions of the paper (design.md 1.3): linear K = 0.9 .. 0.1, geometric K = 0.20 .. 0.01.
LEVEL_LISTS = {
    "linear": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "geometric": [0.0, 0.80, 0.87, 0.92, 0.94, 0.96, 0.98, 0.99],
}
SAMPLERS = ("greedy", "hybrid", "tpe", "nsga2", "nsga3", "random", "gp")
NEEDS_LEVELS = ("greedy", "hybrid")  # samplers that walk a discrete candidate list


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A continuous target-sparsity range."""

    low: float = Field(0.0, ge=0.0, lt=1.0)
    high: float = Field(0.9, gt=0.0, le=0.99)


class SearchSpaceConfig(_Strict):
    """Per-group target sparsity: a discrete list (or 'linear' / 'geometric') or a continuous range."""

    name: str = "space"
    grouping: Literal["module", "kind", "block", "all"] = "kind"
    levels: Literal["linear", "geometric"] | list[float] | None = "linear"
    range: Range | None = None

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v or any(not 0.0 <= x <= 0.99 for x in v):
                raise ValueError("levels must be target sparsities between 0 and 0.99")
            return sorted({0.0, *v})
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> SearchSpaceConfig:
        if self.range is not None:
            self.levels = None
        return self

    def level_list(self) -> list[float] | None:
        """The discrete levels (with 0.0), or None for a range."""
        if self.range is not None:
            return None
        return LEVEL_LISTS[self.levels] if isinstance(self.levels, str) else list(self.levels)


class ModelConfig(_Strict):
    """Which model to load and how."""

    source: str = "embedded:rwkv4-tiny"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    placement: str | None = None


class ObjectiveConfig(_Strict):
    """An objective of the study; direction defaults to the objective's natural one."""

    name: str
    direction: Literal["minimize", "maximize"] | None = None


class ConstraintConfig(_Strict):
    """objective <= max, objective >= min, or a drop from the dense value of at most max_drop."""

    objective: str
    max: float | None = None
    min: float | None = None
    max_drop: float | None = Field(None, ge=0.0)

    @model_validator(mode="after")
    def _exactly_one(self) -> ConstraintConfig:
        if sum(x is not None for x in (self.max, self.min, self.max_drop)) != 1:
            raise ValueError("give exactly one of max, min, max_drop")
        return self


class SamplerConfig(_Strict):
    """An Optuna sampler by name with its options (passed to its constructor)."""

    name: Literal["greedy", "hybrid", "tpe", "nsga2", "nsga3", "random", "gp"] = "greedy"
    options: dict[str, Any] = Field(default_factory=dict)


class BaselineConfig(_Strict):
    """Configurations enqueued before any sampler trial, the same for every sampler."""

    dense: bool = True
    uniform: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])

    @field_validator("uniform")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < x <= 0.99 for x in v):
            raise ValueError("uniform levels must be between 0 (exclusive) and 0.99")
        return v


class StudyConfig(_Strict):
    """A whole study: model, calibration, space, objectives, constraints, sampler, budget and storage."""

    name: str = Field("study", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig = Field(default_factory=ModelConfig)
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    search_space: str | dict[str, Any] = Field(default_factory=dict)  # a file, or the space inline
    objectives: list[ObjectiveConfig] = Field(
        default_factory=lambda: [ObjectiveConfig(name="loss_ratio"), ObjectiveConfig(name="energy_gain")], min_length=1
    )
    constraints: list[ConstraintConfig] = Field(default_factory=list)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    trials: int = Field(60, ge=1)
    seed: int = 0
    workers: int = Field(1, ge=1)
    storage: str | None = None
    run_dir: str | None = None
    tracking_uri: str | None = None
    ray_address: str | None = None
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    tasks: list[str] = Field(default_factory=list)
    limit: int | None = Field(None, ge=1)
    profile: str | None = None


def load_space(path: Path) -> SearchSpaceConfig:
    """Load and validate a search-space file."""
    return load_config(path, SearchSpaceConfig)


def load_study(path: Path | None = None) -> tuple[StudyConfig, SearchSpaceConfig]:
    """Load a study file (the default study when None) and its search space; relative paths are resolved
    against the study file's folder, and objective names are checked."""
    from thresh_opt.objectives import OBJECTIVES

    path = path or DEFAULT_STUDY
    cfg = validate(load_yaml(path), StudyConfig, str(path))
    for i, o in enumerate(cfg.objectives):
        if o.name not in OBJECTIVES:
            raise ConfigError(str(path), f"objectives.{i}.name", f"unknown objective {o.name!r}; allowed: {', '.join(OBJECTIVES)}")
    names = [o.name for o in cfg.objectives]
    for i, c in enumerate(cfg.constraints):
        if c.objective not in OBJECTIVES:
            raise ConfigError(str(path), f"constraints.{i}.objective", f"unknown objective {c.objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ConfigError(str(path), "objectives", "an objective is listed twice")
    if isinstance(cfg.search_space, str):
        space_path = (path.parent / cfg.search_space).resolve()
        space = load_space(space_path)
    else:
        try:
            space = validate(cfg.search_space, SearchSpaceConfig, str(path))
        except ConfigError as exc:
            raise ConfigError(str(path), f"search_space.{exc.field}", exc.problem) from None
    from thresh_opt.samplers.factory import check_sampler_options

    check_sampler_options(cfg.sampler, str(path))
    if cfg.sampler.name in NEEDS_LEVELS and space.range is not None:
        raise ConfigError(str(path), "sampler.name", f"the {cfg.sampler.name} sampler needs a discrete search space (levels), not a range")
    return cfg, space
