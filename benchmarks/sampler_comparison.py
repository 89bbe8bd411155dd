"""Sampler comparison on the embedded model: hypervolume at 30, 60 and 120 trials over 5 seeds.

    python benchmarks/sampler_comparison.py [--compare studies/compare-embedded-5seeds.yaml] [--run-dir DIR]

Runs (or resumes) `thresh-opt study compare` on the file, then prints each sampler's mean hypervolume
at every budget as a ratio to the best non-hybrid sampler at that budget, and whether each hybrid beats
both of its parts (its greedy and its base sampler) at every budget.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    """Run the comparison and print the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compare", type=Path, default=REPO / "studies" / "compare-embedded-5seeds.yaml")
    p.add_argument("--run-dir", type=Path)
    args = p.parse_args()
    cmd = [sys.executable, "-m", "thresh_opt", "study", "compare", str(args.compare), "--json"]
    if args.run_dir:
        cmd += ["--run-dir", str(args.run_dir)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    rows = {r["sampler"]: r for r in out["rows"]}
    budgets = ([(f"hv@{b}", f"HV@{b}") for b in out["budgets"]]
               + [(f"hv@{b:g}fe", f"HV@{b:g}FE") for b in out["fe_budgets"]])
    plain = [s for s in rows if not s.startswith("hybrid")]
    print(f"{'sampler':20} " + " ".join(f"{title:>18}" for _, title in budgets)
          + f" {'FE':>7}   (ratio to best non-hybrid)")
    for name, r in rows.items():
        cells = []
        for key, _ in budgets:
            best = max(rows[s][key]["mean"] for s in plain)
            c = r[key]
            cells.append(f"{c['mean']:.4f}±{c['std']:.4f} {c['mean'] / best:4.2f}x")
        print(f"{name:20} " + " ".join(f"{c:>18}" for c in cells) + f" {r['forward_equivalents']:7.1f}")
    for name in rows:
        if not name.startswith("hybrid"):
            continue
        base = name.split("-", 1)[1]
        parts = [s for s in (base, "greedy") if s in rows]
        wins = [all(rows[name][key]["mean"] > rows[s][key]["mean"] for s in parts) for key, _ in budgets]
        print(f"{name} beats {' and '.join(parts)} at budgets {[t for _, t in budgets]}: {wins}")
    print(f"report: {out['report']}")


if __name__ == "__main__":
    main()
