"""Every bulk-write path of ``tasks.data.bulk`` round-trips awkward values exactly on a real
MariaDB (and SQLite for executemany): NUL, tab, newline, CR, backslash, the text ``\\N``,
quotes, Ctrl-Z, non-BMP unicode, and SQL NULL in a text and an integer column."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.core.db import get_engine
from tasks.data.bulk import (
    LOAD_DATA_NULL,
    BulkLoadError,
    BulkWriter,
    LoadDataTarget,
    RowLiterals,
    bulk_execute,
    load_data_field,
    load_data_file,
    load_data_line,
    session_has_no_backslash_escapes,
)

TEXTS: list[str | None] = [
    "plain",
    "nul\x00byte",
    "tab\there",
    "new\nline",
    "carriage\rreturn\r\n",
    "back\\slash\\",
    "\\N",  # the text \N, not NULL
    "\\0 \\t \\n \\Z \\\\ \\",  # backslash sequences as plain text
    "it's",
    'say "hi"',
    "''",
    "paint 🎨 猫 \U0001f3a8",
    "ctrl-z\x1a",
    "",
    None,
]
#: (id, txt, num, ts): NULL in the text column (last row) and in the integer column (row 3)
ROWS: list[tuple[int, str | None, int | None, datetime | None]] = [
    (
        i + 1,
        text,
        None if i == 2 else (-(2**62) if i == 4 else i * 1000),
        None if i == 5 else datetime(2024, 1, 1 + i, i, 2 * i, 59 - i),
    )
    for i, text in enumerate(TEXTS)
]

probe_metadata = sa.MetaData()
PROBE = sa.Table(
    "bulk_probe",
    probe_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("txt", sa.Text, nullable=True),
    sa.Column("num", sa.BigInteger, nullable=True),
    sa.Column("ts", sa.DateTime, nullable=True),
)
COLUMNS = ("id", "txt", "num", "ts")
TARGET = LoadDataTarget("bulk_probe", COLUMNS)


@pytest.fixture
def engine(mariadb_database: str) -> Iterator[sa.Engine]:
    engine = get_engine(mariadb_database)
    probe_metadata.create_all(engine)
    yield engine
    engine.dispose()


def _read_back(engine: sa.Engine, table: sa.Table = PROBE) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(table).order_by(table.c.id))]


def _line(row: tuple[int, str | None, int | None, datetime | None]) -> str:
    """One probe row as a LOAD DATA line, the text field escaped by ``load_data_field``."""
    _, text, num, ts = row
    return "\t".join(
        [
            str(row[0]),
            load_data_field(text),
            LOAD_DATA_NULL if num is None else str(num),
            LOAD_DATA_NULL if ts is None else f"{ts:%Y-%m-%d %H:%M:%S}",
        ]
    )


def test_rows_cover_every_special_character() -> None:
    joined = "".join(t for t in TEXTS if t)
    for char in "\x00\t\n\r\\'\"\x1a\U0001f3a8":
        assert char in joined, repr(char)
    assert None in TEXTS and any(r[2] is None for r in ROWS) and any(r[3] is None for r in ROWS)


@pytest.mark.mariadb
def test_load_data_file_round_trips(engine: sa.Engine, tmp_path: Path) -> None:
    path = tmp_path / "probe.tsv"
    path.write_text("".join(_line(r) + "\n" for r in ROWS), encoding="utf-8", newline="\n")
    with engine.begin() as conn:
        loaded = load_data_file(
            conn.connection.dbapi_connection, path.as_posix(), TARGET, expected_rows=len(ROWS)
        )
    assert loaded == len(ROWS) == 15
    assert _read_back(engine) == ROWS


@pytest.mark.mariadb
def test_writer_load_lines_round_trips_in_batches(engine: sa.Engine) -> None:
    """The background LOAD DATA path, numbering rows itself (the id) across two files."""
    lines = [_line(r).split("\t", 1)[1] for r in ROWS]  # without the id: load_lines numbers
    target = LoadDataTarget("bulk_probe", COLUMNS)
    with engine.begin() as conn, BulkWriter(conn.connection.dbapi_connection) as writer:
        writer.load_lines(lines[:6], target, number_from=1)
        writer.load_lines(lines[6:], target, number_from=7)
    assert _read_back(engine) == ROWS


@pytest.mark.mariadb
def test_server_rendered_lines_round_trip(engine: sa.Engine) -> None:
    """``load_data_line``: the server escapes (as a replica does for extraction); its lines
    loaded into a second table give the source rows back."""
    copy = PROBE.to_metadata(sa.MetaData(), name="bulk_probe_copy")
    copy.create(engine)
    with engine.begin() as conn:
        bulk_execute(conn, sa.insert(PROBE), COLUMNS, ROWS)
    with engine.connect() as conn:
        lines = conn.execute(sa.select(load_data_line(PROBE)).order_by(PROBE.c.id)).scalars().all()
    assert lines[0] == "1\tplain\t0\t2024-01-01 00:00:59"
    assert lines[1].split("\t")[1] == "nul\\0byte"  # the server wrote the same escape
    assert lines[-1].split("\t")[1] == LOAD_DATA_NULL
    with engine.begin() as conn, BulkWriter(conn.connection.dbapi_connection) as writer:
        writer.load_lines(lines, LoadDataTarget("bulk_probe_copy", COLUMNS))
    assert _read_back(engine, copy) == _read_back(engine) == ROWS


@pytest.mark.mariadb
@pytest.mark.parametrize("no_backslash_escapes", [False, True])
def test_insert_literals_round_trip(engine: sa.Engine, no_backslash_escapes: bool) -> None:
    """Multi-row INSERT literals, in the default SQL mode and under NO_BACKSLASH_ESCAPES,
    cut into several statements (a tiny ``max_bytes``)."""
    with engine.begin() as conn:
        if no_backslash_escapes:
            conn.exec_driver_sql(
                "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')"
            )
        assert session_has_no_backslash_escapes(conn) is no_backslash_escapes
        literals = RowLiterals(
            [c.type for c in PROBE.columns][1:], no_backslash_escapes=no_backslash_escapes
        )
        head = "INSERT INTO bulk_probe (id, txt, num, ts) VALUES "
        dbapi = conn.connection.dbapi_connection
        with BulkWriter(dbapi, max_bytes=100) as writer:
            writer.insert(head, literals.render([r[1:] for r in ROWS], number_from=1))
        if no_backslash_escapes:
            conn.exec_driver_sql("SET SESSION sql_mode = DEFAULT")
    assert _read_back(engine) == ROWS


@pytest.mark.mariadb
def test_bulk_execute_round_trips_on_mariadb(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert bulk_execute(conn, sa.insert(PROBE), COLUMNS, ROWS) == len(ROWS)
    assert _read_back(engine) == ROWS


def test_bulk_execute_round_trips_on_sqlite(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'probe.db'}")
    probe_metadata.create_all(engine)
    with engine.begin() as conn:
        assert bulk_execute(conn, sa.insert(PROBE), COLUMNS, ROWS) == len(ROWS)
    assert _read_back(engine) == ROWS
    engine.dispose()


@pytest.mark.mariadb
def test_load_data_checks_lines_and_warnings(engine: sa.Engine, tmp_path: Path) -> None:
    """Duplicates are an error unless IGNORE skips them; any other warning is an error even
    under IGNORE; a file of another length than expected is an error."""
    path = tmp_path / "dup.tsv"
    path.write_text("1\ta\t1\t\\N\n2\tb\t2\t\\N\n1\tc\t3\t\\N\n", encoding="utf-8")
    with engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        with pytest.raises(BulkLoadError, match="Duplicate entry '1'"):
            load_data_file(dbapi, path.as_posix(), TARGET, expected_rows=3)
        dbapi.rollback()
        ignore = LoadDataTarget("bulk_probe", COLUMNS, duplicates="IGNORE")
        assert load_data_file(dbapi, path.as_posix(), ignore, expected_rows=3) == 2
        dbapi.rollback()
        with pytest.raises(BulkLoadError, match="read 3 rows, expected 4"):
            load_data_file(dbapi, path.as_posix(), ignore, expected_rows=4)
        dbapi.rollback()
        path.write_text("5\ta\tnot-a-number\t\\N\n", encoding="utf-8")
        with pytest.raises(BulkLoadError, match="`num`"):
            load_data_file(dbapi, path.as_posix(), ignore, expected_rows=1)
        dbapi.rollback()
    assert _read_back(engine) == []


@pytest.mark.mariadb
def test_business_frames_load_data_round_trips_every_character(mariadb_database: str) -> None:
    """``write_business_frames(load_data=True)`` escapes usernames with the same escaper."""
    from tasks.data.sources.frames import BusinessFrames, write_business_frames
    from tasks.data.sources.generate import GeneratorConfig, generate_frames

    frames = generate_frames(
        GeneratorConfig(
            n_users=20, n_illusts=10, n_artists=3, n_tags=4, days=1, views_per_user=2, seed=1
        )
    )
    users = frames.users.head(len(TEXTS)).copy()
    users["username"] = TEXTS
    tricky = BusinessFrames(users, frames.illusts, frames.interactions, frames.follows)
    write_business_frames(tricky, mariadb_database, load_data=True)
    with get_engine(mariadb_database).connect() as conn:
        back = conn.execute(sa.text("SELECT user_id, username FROM users ORDER BY user_id")).all()
    expected = sorted(zip(users["user_id"].tolist(), TEXTS, strict=True), key=lambda r: r[0])
    assert [tuple(r) for r in back] == expected
