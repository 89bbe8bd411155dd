"""The published greedy four ways, side by side in one run: paper mode, fast mode, early mode and a greedy
study.

    python benchmarks/greedy_modes.py [--models embedded:rwkv4-tiny,embedded:opt-tiny] [--count 8]
                                      [--ctx-len 128] [--loss-inc 1.002] [--threads 2] [--no-study]
                                      [--ways early,early2,early3]

Paper mode is the published procedure (design.md 1.3): a full calibration pass per module for its
statistics, a full pass per candidate. Fast mode evaluates incrementally (passes start at the block under
search, statistics come from the accepted pass). The study is `thresh-opt study run` on the same model,
calibration set, levels and tolerance (per-module space, sequential statistics, dense baseline only): its
trials' forward-equivalents plus the dense reference, its evaluation seconds, and the wall time of the
whole command (imports, model load, Optuna, MLflow, plots). Fast mode and the study must make paper mode's
choices. Early mode (fast with early rejection, one chunk per batch) may make others: its row says how many
modules differ, and its final loss and sparsity are measured on the whole calibration set; `early` is the
default test (z = 4 on both sides), `early2` the two-sided one (z_accept 2, z_reject 4, rejections from 3
chunks), `early3` the same with z_reject 3. `--ways` picks some (paper and fast always run: the ratios are
against them).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import yaml

from thresh_opt.calibration import CalibrationSpec
from thresh_opt.greedy import greedy_search
from thresh_opt.models import load_model

REPO = Path(__file__).resolve().parent.parent
# (row, mode, early-rejection test): early2 is the two-sided test, lenient on acceptance
# (thresh_opt.incremental.sequential: why two sides)
WAYS = [("paper", "paper", None), ("fast", "fast", None), ("early", "early", None),
        ("early2", "early", {"z_accept": 2.0, "z_reject": 4.0, "min_reject_chunks": 3}),
        ("early3", "early", {"z_accept": 2.0, "z_reject": 3.0, "min_reject_chunks": 3})]


def study(source: str, spec: CalibrationSpec, loss_inc: float, threads: int, folder: Path) -> dict:
    """Run the greedy study as a user would and read back its cost and choices."""
    space = "rwkv4-per-module.yaml" if "rwkv" in source else "opt-per-module.yaml"
    cfg = {"name": "greedy-study", "model": {"source": source}, "calibration": spec.model_dump(),
           "search_space": str(REPO / "search_spaces" / space), "run_dir": str(folder / "run"),
           "objectives": [{"name": "loss_ratio"}, {"name": "energy_gain"}],
           "sampler": {"name": "greedy", "options": {"loss_inc": loss_inc}}, "trials": 1000,
           "baselines": {"dense": True, "uniform": []}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "thresh_opt", "study", "run", str(path), "--json"], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - began
    data = json.loads(out.stdout)
    return {"wall": wall, "cost": data["cost"], "final": data["final"][0]}


def main() -> None:
    """Print one row per model and way, and the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="embedded:rwkv4-tiny,embedded:opt-tiny")
    p.add_argument("--count", type=int, default=8, help="calibration chunks")
    p.add_argument("--ctx-len", type=int, default=128)
    p.add_argument("--loss-inc", type=float, default=1.002)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-study", action="store_true", help="skip the study (the slowest way)")
    p.add_argument("--ways", help="comma-separated early ways (default: all of them)")
    args = p.parse_args()
    early_ways = [w for w, mode, _ in WAYS if mode == "early"]
    chosen = args.ways.split(",") if args.ways else early_ways
    if unknown := [w for w in chosen if w not in early_ways]:
        sys.exit(f"--ways: unknown way {unknown[0]!r}; allowed: {', '.join(early_ways)}")
    ways = [w for w in WAYS if w[1] != "early" or w[0] in chosen]
    torch.set_num_threads(args.threads)
    print(f"{'model':22} {'way':6} {'trials':>6} {'loss passes':>11} {'stats passes':>12} {'fwd-equiv':>9} "
          f"{'eval s':>7} {'wall s':>7} {'loss ratio':>10} {'sparsity':>8}")
    for source in args.models.split(","):
        loaded = load_model(source)
        spec = CalibrationSpec(source="heldout", ctx_len=args.ctx_len, count=args.count)
        results = {}
        for way, mode, test in ways:
            began = time.perf_counter()
            r = results[way] = greedy_search(loaded, spec, mode, args.loss_inc, early_test=test)
            print(f"{source:22} {way:6} {r.trials:6d} {r.cost.loss_passes:11d} {r.cost.stats_passes:12d} "
                  f"{r.cost.forward_equivalents:9.1f} {r.cost.seconds:7.1f} {time.perf_counter() - began:7.1f} "
                  f"{r.final_loss / r.dense_loss:10.4f} {r.sparsity:8.1%}")
        fast, paper = results["fast"], results["paper"]
        for way in chosen:
            early = results[way]
            early_differing = [n for n in early.levels if early.levels[n] != paper.levels[n]]
            print(f"{source:22} {way}/paper: {early.cost.forward_equivalents / paper.cost.forward_equivalents:.3f}x "
                  f"FE, {early.cost.seconds / paper.cost.seconds:.3f}x evaluation time, {way}/fast: "
                  f"{early.cost.forward_equivalents / fast.cost.forward_equivalents:.3f}x FE; sparsity "
                  f"{100 * (early.sparsity - paper.sparsity):+.2f} points, loss ratio "
                  f"{early.final_loss / early.dense_loss - paper.final_loss / paper.dense_loss:+.4f} against paper "
                  f"(x{early.final_loss / paper.final_loss:.4f}); {len(early_differing)} of {len(paper.levels)} "
                  f"modules differ; {early.cost.loss_batches} one-chunk loss batches")
        if args.no_study:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            s = study(source, spec, args.loss_inc, args.threads, Path(tmp))
        c = s["cost"]
        print(f"{source:22} {'study':6} {c['trials']:6d} {'':>11} {'':>12} {c['total_forward_equivalents']:9.1f} "
              f"{c['seconds']:7.1f} {s['wall']:7.1f}")
        differing = [n for n in fast.levels if fast.levels[n] != paper.levels[n]]
        study_differing = [n for n in paper.levels if s["final"]["params"][n] != paper.levels[n]]
        print(f"{source:22} fast/paper: {fast.cost.forward_equivalents / paper.cost.forward_equivalents:.3f}x FE, "
              f"{fast.cost.seconds / paper.cost.seconds:.3f}x evaluation time; study/paper: "
              f"{c['total_forward_equivalents'] / paper.cost.forward_equivalents:.3f}x FE, study/fast: "
              f"{c['total_forward_equivalents'] / fast.cost.forward_equivalents:.3f}x FE; same choices: fast "
              f"{not differing}, study {not study_differing} ({len(differing)} and {len(study_differing)} of "
              f"{len(paper.levels)} modules differ)")


if __name__ == "__main__":
    main()
