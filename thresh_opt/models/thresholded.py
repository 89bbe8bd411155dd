"""A Hugging Face model whose placement-site tensors are thresholded in place, with zero counting."""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from thresh_opt.errors import UserError
from thresh_opt.models.criterion import Criterion, check_criterion, site_scales
from thresh_opt.models.specs import PlacementSpec, Site, resolve_sites, spec_for

Observer = Callable[[int, torch.Tensor, "torch.Tensor | None"], None]


@dataclass(frozen=True)
class Counts:
    """Zero counts of the passes counted since a reset: per site (in site order) the exact zeros and the
    channel width, and the real tokens seen. Incremental evaluation keeps them with cached block inputs
    (the sites of skipped blocks are not counted again) and merges them."""

    zeros: tuple[int, ...]
    channels: tuple[int, ...]
    tokens: int

    def merged(self, upstream: Counts, sites: int) -> Counts:
        """These counts with the first `sites` sites taken from `upstream` (same tokens)."""
        return Counts(upstream.zeros[:sites] + self.zeros[sites:], upstream.channels[:sites] + self.channels[sites:],
                      self.tokens)


@dataclass(frozen=True)
class SparsityReport:
    """Fractions of exact zeros in the thresholded tensors over the real (non-padding) tokens seen."""

    per_module: dict[str, float]
    per_kind: dict[str, float]  # MAC-weighted over the blocks
    mac_weighted: float
    unweighted: float
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "mac_weighted": self.mac_weighted,
            "unweighted": self.unweighted,
            "tokens": self.tokens,
            "per_kind": self.per_kind,
            "per_module": self.per_module,
        }


class ThresholdedModel:
    """Wraps a loaded causal LM (no weight copy) and zeroes every site input with |x| <= its threshold
    (criterion ``magnitude``), or with |x| * s <= its threshold, s the per-channel column norms of the
    site's consuming maps (``weight_norm``, see `thresh_opt.models.criterion`).

    Thresholds change in place between forward passes; all-zero thresholds leave the model's
    computation untouched. The wrapped model can also be called directly (lm-eval does): the hooks
    live on it until `remove()`.

    Example:
        >>> tm = ThresholdedModel(model)                      # doctest: +SKIP
        >>> tm.set_thresholds({"blocks.0.att.key": 0.05})     # doctest: +SKIP
        >>> with tm.counting():                               # doctest: +SKIP
        ...     tm(input_ids=ids)
        >>> tm.sparsity().mac_weighted                        # doctest: +SKIP

    Args:
        model: a loaded Hugging Face causal LM.
        spec: its placement spec; found from the model's class when omitted.
        criterion: what thresholds are compared with (see `set_criterion`).
    """

    def __init__(self, model: nn.Module, spec: PlacementSpec | None = None,
                 criterion: Criterion = "magnitude") -> None:
        self.model = model
        self.spec = spec or spec_for(model)
        self.sites: list[Site] = resolve_sites(model, self.spec)
        self.names: list[str] = [s.name for s in self.sites]
        self._index = {n: i for i, n in enumerate(self.names)}
        self._t = [0.0] * len(self.sites)
        self._criterion: Criterion = "magnitude"
        self._scales: list[torch.Tensor | None] = [None] * len(self.sites)
        self.set_criterion(criterion)
        self._observers: list[Observer] = []
        self._transforms: list[Callable[[int, torch.Tensor], torch.Tensor]] = []
        self._mask: torch.Tensor | None = None
        self._tokens_now = 0
        self.tokens_run = 0  # every token fed to the model (padding too), never reset: the work done
        self.reset_counts()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attach()

    # ---- thresholds -------------------------------------------------------------------------
    @property
    def thresholds(self) -> dict[str, float]:
        """Current thresholds by module name."""
        return dict(zip(self.names, self._t))

    def set_thresholds(self, values: Mapping[str, float] | Sequence[float] | torch.Tensor) -> None:
        """Set some (mapping) or all (vector in site order) thresholds; others keep their values."""
        if isinstance(values, Mapping):
            unknown = [k for k in values if k not in self._index]
            if unknown:
                close = difflib.get_close_matches(unknown[0], self.names, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else f"; valid names look like {self.names[0]}"
                raise UserError(f"unknown module name {unknown[0]!r} in thresholds{hint}")
            items = [(self._index[k], v) for k, v in values.items()]
        else:
            vector = values.tolist() if isinstance(values, torch.Tensor) else list(values)
            if len(vector) != len(self.names):
                raise UserError(f"threshold vector has {len(vector)} values; this model has {len(self.names)} modules")
            items = list(enumerate(vector))
        checked = []
        for i, v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise UserError(f"threshold for {self.names[i]} is {v!r}: thresholds must be finite numbers >= 0")
            checked.append((i, float(v)))
        for i, v in checked:  # all or nothing: a bad value changes no threshold
            self._t[i] = v

    def reset_thresholds(self) -> None:
        """Back to the dense model (all thresholds 0)."""
        self._t = [0.0] * len(self.sites)

    # ---- criterion ----------------------------------------------------------------------------
    @property
    def criterion(self) -> Criterion:
        """What thresholds are compared with: ``magnitude`` (|x|) or ``weight_norm`` (|x| * column norm)."""
        return self._criterion

    @property
    def scales(self) -> list[torch.Tensor | None]:
        """Per site (site order), the per-channel factor of the criterion's score (None: |x| alone)."""
        return list(self._scales)

    def set_criterion(self, criterion: str) -> None:
        """Compare thresholds with |x| (``magnitude``) or |x| * s (``weight_norm``; s computed once from the
        weights, so set it again after changing them). Thresholds keep their values, which mean something
        else under the other criterion: take new ones from statistics measured under it."""
        name = check_criterion(criterion)
        if name != self._criterion:
            self._scales = site_scales(self.model, self.spec, name)
            self._criterion = name

    def score(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The criterion's score of site i's input (float32): the value its threshold is compared with."""
        scale = self._scales[i]
        magnitude = x.detach().abs().float()
        return magnitude if scale is None else magnitude * scale.to(magnitude.device)

    def channel_thresholds(self) -> dict[str, torch.Tensor]:
        """Per site with a scaled criterion, the per-input-channel thresholds on |x| that it amounts to
        (t / s, float32 on the CPU): what a consumer without the weights (hardware) compares |x| with. An
        all-zero column gets inf (that input never fires). Empty under ``magnitude`` (one threshold per site)."""
        out = {}
        for name, t, scale in zip(self.names, self._t, self._scales):
            if scale is not None:
                out[name] = t / scale.cpu() if t > 0 else torch.zeros_like(scale, device="cpu")
        return out

    # ---- counting ---------------------------------------------------------------------------
    def reset_counts(self) -> None:
        """Forget the zeros and tokens counted so far."""
        self._zeros: list[torch.Tensor | int] = [0] * len(self.sites)
        self._channels = [0] * len(self.sites)
        self._tokens = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[ThresholdedModel]:
        """Count zeros afresh for the forward passes inside this block."""
        self.reset_counts()
        yield self

    def counts(self) -> Counts:
        """A snapshot of the zeros counted since the last reset."""
        return Counts(tuple(int(z) for z in self._zeros), tuple(self._channels), self._tokens)

    def sparsity(self, counts: Counts | None = None) -> SparsityReport:
        """Per-module and MAC-weighted sparsity of the passes counted since the last reset (or of `counts`)."""
        counts = counts or self.counts()
        if counts.tokens == 0:
            raise RuntimeError("no tokens counted: run a forward pass first")
        per = {
            n: float(z) / (counts.tokens * c) if c else 0.0
            for n, z, c in zip(self.names, counts.zeros, counts.channels)
        }
        macs = [s.macs for s in self.sites]
        weighted = sum(per[s.name] * s.macs for s in self.sites) / sum(macs)
        kinds: dict[str, list[tuple[float, int]]] = {}
        for s in self.sites:
            kinds.setdefault(s.kind, []).append((per[s.name], s.macs))
        per_kind = {k: sum(p * m for p, m in v) / sum(m for _, m in v) for k, v in kinds.items()}
        return SparsityReport(per, per_kind, weighted, sum(per.values()) / len(per), counts.tokens)

    def zero_counts(self) -> dict[str, int]:
        """Exact zeros counted per module since the last reset."""
        return {n: int(z) for n, z in zip(self.names, self._zeros)}

    @property
    def macs(self) -> dict[str, int]:
        """Multiply-accumulates per token of each module's consumers."""
        return {s.name: s.macs for s in self.sites}

    # ---- forward ------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the wrapped model."""
        return self.model(*args, **kwargs)

    @contextlib.contextmanager
    def observe(self, observer: Observer) -> Iterator[None]:
        """Call observer(site index, input before thresholding, token mask) at every site in this block."""
        self._observers.append(observer)
        try:
            yield
        finally:
            self._observers.remove(observer)

    @contextlib.contextmanager
    def transformed(self, transform: Callable[[int, torch.Tensor], torch.Tensor]) -> Iterator[None]:
        """Replace every site's tensor by transform(site index, tensor) after thresholding, before zeros
        are counted (a differentiable threshold for training uses this)."""
        self._transforms.append(transform)
        try:
            yield
        finally:
            self._transforms.remove(transform)

    def remove(self) -> None:
        """Take the hooks off the wrapped model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def bare(self) -> Iterator[nn.Module]:
        """The wrapped model with no hooks at all inside this block (the dense reference); hooks and
        thresholds are back afterwards."""
        self.remove()
        try:
            yield self.model
        finally:
            self._attach()

    def _attach(self) -> None:
        self._handles = [self.model.register_forward_pre_hook(self._capture_inputs, with_kwargs=True)]
        self._handles += [self._install(i, site) for i, site in enumerate(self.sites)]

    # ---- hooks ----------------------------------------------------------------------------------
    def _capture_inputs(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        mask = kwargs.get("attention_mask")
        if mask is not None and ids is not None:
            mask = mask[:, -ids.shape[1] :].bool()  # a cached generation step passes the whole mask
            self._tokens_now = int(mask.sum())
        elif ids is not None:
            self._tokens_now = ids.shape[0] * ids.shape[1]
        if ids is not None:
            self.tokens_run += ids.shape[0] * ids.shape[1]
        self._mask = mask
        self._tokens += self._tokens_now

    def _apply(self, i: int, x: torch.Tensor) -> torch.Tensor:
        mask = self._mask
        if mask is not None and mask.shape != x.shape[:-1]:
            # some models flatten (batch, time) before a linear map (OPT's fc1/fc2)
            mask = mask.reshape(x.shape[:-1]) if mask.numel() == x.shape[:-1].numel() else None
        for observer in self._observers:
            observer(i, x, mask)
        t = self._t[i]
        if t > 0:
            scale = self._scales[i]
            if scale is None:
                x = F.hardshrink(x, t)  # x * (|x| > t) in one kernel
            else:  # the same float32 score the statistics measure, so a quantile gives its sparsity
                x = x.masked_fill(self.score(i, x) <= t, 0.0)
        for transform in self._transforms:
            x = transform(i, x)
        # per-token non-zero counts (cheap to mask afterwards); bool->uint8 sums beat count_nonzero on CPU
        nonzero = x.bool().view(torch.uint8).sum(dim=-1, dtype=torch.int32)
        if mask is not None:
            nonzero = nonzero * mask
        counted = (nonzero.numel() if mask is None else self._tokens_now) * x.shape[-1]
        self._zeros[i] = self._zeros[i] + (counted - nonzero.sum())
        self._channels[i] = x.shape[-1]
        return x

    def _install(self, i: int, site: Site) -> torch.utils.hooks.RemovableHandle:
        if site.where == "output":

            def post(_m: nn.Module, _a: tuple, out: Any) -> Any:
                if isinstance(out, tuple):
                    return (self._apply(i, out[0]), *out[1:])
                return self._apply(i, out)

            return site.module.register_forward_hook(post)

        def pre(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if site.arg is not None and site.arg in kwargs:
                kwargs[site.arg] = self._apply(i, kwargs[site.arg])
                return args, kwargs
            return (self._apply(i, args[0]), *args[1:]), kwargs

        return site.module.register_forward_pre_hook(pre, with_kwargs=True)
