"""Studies at scale with a real Ray runtime: killed workers, GPU requests on a cluster, loopback-only listeners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState
from test_study import FAST, load, write_study
from test_study_parallel import start_ray_head, stop_ray

from thresh_opt import keys
from thresh_opt.cli import main
from thresh_opt.study.driver import evaluated

# Marker `ray` (Ray runtimes and `ray start` clusters): `pytest -m "not ray"` skips them for a quick run.
pytestmark = pytest.mark.ray

RANDOM = {"sampler": {"name": "random"}, "baselines": {"dense": True, "uniform": []}}


def start_study(path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "thresh_opt", "study", "run", str(path), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_study_process(path, *args):
    """`thresh-opt study run` in a fresh process, as a user runs it (Ray reads some settings at import)."""
    proc = start_study(path, *args)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def kill_a_worker_after(tmp_path, name, proc, trials: int) -> int:
    """Once `trials` trials are stored, SIGKILL the first Ray worker (what the OOM killer does); its pid."""
    deadline = time.time() + 300
    while time.time() < deadline:
        journal = tmp_path / name / "optuna.journal"
        if journal.is_file() and journal.read_text().count('"state":1,') >= trials:
            break
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.3)
    pid = load(tmp_path, name).user_attrs[keys.WORKERS][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_killed_ray_worker_is_replaced_and_the_study_finishes_its_budget(tmp_path):
    path = write_study(tmp_path, "k", trials=40, **RANDOM)
    proc = start_study(path, "--workers", "2")
    kill_a_worker_after(tmp_path, "k", proc, 5)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    study = load(tmp_path, "k")
    assert sum(evaluated(t) for t in study.trials) == 40  # the whole budget, the lost trial not counted
    lost = [t for t in study.trials if keys.WORKER_LOST in t.user_attrs]
    assert len(lost) == 1 and lost[0].state == TrialState.PRUNED
    assert "ActorDiedError" in lost[0].user_attrs[keys.WORKER_LOST]
    assert study.user_attrs[keys.WORKER_DEATHS] == 1
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_workers_that_keep_dying_stop_the_study_with_one_line_and_keep_what_was_stored(tmp_path):
    path = write_study(tmp_path, "d", trials=400, max_worker_restarts=0, **RANDOM)
    proc = start_study(path, "--workers", "2")
    kill_a_worker_after(tmp_path, "d", proc, 4)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "more than max_worker_restarts (0)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    study = load(tmp_path, "d")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 4 and all(t.values for t in done)
    assert not study.get_trials(states=(TrialState.RUNNING,))  # in-flight trials stored abandoned
    assert main(["study", "run", str(path), "--trials", str(len(study.trials) + 2)]) == 0  # and it resumes


@pytest.fixture(scope="module")
def gpu_cluster():
    """A real `ray start` cluster that declares 2 GPUs (none exist: Ray only does the bookkeeping)."""
    address = start_ray_head("--num-cpus", "2", "--num-gpus", "2")
    try:
        yield address
    finally:
        stop_ray()


@pytest.mark.parametrize(("gpus", "distinct"), [("1", 2), ("0.5", None)])
def test_ray_workers_get_the_gpus_they_request(tmp_path, gpu_cluster, gpus, distinct):
    path = write_study(tmp_path, "g", trials=4, **RANDOM)
    code, err = run_study_process(path, "--ray-address", gpu_cluster, "--workers", "2", "--gpus-per-worker", gpus)
    assert code == 0, err[-2000:]
    workers = load(tmp_path, "g").user_attrs[keys.WORKERS]
    assert len(workers) == 2 and all(len(w["gpus"]) == 1 and w["gpus"][0] in ("0", "1") for w in workers)
    assert all(w["device"] == "cpu" for w in workers)  # the study asked for cpu: Ray's GPUs are not forced on it
    if distinct:
        assert len({w["gpus"][0] for w in workers}) == distinct


def test_ray_workers_without_gpus_see_none(tmp_path, gpu_cluster):
    path = write_study(tmp_path, "n", trials=2, **RANDOM)
    code, err = run_study_process(path, "--ray-address", gpu_cluster, "--workers", "2")
    assert code == 0, err[-2000:]
    assert all(w["gpus"] == [] for w in load(tmp_path, "n").user_attrs[keys.WORKERS])


def test_a_cuda_model_on_ray_workers_needs_gpus_per_worker(tmp_path, capsys):
    path = write_study(tmp_path, "c", workers=2, model={**FAST["model"], "device": "cuda"})
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: gpus_per_worker: model.device 'cuda' on Ray workers needs gpus_per_worker > 0" in err
    path = write_study(tmp_path, "c", model={**FAST["model"], "device": "cuda"})
    assert main(["study", "run", str(path), "--workers", "2"]) == 2
    assert "gpus_per_worker" in capsys.readouterr().err


def _listening() -> set[tuple[str, str]]:
    """(address, port) of every listening TCP socket, from /proc/net/tcp and tcp6 (hex, as the kernel writes)."""
    found = set()
    for name in ("tcp", "tcp6"):
        with open(f"/proc/net/{name}") as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":
                    found.add(tuple(local.split(":")))
    return found


LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net")
def test_a_local_ray_runtime_listens_on_loopback_only(tmp_path):
    import ray
    from ray._private import ray_constants

    from thresh_opt.study.config import load_study
    from thresh_opt.study.ray_executor import RayExecutor

    cfg, space = load_study(write_study(tmp_path, "l", **RANDOM))
    cluster_switch = ray_constants.ENABLE_RAY_CLUSTER
    before = _listening()
    executor = RayExecutor(cfg, space, workers=2)
    try:
        executor.info()  # the actors are up
        opened = _listening() - before
        assert len(opened) >= 4  # GCS, raylet, core workers...: the check can fail
        assert all(addr in LOOPBACK for addr, _ in opened), opened
        # restored: a later ray.init(address=...) joins clusters
        assert cluster_switch == ray_constants.ENABLE_RAY_CLUSTER
    finally:
        executor.close()
    assert not ray.is_initialized()
