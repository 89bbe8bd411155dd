"""What parallel greedy costs: the default study with 1 worker (serial) and 2 Ray actors, side by side.

    python benchmarks/parallel_greedy.py [--workers 1,2]

Each Ray actor keeps its own incremental engine (block inputs, recorded module inputs): a candidate that
lands on the actor that did not evaluate the accepted configuration starts from an earlier block and
measures its module's statistics itself, so parallel greedy spends more forward-equivalents than serial
greedy for the same choices. Trials go to the free actor whose recent configurations share the most
leading blocks with them. Prints wall time, trials, forward-equivalents and whether the choices match.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def main() -> None:
    """One row per worker count."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2")
    args = p.parse_args()
    print(f"{'workers':>7} {'wall s':>7} {'trials':>6} {'trial FE':>8} {'reference FE':>12} {'eval s':>7}")
    finals = []
    for n in args.workers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "thresh_opt", "study", "run", "--run-dir", tmp, "--workers", n,
                                  "--json"], check=True, capture_output=True, text=True)
            wall = time.perf_counter() - began
        data = json.loads(out.stdout)
        c = data["cost"]
        finals.append(json.dumps(data["final"][0]["params"], sort_keys=True))
        print(f"{n:>7} {wall:7.1f} {c['trials']:6d} {c['forward_equivalents']:8.1f} "
              f"{c['reference_forward_equivalents']:12.1f} {c['seconds']:7.1f}", flush=True)
    print(f"same choices: {len(set(finals)) == 1}")


if __name__ == "__main__":
    main()
