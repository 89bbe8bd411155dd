"""`thresh-opt study compare`: samplers x seeds on one model, with a report, plots and MLflow runs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.progress import TaskID
from rich.table import Table

from thresh_opt import keys
from thresh_opt.cli._common import console, emit_json, progress_bar, tracked_executor
from thresh_opt.errors import ConfigError, UserError


def register_verb(verbs: argparse._SubParsersAction) -> None:
    """Add `study compare`."""
    p = verbs.add_parser("compare", help="compare samplers x seeds on equal budgets (resumable); "
                         "no file: studies/compare-embedded.yaml")
    p.add_argument("compare", nargs="?", type=Path, metavar="COMPARE.yaml")
    p.add_argument("--trials", type=int, help="budget per study (budgets beyond it are dropped)")
    p.add_argument("--forward-equivalents", type=float, metavar="FE",
                   help="budget per study in forward-equivalents (FE budgets beyond it are dropped)")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="comma-separated seeds")
    p.add_argument("--only", help="comma-separated sampler labels to run (the report covers those run)")
    p.add_argument("--workers", type=int, help="parallel trials; more than 1 runs Ray actors")
    p.add_argument("--ray-address", help="join an existing Ray cluster")
    p.add_argument("--run-dir", type=Path, help="run folder (default runs/<comparison name>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: SQLite in the run folder)")
    p.add_argument("--json", action="store_true", help="one JSON object (the summary table) on stdout")
    p.set_defaults(func=cmd_compare)


def _load(args: argparse.Namespace) -> tuple[Any, Any, list[Any], Path]:
    from thresh_opt.study.compare import DEFAULT_COMPARE, load_compare

    source = args.compare or DEFAULT_COMPARE
    overrides: dict[str, Any] = {k: getattr(args, k) for k in ("trials", "forward_equivalents", "seeds", "workers",
                                                                 "tracking_uri")
                                 if getattr(args, k) is not None}
    if args.run_dir is not None:
        overrides["run_dir"] = str(args.run_dir)
    try:
        ccfg, template, contenders = load_compare(source, overrides, args.ray_address)
    except ConfigError as exc:
        if exc.field.split(".")[0] in overrides:
            raise UserError(f"--{exc.field.split('.')[0].replace('_', '-')}: {exc.problem}") from None
        raise
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {c.label for c in contenders}]
        if unknown:
            raise UserError(f"--only: no sampler labelled {unknown[0]!r}; labels: "
                            f"{', '.join(dict.fromkeys(c.label for c in contenders))}")
        contenders = [c for c in contenders if c.label in wanted]
    return ccfg, template, contenders, source


def cmd_compare(args: argparse.Namespace) -> int:
    """Run (or resume) every study of a comparison, then write the report."""
    from thresh_opt.interrupts import deferred_interrupts

    with deferred_interrupts():
        return _compare(args)


def _compare(args: argparse.Namespace) -> int:
    from thresh_opt.study import report
    from thresh_opt.study.compare import compare_run_dir, evaluations, measure_references, run_contender
    from thresh_opt.study.executors import make_executor
    from thresh_opt.tracking import CompareTracker

    ccfg, template, contenders, source = _load(args)
    run_dir = compare_run_dir(ccfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = CompareTracker(ccfg.tracking_uri or template.tracking_uri, run_dir, ccfg.name)
    tracker.log_compare(source, ccfg.model_dump())
    first = contenders[0]
    studies, summaries = [], []
    with tracked_executor(tracker, f"loading {template.model.source}",
                          lambda: make_executor(first.cfg, first.space)) as executor, \
            progress_bar(status=True) as progress:
        overall = progress.add_task(f"{ccfg.name}", total=len(contenders), status="")
        for i, c in enumerate(contenders):
            task = progress.add_task(f"  {c.label} seed {c.seed}", total=ccfg.trials, status="")

            def on_trial(study: Any, trial: Any, result: Any, task: TaskID = task) -> None:
                progress.update(task, completed=evaluations(study))

            study = run_contender(c, run_dir, executor, str(source), on_trial)
            progress.remove_task(task)
            progress.update(overall, completed=i + 1, status=f"{c.study_name} done")
            s = report.summarize(c.label, c.seed, study, ccfg.trials, ccfg.forward_equivalents)
            studies.append((c.label, study))
            summaries.append(s)
            tracker.log_study(c.study_name, {"sampler": c.cfg.sampler.name, "label": c.label, "seed": c.seed,
                                             "options": c.cfg.sampler.options, "trials": ccfg.trials},
                              {**{f"hv_at_{b}": s.hv_at(b) for b in ccfg.budgets},
                               **{f"hv_at_{b:g}fe": s.hv_at_fe(b) for b in ccfg.fe_budgets}, "front_size": s.front_size,
                               "evaluations": s.evaluations, "forward_equivalents": s.forward_equivalents,
                               "wall_seconds": s.wall_seconds}, s.history)
        references = measure_references(ccfg, executor, [o.name for o in template.objectives])
    files, rows = report.write_report(ccfg, studies, summaries, run_dir / keys.REPORT_DIR, str(source), references)
    tracker.log_artifacts(files, folder=keys.REPORT_DIR)
    tracker.finish("FINISHED")
    if args.json:
        emit_json({"compare": ccfg.name, "run_dir": str(run_dir),
                   "report": str(run_dir / keys.REPORT_DIR / "report.md"),
                   "budgets": ccfg.budgets, "fe_budgets": ccfg.fe_budgets, "rows": rows, "references": references})
        return 0
    _print(ccfg, rows, run_dir)
    return 0


def _print(ccfg: Any, rows: list[dict[str, Any]], run_dir: Path) -> None:
    from thresh_opt.study.report import budget_columns

    table = Table(title=f"{ccfg.name}: hypervolume at budgets (mean ± std over seeds)")
    columns = budget_columns(ccfg)
    for col in ["sampler", "seeds", *(title for _, title in columns), "front", "evals", "FE", "wall s"]:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [f"{r[key]['mean']:.4g} ± {r[key]['std']:.2g}" for key, _ in columns]
        table.add_row(r["sampler"], str(r["seeds"]), *cells, f"{r['front_size']:.1f}", f"{r['evaluations']:.0f}",
                      f"{r['forward_equivalents']:.1f}", f"{r['wall_seconds']:.0f}")
    console.print(table)
    console.print(f"report: {run_dir / 'report' / 'report.md'}   MLflow UI: thresh-opt ui {run_dir}", highlight=False)
