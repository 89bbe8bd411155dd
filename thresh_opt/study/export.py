"""The export format of one thresholds configuration, and its reader.

A folder with:

- ``thresholds.json``: {module name: threshold} (the file `study enqueue` and `evaluate --thresholds` read);
- ``thresholds.safetensors``: each module's threshold as a 1-element tensor under its name; the metadata
  key ``criterion`` names what it is compared with. Under ``weight_norm`` also, per module,
  ``scale/NAME`` (per input channel, the column norm s of the consuming maps) and ``channel/NAME``
  (the per-channel thresholds t / s on |x|, for hardware that compares |x| with a threshold per neuron).

The mask a consumer reproduces: x_i is zeroed when |x_i| <= t (``magnitude``) or |x_i| * s_i <= t
(``weight_norm``, float32, exactly as `thresh_opt.models.ThresholdedModel` computes it); |x_i| <= t / s_i
is the same up to rounding at the boundary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from thresh_opt.errors import UserError

if TYPE_CHECKING:
    from thresh_opt.models import ThresholdedModel

THRESHOLDS_JSON = "thresholds.json"
THRESHOLDS_SAFETENSORS = "thresholds.safetensors"
SCALE_PREFIX, CHANNEL_PREFIX = "scale/", "channel/"


@dataclass(frozen=True)
class ExportedThresholds:
    """A configuration as exported: criterion, per-module thresholds, and per-module channel scales (empty
    under ``magnitude``) and the per-channel thresholds they amount to.

    Example:
        >>> exported = ExportedThresholds.from_model(loaded.thresholded)          # doctest: +SKIP
        >>> exported.write(Path("out")); ExportedThresholds.read(Path("out"))     # doctest: +SKIP

    Args:
        criterion: ``magnitude`` or ``weight_norm``.
        thresholds: module name -> threshold t.
        scales: module name -> per-channel s (weight_norm only).
        channels: module name -> per-channel thresholds t / s on |x| (weight_norm only).
    """

    criterion: str
    thresholds: dict[str, float]
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_model(cls, tm: ThresholdedModel) -> ExportedThresholds:
        """The model's current criterion and thresholds."""
        scales = {n: s.detach().float().cpu() for n, s in zip(tm.names, tm.scales) if s is not None}
        return cls(tm.criterion, tm.thresholds, scales, tm.channel_thresholds())

    def zeroed(self, module: str, x: torch.Tensor) -> torch.Tensor:
        """Which entries of a module's input the configuration zeroes (bool, x's shape)."""
        t = self.thresholds[module]
        magnitude = x.detach().abs().float()
        if t <= 0:  # a zero threshold leaves the tensor as it is (exact zeros stay zeros)
            return magnitude == 0
        if module in self.scales:
            return magnitude * self.scales[module].to(magnitude.device) <= t
        return magnitude <= t

    def write(self, out: Path) -> list[str]:
        """Write the folder's threshold files; returns their names."""
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        (out / THRESHOLDS_JSON).write_text(json.dumps(self.thresholds, indent=1))
        tensors = {k: torch.tensor([v], dtype=torch.float32) for k, v in self.thresholds.items()}
        tensors |= {SCALE_PREFIX + k: v.contiguous() for k, v in self.scales.items()}
        tensors |= {CHANNEL_PREFIX + k: v.contiguous() for k, v in self.channels.items()}
        save_file(tensors, out / THRESHOLDS_SAFETENSORS, metadata={"criterion": self.criterion})
        return [THRESHOLDS_JSON, THRESHOLDS_SAFETENSORS]

    @classmethod
    def read(cls, folder: Path) -> ExportedThresholds:
        """Read an exported folder (files written before criteria existed read as ``magnitude``)."""
        from safetensors import safe_open

        path = folder / THRESHOLDS_SAFETENSORS
        if not path.is_file():
            raise UserError(f"{folder}: no {THRESHOLDS_SAFETENSORS} (not an exported thresholds folder)")
        thresholds, scales, channels = {}, {}, {}
        with safe_open(str(path), framework="pt") as f:
            criterion = (f.metadata() or {}).get("criterion", "magnitude")
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = f.get_tensor(key)
                if key.startswith(SCALE_PREFIX):
                    scales[key.removeprefix(SCALE_PREFIX)] = tensor
                elif key.startswith(CHANNEL_PREFIX):
                    channels[key.removeprefix(CHANNEL_PREFIX)] = tensor
                else:
                    thresholds[key] = float(tensor[0])
        return cls(criterion, thresholds, scales, channels)
