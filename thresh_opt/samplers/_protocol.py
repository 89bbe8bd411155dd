"""What the study driver uses of a sampler that walks its search step by step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from optuna.study import Study

    from thresh_opt.samplers._greedy_state import Acceptance


@runtime_checkable
class SteppedSampler(Protocol):
    """A sampler whose trials form steps of a search (the greedy and hybrid samplers).

    The driver stops asking when :meth:`is_finished`, holds back while :meth:`needs_wait` (a barrier:
    every next trial depends on running ones), records :meth:`final_params` at the end, and skips the
    expensive objectives of a trial whose `loss_key` value fails its :meth:`acceptance` rule.
    """

    @property
    def loss_key(self) -> str:
        """The objective (trial user attribute) the decisions read."""

    def is_finished(self, study: Study) -> bool:
        """True when the search is done."""

    def needs_wait(self, study: Study) -> bool:
        """True when every trial it could issue now depends on running trials."""

    def final_params(self, study: Study) -> list[dict[str, float]]:
        """The search's final configurations so far."""

    def acceptance(self, study: Study, number: int) -> Acceptance | None:
        """The rule that will judge trial `number`, if one is known when it is issued."""


def wants_saliency(sampler: object, study: Study, number: int) -> bool:
    """True when `sampler` reads trial `number`'s saliency table (the user attribute ``keys.SALIENCY``): the
    optional hook ``wants_saliency(study, number)`` of a sampler (the saliency path; a chain asks the
    stage that issued the trial). The driver then has the worker score the trial's configuration too."""
    hook = getattr(sampler, "wants_saliency", None)
    return bool(hook(study, number)) if callable(hook) else False
