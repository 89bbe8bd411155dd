"""`thresh-opt ui` and `thresh-opt dashboard`: real servers on a short study's run folder, checked over their HTTP APIs
and, for the MLflow UI, in headless Chromium (what a user's browser shows)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from thresh_opt.cli import main

CHROMIUM = Path("/usr/bin/chromium")
STUDY = {"name": "s", "model": {"source": "embedded:rwkv4-tiny"}, "calibration": {"ctx_len": 32, "count": 2},
         "search_space": {"grouping": "kind", "levels": "linear"},
         "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}], "sampler": {"name": "random"}}
_OPEN = urllib.request.build_opener(urllib.request.ProxyHandler({})).open  # loopback: never through a proxy


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder (journal and MLflow store) of a 4-trial study on the embedded model."""
    tmp = tmp_path_factory.mktemp("browse")
    path = tmp / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "run_dir": str(tmp / "s")}))
    assert main(["study", "run", str(path), "--trials", "4"]) == 0
    return tmp / "s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _own_group() -> None:
    """In the child: its own process group (the UI's server workers stop with it), and Ctrl-C not ignored even when
    the tests run as a background job (which ignores SIGINT, and children inherit that)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args: list[str], log: Path) -> subprocess.Popen:
    """`thresh-opt ARGS` in a fresh process, its stderr in LOG."""
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "thresh_opt", *args], stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_own_group)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 60) -> int:
    """Send SIG to the process group, wait for the process; kill the group if it does not end in time."""
    try:
        os.killpg(proc.pid, sig)
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        raise
    except ProcessLookupError:
        return proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the UI's workers, had their parent gone first
            os.killpg(proc.pid, signal.SIGKILL)


def get(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> bytes:
    """GET url once the server answers (polling); fail with the server's log if it exits or never answers."""
    deadline = time.time() + timeout
    while True:
        try:
            return _OPEN(url, timeout=5).read()
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            if time.time() > deadline:
                pytest.fail(f"no answer from {url} in {timeout:.0f} s:\n{log.read_text()}")
            time.sleep(0.5)


@pytest.fixture(scope="module")
def ui(run_dir, tmp_path_factory):
    """`thresh-opt ui RUN_DIR` on a free port: (port, the lines it printed, the log)."""
    port = free_port()
    log = tmp_path_factory.mktemp("ui") / "stderr.txt"
    proc = start(["ui", str(run_dir), "--port", str(port)], log)
    try:
        get(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
        yield port, [line for line in log.read_text().splitlines() if line.startswith("MLflow UI:")], log
    finally:
        assert stop(proc) == 0, log.read_text()  # Ctrl-C stops the UI and its workers cleanly


def printed_address(ui) -> tuple[str, str]:
    """The one address `thresh-opt ui` printed and its experiment id."""
    port, lines, log = ui
    assert len(lines) == 1, log.read_text()
    found = re.fullmatch(rf"MLflow UI: (http://127\.0\.0\.1:{port}/#/experiments/(\d+)/runs\?\S+)  "
                         r"\(experiment 's'; tracking store sqlite:///\S+; Ctrl-C stops\)", lines[0])
    assert found, lines[0]
    return found.group(1), found.group(2)


def rendered(url: str, tmp_path: Path) -> str:
    """The DOM of url after its scripts ran, in headless Chromium with a fresh profile (nothing remembered)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's `chromium` package): the browser checks need it")
    profile = tmp_path / "chromium-profile"
    out = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", "--no-proxy-server", f"--user-data-dir={profile}",
                          "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-3000:]
    return out.stdout


def runs_view(dom: str) -> bool:
    """The experiment page's runs table, not the GenAI overview (traces, usage and quality charts)."""
    return "matching runs" in dom and "Detect Issues" not in dom and ">Tool calls<" not in dom


def test_ui_prints_the_address_of_the_study_runs_and_tags_the_experiment(ui, run_dir):
    port, _, log = ui
    address, exp_id = printed_address(ui)
    assert log.read_text().lstrip().startswith("MLflow UI:")  # printed before the server's own output
    assert "workflowType=machine_learning" in address
    api = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments"
    by_name = json.loads(_OPEN(f"{api}/get-by-name?experiment_name=s", timeout=30).read())["experiment"]
    assert by_name["experiment_id"] == exp_id  # the study's experiment
    exp = json.loads(_OPEN(f"{api}/get?experiment_id={exp_id}", timeout=30).read())["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"


def test_the_printed_address_shows_the_trial_runs_in_a_browser(ui, tmp_path):
    address, _ = printed_address(ui)
    dom = rendered(address, tmp_path)
    assert runs_view(dom) and "Sort: Run Name" in dom
    assert {"trial-0", "trial-1", "trial-2"} <= set(re.findall(r"trial-\d+", dom))  # the nested runs, unfolded


def test_the_experiment_link_with_the_workflow_opens_on_the_runs(ui, tmp_path):
    port, _, _ = ui
    _, exp_id = printed_address(ui)
    dom = rendered(f"http://127.0.0.1:{port}/#/experiments/{exp_id}?workflowType=machine_learning", tmp_path)
    assert runs_view(dom) and ">s<" in dom  # the study's parent run (its trials folded under it)


def test_ui_without_a_tracking_store_or_on_a_taken_port_is_one_line(run_dir, tmp_path, capsys):
    assert main(["ui", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no mlflow.db here (run a study first, or use " \
                                              "`mlflow ui` with your URI)"
    with socket.socket() as taken:  # in a child: were the check to miss, `ui` would become the MLflow UI
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "thresh_opt", "ui", str(run_dir), "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith(f"error: --port {port}: cannot listen"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_dashboard_serves_the_journal_and_stops_on_ctrl_c(run_dir, tmp_path):
    journal = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    study = optuna.load_study(study_name="s", storage=journal)
    port = free_port()
    log = tmp_path / "stderr.txt"
    proc = start(["dashboard", str(run_dir), "--port", str(port)], log)
    try:
        studies = json.loads(get(f"http://127.0.0.1:{port}/api/studies", proc, log, timeout=120))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["s"]
        detail = json.loads(_OPEN(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}", timeout=60).read())
        assert detail["name"] == "s" and len(detail["trials"]) == len(study.trials) == 4
        assert _OPEN(f"http://127.0.0.1:{port}/", timeout=30).status == 200  # the page itself, after the redirect
        started = time.time()
        rc = stop(proc, timeout=20)
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0 and time.time() - started < 20, text
    assert "Traceback" not in text
    assert text.splitlines() == [f"Optuna dashboard: http://127.0.0.1:{port}/dashboard  (storage "
                                 f"{run_dir / 'optuna.journal'}; Ctrl-C stops)", "dashboard stopped"]


def test_dashboard_serves_an_rdb_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="rdb", storage=url)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    port = free_port()
    log = tmp_path / "stderr.txt"
    proc = start(["dashboard", "--storage", url, "--port", str(port)], log)
    try:
        studies = json.loads(get(f"http://127.0.0.1:{port}/api/studies", proc, log, timeout=120))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["rdb"]
    finally:
        assert stop(proc, timeout=20) == 0, log.read_text()


def test_dashboard_errors_are_one_line(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no study here (no {tmp_path / 'optuna.journal'})"
    assert main(["dashboard"]) == 2
    assert capsys.readouterr().err.strip() == "error: dashboard: give a run folder (RUN_DIR) or --storage URL"
    (tmp_path / "optuna.journal").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --port {port}: cannot listen on 127.0.0.1:{port}") and "\n" not in err


def test_the_tracker_tags_new_and_older_experiments_as_training_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from thresh_opt.tracking import StudyTracker, default_tracking_uri

    client = MlflowClient(default_tracking_uri(tmp_path))
    older = client.create_experiment("older")  # as made before the tag was set
    client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})  # a kind chosen: kept
    for name in ("older", "new", "genai"):
        StudyTracker(None, tmp_path, name).finish()
    kinds = {e.name: e.tags.get("mlflow.experimentKind") for e in client.search_experiments()}
    assert kinds == {"older": "custom_model_development", "new": "custom_model_development",
                     "genai": "genai_development", "Default": None}
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"
