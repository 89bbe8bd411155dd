"""Training-free greedy search vs learned thresholds, on one model, in the same units.

Each configuration is produced by its own process (`thresh-opt greedy` or `thresh-opt baseline train`),
so each one's peak memory is its own; then every thresholds file is evaluated on the same calibration and
held-out text. The verdicts interpolate along the greedy points (sorted by sparsity) at each trained
point: at equal sparsity, which is more accurate (held-out perplexity); at equal perplexity, which is
sparser.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

OBJECTIVES = ["loss_ratio", "perplexity", "next_word_accuracy", "sparsity", "energy_gain", "latency_gain"]


@dataclass
class Point:
    """One thresholds configuration: how it was made, what it costs to make, and how good it is."""

    method: str  # greedy | trained
    setting: str  # loss_inc=1.002 | penalty=1.0
    file: str
    forward_equivalents: float
    seconds: float
    peak_memory_mb: float
    values: dict[str, float]


def produce(cmd: list[str]) -> dict[str, Any]:
    """Run one producing command (a thresh-opt subcommand with --json) and return its JSON."""
    proc = subprocess.run([sys.executable, "-m", "thresh_opt", *cmd, "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"thresh-opt {' '.join(cmd[:2])} failed: {tail}")
    return json.loads(proc.stdout)


def greedy_point(model: str, loss_inc: float, out: Path, calibration: list[str]) -> tuple[str, str, Path, dict]:
    """Fast-mode greedy at one tolerance."""
    path = out / f"greedy-{loss_inc:g}.json"
    data = produce(["greedy", model, "--mode", "fast", "--loss-inc", str(loss_inc), "--output", str(path),
                    *calibration])
    r = data["results"]["fast"]
    return "greedy", f"loss_inc={loss_inc:g}", path, {"forward_equivalents": r["forward_equivalents"],
                                                     "seconds": r["seconds"], "peak_memory_mb": data["peak_memory_mb"]}


def trained_point(model: str, penalty: float, steps: int, out: Path, calibration: list[str],
                  extra: list[str]) -> tuple[str, str, Path, dict]:
    """Learned thresholds at one penalty."""
    path = out / f"trained-{penalty:g}.json"
    data = produce(["baseline", "train", model, "--penalty", str(penalty), "--steps", str(steps), "--output", str(path),
                    *calibration, *extra])
    return ("trained", f"penalty={penalty:g}", path,
            {"forward_equivalents": data["forward_equivalents"], "seconds": data["seconds"],
             "peak_memory_mb": data["peak_memory_mb"]})


def interp_within(x: float, xs: list[float], ys: list[float]) -> float | None:
    """y at x, linearly between the points (xs, ys) in any order; None outside their range (no verdict)."""
    order = np.argsort(xs)
    xs_sorted, ys_sorted = np.array(xs)[order], np.array(ys)[order]
    if not xs_sorted[0] <= x <= xs_sorted[-1]:
        return None
    return float(np.interp(x, xs_sorted, ys_sorted))


def verdicts(points: list[Point]) -> list[dict[str, Any]]:
    """Per trained point: the greedy perplexity at its sparsity, and the greedy sparsity at its perplexity."""
    greedy = [p for p in points if p.method == "greedy"]
    out = []
    for p in (p for p in points if p.method == "trained"):
        s, ppl = p.values["sparsity"], p.values["perplexity"]
        g_ppl = interp_within(s, [g.values["sparsity"] for g in greedy], [g.values["perplexity"] for g in greedy])
        g_s = interp_within(ppl, [g.values["perplexity"] for g in greedy], [g.values["sparsity"] for g in greedy])
        out.append({"trained": p.setting, "sparsity": s, "perplexity": ppl, "greedy_perplexity_at_same_sparsity": g_ppl,
                    "greedy_sparsity_at_same_perplexity": g_s})
    return out


def markdown(model: str, points: list[Point], judged: list[dict[str, Any]], plot: str | None) -> str:
    """The comparison report."""
    lines = [f"# Greedy search vs learned thresholds: `{model}`", "",
             "Perplexity and next-word accuracy on the held-out evaluation half; loss ratio on the calibration set "
             "(the set both methods see); sparsity MAC-weighted; SENECA gains vs the dense model. Compute: "
             "forward-equivalents (full passes over the calibration set; a training step counts forward + "
             "backward = 2 with frozen weights, 3 when fine-tuning), wall seconds, and the producing process's "
             "peak memory.", "",
             "| method | setting | loss ratio | perplexity | next-word acc. | sparsity | energy gain | latency gain "
             "| fwd-equiv. | seconds | peak MB |",
             "|---|---|" + "---:|" * 9]
    for p in points:
        v = p.values
        lines.append(f"| {p.method} | {p.setting} | {v['loss_ratio']:.4f} | {v['perplexity']:.3f} | "
                     f"{v['next_word_accuracy']:.3f} | {v['sparsity']:.1%} | {v['energy_gain']:.2f}x | "
                     f"{v['latency_gain']:.2f}x | {p.forward_equivalents:.1f} | "
                     f"{p.seconds:.1f} | {p.peak_memory_mb:.0f} |")
    lines += ["", "## Verdicts", ""]
    for j in judged:
        at_s = j["greedy_perplexity_at_same_sparsity"]
        at_p = j["greedy_sparsity_at_same_perplexity"]
        lines.append(f"- trained {j['trained']}: sparsity {j['sparsity']:.1%}, perplexity {j['perplexity']:.3f}. "
                     + ("At this sparsity the greedy curve has perplexity "
                        f"{at_s:.3f} ({'greedy' if at_s < j['perplexity'] else 'trained'} more accurate). "
                        if at_s is not None else "Its sparsity lies outside the greedy points. ")
                     + (f"At this perplexity the greedy curve has sparsity {at_p:.1%} "
                        f"({'greedy' if at_p > j['sparsity'] else 'trained'} sparser)."
                        if at_p is not None else "Its perplexity lies outside the greedy points."))
    g = [p for p in points if p.method == "greedy"]
    t = [p for p in points if p.method == "trained"]
    if g and t:
        lines += ["", f"Compute per configuration (mean): greedy {np.mean([p.forward_equivalents for p in g]):.1f} "
                  f"forward-equivalents, {np.mean([p.seconds for p in g]):.0f} s, "
                  f"{np.mean([p.peak_memory_mb for p in g]):.0f} MB peak; "
                  f"trained {np.mean([p.forward_equivalents for p in t]):.1f}, "
                  f"{np.mean([p.seconds for p in t]):.0f} s, {np.mean([p.peak_memory_mb for p in t]):.0f} MB."]
    if plot:
        lines += ["", f"![sparsity vs perplexity]({plot})"]
    return "\n".join(lines) + "\n"


def plot(points: list[Point], front: list[tuple[float, float]], path: Path) -> Path:
    """Held-out perplexity against MAC-weighted sparsity for both methods (and a study front's loss ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, marker in (("greedy", "o-"), ("trained", "s--")):
        mine = sorted((p for p in points if p.method == method), key=lambda p: p.values["sparsity"])
        if mine:
            ax.plot([p.values["sparsity"] for p in mine], [p.values["perplexity"] for p in mine], marker, label=method)
    ax.set(xlabel="MAC-weighted sparsity", ylabel="held-out perplexity", title="greedy search vs learned thresholds")
    if front:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in front], [r for _, r in front], "x", color="grey", label="study front (loss ratio)")
        ax2.set_ylabel("calibration loss ratio (study front)")
        ax2.legend(loc="lower right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def summary_json(points: list[Point], judged: list[dict[str, Any]]) -> str:
    """Everything measured, as JSON."""
    return json.dumps({"points": [asdict(p) for p in points], "verdicts": judged}, indent=1)
