"""draw_negatives: hand-checked small cases."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from tasks.data.sampling import draw_negatives, interval_seed


def _draw(**kw):  # type: ignore[no-untyped-def]
    args = {
        "positive_users": np.array([1, 1, 2]),
        "item_ids": np.array([10, 20, 30, 40, 50]),
        "item_popularity": np.array([0.0, 1.0, 16.0, 81.0, 0.0]),
        "excluded_pairs": np.array([[1, 20], [1, 30], [2, 10]]),
        "rng": np.random.default_rng(7),
    }
    args.update(kw)
    return draw_negatives(**args)


def test_counts_and_split_per_positive() -> None:
    draw = _draw(negatives_per_positive=4, popular_ratio=0.5)
    # 3 positives x 4 negatives, 2 popular + 2 uniform each
    assert len(draw.item_ids) == 12
    assert draw.popular.sum() == 6
    assert draw.user_ids.tolist() == [1] * 8 + [2] * 4
    assert draw.popular.tolist() == [True, True, False, False] * 3


def test_popular_mass_all_excluded_falls_back_to_uniform() -> None:
    # user 1 excluded 30 and 40 (35/36 of the popular mass): draws stay complete
    draw = _draw(
        positive_users=np.array([1]),
        excluded_pairs=np.array([[1, 40], [1, 30], [1, 20]]),
        negatives_per_positive=4,
        popular_ratio=1.0,
    )
    assert len(draw.item_ids) == 4
    # only 10 and 50 remain, both zero-popularity, so all four were redrawn uniformly
    assert set(draw.item_ids.tolist()) <= {10, 50}
    assert not draw.popular.any()


def test_never_draws_an_excluded_pair() -> None:
    for seed in range(20):
        draw = _draw(rng=np.random.default_rng(seed), negatives_per_positive=10)
        pairs = set(zip(draw.user_ids.tolist(), draw.item_ids.tolist(), strict=True))
        assert not pairs & {(1, 20), (1, 30), (2, 10)}


def test_popular_draws_follow_popularity_power() -> None:
    # popularity 0, 1, 16, 81, 0 with exponent 0.75 -> weights 0, 1, 8, 27, 0 (sum 36)
    draw = draw_negatives(
        np.full(20_000, 7),
        np.array([10, 20, 30, 40, 50]),
        np.array([0.0, 1.0, 16.0, 81.0, 0.0]),
        np.empty((0, 2), dtype=np.int64),
        negatives_per_positive=1,
        popular_ratio=1.0,
        popularity_exponent=0.75,
        rng=np.random.default_rng(0),
    )
    share = {item: float(np.mean(draw.item_ids == item)) for item in (10, 20, 30, 40, 50)}
    assert share[10] == 0.0 and share[50] == 0.0
    assert share[20] == pytest.approx(1 / 36, abs=0.01)
    assert share[30] == pytest.approx(8 / 36, abs=0.01)
    assert share[40] == pytest.approx(27 / 36, abs=0.01)


def test_uniform_draws_cover_zero_popularity_items() -> None:
    draw = _draw(positive_users=np.full(5_000, 3), negatives_per_positive=1, popular_ratio=0.0)
    assert set(draw.item_ids.tolist()) == {10, 20, 30, 40, 50}
    assert not draw.popular.any()


def test_deterministic_for_seed_and_interval() -> None:
    start = datetime(2024, 1, 1)
    a = _draw(rng=np.random.default_rng(interval_seed(42, start)))
    b = _draw(rng=np.random.default_rng(interval_seed(42, start)))
    c = _draw(rng=np.random.default_rng(interval_seed(42, datetime(2024, 1, 2))))
    assert a.item_ids.tolist() == b.item_ids.tolist()
    assert a.item_ids.tolist() != c.item_ids.tolist()


def test_user_who_bookmarked_everything_gets_no_negatives() -> None:
    items = np.array([1, 2, 3])
    draw = draw_negatives(
        np.array([5, 6]),
        items,
        np.ones(3),
        np.array([[5, 1], [5, 2], [5, 3]]),
        negatives_per_positive=4,
        rng=np.random.default_rng(1),
        max_rounds=5,
    )
    assert 5 not in draw.user_ids.tolist()
    assert draw.user_ids.tolist() == [6, 6, 6, 6]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"popular_ratio": 1.5}, "popular_ratio"),
        ({"negatives_per_positive": -1}, "negatives_per_positive"),
        ({"popularity_exponent": -0.5}, "popularity_exponent"),
        ({"item_popularity": np.array([1.0, -1.0, 0.0, 0.0, 0.0])}, "item_popularity"),
        ({"item_popularity": np.ones(3)}, "shapes"),
    ],
)
def test_bad_input_raises_value_error(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _draw(**kw)
