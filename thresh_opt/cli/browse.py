"""`thresh-opt ui` (the MLflow UI) and `thresh-opt dashboard` (optuna-dashboard) on a run folder, on 127.0.0.1."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from thresh_opt import keys
from thresh_opt.cli._common import console
from thresh_opt.errors import UserError

HOST = "127.0.0.1"  # loopback only: neither server asks who is calling

# The MLflow UI's runs table, flat: `workflowType` picks the training (not GenAI) view, and a sort other than by
# creation time lists the trials' nested runs beside the study's parent run instead of folding them under it.
RUNS_VIEW = {"workflowType": "machine_learning", "orderByKey": "tags.`mlflow.runName`", "orderByAsc": "true"}


def register(groups: argparse._SubParsersAction) -> None:
    """Add `ui` and `dashboard`."""
    ui = groups.add_parser("ui", help=f"start the MLflow UI for a run folder on {HOST}; prints its runs address")
    ui.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ui.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    ui.set_defaults(func=cmd_ui)
    dash = groups.add_parser("dashboard", help=f"start optuna-dashboard for a run folder's studies on {HOST}")
    dash.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR", help="a run folder (its optuna.journal)")
    dash.add_argument("--storage", metavar="URL", help="storage URL (an RDB study) or journal file instead of RUN_DIR")
    dash.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    dash.set_defaults(func=cmd_dashboard)


def runs_address(base: str, experiment_id: str) -> str:
    """The MLflow UI address that opens on an experiment's runs table, its trials listed."""
    return f"{base}/#/experiments/{experiment_id}/runs?{urlencode(RUNS_VIEW)}"


def study_experiments(tracking_uri: str) -> list[tuple[str, str]]:
    """(id, name) of the experiments that hold runs: one per study or comparison (MLflow's empty Default left out)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    return [(e.experiment_id, e.name) for e in client.search_experiments()
            if client.search_runs([e.experiment_id], max_results=1)]


def _check_port(port: int) -> None:
    """Fail with one line, before anything starts, when the port is taken (or not a port)."""
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: not a port (1-65535)")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: a closing port is free
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise UserError(f"--port {port}: cannot listen on {HOST}:{port} ({exc.strerror}); choose another") from None


def cmd_ui(args: argparse.Namespace) -> int:
    """Start `mlflow ui` on 127.0.0.1 for a run folder's tracking store; print the address of each study's runs."""
    import os

    from thresh_opt.tracking import default_tracking_uri

    if not (args.run_dir / keys.MLFLOW_DB).is_file():
        raise UserError(f"{args.run_dir}: no {keys.MLFLOW_DB} here "
                        "(run a study first, or use `mlflow ui` with your URI)")
    _check_port(args.port)
    uri = default_tracking_uri(args.run_dir)
    base = f"http://{HOST}:{args.port}"
    experiments = study_experiments(uri)
    tail = f"tracking store {uri}; Ctrl-C stops"
    if not experiments:
        console.print(f"MLflow UI: {base}/  ({tail})", highlight=False, soft_wrap=True)
    for i, (exp_id, name) in enumerate(experiments, 1):
        note = f"experiment {name!r}" + (f"; {tail}" if i == len(experiments) else "")
        console.print(f"MLflow UI: {runs_address(base, exp_id)}  ({note})", highlight=False, soft_wrap=True)
    sys.stderr.flush()
    # Become the MLflow UI process: Ctrl-C and signals reach the server directly (it stops with exit 0).
    os.execv(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--host", HOST, "--port", str(args.port),
                              "--backend-store-uri", uri])
    return 0  # not reached


def _dashboard_storage(args: argparse.Namespace) -> tuple[Any, str]:
    """The Optuna storage to show and how to name it: --storage (a URL or a journal file) or RUN_DIR's journal."""
    from optuna.storages import RDBStorage

    from thresh_opt import compat

    if args.storage and "://" in args.storage:
        from sqlalchemy.engine import make_url

        try:
            return RDBStorage(args.storage), make_url(args.storage).render_as_string(hide_password=True)
        except Exception as exc:  # noqa: BLE001 - unreachable database, bad URL: one line
            raise UserError(f"--storage {args.storage}: {str(exc).splitlines()[0]}") from None
    if args.storage:
        journal, what = Path(args.storage), f"--storage {args.storage}"
    elif args.run_dir is not None:
        journal, what = args.run_dir / keys.JOURNAL_FILE, str(args.run_dir)
    else:
        raise UserError("dashboard: give a run folder (RUN_DIR) or --storage URL")
    if not journal.is_file():
        raise UserError(f"{what}: no study here (no {journal})")
    return compat.journal_storage(journal), str(journal)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on 127.0.0.1 until Ctrl-C, which stops it cleanly: exit 0, like `mlflow ui`."""
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna_dashboard

    storage, name = _dashboard_storage(args)
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: not a port (1-65535)")

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # one line of ours, not one per request
            pass

    # optuna_dashboard.wsgi is the app that run_server serves; serving it here keeps the output to one line and
    # reports a taken port before anything is printed.
    try:
        server = make_server(HOST, args.port, optuna_dashboard.wsgi(storage), WSGIServer, QuietHandler)
    except OSError as exc:
        raise UserError(f"--port {args.port}: cannot listen on {HOST}:{args.port} ({exc.strerror}); "
                        "choose another") from None
    console.print(f"Optuna dashboard: http://{HOST}:{args.port}/dashboard  (storage {name}; Ctrl-C stops)",
                  highlight=False, soft_wrap=True)
    # Requests are served on a thread of their own, so that Ctrl-C (raised in the main thread only) never lands inside
    # one: wsgiref would catch it there as a failed request and keep serving.
    serving = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    serving.start()
    try:
        while serving.is_alive():
            serving.join(0.5)
    except KeyboardInterrupt:
        server.shutdown()  # after the request in progress; a second Ctrl-C stops at once (exit 130)
        console.print("dashboard stopped", highlight=False)
    finally:
        server.server_close()
    return 0
