"""BlockSearchSampler: WAS's constrained search over per-block sparsities (design.md 3), with an inner TPE
rebuilt from the stored trials on every ask."""

from __future__ import annotations

import math
import random
import warnings
from typing import TYPE_CHECKING

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from thresh_opt import compat
from thresh_opt.samplers._blockwise import group_blocks
from thresh_opt.samplers._greedy_state import block_of as default_block_of
from thresh_opt.samplers._stamped import StampedSampler, finite, positive_levels

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial

# System attributes stamped on every trial the sampler issues.
LATENT = "blocksearch:latent"  # the inner TPE's point: {"mean", "spread", "rise.1", ...}
LEVELS = "blocksearch:levels"  # the block levels before snapping, in block order
PARAMS = "blocksearch:params"  # the whole assignment of the trial


def block_levels(latent: Mapping[str, float], blocks: int, top: float) -> list[float]:
    """Per-block levels, non-decreasing with depth, in ``[0, top]``, with mean ``latent["mean"]``.

    The rises ``rise.1 .. rise.{blocks-1}`` (each in [0, 1]) give a non-decreasing profile (their
    cumulative sums); it is centred on the mean and scaled by ``spread`` (in [0, 1]) times the largest
    scale that keeps every level in ``[0, top]``: spread 0 is uniform, 1 touches a bound.
    """
    mean = min(max(float(latent["mean"]), 0.0), top)
    if blocks == 1:
        return [mean]
    cum = [0.0]
    for b in range(1, blocks):
        cum.append(cum[-1] + float(latent[f"rise.{b}"]))
    centre = sum(cum) / blocks
    dev = [c - centre for c in cum]
    if dev[-1] - dev[0] <= 1e-12:
        return [mean] * blocks
    # dev[0] < 0 < dev[-1] here: the first level may fall to 0, the last rise to top
    scale = min(mean / -dev[0], (top - mean) / dev[-1]) * min(max(float(latent["spread"]), 0.0), 1.0)
    return [min(max(mean + scale * d, 0.0), top) for d in dev]


def nearest(levels: Sequence[float], value: float) -> float:
    """The level nearest to `value` (ties: the lower one), so snapping keeps the order of values."""
    return min(levels, key=lambda lv: (abs(lv - value), lv))


class BlockSearchSampler(StampedSampler):
    """WAS's constrained block search (design.md 3): TPE over per-block sparsities that do not decrease
    with depth; every parameter of a block takes the nearest of its own levels to the block's level.

    Blocks come from parameter names as in :class:`~thresh_opt.samplers.BlockwiseSampler` (the
    parameters without a block index form one block). WAS holds the mean at one target per search; a
    study here traces a front, so the mean is searched too: the inner TPE's variables are ``mean`` (in
    ``[0, top]``, ``top`` the largest level), ``spread`` and one ``rise.b`` per block after the first,
    mapped to block levels by :func:`block_levels` (monotone by construction, mean exact before
    snapping). The inner TPE is multi-objective when the study is and optimizes the study's own
    objective values.

    Example:

        .. testcode::

            import optuna
            from optuna.distributions import CategoricalDistribution

            from thresh_opt.samplers import BlockSearchSampler

            levels = [0.0, 0.3, 0.6, 0.9]
            names = ["blocks.0.att", "blocks.0.ffn", "blocks.1.att", "blocks.1.ffn", "blocks.2.att"]
            sampler = BlockSearchSampler(dict.fromkeys(names, levels), seed=0)
            study = optuna.create_study(directions=["minimize", "maximize"], sampler=sampler)
            distributions = {n: CategoricalDistribution(levels) for n in names}
            for _ in range(20):
                trial = study.ask(distributions)
                x = [trial.params[n] for n in names]
                study.tell(trial, [sum((i + 1) * v**2 for i, v in enumerate(x)), sum(x) / len(x)])
            print(len(study.best_trials) > 0)

    No state is kept in the sampler: :meth:`before_trial` builds an in-memory study from the stored
    trials' latent points (system attribute ``blocksearch:latent``) and values, asks its TPE (seeded
    from ``seed`` and the number of stored trials, so a study with a seed is reproducible) for the next
    point, and stamps it with ``blocksearch:levels`` (the block levels) and ``blocksearch:params``.
    RUNNING trials join the inner study as running (TPE's constant liar), so parallel workers spread
    out. Enqueued trials at one uniform level join it as ``spread`` 0 at that mean; other trials it
    did not issue are ignored. A new sampler on the same storage continues where the old one stopped.

    Args:
        search_space:
            Parameter name -> levels (target sparsities, non-negative; 0.0 is added). The dict order
            orders the blocks (front to back).
        seed:
            Seed of the inner TPE (None: random).
        n_startup_trials:
            Trials of random latent points before TPE models them (the inner TPE's option).
        multivariate:
            Multivariate TPE (the mean, spread and rises interact).
        block_of:
            Parameter name -> block index (None: no index). Default:
            :func:`~thresh_opt.samplers._greedy_state.block_of`.
        independent_sampler:
            Samples the parameters it does not own (default: :class:`~optuna.samplers.RandomSampler`).
        warn_independent_sampling:
            Warn once per parameter name the first time one is sampled by ``independent_sampler``.
    """

    def __init__(
        self,
        search_space: Mapping[str, Sequence[float]],
        seed: int | None = None,
        n_startup_trials: int = 10,
        multivariate: bool = True,
        block_of: Callable[[str], int | None] | None = None,
        independent_sampler: BaseSampler | None = None,
        warn_independent_sampling: bool = True,
    ) -> None:
        positive = positive_levels(search_space, "BlockSearchSampler", "levels")
        if isinstance(n_startup_trials, bool) or not isinstance(n_startup_trials, int) or n_startup_trials < 0:
            raise ValueError(f"n_startup_trials must be an integer >= 0, got {n_startup_trials!r}")
        self._names = tuple(positive)
        self._levels = {n: (0.0, *positive[n]) for n in self._names}
        self._top = max((lv for c in positive.values() for lv in c), default=0.0)
        self._blocks = [[self._names[i] for i in members]
                        for members in group_blocks(self._names, block_of or default_block_of)]
        self._seed = seed
        self._rng = random.Random(seed)  # only for seed=None: draws each ask's inner seed
        self._startup = n_startup_trials
        self._multivariate = bool(multivariate)
        self._latent: dict[str, BaseDistribution] = {
            "mean": FloatDistribution(0.0, max(self._top, 1e-9)), "spread": FloatDistribution(0.0, 1.0),
            **{f"rise.{b}": FloatDistribution(0.0, 1.0) for b in range(1, len(self._blocks))}}
        super().__init__(positive, PARAMS, independent_sampler, warn_independent_sampling)

    @property
    def search_space(self) -> dict[str, list[float]]:
        """Parameter name -> all its levels, 0.0 included, ascending (the choices to ask with)."""
        return {n: list(c) for n, c in self._levels.items()}

    @property
    def blocks(self) -> list[list[str]]:
        """The parameter names of each block, in block order."""
        return [list(b) for b in self._blocks]

    def params_for(self, latent: Mapping[str, float]) -> tuple[list[float], dict[str, float]]:
        """The block levels of a latent point and the parameters (each snapped to its own levels)."""
        levels = block_levels(latent, len(self._blocks), self._top)
        params = {n: nearest(self._levels[n], lv) for block, lv in zip(self._blocks, levels) for n in block}
        return levels, {n: params[n] for n in self._names}

    def _latent_of(self, trial: FrozenTrial) -> dict[str, float] | None:
        """A trial's latent point: its stamp, or for a uniform configuration spread 0 at that mean."""
        stamped = trial.system_attrs.get(LATENT)
        if isinstance(stamped, dict) and set(stamped) == set(self._latent):
            return {k: float(v) for k, v in stamped.items()}
        values = {finite(trial.params.get(n)) for n in self._names}
        if len(values) != 1 or None in values:
            return None
        (level,) = values
        assert level is not None
        if not 0.0 <= level <= self._top:
            return None
        return {"mean": level, "spread": 0.0, **{k: 0.5 for k in self._latent if k.startswith("rise.")}}

    def _inner(self, study: Study, trials: Sequence[FrozenTrial]) -> optuna.Study:
        seed = (self._rng.randrange(2**32) if self._seed is None
                else (self._seed * 1_000_003 + len(trials)) % 2**32)
        with warnings.catch_warnings():  # multivariate TPE is experimental in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self._startup,
                                             multivariate=self._multivariate, constant_liar=True)
        inner = optuna.create_study(directions=study.directions, sampler=tpe)
        for t in trials:
            latent = self._latent_of(t)
            if latent is None:
                continue
            if t.state == TrialState.COMPLETE and t.values is not None and all(math.isfinite(v) for v in t.values):
                inner.add_trial(create_trial(params=latent, distributions=self._latent, values=t.values))
            elif t.state == TrialState.RUNNING and LATENT in t.system_attrs:
                inner.add_trial(create_trial(params=latent, distributions=self._latent, state=TrialState.RUNNING))
        return inner

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # Enqueued trials (fixed_params) and trials already stamped (e.g. retried) are left alone.
        if "fixed_params" in trial.system_attrs or LATENT in trial.system_attrs:
            return
        trials = [t for t in compat.all_trials(study) if t.number != trial.number]
        verbosity = optuna.logging.get_verbosity()  # the inner study's trial logs are noise
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            inner = self._inner(study, trials)
            point = inner.ask(self._latent).params
        finally:
            optuna.logging.set_verbosity(verbosity)
        levels, params = self.params_for(point)
        self._write_stamp(study, trial, {LATENT: point, LEVELS: levels, PARAMS: params})

    def reseed_rng(self) -> None:
        self._rng = random.Random()
        super().reseed_rng()
