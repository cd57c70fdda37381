"""Point-in-time item counts: no interaction at or after a cutoff, and no holdout row, reaches
a feature of a training example or a holdout query (issue 11, item 3).

Interactions (base T = 2024-01-01 00:00:00, label 1 = bookmark, 0 = view):

    user 1: bookmarks illust 10 at +0 s, illust 20 at +10 s   (test item: 20, cutoff +10)
    user 2: bookmarks illust 20 at +5 s, views 30 at +15 s, bookmarks 10 at +20 s
                                                              (test item: 10, cutoff +20)
    user 3: bookmarks illust 30 at +1 s                       (one positive: no test)

Counts (bookmarks, views) strictly before a cutoff's second, over every row:

    as of +10:  10 -> (1, 1)   20 -> (1, 1)  (its +10 bookmark is in the cutoff's second)
                30 -> (1, 1)
    as of +20:  10 -> (1, 1)   20 -> (2, 2)   30 -> (1, 2)

Holdout scoring counts the split's train part only, so user 1's held-out bookmark of 20 (+10)
and user 2's of 10 (+20) never count: as of +20, 20 -> (1, 1) and 10 -> (1, 1).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from tasks.model.evaluate import leave_last_positive_split
from tasks.model.features import (
    ITEM_FEATURES,
    BookmarkHistory,
    ItemCounts,
    default_feature_config,
    fit_feature_stats,
)
from tasks.model.scoring import ItemCatalogue, count_snapshots, tower_scores
from tasks.model.training.config import TrainParams
from tasks.model.training.examples import SampleStream, point_in_time_catalogue

T = pd.Timestamp("2024-01-01 00:00:00")
END = (T + pd.Timedelta(seconds=50)).to_pydatetime()
ROWS = [
    (1, 10, 1, 0),
    (1, 20, 1, 10),
    (2, 20, 1, 5),
    (2, 30, 0, 15),
    (2, 10, 1, 20),
    (3, 30, 1, 1),
]
LIVE = 5000  # the replica's live totals: must never be a feature


def _frame(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "illust_id": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "create_time": [T + pd.Timedelta(seconds=r[3]) for r in rows],
        }
    )


def _catalogue() -> ItemCatalogue:
    ids = np.array([10, 20, 30], np.int64)
    features = {name: np.zeros(3, np.int64) for name in ITEM_FEATURES}
    features["illust_id"] = ids
    features["tags"] = np.array(["", "", ""], dtype=object)
    features["total_bookmarks"] = np.full(3, LIVE, np.int64)
    features["total_view"] = np.full(3, LIVE, np.int64)
    return ItemCatalogue.from_features(features)


def _at(seconds: float) -> datetime:
    return (T + pd.Timedelta(seconds=seconds)).to_pydatetime()


def test_counts_as_of_a_time_are_strictly_before_its_second() -> None:
    counts = ItemCounts.from_frame(_frame(ROWS))
    ids = np.array([10, 20, 30, 99])
    at_10 = counts.as_of(ids, _at(10.5))
    assert at_10["total_bookmarks"].tolist() == [1, 1, 1, 0]
    assert at_10["total_view"].tolist() == [1, 1, 1, 0]
    at_20 = counts.as_of(ids, _at(20))
    assert at_20["total_bookmarks"].tolist() == [1, 2, 1, 0]
    assert at_20["total_view"].tolist() == [1, 2, 2, 0]
    everything = counts.as_of(ids)  # None: every row
    assert everything["total_bookmarks"].tolist() == [2, 2, 1, 0]
    assert everything["total_view"].tolist() == [2, 2, 2, 0]
    before_all = counts.as_of(ids, _at(-1))
    assert before_all["total_view"].tolist() == [0, 0, 0, 0]


def test_one_cutoff_per_id_in_epoch_microseconds_or_datetime64() -> None:
    counts = ItemCounts.from_frame(_frame(ROWS))
    ids = np.array([20, 20, 30])
    cut = np.array([_at(10), _at(20), _at(20)], dtype="datetime64[us]")
    for as_of in (cut, cut.astype(np.int64)):
        out = counts.as_of(ids, as_of)
        assert out["total_bookmarks"].tolist() == [1, 2, 1]
        assert out["total_view"].tolist() == [1, 2, 2]


def _stream_features(rows: list[tuple[int, int, int, float]]) -> dict[str, np.ndarray]:
    """What SampleStream feeds the model for a positive (user 1, illust 20, its bookmark at
    +10 s) and a negative (user 1, illust 30: as of the interval end, +50 s)."""
    interactions = _frame(rows)
    stream = SampleStream(
        engine=None,  # type: ignore[arg-type]  # featurize never queries
        interval_end=END,
        catalogue=_catalogue(),
        history=BookmarkHistory.from_frame(interactions[interactions["label"] == 1]),
        params=TrainParams(),
        item_counts=ItemCounts.from_frame(interactions),
    )
    frame = pd.DataFrame(
        {
            "user_id": [1, 1],
            "illust_id": [20, 30],
            "label": [1, 0],
            "event_time": [T + pd.Timedelta(seconds=10), pd.NaT],
        }
    )
    return stream.featurize(frame)


def test_training_example_counts_ignore_a_bookmark_after_its_cutoff() -> None:
    base = _stream_features(ROWS)
    # positive: 20 as of +10 -> (1, 1) (its own bookmark excluded); negative: 30 as of +50
    assert base["total_bookmarks"].tolist() == [1, 1]
    assert base["total_view"].tolist() == [1, 2]

    after = _stream_features([*ROWS, (4, 20, 1, 30)])  # after the positive's cutoff
    for name in base:
        np.testing.assert_array_equal(after[name], base[name], err_msg=name)

    before = _stream_features([*ROWS, (4, 20, 1, 7)])  # before it: counted
    assert before["total_bookmarks"].tolist() == [2, 1]
    assert before["total_view"].tolist() == [2, 2]


def test_training_catalogue_and_boundaries_use_train_counts_not_live_totals() -> None:
    split = leave_last_positive_split(_frame(ROWS), item_ids=[10, 20, 30])
    catalogue, _, fit_columns = point_in_time_catalogue(_catalogue(), split.train, END)
    # train part: 10 by user 1 (+0); 20 by user 2 (+5); 30 viewed (+15), bookmarked (+1)
    assert catalogue.features["total_bookmarks"].tolist() == [1, 1, 1]
    assert catalogue.features["total_view"].tolist() == [1, 1, 2]
    # boundaries are fitted on each train bookmark's item counted before that bookmark:
    # 30 at +1, 10 at +0, 20 at +5 (train rows in user order) -> nothing earlier: all 0
    assert fit_columns["total_bookmarks"].tolist() == [0, 0, 0]
    assert fit_columns["total_view"].tolist() == [0, 0, 0]
    assert fit_columns["width"].tolist() == catalogue.features["width"].tolist()
    stats = fit_feature_stats(default_feature_config(), fit_columns)
    assert stats.boundaries["total_bookmarks"] == [0.0]


def test_count_snapshots_never_pass_a_cutoff() -> None:
    cutoffs = np.array([_at(s) for s in (30, 10, 20, 10)], dtype="datetime64[s]")
    assert count_snapshots(cutoffs).tolist() == [_at(10), _at(20), _at(30)]
    few = count_snapshots(cutoffs, max_snapshots=2)
    assert few.tolist() == [_at(10), _at(30)]  # ranks 0 and 3: the earliest is kept
    with pytest.raises(ValueError):
        count_snapshots(cutoffs, max_snapshots=0)


def _holdout_counts(rows: list[tuple[int, int, int, float]]) -> dict[datetime, dict[int, tuple]]:
    """Scores the split with recording towers: the item counts seen per query cutoff."""
    split = leave_last_positive_split(_frame(rows), item_ids=[10, 20, 30])
    seen: list[dict[int, tuple[int, int]]] = []

    def item_tower(features: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(
            {
                int(i): (int(b), int(v))
                for i, b, v in zip(
                    features["illust_id"],
                    features["total_bookmarks"],
                    features["total_view"],
                    strict=True,
                )
            }
        )
        return np.stack([features["total_bookmarks"], features["total_view"]], 1).astype(float)

    def user_tower(features: dict[str, np.ndarray]) -> np.ndarray:
        return np.ones((len(features["user_id"]), 2))

    tower_scores(split, _catalogue(), user_tower, item_tower)
    cutoffs = sorted(pd.Timestamp(t).to_pydatetime() for t in split.test_time)
    assert len(seen) == len(cutoffs)  # one item pass per distinct cutoff here
    return dict(zip(cutoffs, seen, strict=True))


def test_holdout_queries_see_no_holdout_row_and_nothing_after_their_cutoff() -> None:
    base = _holdout_counts(ROWS)
    assert base == {
        _at(10): {10: (1, 1), 20: (1, 1), 30: (1, 1)},
        # 20's held-out bookmark (+10) and 10's (+20) never count
        _at(20): {10: (1, 1), 20: (1, 1), 30: (1, 2)},
    }
    # User 4, one bookmark (no test item): after every cutoff it changes no feature ...
    assert _holdout_counts([*ROWS, (4, 10, 1, 100)]) == base
    # ... before them it does.
    assert _holdout_counts([*ROWS, (4, 10, 1, 3)]) == {
        _at(10): {10: (2, 2), 20: (1, 1), 30: (1, 1)},
        _at(20): {10: (2, 2), 20: (1, 1), 30: (1, 2)},
    }


def test_serving_item_features_count_the_mirror_not_live_totals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Vector refresh's item inputs: counts over mirror_interactions as of the data time
    (the newest interaction, +20 s, included: refresh passes ``as_of`` = data time + 1 s)."""
    import sqlalchemy as sa

    from tasks.core.db import get_engine
    from tasks.core.schema import ensure_recsys_schema, mirror_illusts, mirror_interactions
    from tasks.model.features import load_item_features

    engine = get_engine(f"sqlite:///{tmp_path / 'recsys.db'}")
    ensure_recsys_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(mirror_illusts),
            [
                {"illust_id": i, "tags": "[]", "total_bookmarks": LIVE, "total_view": LIVE}
                for i in (10, 20, 30, 40)
            ],
        )
        conn.execute(
            sa.insert(mirror_interactions),
            [
                {
                    "user_id": u,
                    "illust_id": i,
                    "label": label,
                    "create_time": (T + pd.Timedelta(seconds=s)).to_pydatetime(),
                }
                for u, i, label, s in ROWS
            ],
        )
    ids, features = load_item_features(engine, as_of=_at(21))
    assert ids.tolist() == [10, 20, 30, 40]
    assert features["total_bookmarks"].tolist() == [2, 2, 1, 0]
    assert features["total_view"].tolist() == [2, 2, 2, 0]
    _, earlier = load_item_features(engine, as_of=_at(10))
    assert earlier["total_bookmarks"].tolist() == [1, 1, 1, 0]
    assert earlier["total_view"].tolist() == [1, 1, 1, 0]
