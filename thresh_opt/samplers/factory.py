"""Optuna samplers from a study file: the greedy sampler and Optuna's own, configured alike."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import optuna

from thresh_opt.errors import ConfigError

if TYPE_CHECKING:
    from thresh_opt.study.config import SamplerConfig


# Module order of the greedy search: front to back as published, or back to front.
GREEDY_ORDERS = ("forward", "reverse")
# The hybrid's own options; the rest go to its greedy sampler.
HYBRID_OPTIONS = {"base": "nsga2", "base_options": {}, "greedy_share": 0.5, "loss_inc": [1.001, 1.003, 1.01]}
HYBRID_BASES = ("nsga2", "nsga3", "tpe", "random", "gp")


def population_for_budget(trials: int) -> int:
    """NSGA population for a trial budget: about six generations, between 4 and 50 (Optuna's default)."""
    return max(4, min(50, trials // 6))


# Constructor arguments that take Python objects (a sampler, a function): the Python API only.
PYTHON_ONLY = ("independent_sampler", "kind_of")


def _check(cls: type, options: dict[str, Any], source: str) -> None:
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "search_space")]
    for key in options:
        if key in PYTHON_ONLY and key in allowed:
            raise ConfigError(source, f"sampler.options.{key}", f"takes a Python object: set it through the Python "
                              f"API ({cls.__name__}(..., {key}=...)), not in a study file")
        if key not in allowed:
            raise ConfigError(source, f"sampler.options.{key}", f"not an option of {cls.__name__}; allowed: {', '.join(allowed)}")


def sampler_class(name: str) -> type:
    """The sampler class for a study-file name."""
    if name == "greedy":
        from thresh_opt.samplers import GreedySampler

        return GreedySampler
    return {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "random": optuna.samplers.RandomSampler,
        "gp": optuna.samplers.GPSampler,
    }[name]


def _hybrid_parts(options: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(hybrid settings, greedy options), checked."""
    own = {k: options.get(k, v) for k, v in HYBRID_OPTIONS.items()}
    greedy = {k: v for k, v in options.items() if k not in HYBRID_OPTIONS}
    greedy.setdefault("loss_inc", own.pop("loss_inc"))
    own.pop("loss_inc", None)
    if own["base"] not in HYBRID_BASES:
        raise ConfigError(source, "sampler.options.base", f"{own['base']!r}; allowed: {', '.join(HYBRID_BASES)}")
    share = own["greedy_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ConfigError(source, "sampler.options.greedy_share", f"{share!r}; allowed: a number from 0 to 1")
    if not isinstance(own["base_options"], dict):
        raise ConfigError(source, "sampler.options.base_options", "a mapping of options of the base sampler")
    return own, greedy


def _check_greedy(options: dict[str, Any], source: str) -> None:
    """The greedy options that can be checked without a model: names, order and tolerances."""
    from thresh_opt.samplers import tolerances

    options = dict(options)
    order = options.pop("order", "forward")
    if order not in GREEDY_ORDERS:
        raise ConfigError(source, "sampler.options.order", f"{order!r}; allowed: {', '.join(GREEDY_ORDERS)}")
    _check(sampler_class("greedy"), options, source)
    if "loss_inc" in options:
        try:
            tolerances(options["loss_inc"])
        except ValueError as exc:
            raise ConfigError(source, "sampler.options.loss_inc", str(exc)) from None


def check_sampler_options(cfg: SamplerConfig, source: str) -> None:
    """Fail early, before any model loads, on an option the sampler does not have."""
    options = dict(cfg.options)
    if cfg.name == "hybrid":
        own, greedy = _hybrid_parts(options, source)
        _check_greedy(greedy, source)
        _check(sampler_class(own["base"]), own["base_options"], source + " (base_options)")
        return
    if cfg.name == "greedy":
        _check_greedy(options, source)
        return
    _check(sampler_class(cfg.name), options, source)


def _build(cls: type, options: dict[str, Any], source: str) -> optuna.samplers.BaseSampler:
    _check(cls, {k: v for k, v in options.items() if k != "search_space"}, source)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, "sampler.options", f"{cls.__name__}: {exc}") from None


def make_sampler(
    cfg: SamplerConfig, candidates: dict[str, list[float]] | None, seed: int, trials: int, source: str = "study"
) -> optuna.samplers.BaseSampler:
    """The configured sampler; `candidates` (parameter -> discrete levels) is needed by the greedy sampler."""
    options = dict(cfg.options)
    if cfg.name == "hybrid":
        from thresh_opt.samplers import HybridSampler
        from thresh_opt.study.config import SamplerConfig as _Cfg

        own, greedy_options = _hybrid_parts(options, source)
        greedy = make_sampler(_Cfg(name="greedy", options=greedy_options), candidates, seed, trials, source)
        base = make_sampler(_Cfg(name=own["base"], options=own["base_options"]), candidates, seed, trials, source)
        return HybridSampler(greedy, base, greedy_trials=int(round(own["greedy_share"] * trials)))
    if cfg.name in ("greedy",):
        if candidates is None:
            raise ConfigError(source, "sampler.name", f"the {cfg.name} sampler needs a discrete search space")
        order = options.pop("order", "forward")
        if order not in GREEDY_ORDERS:
            raise ConfigError(source, "sampler.options.order", f"{order!r}; allowed: {', '.join(GREEDY_ORDERS)}")
        names = list(candidates)[::-1] if order == "reverse" else list(candidates)
        return _build(sampler_class("greedy"), {"search_space": {n: candidates[n] for n in names}, **options}, source)
    options.setdefault("seed", seed)
    if cfg.name in ("nsga2", "nsga3"):
        options.setdefault("population_size", population_for_budget(trials))
    return _build(sampler_class(cfg.name), options, source)
