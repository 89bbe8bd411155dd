"""Greedy studies across processes: Ray workers, a killed and resumed driver, a Ray cluster, an MLflow server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from test_study import FAST, load

from thresh_opt import keys
from thresh_opt.cli import main
from thresh_opt.study.driver import evaluated

# Marker `ray` (Ray runtimes and `ray start` clusters): `pytest -m "not ray"` skips them for a quick run.
pytestmark = pytest.mark.ray

GREEDY = {**FAST, "sampler": {"name": "greedy", "options": {"loss_inc": 1.01}}, "trials": 200,
          "baselines": {"dense": True, "uniform": []}}
# Three levels per kind: about 23 greedy trials instead of the linear levels' 58, enough to kill a driver
# midway; a second driver that joins midway needs the longer search.
SHORT = {"search_space": {"grouping": "kind", "levels": [0.2, 0.5, 0.8]}}


def write(tmp_path, name, **overrides):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**GREEDY, "name": name, "run_dir": str(tmp_path / name), **overrides}))
    return path


def final_of(tmp_path, name):
    """The greedy choices (parameters per pass) and the study."""
    study = load(tmp_path, name)
    return [f["params"] for f in study.user_attrs["thresh_opt:final"]], study


def completed_steps(study):
    return [(t.system_attrs.get("greedy:module"), t.system_attrs.get("greedy:candidate"))
            for t in study.get_trials(states=(TrialState.COMPLETE,))
            if t.system_attrs.get("greedy:role") == "candidate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RAY_BIN = os.path.join(os.path.dirname(sys.executable), "ray")
RAY_ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}


def start_ray_head(*resources: str) -> str:
    """A real `ray start --head` cluster on the loopback interface; its address. Started once more after a
    `ray stop` when the first start fails (a slow machine can miss Ray's own start-up deadlines), and the
    failure names Ray's own output."""
    port = free_port()
    cmd = [RAY_BIN, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), *resources,
           "--include-dashboard", "false", "--disable-usage-stats"]
    started = subprocess.run(cmd, env=RAY_ENV, capture_output=True, text=True, timeout=180)
    if started.returncode != 0:
        stop_ray()
        started = subprocess.run(cmd, env=RAY_ENV, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    return f"127.0.0.1:{port}"


def stop_ray() -> None:
    """`ray stop --force`: ends every Ray process on this machine (so the Ray tests run one at a time)."""
    subprocess.run([RAY_BIN, "stop", "--force"], env=RAY_ENV, capture_output=True, timeout=120)


def serial(tmp_path_factory, **overrides):
    tmp = tmp_path_factory.mktemp("serial")
    assert main(["study", "run", str(write(tmp, "g", **overrides))]) == 0
    final, _study = final_of(tmp, "g")
    assert final and len(final[0]) == 7
    assert all(v > 0 for v in final[0].values())  # loss_inc 1.01 lets every kind take some sparsity
    return final


@pytest.fixture(scope="module")
def serial_final(tmp_path_factory):
    """The serial greedy choices on the short search."""
    return serial(tmp_path_factory, **SHORT)


def test_greedy_makes_the_same_choices_with_two_ray_workers(tmp_path, serial_final):
    assert main(["study", "run", str(write(tmp_path, "g", **SHORT)), "--workers", "2"]) == 0
    final, study = final_of(tmp_path, "g")
    assert final == serial_final
    steps = completed_steps(study)
    assert len(steps) == len(set(steps))


def test_a_killed_study_resumes_without_losing_or_repeating_trials(tmp_path, serial_final):
    path = write(tmp_path, "g", **SHORT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "thresh_opt", "study", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "g" / "optuna.journal"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill it once a few trials are stored
        if journal.is_file() and journal.read_text().count('"state":1,') >= 4:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = load(tmp_path, "g")
    before = {t.number: t.params for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(before) >= 4
    assert "thresh_opt:final" not in study.user_attrs  # it really was interrupted
    assert main(["study", "run", str(path)]) == 0
    final, study = final_of(tmp_path, "g")
    after = {t.number: t.params for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert {n: after[n] for n in before} == before  # nothing completed was lost
    steps = completed_steps(study)
    assert len(steps) == len(set(steps))  # nothing completed was repeated
    assert final == serial_final


def test_a_study_on_a_ray_cluster_tracked_by_an_mlflow_server(tmp_path):
    address, mlflow_port = start_ray_head("--num-cpus", "2"), free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
                               str(mlflow_port), "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        uri = f"http://127.0.0.1:{mlflow_port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", mlflow_port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        # refined on a Ray worker too (training in the actor), and tracked by the server
        path = write(tmp_path, "c", sampler={"name": "random"}, trials=4,
                     refine={"targets": [1.05], "penalties": 1.0, "steps": 2, "batch_size": 2})
        joined = subprocess.run([sys.executable, "-m", "thresh_opt", "study", "run", str(path), "--ray-address",
                                 address, "--workers", "2", "--tracking-uri", uri, "--json"],
                                env={**RAY_ENV, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
        # a fresh process, as users join (Ray reads auth at import)
        assert joined.returncode == 0, joined.stderr[-2000:]
        study = load(tmp_path, "c")
        assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("c").experiment_id], max_results=50)
        assert sum(1 for r in runs if "trial_number" in r.data.tags) == 4
        (record,) = study.user_attrs[keys.REFINED]
        start = study.trials[record["setting"]["from_trial"]]
        assert record["thresholds"] != json.loads(start.user_attrs["thresholds"])  # trained in the actor
        assert record[keys.FORWARD_EQUIVALENTS] == pytest.approx(2 * 2 + 1, abs=0.01)
        (refined,) = [r for r in runs if r.data.tags.get("refined_target") == "1.05"]
        assert refined.data.metrics["loss_ratio"] == pytest.approx(record["values"]["loss_ratio"])
        parent = next(r for r in runs if r.data.tags.get("thresh_opt_role") == "study")
        assert any(a.path == "study" for a in client.list_artifacts(parent.info.run_id))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        stop_ray()


def test_ctrl_c_stops_cleanly_and_the_study_resumes(tmp_path):
    path = write(tmp_path, "i", sampler={"name": "random"}, trials=400)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "thresh_opt", "study", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "i" / "optuna.journal"
    deadline = time.time() + 240
    while time.time() < deadline and not (journal.is_file() and journal.read_text().count('"state":1,') >= 3):
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    study = load(tmp_path, "i")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    done = len(study.get_trials(states=(TrialState.COMPLETE,)))
    assert main(["study", "run", str(path), "--trials", str(done + 2)]) == 0
    assert len(load(tmp_path, "i").get_trials(states=(TrialState.COMPLETE,))) == done + 2


def _start(path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "thresh_opt", "study", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _two_drivers(tmp_path, name, path):
    """A second driver on the same run folder, started while the first is evaluating; both must exit 0."""
    first = _start(path)
    journal = tmp_path / name / "optuna.journal"
    deadline = time.time() + 240
    while time.time() < deadline and not (journal.is_file() and journal.read_text().count('"state":1,') >= 3):
        assert first.poll() is None, first.stderr.read()[-2000:]
        time.sleep(0.3)
    second = _start(path)
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    study = load(tmp_path, name)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert not [t for t in study.trials if "interrupted" in str(t.user_attrs.get("error", ""))]
    return study


def test_two_drivers_share_one_study_without_losing_or_repeating_trials(tmp_path):
    path = write(tmp_path, "two", sampler={"name": "random"}, trials=100, baselines={"dense": True, "uniform": [0.5]},
                 refine={"targets": [1.02, 1.05], "penalties": 1.0, "steps": 2, "batch_size": 2})
    study = _two_drivers(tmp_path, "two", path)
    # each target refined once, by whichever driver got to it first (the other found its record)
    client = MlflowClient(f"sqlite:///{tmp_path / 'two' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("two").experiment_id], max_results=500)
    assert sorted(r.data.tags["refined_target"] for r in runs if "refined_target" in r.data.tags) == ["1.02", "1.05"]
    assert sorted(r["setting"]["target"] for r in study.user_attrs[keys.REFINED]) == [1.02, 1.05]
    assert sum(evaluated(t) for t in study.trials) == 100  # the budget, not one more
    params = [tuple(sorted(t.params.items())) for t in study.trials]
    for level in (0.0, 0.5):  # each baseline enqueued and evaluated once
        assert params.count(tuple((k, level) for k, _ in sorted(study.trials[0].params.items()))) == 1
    assert len({t.system_attrs.get(keys.DRIVER) for t in study.trials}) == 2  # both drivers ran trials


def test_two_drivers_keep_the_greedy_step_barrier(tmp_path, tmp_path_factory):
    study = _two_drivers(tmp_path, "g", write(tmp_path, "g"))
    assert len({t.system_attrs.get(keys.DRIVER) for t in study.trials}) == 2  # both drivers ran greedy steps
    final = [f["params"] for f in study.user_attrs["thresh_opt:final"]]
    assert final == serial(tmp_path_factory)
    steps = completed_steps(study)
    assert len(steps) == len(set(steps))
