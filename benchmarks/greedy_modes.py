"""Fast vs paper greedy: forward-equivalents and wall time, side by side in one run, same choices checked.

    python benchmarks/greedy_modes.py [--models embedded:rwkv4-tiny,embedded:opt-tiny] [--count 8]
                                      [--ctx-len 128] [--loss-inc 1.002] [--threads 1]

Paper mode is the published procedure (design.md 1.3): a full calibration pass per module for its
statistics, a full pass per candidate. Fast mode skips the blocks upstream of the module under search
(their output is cached) and records the next module's statistics during the accepted pass. Both use
the warm start. The goal is fast <= 0.25x paper with the same per-module choices.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from thresh_opt.calibration import CalibrationSpec, calibration_chunks  # noqa: E402
from thresh_opt.greedy import greedy_search  # noqa: E402
from thresh_opt.models import load_model  # noqa: E402


def main() -> None:
    """Print one row per model and mode, and the fast/paper ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="embedded:rwkv4-tiny,embedded:opt-tiny")
    p.add_argument("--count", type=int, default=8, help="calibration chunks")
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--loss-inc", type=float, default=1.002)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':22} {'mode':6} {'loss passes':>11} {'stats passes':>12} {'fwd-equiv':>9} {'seconds':>8} "
          f"{'loss ratio':>10} {'sparsity':>8}")
    for source in args.models.split(","):
        loaded = load_model(source)
        chunks = calibration_chunks(loaded, CalibrationSpec(source="heldout", ctx_len=args.ctx_len, count=args.count))
        results = {}
        for mode in ("paper", "fast"):
            r = greedy_search(loaded.thresholded, chunks, mode, args.loss_inc)
            results[mode] = r
            print(f"{source:22} {mode:6} {r.cost.loss_passes:11d} {r.cost.stats_passes:12d} "
                  f"{r.cost.forward_equivalents:9.1f} {r.seconds:8.1f} {r.final_loss / r.dense_loss:10.4f} {r.sparsity:8.1%}")
        fast, paper = results["fast"], results["paper"]
        differing = [n for n in fast.levels if fast.levels[n] != paper.levels[n]]
        print(f"{source:22} fast/paper: {fast.cost.forward_equivalents / paper.cost.forward_equivalents:.3f}x "
              f"forward-equivalents, {fast.seconds / paper.seconds:.3f}x time; same choices: {not differing} "
              f"({len(differing)} of {len(fast.levels)} modules differ); "
              f"loss passes per module: {paper.cost.loss_passes / len(fast.levels):.2f}")


if __name__ == "__main__":
    main()
