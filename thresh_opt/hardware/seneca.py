"""The SENECA cost model: energy and latency per token from layer dimensions and per-module sparsity.

Mapping (each choice an assumption, stated in the README):
- Weights stay in data memory and never move. Each linear map is split by output neurons over
  ceil(weight bits / usable bits per core) cores; when a map does not fit one core it gets more cores,
  never streamed weights (at SENSIM's 300 pJ/bit, one streamed FP16 weight costs ~1,700 synaptic
  operations and would swamp everything else). The system has just the cores that the weights (and
  OPT's attention cache) need: spreading a map further only multiplies the cores each event visits.
- Event-driven linear map, density rho = 1 - sparsity: events = rho * N_in, synaptic operations =
  rho * N_in * N_out; every event goes to every core of the map (NoC packet, capture, RISC-V dispatch
  there), while each output is read out and reset once per token whatever the sparsity.
- Latency: the cycles of all the work spread evenly over the system's cores and their NPEs (design.md 2:
  SOps / (NPEs * cores) plus event overhead): the time per token of a placement that keeps every core
  busy, pipelined over tokens. NoC transfers overlap computation. One token's own path, layer after
  layer on each map's cores, is longer, and its gain follows the unweighted density ratio instead.
- Thresholds: every input neuron compares its value with its own threshold, so a per-input-channel
  threshold (criterion ``weight_norm``: t / ||W[:, i]||) costs the same as one per module; a criterion
  changes energy and latency only through the sparsity it gives.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from thresh_opt.errors import UserError
from thresh_opt.hardware.dims import (
    DenseWork,
    LinearSite,
    ModelDims,
    dense_work,
    kv_cache_bits,
    linear_sites,
    resolve_sparsity,
)
from thresh_opt.hardware.profile import HardwareProfile, load_profile

THRESHOLD_COST_NOTE = ("per-input-channel thresholds (criterion weight_norm: t / ||W[:, i]||) cost nothing extra: "
                       "every neuron carries its own threshold; a criterion changes energy and latency only "
                       "through the sparsity it gives")
WORK_KINDS = ("synops", "events", "noc", "readout", "elementwise", "recurrence", "attention", "embedding")


@dataclass(frozen=True)
class Cost:
    """Energy (J) and latency (s) per token of one part of the model."""

    energy_j: float = 0.0
    latency_s: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.energy_j + other.energy_j, self.latency_s + other.latency_s)

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready dict."""
        return {"energy_j": self.energy_j, "latency_s": self.latency_s}


@dataclass(frozen=True)
class SiteCost:
    """One linear map of one token: its placement, its counts and its cost."""

    name: str
    kind: str
    block: int | None
    sparsity: float
    cores: int
    events: float
    synops: float
    noc_packets: float
    cost: Cost

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"name": self.name, "kind": self.kind, "block": self.block, "sparsity": self.sparsity,
                "cores": self.cores, "events": self.events, "synops": self.synops,
                "noc_packets": self.noc_packets, **self.cost.to_dict()}


@dataclass(frozen=True)
class Estimate:
    """Cost of one token on the profiled hardware, with breakdowns that each sum to the total."""

    energy_j: float
    latency_s: float
    cores: int
    counts: dict[str, float]  # events, synops, weight_loads, noc_packets, npe_ops, memory_accesses
    per_work: dict[str, Cost]  # synops, events, noc, readout, elementwise, recurrence, attention, embedding
    per_kind: dict[str, Cost]  # att.key, ..., layer_norm, wkv, attention, head
    per_block: list[Cost]  # blocks 0 .. L-1 (the head and embedding are outside every block)
    sites: list[SiteCost] = field(repr=False)

    def to_dict(self, sites: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; per-site details only when asked."""
        out: dict[str, Any] = {
            "energy_j": self.energy_j, "latency_s": self.latency_s, "cores": self.cores, "counts": self.counts,
            "per_work": {k: v.to_dict() for k, v in self.per_work.items()},
            "per_kind": {k: v.to_dict() for k, v in self.per_kind.items()},
            "per_block": [c.to_dict() for c in self.per_block],
        }
        if sites:
            out["sites"] = [s.to_dict() for s in self.sites]
        return out


@dataclass(frozen=True)
class Comparison:
    """The baseline and the thresholded run on the same mapping, and their gains (baseline / thresholded)."""

    baseline: Estimate
    thresholded: Estimate

    @property
    def energy_gain(self) -> float:
        """Baseline energy over thresholded energy."""
        return self.baseline.energy_j / self.thresholded.energy_j

    @property
    def latency_gain(self) -> float:
        """Baseline latency over thresholded latency."""
        return self.baseline.latency_s / self.thresholded.latency_s

    def to_dict(self, sites: bool = False) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"gains": {"energy": self.energy_gain, "latency": self.latency_gain},
                "baseline": self.baseline.to_dict(sites), "thresholded": self.thresholded.to_dict(sites)}


def place(sites: list[LinearSite], dims: ModelDims, profile: HardwareProfile) -> tuple[dict[str, int], int]:
    """Cores per linear map (by name) and cores in the system; independent of sparsity by design."""
    core = profile.core
    usable = core.data_memory_bits.value * (1.0 - core.reserved_memory_fraction.value)
    bits = core.weight_bits.value
    need = {}
    for s in sites:
        if s.n_in * bits > usable:
            raise UserError(f"{s.name}: one output's {s.n_in} weights ({s.n_in * bits:.0f} bits) exceed a core's "
                            f"usable data memory ({usable:.0f} bits); use a profile with more data memory")
        need[s.name] = math.ceil(s.weights * bits / usable)
    cache_cores = sum(math.ceil(b / usable) for b in kv_cache_bits(dims, bits))
    return need, sum(need.values()) + cache_cores


@dataclass
class _Ledger:
    """Work booked as energy (pJ) and cycles of all cores, kept as a Cost under (block, kind, work)."""

    seconds_per_cycle: float  # the work's cycles spread over every core of the system
    items: list[tuple[int | None, str, str, Cost]] = field(default_factory=list)

    def book(self, block: int | None, kind: str, work: str, energy_pj: float, cycles: float) -> Cost:
        cost = Cost(energy_pj * 1e-12, cycles * self.seconds_per_cycle)
        self.items.append((block, kind, work, cost))
        return cost


def _linear(s: LinearSite, sparsity: float, cores: int, p: HardwareProfile, ledger: _Ledger) -> SiteCost:
    e, w, npes = p.energy_pj, p.work, p.core.npes.value
    rho = 1.0 - sparsity
    events = rho * s.n_in
    synops = events * s.n_out
    packets = events * cores
    instructions = packets * w.event_instructions.value
    kind = s.kind
    parts = [
        ledger.book(s.block, kind, "synops", synops * e.synop.value, synops * w.synop_cycles.value / npes),
        ledger.book(s.block, kind, "events",
                    events * e.event_generation.value + packets * e.event_capture.value
                    + instructions * e.riscv_instruction.value + packets * e.riscv_memory_access.value,
                    instructions),
        ledger.book(s.block, kind, "noc", packets * e.noc_event.value, 0.0),
        # each output's accumulator is read once and reset for the next token
        ledger.book(s.block, kind, "readout", s.n_out * (e.memory_load.value + e.memory_store.value),
                    2 * s.n_out * w.npe_op_cycles.value / npes),
    ]
    return SiteCost(s.name, kind, s.block, sparsity, cores, events, synops, packets, sum(parts, Cost()))


def _dense(d: DenseWork, p: HardwareProfile, ledger: _Ledger) -> float:
    e, w = p.energy_pj, p.work
    ops = d.ops + d.transcendentals * w.transcendental_ops.value
    energy = ops * e.npe_op.value + d.loads * e.memory_load.value + d.stores * e.memory_store.value
    ledger.book(d.block, d.kind, d.work, energy, ops * w.npe_op_cycles.value / p.core.npes.value)
    return ops


def estimate(
    dims: ModelDims,
    sparsity: Mapping[str, object] | None = None,
    profile: HardwareProfile | None = None,
    sites: list[LinearSite] | None = None,
    source: str = "sparsity",
) -> Estimate:
    """Energy and latency of one token with the given per-module sparsity.

    Example:
        >>> dims = ModelDims("rwkv4", layers=32, hidden=2560)
        >>> dense, sparse = estimate(dims), estimate(dims, {"att.key": 0.6, "ffn.key": 0.4})
        >>> sparse.energy_j < dense.energy_j
        True

    Args:
        dims: the model's dimensions.
        sparsity: {module kind or full module name: fraction of zero inputs}; names override kinds,
            modules not given are dense. None: every module dense.
        profile: hardware constants (the shipped SENECA profile when None).
        sites: the linear maps, e.g. from `sites_from_placement` for a loaded model (from dims when None).
        source: what to name in errors about `sparsity` (a file name).
    """
    profile = profile or load_profile()
    sites = sites if sites is not None else linear_sites(dims)
    per_site = resolve_sparsity(sites, sparsity or {}, source)
    cores, system_cores = place(sites, dims, profile)
    ledger = _Ledger(1.0 / (system_cores * profile.core.clock_hz.value))
    site_costs = [_linear(s, per_site.get(s.name, 0.0), cores[s.name], profile, ledger) for s in sites]
    dense = dense_work(dims)
    npe_ops = sum(_dense(d, profile, ledger) for d in dense)
    per_work = {k: Cost() for k in WORK_KINDS}
    per_kind: dict[str, Cost] = {}
    per_block = [Cost() for _ in range(dims.layers)]
    for block, kind, work, c in ledger.items:
        per_work[work] += c
        per_kind[kind] = per_kind.get(kind, Cost()) + c
        if block is not None:
            per_block[block] += c
    total = sum(per_work.values(), Cost())
    counts = {
        "events": sum(s.events for s in site_costs),
        "synops": sum(s.synops for s in site_costs),
        "weight_loads": sum(s.synops for s in site_costs),  # one weight read per synaptic operation
        "noc_packets": sum(s.noc_packets for s in site_costs),
        "npe_ops": npe_ops,
        "memory_accesses": sum(d.loads + d.stores for d in dense) + 2 * sum(s.n_out for s in sites),
    }
    return Estimate(total.energy_j, total.latency_s, system_cores, counts, per_work, per_kind, per_block, site_costs)


def compare(
    dims: ModelDims,
    thresholded: Mapping[str, object],
    baseline: Mapping[str, object] | None = None,
    profile: HardwareProfile | None = None,
    sites: list[LinearSite] | None = None,
    sources: tuple[str, str] = ("sparsity", "baseline"),
) -> Comparison:
    """Baseline (dense unless given) against thresholded sparsity, on the same mapping and profile."""
    profile = profile or load_profile()
    sites = sites if sites is not None else linear_sites(dims)
    return Comparison(
        baseline=estimate(dims, baseline, profile, sites, sources[1]),
        thresholded=estimate(dims, thresholded, profile, sites, sources[0]),
    )
