"""Every search strategy's front against the thresholds learned by training, side by side in one run.

    python benchmarks/strategy_fronts.py [--model rwkv4|opt] [--only sensitivity,greedy,...]
                                         [--ratios 1.03,1.05,1.07] [--out runs/strategy-fronts/MODEL]
                                         [--seeds 0,1,2] [--extra-penalties 3] [--threads 2]

Each strategy is `thresh-opt study run` on `studies/embedded-rwkv4-front.yaml` (8 x 128 calibration tokens,
objectives loss ratio and MAC-weighted sparsity) with its sampler, in its own process (so its peak memory is
its own), on rwkv4-tiny or, with `--model opt`, on opt-tiny with the OPT search spaces. At each
calibration-loss ratio r the strategy's point is its sparsest trial with loss ratio <= r (a real
configuration, not an interpolation), re-evaluated for held-out perplexity. The learned thresholds
(`thresh-opt baseline train`, penalties 0.5 / 1 / 2, 200 steps) are evaluated alike; their sparsity at r
is interpolated along their points; in brackets, their sparsity interpolated at the strategy's held-out
perplexity (they fit the calibration tokens they were trained on). Results are kept in the output
folder, so a second run only adds what is missing (`--fresh` starts over). With several calibration seeds
(`--seeds`), every strategy and the learned thresholds run again on each seed's chunks, each seed is
compared with its own learned thresholds, and a last table gives the gaps over the seeds (mean, min, max):
one run's cell moves by 1-3 points with the chunks and even between machines. Where the learned points end
below a ratio their value there is held flat (marked *); `--extra-penalties 3` trains a point further out
(its FE is not counted in training's, which stays that of the three points the goal is set against).
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
from thresh_opt.models import LoadedModel, load_model
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


def run_strategy(label: str, model: str, folder: Path, threads: int, seed: int = 0) -> dict[str, Any]:
    """`thresh-opt study run` for one strategy on one model (a MODELS key) and calibration seed; its trials'
    (loss ratio, sparsity, thresholds), cost, wall seconds and peak memory."""
    sampler, role, trials = STRATEGIES[label]
    cfg = yaml.safe_load(TEMPLATE.read_text())
    cfg |= {"name": f"fronts-{label}", "model": {"source": MODELS[model]}, "sampler": sampler,
            "search_space": str(REPO / "search_spaces" / f"{model}-{role}.yaml"), "trials": trials,
            "run_dir": str(folder / "run"), "max_forward_equivalents": FE_CAP * 3}
    cfg["calibration"] = {**cfg["calibration"], "seed": seed}
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


def learned(source: str, folder: Path, threads: int, seed: int = 0,
            extra: tuple[float, ...] = ()) -> list[dict[str, Any]]:
    """The model's learned thresholds at each penalty on calibration seed `seed` (each trained once, then
    kept); `extra` penalties add points beyond the last loss ratio (marked ``extra``: they bracket the
    ratios, and their training is not counted in training's FE, which stays that of the three points)."""
    kept = folder / "learned.json"
    made = json.loads(kept.read_text()) if kept.exists() else []
    have = {m["setting"] for m in made}
    for penalty in (*PENALTIES, *extra):
        if f"penalty={penalty:g}" in have:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        _, setting, path, cost = bc.trained_point(source, penalty, TRAIN_STEPS, folder,
                                                  ["--count", "8", "--ctx-len", "128", "--seed", str(seed)], [])
        made.append({"setting": setting, "file": str(path), **cost})
        kept.write_text(json.dumps(made, indent=1))  # each point as soon as it is trained
    wanted = {f"penalty={p:g}" for p in (*PENALTIES, *extra)}
    return [m | {"extra": m["setting"] not in {f"penalty={p:g}" for p in PENALTIES}} for m in made
            if m["setting"] in wanted]


def learned_values(trained: list[dict[str, Any]], evaluator: Evaluator, folder: Path) -> None:
    """Each learned point's loss ratio, held-out perplexity and sparsity (measured once, then kept with it in
    `folder`/learned.json, which `benchmarks/warm_start.py` reads too)."""
    if all("values" in t for t in trained):
        return
    for t in trained:
        t.setdefault("values", dict(evaluator.evaluate(json.loads(Path(t["file"]).read_text())).values))
    kept = folder / "learned.json"
    every = {m["setting"]: m for m in json.loads(kept.read_text())}
    every |= {t["setting"]: {k: v for k, v in t.items() if k != "extra"} for t in trained}
    kept.write_text(json.dumps(list(every.values()), indent=1))


def compare_seed(loaded: LoadedModel, model: str, labels: list[str], ratios: list[float], folder: Path,
                 threads: int, seed: int, fresh: bool, extra: tuple[float, ...] = ()) -> dict[str, Any]:
    """One calibration seed: each strategy's point at each ratio against the learned thresholds trained on
    the same calibration chunks (`loaded`: the model, loaded once for every seed). Per strategy and ratio:
    sparsity, gap (points) at equal calibration-loss ratio, held-out perplexity (kept in the strategy's
    result file), and the learned thresholds' sparsity at that perplexity (None outside their range); with
    FE, seconds and peak memory."""
    results = {}
    for label in labels:
        kept = folder / label / "result.json"
        if fresh or not kept.exists():
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(run_strategy(label, model, folder / label, threads, seed)))
        results[label] = json.loads(kept.read_text())
    trained = learned(MODELS[model], folder / "learned", threads, seed, extra)
    evaluator = Evaluator(loaded, ["loss_ratio", "perplexity", "sparsity"],
                          calibration=CalibrationSpec(source="heldout", ctx_len=128, count=8, seed=seed))
    learned_values(trained, evaluator, folder / "learned")
    order = np.argsort([t["values"]["loss_ratio"] for t in trained])
    xs = [trained[i]["values"]["loss_ratio"] for i in order]
    reference = {r: float(np.interp(r, xs, [trained[i]["values"]["sparsity"] for i in order])) for r in ratios}
    ppl = {r: float(np.interp(r, xs, [trained[i]["values"]["perplexity"] for i in order])) for r in ratios}
    # outside their loss ratios the learned sparsity is their end point's, held flat: a gap there is understated
    covered = {r: xs[0] <= r <= xs[-1] for r in ratios}
    train_fe = sum(t["forward_equivalents"] for t in trained if not t["extra"])
    # the learned thresholds fit the calibration tokens they were trained on: on held-out text, the points
    # to compare with are theirs at the same perplexity (interpolated; None outside their range)
    by_ppl = [t["values"]["perplexity"] for t in trained], [t["values"]["sparsity"] for t in trained]
    rows: dict[str, Any] = {}
    for label, res in results.items():
        cells: dict[str, Any] = {}
        for r in ratios:
            key, b = f"{r:g}", best_at(res["points"], r)
            if b is None:
                cells[key] = None
                continue
            b.setdefault("perplexity", {})
            if key not in b["perplexity"]:
                b["perplexity"][key] = evaluator.evaluate(b["thresholds"]).values["perplexity"]
            cells[key] = {"sparsity": b["sparsity"], "gap": 100 * (b["sparsity"] - reference[r]),
                          "perplexity": b["perplexity"][key],
                          "learned_at_ppl": bc.interp_within(b["perplexity"][key], *by_ppl)}
        (folder / label / "result.json").write_text(json.dumps(res))  # with the perplexities measured
        rows[label] = {"cells": cells, "forward_equivalents": res["forward_equivalents"],
                       "fe_share": res["forward_equivalents"] / train_fe, "seconds": res["seconds"],
                       "peak_memory_mb": res["peak_memory_mb"]}
    return {"seed": seed, "reference": reference, "perplexity": ppl, "covered": covered, "train_fe": train_fe,
            "train_seconds": sum(t["seconds"] for t in trained if not t["extra"]), "points": len(trained),
            "train_peak_mb": max(t["peak_memory_mb"] for t in trained), "rows": rows}


def seed_table(one: dict[str, Any], ratios: list[float]) -> str:
    """One seed's Markdown table: sparsity (gap), held-out perplexity [learned sparsity at that perplexity]."""
    head = " | ".join(f"@{r:g}: sparsity (gap), ppl [learned at that ppl]" for r in ratios)
    lines = [f"| strategy | {head} | FE | FE / training's | seconds | peak MB |",
             "|---|" + "---:|" * (len(ratios) + 4),
             f"| learned ({one.get('points', 3)} penalties, interpolated; FE of 3) | "
             + " | ".join(f"{one['reference'][r]:.1%}{'' if one['covered'][r] else '*'}, "
                          f"{one['perplexity'][r]:.2f}" for r in ratios)
             + f" | {one['train_fe']:.0f} | 1 | {one['train_seconds']:.0f} | {one['train_peak_mb']:.0f} |"]
    for label, row in one["rows"].items():
        cells = []
        for r in ratios:
            c = row["cells"][f"{r:g}"]
            if c is None:
                cells.append("none")
                continue
            at = "n/a" if c["learned_at_ppl"] is None else f"{100 * c['learned_at_ppl']:.1f}"
            cells.append(f"{c['sparsity']:.1%} ({c['gap']:+.1f}), {c['perplexity']:.2f} [{at}]")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['forward_equivalents']:.0f} | "
                     f"{row['fe_share']:.2f} | {row['seconds']:.0f} | {row['peak_memory_mb']:.0f} |")
    if not all(one["covered"].values()):
        lines.append("\n\\* beyond the learned thresholds' loss ratios: their end point's sparsity, held flat "
                     "(the gaps there are understated)")
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    """Mean [min, max] of gaps in points; the value alone when there is one."""
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{np.mean(values):+.1f} [{min(values):+.1f}, {max(values):+.1f}]"


def seeds_table(per_seed: list[dict[str, Any]], ratios: list[float]) -> str:
    """Over calibration seeds, each against its own learned thresholds: per strategy and ratio the gap in
    points at equal calibration-loss ratio and at equal held-out perplexity (mean [min, max]; the held-out
    gap over the seeds where the point falls in the learned thresholds' perplexity range), and FE / training's
    (mean [max])."""
    head = " | ".join(f"@{r:g}: gap (calibration) / gap (held-out ppl, seeds)" for r in ratios)
    lines = [f"| strategy ({len(per_seed)} seeds) | {head} | FE / training's |", "|---|" + "---:|" * (len(ratios) + 1)]
    for label in per_seed[0]["rows"]:
        cells = []
        for r in ratios:
            found = [one["rows"][label]["cells"][f"{r:g}"] for one in per_seed]
            cal = [c["gap"] for c in found if c is not None]
            flat = sum(1 for one, c in zip(per_seed, found, strict=True)
                       if c is not None and not one["covered"][r])
            held = [100 * (c["sparsity"] - c["learned_at_ppl"]) for c in found
                    if c is not None and c["learned_at_ppl"] is not None]
            cells.append(f"{_spread(cal)}{f' ({flat}*)' if flat else ''} / {_spread(held)} ({len(held)})")
        shares = [one["rows"][label]["fe_share"] for one in per_seed]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {np.mean(shares):.2f} [{max(shares):.2f}] |")
    lines.append("\nGaps in points (strategy minus learned), mean [min, max] over seeds; (k*): k seeds' learned value "
                 "held flat beyond their last point (understated gaps); held-out: over the seeds whose learned "
                 "perplexity range holds the point")
    return "\n".join(lines)


def main() -> None:
    """Run what is missing, then print the tables (Markdown) and write them with the raw results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="rwkv4")
    p.add_argument("--only", help="comma-separated strategy labels (default: all)")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS))
    p.add_argument("--seeds", default="0", help="comma-separated calibration seeds (default 0); each seed's "
                   "strategies and learned thresholds run on its own 8 x 128 chunks, kept in OUT/seed-N "
                   "(seed 0 in OUT itself)")
    p.add_argument("--out", type=Path, help="results folder (default: runs/strategy-fronts/MODEL)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="forget kept results")
    p.add_argument("--extra-penalties", default="", help="comma-separated penalties trained beyond 0.5 / 1 / 2 so "
                   "that the learned points bracket every ratio (not counted in training's FE)")
    args = p.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    args.out = args.out or REPO / "runs" / "strategy-fronts" / args.model
    labels = args.only.split(",") if args.only else list(STRATEGIES)
    unknown = [x for x in labels if x not in STRATEGIES]
    if unknown:
        sys.exit(f"--only: unknown strategy {unknown[0]!r}; allowed: {', '.join(STRATEGIES)}")
    try:
        extra = tuple(float(x) for x in args.extra_penalties.split(",") if x.strip())
    except ValueError:
        sys.exit(f"--extra-penalties: expected comma-separated numbers, got {args.extra_penalties!r}")
    per_seed = []
    loaded = load_model(MODELS[args.model])  # once for every seed's evaluations (studies run in their own processes)
    for seed in seeds:
        folder = args.out if seed == 0 else args.out / f"seed-{seed}"
        one = compare_seed(loaded, args.model, labels, ratios, folder, args.threads, seed, args.fresh, extra)
        table = seed_table(one, ratios)
        print(f"calibration seed {seed}\n{table}\n")
        (folder / "table.md").write_text(table + "\n")
        per_seed.append(one)
    if len(per_seed) > 1:
        summary = seeds_table(per_seed, ratios)
        print(summary)
        (args.out / "seeds-table.md").write_text(summary + "\n")
        (args.out / "seeds.json").write_text(json.dumps(per_seed, indent=1))


if __name__ == "__main__":
    main()
