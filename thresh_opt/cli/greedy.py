"""`thresh-opt greedy`: the published greedy search run directly on a model, paper, fast or early mode."""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from rich.progress import Progress, TaskID
from rich.table import Table

from thresh_opt.cli._common import add_model_options, console, emit_json, load_from_args, progress_bar
from thresh_opt.cli.calibrate import add_calibration_options, spec_from_args
from thresh_opt.errors import UserError


def _levels(text: str) -> list[float]:
    try:
        levels = sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers, like 0.1,0.2,0.5") from None
    if not levels or levels[0] <= 0 or levels[-1] >= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: target sparsities must lie strictly between 0 and 1")
    return levels


def _early_test(text: str) -> dict[str, float]:
    """`z_accept=2,z_reject=3` -> the mapping a study file's `evaluation.early_rejection` takes."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated key=value, like z_accept=2,z_reject=3")
    try:
        return {key.strip(): float(value) for key, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be a number") from None


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `greedy` command."""
    p = groups.add_parser("greedy", help="run the published greedy threshold search on a model "
                                         "(paper, fast or early mode)")
    add_model_options(p)
    add_calibration_options(p)
    p.set_defaults(count=8)
    p.add_argument("--mode", choices=("fast", "paper", "early", "both"), default="fast",
                   help="fast (cached block inputs, default), paper (the published procedure), early (fast with "
                        "early rejection: candidates stopped once a sequential test on part of the chunks decides) "
                        "or both (paper and fast), compared")
    p.add_argument("--loss-inc", type=float, default=1.0005,
                   help="tolerance on loss / last accepted loss (default 1.0005)")
    p.add_argument("--levels", type=_levels, help="candidate target sparsities (default 0.1,0.2,...,0.9)")
    p.add_argument("--no-warm-start", action="store_true", help="plain scan from the lowest candidate for every module")
    p.add_argument("--keep-first", action="store_true", help="the public code's quirk: keep a failing first candidate")
    p.add_argument("--start-level", type=float, metavar="LEVEL",
                   help="a kind's first module (nothing to warm-start from) starts at this target sparsity and "
                        "walks up or down, instead of scanning from the lowest candidate (the published way)")
    p.add_argument("--batch-size", type=int, help="chunks per forward call (default 8; 1 in early mode)")
    p.add_argument("--early-test", type=_early_test, metavar="KEY=VALUE,...",
                   help="early mode's sequential test, as `evaluation.early_rejection` in a study file: "
                        "z_accept, z_reject, min_chunks, min_reject_chunks (default 4, 4, 2, 2)")
    p.add_argument("--output", type=Path, help="write the chosen thresholds (JSON) here, for `thresh-opt evaluate`")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_greedy)


def _advance(progress: Progress, task: TaskID, done: int, _modules: int) -> None:
    progress.update(task, completed=done)


def cmd_greedy(args: argparse.Namespace) -> int:
    """Search, then print the choices and the cost in forward-equivalents and seconds."""
    from thresh_opt.calibration import calibration_chunks
    from thresh_opt.greedy import greedy_search
    from thresh_opt.samplers import start_level_of, tolerances

    try:
        tolerances(args.loss_inc)
    except ValueError as exc:
        raise UserError(f"--loss-inc: {exc}") from None
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch-size: must be >= 1")
    try:
        start_level_of(args.start_level)
    except ValueError as exc:
        raise UserError(f"--start-level: {exc}") from None
    early_test = _checked_early_test(args.early_test, args.mode)
    spec = spec_from_args(args)
    loaded = load_from_args(args)
    chunks = calibration_chunks(loaded, spec, args.cache_dir)
    modes = ["paper", "fast"] if args.mode == "both" else [args.mode]
    results = {}
    for mode in modes:
        with progress_bar() as progress:
            task = progress.add_task(f"greedy ({mode} mode)", total=len(loaded.thresholded.names))
            results[mode] = greedy_search(
                loaded, spec, mode, args.loss_inc, args.levels, not args.no_warm_start, args.keep_first,
                args.batch_size, on_module=partial(_advance, progress, task), cache_dir=args.cache_dir,
                early_test=early_test, start_level=args.start_level)
    last = results[modes[-1]]
    if args.output:
        args.output.write_text(json.dumps(last.thresholds, indent=1))
    comparison = _compare(results) if len(results) == 2 else None
    if args.json:
        from thresh_opt.baseline import peak_memory_mb

        emit_json({"model": loaded.source, "chunks": list(chunks.shape),
                   "results": {m: r.to_dict() for m, r in results.items()},
                   "comparison": comparison, "peak_memory_mb": peak_memory_mb(chunks.device)})
        return 0
    table = Table(title=f"{loaded.source}: greedy search, loss_inc {args.loss_inc} "
                        f"({chunks.shape[0]} x {chunks.shape[1]} tokens)")
    for col in ("mode", "loss ratio", "sparsity", "loss passes", "stats passes", "forward-equiv.", "seconds"):
        table.add_column(col, justify="right")
    for mode, r in results.items():
        table.add_row(mode, f"{r.final_loss / r.dense_loss:.4f}", f"{r.sparsity:.1%}", str(r.cost.loss_passes),
                      str(r.cost.stats_passes), f"{r.cost.forward_equivalents:.1f}", f"{r.seconds:.1f}")
    console.print(table)
    if comparison:
        console.print(f"fast / paper: {comparison['fe_ratio']:.3f}x forward-equivalents, "
                      f"{comparison['time_ratio']:.3f}x time; "
                      f"same choices: {comparison['same_choices']} ({comparison['differing_modules']} modules differ)",
                      highlight=False)
    if args.output:
        console.print(f"thresholds: {args.output}", highlight=False)
    return 0


def _checked_early_test(given: dict[str, float] | None, mode: str) -> dict[str, float] | None:
    """The test's settings checked as a study file's `evaluation.early_rejection` is."""
    if given is None:
        return None
    if mode != "early":
        raise UserError(f"--early-test: only with --mode early (got --mode {mode})")
    from thresh_opt.config import validate
    from thresh_opt.study.config import EarlyRejection

    return validate(given, EarlyRejection, "--early-test").model_dump()


def _compare(results: dict[str, Any]) -> dict[str, Any]:
    fast, paper = results["fast"], results["paper"]
    differing = [n for n in fast.levels if fast.levels[n] != paper.levels[n]]
    return {"fe_ratio": fast.cost.forward_equivalents / paper.cost.forward_equivalents,
            "time_ratio": fast.seconds / paper.seconds, "same_choices": not differing,
            "differing_modules": len(differing), "sparsity_points": 100 * (fast.sparsity - paper.sparsity),
            "loss_ratio_difference": fast.final_loss / fast.dense_loss - paper.final_loss / paper.dense_loss}
