"""ChainSampler: several samplers one after another on one study, each taking over when the one before
it is finished."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler

from thresh_opt import compat
from thresh_opt.samplers._protocol import SteppedSampler, wants_saliency

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

    from thresh_opt.samplers._greedy_state import Acceptance

STAGE = "chain:stage"  # trial system attribute: the index of the stage that issued it


class ChainSampler(BaseSampler):
    """Runs `stages` one after another on the same study: the current stage is the first one that is not
    finished (the last one once all before it are), so every stage but the last must be a
    :class:`~thresh_opt.samplers.SteppedSampler` that finishes.

    A later stage sees every trial of the earlier ones: the greedy, sensitivity and block-wise samplers
    read results by configuration from all stored trials, so a configuration an earlier stage evaluated
    (the dense trial, shared probes) is not issued again. A quick sensitivity run (few probe levels) gives
    a front early; a full one after it adds the other levels and refinement at the cost of the missing
    trials only.

    Example:

        .. testcode::

            import optuna

            from thresh_opt.samplers import ChainSampler, SensitivitySampler

            names = ["blocks.0.att.key", "blocks.0.ffn.key", "blocks.1.att.key"]
            space = dict.fromkeys(names, [0.0, 0.3, 0.6, 0.9])
            quick = SensitivitySampler(space, front_size=2, probe_levels=[0.9])
            full = SensitivitySampler(space, front_size=4, refine_budgets=[1.01])
            sampler = ChainSampler([quick, full])


            def objective(trial):
                x = [trial.suggest_categorical(n, full.search_space[n]) for n in names]
                trial.set_user_attr("sparsity", sum(x) / len(x))  # what a study measures
                trial.set_user_attr("calibration_loss", 3.0 + sum((i + 1) * v**2 for i, v in enumerate(x)) / 50)
                return trial.user_attrs["calibration_loss"]


            study = optuna.create_study(sampler=sampler)
            while not sampler.is_finished(study):  # one trial at a time until the last stage is done
                study.optimize(objective, n_trials=1)
            print([t.system_attrs["chain:stage"] for t in study.trials], len(sampler.final_params(study)))

    The sampler keeps no progress itself: :meth:`before_trial` stamps each trial with its stage (system
    attribute ``chain:stage``; an enqueued trial gets the current stage), and every later call about a
    trial goes to the stage that stamped it. The stepped methods combine the stages': :attr:`loss_key` is
    the first stepped stage's (the stepped stages must agree on it: the study driver reads one for every
    trial), :meth:`is_finished` is the last stage's, :meth:`needs_wait` the current stage's,
    :meth:`final_params` those of every stepped stage in stage order, and :meth:`acceptance` the
    stamping stage's.

    Args:
        stages: the samplers, in the order they run (at least one; all but the last SteppedSamplers).
    """

    def __init__(self, stages: Sequence[BaseSampler]) -> None:
        if not stages:
            raise ValueError("ChainSampler needs at least one stage")
        self.stages = tuple(stages)
        # The stepped view of each stage (None for one that never finishes, e.g. TPE: only the last may be so).
        self._stepped = tuple(s if isinstance(s, SteppedSampler) else None for s in self.stages)
        for i, stepped in enumerate(self._stepped[:-1]):
            if stepped is None:
                raise ValueError(f"stage {i} ({type(self.stages[i]).__name__}) never finishes, so no stage "
                                 "after it would run; every stage but the last must be a SteppedSampler")
        keys = {s.loss_key for s in self._stepped if s is not None}
        if len(keys) > 1:
            raise ValueError(f"the stepped stages read different loss keys {sorted(keys)}; they must read one")

    def _index(self, study: Study, trial: FrozenTrial) -> int:
        """The stage that stamped `trial`, or the current stage for a trial it did not stamp."""
        stamp = trial.system_attrs.get(STAGE)
        if isinstance(stamp, int) and 0 <= stamp < len(self.stages):
            return stamp
        return self.stage(study)

    # ---- SteppedSampler ------------------------------------------------------------------------

    @property
    def loss_key(self) -> str:
        """The first stepped stage's criterion (the default calibration loss when no stage is stepped)."""
        return next((s.loss_key for s in self._stepped if s is not None), "calibration_loss")

    @property
    def needs_gradient_scores(self) -> bool:
        """True when a stage reads the study attribute ``keys.GRADIENT_SCORES`` (the driver then sets it)."""
        return any(getattr(s, "needs_gradient_scores", False) for s in self.stages)

    def is_finished(self, study: Study) -> bool:
        """True when the last stage is stepped and finished."""
        last = self._stepped[-1]
        return last is not None and last.is_finished(study)

    def needs_wait(self, study: Study) -> bool:
        """True when the current stage is stepped and every trial it could issue depends on running ones."""
        current = self._stepped[self.stage(study)]
        return current is not None and current.needs_wait(study)

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """Every stepped stage's final configurations, in stage order, each configuration once."""
        out: list[dict[str, float]] = []
        for stepped in self._stepped:
            if stepped is not None:
                out += [p for p in stepped.final_params(study) if p not in out]
        return out

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """The rule of the stage that stamped trial `number`, when that stage is stepped (else None)."""
        stamp = study.get_trials(deepcopy=False)[number].system_attrs.get(STAGE)
        if not isinstance(stamp, int) or not 0 <= stamp < len(self.stages):
            return None
        stepped = self._stepped[stamp]
        return stepped.acceptance(study, number) if stepped is not None else None

    def wants_saliency(self, study: Study, number: int) -> bool:
        """Whether the stage that stamped trial `number` reads its saliency table."""
        stamp = study.get_trials(deepcopy=False)[number].system_attrs.get(STAGE)
        if not isinstance(stamp, int) or not 0 <= stamp < len(self.stages):
            return False
        return wants_saliency(self.stages[stamp], study, number)

    # ---- inspection ----------------------------------------------------------------------------

    def stage(self, study: Study) -> int:
        """The current stage's index: the first not finished (the last once all before it are)."""
        for i, stepped in enumerate(self._stepped[:-1]):
            if stepped is not None and not stepped.is_finished(study):
                return i
        return len(self.stages) - 1

    # ---- sampler API ---------------------------------------------------------------------------

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        # A trial already stamped (e.g. retried) stays with its stage; any other, enqueued or not, joins
        # the current one.
        stamp = trial.system_attrs.get(STAGE)
        if not isinstance(stamp, int) or not 0 <= stamp < len(self.stages):
            stamp = self.stage(study)
            compat.set_trial_system_attr(study, trial, STAGE, stamp)
            trial.system_attrs[STAGE] = stamp
        self.stages[stamp].before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.stages[self._index(study, trial)].infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.stages[self._index(study, trial)].sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.stages[self._index(study, trial)].sample_independent(study, trial, param_name,
                                                                         param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.stages[self._index(study, trial)].after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        for stage in self.stages:
            stage.reseed_rng()
