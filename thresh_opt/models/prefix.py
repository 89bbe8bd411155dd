"""Forward passes over a fixed token set that start at a later block from cached block inputs.

When only the thresholds of block i onward change, blocks 0..i-1 compute the same activations as
before: caching block i's input over the calibration set lets a pass skip them. The earlier blocks
are swapped for pass-through modules for the duration of a pass, so the model's own forward (its
embeddings, between-block steps, final norm and head) runs unchanged: nothing about an architecture is
re-implemented here, only the placement spec's block list is used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from thresh_opt.errors import UserError
from thresh_opt.models.specs import _submodule
from thresh_opt.models.thresholded import ThresholdedModel


class _Stop(Exception):
    """Raised by a hook to end a pass after the last block it needs."""


class _PassThrough(nn.Module):
    """Stands in for a skipped block: returns its input in the block's output structure."""

    def __init__(self, extras: tuple | None) -> None:
        super().__init__()
        self.extras = extras

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        return hidden_states if self.extras is None else (hidden_states, *self.extras)


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@dataclass
class PassResult:
    """What one pass measured: summed token loss (None when it stopped early), its cost in
    forward-equivalents, and the block inputs it captured."""

    loss_sum: float | None
    tokens: int
    cost: float
    captured: list[torch.Tensor] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Mean next-token cross-entropy."""
        if self.loss_sum is None:
            raise ValueError("this pass stopped before the head: it has no loss")
        return self.loss_sum / self.tokens


class PrefixRunner:
    """Runs a thresholded model over fixed token chunks, optionally from a cached block input.

    Cost is counted in forward-equivalents: the MACs of the linear maps a pass runs (sites' consumers
    per block, plus the output head) over those of a full pass, so a full pass costs 1.

    Args:
        tm: the thresholded model.
        chunks: (n, ctx_len) token ids; the same batches are used by every pass.
        batch_size: chunks per forward call.
    """

    def __init__(self, tm: ThresholdedModel, chunks: torch.Tensor, batch_size: int = 8) -> None:
        self.tm = tm
        self.device = next(tm.model.parameters()).device
        self.batches = [b.to(self.device) for b in chunks.split(batch_size)]
        self.blocks: nn.ModuleList = _submodule(tm.model, tm.spec.blocks, "blocks")
        self.n_blocks = len(self.blocks)
        self.block_macs = [0] * self.n_blocks
        for s in tm.sites:
            self.block_macs[s.block] += s.macs
        head = tm.model.get_output_embeddings() if hasattr(tm.model, "get_output_embeddings") else None
        self.head_macs = int(head.weight.numel()) if head is not None else 0
        self.cached_block = 0  # block whose input over all batches is in self._cache (0: the embeddings)
        self._cache: list[torch.Tensor] = []
        self._extras: tuple | None = self._block_extras()

    def cost(self, start: int, stop: int | None) -> float:
        """Forward-equivalents of a pass through blocks start..stop-1 (stop None: to the end and the head)."""
        end = self.n_blocks if stop is None else stop
        done = sum(self.block_macs[start:end]) + (self.head_macs if stop is None else 0)
        return done / (sum(self.block_macs) + self.head_macs)

    def adopt(self, block: int, inputs: list[torch.Tensor]) -> None:
        """Use these inputs of `block` (captured by a pass under the thresholds now fixed upstream)."""
        if len(inputs) != len(self.batches):
            raise ValueError(f"{len(inputs)} cached batches for {len(self.batches)} batches")
        self.cached_block, self._cache = block, inputs

    @torch.no_grad()
    def run(self, start: int = 0, stop: int | None = None, capture: int | None = None) -> PassResult:
        """One pass over every batch, from block `start` (its cached input; 0: from the tokens) up to,
        not including, block `stop` (None: through the head, giving the loss), capturing block
        `capture`'s input (capture == stop works: the input is kept, then the pass ends)."""
        if start and start != self.cached_block:
            raise ValueError(f"block {start} has no cached input (cached: block {self.cached_block})")
        captured: list[torch.Tensor] = []
        batch_index = [0]
        hooks = []
        if start:
            def substitute(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
                cached = self._cache[batch_index[0]]
                if args:
                    return (cached, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": cached}

            hooks.append(self.blocks[start].register_forward_pre_hook(substitute, with_kwargs=True))
        if capture is not None:
            def keep(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                captured.append(_hidden(args, kwargs).detach().clone())

            hooks.append(self.blocks[capture].register_forward_pre_hook(keep, with_kwargs=True))
        if stop is not None:
            def halt(_m: nn.Module, _a: tuple, _k: dict) -> None:
                raise _Stop  # after `keep` (hooks run in registration order)

            hooks.append(self.blocks[stop].register_forward_pre_hook(halt, with_kwargs=True))
        total, tokens = 0.0, 0
        try:
            with self._skipping(start):
                for i, batch in enumerate(self.batches):
                    batch_index[0] = i
                    try:
                        logits = self.tm(input_ids=batch, use_cache=False).logits[:, :-1].float()
                    except _Stop:
                        continue
                    targets = batch[:, 1:]
                    total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                             reduction="sum").item()
                    tokens += targets.numel()
        finally:
            for h in hooks:
                h.remove()
        return PassResult(None if stop is not None else total, tokens, self.cost(start, stop), captured)

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
                        "block-input caching needs blocks that return the hidden state alone (use paper mode)")
