"""What every command shares: the console, JSON output, model options and error handling."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from thresh_opt.errors import UserError

if TYPE_CHECKING:
    from thresh_opt.models import LoadedModel

console = Console(stderr=True)


def progress_bar(status: bool = False) -> Progress:
    """The commands' progress bar on stderr; with `status`, every task carries a `status` field shown last."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    if status:
        columns.append(TextColumn("{task.fields[status]}"))
    return Progress(*columns, console=console, transient=True)


@contextlib.contextmanager
def tracked_executor(tracker: Any, loading: str, make: Callable[[], Any]) -> Iterator[Any]:
    """Start an executor (Ctrl-C may stop the model loading), yield it and close it at the end; a run that
    does not finish marks the tracker's MLflow parent run KILLED (Ctrl-C) or FAILED."""
    from thresh_opt.interrupts import interruptible

    executor, status = None, "FAILED"
    try:
        with console.status(loading), interruptible():
            executor = make()
        yield executor
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if executor is not None:
            executor.close()
        if status != "FINISHED":
            tracker.finish(status)


def emit_json(obj: dict[str, Any]) -> None:
    """Exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def add_model_options(p: argparse.ArgumentParser) -> None:
    """MODEL and the options of thresh_opt.models.load_model."""
    p.add_argument("model", metavar="MODEL", help="hub id, local folder, or embedded:rwkv4-tiny / embedded:opt-tiny")
    p.add_argument("--dtype", default="float32", help="float32 (default), float16 or bfloat16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--placement", type=Path, help="placement spec YAML for an architecture not shipped")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    """Load the model named on the command line (imported lazily: torch is slow to import)."""
    from transformers.utils import logging as hf_logging

    from thresh_opt.models import load_model

    hf_logging.disable_progress_bar()
    with console.status(f"loading {args.model}"):
        return load_model(args.model, dtype=args.dtype, device=args.device, placement=args.placement)


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from a file, with a clear error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such {what} file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {what} file holds a JSON object {{module name: value}}, not {type(data).__name__}")
    return data
