"""`thresh-opt study run|show|export|enqueue|compare`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from thresh_opt import keys
from thresh_opt.cli import compare as compare_cmd
from thresh_opt.cli._common import console, emit_json, progress_bar, tracked_executor
from thresh_opt.errors import UserError
from thresh_opt.registry import SAMPLERS

if TYPE_CHECKING:
    import optuna

    from thresh_opt.study.config import SearchSpaceConfig, StudyConfig


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `study` group."""
    group = groups.add_parser("study", help="run, inspect and export threshold studies")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
    run = verbs.add_parser("run", help="run (or resume) a study; no file: the default embedded RWKV-4 study")
    run.add_argument("study", nargs="?", type=Path, metavar="STUDY.yaml")
    run.add_argument("--sampler", choices=list(SAMPLERS.names()))
    run.add_argument("--trials", type=int, help="total trials in the study (a resumed study counts earlier ones)")
    run.add_argument("--forward-equivalents", type=float, metavar="FE", dest="max_forward_equivalents",
                     help="stop once the trials have spent FE forward-equivalents (full calibration passes)")
    run.add_argument("--workers", type=int, help="parallel trials; more than 1 runs Ray actors")
    run.add_argument("--gpus-per-worker", type=float, metavar="G", help="GPUs per Ray worker (fractions share one)")
    run.add_argument("--seed", type=int)
    run.add_argument("--storage", help="Optuna storage: a journal file or an RDB URL (default: run folder)")
    run.add_argument("--ray-address", help="join an existing Ray cluster (ray start --head prints it)")
    run.add_argument("--run-dir", type=Path, help="run folder (default runs/<study name>)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in the run folder)")
    run.add_argument("--json", action="store_true", help="one JSON object (the Pareto front) on stdout")
    run.set_defaults(func=cmd_run)
    compare_cmd.register_verb(verbs)
    enqueue = verbs.add_parser("enqueue", help="queue a thresholds file (e.g. from `baseline train` or `greedy`) "
                               "as the next trial of a study")
    enqueue.add_argument("study", type=Path, metavar="STUDY.yaml")
    enqueue.add_argument("--thresholds", type=Path, required=True, metavar="FILE.json")
    enqueue.add_argument("--run-dir", type=Path, help="run folder (default runs/<study name>)")
    enqueue.add_argument("--json", action="store_true")
    enqueue.set_defaults(func=cmd_enqueue)
    show = verbs.add_parser("show", help="the trials and Pareto front of a stored study")
    _locate(show)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    export = verbs.add_parser("export", help="write a trial's thresholds (JSON, safetensors) and SENECA report")
    _locate(export)
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int)
    which.add_argument("--refined", type=float, metavar="RATIO", help="the refined point of this target (`refine`)")
    export.add_argument("--out", type=Path, help="output folder (default RUN_DIR/export/trial-N or refined-RATIO)")
    export.set_defaults(func=cmd_export)


def _locate(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", type=Path, metavar="RUN_DIR|STUDY.yaml", help="a run folder or the study file")
    p.add_argument("--storage", help="storage URL instead of the run folder's journal")
    p.add_argument("--name", help="study name (needed with --storage)")


def _overridden(args: argparse.Namespace) -> tuple[StudyConfig, SearchSpaceConfig]:
    from thresh_opt.study.config import DEFAULT_STUDY, check_workers, load_study, walks_levels

    cfg, space = load_study(args.study)
    overridable = ("trials", "workers", "seed", "storage", "ray_address", "tracking_uri", "max_forward_equivalents",
                   "gpus_per_worker")
    updates = {k: getattr(args, k) for k in overridable if getattr(args, k) is not None}
    for k, v in updates.items():
        if k in ("trials", "workers") and v < 1:
            raise UserError(f"--{k}: must be >= 1")
        if k == "max_forward_equivalents" and not v > 0:
            raise UserError("--forward-equivalents: must be > 0")
        if k == "gpus_per_worker" and not v >= 0:
            raise UserError("--gpus-per-worker: must be >= 0")
    if args.run_dir is not None:
        updates["run_dir"] = str(args.run_dir)
    cfg = cfg.model_copy(update=updates)
    check_workers(cfg, str(args.study or DEFAULT_STUDY))
    if args.sampler:
        cfg = cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"name": args.sampler, "options": {}})})
        if walks_levels(args.sampler) and space.level_list() is None:
            raise UserError(f"--sampler {args.sampler} needs a discrete search space (levels), not a range")
    return cfg, space


def cmd_run(args: argparse.Namespace) -> int:
    """Run or resume a study with a progress bar; print the Pareto front."""
    from thresh_opt.interrupts import deferred_interrupts

    with deferred_interrupts():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from thresh_opt import analysis
    from thresh_opt.study.config import DEFAULT_STUDY
    from thresh_opt.study.driver import StudyRun, default_run_dir, evaluated, run_study
    from thresh_opt.study.executors import make_executor
    from thresh_opt.tracking import StudyTracker

    cfg, space = _overridden(args)
    run_dir = default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    study_file = args.study or DEFAULT_STUDY
    run = StudyRun(cfg, space, run_dir, source=str(study_file))
    tracker = StudyTracker(cfg.tracking_uri, run_dir, cfg.name)
    tracker.log_study(study_file, cfg.model_dump(), cfg.sampler.name, cfg.seed)
    loading = f"loading {cfg.model.source} ({cfg.workers} worker{'s' if cfg.workers > 1 else ''})"
    with tracked_executor(tracker, loading, lambda: make_executor(cfg, space)) as executor, \
            progress_bar(status=True) as progress:
        task = progress.add_task(f"{cfg.name} ({cfg.sampler.name})", total=cfg.trials, status="")

        spent = [0.0]

        def on_trial(study: Any, trial: Any, result: Any) -> None:
            tracker.log_trial(trial.number, trial.state.name, trial.params, result.values, result.per_module_sparsity,
                              result.thresholds, result.error, result.cost_attrs(), result.skipped)
            spent[0] += result.forward_equivalents
            done = sum(1 for t in study.get_trials(deepcopy=False) if evaluated(t))
            shown = result.error or ", ".join(f"{k} {v:.4g}" for k, v in list(result.values.items())[:2])
            pruned = " (pruned)" if result.skipped else ""
            progress.update(task, completed=done, status=f"trial {trial.number}: {shown}{pruned}"
                            f" | {spent[0]:.1f} FE, cache {result.cache_mb:.0f} MB")

        study = run_study(run, executor, on_trial, on_front=tracker.log_front, on_refined=tracker.log_refined)
    files = analysis.write_plots(study, run_dir / keys.PLOTS_DIR)
    hv = analysis.hypervolume_history(study)
    totals = analysis.cost_totals(study)
    tracker.log_artifacts(files, {"hypervolume": hv[-1] if hv else 0.0, "front_size": len(analysis.pareto_front(study)),
                                  **{f"total.{k}": v for k, v in totals.items()}})
    tracker.finish("FINISHED")
    rows = analysis.front_table(study)
    if args.json:
        emit_json({"study": cfg.name, "run_dir": str(run_dir), "front": rows, "final": study.user_attrs.get(keys.FINAL),
                   "refined": _refined(study), "trials": len(study.trials), "cost": totals})
    else:
        _print_front(study, rows, run_dir)
    return 0


def cmd_enqueue(args: argparse.Namespace) -> int:
    """Map a thresholds file onto the study's parameters and enqueue it; `study run` evaluates it next."""
    import optuna

    from thresh_opt.calibration import cached_activation_stats
    from thresh_opt.cli._common import read_json_object
    from thresh_opt.models import load_model
    from thresh_opt.study.config import load_study
    from thresh_opt.study.driver import StudyRun, default_run_dir
    from thresh_opt.study.space import SearchSpace

    cfg, space_cfg = load_study(args.study)
    thresholds = read_json_object(args.thresholds, "thresholds")
    with console.status(f"loading {cfg.model.source}"):
        m = cfg.model
        loaded = load_model(m.source, dtype=m.dtype, device=m.device, placement=m.placement)
    try:
        loaded.thresholded.set_thresholds(thresholds)  # names and values checked
    except UserError as exc:
        raise UserError(f"{args.thresholds}: {exc}") from None
    loaded.thresholded.reset_thresholds()
    loaded.thresholded.set_criterion(space_cfg.criterion)  # the thresholds file's values are of this criterion
    stats = cached_activation_stats(loaded, cfg.calibration)
    space = SearchSpace.build(space_cfg, loaded.thresholded.sites)
    params = space.params_for(thresholds, stats)
    if args.run_dir is not None:
        cfg = cfg.model_copy(update={"run_dir": str(args.run_dir)})
    run = StudyRun(cfg, space_cfg, default_run_dir(cfg))
    study = optuna.create_study(study_name=cfg.name, storage=run.storage(), directions=run.directions,
                                load_if_exists=True)
    study.enqueue_trial(params, user_attrs={"enqueued_from": str(args.thresholds)})
    if args.json:
        emit_json({"study": cfg.name, "params": params})
    else:
        console.print(f"enqueued in {cfg.name}: " + ", ".join(f"{k}={v:g}" for k, v in params.items()), highlight=False)
    return 0


def _print_front(study: Any, rows: list[dict[str, Any]], run_dir: Path) -> None:
    from thresh_opt import analysis

    names = study.user_attrs.get(keys.OBJECTIVES, [])
    measured = list(dict.fromkeys(k for r in rows for k in r if k.startswith("front:")))
    table = Table(title=f"{study.study_name}: Pareto front ({len(rows)} of {len(study.trials)} trials)")
    for col in ["trial", *names, "sparsity", *measured]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["trial"]), *(f"{r[n]:.4g}" for n in names), f"{(r['sparsity'] or 0):.1%}",
                      *(f"{r[m]:.4g}" if m in r else "" for m in measured))
    console.print(table)
    _print_refined(study, names)
    c = analysis.cost_totals(study)
    front = f", + {c['front_forward_equivalents']:.1f} for front metrics" if c["front_forward_equivalents"] else ""
    front += (f", + {c['refined_forward_equivalents']:.1f} for refined points" if c["refined_forward_equivalents"]
              else "")
    console.print(f"cost: {c['forward_equivalents']:.1f} forward-equivalents in {c['trials']} trials "
                  f"(+ {c['reference_forward_equivalents']:.1f} for the dense reference{front}), {c['seconds']:.1f} s "
                  f"of evaluation, cache peak {c['peak_cache_mb']:.0f} MB; {c['skipped_trials']} trials skipped "
                  "expensive objectives", highlight=False)
    console.print(f"run folder: {run_dir}   MLflow UI: thresh-opt ui {run_dir}   "
                  f"optuna-dashboard: thresh-opt dashboard {run_dir}", highlight=False)


def _refined(study: Any) -> list[dict[str, Any]]:
    from thresh_opt.study.refine import refined

    return refined(study)


def _print_refined(study: Any, names: list[str]) -> None:
    records = _refined(study)
    if not records:
        return
    table = Table(title="refined points (warm-started training from the search's points)")
    shown = [n for n in names if n != "sparsity"]
    for col in ["target", "from trial", "start", "training", *shown, "sparsity", "FE"]:
        table.add_column(col, justify="right")
    for r in records:
        s, v, fe = r["setting"], r.get("values", {}), r.get(keys.FORWARD_EQUIVALENTS)
        start = (r.get("skipped") or (f"failed: {r['error']}" if "error" in r else
                                      f"{r['start']['loss_ratio']:.4f} / {r['start']['sparsity']:.1%}"))
        table.add_row(f"{s['target']:g}", "-" if s["from_trial"] is None else str(s["from_trial"]), start,
                      f"p {s['penalty']:g}, {s['steps']} steps", *(f"{v[n]:.4g}" if n in v else "" for n in shown),
                      f"{v['sparsity']:.1%}" if "sparsity" in v else "", "" if fe is None else f"{fe:.1f}")
    console.print(table)


def _load(args: argparse.Namespace) -> optuna.Study:
    import optuna

    from thresh_opt import compat

    if args.storage:
        storage: Any = args.storage
    else:
        target = args.target
        if target.suffix in (".yaml", ".yml"):
            from thresh_opt.study.config import load_study
            from thresh_opt.study.driver import default_run_dir

            target = default_run_dir(load_study(target)[0])
        journal = target / keys.JOURNAL_FILE
        if not journal.is_file():
            raise UserError(f"{args.target}: no study here (no {journal})")
        storage = compat.journal_storage(journal)
    names = optuna.get_all_study_names(storage)
    name = args.name or (names[0] if len(names) == 1 else None)
    if name not in names:
        raise UserError(f"study {name!r} not in storage; studies: {', '.join(names) or 'none'} (use --name)")
    return optuna.load_study(study_name=name, storage=storage)


def cmd_show(args: argparse.Namespace) -> int:
    """Trials and Pareto front of a stored study."""
    from thresh_opt import analysis

    study = _load(args)
    rows = analysis.front_table(study)
    if args.json:
        emit_json({"study": study.study_name, "trials": len(study.trials), "front": rows,
                   "hypervolume": (analysis.hypervolume_history(study) or [0.0])[-1],
                   "final": study.user_attrs.get(keys.FINAL), "refined": _refined(study),
                   "cost": analysis.cost_totals(study)})
        return 0
    _print_front(study, rows, Path(str(args.target)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a trial's thresholds as JSON and safetensors (with the criterion, and under ``weight_norm`` the
    per-channel scales and thresholds: see `thresh_opt.study.export`), and its SENECA report."""
    from thresh_opt.study.export import ExportedThresholds

    study = _load(args)
    what, thresholds, report = _exported_point(study, args)
    criterion = study.user_attrs.get(keys.CRITERION) or {"name": "magnitude"}  # studies from before criteria
    if criterion["name"] == "magnitude":
        exported = ExportedThresholds("magnitude", thresholds)
    else:  # the per-channel scales come from the weights
        from thresh_opt.models import load_model

        m = criterion["model"]
        with console.status(f"loading {m['source']} for its column norms"):
            loaded = load_model(m["source"], dtype=m["dtype"], device="cpu", placement=m.get("placement"))
        loaded.thresholded.set_criterion(criterion["name"])
        loaded.thresholded.set_thresholds(thresholds)
        exported = ExportedThresholds.from_model(loaded.thresholded)
    out = args.out or (args.target if args.target.is_dir() else Path(".")) / keys.EXPORT_DIR / what
    written = exported.write(out)
    report["criterion"] = exported.criterion
    hw = study.user_attrs.get(keys.HARDWARE)
    if hw and report["per_module_sparsity"]:
        report["seneca"] = _seneca_report(hw, report["per_module_sparsity"], study.user_attrs.get(keys.DENSE_SPARSITY))
    (out / "report.json").write_text(json.dumps(report, indent=1))
    console.print(f"wrote {out}/{', '.join(written)}, report.json", highlight=False)
    return 0


def _exported_point(study: Any, args: argparse.Namespace) -> tuple[str, dict[str, float], dict[str, Any]]:
    """The folder name, thresholds and report of the trial or refined point to export."""
    if args.refined is not None:
        records = {r["setting"]["target"]: r for r in _refined(study)}
        r = records.get(args.refined)
        if r is None or "thresholds" not in r:
            have = ", ".join(f"{k:g}" for k, v in records.items() if "thresholds" in v) or "none"
            raise UserError(f"--refined {args.refined:g}: no refined point at this target; refined targets: {have}")
        numbers = {**r["values"], keys.FORWARD_EQUIVALENTS: r[keys.FORWARD_EQUIVALENTS], keys.SECONDS: r[keys.SECONDS]}
        return f"refined-{args.refined:g}", r["thresholds"], {"refined": r["setting"], "start": r["start"],
                                                              "objectives": numbers,
                                                              "per_module_sparsity": r["per_module_sparsity"]}
    trials = {t.number: t for t in study.trials}
    if args.trial not in trials:
        raise UserError(f"--trial {args.trial}: no such trial; the study has trials 0..{len(trials) - 1}")
    t = trials[args.trial]
    if "thresholds" not in t.user_attrs:
        raise UserError(f"--trial {args.trial}: state {t.state.name}, no thresholds stored")
    numbers = {k: v for k, v in t.user_attrs.items() if isinstance(v, (int, float))}
    return f"trial-{args.trial}", json.loads(t.user_attrs["thresholds"]), {
        "trial": t.number, "params": t.params, "objectives": numbers,
        "per_module_sparsity": json.loads(t.user_attrs.get("per_module_sparsity", "{}"))}


def _seneca_report(hw: dict[str, Any], sparsity: dict[str, float], dense: dict[str, float] | None) -> dict[str, Any]:
    """The SENECA comparison of a trial against the dense model, from the dimensions stored with the study."""
    from types import SimpleNamespace

    from thresh_opt.hardware import ModelDims, compare, load_profile, sites_from_placement

    dims = ModelDims(**hw["dims"])
    sites = sites_from_placement([SimpleNamespace(**s) for s in hw["sites"]], dims)
    profile = load_profile(hw.get("profile"))  # the study's profile, or the shipped one
    from thresh_opt.hardware.seneca import THRESHOLD_COST_NOTE

    return {**compare(dims, sparsity, dense or {}, profile=profile, sites=sites).to_dict(),
            "thresholds": THRESHOLD_COST_NOTE}

