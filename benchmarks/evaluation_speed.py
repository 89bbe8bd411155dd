"""One configuration's evaluation vs one dense forward pass over the same calibration data (the floor).

    python benchmarks/evaluation_speed.py [--model embedded:rwkv4-tiny] [--count 32] [--ctx-len 128] [--repeats 5]

The evaluator is built once (tokens, statistics and the hardware model cached), then evaluates a new
thresholds configuration per repeat, as a study's trials do. Both timings come from the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from thresh_opt.calibration import CalibrationSpec, cached_activation_stats
from thresh_opt.models import load_model
from thresh_opt.objectives.evaluator import Evaluator


def main() -> None:
    """Print the evaluation/floor ratio for the default objectives."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="embedded:rwkv4-tiny")
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--objectives", default="loss_ratio,sparsity,energy_gain,latency_gain")
    args = p.parse_args()
    loaded = load_model(args.model)
    spec = CalibrationSpec(ctx_len=args.ctx_len, count=args.count)
    with tempfile.TemporaryDirectory() as cache:
        ev = Evaluator(loaded, args.objectives.split(","), calibration=spec, cache=Path(cache))
        stats = cached_activation_stats(loaded, spec, cache=Path(cache))
        ev.dense  # noqa: B018 - the one-off reference pass, as in a study
        chunks = ev.calibration_chunks
        floors, evals = [], []
        for i in range(args.repeats):
            with loaded.thresholded.bare() as model, torch.no_grad():
                start = time.perf_counter()
                for batch in chunks.split(ev.batch_size):
                    model(input_ids=batch)
                floors.append(time.perf_counter() - start)
            target = 0.3 + 0.5 * i / max(1, args.repeats - 1)
            evals.append(ev.evaluate(stats.at(target)).seconds)
    floor, evaluation = statistics.median(floors), statistics.median(evals)
    print(f"{args.model}: {args.count} x {args.ctx_len} calibration tokens, objectives {args.objectives}")
    print(f"dense forward (floor) {floor * 1e3:.0f} ms, one evaluation {evaluation * 1e3:.0f} ms, "
          f"ratio {evaluation / floor:.2f}")


if __name__ == "__main__":
    main()
