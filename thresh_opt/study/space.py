"""The search space of a study: one target-sparsity parameter per group of modules, mapped to thresholds."""

from __future__ import annotations

from dataclasses import dataclass

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from thresh_opt.calibration import ActivationStats
from thresh_opt.models.specs import Site
from thresh_opt.study.config import SearchSpaceConfig


def group_of(site: Site, grouping: str) -> str:
    """The parameter name that controls a site under a grouping."""
    return {"module": site.name, "kind": site.kind, "block": f"block.{site.block}", "all": "all"}[grouping]


@dataclass(frozen=True)
class SearchSpace:
    """Parameters (front-to-back order) -> the modules each one sets, and their distributions."""

    config: SearchSpaceConfig
    groups: dict[str, list[str]]

    @classmethod
    def build(cls, config: SearchSpaceConfig, sites: list[Site]) -> SearchSpace:
        """Group a model's sites as the configuration says."""
        groups: dict[str, list[str]] = {}
        for site in sites:
            groups.setdefault(group_of(site, config.grouping), []).append(site.name)
        return cls(config, groups)

    @property
    def params(self) -> list[str]:
        """Parameter names, front to back."""
        return list(self.groups)

    def distributions(self) -> dict[str, BaseDistribution]:
        """Optuna distributions for study.ask(fixed_distributions=...)."""
        levels = self.config.level_list()
        if levels is None:
            r = self.config.bounds()
            return {p: FloatDistribution(r.low, r.high) for p in self.groups}
        return {p: CategoricalDistribution(levels) for p in self.groups}

    def candidates(self) -> dict[str, list[float]]:
        """The discrete levels per parameter (greedy sampler's search space)."""
        levels = self.config.level_list()
        if levels is None:
            raise ValueError("a range search space has no candidate list")
        return {p: list(levels) for p in self.groups}

    def uniform(self, level: float) -> dict[str, float]:
        """Every parameter at one level (snapped to the nearest discrete level, or clipped to the range)."""
        levels = self.config.level_list()
        if levels is None:
            value = min(max(level, self.config.bounds().low), self.config.bounds().high)
        else:
            value = min(levels, key=lambda x: abs(x - level))
        return dict.fromkeys(self.groups, value)

    def targets(self, params: dict[str, float]) -> dict[str, float]:
        """Target sparsity per module (parameters not given are 0: dense)."""
        return {m: float(params.get(p, 0.0)) for p, modules in self.groups.items() for m in modules}

    def thresholds(self, params: dict[str, float], stats: ActivationStats) -> dict[str, float]:
        """Thresholds per module for the parameters, through the calibration statistics."""
        out = {}
        for module, target in self.targets(params).items():
            out[module] = 0.0 if target <= 0 else stats.threshold(module, target)
        return out

    def params_for(self, thresholds: dict[str, float], stats: ActivationStats) -> dict[str, float]:
        """The parameters closest to a thresholds configuration: each module's threshold becomes a target
        sparsity through the statistics; a group takes its modules' mean, snapped to the nearest level
        (or clipped to the range). Exact only for one module per group and thresholds on the levels."""
        levels = self.config.level_list()
        out = {}
        for param, modules in self.groups.items():
            mean = sum(stats.sparsity_for(m, float(thresholds.get(m, 0.0))) for m in modules) / len(modules)
            if levels is None:
                out[param] = min(max(mean, self.config.bounds().low), self.config.bounds().high)
            else:
                out[param] = min(levels, key=lambda x: abs(x - mean))
        return out
