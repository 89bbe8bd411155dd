"""SENECA energy and latency objectives for a loaded model: its dimensions and sites fed to the hardware model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thresh_opt.errors import UserError
from thresh_opt.hardware import LinearSite, ModelDims, compare, load_profile, sites_from_placement
from thresh_opt.registry import ARCHITECTURES

if TYPE_CHECKING:
    from thresh_opt.models import LoadedModel


def model_dims(loaded: LoadedModel, context: int | None = None,
               head: bool = False) -> tuple[ModelDims, list[LinearSite]]:
    """The hardware model's view of a loaded model: its dimensions and its linear sites."""
    arch = loaded.thresholded.spec.arch
    if arch not in ARCHITECTURES:
        raise UserError(f"{loaded.source}: no hardware model for architecture {arch!r}; "
                        f"supported: {', '.join(ARCHITECTURES.names())}")
    dims = ARCHITECTURES[arch].target.dims(arch, loaded.model.config, context, head)
    return dims, sites_from_placement(loaded.thresholded.sites, dims)


def seneca_cost(
    loaded: LoadedModel, profile: Path | str | None = None, context: int | None = None
) -> Callable[[dict[str, float], dict[str, float]], dict[str, Any]]:
    """A function (per-module sparsity, dense per-module sparsity) -> energy (nJ), latency (us) and gains."""
    dims, sites = model_dims(loaded, context)
    prof = load_profile(profile)

    def cost(sparsity: dict[str, float], dense_sparsity: dict[str, float]) -> dict[str, Any]:
        c = compare(dims, sparsity, dense_sparsity, prof, sites)
        return {
            "energy": c.thresholded.energy_j * 1e9,
            "latency": c.thresholded.latency_s * 1e6,
            "dense_energy": c.baseline.energy_j * 1e9,
            "dense_latency": c.baseline.latency_s * 1e6,
            "energy_gain": c.energy_gain,
            "latency_gain": c.latency_gain,
            "cores": c.thresholded.cores,
        }

    return cost
