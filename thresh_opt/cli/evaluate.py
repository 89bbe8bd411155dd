"""`thresh-opt evaluate`: every selected objective for one thresholds configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from thresh_opt.cli._common import add_model_options, console, emit_json, load_from_args, read_json_object
from thresh_opt.cli.calibrate import add_calibration_options, add_criterion_option, criterion_from_args, spec_from_args
from thresh_opt.errors import UserError


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `evaluate` command."""
    from thresh_opt.objectives.evaluator import DEFAULT_OBJECTIVES, OBJECTIVES

    p = groups.add_parser("evaluate", help="evaluate one thresholds configuration on every selected objective")
    add_model_options(p)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--thresholds", type=Path, metavar="FILE.json", help="JSON object {module name: threshold}")
    how.add_argument("--uniform-sparsity", type=float, metavar="S", help="every module at target sparsity S (0-0.99)")
    p.add_argument("--objectives", default=",".join(DEFAULT_OBJECTIVES),
                   help=f"comma-separated, from: {', '.join(OBJECTIVES)} (default: %(default)s)")
    p.add_argument("--tasks", default="",
                   help="lm-eval tasks for 'accuracy', comma-separated: names, task files (.yaml/.yml), "
                        "folders or NAME=FOLDER")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="folder of lm-eval task YAMLs whose tasks --tasks may name (repeatable, or comma-separated)")
    p.add_argument("--limit", type=int, help="first N examples of every lm-eval task")
    p.add_argument("--eval-text", type=Path, help="text for perplexity / next-word accuracy (default: held-out half)")
    p.add_argument("--profile", type=Path, help="SENECA hardware profile YAML (default: the shipped one)")
    add_calibration_options(p)
    add_criterion_option(p)
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate and print the objectives next to the dense model's."""
    from thresh_opt.calibration import cached_activation_stats
    from thresh_opt.objectives.evaluator import OBJECTIVES, Evaluator, check_objectives, check_tasks

    objectives = check_objectives([o.strip() for o in args.objectives.split(",") if o.strip()])
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    include_path = [d.strip() for arg in args.include_path for d in arg.split(",") if d.strip()]
    for d in include_path:
        if not Path(d).expanduser().is_dir():
            raise UserError(f"--include-path {d}: not a folder")
    problem = check_tasks(tasks, objectives, include_path)
    if problem:
        raise UserError(f"--tasks {args.tasks}: {problem}")
    if args.uniform_sparsity is not None and not 0.0 <= args.uniform_sparsity <= 0.99:
        raise UserError(f"--uniform-sparsity {args.uniform_sparsity}: allowed 0 to 0.99")
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit: must be >= 1")
    if args.eval_text is not None and not args.eval_text.is_file():
        raise UserError(f"--eval-text {args.eval_text}: no such file")
    thresholds = read_json_object(args.thresholds, "thresholds") if args.thresholds else None
    spec = spec_from_args(args)
    criterion = criterion_from_args(args)
    loaded = load_from_args(args)
    loaded.thresholded.set_criterion(criterion)  # --thresholds are compared with this criterion's score too
    evaluator = Evaluator(
        loaded, objectives, calibration=spec, tasks=tasks, limit=args.limit, profile=args.profile, cache=args.cache_dir,
        include_path=include_path,
        eval_text=args.eval_text.read_text(encoding="utf-8") if args.eval_text else None,
    )
    if thresholds is None:
        with console.status("activation statistics"):
            thresholds = cached_activation_stats(loaded, spec, cache=args.cache_dir).at(args.uniform_sparsity)
    else:
        try:
            loaded.thresholded.set_thresholds(thresholds)  # validates names and values before any work
        except UserError as exc:
            raise UserError(f"{args.thresholds}: {exc}") from None
    with console.status("dense reference"):
        evaluator.dense  # noqa: B018 - computed once, shown next to the result
    with console.status("evaluating"):
        result = evaluator.evaluate(thresholds)
    if args.json:
        emit_json({"model": loaded.source, "criterion": loaded.thresholded.criterion,
                   "thresholds": loaded.thresholded.thresholds, **result.to_dict()})
        return 0
    table = Table(title=f"{loaded.source}: objectives, {loaded.thresholded.criterion} ({result.seconds:.1f} s)")
    for col in ("objective", "value", "dense", "better"):
        table.add_column(col, justify="left" if col in ("objective", "better") else "right")
    for name, value in result.values.items():
        dense = result.dense.get(name)
        better = OBJECTIVES[name].direction if name in OBJECTIVES else ""
        table.add_row(name, f"{value:.4g}", "" if dense is None else f"{dense:.4g}", better)
    for task, metrics in result.tasks.items():
        table.add_row(f"  {task}", ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()), "", "")
    console.print(table)
    return 0
