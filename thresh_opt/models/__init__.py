"""Models: placement specs, the thresholded wrapper, loading (hub, local, embedded)."""

from thresh_opt.models.loading import LoadedModel, embedded_models, heldout_text, load_model
from thresh_opt.models.specs import PlacementSpec, Site, builtin_specs, load_spec, resolve_sites, spec_for
from thresh_opt.models.thresholded import SparsityReport, ThresholdedModel

__all__ = [
    "LoadedModel",
    "PlacementSpec",
    "Site",
    "SparsityReport",
    "ThresholdedModel",
    "builtin_specs",
    "embedded_models",
    "heldout_text",
    "load_model",
    "load_spec",
    "resolve_sites",
    "spec_for",
]
