"""`thresh-opt model info|sparsity|train`: inspect, measure and train models."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from thresh_opt.cli._common import add_model_options, console, emit_json, load_from_args, read_json_object
from thresh_opt.errors import UserError
from thresh_opt.registry import ARCHITECTURES


def register(groups: argparse._SubParsersAction) -> None:
    """Add the `model` command group."""
    group = groups.add_parser("model", help="inspect, measure and train models")
    verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)

    info = verbs.add_parser("info", help="list the thresholded modules with their MAC weights")
    add_model_options(info)
    info.add_argument("--json", action="store_true", help="one JSON object on stdout")
    info.set_defaults(func=cmd_info)

    sp = verbs.add_parser("sparsity", help="per-module and MAC-weighted sparsity on held-out text")
    add_model_options(sp)
    how = sp.add_mutually_exclusive_group(required=True)
    how.add_argument("--uniform-sparsity", type=float, metavar="S",
                     help="every module thresholded for target sparsity S")
    how.add_argument("--thresholds", type=Path, metavar="FILE.json", help="JSON object {module name: threshold}")
    sp.add_argument("--text", type=Path, help="text file to run on (default: the embedded model's held-out text)")
    sp.add_argument("--ctx-len", type=int, default=128, help="tokens per chunk (default 128)")
    sp.add_argument("--chunks", type=int, default=32, help="chunks to run (default 32)")
    sp.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sp.set_defaults(func=cmd_sparsity)

    tr = verbs.add_parser("train", help="train a tokenizer and a small RWKV-4 or OPT model (the embedded recipe)")
    tr.add_argument("--arch", default="rwkv4", choices=list(ARCHITECTURES.names()))
    tr.add_argument("--out", type=Path, required=True, help="run folder (checkpoints; the model lands in OUT/model)")
    tr.add_argument("--source", action="append", dest="sources", metavar="SRC",
                    help="'kjv' (Debian bible-kjv-text, one verse per line), 'kjv-print' (its print layout, as the "
                         "shipped models saw it) or a text file; repeatable (default: kjv)")
    for name, default in [("layers", 6), ("hidden", 256), ("heads", 4), ("vocab-size", 4096), ("ctx-len", 128),
                          ("batch-size", 16), ("steps", 1500), ("warmup-steps", 100), ("eval-every", 100),
                          ("seed", 0), ("threads", 0)]:
        tr.add_argument(f"--{name}", type=int, default=default, help=f"default {default}")
    tr.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    tr.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default 0.05)")
    tr.add_argument("--time-limit", type=float, metavar="MIN", help="stop after MIN minutes and export")
    tr.set_defaults(func=cmd_train)


def _info_dict(loaded: Any) -> dict[str, Any]:
    tm = loaded.thresholded
    total = sum(tm.macs.values())
    return {
        "model": loaded.source,
        "class": type(loaded.model).__name__,
        "arch": tm.spec.arch,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "blocks": len({s.block for s in tm.sites}),
        "thresholded_macs_per_token": total,
        "modules": [
            {"name": s.name, "kind": s.kind, "block": s.block, "macs": s.macs, "mac_weight": s.macs / total}
            for s in tm.sites
        ],
    }


def cmd_info(args: argparse.Namespace) -> int:
    """Print the modules of a model and their MAC weights."""
    info = _info_dict(load_from_args(args))
    if args.json:
        emit_json(info)
        return 0
    smallest = min(m["macs"] for m in info["modules"])
    table = Table(title=f"{info['model']} ({info['class']}, {info['parameters']:,} parameters)")
    for col in ("module", "MACs/token", "relative", "share of MACs"):
        table.add_column(col, justify="left" if col == "module" else "right")
    for m in info["modules"]:
        table.add_row(m["name"], f"{m['macs']:,}", f"{m['macs'] / smallest:g}", f"{m['mac_weight']:.2%}")
    console.print(table)
    console.print(f"{len(info['modules'])} modules, {info['thresholded_macs_per_token']:,} thresholded MACs per token")
    return 0


def _sparsity_table(title: str, report: Any, loss: float, dense_loss: float) -> Table:
    table = Table(title=title)
    table.add_column("module")
    table.add_column("sparsity", justify="right")
    for name, value in report.per_module.items():
        table.add_row(name, f"{value:.1%}")
    table.add_section()
    for kind, value in report.per_kind.items():
        table.add_row(f"all {kind}", f"{value:.1%}")
    table.add_section()
    table.add_row("[bold]MAC-weighted[/bold]", f"[bold]{report.mac_weighted:.1%}[/bold]")
    table.add_row("unweighted mean", f"{report.unweighted:.1%}")
    table.add_row("held-out loss (nats)", f"{loss:.4f}")
    table.add_row("dense held-out loss", f"{dense_loss:.4f}")
    table.add_row("loss ratio", f"{loss / dense_loss:.4f}")
    return table


def cmd_sparsity(args: argparse.Namespace) -> int:
    """Run the model on held-out text with thresholds and report sparsity."""
    from thresh_opt.calibration import activation_stats
    from thresh_opt.models.loading import heldout_text
    from thresh_opt.objectives.text import mean_loss, token_chunks

    if args.uniform_sparsity is not None and not 0.0 <= args.uniform_sparsity <= 0.99:
        raise UserError(f"--uniform-sparsity {args.uniform_sparsity}: allowed 0 to 0.99")
    if args.chunks < 1 or args.ctx_len < 2:
        raise UserError("--chunks must be >= 1 and --ctx-len >= 2")
    thresholds = read_json_object(args.thresholds, "thresholds") if args.thresholds else None
    if args.text is not None and not args.text.is_file():
        raise UserError(f"--text {args.text}: no such file")
    loaded = load_from_args(args)
    text = args.text.read_text(encoding="utf-8") if args.text else heldout_text(loaded.source)
    chunks = token_chunks(loaded.tokenizer, text, args.ctx_len)[: args.chunks]
    tm = loaded.thresholded
    started = time.perf_counter()
    with console.status("dense reference pass"):
        dense_loss = mean_loss(loaded.model, chunks)
    if thresholds is not None:
        try:
            tm.set_thresholds(thresholds)
        except UserError as exc:
            raise UserError(f"{args.thresholds}: {exc}") from None
    else:
        with console.status("activation statistics"):
            thresholds = activation_stats(tm, chunks).at(args.uniform_sparsity)
        tm.set_thresholds(thresholds)
    with console.status(f"running {len(chunks)} x {args.ctx_len} tokens"), tm.counting():
        loss = mean_loss(loaded.model, chunks)
    report = tm.sparsity()
    result = {
        "model": loaded.source,
        "tokens": report.tokens,
        "heldout_loss": loss,
        "dense_heldout_loss": dense_loss,
        "loss_ratio": loss / dense_loss,
        "seconds": time.perf_counter() - started,
        **report.to_dict(),
        "thresholds": tm.thresholds,
    }
    if args.json:
        emit_json(result)
    else:
        console.print(_sparsity_table(f"{loaded.source}: sparsity over {report.tokens:,} tokens", report, loss,
                                      dense_loss))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train a tokenizer and model with the embedded-model recipe, then export it with a model card."""
    from thresh_opt.training.modelcard import write_model_card
    from thresh_opt.training.train import TrainConfig, train

    cfg = TrainConfig(
        arch=args.arch, layers=args.layers, hidden=args.hidden, heads=args.heads, vocab_size=args.vocab_size,
        ctx_len=args.ctx_len, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
        max_steps=args.steps, eval_every=args.eval_every, weight_decay=args.weight_decay, seed=args.seed,
        threads=args.threads, sources=args.sources or ["kjv"],
    )
    try:
        metrics = train(cfg, args.out, time_limit_s=args.time_limit * 60 if args.time_limit else None,
                        log=lambda s: console.print(s, highlight=False))
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    write_model_card(args.out / "model")
    console.print(f"model saved to {args.out / 'model'}: {metrics}", highlight=False)
    return 0
