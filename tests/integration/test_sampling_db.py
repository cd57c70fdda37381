"""build_samples against real SQLite and MariaDB recsys DBs (mirror rows inserted directly)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from tasks.core import schema
from tasks.core.db import get_engine
from tasks.data.sampling import build_samples
from tests.integration.extract_data import DAY, DAY0, table_rows

D1 = DAY0 + DAY


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def recsys_settings(request, settings):  # type: ignore[no-untyped-def]
    if request.param == "mariadb":
        url = request.getfixturevalue("mariadb_database")
        settings = settings.replace(recsys_db_url=url)
    engine = get_engine(settings.recsys_db_url)
    schema.ensure_recsys_schema(engine)
    illusts = [
        {"illust_id": i, "artist_id": 1, "create_time": DAY0 - timedelta(days=1)}
        for i in range(1, 21)
    ]
    illusts.append({"illust_id": 99, "artist_id": 1, "create_time": DAY0 + 3 * DAY})  # later
    t = DAY0 + timedelta(hours=1)
    interactions = [
        # user 1: bookmarked 1 before the interval, 2 and 3 in it, viewed 4
        (1, 1, DAY0 - timedelta(hours=5), 1),
        (1, 2, t, 1),
        (1, 3, t, 1),
        (1, 4, t, 0),
        # user 2: one bookmark in the interval, one after it (not yet known at D1)
        (2, 5, t, 1),
        (2, 6, D1 + timedelta(hours=1), 1),
        # user 3: only views
        (3, 7, t, 0),
    ]
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.mirror_illusts), illusts)
        conn.execute(
            sa.insert(schema.mirror_interactions),
            [
                {"user_id": u, "illust_id": i, "create_time": c, "label": label}
                for u, i, c, label in interactions
            ],
        )
    return settings


def _samples(s) -> list[tuple]:  # type: ignore[no-untyped-def]
    return table_rows(get_engine(s.recsys_db_url), schema.samples)


def test_positives_negatives_and_exclusions(recsys_settings) -> None:  # type: ignore[no-untyped-def]
    result = build_samples(recsys_settings, DAY0, D1, negatives_per_positive=4, seed=3)
    assert result.positives == 3  # (1,2), (1,3), (2,5)
    assert result.items == 20  # illust 99 is created after the interval
    assert result.negatives_drawn == 12 and result.negatives_popular == 6
    rows = _samples(recsys_settings)
    positives = {(r[0], r[1]) for r in rows if r[2] == 1}
    assert positives == {(1, 2), (1, 3), (2, 5)}
    assert all(r[3] == "positive" for r in rows if r[2] == 1)
    negatives = [r for r in rows if r[2] == 0]
    assert negatives and {r[3] for r in negatives} <= {"random", "popular"}
    # never an item the user bookmarked up to the interval end, never an unborn item
    assert not {(r[0], r[1]) for r in negatives} & {(1, 1), (1, 2), (1, 3), (2, 5)}
    assert all(r[1] != 99 for r in negatives)
    # every column keyed to the data interval
    assert {(r[4], r[5], r[6]) for r in rows} == {(DAY0, D1, D1)}
    assert result.samples_total == len(rows)


def test_rerun_changes_nothing_and_positive_overrides_negative(recsys_settings) -> None:  # type: ignore[no-untyped-def]
    engine = get_engine(recsys_settings.recsys_db_url)
    # a stale negative for a pair that is a positive of the interval
    with engine.begin() as conn:
        conn.execute(
            sa.insert(schema.samples),
            [
                {
                    "user_id": 1,
                    "illust_id": 2,
                    "label": 0,
                    "source": "random",
                    "interval_start": datetime(2023, 1, 1),
                    "interval_end": datetime(2023, 1, 2),
                    "created_at": datetime(2023, 1, 2),
                }
            ],  # fmt: skip
        )
    build_samples(recsys_settings, DAY0, D1, seed=5)
    first = _samples(recsys_settings)
    assert (1, 2, 1, "positive", DAY0, D1, D1) in first
    build_samples(recsys_settings, DAY0, D1, seed=5)
    assert _samples(recsys_settings) == first

    # a later interval where user 2 bookmarks 6: if 6 was ever drawn as a negative for user
    # 2 it is now a positive (REPLACE after INSERT IGNORE)
    build_samples(recsys_settings, D1, D1 + DAY, seed=5)
    rows = {(r[0], r[1]): r for r in _samples(recsys_settings)}
    assert rows[(2, 6)][2:4] == (1, "positive")
    assert rows[(1, 2)][2:4] == (1, "positive")


@pytest.mark.mariadb
def test_insert_and_load_data_paths_write_the_same_rows(mariadb_database, settings) -> None:  # type: ignore[no-untyped-def]
    assert "local_infile=1" in mariadb_database
    s = settings.replace(recsys_db_url=mariadb_database)
    engine = get_engine(s.recsys_db_url)
    schema.ensure_recsys_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(schema.mirror_illusts),
            [{"illust_id": i, "create_time": DAY0 - DAY} for i in range(1, 41)],
        )
        conn.execute(
            sa.insert(schema.mirror_interactions),
            [
                {"user_id": u, "illust_id": 1 + (u * 7 + k) % 40, "label": 1,
                 "create_time": DAY0 + timedelta(hours=k)}
                for u in range(1, 9) for k in range(5)
            ],
        )  # fmt: skip
    written = {}
    for method in ("insert", "load_data"):
        with engine.begin() as conn:
            conn.execute(sa.delete(schema.samples))
        result = build_samples(s, DAY0, D1, seed=11, write_method=method)
        written[method] = _samples(s)
        assert result.samples_total == len(written[method])
    assert written["insert"] == written["load_data"]
    assert {r[3] for r in written["insert"]} == {"positive", "random", "popular"}
    with pytest.raises(ValueError, match="'bogus'"):
        build_samples(s, DAY0, D1, write_method="bogus")  # type: ignore[arg-type]
