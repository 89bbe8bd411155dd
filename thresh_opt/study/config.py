"""Study and search-space files: validated YAML with defaults that run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thresh_opt.calibration import CalibrationSpec
from thresh_opt.config import PACKAGE_DIR, load_config, load_yaml, validate
from thresh_opt.errors import ConfigError
from thresh_opt.incremental.sequential import MIN_CHUNKS, MIN_REJECT_CHUNKS, Z_ACCEPT, Z_REJECT
from thresh_opt.registry import SAMPLERS
from thresh_opt.samplers.factory import check_sampler_options

REPO_DIR = PACKAGE_DIR.parent
DEFAULT_STUDY = REPO_DIR / "studies" / "embedded-rwkv4.yaml"

# Keep fractions of the paper (design.md 1.3): linear K = 0.9 .. 0.1, geometric K = 0.20 .. 0.01.
LEVEL_LISTS = {
    "linear": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "geometric": [0.0, 0.80, 0.87, 0.92, 0.94, 0.96, 0.98, 0.99],
}


def walks_levels(sampler: str) -> bool:
    """True for a sampler that walks a discrete candidate list (greedy, hybrid): it needs `levels`."""
    return bool(SAMPLERS[sampler].meta.get("levels"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A continuous target-sparsity range."""

    low: float = Field(0.0, ge=0.0, lt=1.0)
    high: float = Field(0.9, gt=0.0, le=0.99)


class SearchSpaceConfig(_Strict):
    """Per-group target sparsity: a discrete list (or 'linear' / 'geometric') or a continuous range, and how
    target sparsities become thresholds (`statistics`):

    - ``sequential``: each module's statistics measured under the thresholds of the modules before it, as
      the published greedy procedure does (every module with a target > 0 needs its own statistics);
    - ``dense``: every module's statistics from one pass of the dense model;
    - ``auto`` (default): sequential for the samplers that walk levels (greedy, hybrid, sensitivity,
      blockwise, chain), dense for the others and for the saliency path (its tables use the dense mapping).

    `criterion` is what a threshold is compared with: ``magnitude`` (default, |x|) or ``weight_norm``
    (|x| * the column norm of the consuming maps, WINA; see `thresh_opt.models.criterion`).
    """

    name: str = "space"
    grouping: Literal["module", "kind", "block", "all"] = "kind"
    levels: Literal["linear", "geometric"] | list[float] | None = "linear"
    range: Range | None = None
    statistics: Literal["auto", "dense", "sequential"] = "auto"
    criterion: Literal["magnitude", "weight_norm"] = "magnitude"

    @field_validator("criterion", mode="before")
    @classmethod
    def _criterion(cls, v: Any) -> Any:
        allowed = get_args(cls.model_fields["criterion"].annotation)  # = thresh_opt.models.criterion.CRITERIA
        if v not in allowed:
            raise ValueError(f"unknown criterion {v!r}; allowed: {', '.join(allowed)}")
        return v

    def statistics_for(self, sampler: str | SamplerConfig) -> Literal["dense", "sequential"]:
        """The mapping the study uses with this sampler (a name, or the study's sampler with its options)."""
        if self.statistics != "auto":
            return self.statistics
        choice = sampler if isinstance(sampler, SamplerConfig) else SamplerConfig(name=sampler)
        meta = SAMPLERS[choice.name].meta
        delegate = meta.get("statistics_from")  # a sampler that maps as one of its parts does (a chain)
        if delegate is not None and (part := delegate(choice.options)) is not None:
            return self.statistics_for(SamplerConfig(**part))
        own = meta.get("statistics")  # a sampler whose tables assume one mapping
        return own if own is not None else "sequential" if walks_levels(choice.name) else "dense"

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

    def bounds(self) -> Range:
        """The continuous range (a ValueError for a discrete space)."""
        if self.range is None:
            raise ValueError("a discrete search space has no range")
        return self.range

    def level_list(self) -> list[float] | None:
        """The discrete levels (with 0.0), or None for a range."""
        if self.range is not None:
            return None
        return LEVEL_LISTS[self.levels] if isinstance(self.levels, str) else list(self.levels or [])


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
    """A registered sampler by name with its options (checked against its options model when the file loads)."""

    name: str = "greedy"
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        return SAMPLERS.check(v)


class EarlyRejection(_Strict):
    """The sequential test of early rejection (`thresh_opt.incremental.sequential`: why two sides)."""

    z_accept: float = Field(Z_ACCEPT, gt=0.0)  # standard errors below the rule's boundary to accept
    z_reject: float = Field(Z_REJECT, gt=0.0)  # standard errors above it to reject
    min_chunks: int = Field(MIN_CHUNKS, ge=2)  # batches before any decision (a standard deviation needs 2)
    min_reject_chunks: int = Field(MIN_REJECT_CHUNKS, ge=2)  # batches before a rejection


class EvaluationConfig(_Strict):
    """How trials are evaluated: the incremental engine's settings, and when expensive objectives are skipped.

    skip_expensive: ``rejected`` (default) skips the expensive objectives (held-out perplexity, next-word and
    lm-eval accuracy) of a greedy candidate that the calibration loss rejects; ``dominated`` also skips
    them for trials that violate a constraint on the cheap objectives or are dominated on the study's
    cheap objectives by an earlier trial; ``never`` computes every objective on every trial. A trial
    with skipped objectives is stored PRUNED, with its cheap values and the reason.

    early_rejection: a greedy candidate is measured batch by batch against its reference and stopped as
    soon as a paired sequential test decides it (`thresh_opt.incremental.sequential`); its stored loss is
    then an estimate. Batches are of ``batch_size`` chunks: use a small one (1) for it to stop early.
    ``true`` takes the test's defaults, a mapping sets them (:class:`EarlyRejection`), ``false`` (default)
    turns it off.
    """

    incremental: bool = True  # False: every pass from the tokens (the published procedure's cost)
    cache_mb: float = Field(512.0, ge=1.0)  # kept block inputs, module inputs, results (LRU)
    batch_size: int = Field(8, ge=1)  # calibration chunks per forward call
    skip_expensive: Literal["never", "rejected", "dominated"] = "rejected"
    early_rejection: EarlyRejection | None = None

    @field_validator("early_rejection", mode="before")
    @classmethod
    def _early_switch(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return {} if value else None
        if value is not None and not isinstance(value, (dict, EarlyRejection)):
            raise ValueError(f"must be true, false or a mapping of {', '.join(EarlyRejection.model_fields)}, "
                             f"got {value!r}")
        return value

    @model_validator(mode="after")
    def _early_needs_incremental(self) -> EvaluationConfig:
        if self.early_rejection and not self.incremental:
            # without kept batch results every reference batch would be measured again for each candidate
            raise ValueError("early_rejection: true needs incremental: true")
        return self


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


class RefineConfig(_Strict):
    """Warm-started threshold training after the search (`thresh_opt.study.refine`): from the sparsest
    trial at or below each calibration-loss ratio in `targets`, `steps` steps of `baseline train` with the
    density penalty of the same position in `penalties` (one number: every target's)."""

    targets: list[float] = Field(default_factory=lambda: [1.03, 1.05, 1.07], min_length=1)
    penalties: list[float] = Field(default_factory=lambda: [1.0, 1.5, 2.0], min_length=1)
    steps: int = Field(15, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(4, ge=1)
    seed: int = 0

    @field_validator("targets")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(not x > 1.0 for x in v):
            raise ValueError("targets are calibration-loss ratios above 1 (e.g. 1.03)")
        return v

    @field_validator("penalties", mode="before")
    @classmethod
    def _one_or_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _paired(self) -> RefineConfig:
        if any(not p > 0 for p in self.penalties):
            raise ValueError("penalties must be > 0")
        if len(self.penalties) == 1:
            self.penalties = self.penalties * len(self.targets)
        elif len(self.penalties) != len(self.targets):
            raise ValueError(f"penalties: one number, or one per target ({len(self.targets)})")
        return self


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
    gpus_per_worker: float = Field(0.0, ge=0)  # Ray num_gpus per actor (fractions share a GPU)
    max_worker_restarts: int = Field(3, ge=0)  # dead Ray workers replaced before the study stops
    storage: str | None = None
    run_dir: str | None = None
    tracking_uri: str | None = None
    ray_address: str | None = None
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    tasks: list[str] = Field(default_factory=list)  # lm-eval names, task files, folders, NAME=FOLDER
    include_path: list[str] = Field(default_factory=list)  # folders of lm-eval task files, loadable by name
    limit: int | None = Field(None, ge=1)
    profile: str | None = None
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    front_metrics: list[str] = Field(default_factory=list)  # measured on the final Pareto front only
    front_points: int | None = Field(None, ge=1)  # at most this many front trials get them (spread; finals kept)
    max_forward_equivalents: float | None = Field(None, gt=0)  # budget in full calibration passes
    refine: RefineConfig | None = None  # warm-started training from the search's points, after it


def check_workers(cfg: StudyConfig, source: str) -> None:
    """Ray actors see a GPU only when they request one: a CUDA model on Ray workers needs gpus_per_worker."""
    ray = cfg.workers > 1 or cfg.ray_address is not None
    if ray and cfg.model.device.startswith("cuda") and cfg.gpus_per_worker == 0:
        raise ConfigError(source, "gpus_per_worker", f"model.device {cfg.model.device!r} on Ray workers needs "
                          "gpus_per_worker > 0 (e.g. 1, or 0.5 for two workers per GPU): Ray hides GPUs from "
                          "actors that do not request them")


def objectives_needed(cfg: StudyConfig) -> list[str]:
    """What every trial computes: the study's objectives, those its constraints use, and the calibration
    loss, loss ratio and sparsity (the greedy criterion, and free with the calibration pass)."""
    names = [o.name for o in cfg.objectives]
    extra = [c.objective for c in cfg.constraints] + ["calibration_loss", "loss_ratio", "sparsity"]
    return names + [n for n in dict.fromkeys(extra) if n not in names]


def constraint_values(cfg: StudyConfig, values: dict[str, float], dense: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values (feasible when <= 0) for the study's constraints."""
    from thresh_opt.objectives import OBJECTIVES

    out = {}
    for c in cfg.constraints:
        v = values[c.objective]
        if c.max is not None:
            out[f"{c.objective}<={c.max}"] = v - c.max
        elif c.min is not None:
            out[f"{c.objective}>={c.min}"] = c.min - v
        elif c.max_drop is not None:
            worse = (dense[c.objective] - v if OBJECTIVES[c.objective].direction == "maximize"
                     else v - dense[c.objective])
            out[f"{c.objective} drop<={c.max_drop}"] = worse - c.max_drop
    return out


def check_loss_key(cfg: StudyConfig, source: str) -> None:
    """The criterion of a sampler that walks levels (and of each such stage of a chain) must be an
    objective the study computes on every trial."""
    # Run after check_sampler_options: a chain's stages are valid {name, options} entries.
    stages = cfg.sampler.options.get("stages")
    choices = ([(f"sampler.options.stages.{i}.options", s["name"], s.get("options") or {})
                for i, s in enumerate(stages)] if stages
               else [("sampler.options", cfg.sampler.name, cfg.sampler.options)])
    computed = objectives_needed(cfg)
    for field, name, options in choices:
        if not walks_levels(name):
            continue
        key = options.get("loss_key", "calibration_loss")
        if key not in computed:
            raise ConfigError(source, f"{field}.loss_key", f"{key!r} is not computed by this study; computed on "
                              f"every trial: {', '.join(computed)} (add it to objectives to use it)")


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
            raise ConfigError(str(path), f"objectives.{i}.name",
                              f"unknown objective {o.name!r}; allowed: {', '.join(OBJECTIVES)}")
    names = [o.name for o in cfg.objectives]
    for i, c in enumerate(cfg.constraints):
        if c.objective not in OBJECTIVES:
            raise ConfigError(str(path), f"constraints.{i}.objective",
                              f"unknown objective {c.objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ConfigError(str(path), "objectives", "an objective is listed twice")
    for i, name in enumerate(cfg.front_metrics):
        if name not in OBJECTIVES:
            raise ConfigError(str(path), f"front_metrics.{i}",
                              f"unknown objective {name!r}; allowed: {', '.join(OBJECTIVES)}")
    used = names + [c.objective for c in cfg.constraints] + cfg.front_metrics
    if "accuracy" in used and not cfg.tasks:
        raise ConfigError(str(path), "tasks", "objective 'accuracy' needs lm-eval tasks (names or local folders)")
    from thresh_opt.objectives.evaluator import check_tasks
    from thresh_opt.objectives.lm_eval_tasks import TASK_FILE_SUFFIXES

    # task files and include folders are relative to the study file, like the search space
    cfg.include_path = [str((path.parent / Path(d).expanduser()).resolve()) for d in cfg.include_path]
    for i, d in enumerate(cfg.include_path):
        if not Path(d).is_dir():
            raise ConfigError(str(path), f"include_path.{i}", f"{d} is not a folder")
    cfg.tasks = [str((path.parent / Path(t).expanduser()).resolve()) if Path(t).suffix.lower() in TASK_FILE_SUFFIXES
                 and "=" not in t else t for t in cfg.tasks]
    problem = check_tasks(cfg.tasks, used, cfg.include_path)
    if problem:
        raise ConfigError(str(path), "tasks", problem)
    if isinstance(cfg.search_space, str):
        space_path = (path.parent / cfg.search_space).resolve()
        space = load_space(space_path)
    else:
        try:
            space = validate(cfg.search_space, SearchSpaceConfig, str(path))
        except ConfigError as exc:
            raise ConfigError(str(path), f"search_space.{exc.field}", exc.problem) from None
    check_sampler_options(cfg.sampler, str(path), space.level_list())
    check_loss_key(cfg, str(path))
    check_workers(cfg, str(path))
    if cfg.refine is not None and space.criterion != "magnitude":
        raise ConfigError(str(path), "refine", f"training learns magnitude thresholds; the search space's "
                          f"criterion is {space.criterion!r} (use criterion: magnitude, or drop refine)")
    if walks_levels(cfg.sampler.name) and space.range is not None:
        raise ConfigError(str(path), "sampler.name",
                          f"the {cfg.sampler.name} sampler needs a discrete search space (levels), not a range")
    return cfg, space
