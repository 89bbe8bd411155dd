"""Load a causal LM and its tokenizer: a hub id, a local folder, or an embedded model by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from thresh_opt.config import PACKAGE_DIR
from thresh_opt.errors import UserError
from thresh_opt.models.specs import PlacementSpec, load_spec
from thresh_opt.models.thresholded import ThresholdedModel

EMBEDDED_DIR = PACKAGE_DIR / "models" / "embedded"
EMBEDDED_PREFIX = "embedded:"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model, its tokenizer and its thresholded wrapper, with where it came from."""

    source: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    thresholded: ThresholdedModel

    @property
    def heldout_text(self) -> str:
        """The held-out text that training never saw (embedded models only)."""
        return heldout_text(self.source)

    def heldout_part(self, part: str) -> str:
        """'calibration' (first half of the held-out lines) or 'evaluation' (second half): never mixed."""
        lines = self.heldout_text.splitlines()
        half = len(lines) // 2
        if part not in ("calibration", "evaluation"):
            raise ValueError(f"part {part!r}: use 'calibration' or 'evaluation'")
        return "\n".join(lines[:half] if part == "calibration" else lines[half:])


def embedded_models() -> list[str]:
    """Names of the shipped models, as 'embedded:NAME'."""
    return sorted(EMBEDDED_PREFIX + p.name for p in EMBEDDED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_path(source: str) -> str:
    """The from_pretrained argument for a source: an embedded model's folder, or the source itself."""
    if not source.startswith(EMBEDDED_PREFIX):
        return source
    path = EMBEDDED_DIR / source[len(EMBEDDED_PREFIX) :]
    if not (path / "config.json").is_file():
        raise UserError(f"unknown embedded model {source!r}; available: {', '.join(embedded_models()) or 'none'}")
    return str(path)


def heldout_text(source: str) -> str:
    """The held-out text shipped with an embedded model."""
    path = Path(resolve_path(source)) / "heldout.txt"
    if not path.is_file():
        raise UserError(f"{source} has no shipped held-out text; pass a text file instead")
    return path.read_text(encoding="utf-8")


def _device(device: str) -> torch.device:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA device; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None


def load_model(
    source: str,
    dtype: str = "float32",
    device: str = "cpu",
    placement: str | Path | PlacementSpec | None = None,
) -> LoadedModel:
    """Load a causal LM by hub id, local path or 'embedded:NAME', and wrap it for thresholding.

    Args:
        source: hub id (``RWKV/rwkv-4-169m-pile``), local folder, or ``embedded:rwkv4-tiny``.
        dtype: float32, float16 or bfloat16 (the embedded weights are stored as float16).
        device: cpu, cuda or cuda:N.
        placement: a placement spec or its YAML file; found from the model class when omitted.
    """
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    dev = _device(device)
    path = resolve_path(source)
    local = source.startswith(EMBEDDED_PREFIX) or Path(source).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], local_files_only=local)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load model {source!r}: {first}") from None
    model.to(dev).eval()  # type: ignore[arg-type]  # transformers' decorated .to() hides its signature
    spec = load_spec(Path(placement)) if isinstance(placement, (str, Path)) else placement
    return LoadedModel(source, model, tokenizer, ThresholdedModel(model, spec))
