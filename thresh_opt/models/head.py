"""Next-token loss without the batch's full-vocabulary logits.

A causal LM's forward ends with its output head, a linear map to the vocabulary: for 8 x 1,024 tokens and
RWKV-4's 50,277 tokens that is 1.6 GB of float32 logits, more than the rest of the pass holds. When only
the loss is needed, the head's input is caught (a pre-hook ends the forward there) and the head is applied a
few hundred tokens at a time, each slice's cross-entropy summed and its logits freed.

The shortcut is taken only where it gives the model's own logits: the head must be a plain linear map and a
probe on one row must match the full forward. Models that post-process logits (soft-capping, scaling) fail
the probe and keep the full forward.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

SLICE_BYTES = 64 * 2**20  # float32 logits per slice


class _HeadInput(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Carries the head's input out of the forward."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden


def output_embeddings(model: nn.Module) -> nn.Module | None:
    """A Hugging Face model's head (``get_output_embeddings()``), or None for a model without one."""
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


class HeadLoss:
    """Summed next-token cross-entropy of a causal LM, computed from its head's input in slices.

    Args:
        model: the Hugging Face model (its ``get_output_embeddings()`` is the head).
        probe: token ids of one or more rows, to check the shortcut against the full forward.
        sliced: False keeps the full forward (the logits of a whole batch at once).
    """

    def __init__(self, model: nn.Module, probe: torch.Tensor | None = None, sliced: bool = True) -> None:
        head = output_embeddings(model) if sliced else None
        self.model = model
        self.head: nn.Linear | None = head if isinstance(head, nn.Linear) else None
        if self.head is not None and probe is not None and not self._agrees(probe[:1]):
            self.head = None

    @classmethod
    def of(cls, model: nn.Module, probe: torch.Tensor) -> HeadLoss:
        """The model's HeadLoss, probed once per model (on the first `probe` it is given)."""
        known = _BY_MODEL.get(model)
        if known is None:
            known = _BY_MODEL[model] = cls(model, probe)
        return known

    @property
    def sliced(self) -> bool:
        """True when the loss comes from the head's input, slice by slice."""
        return self.head is not None

    @torch.no_grad()
    def _agrees(self, ids: torch.Tensor) -> bool:
        full = self.model(input_ids=ids, use_cache=False).logits.float()
        hidden = self.head_input(lambda: self.model(input_ids=ids, use_cache=False))
        assert self.head is not None  # only probed with a linear head
        mine = F.linear(hidden, self.head.weight, self.head.bias).float()
        return mine.shape == full.shape and torch.allclose(mine, full, rtol=1e-4, atol=1e-4)

    def head_input(self, forward: Callable[[], Any]) -> torch.Tensor:
        """Run `forward` (a call of the model) up to its head; the head's input."""
        assert self.head is not None

        def catch(_m: nn.Module, args: tuple) -> None:
            raise _HeadInput(args[0])

        handle = self.head.register_forward_pre_hook(catch)
        try:
            forward()
        except _HeadInput as caught:
            return caught.hidden
        finally:
            handle.remove()
        raise RuntimeError("the model's forward did not reach its output head")

    @torch.no_grad()
    def loss_sum(self, forward: Callable[[], Any], ids: torch.Tensor) -> float:
        """The summed cross-entropy of every next token of `ids` (batch, positions), `forward` being the
        model's call on them (it may raise whatever a caller's hooks raise to end it early)."""
        targets = ids[:, 1:]
        if self.head is None:
            logits = forward().logits
            return sum(F.cross_entropy(logits[row, :-1].float(), targets[row], reduction="sum").item()
                       for row in range(logits.shape[0]))  # no float copy of the whole batch's logits
        hidden = self.head_input(forward)[:, :-1].reshape(-1, self.head.in_features)
        flat = targets.reshape(-1)
        step = max(1, SLICE_BYTES // (4 * self.head.out_features))
        total = 0.0
        for i in range(0, flat.numel(), step):
            logits = F.linear(hidden[i:i + step], self.head.weight, self.head.bias)
            total += F.cross_entropy(logits.float(), flat[i:i + step], reduction="sum").item()
        return total


_BY_MODEL: weakref.WeakKeyDictionary[nn.Module, HeadLoss] = weakref.WeakKeyDictionary()
