"""write_business_frames on real SQLite files and a real MariaDB: counts, idempotence, and
atomicity (a failure half-way leaves the previous contents intact)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import tasks.data.sources.frames as datasets
from tasks.core.db import get_engine
from tasks.data.sources.cli import main as cli_main
from tasks.data.sources.frames import BusinessFrames, read_business_counts, write_business_frames
from tasks.data.sources.generate import GeneratorConfig, generate_frames

TINY = GeneratorConfig(
    n_users=40, n_illusts=60, n_artists=8, n_tags=12, days=3, views_per_user=12, seed=3
)
OTHER = GeneratorConfig(**{**TINY.__dict__, "n_users": 25, "seed": 4})


@pytest.fixture(scope="module")
def frames() -> BusinessFrames:
    return generate_frames(TINY)


@pytest.fixture(scope="module")
def other_frames() -> BusinessFrames:
    return generate_frames(OTHER)


def _read_table(url: str, name: str) -> pd.DataFrame:
    with get_engine(url).connect() as conn:
        return pd.read_sql(sa.text(f"SELECT * FROM {name}"), conn)


def _with_duplicate_illust(frames: BusinessFrames) -> BusinessFrames:
    """Frames the database rejects half-way: users go in, then illusts hit a duplicate key."""
    illusts = pd.concat([frames.illusts, frames.illusts.iloc[[0]]], ignore_index=True)
    return BusinessFrames(frames.users, illusts, frames.interactions, frames.follows)


def _check_round_trip(url: str, frames: BusinessFrames) -> None:
    assert read_business_counts(url) == frames.row_counts()
    illusts = _read_table(url, "illusts").sort_values("illust_id", ignore_index=True)
    expected = frames.illusts.sort_values("illust_id", ignore_index=True)
    assert illusts["tags"].map(json.loads).tolist() == expected["tags"].map(json.loads).tolist()
    assert pd.to_datetime(illusts["update_time"]).tolist() == expected["update_time"].tolist()
    assert illusts["restrict"].tolist() == expected["restrict"].tolist()
    inter = _read_table(url, "interactions")
    assert int(inter["label"].sum()) == int(frames.interactions["label"].sum())


@pytest.fixture(params=["sqlite", "mariadb"])
def replica_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'replica.db'}"
    return request.getfixturevalue("mariadb_database")


@pytest.mark.mariadb
def test_write_reads_back_and_rerun_is_idempotent(replica_url: str, frames: BusinessFrames) -> None:
    counts = write_business_frames(frames, replica_url)
    assert counts == frames.row_counts()
    assert counts["interactions"] > 300
    _check_round_trip(replica_url, frames)
    assert write_business_frames(frames, replica_url) == counts
    _check_round_trip(replica_url, frames)


@pytest.mark.mariadb
def test_replace_swaps_in_new_contents(
    replica_url: str, frames: BusinessFrames, other_frames: BusinessFrames
) -> None:
    write_business_frames(frames, replica_url)
    write_business_frames(other_frames, replica_url)
    assert read_business_counts(replica_url)["users"] == 25
    _check_round_trip(replica_url, other_frames)


@pytest.mark.mariadb
def test_rejected_row_half_way_leaves_previous_contents(
    replica_url: str, frames: BusinessFrames, other_frames: BusinessFrames
) -> None:
    write_business_frames(frames, replica_url)
    with pytest.raises(sa.exc.IntegrityError):
        write_business_frames(_with_duplicate_illust(other_frames), replica_url)
    _check_round_trip(replica_url, frames)


@pytest.mark.mariadb
def test_crash_after_first_table_leaves_previous_contents(
    replica_url: str,
    frames: BusinessFrames,
    other_frames: BusinessFrames,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_business_frames(frames, replica_url)
    real_insert = datasets._bulk_insert
    calls: list[str] = []

    def crash_after_users(conn, table, frame, chunk_rows):  # type: ignore[no-untyped-def]
        if calls:
            raise RuntimeError("simulated crash after the first table")
        calls.append(table.name)
        return real_insert(conn, table, frame, chunk_rows)

    monkeypatch.setattr(datasets, "_bulk_insert", crash_after_users)
    with pytest.raises(RuntimeError, match="simulated crash"):
        write_business_frames(other_frames, replica_url)
    assert calls and calls[0].startswith("users")
    monkeypatch.undo()
    _check_round_trip(replica_url, frames)


def test_sqlite_failure_leaves_no_temporary_files(
    tmp_path: Path, frames: BusinessFrames, other_frames: BusinessFrames
) -> None:
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    write_business_frames(frames, url)
    with pytest.raises(sa.exc.IntegrityError):
        write_business_frames(_with_duplicate_illust(other_frames), url)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


@pytest.mark.mariadb
def test_mariadb_failure_leaves_no_staging_tables(
    mariadb_database: str, frames: BusinessFrames, other_frames: BusinessFrames
) -> None:
    write_business_frames(frames, mariadb_database)
    with pytest.raises(sa.exc.IntegrityError):
        write_business_frames(_with_duplicate_illust(other_frames), mariadb_database)
    tables = set(sa.inspect(get_engine(mariadb_database)).get_table_names())
    assert tables == {"users", "illusts", "interactions", "follows"}


@pytest.mark.mariadb
def test_append_adds_rows_in_one_transaction(mariadb_database: str) -> None:
    first = generate_frames(TINY)
    write_business_frames(first, mariadb_database)
    extra = BusinessFrames(
        users=first.users.iloc[:0],
        illusts=first.illusts.iloc[:0],
        interactions=first.interactions.iloc[:10],
        follows=first.follows.iloc[:0],
    )
    appended = write_business_frames(extra, mariadb_database, replace=False)
    assert appended == {"users": 0, "illusts": 0, "interactions": 10, "follows": 0}
    counts = read_business_counts(mariadb_database)
    assert counts["interactions"] == len(first.interactions) + 10


def test_wrong_columns_are_rejected_before_writing(tmp_path: Path, frames: BusinessFrames) -> None:
    url = f"sqlite:///{tmp_path / 'replica.db'}"
    bad = BusinessFrames(
        frames.users.rename(columns={"username": "name"}),
        frames.illusts,
        frames.interactions,
        frames.follows,
    )
    with pytest.raises(ValueError, match=r"users: columns .*missing \['username'\]"):
        write_business_frames(bad, url)
    assert not (tmp_path / "replica.db").exists()
    with pytest.raises(ValueError, match="'postgresql'"):
        write_business_frames(frames, "postgresql://u@h/db")


def test_cli_generate_and_load_write_the_replica(
    tmp_path: Path, settings, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    status = cli_main(["generate", "--users", "30", "--illusts", "50", "--artists", "5",
                       "--tags", "10", "--days", "2", "--seed", "1"])  # fmt: skip
    assert status == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("generate: wrote users=30 illusts=50 interactions=")
    assert read_business_counts(settings.replica_url)["users"] == 30

    ml_url = f"sqlite:///{tmp_path / 'ml.db'}"
    ml_path = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ml-100k"
    assert cli_main(["load", "--format", "ml-100k", str(ml_path), "--replica-url", ml_url]) == 0
    assert "interactions=100000" in capsys.readouterr().out
    assert cli_main(["load", "--format", "ml-100k", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert read_business_counts(settings.replica_url)["users"] == 30  # untouched by the failure


@pytest.mark.mariadb
def test_load_data_path_round_trips_and_stays_atomic(
    mariadb_database: str, frames: BusinessFrames, other_frames: BusinessFrames
) -> None:
    assert "local_infile=1" in mariadb_database
    counts = write_business_frames(frames, mariadb_database, load_data=True)
    assert counts == frames.row_counts()
    _check_round_trip(mariadb_database, frames)
    # LOCAL loads skip duplicate keys with a warning; the writer turns that into an error.
    with pytest.raises(datasets.BulkLoadError, match="Duplicate"):
        write_business_frames(
            _with_duplicate_illust(other_frames), mariadb_database, load_data=True
        )
    _check_round_trip(mariadb_database, frames)
    tables = set(sa.inspect(get_engine(mariadb_database)).get_table_names())
    assert tables == {"users", "illusts", "interactions", "follows"}


def test_load_data_needs_mysql(tmp_path: Path, frames: BusinessFrames) -> None:
    with pytest.raises(ValueError, match="load_data=True needs a MySQL"):
        write_business_frames(frames, f"sqlite:///{tmp_path / 'r.db'}", load_data=True)


@pytest.mark.mariadb
def test_load_data_escapes_special_characters_and_nulls(
    mariadb_database: str, frames: BusinessFrames
) -> None:
    users = frames.users.head(4).copy()
    users["username"] = ["tab\there", "back\\slash", "new\nline", None]
    tricky = BusinessFrames(users, frames.illusts, frames.interactions, frames.follows)
    write_business_frames(tricky, mariadb_database, load_data=True)
    back = _read_table(mariadb_database, "users").sort_values("user_id", ignore_index=True)
    assert back["username"].tolist()[:3] == ["tab\there", "back\\slash", "new\nline"]
    assert back["username"].isna().tolist() == [False, False, False, True]
