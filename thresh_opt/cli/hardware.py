"""`thresh-opt hardware estimate`: SENECA energy and latency per token, baseline against thresholded."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from thresh_opt.cli._common import console, emit_json, load_from_args, read_json_object
from thresh_opt.errors import UserError
from thresh_opt.registry import ARCHITECTURES

if TYPE_CHECKING:
    from thresh_opt.hardware import LinearSite, ModelDims
    from thresh_opt.models import LoadedModel

_ARCH_ONLY = ("layers", "hidden", "ffn", "heads", "vocab")


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `hardware` command group."""
    group = groups.add_parser("hardware", help="SENECA energy and latency model")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    est = verbs.add_parser(
        "estimate", help="energy and latency per token, baseline against thresholded, and the gains",
        description="Estimate energy and latency per token on SENECA from a model's dimensions and its "
                    "per-module sparsity. A sparsity file is a JSON object {module kind or full module "
                    "name: fraction of zero inputs} (full names override kinds; absent means 0), or the "
                    "output of `thresh-opt model sparsity --json`.",
    )
    what = est.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="MODEL",
                      help="take the dimensions from a model (hub id, folder, embedded:NAME)")
    what.add_argument("--arch", choices=list(ARCHITECTURES.names()),
                      help="describe the model by its dimensions instead")
    est.add_argument("--layers", type=int, metavar="L", help="blocks (with --arch)")
    est.add_argument("--hidden", type=int, metavar="D", help="model width d (with --arch)")
    est.add_argument("--ffn", type=int, metavar="F", help="feed-forward width (with --arch; default 4d)")
    est.add_argument("--heads", type=int, metavar="H", help="OPT attention heads (with --arch; default d/64)")
    est.add_argument("--context", type=int, metavar="N", help="OPT: positions each token attends to (default 1024)")
    est.add_argument("--vocab", type=int, metavar="V", help="vocabulary size (with --arch); implies --head")
    est.add_argument("--head", action="store_true", help="count the output head and embedding read (default: left out)")
    given = est.add_mutually_exclusive_group(required=True)
    given.add_argument("--sparsity", type=Path, metavar="FILE.json", help="the thresholded model's sparsity")
    given.add_argument("--thresholds", type=Path, metavar="FILE.json",
                       help="thresholds {module name: threshold} (with --model): the sparsity is measured on "
                            "the embedded held-out calibration text (8 x 128 tokens)")
    est.add_argument("--baseline", type=Path, metavar="FILE.json",
                     help="the unthresholded model's sparsity (default: all 0)")
    est.add_argument("--profile", type=Path, metavar="FILE",
                     help="hardware profile YAML (default: the shipped SENECA one)")
    est.add_argument("--json", action="store_true", help="one JSON object on stdout")
    est.set_defaults(func=cmd_estimate, dtype="float32", device="cpu", placement=None)


def _measured_sparsity(loaded: Any, path: Path) -> dict[str, float]:
    """Per-module sparsity of the model under a thresholds file, on the calibration text."""
    import torch

    from thresh_opt.calibration import CalibrationSpec, calibration_chunks

    thresholds = read_json_object(path, "thresholds")
    try:
        loaded.thresholded.set_thresholds(thresholds)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    chunks = calibration_chunks(loaded, CalibrationSpec(source="heldout", ctx_len=128, count=8))
    tm = loaded.thresholded
    with torch.no_grad(), tm.counting():
        for batch in chunks.split(8):
            tm(input_ids=batch.to(next(tm.model.parameters()).device))
        return tm.sparsity().per_module


def _read_sparsity(path: Path) -> dict[str, Any]:
    data = read_json_object(path, "sparsity")
    per_module = data.get("per_module")
    return per_module if isinstance(per_module, dict) else data  # `model sparsity --json` output


def _dims_and_sites(args: argparse.Namespace) -> tuple[str, ModelDims, list[LinearSite], LoadedModel | None]:
    from thresh_opt.hardware import ModelDims, linear_sites

    if args.arch:
        missing = [f"--{n}" for n in ("layers", "hidden") if getattr(args, n) is None]
        if missing:
            raise UserError(f"--arch {args.arch} needs {' and '.join(missing)}")
        if args.head and args.vocab is None:
            raise UserError("--head with --arch needs --vocab V")
        given = {n: getattr(args, n) for n in (*_ARCH_ONLY, "context") if getattr(args, n) is not None}
        extra = [f"--{n}" for n in given if n not in ARCHITECTURES[args.arch].options.model_fields]
        if extra:
            raise UserError(f"{', '.join(extra)}: not a dimension of {args.arch}; allowed: "
                            f"{', '.join('--' + n for n in ARCHITECTURES[args.arch].options.model_fields)}")
        dims = ModelDims(args.arch, **given)
        return args.arch, dims, linear_sites(dims), None
    flags = [f"--{n}" for n in _ARCH_ONLY if getattr(args, n) is not None]
    if flags:
        raise UserError(f"{', '.join(flags)}: taken from the model with --model; use --arch to set dimensions")
    from thresh_opt.objectives.hardware_cost import model_dims

    loaded = load_from_args(args)
    dims, sites = model_dims(loaded, args.context, args.head)
    return loaded.source, dims, sites, loaded


def _si(value: float, unit: str) -> str:
    for factor, prefix in ((1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p")):
        if abs(value) >= factor:
            return f"{value / factor:,.3g} {prefix}{unit}"
    return f"0 {unit}" if value == 0 else f"{value / 1e-12:.3g} p{unit}"


def _table(title: str, cmp: Any) -> Table:
    b, t = cmp.baseline, cmp.thresholded
    table = Table(title=title, caption="E: energy per token, t: latency per token; base: baseline, thr: thresholded")
    table.add_column("part")
    for col in ("E base", "E thr", "E gain", "t base", "t thr", "t gain"):
        table.add_column(col, justify="right")

    def row(name: str, cb: Any, ct: Any, bold: bool = False) -> None:
        cells = [_si(cb.energy_j, "J"), _si(ct.energy_j, "J"), _gain(cb.energy_j, ct.energy_j),
                 _si(cb.latency_s, "s"), _si(ct.latency_s, "s"), _gain(cb.latency_s, ct.latency_s)]
        table.add_row(*(f"[bold]{c}[/bold]" if bold else c for c in [name, *cells]))

    table.add_row("[dim]by module[/dim]")
    for kind in b.per_kind:
        row(kind, b.per_kind[kind], t.per_kind[kind])
    table.add_section()
    table.add_row("[dim]by work[/dim]")
    for work in b.per_work:
        if b.per_work[work].energy_j or t.per_work[work].energy_j:
            row(work, b.per_work[work], t.per_work[work])
    table.add_section()
    row("total", b, t, bold=True)
    return table


def _gain(base: float, thr: float) -> str:
    return f"{base / thr:.2f}x" if thr else "-"


def cmd_estimate(args: argparse.Namespace) -> int:
    """Estimate energy and latency per token for the baseline and the thresholded model."""
    from thresh_opt.hardware import DEFAULT_PROFILE, compare, load_profile

    profile = load_profile(args.profile)
    if args.thresholds is not None and not args.model:
        raise UserError("--thresholds needs --model (the sparsity is measured on the model)")
    sparsity = _read_sparsity(args.sparsity) if args.sparsity else None
    baseline = _read_sparsity(args.baseline) if args.baseline else None
    source, dims, sites, loaded = _dims_and_sites(args)
    if sparsity is None:
        sparsity = _measured_sparsity(loaded, args.thresholds)
    cmp = compare(dims, sparsity, baseline, profile, sites, sources=(str(args.sparsity), str(args.baseline)))
    if args.json:
        emit_json({
            "model": source,
            "dims": dims.to_dict(),
            "profile": str(args.profile or DEFAULT_PROFILE),
            "sparsity_file": str(args.sparsity or args.thresholds),
            "baseline_file": str(args.baseline) if args.baseline else None,
            **cmp.to_dict(),
        })
        return 0
    head = "with head" if dims.vocab else "head and embedding left out"
    console.print(_table(f"{profile.name}: {source}, L={dims.layers}, d={dims.hidden} ({head})", cmp))
    console.print(f"energy gain {cmp.energy_gain:.2f}x, latency gain {cmp.latency_gain:.2f}x, "
                  f"{cmp.baseline.cores:,} cores, profile {args.profile or DEFAULT_PROFILE}", highlight=False)
    return 0
