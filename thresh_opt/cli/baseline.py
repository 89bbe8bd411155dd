"""`thresh-opt baseline train|compare`: learned thresholds, and their comparison with the greedy search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.table import Table

from thresh_opt import keys
from thresh_opt.cli._common import (
    add_model_options,
    console,
    emit_json,
    load_from_args,
    progress_bar,
    read_json_object,
)
from thresh_opt.cli.calibrate import add_calibration_options, spec_from_args
from thresh_opt.errors import UserError


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers") from None


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `baseline` group."""
    group = groups.add_parser("baseline", help="the training-based baseline: learned thresholds")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    train = verbs.add_parser("train", help="learn one threshold per module (surrogate gradient + sparsity penalty)")
    add_model_options(train)
    add_calibration_options(train)
    train.set_defaults(count=8)
    train.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    train.add_argument("--batch-size", type=int, default=4, help="chunks per step (default 4)")
    train.add_argument("--lr", type=float, default=0.05, help="learning rate of log-thresholds (default 0.05)")
    train.add_argument("--penalty", type=float, default=1.0, help="weight of the MAC-weighted density (default 1)")
    train.add_argument("--sharpness", type=float, default=4.0, help="arctan surrogate sharpness (default 4)")
    train.add_argument("--init-sparsity", type=float, default=0.1, help="thresholds start at this target sparsity")
    train.add_argument("--init-thresholds", type=Path, metavar="FILE.json|EXPORT_DIR",
                       help="start from these thresholds instead (a warm start: a thresholds file, or a study "
                       "trial's `study export` folder); modules the file leaves out start at --init-sparsity")
    train.add_argument("--fine-tune", action="store_true", help="train the model's weights too (needs --save-model)")
    train.add_argument("--weight-lr", type=float, default=1e-5, help="learning rate of the weights (--fine-tune)")
    train.add_argument("--save-model", type=Path, help="folder for the fine-tuned model (save_pretrained)")
    train.add_argument("--train-seed", type=int, default=0, help="seed of the batch order")
    train.add_argument("--checkpoint", type=Path, help="checkpoint file: written every --checkpoint-every steps, "
                       "resumed from when it exists")
    train.add_argument("--checkpoint-every", type=int, default=50)
    train.add_argument("--output", type=Path, help="write the learned thresholds (JSON) here")
    train.add_argument("--json", action="store_true", help="one JSON object on stdout")
    train.set_defaults(func=cmd_train)

    cmp = verbs.add_parser("compare", help="greedy search vs learned thresholds on one model, same units")
    cmp.add_argument("model", metavar="MODEL")
    cmp.add_argument("--loss-inc", type=_floats, default=[1.001, 1.002, 1.005, 1.01],
                     help="greedy tolerances (default 1.001,1.002,1.005,1.01)")
    cmp.add_argument("--penalties", type=_floats, default=[0.25, 0.5, 1.0, 2.0],
                     help="training penalties (default 0.25,0.5,1,2)")
    cmp.add_argument("--steps", type=int, default=200, help="training steps per penalty (default 200)")
    cmp.add_argument("--levels", help="greedy candidate target sparsities (default 0.1,...,0.9)")
    cmp.add_argument("--count", type=int, default=8, help="calibration chunks (default 8)")
    cmp.add_argument("--ctx-len", type=int, default=128, help="tokens per chunk (default 128)")
    cmp.add_argument("--front", type=Path, metavar="RUN_DIR", help="also plot this study's Pareto front")
    cmp.add_argument("--out", type=Path, help="output folder (default runs/baseline-compare)")
    cmp.add_argument("--json", action="store_true")
    cmp.set_defaults(func=cmd_compare)


def _start_thresholds(path: Path) -> dict[str, float]:
    """The thresholds a warm start reads: a JSON object {module name: threshold}, or a `study export` folder
    (magnitude thresholds only: training learns those)."""
    if not path.is_dir():
        return read_json_object(path, "thresholds")
    from thresh_opt.study.export import ExportedThresholds

    exported = ExportedThresholds.read(path)
    if exported.criterion != "magnitude":
        raise UserError(f"{path}: thresholds of the {exported.criterion} criterion; training learns magnitude "
                        "thresholds (export a trial of a study with criterion: magnitude)")
    return exported.thresholds


def cmd_train(args: argparse.Namespace) -> int:
    """Train, write the thresholds, print loss and sparsity before and after."""
    import torch

    from thresh_opt.baseline import TrainConfig, train_thresholds
    from thresh_opt.calibration import cached_activation_stats, calibration_chunks
    from thresh_opt.objectives.text import mean_loss

    if args.steps < 1 or args.batch_size < 1 or args.checkpoint_every < 1:
        raise UserError("--steps, --batch-size and --checkpoint-every must be >= 1")
    if args.penalty < 0 or args.lr <= 0 or args.sharpness <= 0:
        raise UserError("--penalty must be >= 0; --lr and --sharpness > 0")
    if not 0 < args.init_sparsity < 1:
        raise UserError(f"--init-sparsity {args.init_sparsity}: allowed strictly between 0 and 1")
    if args.fine_tune and args.save_model is None:
        raise UserError("--fine-tune changes the weights: give --save-model DIR to keep them")
    given = _start_thresholds(args.init_thresholds) if args.init_thresholds else {}
    spec = spec_from_args(args)
    loaded = load_from_args(args)
    tm = loaded.thresholded
    try:
        tm.set_thresholds(given)  # names and values checked before any work (a bad file changes none)
    except UserError as exc:
        raise UserError(f"{args.init_thresholds}: {exc}") from None
    init = tm.thresholds
    tm.reset_thresholds()  # the dense loss below
    chunks = calibration_chunks(loaded, spec, args.cache_dir)
    if missing := [name for name in tm.names if name not in given]:  # no statistics when the file gives all
        stats = cached_activation_stats(loaded, spec, cache=args.cache_dir).at(args.init_sparsity)
        init |= {name: stats[name] for name in missing}
    with torch.no_grad():
        dense = mean_loss(tm.model, chunks)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, penalty=args.penalty,
                      sharpness=args.sharpness, init_sparsity=args.init_sparsity,
                      init_thresholds=str(args.init_thresholds) if args.init_thresholds else None,
                      fine_tune=args.fine_tune, weight_lr=args.weight_lr, seed=args.train_seed,
                      checkpoint=str(args.checkpoint) if args.checkpoint else None,
                      checkpoint_every=args.checkpoint_every)
    with progress_bar(status=True) as progress:
        task = progress.add_task("training thresholds", total=args.steps, status="")
        result = train_thresholds(tm, chunks, init, cfg, on_step=lambda i, r: progress.update(
            task, completed=i, status=f"loss {r['loss']:.4f}, density {r['density']:.3f}"))
    with torch.no_grad(), tm.counting():
        loss = mean_loss(tm.model, chunks)
        sparsity = tm.sparsity().mac_weighted
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result.thresholds, indent=1))
    if args.fine_tune:
        loaded.model.save_pretrained(args.save_model)
        loaded.tokenizer.save_pretrained(args.save_model)
    out = {"model": loaded.source, "loss_ratio": loss / dense, "sparsity": sparsity, **result.to_dict()}
    if args.json:
        emit_json(out)
        return 0
    console.print(f"{result.steps_done} steps, {result.seconds:.1f} s, "
                  f"{result.forward_equivalents:.1f} forward-equivalents, "
                  f"peak memory {result.peak_memory_mb:.0f} MB", highlight=False)
    console.print(f"calibration loss ratio {loss / dense:.4f}, MAC-weighted sparsity {sparsity:.1%}"
                  + (f"; thresholds: {args.output}" if args.output else ""), highlight=False)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Produce greedy and trained configurations, evaluate all of them alike, write the report."""
    from thresh_opt.baseline import compare as bc
    from thresh_opt.calibration import CalibrationSpec
    from thresh_opt.models import load_model
    from thresh_opt.objectives import Evaluator
    from thresh_opt.study.config import REPO_DIR

    if not args.loss_inc or not args.penalties or args.steps < 1:
        raise UserError("--loss-inc and --penalties need at least one value; --steps >= 1")
    if any(x <= 1 for x in args.loss_inc):
        raise UserError("--loss-inc: tolerances must be > 1")
    front = _study_front(args.front) if args.front else []
    out = args.out or REPO_DIR / "runs" / "baseline-compare"
    out.mkdir(parents=True, exist_ok=True)
    calibration = ["--count", str(args.count), "--ctx-len", str(args.ctx_len)]
    jobs = [("greedy", x) for x in args.loss_inc] + [("trained", p) for p in args.penalties]
    made = []
    with progress_bar() as progress:
        task = progress.add_task("producing configurations", total=len(jobs))
        for method, value in jobs:
            progress.update(task, description=f"{method} {value:g}")
            levels = ["--levels", args.levels] if args.levels else []
            made.append(bc.greedy_point(args.model, value, out, calibration + levels) if method == "greedy"
                        else bc.trained_point(args.model, value, args.steps, out, calibration, []))
            progress.advance(task)
    with console.status("evaluating every configuration"):
        loaded = load_model(args.model)
        spec = CalibrationSpec(source="heldout", ctx_len=args.ctx_len, count=args.count)
        evaluator = Evaluator(loaded, bc.OBJECTIVES, calibration=spec)
        points = []
        for method, setting, path, cost in made:
            values = evaluator.evaluate(json.loads(path.read_text())).values
            points.append(bc.Point(method, setting, str(path), cost["forward_equivalents"], cost["seconds"],
                                   cost["peak_memory_mb"], {k: values[k] for k in bc.OBJECTIVES}))
    judged = bc.verdicts(points)
    bc.plot(points, front, out / "comparison.png")
    (out / "report.md").write_text(bc.markdown(loaded.source, points, judged, "comparison.png"))
    (out / "summary.json").write_text(bc.summary_json(points, judged))
    if args.json:
        emit_json({"model": loaded.source, "out": str(out), "points": [p.__dict__ for p in points], "verdicts": judged})
        return 0
    table = Table(title=f"{loaded.source}: greedy search vs learned thresholds")
    for col in ("method", "setting", "loss ratio", "perplexity", "sparsity", "energy gain", "fwd-equiv.", "s",
                "peak MB"):
        table.add_column(col, justify="right")
    for p in points:
        v = p.values
        table.add_row(p.method, p.setting, f"{v['loss_ratio']:.4f}", f"{v['perplexity']:.3f}", f"{v['sparsity']:.1%}",
                      f"{v['energy_gain']:.2f}x", f"{p.forward_equivalents:.1f}", f"{p.seconds:.0f}",
                      f"{p.peak_memory_mb:.0f}")
    console.print(table)
    console.print(f"report: {out / 'report.md'}", highlight=False)
    return 0


def _study_front(run_dir: Path) -> list[tuple[float, float]]:
    """(sparsity, loss ratio) of a stored study's Pareto front."""
    import optuna

    from thresh_opt import analysis, compat

    journal = run_dir / keys.JOURNAL_FILE
    if not journal.is_file():
        raise UserError(f"--front {run_dir}: no {keys.JOURNAL_FILE} in this run folder")
    storage = compat.journal_storage(journal)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    study = optuna.load_study(study_name=names[0], storage=storage)
    return [(float(t.user_attrs["sparsity"]), float(t.user_attrs["loss_ratio"])) for t in analysis.pareto_front(study)
            if "sparsity" in t.user_attrs and "loss_ratio" in t.user_attrs]

