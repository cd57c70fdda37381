"""MovieLens through the replica: ``recsys-data load`` records the data set's earliest time,
so extract + validate over 1997-1998 dates pass with the default ``RECSYS_SITE_LAUNCH``
(2007-09-10); a failed expectation names the offending values and their counts."""

from __future__ import annotations

import calendar
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.core import schema
from tasks.core.db import get_engine
from tasks.data.extract import extract_interval
from tasks.data.sources.cli import main as recsys_data
from tasks.data.sources.frames import read_replica_meta
from tasks.data.validate import DataValidationError, validate_interval

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
START = datetime(1997, 9, 1)
END = datetime(1998, 4, 1)


def _ts(text: str) -> int:
    return calendar.timegm(datetime.fromisoformat(text).timetuple())


def write_tiny_ml100k(folder: Path) -> Path:
    """2 users, 3 movies, 4 ratings between 1997-09-20 and 1998-03-01 (ml-100k layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    flags = "|".join(["0"] * 18 + ["1"])
    (folder / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GENRES)))
    (folder / "u.item").write_text(
        "".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x/{i}|{flags}\n" for i in (1, 2, 3))
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    ratings = [
        (1, 1, 5, "1997-09-20"),
        (1, 2, 3, "1997-10-01"),
        (2, 1, 4, "1997-10-01"),
        (2, 3, 2, "1998-03-01"),
    ]
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{_ts(t)}\n" for u, i, r, t in ratings))
    return folder


@pytest.fixture
def loaded(settings, tmp_path: Path, capsys):  # type: ignore[no-untyped-def]
    """Settings on fresh SQLite replica + recsys DB, the tiny set loaded by the CLI."""
    s = settings.replace(
        home=tmp_path / "home",
        replica_url=f"sqlite:///{tmp_path / 'home' / 'replica.db'}",
        recsys_db_url=f"sqlite:///{tmp_path / 'home' / 'recsys.db'}",
    )
    assert s.site_launch == "2007-09-10"  # the default: MovieLens predates it
    path = write_tiny_ml100k(tmp_path / "ml")
    assert (
        recsys_data(["load", "--format", "ml-100k", str(path), "--replica-url", s.replica_url]) == 0
    )
    assert "recorded data_launch=1997-09-20T00:00:00" in capsys.readouterr().out
    return s


def test_load_records_launch_and_extract_validate_passes(loaded) -> None:  # type: ignore[no-untyped-def]
    assert read_replica_meta(loaded.replica_url) == {"data_launch": "1997-09-20T00:00:00"}
    extract_interval(loaded, START, END, run_id="ml1")
    result = validate_interval(loaded, START, END, run_id="ml1", data_docs=False)
    assert result.success and result.failures == []
    assert result.rows_to_mirror == {"users": 2, "illusts": 3, "follows": 0, "interactions": 4}
    assert result.rows_quarantined == {"users": 0, "illusts": 0, "follows": 0, "interactions": 0}


def test_failed_expectation_names_values_and_counts(loaded) -> None:  # type: ignore[no-untyped-def]
    """Without the recorded bound (a replica loaded by an older tool), every row predates
    the launch: the message names the offending create_time values with their counts
    (before the fix: ``0 unexpected rows, e.g. []``, GX refused min > max silently)."""
    with get_engine(loaded.replica_url).begin() as conn:
        conn.execute(sa.text("DROP TABLE replica_meta"))
    extract_interval(loaded, START, END, run_id="ml2")
    with pytest.raises(DataValidationError) as caught:
        validate_interval(loaded, START, END, run_id="ml2", data_docs=False)
    message = str(caught.value)
    # users: created at their first rating, 1997-09-20 (user 1) and 1997-10-01 (user 2)
    assert (
        "users.expect_column_values_to_be_between:create_time (create_time): 2 unexpected rows; "
        "offending values (count): '1997-09-20 00:00:00' x1, '1997-10-01 00:00:00' x1"
    ) in message
    # interactions: 1997-10-01 twice, the other two once each
    assert (
        "interactions.expect_column_values_to_be_between:create_time (create_time): 4 " in message
    )
    assert "'1997-10-01 00:00:00' x2" in message
    assert "0 unexpected rows" not in message
    with get_engine(loaded.recsys_db_url).connect() as conn:
        mirrored = conn.execute(sa.select(sa.func.count()).select_from(schema.mirror_users))
        assert mirrored.scalar_one() == 0


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def test_replacing_the_replica_replaces_its_meta(backend, request, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A MovieLens load records data_launch; a later synthetic replace clears it (SQLite
    file swap and MariaDB RENAME TABLE alike)."""
    from tasks.data.sources.frames import write_business_frames
    from tasks.data.sources.generate import GeneratorConfig, generate_frames
    from tasks.data.sources.loaders import read_movielens_100k

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'replica.db'}"
    else:
        url = request.getfixturevalue("mariadb_database")
    write_business_frames(read_movielens_100k(write_tiny_ml100k(tmp_path / "ml")), url)
    assert read_replica_meta(url) == {"data_launch": "1997-09-20T00:00:00"}
    write_business_frames(generate_frames(GeneratorConfig(n_users=5, n_illusts=5, days=1)), url)
    assert read_replica_meta(url) == {}
