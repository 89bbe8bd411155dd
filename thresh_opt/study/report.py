"""A comparison's results: hypervolume at budgets (mean and spread over seeds), fronts, plots, Markdown."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from thresh_opt import analysis, keys
from thresh_opt.study.compare import CompareConfig, evaluations
from thresh_opt.study.significance import ALPHA, Verdict, verdicts


@dataclass
class StudySummary:
    """One (sampler, seed) study, measured."""

    label: str
    seed: int
    study: str
    history: list[float]  # hypervolume after each finished trial, baselines included
    evaluations: int
    front_size: int
    wall_seconds: float
    sampler_finished: bool
    fe_history: list[float]  # forward-equivalents spent once each trial had finished
    forward_equivalents: float

    def hv_at(self, budget: int) -> float:
        """Hypervolume once `budget` trials had finished (the last value if the study stopped earlier)."""
        if not self.history:
            return 0.0
        return self.history[min(budget, len(self.history)) - 1]

    def hv_at_fe(self, budget: float) -> float:
        """Hypervolume of the trials finished within `budget` forward-equivalents."""
        within = [hv for hv, fe in zip(self.history, self.fe_history) if fe <= budget + 1e-9]
        return within[-1] if within else 0.0


def summarize(label: str, seed: int, study: optuna.Study, trials: int,
              forward_equivalents: float | None = None) -> StudySummary:
    """Measure one finished (or interrupted) study; `trials` and `forward_equivalents` are its budget."""
    done = evaluations(study)
    fe = analysis.cost_history(study)
    spent = fe[-1] if fe else 0.0
    out_of_fe = forward_equivalents is not None and spent >= forward_equivalents
    return StudySummary(label, seed, study.study_name, analysis.hypervolume_history(study), done,
                        len(analysis.pareto_front(study)), float(study.user_attrs.get(keys.WALL_SECONDS, 0.0)),
                        done < trials and not out_of_fe, fe, spent)


def budget_columns(ccfg: CompareConfig) -> list[tuple[str, str]]:
    """(row key, column title) of every reported budget: trial counts, then forward-equivalents."""
    return [(f"hv@{b}", f"HV @{b}") for b in ccfg.budgets] + [(f"hv@{b:g}fe", f"HV @{b:g} FE") for b in ccfg.fe_budgets]


def table(ccfg: CompareConfig, summaries: list[StudySummary]) -> list[dict[str, Any]]:
    """Per sampler: hypervolume at each budget, in trials and in forward-equivalents (mean, std over seeds,
    and the Mann-Whitney U and p-value of the best mean against it), front size, evaluations,
    forward-equivalents spent and time."""
    rows = []
    per_seed: dict[str, dict[str, list[float]]] = {key: {} for key, _ in budget_columns(ccfg)}
    for label in dict.fromkeys(s.label for s in summaries):
        mine = [s for s in summaries if s.label == label]
        row: dict[str, Any] = {"sampler": label, "seeds": len(mine)}
        at = [*(lambda s, b=b: s.hv_at(b) for b in ccfg.budgets),
              *(lambda s, b=b: s.hv_at_fe(b) for b in ccfg.fe_budgets)]
        for (key, _), hv in zip(budget_columns(ccfg), at):
            values = np.array([hv(s) for s in mine])
            row[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(mine) > 1 else 0.0}
            per_seed[key][label] = [float(v) for v in values]
        row["front_size"] = float(np.mean([s.front_size for s in mine]))
        row["evaluations"] = float(np.mean([s.evaluations for s in mine]))
        row["forward_equivalents"] = float(np.mean([s.forward_equivalents for s in mine]))
        row["wall_seconds"] = float(np.mean([s.wall_seconds for s in mine]))
        rows.append(row)
    by_label = {r["sampler"]: r for r in rows}
    for key, title in budget_columns(ccfg):  # the best mean at each budget, and how sure that is
        judged = verdicts(title, per_seed[key])
        for v in judged:
            by_label[v.other][key] |= {"u": v.u, "p": v.p}
        best = judged[0].best if judged else max(rows, key=lambda r: r[key]["mean"])["sampler"]
        by_label[best][key]["best"] = True
    return rows


def plot_history(summaries: list[StudySummary], trials: int, path: Path) -> Path:
    """Hypervolume against trials: the mean per sampler with its min-max band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label in dict.fromkeys(s.label for s in summaries):
        mine = [s for s in summaries if s.label == label]
        grid = np.array([[s.hv_at(b) for b in range(1, trials + 1)] for s in mine])
        x = np.arange(1, trials + 1)
        ax.plot(x, grid.mean(axis=0), label=f"{label} ({len(mine)} seed{'s' if len(mine) > 1 else ''})")
        if len(mine) > 1:
            ax.fill_between(x, grid.min(axis=0), grid.max(axis=0), alpha=0.15)
    ax.set(xlabel="trials (baselines included)", ylabel="hypervolume",
           title="hypervolume history (reference: dense model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reached(studies: dict[str, list[optuna.Study]], references: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Per reference point: the contenders with a front trial at least as good in every objective."""
    first = next(iter(studies.values()))[0]
    names, sign = first.user_attrs.get(keys.OBJECTIVES) or [], analysis.signs(first)
    out: dict[str, list[str]] = {}
    for ref in references:
        target = np.array([ref["values"][n] for n in names]) * sign
        out[ref["label"]] = [label for label, group in studies.items()
                             if any(np.all(np.array(t.values) * sign <= target)
                                    for s in group for t in analysis.pareto_front(s))]
    return out


def plot_fronts(studies: dict[str, list[optuna.Study]], path: Path,
                references: list[dict[str, Any]] | None = None) -> Path | None:
    """The Pareto front of each sampler (union of its seeds' trials), together, with the reference points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(studies.values()))[0]
    names = first.user_attrs.get(keys.OBJECTIVES) or []
    if len(names) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, group in studies.items():
        points = np.array([t.values for s in group for t in analysis.pareto_front(s)])
        if not len(points):
            continue
        keep = analysis.non_dominated(points * analysis.signs(first))
        front = points[sorted(keep, key=lambda i: points[i][0])]
        ax.step(front[:, 0], front[:, 1], where="post", marker="o", markersize=3, label=label)
    for ref in references or []:
        x, y = (ref["values"][n] for n in names[:2])
        ax.plot([x], [y], marker="*", markersize=11, color="black", linestyle="none")
        ax.annotate(ref["label"], (x, y), textcoords="offset points", xytext=(5, -10), fontsize=7)
    ax.set(xlabel=names[0], ylabel=names[1], title="Pareto fronts (all seeds of each sampler)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reference_text(study: optuna.Study) -> str:
    """The hypervolume reference point, in the objectives' own units."""
    names = study.user_attrs.get(keys.OBJECTIVES) or []
    ref = analysis.reference_point(study) * analysis.signs(study)
    dense = study.user_attrs.get(keys.DENSE, {})
    return ", ".join(f"{n} {r:.4g} (dense {dense.get(n, float('nan')):.4g})" for n, r in zip(names, ref))


def markdown(ccfg: CompareConfig, rows: list[dict[str, Any]], summaries: list[StudySummary], reference: str,
             source: str, plots: list[Path], references: list[dict[str, Any]] | None = None,
             reached_by: dict[str, list[str]] | None = None) -> str:
    """The comparison report."""
    lines = [f"# Comparison `{ccfg.name}`", "",
             f"- File: `{source}`; written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
             f"- Budget: {ccfg.trials} trials per study, baselines included"
             + (f", at most {ccfg.forward_equivalents:g} forward-equivalents" if ccfg.forward_equivalents else "")
             + f"; seeds {ccfg.seeds} (deterministic samplers run once)",
             f"- Hypervolume reference point (dense model, 10% worse): {reference}",
             "- Forward-equivalents (FE): the trials' work in full passes over the calibration set (incremental "
             "evaluation makes trials differ in cost); the dense reference, shared by all studies, is not counted", "",
             "| sampler | seeds | " + " | ".join(title for _, title in budget_columns(ccfg))
             + " | front size | evaluations | FE | wall s |",
             "|---|---:|" + "---:|" * (len(budget_columns(ccfg)) + 4)]
    for r in rows:
        cells = []
        for key, _ in budget_columns(ccfg):
            c = r[key]
            text = f"{c['mean']:.4g} ± {c['std']:.2g}" if r["seeds"] > 1 else f"{c['mean']:.4g}"
            text += f" (p {c['p']:.2g})" if "p" in c else ""
            cells.append(f"**{text}**" if c.get("best") else text)
        lines.append(f"| {r['sampler']} | {r['seeds']} | " + " | ".join(cells) + f" | {r['front_size']:.1f} | "
                     f"{r['evaluations']:.0f} | {r['forward_equivalents']:.1f} | {r['wall_seconds']:.0f} |")
    lines += ["", "Mean ± sample standard deviation over seeds; bold: best mean at that budget. A study whose "
              "sampler finished before the budget keeps its last hypervolume.", "",
              f"Best mean against each other contender, one-sided Mann-Whitney U test over seeds (significant: "
              f"p < {ALPHA}; a sampler that runs once counts its value for every seed):", ""]
    best = {key: next(r["sampler"] for r in rows if r[key].get("best")) for key, _ in budget_columns(ccfg)}
    for key, title in budget_columns(ccfg):
        lines += [f"- {Verdict(title, best[key], r['sampler'], r[key]['u'], r[key]['p']).line()}"
                  for r in rows if "p" in r[key]]
    lines += [""]
    if references:
        names = list(references[0]["values"])
        lines += ["Reference points (black stars in the fronts plot), and the contenders whose front reaches them "
                  "(a trial at least as good in every objective):", "",
                  "| reference | " + " | ".join(names) + " | reached by |", "|---|" + "---:|" * len(names) + "---|"]
        lines += [f"| {r['label']} | " + " | ".join(f"{r['values'][n]:.4g}" for n in names)
                  + f" | {', '.join((reached_by or {}).get(r['label'], [])) or 'none'} |" for r in references]
        lines += [""]
    stopped = [s for s in summaries if s.sampler_finished]
    if stopped:
        lines += ["Stopped early (sampler finished): "
                  + ", ".join(f"{s.study} after {s.evaluations}" for s in stopped), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(ccfg: CompareConfig, studies: list[tuple[str, optuna.Study]], summaries: list[StudySummary],
                 folder: Path, source: str, references: list[dict[str, Any]] | None = None,
                 ) -> tuple[list[Path], list[dict[str, Any]]]:
    """Table, plots, report.md and summary.json in `folder`, from the studies, their summaries and the
    reference points (`compare.measure_references`)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = table(ccfg, summaries)
    by_label: dict[str, list[optuna.Study]] = {}
    for label, s in studies:
        by_label.setdefault(label, []).append(s)
    plots = [plot_history(summaries, ccfg.trials, folder / "hypervolume.png")]
    references = references or []
    fronts = plot_fronts(by_label, folder / "fronts.png", references)
    plots += [fronts] if fronts else []
    reference = reference_text(studies[0][1])
    reached_by = reached(by_label, references)
    (folder / "report.md").write_text(markdown(ccfg, rows, summaries, reference, source, plots, references,
                                               reached_by))
    (folder / "summary.json").write_text(json.dumps({"compare": ccfg.model_dump(), "reference": reference, "rows": rows,
                                                    "references": [{**r, "reached_by": reached_by[r["label"]]}
                                                                   for r in references],
                                                    "studies": [asdict(s) for s in summaries]}, indent=1))
    return [folder / "report.md", folder / "summary.json", *plots], rows
