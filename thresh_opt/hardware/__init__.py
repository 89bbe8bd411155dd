"""The hardware model: SENECA energy and latency per token from model dimensions and per-module sparsity.

Works from dimensions and sparsities alone (no torch, no models), so any layer above can use it.
"""

from thresh_opt.hardware.dims import (
    DenseWork,
    LinearSite,
    ModelDims,
    dense_work,
    linear_sites,
    resolve_sparsity,
    sites_from_placement,
)
from thresh_opt.hardware.profile import DEFAULT_PROFILE, Constant, HardwareProfile, load_profile
from thresh_opt.hardware.seneca import WORK_KINDS, Comparison, Cost, Estimate, SiteCost, compare, estimate, place

__all__ = [
    "DEFAULT_PROFILE",
    "WORK_KINDS",
    "Comparison",
    "Constant",
    "Cost",
    "DenseWork",
    "Estimate",
    "HardwareProfile",
    "LinearSite",
    "ModelDims",
    "SiteCost",
    "compare",
    "dense_work",
    "estimate",
    "linear_sites",
    "load_profile",
    "place",
    "resolve_sparsity",
    "sites_from_placement",
]
