"""The thresh-opt command line: command groups with verbs, one module per group."""

from __future__ import annotations

import argparse
import os
import sys

from rich.markup import escape

from thresh_opt.cli import baseline as baseline_cmd
from thresh_opt.cli import browse as browse_cmd
from thresh_opt.cli import calibrate as calibrate_cmd
from thresh_opt.cli import evaluate as evaluate_cmd
from thresh_opt.cli import greedy as greedy_cmd
from thresh_opt.cli import hardware as hardware_cmd
from thresh_opt.cli import model as model_cmd
from thresh_opt.cli import study as study_cmd
from thresh_opt.cli._common import console
from thresh_opt.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="thresh-opt",
        description="Find activation thresholds that make LLMs cheap on neuromorphic hardware.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    groups = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    model_cmd.register(groups)
    hardware_cmd.register(groups)
    calibrate_cmd.register(groups)
    evaluate_cmd.register(groups)
    greedy_cmd.register(groups)
    study_cmd.register(groups)
    baseline_cmd.register(groups)
    browse_cmd.register(groups)
    return parser


def _quiet_libraries() -> None:
    """Our rich output replaces the libraries' own progress bars and info logs."""
    import logging

    for name in ("mlflow", "optuna", "lm_eval", "datasets", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 1 on a failed run, 2 on bad usage or input."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        console.print("[red]error:[/red]", escape(str(exc)), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as exc:  # a failed run: one line, the traceback only with --debug
        if args.debug:
            raise
        console.print("[red]failed:[/red]", escape(f"{type(exc).__name__}: {exc}"), highlight=False, soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
