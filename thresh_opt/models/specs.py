"""Placement specs: where each architecture's thresholds sit, declared as YAML data and resolved on a model."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from thresh_opt.config import PACKAGE_DIR, load_config
from thresh_opt.errors import UserError

PLACEMENTS_DIR = PACKAGE_DIR / "models" / "placements"


class SiteSpec(BaseModel):
    """One thresholded tensor of a block: where to hook it and which linear maps consume it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.]+$")
    tensor: str = ""
    hook: str
    where: Literal["input", "output"] = "input"
    arg: str | None = None
    consumers: list[str] = Field(min_length=1)


class PlacementSpec(BaseModel):
    """The thresholded tensors of one architecture, in the greedy algorithm's order within a block."""

    model_config = ConfigDict(extra="forbid")

    arch: str
    model_classes: list[str] = Field(min_length=1)
    blocks: str
    name_prefix: str
    sites: list[SiteSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Site:
    """A placement site resolved on a loaded model: one threshold."""

    name: str  # blocks.3.att.key
    kind: str  # att.key
    block: int
    module: nn.Module  # the module whose input (or output) is thresholded
    where: str
    arg: str | None
    macs: int  # multiply-accumulates per token of the consuming linear maps


def load_spec(path: Path) -> PlacementSpec:
    """Load and validate a placement spec file."""
    return load_config(path, PlacementSpec)


@cache
def builtin_specs() -> dict[str, PlacementSpec]:
    """The shipped specs, keyed by architecture name."""
    specs = [load_spec(p) for p in sorted(PLACEMENTS_DIR.glob("*.yaml"))]
    return {s.arch: s for s in specs}


def spec_for(model: nn.Module) -> PlacementSpec:
    """The shipped spec whose model classes include this model's class."""
    cls = type(model).__name__
    for spec in builtin_specs().values():
        if cls in spec.model_classes:
            return spec
    supported = ", ".join(f"{c} ({s.arch})" for s in builtin_specs().values() for c in s.model_classes[:1])
    raise UserError(
        f"no placement spec for {cls}; supported: {supported}. To add one, write a placement YAML "
        f"like {PLACEMENTS_DIR / 'opt.yaml'} (blocks path, and per site: hook module and consumers) "
        "and pass it with --placement FILE"
    )


def _submodule(root: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UserError(f"placement spec: {what} {path!r} is not a submodule of {type(root).__name__}") from None


def _macs(module: nn.Module) -> int:
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        raise UserError(f"placement spec: consumer {type(module).__name__} is not a linear map with a 2-D weight")
    return int(weight.shape[0] * weight.shape[1])


def blocks_of(model: nn.Module, spec: PlacementSpec) -> nn.ModuleList:
    """The model's blocks, as the spec's `blocks` path names them."""
    blocks = _submodule(model, spec.blocks, "blocks")
    if not isinstance(blocks, nn.ModuleList | nn.Sequential):
        raise UserError(f"placement spec: blocks {spec.blocks!r} is a {type(blocks).__name__}, not a list of blocks")
    return blocks  # type: ignore[return-value]  # a Sequential iterates and indexes like a ModuleList


def resolve_sites(model: nn.Module, spec: PlacementSpec) -> list[Site]:
    """Every threshold site of the model, block by block in the spec's order."""
    blocks = blocks_of(model, spec)
    sites = []
    for i, block in enumerate(blocks):
        for s in spec.sites:
            consumers = [_submodule(block, c, "consumer") for c in s.consumers]
            sites.append(
                Site(
                    name=f"{spec.name_prefix}.{i}.{s.name}",
                    kind=s.name,
                    block=i,
                    module=_submodule(block, s.hook, "hook"),
                    where=s.where,
                    arg=s.arg,
                    macs=sum(_macs(c) for c in consumers),
                )
            )
    return sites
