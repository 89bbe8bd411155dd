"""Cheap before expensive: a greedy study with lm-eval accuracy, four ways, wall time side by side in one run.

    python benchmarks/expensive_objectives.py [--task ../shared/data/piqa] [--limit 200] [--loss-inc 1.002]

On embedded:rwkv4-tiny (the default study's greedy: one parameter per module, 8 x 128 calibration
tokens), with lm-eval accuracy on a local task among the objectives:

- never: every objective on every trial (the behaviour before incremental evaluation);
- rejected (default): no accuracy for greedy candidates the calibration loss rejects;
- dominated: also none for trials that an earlier trial dominates on the cheap objectives;
- front: accuracy is not an objective but a front metric, measured on the final Pareto front only
  (the paper's practice: search on the calibration loss, then report zero-shot accuracy);
- front-8: the same on at most 8 front trials, spread along the front (`front_points: 8`).

Each is `thresh-opt study run` in its own process; the greedy's choices must not change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
WAYS = ("never", "rejected", "dominated", "front", "front-8")


def run(way: str, task: str, limit: int, loss_inc: float, folder: Path) -> dict:
    """One study; its wall time, trials, lm-eval runs, cost and final choices."""
    front = way.startswith("front")
    objectives = [{"name": "loss_ratio"}, {"name": "energy_gain"}] + ([] if front else [{"name": "accuracy"}])
    cfg = {"name": way, "model": {"source": "embedded:rwkv4-tiny"}, "run_dir": str(folder / way),
           "calibration": {"source": "heldout", "ctx_len": 128, "count": 8, "seed": 0},
           "search_space": str(REPO / "search_spaces" / "rwkv4-per-module.yaml"), "objectives": objectives,
           "constraints": [{"objective": "loss_ratio", "max": 1.05}], "tasks": [task], "limit": limit,
           "sampler": {"name": "greedy", "options": {"loss_inc": loss_inc}}, "trials": 1000,
           "baselines": {"dense": True, "uniform": []},
           "evaluation": {"skip_expensive": "rejected" if front else way},
           "front_metrics": ["accuracy"] if front else [], "front_points": 8 if way == "front-8" else None}
    path = folder / f"{way}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    began = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "thresh_opt", "study", "run", str(path), "--json"], check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - began
    data = json.loads(out.stdout)
    from optuna import load_study
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = load_study(study_name=way, storage=JournalStorage(JournalFileBackend(str(folder / way / "optuna.journal"))))
    runs = (sum(1 for t in study.trials if "accuracy" in t.user_attrs)
            + len(study.user_attrs.get("thresh_opt:front_metrics", {})))
    return {"wall": wall, "trials": data["cost"]["trials"], "lm_eval_runs": runs,
            "skipped": data["cost"]["skipped_trials"], "fe": data["cost"]["total_forward_equivalents"],
            "final": data["final"][0]["params"], "front": len(data["front"])}


def main() -> None:
    """Print one row per way and the speed-ups over `never`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default=str(REPO.parent / "shared" / "data" / "piqa"))
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--loss-inc", type=float, default=1.002)
    p.add_argument("--ways", default=",".join(WAYS))
    args = p.parse_args()
    print(f"{'way':10} {'wall s':>7} {'trials':>6} {'lm-eval runs':>12} {'skipped':>7} {'fwd-equiv':>9} {'front':>5} "
          f"{'speed-up':>8}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for way in args.ways.split(","):
            r = rows[way] = run(way, args.task, args.limit, args.loss_inc, Path(tmp))
            base = rows.get("never", r)["wall"]
            print(f"{way:10} {r['wall']:7.1f} {r['trials']:6d} {r['lm_eval_runs']:12d} {r['skipped']:7d} "
                  f"{r['fe']:9.1f} {r['front']:5d} {base / r['wall']:7.2f}x", flush=True)
    finals = {json.dumps(r["final"], sort_keys=True) for r in rows.values()}
    print(f"same greedy choices in every way: {len(finals) == 1}")


if __name__ == "__main__":
    main()
