"""Model dimensions -> the linear maps and the dense work of one token, per architecture (design.md 1.1)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from thresh_opt.errors import UserError
from thresh_opt.registry import ARCHITECTURES

DEFAULT_CONTEXT = 1024  # OPT only: positions a token attends to when no context length is given


class ArchitectureModel(Protocol):
    """What the hardware model reads of a registered architecture (``thresh_opt.architectures``)."""

    block_prefix: str  # module names: blocks.3.att.key
    linear: Mapping[str, tuple[str, str]]  # per block: kind -> (input, output) width codes d, f, 3d
    dense_input: frozenset[str]  # kinds whose input is never thresholded
    attention: bool  # keeps a KV cache

    def block_work(self, dims: ModelDims, block: int) -> list[DenseWork]:
        """A block's per-token work outside its linear maps."""


def _arch(name: str) -> ArchitectureModel:
    return ARCHITECTURES[name].target


@dataclass(frozen=True)
class ModelDims:
    """What the cost model needs to know about a model.

    Example:
        >>> ModelDims("rwkv4", layers=32, hidden=2560).ffn
        10240

    Args:
        arch: a registered architecture (``thresh_opt.registry.ARCHITECTURES``: rwkv4, opt).
        layers: blocks L.
        hidden: model width d.
        ffn: feed-forward width f (default 4d).
        context: OPT only, positions each token attends to (default 1024); RWKV ignores it.
        heads: OPT attention heads (default d // 64).
        vocab: vocabulary size; when given the head (d x vocab, dense input) and the embedding read are
            counted, otherwise both are left out of every total.
    """

    arch: str
    layers: int
    hidden: int
    ffn: int | None = None
    context: int | None = None
    heads: int | None = None
    vocab: int | None = None

    def __post_init__(self) -> None:
        ARCHITECTURES[self.arch]  # UserError naming the allowed
        for field in ("layers", "hidden", "ffn", "context", "heads", "vocab"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"model dimension {field}={value!r}: allowed a whole number >= 1")
        if self.ffn is None:
            object.__setattr__(self, "ffn", 4 * self.hidden)
        if _arch(self.arch).attention:
            object.__setattr__(self, "context", self.context or DEFAULT_CONTEXT)
            object.__setattr__(self, "heads", self.heads or max(1, self.hidden // 64))

    # The defaults __post_init__ filled in, typed as the numbers they are (one place for them).
    @property
    def ffn_width(self) -> int:
        """Feed-forward width f."""
        assert self.ffn is not None
        return self.ffn

    @property
    def attended(self) -> int:
        """Positions a token attends to (attention architectures)."""
        assert self.context is not None, f"{self.arch} keeps no attention cache"
        return self.context

    @property
    def head_count(self) -> int:
        """Attention heads (attention architectures)."""
        assert self.heads is not None, f"{self.arch} has no attention heads"
        return self.heads

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {k: getattr(self, k) for k in ("arch", "layers", "hidden", "ffn", "context", "heads", "vocab")}


@dataclass(frozen=True)
class LinearSite:
    """One linear map y = W x of one token: `n_in` inputs (the thresholded tensor) and `n_out` outputs."""

    name: str  # blocks.3.att.key
    kind: str  # att.key
    block: int | None  # None for the head
    n_in: int
    n_out: int
    thresholded: bool = True

    @property
    def weights(self) -> int:
        """Weights, equal to the multiply-accumulates of a dense token."""
        return self.n_in * self.n_out


@dataclass(frozen=True)
class DenseWork:
    """Work that sparsity does not change: NPE operations, transcendentals and data-memory traffic."""

    name: str  # blocks.3.wkv
    kind: str  # wkv
    work: str  # elementwise, recurrence, attention, embedding
    block: int | None
    ops: float
    transcendentals: float = 0.0
    loads: float = 0.0
    stores: float = 0.0


class PlacementSite(Protocol):
    """What sites_from_placement reads from a model's placement site (thresh_opt.models.Site)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def block(self) -> int: ...
    @property
    def macs(self) -> int: ...


def _width(dims: ModelDims, code: str) -> int:
    return {"d": dims.hidden, "f": dims.ffn_width, "3d": 3 * dims.hidden}[code]


def linear_sites(dims: ModelDims) -> list[LinearSite]:
    """Every linear map of one token, block by block, from the dimensions alone."""
    arch = _arch(dims.arch)
    sites = [
        LinearSite(f"{arch.block_prefix}.{i}.{kind}", kind, i, _width(dims, a), _width(dims, b),
                   kind not in arch.dense_input)
        for i in range(dims.layers)
        for kind, (a, b) in arch.linear.items()
    ]
    if dims.vocab:
        sites.append(LinearSite("head", "head", None, dims.hidden, dims.vocab, thresholded=False))
    return sites


def sites_from_placement(placement: Iterable[PlacementSite], dims: ModelDims) -> list[LinearSite]:
    """Linear sites of a loaded model: names, blocks and MACs from its placement sites, input widths and
    the maps that are never thresholded from the dimensions."""
    template = linear_sites(dims)
    n_in = {s.kind: s.n_in for s in template}
    out = []
    for p in placement:
        if p.kind not in n_in or p.macs % n_in[p.kind]:
            raise UserError(f"placement site {p.name} ({p.kind}, {p.macs} MACs) does not match a {dims.arch} "
                            f"model of width {dims.hidden}")
        out.append(LinearSite(p.name, p.kind, p.block, n_in[p.kind], p.macs // n_in[p.kind]))
    dense = [s for s in template if not s.thresholded]
    order = {kind: i for i, kind in enumerate(dict.fromkeys(s.kind for s in template))}
    return sorted(out + dense, key=lambda s: (math.inf if s.block is None else s.block, order[s.kind]))


def elementwise(name: str, kind: str, block: int | None, ops: float, transcendentals: float = 0.0) -> DenseWork:
    """Operations that each read an operand from data memory and write their result back."""
    n = ops + transcendentals
    return DenseWork(name, kind, "elementwise", block, ops, transcendentals, loads=n, stores=n)


def dense_work(dims: ModelDims) -> list[DenseWork]:
    """The per-token work outside the linear maps: norms, then the architecture's own (token shift, gates,
    WKV or attention)."""
    arch, d = _arch(dims.arch), dims.hidden
    out: list[DenseWork] = []
    for i in range(dims.layers):
        # a layer norm: mean, centre, square, sum, scale, gain, bias: ~8 operations per channel
        out.append(elementwise(f"{arch.block_prefix}.{i}.layer_norm", "layer_norm", i, 2 * 8 * d, 2))
        out.extend(arch.block_work(dims, i))
    if dims.vocab:
        out.append(DenseWork("embedding", "embedding", "embedding", None, 0, loads=d, stores=d))
        out.append(elementwise("final_layer_norm", "layer_norm", None, 8 * d, 1))
    return out


def kv_cache_bits(dims: ModelDims, bits: float) -> list[float]:
    """Per block, the data memory of the attention cache (OPT: keys and values of `context` positions)."""
    if not _arch(dims.arch).attention:
        return [0.0] * dims.layers
    return [2.0 * dims.attended * dims.hidden * bits] * dims.layers


def resolve_sparsity(
    sites: list[LinearSite], given: Mapping[str, object], source: str = "sparsity"
) -> dict[str, float]:
    """Per-site sparsity from {kind or full module name: fraction}; names override kinds, absent means 0."""
    thresholded = [s for s in sites if s.thresholded]
    kinds = list(dict.fromkeys(s.kind for s in thresholded))
    names = {s.name for s in thresholded}
    for key, value in given.items():
        if key not in names and key not in kinds:
            example = thresholded[0].name if thresholded else "-"
            raise UserError(f"{source}: unknown module {key!r}; allowed: a module kind ({', '.join(kinds)}) "
                            f"or a full module name such as {example}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise UserError(f"{source}: {key}: {value!r} is not a sparsity; allowed: a number from 0 to 1")
    return {s.name: float(given.get(s.name, given.get(s.kind, 0.0))) for s in thresholded}  # type: ignore[arg-type]  # checked above
