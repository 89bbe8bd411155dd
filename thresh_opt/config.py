"""Settings and validated YAML configuration shared by every layer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from thresh_opt.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

PACKAGE_DIR = Path(__file__).resolve().parent


def shared_dir() -> Path:
    """The shared data folder: $THRESH_OPT_SHARED, else ../shared next to the repository."""
    return Path(os.environ.get("THRESH_OPT_SHARED", PACKAGE_DIR.parent.parent / "shared"))


def shared_data_dir() -> Path:
    """Evaluation data and text (shared/data)."""
    return shared_dir() / "data"


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through `write(temporary path)`, then rename it into place: a killed process never
    leaves half a file, and processes writing the same file at once (Ray workers, test processes) each
    use their own temporary name, so no rename finds its file taken by another."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_yaml(path: Path) -> object:
    """Parse a YAML file, with a clear error for a missing or malformed file."""
    if not path.is_file():
        raise ConfigError(str(path), "(file)", "no such file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "(file)", f"not valid YAML: {exc}".replace("\n", " ")) from None


def validate(data: object, schema: type[T], source: str) -> T:
    """Validate parsed data against a pydantic schema, naming the first bad field and what it allows."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field; allowed: {', '.join(_fields_at(schema, err['loc'][:-1]))}"
        elif err["type"] == "missing":
            msg = "required field is missing"
        raise ConfigError(source, field, msg) from None


def _fields_at(schema: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model found by following loc from schema."""
    current: object = schema
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel) and isinstance(part, str):
            current = current.model_fields[part].annotation
        while get_args(current) and not (isinstance(current, type) and issubclass(current, BaseModel)):
            current = next((a for a in get_args(current) if a is not type(None)), current)
            if isinstance(part, int) or not get_args(current):
                break
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def load_config(path: Path, schema: type[T]) -> T:
    """Load and validate one YAML configuration file."""
    return validate(load_yaml(path), schema, str(path))
