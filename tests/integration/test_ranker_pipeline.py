"""The ranker's gate and registration: NDCG@10 of hand-built candidate sets, candidate sets
from the real recall channels on a hand-built mirror, promotion rules against the recall order
and the champion (real MLflow store), and train -> register -> gate on generated data."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from model_registry.ranker_gate import CandidateSets, build_candidate_sets, list_ndcg
from tests.doubles.hand_frames import six_illusts

# NDCG@10 with one relevant item at position p (1-based) = 1 / log2(p + 1).
AT_2 = 1 / math.log2(3)  # 0.6309...
AT_3 = 1 / math.log2(4)  # 0.5


def _hand_sets() -> CandidateSets:
    """Set 0: three candidates, the positive last in recall order; set 1: two, positive first."""
    return CandidateSets(
        set_ids=np.array([0, 0, 0, 1, 1]),
        labels=np.array([0, 0, 1, 1, 0]),
        features={"user_id": np.array([1, 1, 1, 2, 2])},
        recalled=2,
    )


def test_list_ndcg_of_recall_order_and_rankings_hand_computed() -> None:
    sets = _hand_sets()
    assert sets.n_sets == 2
    assert list_ndcg(sets, sets.recall_order_scores()) == pytest.approx((AT_3 + 1.0) / 2)
    perfect = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    assert list_ndcg(sets, perfect) == pytest.approx(1.0)
    second = np.array([0.1, 0.9, 0.5, 0.8, 0.3])
    assert list_ndcg(sets, second) == pytest.approx((AT_2 + 1.0) / 2)
    # Ties keep the recall order: all-equal scores are the recall order's NDCG.
    assert list_ndcg(sets, np.zeros(5)) == pytest.approx((AT_3 + 1.0) / 2)


def _hand_mirror() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Six illusts, three users; user 1 follows artist 30 (illusts 5 and 6, 6 not out yet)."""
    t = pd.Timestamp
    illusts = six_illusts(late=[6])
    rows = [  # user, illust, label, time
        (1, 1, 1, "2026-01-02 10:00"),
        (1, 2, 1, "2026-01-02 11:00"),
        (1, 3, 0, "2026-01-02 11:30"),
        (1, 5, 1, "2026-01-02 12:00"),  # user 1's held-out positive
        (2, 1, 1, "2026-01-02 09:00"),
        (2, 2, 1, "2026-01-02 09:30"),
        (2, 4, 1, "2026-01-02 10:30"),  # user 2's held-out positive
        (3, 3, 1, "2026-01-02 08:00"),  # one positive: no test item
    ]
    interactions = pd.DataFrame(rows, columns=["user_id", "illust_id", "label", "create_time"])
    interactions["create_time"] = pd.to_datetime(interactions["create_time"])
    follows = pd.DataFrame({"user_id": [1], "artist_id": [30], "create_time": [t("2026-01-01")]})
    return interactions, illusts, follows


def test_candidate_sets_from_the_recall_channels_hand_computed() -> None:
    """Train part: u1 {1, 2 bookmarked; 3 viewed}, u2 {1, 2}, u3 {3}; as_of 01-02 11:30.
    hot = 1, 2 (2 bookmarks each, 60 > 50 total), 3, then 4, 5, 6 by total_bookmarks;
    i2i: sim(1, 2) = 2 / sqrt(2 * 2) = 1; follow_new(u1) = [5] (6 is created after as_of).
    u1 (seen 1, 2, 3): round robin i2i (all seen) -> follow_new 5 -> hot 4 -> hot 6.
    u2 (seen 1, 2): hot 3, 4, 5."""
    import tasks.serving.recall as recall

    interactions, illusts, follows = _hand_mirror()
    sets = build_candidate_sets(interactions, illusts, follows, recall, pool=3, history_len=4)
    users = sets.features["user_id"]
    items = sets.features["illust_id"]
    assert users.tolist() == [1, 1, 1, 2, 2, 2]
    assert items.tolist() == [5, 4, 6, 3, 4, 5]
    assert sets.labels.tolist() == [1, 0, 0, 0, 1, 0] and sets.recalled == 2
    assert list_ndcg(sets, sets.recall_order_scores()) == pytest.approx((1.0 + AT_2) / 2)
    # Evidence per channel (ann, i2i, follow_new, hot): 5 came from follow_new (rank 1) and
    # is 5th in hot (score 0); 4 is 4th in hot; 3 is 3rd in hot with one bookmark.
    hit, rank, score = (
        sets.features["channel_hit"],
        sets.features["channel_rank"],
        sets.features["channel_score"],
    )
    assert hit[0].tolist() == [0, 0, 1, 1] and rank[0].tolist() == [0, 0, 1, 5]
    assert score[0].tolist() == [0, 0, 1.0, 0]
    assert rank[1].tolist() == [0, 0, 0, 4] and rank[3].tolist() == [0, 0, 0, 3]
    assert score[3].tolist() == [0, 0, 0, 1.0]
    # Requested at serving's clock, the snapshot's end + 1 s (01-02 11:30:01; nothing of u1's
    # from its cutoff 12:00 on is in the snapshot): 2 bookmarks, 1 view, artist 30 followed,
    # illust 5 is 35.5 h + 1 s old; u2's candidate 3 (tag b) overlaps u2's history tags.
    assert sets.features["user_bookmarks"][0] == 2 and sets.features["user_views"][0] == 1
    assert sets.features["artist_followed"].tolist() == [1, 0, 1, 0, 0, 0]
    assert sets.features["item_age_s"][0] == 35 * 3600 + 1800 + 1
    assert sets.features["history"][0].tolist() == [2, 1, 0, 0]
    assert sets.features["tag_overlap"][3] == 1

    # A pool of one: u2's pool is [3]; its positive 4 is not appended (serving could never
    # show it), so u2's set is a miss for every list yet stays in the denominator.
    small = build_candidate_sets(interactions, illusts, follows, recall, pool=1, history_len=4)
    assert small.features["illust_id"].tolist() == [5, 3]
    assert small.labels.tolist() == [1, 0] and small.recalled == 1 and small.n_sets == 2
    assert list_ndcg(small, small.recall_order_scores()) == pytest.approx((1.0 + 0.0) / 2)
    assert list_ndcg(small, np.array([0.0, 1.0])) == pytest.approx(0.5)  # no ranking finds 4


def _register(settings, experiment: str) -> int:  # type: ignore[no-untyped-def]
    import mlflow

    from model_registry.registry import SAVED_MODEL_ARTIFACT, register_challenger

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    return register_challenger(
        settings,
        run.info.run_id,
        model=settings.ranker_registered_model_name,
        artifact=SAVED_MODEL_ARTIFACT,
    )


def test_gate_promotes_only_past_recall_order_and_champion(settings) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from model_registry.ranker_gate import promote_ranker_if_better
    from model_registry.registry import get_version, resolve_alias

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    experiment = client.create_experiment("gate", artifact_location=settings.mlflow_artifact_root)
    scores = {  # version -> scores of the five rows of _hand_sets()
        1: np.array([0.1, 0.2, 0.9, 0.8, 0.3]),  # both positives first: 1.0
        2: np.array([0.9, 0.2, 0.1, 0.8, 0.3]),  # the recall order again: 0.75
        3: np.array([0.1, 0.9, 0.5, 0.8, 0.3]),  # positive 2nd in set 0: (0.6309 + 1) / 2
    }
    for _ in scores:
        _register(settings, experiment)

    def scorer(_settings, ref, features):  # type: ignore[no-untyped-def]
        assert features["user_id"].tolist() == [1, 1, 1, 2, 2]
        return scores[ref.version]

    sets, model = _hand_sets(), settings.ranker_registered_model_name
    first = promote_ranker_if_better(settings, 1, sets=sets, scorer=scorer)
    assert first.promoted and first.champion_score is None
    assert (first.challenger_score, first.recall_order_score) == pytest.approx((1.0, 0.75))
    assert resolve_alias(settings, "champion", model=model).version == 1
    assert resolve_alias(settings, "champion") is None  # the two-tower's model is untouched

    tie = promote_ranker_if_better(settings, 2, sets=sets, scorer=scorer)
    assert not tie.promoted and tie.challenger_score == pytest.approx(0.75)
    assert "does not beat recall order 0.7500 and champion v1 1.0000" in tie.reason
    third = promote_ranker_if_better(settings, 3, sets=sets, scorer=scorer)
    assert not third.promoted
    assert (third.challenger_score, third.champion_score) == pytest.approx(((AT_2 + 1) / 2, 1.0))
    assert resolve_alias(settings, "champion", model=model).version == 1
    again = promote_ranker_if_better(settings, 1, sets=sets, scorer=scorer)
    assert not again.promoted and again.reason == "v1 is already champion"

    # The decision is on the version and the numbers on the challenger's run.
    tags = get_version(settings, 3, model=model).tags
    assert tags["gate_decision"] == "not promoted"
    assert (tags["gate.recall_order_score"], tags["gate.champion_score"]) == (
        "0.750000",
        "1.000000",
    )
    run = client.get_run(get_version(settings, 3, model=model).run_id)
    assert run.data.metrics["gate_NDCG_at_10_ranked"] == pytest.approx((AT_2 + 1) / 2)
    assert run.data.metrics["gate_NDCG_at_10_recall_order"] == pytest.approx(0.75)
    assert run.data.metrics["gate_NDCG_at_10_champion"] == pytest.approx(1.0)
    assert run.data.metrics["gate_promoted"] == 0.0
    promoted_run = client.get_run(get_version(settings, 1, model=model).run_id)
    assert promoted_run.data.metrics["gate_promoted"] == 1.0
    with pytest.raises(ValueError, match="margin"):
        promote_ranker_if_better(settings, 3, sets=sets, scorer=scorer, margin=-0.1)


@pytest.mark.slow
def test_train_register_and_gate_on_generated_data(settings) -> None:  # type: ignore[no-untyped-def]
    """The pipeline's three ranker steps on a small generated mirror (no two-tower champion,
    so the candidate sets come from i2i, follow_new and hot)."""
    import mlflow

    import tasks.serving.recall as recall
    from model_registry.ranker_gate import promote_ranker_if_better
    from model_registry.registry import SAVED_MODEL_ARTIFACT, get_version, register_challenger
    from tasks.core.db import get_engine
    from tasks.data.sampling import build_samples
    from tasks.data.sources.generate import GeneratorConfig, generate_frames, interval_days
    from tasks.model.ranker.config import RankerParams
    from tasks.model.ranker.stage import train_ranker
    from tests.doubles.mirror import write_mirror_frames

    config = GeneratorConfig(n_users=120, n_illusts=250, n_artists=25, n_tags=25, days=3, seed=5)
    write_mirror_frames(get_engine(settings.recsys_db_url), generate_frames(config))
    days = interval_days(config)
    for start, end in days:
        build_samples(settings, start, end, negatives_per_positive=2)
    params = RankerParams(
        epochs=2, batch_size=128, dim=8, hash_bins=64, deep_layers=(16,), shown_rows="auto"
    )
    trained = train_ranker(settings, days[0][0], days[-1][1], params=params, channels=recall)
    # Candidate-set rows (both variants fitted: shown rows dropped or kept by validation).
    assert {"val_served_NDCG@10", "val_recall_order_NDCG@10"} <= set(trained.metrics)
    assert 0 <= trained.metrics["val_served_NDCG@10"] <= 1 and trained.n_val > 0
    model = settings.ranker_registered_model_name
    version = register_challenger(
        settings, trained.run_id, model=model, artifact=SAVED_MODEL_ARTIFACT
    )
    assert (
        register_challenger(settings, trained.run_id, model=model, artifact=SAVED_MODEL_ARTIFACT)
        == version
    )  # idempotent per run
    ref = get_version(settings, version, model=model)
    assert ref.tags["data_interval_end"] == days[-1][1].isoformat()

    decision = promote_ranker_if_better(settings, version, recall)
    assert decision.n_sets > 10 and 0 <= decision.recall_order_score <= 1
    assert decision.promoted == (decision.challenger_score > decision.recall_order_score)
    run = mlflow.MlflowClient(settings.mlflow_tracking_uri).get_run(trained.run_id)
    assert {"AUC", "GAUC", "logloss", "NDCG_at_10", "gate_NDCG_at_10_ranked"} <= set(
        run.data.metrics
    )
    assert run.data.metrics["gate_NDCG_at_10_recall_order"] == pytest.approx(
        decision.recall_order_score
    )
    assert run.data.params["rows_variant"] in ("no", "yes")
    assert {"val_served_score_no", "val_served_score_yes"} <= set(run.data.metrics)
