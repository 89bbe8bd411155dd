"""Hardware profiles: every constant of the cost model as YAML data, each with its value and its source."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thresh_opt.config import PACKAGE_DIR, load_config

PROFILES_DIR = PACKAGE_DIR / "hardware" / "profiles"
DEFAULT_PROFILE = PROFILES_DIR / "seneca.yaml"


class Constant(BaseModel):
    """One number of the model and where it comes from: a publication, or "assumption: why"."""

    model_config = ConfigDict(extra="forbid")

    value: float = Field(ge=0, allow_inf_nan=False)
    source: str = Field(min_length=3)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Energy(_Section):
    """Energy per operation, picojoules."""

    synop: Constant
    npe_op: Constant
    memory_load: Constant
    memory_store: Constant
    event_capture: Constant
    event_generation: Constant
    riscv_instruction: Constant
    riscv_memory_access: Constant
    noc_event: Constant


class Core(_Section):
    """One core: clock, parallel NPEs and data memory."""

    clock_hz: Constant
    npes: Constant
    data_memory_bits: Constant
    reserved_memory_fraction: Constant
    weight_bits: Constant

    @field_validator("clock_hz", "npes", "data_memory_bits", "weight_bits")
    @classmethod
    def _positive(cls, c: Constant) -> Constant:
        if c.value <= 0:
            raise ValueError("value must be > 0")
        return c

    @field_validator("npes")
    @classmethod
    def _whole(cls, c: Constant) -> Constant:
        if c.value != math.floor(c.value):
            raise ValueError("value must be a whole number")
        return c

    @field_validator("reserved_memory_fraction")
    @classmethod
    def _fraction(cls, c: Constant) -> Constant:
        if c.value >= 1:
            raise ValueError("value must be in [0, 1)")
        return c


class Work(_Section):
    """Cycles and operation counts that turn work into time."""

    synop_cycles: Constant
    npe_op_cycles: Constant
    event_instructions: Constant
    transcendental_ops: Constant


class HardwareProfile(BaseModel):
    """A validated hardware profile (see profiles/seneca.yaml for the shipped one).

    Example:
        >>> p = load_profile()
        >>> p.energy_pj.synop.value
        2.8

    Args:
        name: short name shown in reports.
        description: free text.
        energy_pj, core, work: the constants, each a `Constant` (value and source).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    energy_pj: Energy
    core: Core
    work: Work

    def constants(self) -> dict[str, Constant]:
        """Every constant by dotted name (energy_pj.synop, ...)."""
        out = {}
        for section in ("energy_pj", "core", "work"):
            part = getattr(self, section)
            for field in type(part).model_fields:
                out[f"{section}.{field}"] = getattr(part, field)
        return out


def load_profile(path: Path | str | None = None) -> HardwareProfile:
    """Load and validate a profile file (the shipped SENECA profile when path is None)."""
    return load_config(Path(path) if path is not None else DEFAULT_PROFILE, HardwareProfile)
