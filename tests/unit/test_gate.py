"""Promotion gate against a real MLflow registry (sqlite under tmp_path).

Model scoring is injected (a table of HR@10 per version) so these tests check the gate's
decisions, not TensorFlow; the MostPop reference is computed for real on a tiny holdout.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from model_registry.gate import Holdout, promote_if_better
from model_registry.registry import (
    CHAMPION,
    RegistryError,
    list_versions,
    resolve_alias,
    rollback,
)
from tasks.model.evaluate import leave_last_positive_split


def tiny_holdout() -> Holdout:
    """12 test users: train positive item 1, test item 100+u (never bookmarked before).
    Background users 50..60 each bookmark one of items 2..12, so 11 unseen items have
    popularity 1 > 0 = the test item's: MostPop rank 11 for everyone -> MostPop HR@10 = 0."""
    t0 = datetime(2024, 1, 1)
    rows = []
    for u in range(1, 13):
        rows += [(u, 1, 1, t0), (u, 100 + u, 1, t0 + timedelta(days=1))]
    rows += [(50 + k, 2 + k, 1, t0) for k in range(11)]
    frame = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    return Holdout(split=leave_last_positive_split(frame), catalogue=None)


def make_versions(settings, n: int) -> list[int]:  # type: ignore[no-untyped-def]
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    client.create_registered_model(settings.registered_model_name)
    experiment = client.create_experiment("gate-test")
    versions = []
    for _ in range(n):
        run = client.create_run(experiment)
        client.set_terminated(run.info.run_id)
        created = client.create_model_version(
            settings.registered_model_name,
            source=f"runs:/{run.info.run_id}/model",
            run_id=run.info.run_id,
        )
        versions.append(int(created.version))
    return versions


def scorer_from(table: dict[int, float]):  # type: ignore[no-untyped-def]
    def score(settings, ref, holdout):  # type: ignore[no-untyped-def]
        return {"HR@10": table[ref.version], "NDCG@10": table[ref.version] / 2}

    return score


def test_mostpop_reference_is_zero_on_the_tiny_holdout() -> None:
    from tasks.model.evaluate import MostPop, evaluate_baseline

    assert evaluate_baseline(MostPop(), tiny_holdout().split)["HR@10"] == 0.0


def test_gate_first_champion_must_beat_mostpop(settings) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = make_versions(settings, 2)
    holdout = tiny_holdout()
    refused = promote_if_better(
        settings, v1, holdout=holdout, scorer=scorer_from({v1: 0.0, v2: 0.3})
    )
    assert not refused.promoted and refused.reference == "MostPop"
    assert resolve_alias(settings, CHAMPION) is None
    tags = {r.version: r.tags for r in list_versions(settings)}
    assert "does not beat MostPop" in tags[v1]["gate_reason"]

    decision = promote_if_better(
        settings, v2, holdout=holdout, scorer=scorer_from({v1: 0.0, v2: 0.3})
    )
    assert decision.promoted and decision.champion_version == v2
    assert resolve_alias(settings, CHAMPION).version == v2


@pytest.mark.parametrize(
    ("challenger_hr", "margin", "promoted"),
    [(0.6, 0.0, True), (0.4, 0.0, False), (0.5, 0.0, False), (0.55, 0.1, False)],
)
def test_gate_against_champion(settings, challenger_hr, margin, promoted) -> None:  # type: ignore[no-untyped-def]
    """Champion v1 scores 0.5 on the holdout: better wins, worse/equal/within margin lose."""
    v1, v2 = make_versions(settings, 2)
    scorer = scorer_from({v1: 0.5, v2: challenger_hr})
    holdout = tiny_holdout()
    assert promote_if_better(settings, v1, holdout=holdout, scorer=scorer).promoted
    decision = promote_if_better(settings, v2, holdout=holdout, margin=margin, scorer=scorer)
    assert decision.promoted is promoted
    assert decision.reference == f"champion v{v1}"
    assert decision.reference_score == 0.5
    assert resolve_alias(settings, CHAMPION).version == (v2 if promoted else v1)
    if not promoted:
        gate_reason = {r.version: r.tags for r in list_versions(settings)}[v2]["gate_reason"]
        assert gate_reason == decision.reason and "does not beat champion v1" in gate_reason


def test_gate_reads_champion_fresh_and_rollback(settings) -> None:  # type: ignore[no-untyped-def]
    """A person moves champion to v3 in the UI; the gate compares v2 with v3, not v1."""
    import mlflow

    v1, v2, v3 = make_versions(settings, 3)
    scorer = scorer_from({v1: 0.2, v2: 0.5, v3: 0.7})
    holdout = tiny_holdout()
    assert promote_if_better(settings, v1, holdout=holdout, scorer=scorer).promoted
    mlflow.MlflowClient(
        settings.mlflow_tracking_uri, settings.mlflow_tracking_uri
    ).set_registered_model_alias(settings.registered_model_name, CHAMPION, str(v3))
    decision = promote_if_better(settings, v2, holdout=holdout, scorer=scorer)
    assert not decision.promoted and decision.reference == f"champion v{v3}"

    # v1 -> v2 through the gate, then roll back to v1.
    mlflow.MlflowClient(
        settings.mlflow_tracking_uri, settings.mlflow_tracking_uri
    ).set_registered_model_alias(settings.registered_model_name, CHAMPION, str(v1))
    assert promote_if_better(settings, v2, holdout=holdout, scorer=scorer).promoted
    assert rollback(settings) == v1
    assert resolve_alias(settings, CHAMPION).version == v1
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(settings)


def test_gate_unknown_version_and_bad_margin(settings) -> None:  # type: ignore[no-untyped-def]
    (v1,) = make_versions(settings, 1)
    with pytest.raises(RegistryError, match="99"):
        promote_if_better(settings, 99, holdout=tiny_holdout(), scorer=scorer_from({}))
    with pytest.raises(ValueError, match="-0.1"):
        promote_if_better(settings, v1, margin=-0.1, holdout=tiny_holdout(), scorer=scorer_from({}))


def test_rollback_after_a_hand_move_returns_to_the_recorded_champion(settings) -> None:  # type: ignore[no-untyped-def]
    """Gate promotes v1; a person moves champion to v2 in the UI; rollback serves v1 again."""
    import mlflow

    v1, v2 = make_versions(settings, 2)
    assert promote_if_better(
        settings, v1, holdout=tiny_holdout(), scorer=scorer_from({v1: 0.9, v2: 0.1})
    ).promoted
    mlflow.MlflowClient(
        settings.mlflow_tracking_uri, settings.mlflow_tracking_uri
    ).set_registered_model_alias(settings.registered_model_name, CHAMPION, str(v2))
    assert rollback(settings) == v1
    assert resolve_alias(settings, CHAMPION).version == v1
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(settings)


def test_gate_tags_the_decision_scores_and_deciding_run_and_links_the_run(settings) -> None:  # type: ignore[no-untyped-def]
    """Champion v1 scores 0.5, challenger v2 0.25: refused; the version keeps the decision,
    the two compared scores and the Airflow run, and the decision links the MLflow run."""
    from tasks.core.lineage import RunLineage

    settings = settings.replace(mlflow_ui_url="http://mlflow.test:5000")
    v1, v2 = make_versions(settings, 2)
    scorer = scorer_from({v1: 0.5, v2: 0.25})
    holdout = tiny_holdout()
    assert promote_if_better(settings, v1, holdout=holdout, scorer=scorer).promoted
    lineage = RunLineage(
        dag_id="recsys_train",
        run_id="manual__2024-02-01",
        task_id="promotion_gate",
        try_number=1,
        ti_url="http://af.test/dags/recsys_train/runs/manual__2024-02-01/tasks/promotion_gate",
    )
    decision = promote_if_better(settings, v2, holdout=holdout, scorer=scorer, lineage=lineage)
    assert not decision.promoted
    tags = {r.version: r for r in list_versions(settings)}
    ref = tags[v2]
    assert {k: v for k, v in ref.tags.items() if k.startswith("gate")} == {
        "gate_decision": "not promoted",
        "gate_reason": "HR@10 0.2500 does not beat champion v1 0.5000 + margin 0 "
        "on 12 holdout users (floor: strongest; HR@10/NDCG@10: "
        f"v{v2} 0.2500/0.1250, MostPop 0.0000/0.0000, ItemKNN 0.0000/0.0000, "
        f"EASE 0.0000/0.0000, champion v{v1} 0.5000/0.2500; EASE (lambda 100) on all 24 items)",
        "gate.metric": "HR@10",
        "gate.challenger_score": "0.250000",
        "gate.reference": f"champion v{v1}",
        "gate.reference_score": "0.500000",
        "gate.scores": json.dumps(
            {
                f"v{v2}": {"HR@10": 0.25, "NDCG@10": 0.125},
                "MostPop": {"HR@10": 0.0, "NDCG@10": 0.0},
                "ItemKNN": {"HR@10": 0.0, "NDCG@10": 0.0},
                "EASE": {"HR@10": 0.0, "NDCG@10": 0.0},
                f"champion v{v1}": {"HR@10": 0.5, "NDCG@10": 0.25},
            },
            sort_keys=True,
        ),
        "gate.baselines": "EASE (lambda 100) on all 24 items",
        "gate.airflow_run_id": "manual__2024-02-01",
        "gate.airflow_task_instance_url": lineage.ti_url,
    }
    assert tags[v1].tags["gate_decision"] == "promoted"
    import mlflow

    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(ref.run_id)
    assert decision.run_url == (
        f"http://mlflow.test:5000/#/experiments/{run.info.experiment_id}/runs/{ref.run_id}"
    )
    assert decision.as_dict()["run_url"] == decision.run_url


def strong_knn_holdout() -> Holdout:
    """Test users 1..10 bookmark item 1, then item 2 (test). Users 20..29 bookmark items 1
    and 2, then their own item 100+u (test, never bookmarked before). Users 30..44 bookmark
    item 3, users 60..85 one tail item 4..29 each (single bookmarks: no test item).
    Train popularity: item 1: 20, item 3: 15, item 2: 10, tail 1, items 120..129: 0.
    Users 1..10: ItemKNN ranks item 2 first (cos(1,2) > 0, nothing else co-occurs) -> rank 0;
    MostPop puts item 3 above it -> rank 1. Users 20..29: the test item scores 0 for both
    and ties with 36 (ItemKNN: every unseen item) -> rank 18, or sits below 27 items
    (MostPop) -> misses. So HR@10 = 0.5 for both, NDCG@10: ItemKNN 0.5, MostPop
    0.5 / log2(3) = 0.3155."""
    t0 = datetime(2024, 1, 1)
    t1 = t0 + timedelta(days=1)
    rows = []
    for u in range(1, 11):
        rows += [(u, 1, 1, t0), (u, 2, 1, t1)]
    for u in range(20, 30):
        rows += [(u, 1, 1, t0), (u, 2, 1, t0), (u, 100 + u, 1, t1)]
    rows += [(u, 3, 1, t0) for u in range(30, 45)]
    rows += [(60 + k, 4 + k, 1, t0) for k in range(26)]
    frame = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    return Holdout(split=leave_last_positive_split(frame), catalogue=None)


def fixed_scorer(metrics: dict[str, float]):  # type: ignore[no-untyped-def]
    return lambda settings, ref, holdout: dict(metrics)


def test_first_model_must_beat_the_strongest_baseline_not_just_mostpop(settings) -> None:  # type: ignore[no-untyped-def]
    """NDCG@10 0.4 beats MostPop (0.3155) but not ItemKNN (0.5): refused."""
    holdout = strong_knn_holdout()
    (v1,) = make_versions(settings, 1)
    decision = promote_if_better(
        settings,
        v1,
        holdout=holdout,
        metric="NDCG@10",
        scorer=fixed_scorer({"HR@10": 0.5, "NDCG@10": 0.4}),
    )
    assert decision.scores["ItemKNN"] == {"HR@10": 0.5, "NDCG@10": 0.5}
    assert decision.scores["MostPop"]["HR@10"] == 0.5
    assert decision.scores["MostPop"]["NDCG@10"] == pytest.approx(0.5 / np.log2(3))
    assert set(decision.scores) == {f"v{v1}", "MostPop", "ItemKNN", "EASE"}
    assert not decision.promoted and decision.reference in ("ItemKNN", "EASE")
    assert decision.reference_score >= 0.5
    assert "ItemKNN 0.5000/0.5000" in decision.reason
    assert resolve_alias(settings, CHAMPION) is None


def test_floor_can_name_one_baseline(settings) -> None:  # type: ignore[no-untyped-def]
    """floor="MostPop": only MostPop (NDCG@10 0.3155) is the floor, so 0.4 is promoted."""
    (v1,) = make_versions(settings, 1)
    holdout = strong_knn_holdout()
    scorer = fixed_scorer({"HR@10": 0.5, "NDCG@10": 0.4})
    decision = promote_if_better(
        settings, v1, holdout=holdout, scorer=scorer, metric="NDCG@10", floor="MostPop"
    )
    assert decision.promoted and decision.reference == "MostPop"
    assert decision.reference_score == pytest.approx(0.5 / np.log2(3))
    with pytest.raises(ValueError, match="'best'"):
        promote_if_better(settings, v1, holdout=holdout, scorer=scorer, floor="best")


def test_ease_cap_is_stated_in_the_record(settings) -> None:  # type: ignore[no-untyped-def]
    (v1,) = make_versions(settings, 1)
    holdout = strong_knn_holdout()
    decision = promote_if_better(
        settings, v1, holdout=holdout, scorer=scorer_from({v1: 0.9}), max_dense_items=5
    )
    n_items = holdout.split.n_items
    assert f"on the 5 most bookmarked of {n_items} items (max_dense_items 5)" in decision.reason
    tags = {r.version: r.tags for r in list_versions(settings)}[v1]
    assert tags["gate.baselines"].endswith(
        f"5 most bookmarked of {n_items} items (max_dense_items 5)"
    )
