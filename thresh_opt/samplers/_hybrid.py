"""HybridSampler: greedy passes at several tolerances trace a front, then NSGA-II or TPE refine it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler

from thresh_opt import compat
from thresh_opt.samplers._greedy import GreedySampler

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

    from thresh_opt.samplers._greedy_state import Acceptance

PHASE = "hybrid:phase"


class HybridSampler(BaseSampler):
    """Runs a :class:`GreedySampler` (one pass per tolerance) first, then hands over to `base`.

    The greedy trials are ordinary COMPLETE trials of the study, so the base sampler learns from them:
    TPE uses every completed trial; a genetic sampler (NSGA-II, NSGA-III) gets them stamped with its
    generation, so the greedy configurations are its first parents. The hand-over happens when every
    greedy pass is done or when the greedy phase has issued `greedy_trials` trials, whichever is first.
    Enqueued trials (baselines) belong to the base sampler's phase.

    Args:
        greedy: the greedy sampler (its tolerance list gives the passes).
        base: the sampler that refines.
        greedy_trials: most trials the greedy phase may issue.
    """

    def __init__(self, greedy: GreedySampler, base: BaseSampler, greedy_trials: int) -> None:
        if greedy_trials < 0:
            raise ValueError(f"greedy_trials must be >= 0, got {greedy_trials}")
        self.greedy, self.base, self.greedy_trials = greedy, base, greedy_trials

    def _greedy_phase(self, study: Study) -> bool:
        trials = compat.all_trials(study)
        issued = sum(1 for t in trials if t.system_attrs.get(PHASE) == "greedy")
        return issued < self.greedy_trials and not self.greedy.is_finished(study)

    def _of(self, trial: FrozenTrial) -> BaseSampler:
        return self.greedy if trial.system_attrs.get(PHASE) == "greedy" else self.base

    def needs_wait(self, study: Study) -> bool:
        """In the greedy phase: True when the next candidates depend on running trials."""
        return self._greedy_phase(study) and self.greedy.needs_wait(study)

    @property
    def loss_key(self) -> str:
        """The greedy part's criterion."""
        return self.greedy.loss_key

    def is_finished(self, study: Study) -> bool:
        """Never: the base sampler refines until the budget is spent."""
        return False

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """The finished greedy passes' configurations."""
        return self.greedy.final_params(study)

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """The greedy rule that will judge a greedy-phase trial (None for the base sampler's trials)."""
        if study.get_trials(deepcopy=False)[number].system_attrs.get(PHASE) != "greedy":
            return None
        return self.greedy.acceptance(study, number)

    def phase(self, study: Study) -> str:
        """'greedy' or 'base': who issues the next (not enqueued) trial."""
        return "greedy" if self._greedy_phase(study) else "base"

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        phase = "base" if "fixed_params" in trial.system_attrs else self.phase(study)
        compat.set_trial_system_attr(study, trial, PHASE, phase)
        trial.system_attrs[PHASE] = phase
        if phase == "greedy":
            self.greedy.before_trial(study, trial)
            if hasattr(self.base, "get_trial_generation"):  # a genetic base: greedy trials join its population
                self.base.get_trial_generation(study, trial)
        else:
            self.base.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        # the greedy phase's parameters outside the greedy search's space go to the base sampler
        owner = self._of(trial)
        if owner is self.greedy and not self.greedy.owns(param_name):
            owner = self.base
        return owner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._of(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.greedy.reseed_rng()
        self.base.reseed_rng()
