"""Every sampler a study file can name, declared once: its class, its options model and how it is built.

Metadata of an entry:
    levels: walks a discrete candidate list (needs `levels`, not a `range`, and sequential statistics).
    deterministic: its trials do not depend on the seed (a comparison runs it once; a chain's is its
        stages', see `thresh_opt.samplers.factory.is_deterministic`).
    finishes: a stepped sampler whose search ends, so a chain's stage may follow it.
    hybrid_base: can be the hybrid's base sampler.
    build: (options, BuildContext) -> sampler.

The options of Optuna's samplers are read from their constructors, so every option Optuna adds is
accepted as it is; those that take a Python object (a sampler, a function, an array) are rejected with a
pointer to the Python API.
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import optuna
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from thresh_opt.errors import ConfigError
from thresh_opt.registry import SAMPLERS
from thresh_opt.samplers._blocksearch import BlockSearchSampler
from thresh_opt.samplers._blockwise import BlockwiseSampler
from thresh_opt.samplers._chain import ChainSampler
from thresh_opt.samplers._greedy import GreedySampler
from thresh_opt.samplers._greedy_state import budgets, tolerances
from thresh_opt.samplers._hybrid import HybridSampler
from thresh_opt.samplers._saliency_path import DEFAULT_GROUPS, Grouping, SaliencyPathSampler, StepMode
from thresh_opt.samplers._sensitivity import Probes, SensitivitySampler


@dataclass(frozen=True)
class BuildContext:
    """What building a sampler may need besides its options."""

    candidates: dict[str, list[float]] | None  # parameter -> discrete levels (None for a range)
    seed: int
    trials: int  # the study's trial budget
    source: str  # the study file, for messages


def population_for_budget(trials: int) -> int:
    """NSGA population for a trial budget: about six generations, between 4 and 50 (Optuna's default)."""
    return max(4, min(50, trials // 6))


GREEDY_ORDERS = ("forward", "reverse")


def _loss_ratios(v: list[float], info: ValidationInfo) -> list[float]:
    budgets(v, info.field_name or "loss ratios")  # ValueError with the reason, naming the option
    return v


# A list of loss ratios > 1 to the dense loss (budget passes, landing targets)
LossRatios = Annotated[list[float], AfterValidator(_loss_ratios)]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GreedyOptions(_Options):
    """Options of the greedy sampler (GreedySampler's constructor, plus the module order)."""

    loss_inc: float | list[float] = 1.0005
    budget: float | list[float] | None = None  # budget passes after the tolerance passes (loss ratios > 1)
    loss_key: str = "calibration_loss"
    warm_start: bool = True
    keep_first: bool = False
    start_level: float | None = Field(None, ge=0.0, le=1.0)  # where a kind's first module starts (None: bottom)
    warn_independent_sampling: bool = True
    order: str = "forward"  # front to back as published, or back to front

    @field_validator("order")
    @classmethod
    def _order(cls, v: str) -> str:
        if v not in GREEDY_ORDERS:
            raise ValueError(f"{v!r}; allowed: {', '.join(GREEDY_ORDERS)}")
        return v

    @field_validator("loss_inc")
    @classmethod
    def _tolerances(cls, v: float | list[float]) -> float | list[float]:
        tolerances(v)  # ValueError with the reason
        return v

    @field_validator("budget")
    @classmethod
    def _budgets(cls, v: float | list[float] | None) -> float | list[float] | None:
        budgets(v)  # ValueError with the reason
        return v


class HybridOptions(GreedyOptions):
    """The hybrid's own options; the rest are its greedy sampler's."""

    loss_inc: float | list[float] = Field(default_factory=lambda: [1.001, 1.003, 1.01])
    base: str = "nsga2"
    base_options: dict[str, Any] = Field(default_factory=dict)
    greedy_share: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("base")
    @classmethod
    def _base(cls, v: str) -> str:
        bases = SAMPLERS.where(hybrid_base=True)
        if v not in bases:
            raise ValueError(f"{v!r}; allowed: {', '.join(bases)}")
        return v

    def greedy_options(self) -> dict[str, Any]:
        """The options that go to the hybrid's greedy sampler."""
        own = set(HybridOptions.model_fields) - set(GreedyOptions.model_fields)
        return self.model_dump(exclude=own)


def _parameters(cls: type) -> list[inspect.Parameter]:
    return list(inspect.signature(cls).parameters.values())


def _builtin_type(annotation: object) -> Any:
    """An annotation string evaluated with builtins only (``int | None``), Any for a non-string one, or None
    when it names more than builtins (a class such as BaseSampler: a Python object)."""
    if not isinstance(annotation, str):
        return Any
    try:
        return eval(annotation, {"__builtins__": builtins})  # an annotation string of the sampler's own code
    except Exception:  # noqa: BLE001 - NameError and the like
        return None


def python_only(cls: type) -> tuple[str, ...]:
    """Constructor options that take a Python object: their annotation names more than builtins."""
    return tuple(p.name for p in _parameters(cls)
                 if p.name not in ("self", "search_space") and _builtin_type(p.annotation) is None)


def options_model(cls: type) -> type[BaseModel]:
    """A pydantic model of a sampler constructor's study-file options, typed where the annotation is a
    builtin type (the Python-object options are left out: see `python_only`)."""
    fields: dict[str, Any] = {
        p.name: (_builtin_type(p.annotation), None if p.default is inspect.Parameter.empty else p.default)
        for p in _parameters(cls)
        if p.name not in ("self", "search_space") and _builtin_type(p.annotation) is not None}
    return create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid"), **fields)


def _greedy(options: GreedyOptions, ctx: BuildContext) -> GreedySampler:
    if ctx.candidates is None:
        raise ConfigError(ctx.source, "sampler.name", "the greedy sampler needs a discrete search space")
    opts = options.model_dump(exclude_unset=True)
    names = list(ctx.candidates)[:: -1 if opts.pop("order", "forward") == "reverse" else 1]
    return GreedySampler({n: ctx.candidates[n] for n in names}, **opts)


def _build(name: str, options: dict[str, Any], ctx: BuildContext) -> optuna.samplers.BaseSampler:
    """A sampler inside another (a hybrid's base, a chain's stage), through its own entry."""
    entry = SAMPLERS[name]
    return entry.meta["build"](entry.options.model_validate(options), ctx)


def _hybrid(options: HybridOptions, ctx: BuildContext) -> HybridSampler:
    greedy = _greedy(GreedyOptions(**options.greedy_options()), ctx)
    base = _build(options.base, options.base_options, ctx)
    return HybridSampler(greedy, base, greedy_trials=round(options.greedy_share * ctx.trials))


def _optuna(cls: type, population: bool = False) -> Callable[[BaseModel, BuildContext], optuna.samplers.BaseSampler]:
    def build(options: BaseModel, ctx: BuildContext) -> optuna.samplers.BaseSampler:
        opts = options.model_dump(exclude_unset=True)
        opts.setdefault("seed", ctx.seed)
        if population:
            opts.setdefault("population_size", population_for_budget(ctx.trials))
        return cls(**opts)

    return build


_GREEDY_OBJECTS = tuple(n for n in python_only(GreedySampler) if n not in GreedyOptions.model_fields)
SAMPLERS.register("greedy", GreedySampler, GreedyOptions, levels=True, deterministic=True, finishes=True,
                  build=_greedy, python_only=_GREEDY_OBJECTS,
                  description="the published sequential greedy search (design.md 1.3)")
SAMPLERS.register("hybrid", HybridSampler, HybridOptions, levels=True, build=_hybrid, python_only=_GREEDY_OBJECTS,
                  description="greedy passes at several tolerances, then a base sampler seeded with them")
for _name, _cls, _population, _what in [
    ("tpe", optuna.samplers.TPESampler, False, "Optuna's tree-structured Parzen estimator"),
    ("nsga2", optuna.samplers.NSGAIISampler, True, "Optuna's NSGA-II"),
    ("nsga3", optuna.samplers.NSGAIIISampler, True, "Optuna's NSGA-III"),
    ("random", optuna.samplers.RandomSampler, False, "Optuna's random sampler"),
    ("gp", optuna.samplers.GPSampler, False, "Optuna's Gaussian-process sampler"),
]:
    SAMPLERS.register(_name, _cls, options_model(_cls), hybrid_base=True, build=_optuna(_cls, _population),
                      python_only=python_only(_cls), description=_what)


class SensitivityOptions(_Options):
    """Options of the sensitivity-allocation sampler (SensitivitySampler's constructor)."""

    loss_key: str = "calibration_loss"
    front_size: int = Field(16, ge=1)
    refine_budgets: LossRatios = Field(default_factory=list)  # budget passes from the measured front
    probe_levels: list[float] | None = None  # probe only these levels (the search space's, checked at build)
    probes: Probes = "measured"  # gradient: the table from one gradient pass
    warn_independent_sampling: bool = True

    @field_validator("probe_levels")
    @classmethod
    def _probe_levels(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not 0 < x < 1 for x in v)):
            raise ValueError(f"{v!r}; allowed: a non-empty list of levels of the search space, each in (0, 1)")
        return v

    def level_problem(self, levels: list[float]) -> tuple[str, str] | None:
        """(field, problem) when probe_levels names levels the search space lacks, else None."""
        missing = [v for v in self.probe_levels or [] if v not in levels]
        if not missing:
            return None
        return "probe_levels", f"{missing!r} are not levels of the search space; allowed: {levels[1:]}"


def _sensitivity(options: SensitivityOptions, ctx: BuildContext) -> SensitivitySampler:
    if ctx.candidates is None:
        raise ConfigError(ctx.source, "sampler.name", "the sensitivity sampler needs a discrete search space")
    return SensitivitySampler(ctx.candidates, **options.model_dump(exclude_unset=True))


SAMPLERS.register("sensitivity", SensitivitySampler, SensitivityOptions, levels=True, deterministic=True,
                  finishes=True, build=_sensitivity,
                  python_only=tuple(n for n in python_only(SensitivitySampler)
                                    if n not in SensitivityOptions.model_fields),
                  description="each module alone at each level, then the Lagrangian allocation front")


class SaliencyPathOptions(_Options):
    """Options of the saliency path (SaliencyPathSampler's constructor)."""

    step: float = Field(0.005, gt=0)  # predicted loss-ratio increase per step
    max_loss_ratio: float = Field(1.1, gt=1)
    targets: LossRatios = Field(default_factory=list)  # loss ratios to land on after the path
    max_steps: int = Field(100, ge=1)
    steps: StepMode = "single"  # blocks / lazy: candidate steps per point, measured as wholes
    groups: list[Grouping] = Field(default_factory=lambda: list(DEFAULT_GROUPS), min_length=1)  # their groups
    backward: int = Field(0, ge=0)  # steps down measured per point (floating search)
    loss_key: str = "calibration_loss"
    warn_independent_sampling: bool = True


def _saliency_path(options: SaliencyPathOptions, ctx: BuildContext) -> SaliencyPathSampler:
    if ctx.candidates is None:
        raise ConfigError(ctx.source, "sampler.name", "the saliency_path sampler needs a discrete search space "
                          "(levels), not a range")
    return SaliencyPathSampler(ctx.candidates, **options.model_dump())


# statistics="dense": its saliency tables put every level at the dense statistics' threshold, so its
# trials are mapped alike by default
SAMPLERS.register("saliency_path", SaliencyPathSampler, SaliencyPathOptions, levels=True, deterministic=True,
                  finishes=True, statistics="dense", build=_saliency_path,
                  python_only=tuple(n for n in python_only(SaliencyPathSampler)
                                    if n not in SaliencyPathOptions.model_fields),
                  description="a path from the dense model, each step a knapsack on gradient saliencies taken "
                              "where it stands")


class BlockwiseOptions(_Options):
    """Options of TEAL's block-wise greedy allocation (BlockwiseSampler's constructor)."""

    targets: list[float] | None = None
    lazy: bool = True
    max_loss_ratio: float | None = 1.01
    loss_key: str = "calibration_loss"
    warn_independent_sampling: bool = True

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not 0 < t <= 1 for t in v)):
            raise ValueError(f"{v!r}; allowed: a non-empty list of block sparsities in (0, 1]")
        return v

    @field_validator("max_loss_ratio")
    @classmethod
    def _cap(cls, v: float | None) -> float | None:
        if v is not None and not v > 1:
            raise ValueError(f"{v!r}; allowed: a ratio to the dense loss > 1, or null (no cap)")
        return v


def _blockwise(options: BlockwiseOptions, ctx: BuildContext) -> BlockwiseSampler:
    if ctx.candidates is None:
        raise ConfigError(ctx.source, "sampler.name", "the blockwise sampler needs a discrete search space")
    return BlockwiseSampler(ctx.candidates, **options.model_dump())


class BlockSearchOptions(_Options):
    """Options of WAS's constrained block search (BlockSearchSampler's constructor; the seed is the study's)."""

    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    warn_independent_sampling: bool = True


def _blocksearch(options: BlockSearchOptions, ctx: BuildContext) -> BlockSearchSampler:
    if ctx.candidates is None:
        raise ConfigError(ctx.source, "sampler.name", "the blocksearch sampler needs a discrete search space "
                          "(levels), not a range")
    return BlockSearchSampler(ctx.candidates, seed=ctx.seed, **options.model_dump())


SAMPLERS.register("blockwise", BlockwiseSampler, BlockwiseOptions, levels=True, deterministic=True,
                  finishes=True, build=_blockwise,
                  python_only=tuple(n for n in python_only(BlockwiseSampler)
                                    if n not in BlockwiseOptions.model_fields),
                  description="TEAL's greedy allocation inside each block, combined per block-level target")
# levels=False: its trials are arbitrary block profiles, so statistics default to one dense pass (as TPE's)
SAMPLERS.register("blocksearch", BlockSearchSampler, BlockSearchOptions, build=_blocksearch,
                  python_only=tuple(n for n in python_only(BlockSearchSampler)
                                    if n not in BlockSearchOptions.model_fields),
                  description="WAS's TPE over per-block sparsities, non-decreasing with depth")


# A chain in a chain adds nothing; the hybrid is a chain already (greedy, then its base), its greedy share
# taken of the whole study's budget.
NOT_IN_CHAIN = ("chain", "hybrid")


class StageChoice(_Options):
    """One stage of a chain: a registered sampler by name, with its options (checked against its own model)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        allowed = [n for n in SAMPLERS.names() if n not in NOT_IN_CHAIN]
        if v not in allowed:
            raise ValueError(f"{v!r}; allowed: {', '.join(allowed)}")
        return v


class ChainOptions(_Options):
    """Options of the chain: its stages in order (ChainSampler's constructor)."""

    stages: list[StageChoice] = Field(min_length=1)

    @field_validator("stages")
    @classmethod
    def _finishing(cls, v: list[StageChoice]) -> list[StageChoice]:
        finishing = SAMPLERS.where(finishes=True)
        for i, stage in enumerate(v[:-1]):
            if stage.name not in finishing:
                raise ValueError(f"stage {i} ({stage.name!r}) never finishes, so no stage after it would run; "
                                 f"allowed before the last stage: {', '.join(finishing)}")
        return v


def _chain(options: ChainOptions, ctx: BuildContext) -> ChainSampler:
    return ChainSampler([_build(stage.name, stage.options, ctx) for stage in options.stages])


def _first_stage(options: dict[str, Any]) -> dict[str, Any] | None:
    """The stage whose statistics a chain uses: the first (its trials come first, and its tables, if it
    reads any, assume its mapping)."""
    stages = options.get("stages")
    return stages[0] if stages else None


# levels=True: its stepped stages walk the levels (statistics default to sequential, as theirs do)
SAMPLERS.register("chain", ChainSampler, ChainOptions, levels=True, build=_chain, statistics_from=_first_stage,
                  description="several samplers one after another on one study (e.g. a quick sensitivity run, "
                              "then a full one)")
