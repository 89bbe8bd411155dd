"""Optuna samplers from a study file: any registered sampler (``thresh_opt.samplers.catalog``), checked
when the file loads and built when the study starts, by one code path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import optuna
from pydantic import BaseModel

from thresh_opt.errors import ConfigError
from thresh_opt.registry import SAMPLERS


class SamplerChoice(Protocol):
    """A sampler named in a study file: its name and its options (a study's `sampler` section)."""

    name: str
    options: dict[str, Any]


def _python_only(name: str, options: Mapping[str, Any], source: str, field: str) -> None:
    entry = SAMPLERS[name]
    for key in options:
        if key in entry.meta.get("python_only", ()):
            raise ConfigError(source, f"{field}.{key}", f"takes a Python object: set it through the Python API "
                              f"({entry.target.__name__}(..., {key}=...)), not in a study file")


def _stages(options: BaseModel) -> list[SamplerChoice]:
    """The samplers a sampler runs one after another (a chain's stages; none for the others)."""
    return list(getattr(options, "stages", None) or [])


def sampler_options(choice: SamplerChoice, source: str, field: str = "sampler.options") -> BaseModel:
    """The sampler's options validated against its registered model (a hybrid's base options and each
    of a chain's stages too); a ConfigError names the field. Runs when the study file loads, before any
    model."""
    _python_only(choice.name, choice.options, source, field)
    options = SAMPLERS[choice.name].validate(choice.options, source, field)
    base = getattr(options, "base", None)
    if base is not None:
        base_options = getattr(options, "base_options", {})
        _python_only(base, base_options, source, f"{field}.base_options")
        SAMPLERS[base].validate(base_options, source, f"{field}.base_options")
    # The driver reads one loss key for every trial's acceptance rule: the stages that read one must agree.
    first: tuple[int, str] | None = None
    for i, stage in enumerate(_stages(options)):
        key = getattr(sampler_options(stage, source, f"{field}.stages.{i}.options"), "loss_key", None)
        if key is None:
            continue
        if first is not None and key != first[1]:
            raise ConfigError(source, f"{field}.stages.{i}.options.loss_key", f"{key!r} differs from stage "
                              f"{first[0]}'s {first[1]!r}; allowed: the same loss_key in every stage")
        first = first or (i, key)
    return options


def check_sampler_options(choice: SamplerChoice, source: str, levels: list[float] | None = None,
                          field: str = "sampler.options") -> None:
    """Fail early, before any model loads, on an option the sampler (or a chain's stage) does not have or
    a bad value, or one that names levels the search space (its `levels`, when discrete) does not have."""
    options = sampler_options(choice, source, field)
    problem = getattr(options, "level_problem", None)
    found = problem(levels) if problem is not None and levels is not None else None
    if found is not None:
        raise ConfigError(source, f"{field}.{found[0]}", found[1])
    for i, stage in enumerate(_stages(options)):
        check_sampler_options(stage, source, levels, f"{field}.stages.{i}.options")


def is_deterministic(choice: SamplerChoice) -> bool:
    """True when the sampler's trials do not depend on the seed, so that a comparison runs it once: its
    entry's `deterministic` metadata, or for a chain, every stage's (options checked already)."""
    entry = SAMPLERS[choice.name]
    stages = _stages(entry.options.model_validate(dict(choice.options)))
    if stages:
        return all(is_deterministic(stage) for stage in stages)
    return bool(entry.meta.get("deterministic"))


def make_sampler(choice: SamplerChoice, candidates: dict[str, list[float]] | None, seed: int, trials: int,
                 source: str = "study") -> optuna.samplers.BaseSampler:
    """The configured sampler; `candidates` (parameter -> discrete levels) is needed by the greedy sampler."""
    from thresh_opt.samplers.catalog import BuildContext

    entry = SAMPLERS[choice.name]
    options = sampler_options(choice, source)
    try:
        return entry.meta["build"](options, BuildContext(candidates, seed, trials, source))
    except (TypeError, ValueError) as exc:
        raise ConfigError(source, "sampler.options", f"{entry.target.__name__}: {exc}") from None
