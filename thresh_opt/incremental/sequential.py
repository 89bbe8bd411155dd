"""Early rejection: a greedy candidate measured batch by batch against its reference, stopped as soon as a
paired sequential test says how the acceptance rule will judge it.

The rule (design.md 1.3) accepts a candidate C against the reference R (the last accepted configuration)
while ``L_C / L_R < tolerance``. Over the n calibration batches with summed losses c_i and r_i that is
``mean_i d_i < 0`` with the paired differences ``d_i = c_i - tolerance * r_i``. After the first k batches
the mean of the n differences is estimated by the mean of the k seen, with the standard error of a simple
random sample drawn without replacement from a finite population of n,
``se = s_k * sqrt((1 - k / n) / k)`` (s_k the sample standard deviation): zero at k = n, where the
decision is exact. The test rejects when ``mean_k - z_reject * se > 0`` (from ``min_reject_chunks`` batches
on), accepts when ``mean_k + z_accept * se < 0`` (from ``min_chunks`` on), and otherwise measures one more
batch.

Why two sides: the two errors do not cost the same. A false rejection ends a module's upward walk (and,
with the warm start, lowers where later modules of its kind start), so it costs sparsity, possibly
several levels; it wants a strict z (4) and a variance estimate with at least two degrees of freedom
(``min_reject_chunks`` 3: with one, s_k is often far too small by chance). A false acceptance takes a
candidate whose full-set ratio is above the tolerance, and is likely only when that ratio is within about
a standard error of it, so it costs an excess of loss of the order of the greedy's own sampling noise; a
lenient ``z_accept`` (2) then saves most, as most candidates are accepted (3 of 4 on rwkv4-tiny). The
excesses add up over the modules, though: on 4 chunks of 32 tokens the final loss ratio went 0.4% past
fast mode's with ``z_accept`` 2 (more than the 0.3% tolerance), so the defaults stay at 4 on both sides
and on 2 batches (``min_reject_chunks`` 2), and the lenient test is an option (README, Benchmarks: its cost
and results on 8 and 32 chunks).

False decisions: for a candidate whose full-set mean difference is on the other side, each look errs with
probability about ``1 - Phi(z)`` under a normal model (3e-5 at z = 4, 0.023 at z = 2), more
for small k, where s_k is itself uncertain (with Student's t at k - 1 degrees of freedom and z = 4: 0.078
at k = 2, 0.029 at k = 3, 0.014 at k = 4), and the looks are repeated, up to n - min_chunks of them;
the finite-population correction shrinks the error as k nears n. Candidates far from the boundary are
decided correctly at the first look with near certainty; those near it err, and on rwkv4-tiny they are
many: the greedy's tolerance is of the order of the chunk-to-chunk noise (8 x 128 tokens, loss_inc 1.002: half the
candidates have |t| < 2 over all 8 chunks). Replaying the 134 candidates of a fast-mode run gave 5 wrong
decisions at z = 4 and 6 at z = 2.5 (min_chunks 2, one z for both sides). A false decision changes one
module's choice, the way a different calibration sample would; with one z = 4 for both sides the greedy
on rwkv4-tiny ended 1.3 sparsity points below paper mode, 3.6 at z = 2.5 (README, Benchmarks, for the
two-sided option).

The reference's batch results are measured lazily: only the batches a candidate needs, once (they are
kept by the engine). What the screened trial stores as its loss is the ratio estimate
``L_R * sum_k c_i / sum_k r_i`` (the reference's stored loss times the measured ratio), so the sampler's
own rule, applied to it, takes the test's decision; an accepted candidate's estimate becomes the next
reference loss, and the next candidates are again measured against its batches. A candidate whose
thresholds are the reference's (a level below a module's dense sparsity gives threshold 0 again) is
screened too: its ratio is exactly 1, so it passes at the reference's loss for no batch. Measured on every
batch instead, its full-set loss was compared with the reference's estimate and failed whenever it came out
higher (on rwkv4-tiny, 32 chunks, that left every ``ffn.value`` dense on some calibration sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from thresh_opt.incremental.engine import PassOutcome, combine

if TYPE_CHECKING:
    from collections.abc import Sequence

    from thresh_opt.incremental.engine import IncrementalEngine

Decision = Literal["accept", "reject", "continue"]
Z_ACCEPT = 4.0  # conservative for repeated looks at few batches (the module docstring: why 2 is an option)
Z_REJECT = 4.0
MIN_CHUNKS = 2
MIN_REJECT_CHUNKS = 2


@dataclass(frozen=True)
class SequentialTest:
    """The paired sequential test on the acceptance rule ``sum(candidate) / sum(reference) < tolerance``
    over a population of `n` batches (see the module docstring).

    Example:
        >>> test = SequentialTest(tolerance=1.01, n=8)
        >>> test.decide([5.2, 6.3, 5.9], [5.0, 6.0, 5.6])  # +4.8% to +5.4% per batch: clearly fails
        'reject'
        >>> test.decide([5.01, 6.0], [5.0, 6.1])  # differences -0.04 and -0.16: not sure yet
        'continue'

    Args:
        tolerance: the acceptance rule's tolerance (> 1).
        n: batches in the calibration set.
        z_accept: the multiple of the standard error an acceptance needs.
        z_reject: the multiple of the standard error a rejection needs.
        min_chunks: batches measured before any decision.
        min_reject_chunks: batches measured before a rejection.
    """

    tolerance: float
    n: int
    z_accept: float = Z_ACCEPT
    z_reject: float = Z_REJECT
    min_chunks: int = MIN_CHUNKS
    min_reject_chunks: int = MIN_REJECT_CHUNKS

    def decide(self, candidate: Sequence[float], reference: Sequence[float]) -> Decision:
        """The decision after the first k batches (k = len(candidate) = len(reference))."""
        k = len(candidate)
        if k != len(reference) or not 0 < k <= self.n:
            raise ValueError(f"{k} candidate and {len(reference)} reference batches of {self.n}")
        d = [c - self.tolerance * r for c, r in zip(candidate, reference)]
        mean = sum(d) / k
        if k == self.n:
            return "accept" if mean < 0 else "reject"
        if k < self.min_chunks:
            return "continue"
        s = math.sqrt(sum((x - mean) ** 2 for x in d) / (k - 1))
        se = s * math.sqrt((1 - k / self.n) / k)
        if k >= self.min_reject_chunks and mean - self.z_reject * se > 0:
            return "reject"
        if mean + self.z_accept * se < 0:
            return "accept"
        return "continue"


@dataclass(frozen=True)
class Screen:
    """A candidate to measure batch by batch against a reference configuration, in batch order, until the
    test decides (:meth:`IncrementalEngine.screening` runs it in place of the candidate's full pass).

    Args:
        candidate: its thresholds (site order).
        reference: the reference configuration's thresholds.
        reference_loss: the loss the rule divides by (the reference trial's stored loss).
        test: the sequential test (its tolerance is the rule's).
    """

    candidate: tuple[float, ...]
    reference: tuple[float, ...]
    reference_loss: float
    test: SequentialTest

    def run(self, engine: IncrementalEngine) -> PassOutcome:
        """Measure until decided; the outcome holds the ratio estimate of the loss, the zero counts of the
        batches measured, their number and the verdict. The model is left at the candidate's thresholds."""
        n, tolerance = engine.n_batches, self.test.tolerance
        k, start = min(self.test.min_chunks, n), None
        # The reference itself (e.g. a level below a module's dense sparsity: threshold 0 again): its ratio is
        # exactly 1 on any batches, so it passes on the first ones, which the reference was measured on.
        same = self.candidate == self.reference
        while True:
            ref = engine.batch_results(self.reference, range(k))  # only the batches not measured before
            cand = engine.batch_results(self.candidate, range(k))
            start = engine.last_start if engine.last_start is not None else start
            verdict = self.test.decide([c.loss_sum for c in cand], [r.loss_sum for r in ref])
            estimate = self.reference_loss * sum(c.loss_sum for c in cand) / sum(r.loss_sum for r in ref)
            passes = estimate / self.reference_loss < tolerance  # how the sampler will read the estimate
            if same or k == n or (verdict != "continue" and passes == (verdict == "accept")):
                break
            k += 1
        engine.last_start = start
        measured, counts = combine(cand)
        return PassOutcome(estimate, counts, start or 0, known=start is None, chunks=k,
                           verdict="accept" if passes else "reject", measured_loss=measured)
