"""The grid search's pure parts: the grid's combinations, its CLI parsing, the ranking."""

from __future__ import annotations

import pytest

from tasks.model.training.config import TrainParams
from tasks.model.training.tune import grid_params, parse_grid, rank_trials


def test_grid_params_is_the_product_in_grid_order() -> None:
    base = TrainParams(epochs=3)
    trials = grid_params(base, {"dim": [32, 64], "dropout": [0.3, 0.1]})
    assert [(t.dim, t.dropout) for t in trials] == [(32, 0.3), (32, 0.1), (64, 0.3), (64, 0.1)]
    assert all(t.epochs == 3 for t in trials)
    assert len({t.fingerprint() for t in trials}) == 4


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({}, "empty"),
        ({"depth": [1, 2]}, "not a TrainParams knob"),
        ({"feature_config": [None]}, "not a TrainParams knob"),
        ({"dim": [32, 32]}, "distinct"),
        ({"dim": []}, "distinct"),
    ],
)
def test_grid_params_rejects(grid: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        grid_params(TrainParams(), grid)


def test_parse_grid_casts_to_the_field_type() -> None:
    grid = parse_grid(["dim=32,64", "learning_rate=0.005, 0.01", "recency=true,0"])
    assert grid == {"dim": [32, 64], "learning_rate": [0.005, 0.01], "recency": [True, False]}
    assert isinstance(grid["dim"][0], int)
    with pytest.raises(ValueError, match="FIELD=v1,v2"):
        parse_grid(["dim"])
    with pytest.raises(ValueError, match="FIELD=v1,v2"):
        parse_grid(["nope=1,2"])


def test_rank_trials_best_first_ties_to_the_earlier_trial() -> None:
    assert rank_trials([0.10, 0.25, 0.25, 0.05]) == (1, 2, 0, 3)
    assert rank_trials([0.2]) == (0,)
