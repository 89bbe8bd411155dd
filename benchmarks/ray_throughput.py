"""Trial throughput: serial vs 1 Ray actor vs N Ray actors, the same study side by side in one run.

    python benchmarks/ray_throughput.py [--trials 40] [--workers 2] [--count 8]

Both runs evaluate the same random-sampler study (same seed, same trials) on the embedded RWKV-4 model.
Printed: start-up time (model loads, Ray start), steady trials per second (from the first to the last
completed trial), and the ratio of the steady rates.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import optuna

from thresh_opt.study.config import SamplerConfig, SearchSpaceConfig, StudyConfig
from thresh_opt.study.driver import StudyRun, run_study
from thresh_opt.study.executors import SerialExecutor
from thresh_opt.study.ray_executor import RayExecutor


def measure(cfg: StudyConfig, space: SearchSpaceConfig, workers: int) -> tuple[float, float]:
    """(start-up seconds, steady trials per second) of one run; workers 0: serial, in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        executor = RayExecutor(cfg, space, workers) if workers > 0 else SerialExecutor(cfg, space)
        executor.dense()
        startup = time.perf_counter() - start
        try:
            study = run_study(StudyRun(cfg, space, Path(tmp)), executor)
        finally:
            executor.close()
        done = sorted(t.datetime_complete for t in study.trials if t.datetime_complete)
    span = (done[-1] - done[0]).total_seconds()
    return startup, (len(done) - 1) / span


def main() -> None:
    """Print both runs and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--count", type=int, default=8, help="calibration chunks of 128 tokens")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = StudyConfig(name="throughput", sampler=SamplerConfig(name="random"), trials=args.trials,
                      calibration={"count": args.count})
    space = SearchSpaceConfig(grouping="kind")
    serial = measure(cfg, space, 0)
    one = measure(cfg, space, 1)
    ray = measure(cfg, space, args.workers)
    print(f"{args.trials} trials, {args.count} x 128 calibration tokens, {os.cpu_count()} CPUs")
    print(f"serial (in the driver, all threads): start-up {serial[0]:.1f} s, {serial[1]:.2f} trials/s")
    print(f"ray (1 actor, 1 thread): start-up {one[0]:.1f} s, {one[1]:.2f} trials/s")
    print(f"ray ({args.workers} actors, 1 thread each): start-up {ray[0]:.1f} s, {ray[1]:.2f} trials/s")
    print(f"ray {args.workers} actors / 1 actor steady throughput: {ray[1] / one[1]:.2f}x; "
          f"/ serial: {ray[1] / serial[1]:.2f}x")


if __name__ == "__main__":
    main()
