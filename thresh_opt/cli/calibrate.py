"""`thresh-opt calibrate`: compute and cache a model's activation statistics on a calibration set."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import Progress
from rich.table import Table

from thresh_opt.cli._common import add_model_options, console, emit_json, load_from_args

if TYPE_CHECKING:
    from thresh_opt.calibration import CalibrationSpec
    from thresh_opt.models.criterion import Criterion

SHOWN_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    """The fields of thresh_opt.calibration.CalibrationSpec as options."""
    p.add_argument("--source", default="heldout",
                   help="'heldout' (embedded models), a .txt or .jsonl file, or hf:DATASET_ID (default heldout)")
    p.add_argument("--ctx-len", type=int, default=128, help="tokens per chunk (default 128)")
    p.add_argument("--count", type=int, default=32, help="chunks (default 32)")
    p.add_argument("--seed", type=int, default=0, help="which chunks (default 0)")
    p.add_argument("--text-field", default="text", help="text field of JSON Lines / dataset rows")
    p.add_argument("--split", default="train", help="dataset split (hub datasets)")
    p.add_argument("--documents", type=int, help="use only the first N documents")
    p.add_argument("--cache-dir", type=Path, help="cache folder (default $THRESH_OPT_CACHE or ~/.cache/thresh-opt)")


def add_criterion_option(p: argparse.ArgumentParser) -> None:
    """--criterion: what thresholds are compared with, wherever they are computed from statistics."""
    p.add_argument("--criterion", default="magnitude",
                   help="threshold |x| (magnitude, default) or |x| times the column norm of the consuming "
                        "maps (weight_norm, WINA)")


def criterion_from_args(args: argparse.Namespace) -> Criterion:
    """The checked --criterion (before the model loads: a bad value fails at once)."""
    from thresh_opt.models.criterion import check_criterion

    return check_criterion(args.criterion, "--criterion")


def spec_from_args(args: argparse.Namespace) -> CalibrationSpec:
    """A validated CalibrationSpec from the command line."""
    from thresh_opt.calibration import CalibrationSpec
    from thresh_opt.config import validate
    from thresh_opt.errors import ConfigError, UserError

    fields = {"source": args.source, "ctx_len": args.ctx_len, "count": args.count, "seed": args.seed,
              "text_field": args.text_field, "split": args.split, "documents": args.documents}
    try:
        return validate(fields, CalibrationSpec, "command line")
    except ConfigError as exc:
        raise UserError(f"--{exc.field.replace('_', '-')}: {exc.problem}") from None


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `calibrate` command."""
    p = groups.add_parser("calibrate", help="compute and cache activation statistics")
    add_model_options(p)
    add_calibration_options(p)
    add_criterion_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Compute (or read from the cache) the statistics and show thresholds at a few sparsity levels."""
    from thresh_opt.calibration import cached_activation_stats, calibration_chunks

    spec = spec_from_args(args)
    criterion = criterion_from_args(args)
    loaded = load_from_args(args)
    loaded.thresholded.set_criterion(criterion)
    with console.status("tokenizing the calibration set"):
        chunks = calibration_chunks(loaded, spec, args.cache_dir)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("activation statistics", total=None)
        stats = cached_activation_stats(
            loaded, spec, cache=args.cache_dir,
            on_batch=lambda done, total: progress.update(task, completed=done, total=total)
        )
    shown = {level: stats.at(level) for level in SHOWN_LEVELS}
    if args.json:
        emit_json({"model": loaded.source, "criterion": loaded.thresholded.criterion,
                   "calibration": spec.model_dump(), "chunks": list(chunks.shape),
                   "levels": stats.levels, "thresholds": stats.thresholds})
        return 0
    table = Table(title=f"{loaded.source}: {loaded.thresholded.criterion} thresholds for target sparsity "
                        f"({chunks.shape[0]} x {chunks.shape[1]} tokens)")
    table.add_column("module")
    for level in SHOWN_LEVELS:
        table.add_column(f"{level:.0%}", justify="right")
    for name in loaded.thresholded.names:
        table.add_row(name, *(f"{shown[level][name]:.4g}" for level in SHOWN_LEVELS))
    console.print(table)
    return 0
