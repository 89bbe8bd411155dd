"""Forward passes over a fixed token set that start at a later block from given block inputs.

When only the thresholds of block i onward change, blocks 0..i-1 compute the same activations as
before: given block i's input over the calibration set, a pass can skip them. The earlier blocks are
swapped for pass-through modules for the duration of a pass, so the model's own forward (its
embeddings, between-block steps, final norm and head) runs unchanged: nothing about an architecture is
re-implemented here, only the placement spec's block list is used. Who keeps which inputs is the
caller's business (`thresh_opt.incremental`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from thresh_opt.errors import UserError
from thresh_opt.models.head import HeadLoss, output_embeddings
from thresh_opt.models.specs import blocks_of
from thresh_opt.models.thresholded import Counts, Observer, ThresholdedModel


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    """Raised by a hook to end a pass once it has seen what it needs."""


class _PassThrough(nn.Module):
    """Stands in for a skipped block: returns its input in the block's output structure."""

    def __init__(self, extras: tuple | None) -> None:
        super().__init__()
        self.extras = extras

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return hidden_states if self.extras is None else (hidden_states, *self.extras)


def _minus(after: Counts, before: Counts) -> Counts:
    """The zero counts between two snapshots of the model's counters."""
    return Counts(tuple(a - b for a, b in zip(after.zeros, before.zeros)), after.channels,
                  after.tokens - before.tokens)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@dataclass
class PassResult:
    """What one pass over some batches measured: summed token loss (None when it stopped before the head),
    its cost in forward-equivalents, the block inputs it captured (block -> one tensor per batch run), and
    per batch run (in `batches` order) its loss sum, its real tokens and its zero counts."""

    loss_sum: float | None
    tokens: int
    cost: float
    captured: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)
    batch_losses: list[float | None] = field(default_factory=list)
    batch_tokens: list[int] = field(default_factory=list)
    batch_counts: list[Counts] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Mean next-token cross-entropy."""
        if self.loss_sum is None:
            raise ValueError("this pass stopped before the head: it has no loss")
        return self.loss_sum / self.tokens


class PrefixRunner:
    """Runs a thresholded model over fixed token chunks, optionally from given inputs of a later block.

    Cost is counted in forward-equivalents: the MACs of the linear maps a pass runs (sites' consumers,
    plus the output head) over those of a full pass, so a full pass costs 1.

    Args:
        tm: the thresholded model.
        chunks: (n, ctx_len) token ids; the same batches are used by every pass.
        batch_size: chunks per forward call.
        sliced_head: compute the loss from the head's input in slices (never the batch's full logits),
            where that gives the model's own logits.
    """

    def __init__(self, tm: ThresholdedModel, chunks: torch.Tensor, batch_size: int = 8,
                 sliced_head: bool = True) -> None:
        self.tm = tm
        self.device = next(tm.model.parameters()).device
        self.batches = [b.to(self.device) for b in chunks.split(batch_size)]
        self.tokens = int(chunks.numel())
        self.batch = 0  # index of the batch being run: observers that keep inputs per batch read it
        self.blocks = blocks_of(tm.model, tm.spec)
        self.n_blocks = len(self.blocks)
        self.block_macs = [0] * self.n_blocks
        for s in tm.sites:
            self.block_macs[s.block] += s.macs
        weight = getattr(output_embeddings(tm.model), "weight", None)
        self.head_macs = int(weight.numel()) if isinstance(weight, torch.Tensor) else 0
        self.head = HeadLoss(tm.model, self.batches[0][:1], sliced=sliced_head)
        try:  # one probe forward, here rather than inside a measured pass
            self._extras: tuple | None = self._block_extras()
            self._no_skipping: UserError | None = None
        except UserError as exc:  # blocks with state: only passes from the tokens
            self._extras, self._no_skipping = None, exc

    @property
    def full_macs(self) -> int:
        """MACs per token of a full pass: every site's consumers and the head."""
        return sum(self.block_macs) + self.head_macs

    def cost(self, start: int, stop_site: int | None = None, batches: Sequence[int] | None = None) -> float:
        """Forward-equivalents of a pass from block `start` to the end and the head, or, with `stop_site`,
        up to that site (its consumers and the head not run), over `batches` (default: all; a part of the
        calibration set costs its share of the tokens)."""
        share = 1.0 if batches is None else sum(self.batches[b].numel() for b in batches) / self.tokens
        if stop_site is None:
            return share * (sum(self.block_macs[start:]) + self.head_macs) / self.full_macs
        site = self.tm.sites[stop_site]
        before = sum(s.macs for s in self.tm.sites[:stop_site] if s.block == site.block)
        return share * (sum(self.block_macs[start:site.block]) + before) / self.full_macs

    @torch.no_grad()
    def run(self, start: int = 0, inputs: Sequence[torch.Tensor] | None = None, captures: Iterable[int] = (),
            observers: Sequence[Observer] = (), stop_site: int | None = None,
            batches: Sequence[int] | None = None) -> PassResult:
        """One pass over the batches `batches` (indices, in the order given; default: all), from block
        `start` (fed `inputs`, one tensor per batch run; 0: from the tokens) through the head, giving the
        loss; or up to site `stop_site`, ending right after the observers have seen its input. The inputs
        of the blocks in `captures` are kept. The model's zero counts go on from where they were (the caller
        resets them); each batch's own counts are in the result."""
        order = list(range(len(self.batches))) if batches is None else list(batches)
        if start and (inputs is None or len(inputs) != len(order)):
            raise ValueError(f"a pass from block {start} needs its input for each of the {len(order)} batches")
        if start and self._no_skipping is not None:
            raise self._no_skipping
        captured: dict[int, list[torch.Tensor]] = {b: [] for b in captures if b > start}
        batch_index = [0]
        hooks = []
        if start:
            given = inputs or ()

            def substitute(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                cached = given[batch_index[0]]
                if args:
                    return (cached, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": cached}

            hooks.append(self.blocks[start].register_forward_pre_hook(substitute, with_kwargs=True))
        for b, kept in captured.items():
            def keep(_m: nn.Module, args: tuple, kwargs: dict, kept: list = kept) -> None:
                kept.append(_hidden(args, kwargs).detach().clone())

            hooks.append(self.blocks[b].register_forward_pre_hook(keep, with_kwargs=True))

        def halt(i: int, _x: torch.Tensor, _mask: torch.Tensor | None) -> None:
            if i == stop_site:
                raise _Stop  # after the other observers (they run in registration order)

        watching = [*observers, halt] if stop_site is not None else list(observers)
        total, tokens = 0.0, 0
        losses: list[float | None] = []
        counts: list[Counts] = []
        try:
            with self._skipping(start), contextlib.ExitStack() as stack:
                for observer in watching:
                    stack.enter_context(self.tm.observe(observer))
                before = self.tm.counts()  # each batch's counts: the change since the previous snapshot
                for i, b in enumerate(order):
                    batch_index[0], self.batch, batch = i, b, self.batches[b]
                    try:
                        loss: float | None = self.head.loss_sum(partial(self.tm, input_ids=batch, use_cache=False),
                                                                batch)
                    except _Stop:
                        loss = None
                    after = self.tm.counts()  # one snapshot per batch (on a GPU each reads the counters back)
                    counts.append(_minus(after, before))
                    before = after
                    losses.append(loss)
                    if loss is not None:
                        total += loss
                        tokens += batch[:, 1:].numel()
        finally:
            for h in hooks:
                h.remove()
        return PassResult(None if stop_site is not None else total, tokens,
                          self.cost(start, stop_site, None if batches is None else order),
                          {b: v for b, v in captured.items() if v}, order, losses,
                          [int(self.batches[b][:, 1:].numel()) for b in order], counts)

    @contextlib.contextmanager
    def _skipping(self, start: int) -> Iterator[None]:
        originals = [self.blocks[j] for j in range(start)]
        try:
            for j in range(start):
                self.blocks[j] = _PassThrough(self._extras)
            yield
        finally:
            for j, block in enumerate(originals):
                self.blocks[j] = block

    @torch.no_grad()
    def _block_extras(self) -> tuple | None:
        """What a block returns besides its hidden state (a pass-through must return the same)."""
        seen: list[Any] = []

        def record(_m: nn.Module, _a: tuple, out: Any) -> None:
            seen.append(out)
            raise _Stop

        handle = self.blocks[0].register_forward_hook(record)
        try:
            self.tm(input_ids=self.batches[0][:1], use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        out = seen[0]
        if isinstance(out, torch.Tensor):
            return None
        if isinstance(out, tuple) and all(x is None for x in out[1:]):
            return tuple(out[1:])
        raise UserError(f"{type(self.blocks[0]).__name__} returns {type(out).__name__} with state: "
                        "block-input caching needs blocks that return the hidden state alone "
                        "(set evaluation.incremental: false)")
