"""Incremental evaluation: calibration losses, zero counts and activation statistics of threshold
configurations, computed from what earlier passes left behind.

The input of block j over the calibration set depends only on the thresholds of the sites in blocks
before j, and the input of site m only on the thresholds of the sites before m. So, in one LRU store
bounded in bytes, the engine keeps:

- block inputs, keyed by the upstream thresholds, with the zero counts of the sites they skip: a pass
  for a configuration that agrees with an earlier one on blocks 0..j-1 starts at block j;
- the raw input of the first site of each pass's dense tail (every later site at threshold 0): the
  statistics a front-to-back search needs next if this configuration is accepted; their quantiles
  (the costly part) are computed only when asked for;
- every configuration's result and every module's statistics under given upstream thresholds, so
  that nothing is measured twice.

With ``incremental=False`` no block or module inputs are kept and every pass runs from the tokens: the
cost of the published procedure (a full pass per loss, a full pass per module's statistics, each
measured once). Work is counted in forward-equivalents (a full pass over the calibration set = 1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import torch

from thresh_opt.calibration.stats import DEFAULT_LEVELS, ActivationStats, QuantileSums
from thresh_opt.incremental.cache import MB, LRUStore, StoreUsage
from thresh_opt.models.prefix import PrefixRunner

if TYPE_CHECKING:
    from collections.abc import Sequence

    from thresh_opt.models.prefix import PassResult
    from thresh_opt.models.thresholded import Counts, Observer, ThresholdedModel

Statistics = Literal["dense", "sequential"]
STATISTICS = ("dense", "sequential")


@dataclass
class Cost:
    """Work done, by purpose, in forward-equivalents (FE) and seconds."""

    loss_passes: int = 0
    loss_fe: float = 0.0
    stats_passes: int = 0
    stats_fe: float = 0.0
    other_fe: float = 0.0  # other objectives' forwards (held-out text, lm-eval), by tokens run
    seconds: float = 0.0

    @property
    def forward_equivalents(self) -> float:
        """All work, in full passes over the calibration set."""
        return self.loss_fe + self.stats_fe + self.other_fe

    def since(self, before: Cost) -> Cost:
        """The work done after the snapshot `before`."""
        return Cost(self.loss_passes - before.loss_passes, self.loss_fe - before.loss_fe,
                    self.stats_passes - before.stats_passes, self.stats_fe - before.stats_fe,
                    self.other_fe - before.other_fe, self.seconds - before.seconds)


@dataclass(frozen=True)
class PassOutcome:
    """A configuration's calibration loss and zero counts, the block its pass started from, and whether it
    was known already (no pass run)."""

    loss: float
    counts: Counts
    start_block: int
    known: bool = False


@dataclass(frozen=True)
class _BlockInput:
    inputs: list[torch.Tensor]  # one tensor per batch
    counts: Counts  # valid for the sites before the block


class _Recorder:
    """Observer of one site during a pass: keeps its raw inputs (up to a byte budget; beyond it, their
    quantiles are summed at once) so that its statistics cost nothing unless they are asked for."""

    def __init__(self, names: list[str], levels: list[float], device: torch.device, m: int, budget: int) -> None:
        self.names, self.levels, self.device, self.m, self.budget = names, levels, device, m, budget
        self.raw: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.sums: QuantileSums | None = None
        self.nbytes = 0

    def __call__(self, i: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        if i != self.m:
            return
        size = x.numel() * x.element_size()
        if self.sums is None and self.nbytes + size <= self.budget:
            self.raw.append((x.detach().clone(), mask))
            self.nbytes += size
            return
        self._fold()
        self.sums(i, x, mask)  # type: ignore[misc]

    def _fold(self) -> None:
        if self.sums is None:
            self.sums = QuantileSums(self.names, self.levels, self.device, {self.m})
        for x, mask in self.raw:
            self.sums(self.m, x, mask)
        self.raw, self.nbytes = [], 0

    def stats(self) -> ActivationStats:
        """The site's statistics over every recorded token."""
        self._fold()
        return self.sums.result()  # type: ignore[union-attr]


def _dense_tail(t: tuple[float, ...]) -> int:
    """Index of the first site from which every threshold is 0."""
    j = len(t)
    while j > 0 and t[j - 1] == 0:
        j -= 1
    return j


class IncrementalEngine:
    """Evaluates threshold vectors (in site order) on a fixed calibration set, reusing earlier passes.

    Example:
        >>> engine = IncrementalEngine(loaded.thresholded, chunks)                 # doctest: +SKIP
        >>> t = engine.thresholds_for([0.5] * len(loaded.thresholded.names))        # doctest: +SKIP
        >>> engine.evaluate(t).loss, engine.cost.forward_equivalents               # doctest: +SKIP

    Args:
        tm: the thresholded model (its thresholds are set by each call).
        chunks: the calibration token chunks; the same set gives losses and statistics.
        batch_size: chunks per forward call.
        cache_mb: the store's budget in MB (block inputs, recorded module inputs, results, statistics).
        incremental: False runs every pass from the tokens (results and statistics are still kept).
        levels: target sparsities at which statistics are measured (thresholds interpolate between them).
    """

    def __init__(self, tm: ThresholdedModel, chunks: torch.Tensor, batch_size: int = 8, cache_mb: float = 512.0,
                 incremental: bool = True, levels: Sequence[float] = DEFAULT_LEVELS) -> None:
        self.tm, self.incremental, self.levels = tm, incremental, list(levels)
        self.runner = PrefixRunner(tm, chunks, batch_size)
        self.store = LRUStore(int(cache_mb * MB))
        self.names = tm.names
        self.n = len(self.names)
        blocks = [s.block for s in tm.sites]
        if blocks != sorted(blocks):
            raise ValueError("sites must come block by block")
        self.first_site = [blocks.index(b) if b in blocks else self.n for b in range(self.runner.n_blocks)]
        self.cost = Cost()
        self.last_start: int | None = None  # block the last evaluation's pass started from (None: known, no pass)
        self._dense_stats: ActivationStats | None = None

    # ---- what is kept --------------------------------------------------------------------------
    def usage(self) -> StoreUsage:
        """The store's entries, bytes (now and at most) and counters."""
        return self.store.usage()

    def reset(self) -> None:
        """Forget everything but the dense model's results (a new study starts from the same state)."""
        self.store.clear()

    def seed_dense_stats(self, stats: ActivationStats) -> None:
        """Use statistics of the dense model measured before (a disk cache) instead of a pass."""
        self._dense_stats = stats

    def _start(self, t: tuple[float, ...], last: int) -> tuple[int, _BlockInput | None]:
        """The deepest block <= `last` whose input under these upstream thresholds is kept."""
        for j in range(last, 0, -1):
            key = ("block", j, t[: self.first_site[j]])
            if key in self.store:
                return j, self.store.get(key)
        return 0, None

    def _keep(self, t: tuple[float, ...], captured: dict[int, list[torch.Tensor]], counts: Counts) -> None:
        for j, inputs in captured.items():
            self.store.put(("block", j, t[: self.first_site[j]]), _BlockInput(inputs, counts))

    def _run(self, t: tuple[float, ...], last_block: int, observers: list[Observer],
             stop_site: int | None) -> tuple[int, PassResult, Counts]:
        """One pass under thresholds t from the deepest kept block input, keeping the inputs it passes."""
        start, entry = self._start(t, last_block) if self.incremental else (0, None)
        stop_block = self.runner.n_blocks - 1 if stop_site is None else self.tm.sites[stop_site].block
        captures = range(start + 1, stop_block + 1) if self.incremental else ()
        self.tm.set_thresholds(list(t))
        self.tm.reset_counts()
        result = self.runner.run(start, entry.inputs if entry else None, captures, observers, stop_site)
        counts = self.tm.counts()
        if entry is not None:
            counts = counts.merged(entry.counts, self.first_site[start])
        self._keep(t, result.captured, counts)
        return start, result, counts

    # ---- losses ----------------------------------------------------------------------------------
    def evaluate(self, thresholds: Sequence[float]) -> PassOutcome:
        """Calibration loss and zero counts of a configuration; the model is left at its thresholds."""
        t = tuple(float(x) for x in thresholds)
        # the published procedure evaluates every candidate: without incremental evaluation only the dense
        # model's result (the reference) is reused
        known = self.store.get(("result", t)) if self.incremental or not any(t) else None
        if known is not None:
            self.tm.set_thresholds(list(t))
            self.last_start = None
            return replace(known, known=True)
        began = time.perf_counter()
        tail, recorder = _dense_tail(t), None
        observers: list[Observer] = []
        if self.incremental and tail < self.n and not self._has_stats(tail, t):
            recorder = _Recorder(self.names, self.levels, self.runner.device, tail, self.store.max_bytes // 4)
            observers.append(recorder)
        start, result, counts = self._run(t, self.runner.n_blocks - 1, observers, None)
        if recorder is not None:
            self.store.put(("raw", tail, t[:tail]), recorder, recorder.nbytes + 64)
        outcome = PassOutcome(result.loss, counts, start)
        self.last_start = start
        self.store.put(("result", t), outcome, pin=not any(t))
        self.cost.loss_passes += 1
        self.cost.loss_fe += result.cost
        self.cost.seconds += time.perf_counter() - began
        return outcome

    # ---- statistics ---------------------------------------------------------------------------------
    def _has_stats(self, m: int, t: tuple[float, ...]) -> bool:
        prefix = t[:m]
        return (("stats", m, prefix) in self.store or ("raw", m, prefix) in self.store
                or (self._dense_stats is not None and not any(prefix)))

    def module_stats(self, m: int, thresholds: Sequence[float]) -> ActivationStats:
        """Statistics of site m under the thresholds of the sites before it (those after it do not matter)."""
        t = tuple(float(x) for x in thresholds[:m]) + (0.0,) * (self.n - m)
        key = ("stats", m, t[:m])
        stats = self.store.get(key)
        if stats is not None:
            return stats
        if self._dense_stats is not None and not any(t):
            stats = ActivationStats(self.levels, {self.names[m]: self._dense_stats.thresholds[self.names[m]]})
        elif (recorder := self.store.pop(("raw", m, t[:m]))) is not None:
            stats = recorder.stats()
        else:
            began = time.perf_counter()
            sums = QuantileSums(self.names, self.levels, self.runner.device, {m})
            # the published procedure runs a whole pass for statistics; incrementally, it stops after site m
            _, result, _ = self._run(t, self.tm.sites[m].block, [sums], m if self.incremental else None)
            stats = sums.result()
            self.cost.stats_passes += 1
            self.cost.stats_fe += result.cost
            self.cost.seconds += time.perf_counter() - began
        self.store.put(key, stats, pin=not any(t))
        return stats

    def dense_stats(self) -> ActivationStats:
        """Every site's statistics in the dense model: one pass observing all sites (it also gives the dense
        model's result), unless seeded."""
        if self._dense_stats is None:
            began = time.perf_counter()
            sums = QuantileSums(self.names, self.levels, self.runner.device)
            zeros = (0.0,) * self.n
            start, result, counts = self._run(zeros, self.runner.n_blocks - 1, [sums], None)
            self.store.put(("result", zeros), PassOutcome(result.loss, counts, start), pin=True)
            self._dense_stats = sums.result()
            self.cost.stats_passes += 1
            self.cost.stats_fe += result.cost
            self.cost.seconds += time.perf_counter() - began
        return self._dense_stats

    def thresholds_for(self, targets: Sequence[float], statistics: Statistics = "sequential") -> list[float]:
        """Thresholds (site order) for target sparsities (site order; 0: dense).

        "dense": every site's threshold from the dense model's statistics (one pass for all).
        "sequential": site m's threshold from its statistics measured under the thresholds of the sites
        before it, as the published greedy procedure measures them (design.md 1.3); each site with a
        target > 0 needs its own statistics, from a kept record or a pass that stops after it.
        """
        if len(targets) != self.n:
            raise ValueError(f"{len(targets)} targets for {self.n} sites")
        if statistics not in STATISTICS:
            raise ValueError(f"statistics {statistics!r}; allowed: {', '.join(STATISTICS)}")
        t = [0.0] * self.n
        for m, target in enumerate(targets):
            if target > 0:
                stats = self.dense_stats() if statistics == "dense" else self.module_stats(m, t)
                t[m] = stats.threshold(self.names[m], float(target))
        return t
