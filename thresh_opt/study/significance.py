"""Whether a comparison's best contender really is better: a Mann-Whitney U test per budget, as kurobako
(Optuna's benchmark tool) ranks solvers, of the best mean hypervolume against each other contender."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALPHA = 0.05  # the significance level of the one-line verdicts


def mann_whitney(better: Sequence[float], other: Sequence[float]) -> tuple[float, float]:
    """(U of `better` over `other`, one-sided p-value that `better`'s values tend to be larger).

    scipy's test: exact for small samples without ties, the normal approximation otherwise.

    Example:
        >>> mann_whitney([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])  # every value larger: U = 5 x 5, p = 1 / C(10, 5)
        (25.0, 0.003968253968253968)
    """
    from scipy.stats import mannwhitneyu

    result = mannwhitneyu(list(better), list(other), alternative="greater", method="auto")
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class Verdict:
    """The best contender at one budget against another one."""

    budget: str  # the budget's column title
    best: str
    other: str
    u: float
    p: float

    @property
    def significant(self) -> bool:
        """p < ALPHA."""
        return self.p < ALPHA

    def line(self) -> str:
        """One line for the report."""
        if self.significant:
            return f"{self.budget}: {self.best} beats {self.other} (U {self.u:g}, p {self.p:.3g})"
        return f"{self.budget}: {self.best} vs {self.other}: no significant difference (U {self.u:g}, p {self.p:.3g})"


def verdicts(budget: str, values: Mapping[str, Sequence[float]]) -> list[Verdict]:
    """The contender with the best mean against each other one, at one budget (values: label -> one
    hypervolume per seed). A contender that runs once (deterministic) gives one value for every seed."""
    if len(values) < 2:
        return []
    best = max(values, key=lambda label: sum(values[label]) / len(values[label]))
    seeds = max(len(v) for v in values.values())
    full = {label: list(v) * seeds if len(v) == 1 else list(v) for label, v in values.items()}
    out = []
    for label, other in full.items():
        if label != best:
            u, p = mann_whitney(full[best], other)
            out.append(Verdict(budget, best, label, u, p))
    return out
