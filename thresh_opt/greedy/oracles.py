"""Where the greedy search gets its statistics and losses: the published way, or the fast way.

Both answer the same two questions under the model's current thresholds: the statistics of module m
(the per-token |x| quantiles at the candidate levels) and the calibration loss. The paper oracle runs
one full pass for each. The fast oracle gets the same numbers with less work:

- blocks before the one under search are skipped: their output over the calibration set is cached
  (the thresholds upstream are fixed once the search enters a block);
- every loss pass also records the next module's input and the next block's input, so when the
  candidate is accepted, the next module needs no statistics pass (its quantiles are computed from the
  recorded input, for the accepted pass only) and the next block no catch-up pass.

Cost is counted in forward-equivalents (a full pass over the calibration set = 1) and seconds.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from thresh_opt.calibration.stats import ActivationStats, QuantileSums
from thresh_opt.models.prefix import PassResult, PrefixRunner
from thresh_opt.models.thresholded import Observer, ThresholdedModel

MODES = ("fast", "paper")
RAW_BUDGET = 256 * 2**20  # bytes of one module's inputs kept raw (quantiles only if the pass is accepted)


class _Recorder:
    """Observer of one module during a loss pass: keeps its raw inputs, so that the quantiles (the costly
    part of statistics) are computed only for the pass that gets accepted; inputs too large to keep get
    their quantiles at once."""

    def __init__(self, names: list[str], levels: list[float], device: torch.device, m: int, tokens: int) -> None:
        self.names, self.levels, self.device, self.m, self.tokens = names, levels, device, m, tokens
        self.raw: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.sums: QuantileSums | None = None
        self._stats: ActivationStats | None = None

    def __call__(self, i: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        if i != self.m:
            return
        if self.sums is None and x.shape[-1] * self.tokens * 4 <= RAW_BUDGET:
            self.raw.append((x.detach().clone(), mask))
            return
        if self.sums is None:
            self.sums = QuantileSums(self.names, self.levels, self.device, {self.m})
        self.sums(i, x, mask)

    def stats(self) -> ActivationStats:
        """The module's statistics."""
        if self._stats is None:
            sums = self.sums or QuantileSums(self.names, self.levels, self.device, {self.m})
            for x, mask in self.raw:
                sums(self.m, x, mask)
            self._stats, self.raw = sums.result(), []
        return self._stats


@dataclass
class Cost:
    """Work done so far, by purpose."""

    stats_passes: int = 0
    stats_fe: float = 0.0
    loss_passes: int = 0
    loss_fe: float = 0.0
    other_fe: float = 0.0  # catch-up passes that only fill the block cache
    seconds: float = 0.0

    @property
    def forward_equivalents(self) -> float:
        """All work, in full passes over the calibration set."""
        return self.stats_fe + self.loss_fe + self.other_fe


class PaperOracle:
    """The published procedure: a full pass per statistics request and per loss."""

    def __init__(self, tm: ThresholdedModel, chunks: torch.Tensor, levels: list[float], batch_size: int = 8) -> None:
        self.tm, self.levels = tm, list(levels)
        self.runner = PrefixRunner(tm, chunks, batch_size)
        self.cost = Cost()

    def _pass(self, observer: Observer | None = None, start: int = 0, stop: int | None = None,
              capture: int | None = None) -> PassResult:
        began = time.perf_counter()
        with self.tm.observe(observer) if observer is not None else contextlib.nullcontext():
            result = self.runner.run(start, stop, capture)
        self.cost.seconds += time.perf_counter() - began
        return result

    def _stats_pass(self, m: int, start: int = 0, stop: int | None = None) -> ActivationStats:
        sums = QuantileSums(self.tm.names, self.levels, self.runner.device, {m})
        result = self._pass(sums, start, stop)
        self.cost.stats_passes += 1
        self.cost.stats_fe += result.cost
        return sums.result()

    def stats(self, m: int) -> ActivationStats:
        """Statistics of module m under the current thresholds."""
        return self._stats_pass(m)

    def loss(self, m: int | None) -> float:
        """Calibration loss under the current thresholds (m: the module under search; None: dense)."""
        result = self._pass()
        self.cost.loss_passes += 1
        self.cost.loss_fe += result.cost
        return result.loss

    def accept(self, m: int | None, evaluation: int | None) -> None:
        """The evaluation (index into this module's loss calls; None: none) is the new reference."""


class FastOracle(PaperOracle):
    """Same answers as PaperOracle, computed from cached block inputs and piggy-backed statistics."""

    def __init__(self, tm: ThresholdedModel, chunks: torch.Tensor, levels: list[float], batch_size: int = 8) -> None:
        super().__init__(tm, chunks, levels, batch_size)
        self.sites = tm.sites
        self._tokens = chunks.numel()
        self._ref: tuple[dict[int, _Recorder], int | None, list[torch.Tensor]] = ({}, None, [])
        self._module_evals: list[tuple[dict[int, _Recorder], int | None, list[torch.Tensor]]] = []

    def _block(self, m: int) -> int:
        return self.sites[m].block

    def _enter(self, block: int) -> None:
        """Make the runner's cache hold `block`'s input under the current (fixed upstream) thresholds."""
        if self.runner.cached_block == block:
            return
        _, captured_block, inputs = self._ref
        if captured_block == block:
            self.runner.adopt(block, inputs)
            return
        result = self._pass(start=self.runner.cached_block, stop=block, capture=block)
        self.cost.other_fe += result.cost
        self.runner.adopt(block, result.captured)

    def stats(self, m: int) -> ActivationStats:
        """Statistics of module m: from the reference pass when it recorded them, else a partial pass."""
        self._enter(self._block(m))
        self._module_evals = []
        known = self._ref[0].get(m)
        if known is not None:
            return known.stats()
        b = self._block(m)
        return self._stats_pass(m, start=b, stop=b + 1 if b + 1 < self.runner.n_blocks else None)

    def loss(self, m: int | None) -> float:
        """Calibration loss from module m's block on; records module m+1's statistics and the next
        block's input in case this evaluation becomes the reference."""
        start = 0 if m is None else self._block(m)
        nxt = 0 if m is None else m + 1
        capture = start + 1 if start + 1 < self.runner.n_blocks else None
        observed = {}
        if nxt < len(self.sites):
            observed[nxt] = _Recorder(self.tm.names, self.levels, self.runner.device, nxt, self._tokens)
        result = self._pass(observed.get(nxt), start=start, capture=capture)
        self.cost.loss_passes += 1
        self.cost.loss_fe += result.cost
        self._module_evals.append((observed, capture, result.captured))
        return result.loss

    def accept(self, m: int | None, evaluation: int | None) -> None:
        """Keep what the accepted evaluation recorded; with none accepted the reference is unchanged."""
        if evaluation is not None:
            self._ref = self._module_evals[evaluation]
        self._module_evals = []


def make_oracle(mode: str, tm: ThresholdedModel, chunks: torch.Tensor, levels: list[float],
                batch_size: int = 8) -> PaperOracle:
    """The oracle for a mode name."""
    if mode not in MODES:
        raise ValueError(f"greedy mode {mode!r}; allowed: {', '.join(MODES)}")
    return (FastOracle if mode == "fast" else PaperOracle)(tm, chunks, levels, batch_size)
