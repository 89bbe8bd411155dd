"""Threshold criteria: what a site's threshold is compared with, per input channel.

- ``magnitude`` (TEAL, the published procedure): zero x_i when |x_i| <= t.
- ``weight_norm`` (WINA, design.md 3): zero x_i when |x_i| * s_i <= t, s_i the L2 norm of column i of
  the consuming map's weight, i.e. of what input i adds to the map's output per unit. A site feeding several
  maps (OPT's q/k/v, a fused input) takes the root of their summed squared column norms: the column norm of
  the maps stacked into one, so that the score bounds the L2 change of all their outputs together.

On hardware the scaled criterion is a per-input-channel threshold t / s_i (SENECA: every neuron carries
its own threshold, at no extra cost).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import nn

from thresh_opt.errors import UserError
from thresh_opt.models.specs import PlacementSpec, blocks_of

Criterion = Literal["magnitude", "weight_norm"]
CRITERIA: tuple[str, ...] = get_args(Criterion)


def check_criterion(name: str, what: str = "criterion") -> Criterion:
    """`name` if it is a criterion, else a UserError naming `what` and the allowed values."""
    if name not in CRITERIA:
        raise UserError(f"{what}: unknown criterion {name!r}; allowed: {', '.join(CRITERIA)}")
    return name  # type: ignore[return-value]  # checked against the Literal's values just above


def _input_columns(module: nn.Module) -> torch.Tensor:
    """The weight with one row per input channel: (in, out)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)  # resolve_sites checked every consumer for a 2-D weight
    # transformers' Conv1D (GPT-2) stores (in, out); nn.Linear stores (out, in)
    return weight if type(module).__name__ == "Conv1D" else weight.t()


def column_norms(consumers: list[nn.Module]) -> torch.Tensor:
    """Per input channel, the L2 norm of its weights in all consuming maps together (float32)."""
    squares = [_input_columns(c).detach().float().square().sum(dim=1) for c in consumers]
    widths = {s.shape[0] for s in squares}
    if len(widths) != 1:
        raise UserError(f"placement spec: consumers {', '.join(type(c).__name__ for c in consumers)} take inputs "
                        f"of different widths {sorted(widths)}: they cannot share one thresholded tensor")
    return torch.stack(squares).sum(dim=0).sqrt()


def site_scales(model: nn.Module, spec: PlacementSpec, criterion: Criterion) -> list[torch.Tensor | None]:
    """Per site (in resolve_sites order), the per-channel scale of the criterion's score; None for magnitude
    (no scale: the mask is |x| <= t as it always was)."""
    check_criterion(criterion)
    blocks = blocks_of(model, spec)
    n = len(blocks) * len(spec.sites)
    if criterion == "magnitude":
        return [None] * n
    return [column_norms([block.get_submodule(c) for c in s.consumers]) for block in blocks for s in spec.sites]
