"""The comparison's significance tests: Mann-Whitney U values on known cases, and the report's verdicts."""

from __future__ import annotations

import pytest

from thresh_opt.study.compare import CompareConfig
from thresh_opt.study.report import StudySummary, markdown, table
from thresh_opt.study.significance import mann_whitney, verdicts


def test_mann_whitney_on_known_cases():
    # every value larger: U = 5 x 5 and the exact one-sided p is 1 / C(10, 5)
    assert mann_whitney([6, 7, 8, 9, 10], [1, 2, 3, 4, 5]) == pytest.approx((25.0, 1 / 252))
    # 3 vs 3 with U = 8 of 9: of the C(6, 3) = 20 orderings, two have U >= 8
    assert mann_whitney([3, 4, 5], [1, 2, 3.5]) == pytest.approx((8.0, 0.1))
    # the other way round: U = 1, p = 19/20
    assert mann_whitney([1, 2, 3.5], [3, 4, 5]) == pytest.approx((1.0, 0.95))


def test_verdicts_pick_the_best_mean_and_count_a_deterministic_value_for_every_seed():
    judged = verdicts("HV @60", {"tpe": [0.10, 0.20, 0.30, 0.40, 0.45], "greedy": [0.5], "random": [0.5, 0.1, 0.3,
                                                                                                    0.2, 0.4]})
    assert {v.other for v in judged} == {"tpe", "random"} and all(v.best == "greedy" for v in judged)
    tpe = next(v for v in judged if v.other == "tpe")
    assert tpe.u == 25.0 and tpe.significant and tpe.line().startswith("HV @60: greedy beats tpe (U 25, p ")
    random = next(v for v in judged if v.other == "random")  # one tie at 0.5: no longer every pair
    assert random.u == 22.5
    assert verdicts("HV @60", {"only": [0.1, 0.2]}) == []


def _summary(label: str, seed: int, hv: float) -> StudySummary:
    history = [hv / 4, hv / 2, hv, hv]
    return StudySummary(label, seed, f"{label}-{seed}", history, 4, 2, 1.0, False, [1.0, 2.0, 3.0, 4.0], 4.0)


def test_the_report_gives_p_values_and_one_line_verdicts():
    ccfg = CompareConfig(study="x.yaml", samplers=[{"name": "tpe"}, {"name": "random"}], seeds=[0, 1, 2, 3],
                         trials=4, budgets=[3], fe_budgets=[2.0])
    summaries = ([_summary("tpe", s, 0.5 + 0.01 * s) for s in range(4)]
                 + [_summary("random", s, 0.3 + 0.01 * s) for s in range(4)])
    rows = table(ccfg, summaries)
    by = {r["sampler"]: r for r in rows}
    assert by["tpe"]["hv@3"]["best"] and "p" not in by["tpe"]["hv@3"]
    assert by["random"]["hv@3"]["u"] == 16.0 and by["random"]["hv@3"]["p"] == pytest.approx(1 / 70)
    text = markdown(ccfg, rows, summaries, "ref", "x.yaml", [])
    assert "- HV @3: tpe beats random (U 16, p 0.0143)" in text
    assert "(p 0.014)" in text  # in the table cell of the other contender
