"""Threshold training warm-started from a search strategy's points, against the thresholds learned from
scratch, side by side on the same calibration chunks.

    python benchmarks/warm_start.py [--out runs/strategy-fronts/rwkv4] [--seeds 0,1,2]
                                    [--from saliency-path,saliency-path-lazy-kinds] [--steps 15]
                                    [--penalties 1,1.5,2] [--threads 2]

Reads what `benchmarks/strategy_fronts.py --out OUT --seeds ...` left (each strategy's points, and the learned
thresholds with their values, `--extra-penalties` ones too, per seed). At each ratio r of 1.03 / 1.05 / 1.07
the strategy's sparsest point with loss ratio <= r starts `thresh-opt baseline train --init-thresholds` with
the matching penalty and `--steps` steps (each in its own process, like the learned thresholds). Training
moves the point along the loss-sparsity plane, so each trained point is compared with the learned thresholds
at its own loss ratio (interpolated between their points, as their value at r is) and at its held-out
perplexity. Its cost is the strategy's FE plus the warm steps', against training's (the three penalties'
600 FE). Results are kept in OUT/[seed-N/]STRATEGY/warm (`--fresh` trains again).

`--studies FILE,...` adds rows from study files with a `refine` section (the same hybrid inside the study
engine: `thresh-opt study run`, its refined points): each runs once per seed on that seed's chunks, in
OUT/[seed-N/]study-NAME, and its refined points are scored like the warm-trained ones (their held-out
perplexity measured here); its FE is the whole study's (search, dense reference, refined points).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import yaml
from strategy_fronts import MODELS, PENALTIES, REPO, best_at

from thresh_opt.baseline import compare as bc
from thresh_opt.calibration import CalibrationSpec
from thresh_opt.models import load_model
from thresh_opt.objectives import Evaluator

RATIOS = (1.03, 1.05, 1.07)


def learned_curve(folder: Path) -> dict[str, Any]:
    """The learned thresholds of one seed as strategy_fronts.py kept them: their (loss ratio, sparsity) and
    (perplexity, sparsity) points, and training's FE (the three goal penalties')."""
    learned = [m for m in json.loads((folder / "learned" / "learned.json").read_text()) if "values" in m]
    main_settings = {f"penalty={p:g}" for p in PENALTIES}
    return {"by_ratio": ([m["values"]["loss_ratio"] for m in learned], [m["values"]["sparsity"] for m in learned]),
            "by_ppl": ([m["values"]["perplexity"] for m in learned], [m["values"]["sparsity"] for m in learned]),
            "train_fe": sum(m["forward_equivalents"] for m in learned if m["setting"] in main_settings)}


def warm_points(evaluator: Evaluator, curve: dict[str, Any], source: str, folder: Path, label: str, seed: int,
                steps: int, penalties: list[float], threads: int, fresh: bool) -> dict[str, Any]:
    """One strategy on one seed (`evaluator` on that seed's chunks, `curve` its learned thresholds): the
    warm-trained point from each ratio's start, with its values, its gaps to the learned thresholds (at its
    loss ratio and at its held-out perplexity) and the total FE."""
    result = json.loads((folder / label / "result.json").read_text())
    warm = folder / label / "warm"
    warm.mkdir(parents=True, exist_ok=True)
    points, fe = [], result["forward_equivalents"]
    for ratio, penalty in zip(RATIOS, penalties, strict=True):
        start = best_at(result["points"], ratio)
        if start is None:
            continue
        kept = warm / f"r{ratio:g}-p{penalty:g}-s{steps}.json"
        if fresh or not kept.exists():
            begin = warm / f"start-r{ratio:g}.json"
            begin.write_text(json.dumps(start["thresholds"]))
            out = warm / f"trained-r{ratio:g}-p{penalty:g}-s{steps}.json"
            os.environ["OMP_NUM_THREADS"] = str(threads)
            data = bc.produce(["baseline", "train", source, "--init-thresholds", str(begin), "--penalty",
                               str(penalty), "--steps", str(steps), "--output", str(out), "--count", "8",
                               "--ctx-len", "128", "--seed", str(seed)])
            values = dict(evaluator.evaluate(json.loads(out.read_text())).values)
            kept.write_text(json.dumps({"start": {k: start[k] for k in ("loss_ratio", "sparsity")}, "values": values,
                                        "forward_equivalents": data["forward_equivalents"],
                                        "seconds": data["seconds"], "peak_memory_mb": data["peak_memory_mb"]}))
        point = scored(json.loads(kept.read_text()), curve, ratio, penalty)
        points.append(point)
        fe += point["forward_equivalents"]
    return {"points": points, "forward_equivalents": fe, "fe_share": fe / curve["train_fe"],
            "strategy_fe": result["forward_equivalents"]}


def scored(point: dict[str, Any], curve: dict[str, Any], ratio: float, penalty: float) -> dict[str, Any]:
    """A trained point with its gaps to the learned thresholds at its own loss ratio and held-out perplexity."""
    v = point["values"]
    at_ratio = bc.interp_within(v["loss_ratio"], *curve["by_ratio"])
    at_ppl = bc.interp_within(v["perplexity"], *curve["by_ppl"])
    return point | {"ratio": ratio, "penalty": penalty,
                    "gap": None if at_ratio is None else 100 * (v["sparsity"] - at_ratio),
                    "gap_ppl": None if at_ppl is None else 100 * (v["sparsity"] - at_ppl)}


def study_points(evaluator: Evaluator, curve: dict[str, Any], study_file: Path, folder: Path, seed: int,
                 threads: int, fresh: bool) -> dict[str, Any]:
    """A study file with `refine`, run on calibration seed `seed`: its refined points, scored."""
    cfg = yaml.safe_load(study_file.read_text())
    run_dir = folder / f"study-{cfg['name']}"
    kept = run_dir / "result.json"
    if fresh or not kept.exists():
        if isinstance(cfg.get("search_space"), str):
            cfg["search_space"] = str((study_file.parent / cfg["search_space"]).resolve())
        cfg["calibration"] = {**cfg.get("calibration", {}), "seed": seed}
        cfg["run_dir"] = str(run_dir / "run")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "study.yaml").write_text(yaml.safe_dump(cfg))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        kept.write_text(json.dumps(bc.produce(["study", "run", str(run_dir / "study.yaml")])))
    data = json.loads(kept.read_text())
    points = []
    for r in data["refined"]:
        if "thresholds" not in r:
            continue
        point = {"start": r["start"], "values": dict(evaluator.evaluate(r["thresholds"]).values),
                 "forward_equivalents": r["forward_equivalents"], "seconds": r["seconds"]}
        points.append(scored(point, curve, r["setting"]["target"], r["setting"]["penalty"]))
    fe = data["cost"]["total_forward_equivalents"]
    return {"points": points, "forward_equivalents": fe, "fe_share": fe / curve["train_fe"],
            "strategy_fe": fe - data["cost"]["refined_forward_equivalents"]}


def _gap(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1f}"


def seed_table(rows: dict[str, dict[str, Any]], steps: int) -> str:
    """One seed: per strategy, each warm-trained point (start -> end) and its gaps; FE."""
    head = " | ".join(f"from @{r:g}: start -> trained (loss ratio, sparsity), gap at its ratio / at its ppl"
                      for r in RATIOS)
    lines = [f"| strategy + {steps} warm steps per point | {head} | FE (strategy + warm) | FE / training's |",
             "|---|" + "---:|" * (len(RATIOS) + 2)]
    for label, row in rows.items():
        cells = [f"{p['start']['loss_ratio']:.4f}, {p['start']['sparsity']:.1%} -> {p['values']['loss_ratio']:.4f}, "
                 f"{p['values']['sparsity']:.1%}: {_gap(p['gap'])} / {_gap(p['gap_ppl'])}" for p in row["points"]]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['strategy_fe']:.0f} + "
                     f"{row['forward_equivalents'] - row['strategy_fe']:.0f} | {row['fe_share']:.2f} |")
    return "\n".join(lines)


def seeds_table(per_seed: list[dict[str, dict[str, Any]]], steps: int) -> str:
    """Over the seeds: per strategy and start ratio, the gap at the trained point's own loss ratio
    (mean [min, max]), the largest shortfall, and the FE share (mean [max])."""
    lines = [f"| strategy + {steps} warm steps ({len(per_seed)} seeds) | "
             + " | ".join(f"from @{r:g}: gap at its ratio" for r in RATIOS) + " | worst | FE / training's |",
             "|---|" + "---:|" * (len(RATIOS) + 2)]
    for label in per_seed[0]:
        cells, every = [], []
        for i in range(len(RATIOS)):
            gaps = [one[label]["points"][i]["gap"] for one in per_seed
                    if i < len(one[label]["points"]) and one[label]["points"][i]["gap"] is not None]
            every += gaps
            cells.append(f"{np.mean(gaps):+.1f} [{min(gaps):+.1f}, {max(gaps):+.1f}]" if gaps else "n/a")
        shares = [one[label]["fe_share"] for one in per_seed]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {min(every, default=float('nan')):+.1f} | "
                     f"{np.mean(shares):.2f} [{max(shares):.2f}] |")
    return "\n".join(lines)


def main() -> None:
    """Train what is missing, then print the tables (Markdown)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="rwkv4")
    p.add_argument("--out", type=Path, help="strategy_fronts.py's results folder (default runs/strategy-fronts/MODEL)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--from", dest="labels", default="saliency-path,saliency-path-lazy-kinds",
                   help="comma-separated strategies whose points start the training")
    p.add_argument("--steps", type=int, default=15, help="training steps per point (default 15)")
    p.add_argument("--penalties", default="1,1.5,2", help="penalty from the 1.03 / 1.05 / 1.07 points")
    p.add_argument("--studies", default="", help="comma-separated study files with a `refine` section (rows too)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--fresh", action="store_true", help="train again")
    args = p.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        penalties = [float(x) for x in args.penalties.split(",")]
    except ValueError:
        sys.exit("--seeds and --penalties: comma-separated numbers")
    if len(penalties) != len(RATIOS):
        sys.exit(f"--penalties: one per ratio ({len(RATIOS)})")
    out = args.out or REPO / "runs" / "strategy-fronts" / args.model
    loaded = load_model(MODELS[args.model])
    per_seed = []
    for seed in seeds:
        folder = out if seed == 0 else out / f"seed-{seed}"
        missing = [x for x in filter(None, args.labels.split(",")) if not (folder / x / "result.json").exists()]
        curve = learned_curve(folder) if (folder / "learned" / "learned.json").exists() else None
        if missing or curve is None or not curve["by_ratio"][0]:
            sys.exit(f"{folder}: run benchmarks/strategy_fronts.py --out {out} --seeds {args.seeds} first "
                     f"(missing: {', '.join(missing) or 'the learned thresholds and their values'})")
        evaluator = Evaluator(loaded, ["loss_ratio", "perplexity", "sparsity"],
                              calibration=CalibrationSpec(source="heldout", ctx_len=128, count=8, seed=seed))
        rows = {label: warm_points(evaluator, curve, MODELS[args.model], folder, label, seed, args.steps, penalties,
                                   args.threads, args.fresh) for label in args.labels.split(",") if label}
        for name in filter(None, args.studies.split(",")):
            rows[f"study:{Path(name).stem}"] = study_points(evaluator, curve, Path(name).resolve(), folder, seed,
                                                             args.threads, args.fresh)
        print(f"calibration seed {seed}\n{seed_table(rows, args.steps)}\n")
        per_seed.append(rows)
    if len(per_seed) > 1:
        print(seeds_table(per_seed, args.steps))


if __name__ == "__main__":
    main()
