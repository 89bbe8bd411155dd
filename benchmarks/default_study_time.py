"""Time of the default study (`thresh-opt study run`, what `make run` runs), in a fresh run folder.

    python benchmarks/default_study_time.py

Prints the wall time of the whole command (model load, dense reference, every trial, plots, MLflow)
and its trials, final greedy configuration and the time per trial.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time


def main() -> None:
    """Run the default study once and print its time."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "thresh_opt", "study", "run", "--run-dir", tmp, "--json"],
                              check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - began
    out = json.loads(proc.stdout)
    final = (out.get("final") or [{}])[-1]
    print(f"default study: {seconds:.1f} s for {out['trials']} trials ({seconds / out['trials']:.2f} s per trial), "
          f"front of {len(out['front'])}; greedy final configuration from trial {final.get('trial')}")


if __name__ == "__main__":
    main()
