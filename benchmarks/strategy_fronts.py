"""Every search strategy's front against the thresholds learned by training, side by side in one run.

    python benchmarks/strategy_fronts.py [--model rwkv4|opt] [--only sensitivity,greedy,...]
                                         [--ratios 1.03,1.05,1.07] [--out runs/strategy-fronts/MODEL]
                                         [--threads 2]

Each strategy is `thresh-opt study run` on `studies/embedded-rwkv4-front.yaml` (8 x 128 calibration tokens,
objectives loss ratio and MAC-weighted sparsity) with its sampler, in its own process (so its peak memory is
its own), on rwkv4-tiny or, with `--model opt`, on opt-tiny with the OPT search spaces. At each
calibration-loss ratio r the strategy's point is its sparsest trial with loss ratio <= r (a real
configuration, not an interpolation), re-evaluated for held-out perplexity. The learned thresholds
(`thresh-opt baseline train`, penalties 0.5 / 1 / 2, 200 steps) are evaluated alike; their sparsity at r
is interpolated along their points; in brackets, their sparsity interpolated at the strategy's held-out
perplexity (they fit the calibration tokens they were trained on). Results are kept in the output
folder, so a second run only adds what is missing (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import optuna
import yaml

from thresh_opt.baseline import compare as bc
from thresh_opt.calibration import CalibrationSpec
from thresh_opt.models import load_model
from thresh_opt.objectives import Evaluator

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "studies" / "embedded-rwkv4-front.yaml"
# the search spaces by role: one parameter per module (the paper's levels), the same with levels up to 0.99,
# one per module kind; named per model as "<model>-<role>.yaml" in search_spaces/
PER_MODULE, PER_MODULE_FINE, PER_KIND = "per-module", "per-module-fine", "per-kind"
MODELS = {"rwkv4": "embedded:rwkv4-tiny", "opt": "embedded:opt-tiny"}
PENALTIES = (0.5, 1.0, 2.0)
TRAIN_STEPS = 200
RATIOS = [1.03, 1.05, 1.07]
KINDS = ["block", "family", "kind"]


def _path(**options: Any) -> dict[str, Any]:
    """The saliency path's sampler entry: path to 1.075, landings on RATIOS, then `options`."""
    return {"name": "saliency_path", "options": {"max_loss_ratio": 1.075, "targets": RATIOS, **options}}


# label -> (sampler, search space, trial cap); seeded samplers run seed 0 with the FE cap of `FE_CAP`
STRATEGIES: dict[str, tuple[dict[str, Any], str, int]] = {
    "greedy-1.002": ({"name": "greedy", "options": {"loss_inc": 1.002}}, PER_MODULE, 400),
    "greedy-budget": ({"name": "greedy", "options": {"loss_inc": 1.002, "budget": RATIOS}}, PER_MODULE, 600),
    "greedy-multi": ({"name": "greedy", "options": {"loss_inc": [1.001, 1.002, 1.003]}}, PER_MODULE, 600),
    "sensitivity": ({"name": "sensitivity"}, PER_MODULE, 600),
    "sensitivity-refined": ({"name": "sensitivity", "options": {"refine_budgets": RATIOS}}, PER_MODULE, 900),
    "sensitivity-refined-fine": ({"name": "sensitivity", "options": {"refine_budgets": RATIOS}},
                                 PER_MODULE_FINE, 1000),
    "sensitivity-per-kind": ({"name": "sensitivity"}, PER_KIND, 200),
    # the table from one gradient pass instead of the 378 / 504 probes
    "sensitivity-gradient-refined": ({"name": "sensitivity", "options": {"probes": "gradient",
                                                                         "refine_budgets": RATIOS}}, PER_MODULE, 900),
    "sensitivity-gradient-refined-fine": ({"name": "sensitivity", "options": {"probes": "gradient",
                                                                              "refine_budgets": RATIOS}},
                                          PER_MODULE_FINE, 1000),
    # the allocation re-linearized at every step: a gradient pass at each configuration reached
    "saliency-path": (_path(), PER_MODULE_FINE, 200),
    "saliency-path-coarse": (_path(), PER_MODULE, 200),
    # candidate steps per point (every parameter, each block, each family), measured as wholes; the same
    # candidates measured lazily (the best-looking by its group's earlier value first); half steps
    "saliency-path-blocks": (_path(steps="blocks"), PER_MODULE_FINE, 300),
    "saliency-path-lazy": (_path(steps="lazy"), PER_MODULE_FINE, 300),
    "saliency-path-blocks-half": (_path(steps="blocks", step=0.0025), PER_MODULE_FINE, 500),
    "saliency-path-lazy-half": (_path(steps="lazy", step=0.0025), PER_MODULE_FINE, 500),
    # candidate steps for each module kind across the blocks too (every ffn.key, ...): priced by measurement
    # where the saliency misprices a kind
    "saliency-path-lazy-kinds": (_path(steps="lazy", groups=KINDS), PER_MODULE_FINE, 400),
    "saliency-path-blocks-kinds": (_path(steps="blocks", groups=KINDS), PER_MODULE_FINE, 600),
    "saliency-path-lazy-kinds-half": (_path(steps="lazy", groups=KINDS, step=0.0025), PER_MODULE_FINE, 600),
    # with steps down (floating search): per point up to 2 measured, taken when above the path's front
    "saliency-path-back": (_path(backward=2), PER_MODULE_FINE, 300),
    "saliency-path-lazy-back": (_path(steps="lazy", backward=2), PER_MODULE_FINE, 400),
    "saliency-path-lazy-kinds-back": (_path(steps="lazy", groups=KINDS, backward=2), PER_MODULE_FINE, 500),
    "saliency-path-blocks-kinds-back": (_path(steps="blocks", groups=KINDS, backward=2), PER_MODULE_FINE, 700),
    "blockwise": ({"name": "blockwise", "options": {"max_loss_ratio": 1.01}}, PER_MODULE, 600),
    "blocksearch": ({"name": "blocksearch"}, PER_MODULE, 150),
    "tpe": ({"name": "tpe"}, PER_KIND, 240),
    "nsga2": ({"name": "nsga2"}, PER_KIND, 240),
}
FE_CAP = 240.0


def run_strategy(label: str, model: str, folder: Path, threads: int) -> dict[str, Any]:
    """`thresh-opt study run` for one strategy on one model (a MODELS key); its trials' (loss ratio,
    sparsity, thresholds), cost, wall seconds and peak memory."""
    sampler, role, trials = STRATEGIES[label]
    cfg = yaml.safe_load(TEMPLATE.read_text())
    cfg |= {"name": f"fronts-{label}", "model": {"source": MODELS[model]}, "sampler": sampler,
            "search_space": str(REPO / "search_spaces" / f"{model}-{role}.yaml"), "trials": trials,
            "run_dir": str(folder / "run"), "max_forward_equivalents": FE_CAP * 3}
    if sampler["name"] in ("tpe", "nsga2", "random"):
        cfg["max_forward_equivalents"] = FE_CAP
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "thresh_opt", "study", "run", str(path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{label}: study run exited with status {status}")
    wall = time.perf_counter() - began
    data = json.loads(out)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(folder / "run" / "optuna.journal")))
    study = optuna.load_study(study_name=cfg["name"], storage=storage)
    points = [{"trial": t.number, "loss_ratio": t.user_attrs["loss_ratio"], "sparsity": t.user_attrs["sparsity"],
               "thresholds": json.loads(t.user_attrs["thresholds"])}
              for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if "loss_ratio" in t.user_attrs and "thresholds" in t.user_attrs]
    return {"label": label, "trials": len(study.trials),
            "forward_equivalents": data["cost"]["total_forward_equivalents"], "seconds": wall,
            "peak_memory_mb": usage.ru_maxrss / 1024, "points": points}


def best_at(points: list[dict[str, Any]], ratio: float) -> dict[str, Any] | None:
    """The sparsest configuration with loss ratio <= ratio."""
    within = [p for p in points if p["loss_ratio"] <= ratio]
    return max(within, key=lambda p: p["sparsity"]) if within else None


def learned(source: str, folder: Path, threads: int) -> list[dict[str, Any]]:
    """The model's learned thresholds at each penalty (trained once, then kept)."""
    kept = folder / "learned.json"
    if kept.exists():
        return json.loads(kept.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    made = []
    for penalty in PENALTIES:
        _, setting, path, cost = bc.trained_point(source, penalty, TRAIN_STEPS, folder,
                                                  ["--count", "8", "--ctx-len", "128"], [])
        made.append({"setting": setting, "file": str(path), **cost})
    kept.write_text(json.dumps(made, indent=1))
    return made


def main() -> None:
    """Run what is missing, then print the table (Markdown) and write it with the raw results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="rwkv4")
    p.add_argument("--only", help="comma-separated strategy labels (default: all)")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    p.add_argument("--out", type=Path, help="results folder (default: runs/strategy-fronts/MODEL)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="forget kept results")
    args = p.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    source = MODELS[args.model]
    args.out = args.out or REPO / "runs" / "strategy-fronts" / args.model
    labels = args.only.split(",") if args.only else list(STRATEGIES)
    unknown = [x for x in labels if x not in STRATEGIES]
    if unknown:
        sys.exit(f"--only: unknown strategy {unknown[0]!r}; allowed: {', '.join(STRATEGIES)}")
    results = {}
    for label in labels:
        kept = args.out / label / "result.json"
        if args.fresh or not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(run_strategy(label, args.model, args.out / label, args.threads)))
        results[label] = json.loads(kept.read_text())
    trained = learned(source, args.out / "learned", args.threads)

    loaded = load_model(source)
    evaluator = Evaluator(loaded, ["loss_ratio", "perplexity", "sparsity"],
                          calibration=CalibrationSpec(source="heldout", ctx_len=128, count=8))
    for t in trained:
        t["values"] = dict(evaluator.evaluate(json.loads(Path(t["file"]).read_text())).values)
    order = np.argsort([t["values"]["loss_ratio"] for t in trained])
    xs = [trained[i]["values"]["loss_ratio"] for i in order]
    reference = {r: float(np.interp(r, xs, [trained[i]["values"]["sparsity"] for i in order])) for r in ratios}
    ppl = {r: float(np.interp(r, xs, [trained[i]["values"]["perplexity"] for i in order])) for r in ratios}
    train_fe = sum(t["forward_equivalents"] for t in trained)
    # the learned thresholds fit the calibration tokens they were trained on: on held-out text, the points
    # to compare with are theirs at the same perplexity (interpolated; n/a outside their range)
    by_ppl = sorted((t["values"]["perplexity"], t["values"]["sparsity"]) for t in trained)

    def at_ppl(value: float) -> str:
        if not by_ppl[0][0] <= value <= by_ppl[-1][0]:
            return "n/a"
        return f"{100 * float(np.interp(value, *zip(*by_ppl))):.1f}"

    head = " | ".join(f"@{r:g}: sparsity (gap), ppl [learned at that ppl]" for r in ratios)
    lines = [f"| strategy | {head} | FE | FE / training's | seconds | peak MB |",
             "|---|" + "---:|" * (len(ratios) + 4)]
    lines.append("| learned (3 penalties, interpolated) | "
                 + " | ".join(f"{reference[r]:.1%}, {ppl[r]:.2f}" for r in ratios)
                 + f" | {train_fe:.0f} | 1 | {sum(t['seconds'] for t in trained):.0f} | "
                 f"{max(t['peak_memory_mb'] for t in trained):.0f} |")
    for label, res in results.items():
        cells = []
        for r in ratios:
            b = best_at(res["points"], r)
            if b is None:
                cells.append("none")
                continue
            b.setdefault("perplexity", {})
            key = f"{r:g}"
            if key not in b["perplexity"]:
                b["perplexity"][key] = evaluator.evaluate(b["thresholds"]).values["perplexity"]
            cells.append(f"{b['sparsity']:.1%} ({100 * (b['sparsity'] - reference[r]):+.1f}), "
                         f"{b['perplexity'][key]:.2f} [{at_ppl(b['perplexity'][key])}]")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {res['forward_equivalents']:.0f} | "
                     f"{res['forward_equivalents'] / train_fe:.2f} | {res['seconds']:.0f} | "
                     f"{res['peak_memory_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "learned-points.json").write_text(json.dumps(trained, indent=1))


if __name__ == "__main__":
    main()
