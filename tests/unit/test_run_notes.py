"""The promotion gate's decision as one line a person reads first (issue 13)."""

from __future__ import annotations

from plugins.run_notes import decision_line


def test_promoted_line_names_version_metric_and_scores() -> None:
    decision = {
        "promoted": True,
        "reason": "beats champion v2 by 0.0300 (margin 0.0)",
        "champion_version": 2,
        "challenger_version": 3,
        "metric": "HR@10",
        "challenger_score": 0.21,
        "reference_score": 0.18,
        "reference": "champion v2",
        "version": 3,
    }
    assert decision_line(decision) == (
        "PROMOTED v3: HR@10 0.2100 vs champion v2 0.1800 - beats champion v2 by 0.0300 (margin 0.0)"
    )


def test_not_promoted_and_gate_off_lines() -> None:
    decision = {
        "promoted": False,
        "reason": "does not beat champion v2",
        "challenger_version": 4,
        "metric": "NDCG@10",
        "challenger_score": 0.1,
        "reference_score": 0.125,
        "reference": "champion v2",
        "version": 4,
    }
    assert decision_line(decision).startswith(
        "NOT PROMOTED v4: NDCG@10 0.1000 vs champion v2 0.1250"
    )
    off = {"promoted": False, "reason": "promotion disabled by the 'promote' param", "version": 5}
    assert decision_line(off) == "NOT PROMOTED v5: promotion disabled by the 'promote' param"
