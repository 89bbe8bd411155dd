"""Study analysis: Pareto front, hypervolume history and plots, from stored Optuna trials."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from thresh_opt import keys


def signs(study: optuna.Study) -> np.ndarray:
    """+1 per minimized objective, -1 per maximized one: values * signs are in minimization form."""
    return np.array([1.0 if d.name == "MINIMIZE" else -1.0 for d in study.directions])


def non_dominated(points: np.ndarray) -> list[int]:
    """Indices of the points (minimization form) no other point dominates."""
    return [i for i in range(len(points))
            if not any(np.all(points[j] <= points[i]) and np.any(points[j] < points[i]) for j in range(len(points)))]


def feasible(trial: FrozenTrial) -> bool:
    """No constraint violated (constraint values <= 0)."""
    return all(v <= 0 for v in trial.constraints.values())


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """Feasible non-dominated complete trials, sorted by the first objective."""
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    if not trials:
        return []
    sign = signs(study)
    front = [trials[i] for i in non_dominated(np.array([t.values for t in trials]) * sign)]
    return sorted(front, key=lambda t: t.values[0] * sign[0])


def reference_point(study: optuna.Study) -> np.ndarray:
    """Hypervolume reference in minimization form: the dense model's values, pushed 10% worse.

    The dense model is the point every configuration is measured against; a configuration counts
    only where it beats it on every objective.
    """
    dense = study.user_attrs.get(keys.DENSE, {})
    names = study.user_attrs.get(keys.OBJECTIVES) or []
    ref = np.array([dense[n] for n in names], dtype=float) * signs(study)
    return ref + 0.1 * np.abs(ref) + 1e-9


def hypervolume_history(study: optuna.Study) -> list[float]:
    """Hypervolume of the feasible front after each finished trial (in trial order)."""
    from optuna._hypervolume import compute_hypervolume

    ref = reference_point(study)
    sign = signs(study)
    points: list[np.ndarray] = []
    history = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE and feasible(t):
            p = np.array(t.values) * sign
            if np.all(p < ref):
                points.append(p)
        history.append(float(compute_hypervolume(np.array(points), ref)) if points else 0.0)
    return history


def cost_history(study: optuna.Study) -> list[float]:
    """Forward-equivalents spent once each trial had finished (in trial order; the dense reference not included)."""
    total, history = 0.0, []
    for t in study.get_trials(deepcopy=False):
        total += float(t.user_attrs.get(keys.FORWARD_EQUIVALENTS, 0.0))
        history.append(total)
    return history


def cost_totals(study: optuna.Study) -> dict[str, float]:
    """What a study cost: forward-equivalents (trials, the dense reference's passes, the front metrics'
    measurements, the refined points' training and measurement, and their total), seconds of evaluation
    (trials, front metrics and refined points), the most memory the
    incremental engine held, and how many trials skipped expensive objectives."""
    trials = study.get_trials(deepcopy=False)
    fe = sum(float(t.user_attrs.get(keys.FORWARD_EQUIVALENTS, 0.0)) for t in trials)
    reference = float(study.user_attrs.get(keys.REFERENCE_FE, 0.0))
    front = study.user_attrs.get(keys.FRONT_COST, {keys.FORWARD_EQUIVALENTS: 0.0, keys.SECONDS: 0.0})
    refined = [r for r in study.user_attrs.get(keys.REFINED, []) if keys.FORWARD_EQUIVALENTS in r]
    refined_fe = sum(float(r[keys.FORWARD_EQUIVALENTS]) for r in refined)
    return {"trials": len(trials), "forward_equivalents": fe, "reference_forward_equivalents": reference,
            "front_forward_equivalents": front[keys.FORWARD_EQUIVALENTS], "refined_forward_equivalents": refined_fe,
            "total_forward_equivalents": fe + reference + front[keys.FORWARD_EQUIVALENTS] + refined_fe,
            "seconds": sum(float(t.user_attrs.get(keys.SECONDS, 0.0)) for t in trials) + front[keys.SECONDS]
            + sum(float(r[keys.SECONDS]) for r in refined),
            "peak_cache_mb": max((float(t.user_attrs.get(keys.CACHE_MB, 0.0)) for t in trials), default=0.0),
            "skipped_trials": sum(1 for t in trials if keys.SKIPPED in t.user_attrs)}


def front_table(study: optuna.Study) -> list[dict[str, Any]]:
    """The Pareto front as rows: trial number, parameters, objectives, MAC-weighted sparsity."""
    names = study.user_attrs.get(keys.OBJECTIVES) or [f"objective_{i}" for i in range(len(study.directions))]
    measured = {int(k): v for k, v in study.user_attrs.get(keys.FRONT_METRICS, {}).items()}
    return [{"trial": t.number, **dict(zip(names, t.values)), "sparsity": t.user_attrs.get("sparsity"),
             **{f"front:{k}": v for k, v in measured.get(t.number, {}).items()}, "params": t.params}
            for t in pareto_front(study)]


def write_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Pareto front (interactive HTML and JSON), hypervolume history and per-layer sparsity heatmap (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.express as px

    folder.mkdir(parents=True, exist_ok=True)
    names = study.user_attrs.get(keys.OBJECTIVES) or []
    out = []
    rows = front_table(study)
    (folder / "pareto_front.json").write_text(json.dumps(rows, indent=1))
    out.append(folder / "pareto_front.json")
    done = list(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if len(names) >= 2 and done:
        front = {r["trial"] for r in rows}
        data = {names[0]: [t.values[0] for t in done], names[1]: [t.values[1] for t in done],
                "trial": [t.number for t in done],
                "front": ["Pareto front" if t.number in front else "other" for t in done]}
        # refined points (`refine`): trained from a trial, not trials themselves
        refined = [r for r in study.user_attrs.get(keys.REFINED, []) if "values" in r]
        for n in names[:2]:
            data[n] += [r["values"][n] for r in refined]
        data["trial"] += [r["setting"]["from_trial"] for r in refined]
        data["front"] += ["refined (trained from trial)"] * len(refined)
        fig = px.scatter(data, x=names[0], y=names[1], color="front", hover_data=["trial"], title=f"{study.study_name}")
        fig.write_html(folder / "pareto_front.html", include_plotlyjs=True)
        out.append(folder / "pareto_front.html")
    hv = hypervolume_history(study)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(hv) + 1), hv)
    ax.set(xlabel="trials", ylabel="hypervolume", title="hypervolume history (reference: dense model)")
    fig.tight_layout()
    fig.savefig(folder / "hypervolume.png", dpi=100)
    plt.close(fig)
    out.append(folder / "hypervolume.png")
    heat = [(t.number, json.loads(t.user_attrs["per_module_sparsity"])) for t in pareto_front(study)
            if "per_module_sparsity" in t.user_attrs]
    if heat:
        modules = list(heat[0][1])
        grid = np.array([[s[m] for m in modules] for _, s in heat])
        fig, ax = plt.subplots(figsize=(max(6, len(modules) * 0.12), 1.2 + 0.3 * len(heat)))
        im = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_yticks(range(len(heat)), [f"trial {n}" for n, _ in heat])
        step = max(1, len(modules) // 16)
        ax.set_xticks(range(0, len(modules), step), modules[::step], rotation=90, fontsize=6)
        fig.colorbar(im, ax=ax, label="sparsity")
        ax.set_title("per-module sparsity of the Pareto front")
        fig.tight_layout()
        fig.savefig(folder / "sparsity_heatmap.png", dpi=100)
        plt.close(fig)
        out.append(folder / "sparsity_heatmap.png")
    return out
