"""Incremental evaluation: calibration losses, zero counts and activation statistics of threshold
configurations, computed from what earlier passes left behind.

The input of block j over the calibration set depends only on the thresholds of the sites in blocks
before j, and the input of site m only on the thresholds of the sites before m. So, in one LRU store
bounded in bytes, the engine keeps, per batch of calibration chunks:

- block inputs, keyed by the upstream thresholds, with the zero counts of the sites they skip: a pass
  for a configuration that agrees with an earlier one on blocks 0..j-1 starts at block j;
- the raw input of the first site of each pass's dense tail (every later site at threshold 0): the
  statistics a front-to-back search needs next if this configuration is accepted; their quantiles
  (the costly part) are computed only when asked for;
- every configuration's loss and zero counts on each batch, and every module's statistics under given
  upstream thresholds, so that nothing is measured twice.

Everything is kept per batch so that a configuration can be measured on some batches only (the early
rejection of :mod:`thresh_opt.incremental.sequential`): a full result is only ever the sum over every
batch, so a pass stopped after some batches is never taken for one.

With ``incremental=False`` no block or module inputs are kept and every pass runs from the tokens: the
cost of the published procedure (a full pass per loss, a full pass per module's statistics, each
measured once). Work is counted in forward-equivalents (a full pass over the calibration set = 1; a
pass over some batches, their share of the tokens).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from thresh_opt.calibration.stats import DEFAULT_LEVELS, ActivationStats, QuantileSums
from thresh_opt.incremental.cache import MB, LRUStore, StoreUsage
from thresh_opt.models.prefix import PrefixRunner
from thresh_opt.models.thresholded import Counts

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from thresh_opt.models.thresholded import Observer, ThresholdedModel


class Screen(Protocol):
    """What :meth:`IncrementalEngine.screening` runs in place of a candidate's full pass (the engine's side of
    :class:`thresh_opt.incremental.sequential.Screen`, which imports the engine, not the other way round)."""

    @property
    def candidate(self) -> tuple[float, ...]:
        """Its thresholds (site order)."""

    def run(self, engine: IncrementalEngine) -> PassOutcome:
        """Measure the candidate batch by batch until the test decides."""

Statistics = Literal["dense", "sequential"]
STATISTICS = ("dense", "sequential")


@dataclass
class Cost:
    """Work done, by purpose, in forward-equivalents (FE) and seconds; `loss_batches` counts the batches
    the loss passes ran (a pass over every batch counts them all)."""

    loss_passes: int = 0
    loss_fe: float = 0.0
    stats_passes: int = 0
    stats_fe: float = 0.0
    other_fe: float = 0.0  # other objectives' forwards (held-out text, lm-eval), by tokens run
    seconds: float = 0.0
    loss_batches: int = 0

    @property
    def forward_equivalents(self) -> float:
        """All work, in full passes over the calibration set."""
        return self.loss_fe + self.stats_fe + self.other_fe

    def since(self, before: Cost) -> Cost:
        """The work done after the snapshot `before`."""
        return Cost(self.loss_passes - before.loss_passes, self.loss_fe - before.loss_fe,
                    self.stats_passes - before.stats_passes, self.stats_fe - before.stats_fe,
                    self.other_fe - before.other_fe, self.seconds - before.seconds,
                    self.loss_batches - before.loss_batches)


@dataclass(frozen=True)
class PassOutcome:
    """A configuration's calibration loss and zero counts, the block its pass started from, and whether it
    was known already (no pass run). A screened outcome (`chunks` set: the batches measured, fewer than
    all when it stopped early) holds the screen's loss estimate, `verdict` its decision ("accept" or
    "reject"), `measured_loss` the mean token loss over the batches measured, and their zero counts."""

    loss: float
    counts: Counts
    start_block: int
    known: bool = False
    chunks: int | None = None
    verdict: str | None = None
    measured_loss: float | None = None


@dataclass(frozen=True)
class BatchResult:
    """A configuration's summed token loss, real tokens and zero counts on one batch."""

    loss_sum: float
    tokens: int
    counts: Counts


@dataclass(frozen=True)
class _BlockInput:
    inputs: torch.Tensor  # one batch
    counts: Counts  # that batch's, valid for the sites before the block


class _Recorder:
    """Observer of one site during a pass: keeps its raw inputs per batch, so that its statistics cost
    nothing unless they are asked for."""

    def __init__(self, runner: PrefixRunner, m: int) -> None:
        self.runner, self.m = runner, m
        self.raw: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}

    def __call__(self, i: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        if i == self.m:
            self.raw.setdefault(self.runner.batch, []).append((x.detach().clone(), mask))


def _dense_tail(t: tuple[float, ...]) -> int:
    """Index of the first site from which every threshold is 0."""
    j = len(t)
    while j > 0 and t[j - 1] == 0:
        j -= 1
    return j


def combine(results: Iterable[BatchResult]) -> tuple[float, Counts]:
    """Mean token loss and summed zero counts over batches, summed in the order given."""
    loss_sum, tokens, zeros, counts = 0.0, 0, None, None
    for r in results:
        loss_sum += r.loss_sum
        tokens += r.tokens
        zeros = r.counts.zeros if zeros is None else tuple(a + b for a, b in zip(zeros, r.counts.zeros))
        counts = Counts(zeros, r.counts.channels, (counts.tokens if counts else 0) + r.counts.tokens)
    assert counts is not None  # at least one batch
    return loss_sum / tokens, counts


class IncrementalEngine:
    """Evaluates threshold vectors (in site order) on a fixed calibration set, reusing earlier passes.

    Example:
        >>> engine = IncrementalEngine(loaded.thresholded, chunks)                 # doctest: +SKIP
        >>> t = engine.thresholds_for([0.5] * len(loaded.thresholded.names))        # doctest: +SKIP
        >>> engine.evaluate(t).loss, engine.cost.forward_equivalents               # doctest: +SKIP

    Args:
        tm: the thresholded model (its thresholds are set by each call).
        chunks: the calibration token chunks; the same set gives losses and statistics.
        batch_size: chunks per forward call (and the unit of a partial measurement).
        cache_mb: the store's budget in MB (block inputs, recorded module inputs, results, statistics).
        incremental: False runs every pass from the tokens (results and statistics are still kept).
        levels: target sparsities at which statistics are measured (thresholds interpolate between them).
    """

    def __init__(self, tm: ThresholdedModel, chunks: torch.Tensor, batch_size: int = 8, cache_mb: float = 512.0,
                 incremental: bool = True, levels: Sequence[float] = DEFAULT_LEVELS) -> None:
        self.tm, self.incremental, self.levels = tm, incremental, list(levels)
        self.runner = PrefixRunner(tm, chunks, batch_size)
        self.n_batches = len(self.runner.batches)
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
        self._criterion = tm.criterion  # what every kept statistic measured
        self._screen: Screen | None = None
        self.last_screened: PassOutcome | None = None  # the outcome of the last screen run

    # ---- what is kept --------------------------------------------------------------------------
    def usage(self) -> StoreUsage:
        """The store's entries, bytes (now and at most) and counters."""
        return self.store.usage()

    def reset(self) -> None:
        """Forget everything but the dense model's results (a new study starts from the same state); also
        those, and every statistic, when the model's criterion changed since they were measured."""
        if self.tm.criterion == self._criterion:
            self.store.clear()
        else:  # the pinned dense statistics measured another score
            self.store = LRUStore(self.store.max_bytes)
            self._dense_stats, self._criterion = None, self.tm.criterion

    def seed_dense_stats(self, stats: ActivationStats) -> None:
        """Use statistics of the dense model measured before (a disk cache) instead of a pass."""
        self._dense_stats = stats

    def _reusable(self, t: tuple[float, ...]) -> bool:
        # the published procedure evaluates every candidate: without incremental evaluation only the dense
        # model's results (the reference) are reused
        return self.incremental or not any(t)

    def _start(self, t: tuple[float, ...], last: int, b: int) -> tuple[int, _BlockInput | None]:
        """The deepest block <= `last` whose input on batch b under these upstream thresholds is kept."""
        for j in range(last, 0, -1):
            key = ("block", j, t[: self.first_site[j]], b)
            if key in self.store:
                return j, self.store.get(key)
        return 0, None

    def _run(self, t: tuple[float, ...], last_block: int, observers: list[Observer], stop_site: int | None,
             batches: Sequence[int]) -> tuple[int, float, dict[int, tuple[float | None, int, Counts]]]:
        """A pass under thresholds t over some batches, each from the deepest block input kept for it,
        keeping the block inputs it passes. Returns the shallowest start, the cost, and per batch its loss
        sum (None when stopped), real tokens and zero counts."""
        groups: dict[int, list[tuple[int, _BlockInput | None]]] = {}
        for b in batches:
            start, entry = self._start(t, last_block, b) if self.incremental else (0, None)
            groups.setdefault(start, []).append((b, entry))
        stop_block = self.runner.n_blocks - 1 if stop_site is None else self.tm.sites[stop_site].block
        self.tm.set_thresholds(list(t))
        cost, out = 0.0, {}
        for start, members in sorted(groups.items()):
            captures = range(start + 1, stop_block + 1) if self.incremental else ()
            self.tm.reset_counts()
            inputs = [e.inputs for _, e in members if e is not None] if start else None
            result = self.runner.run(start, inputs, captures, observers, stop_site, [b for b, _ in members])
            cost += result.cost
            for pos, (b, entry) in enumerate(members):
                counts = result.batch_counts[pos]
                if entry is not None:
                    counts = counts.merged(entry.counts, self.first_site[start])
                for j, kept in result.captured.items():
                    self.store.put(("block", j, t[: self.first_site[j]], b), _BlockInput(kept[pos], counts))
                out[b] = (result.batch_losses[pos], result.batch_tokens[pos], counts)
        return min(groups), cost, out

    # ---- losses ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def screening(self, screen: Screen) -> Iterator[None]:
        """Inside this block, evaluating the screen's candidate runs the screen (a sequential test against
        its reference, batch by batch) instead of a full pass; see :mod:`thresh_opt.incremental.sequential`."""
        self._screen, self.last_screened = screen, None
        try:
            yield
        finally:
            self._screen = None

    def batch_results(self, thresholds: Sequence[float], batches: Sequence[int]) -> list[BatchResult]:
        """A configuration's result on each of these batches (measured when not known: a loss pass over
        those batches alone, counted as such); the model is left at its thresholds."""
        t = tuple(float(x) for x in thresholds)
        reuse = self._reusable(t)
        known = {b: r for b in batches if reuse and (r := self.store.get(("batch", t, b))) is not None}
        missing = [b for b in batches if b not in known]
        self.tm.set_thresholds(list(t))
        self.last_start = None
        if missing:
            began = time.perf_counter()
            tail, recorder = _dense_tail(t), None
            observers: list[Observer] = []
            if self.incremental and tail < self.n and not self._has_stats(tail, t):
                recorder = _Recorder(self.runner, tail)
                observers.append(recorder)
            start, cost, out = self._run(t, self.runner.n_blocks - 1, observers, None, missing)
            for b, raw in (recorder.raw if recorder is not None else {}).items():
                self.store.put(("raw", tail, t[:tail], b), raw)
            for b, (loss_sum, tokens, counts) in out.items():
                assert loss_sum is not None  # a pass to the head
                known[b] = BatchResult(loss_sum, tokens, counts)
                if reuse:
                    self.store.put(("batch", t, b), known[b], pin=not any(t))
            self.last_start = start
            self.cost.loss_passes += 1
            self.cost.loss_batches += len(missing)
            self.cost.loss_fe += cost
            self.cost.seconds += time.perf_counter() - began
        return [known[b] for b in batches]

    def evaluate(self, thresholds: Sequence[float]) -> PassOutcome:
        """Calibration loss and zero counts of a configuration over every batch (inside :meth:`screening`,
        of the screen's candidate: the screen's outcome); the model is left at its thresholds."""
        t = tuple(float(x) for x in thresholds)
        if self._screen is not None and self._screen.candidate == t:
            self.last_screened = self._screen.run(self)
            return self.last_screened
        known = self.store.get(("result", t)) if self._reusable(t) else None
        if known is not None:
            self.tm.set_thresholds(list(t))
            self.last_start = None
            return replace(known, known=True)
        results = self.batch_results(t, range(self.n_batches))
        loss, counts = combine(results)
        start = self.last_start
        outcome = PassOutcome(loss, counts, start if start is not None else 0, known=start is None)
        self.store.put(("result", t), replace(outcome, known=False), pin=not any(t))
        return outcome

    # ---- statistics ---------------------------------------------------------------------------------
    def _has_stats(self, m: int, t: tuple[float, ...]) -> bool:
        prefix = t[:m]
        return (("stats", m, prefix) in self.store
                or all(("raw", m, prefix, b) in self.store for b in range(self.n_batches))
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
        else:
            sums = QuantileSums(self.names, self.levels, self.runner.device, {m}, self.tm.score)
            raw = {b: r for b in range(self.n_batches) if (r := self.store.pop(("raw", m, t[:m], b))) is not None}
            for b in sorted(raw):  # recorded by loss passes: free
                for x, mask in raw[b]:
                    sums(m, x, mask)
            missing = [b for b in range(self.n_batches) if b not in raw]
            if missing:
                began = time.perf_counter()
                # the published procedure runs a whole pass for statistics; incrementally, it stops after site m
                _, cost, _ = self._run(t, self.tm.sites[m].block, [sums], m if self.incremental else None, missing)
                self.cost.stats_passes += 1
                self.cost.stats_fe += cost
                self.cost.seconds += time.perf_counter() - began
            stats = sums.result()
        self.store.put(key, stats, pin=not any(t))
        return stats

    def dense_stats(self) -> ActivationStats:
        """Every site's statistics in the dense model: one pass observing all sites (it also gives the dense
        model's result), unless seeded."""
        if self._dense_stats is None:
            began = time.perf_counter()
            sums = QuantileSums(self.names, self.levels, self.runner.device, score=self.tm.score)
            zeros = (0.0,) * self.n
            # from the tokens (block 0), even when dense block inputs are kept: every site must be observed
            start, cost, out = self._run(zeros, 0, [sums], None, range(self.n_batches))
            results = []
            for b in range(self.n_batches):
                loss_sum, tokens, counts = out[b]
                assert loss_sum is not None  # a pass to the head
                results.append(BatchResult(loss_sum, tokens, counts))
                self.store.put(("batch", zeros, b), results[-1], pin=True)
            loss, counts = combine(results)
            self.store.put(("result", zeros), PassOutcome(loss, counts, start), pin=True)
            self._dense_stats = sums.result()
            self.cost.stats_passes += 1
            self.cost.stats_fe += cost
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
