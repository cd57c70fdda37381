"""Engines and dialect-aware statements shared by every stage.

``insert_ignore`` and ``replace_into`` render per dialect: ``INSERT IGNORE`` /
``REPLACE INTO`` on MySQL/MariaDB, ``INSERT OR IGNORE`` / ``INSERT OR REPLACE`` on SQLite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import Insert


@functools.lru_cache(maxsize=32)
def get_engine(url: str) -> sa.Engine:
    """One pooled engine per URL. SQLite files get their folder, WAL and a busy timeout."""
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    if url.startswith("mysql"):
        return sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)
    return sa.create_engine(url)


class _Replace(Insert):
    """``REPLACE INTO`` (MySQL) / ``INSERT OR REPLACE`` (SQLite)."""

    inherit_cache = True


@compiles(_Replace, "mysql")
@compiles(_Replace, "mariadb")
def _replace_mysql(element: _Replace, compiler, **kw):  # type: ignore[no-untyped-def]
    sql = compiler.visit_insert(element, **kw)
    return "REPLACE" + sql[len("INSERT") :]


@compiles(_Replace, "sqlite")
def _replace_sqlite(element: _Replace, compiler, **kw):  # type: ignore[no-untyped-def]
    sql = compiler.visit_insert(element, **kw)
    return "INSERT OR REPLACE" + sql[len("INSERT") :]


def insert_ignore(table: sa.Table, dialect_name: str) -> Insert:
    """INSERT that skips rows whose key already exists."""
    if dialect_name == "sqlite":
        return sa.insert(table).prefix_with("OR IGNORE")
    if dialect_name in ("mysql", "mariadb"):
        return sa.insert(table).prefix_with("IGNORE")
    raise ValueError(f"insert_ignore: unsupported dialect {dialect_name!r}")


def replace_into(table: sa.Table, dialect_name: str) -> Insert:
    """Delete-and-insert on key conflict (MySQL REPLACE semantics)."""
    if dialect_name not in ("sqlite", "mysql", "mariadb"):
        raise ValueError(f"replace_into: unsupported dialect {dialect_name!r}")
    return _Replace(table)


MYSQL_MAX_STATEMENT_BYTES = 4 * 1024 * 1024


def local_infile_enabled(url: sa.URL | str) -> bool:
    """True when a MySQL URL asks the driver for ``LOAD DATA LOCAL INFILE`` (``local_infile``
    = 1/true in its query, as written by hand or by an Airflow MySQL connection's extra)."""
    value = sa.make_url(url).query.get("local_infile", "0")
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def bulk_execute(
    conn: sa.Connection,
    statement: Insert,
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
) -> int:
    """Run ``statement`` once per row of ``rows`` (tuples ordered like ``columns``) as one
    DBAPI ``executemany`` on MySQL/MariaDB (SQLAlchemy's executemany elsewhere).

    Why not ``conn.execute(statement, list_of_dicts)`` on MySQL: building a dict per row costs
    more than the database write for millions of rows. There mysqlclient rewrites an
    ``executemany`` of ``INSERT``/``REPLACE ... VALUES`` into multi-row statements. Values
    must be plain Python objects (call ``.tolist()`` on numpy arrays). Runs inside the
    caller's transaction. Returns the number of rows sent.
    """
    if not rows:
        return 0
    names = list(columns)
    if conn.dialect.name not in ("mysql", "mariadb"):
        # SQLite: go through SQLAlchemy so its type processing applies (it stores DATETIME
        # as text with microseconds, which the raw sqlite3 adapter would not match).
        conn.execute(statement, [dict(zip(names, row, strict=True)) for row in rows])
        return len(rows)
    compiled = statement.compile(dialect=conn.dialect, column_keys=names)
    position = compiled.positiontup or []
    if sorted(position) != sorted(names):
        raise ValueError(f"bulk_execute: columns {names} do not match statement binds {position}")
    order = [names.index(name) for name in position]
    if order != list(range(len(names))):
        rows = [tuple(row[i] for i in order) for row in rows]
    cursor = conn.connection.cursor()
    # mysqlclient splits a rewritten executemany into statements of at most this many
    # bytes (64 KiB by default); bigger statements mean far fewer round trips. Kept well
    # under the server's max_allowed_packet (16 MiB by default).
    if hasattr(cursor, "max_stmt_length"):
        cursor.max_stmt_length = MYSQL_MAX_STATEMENT_BYTES
    try:
        cursor.executemany(str(compiled), rows)
    finally:
        cursor.close()
    return len(rows)


class BackgroundCalls:
    """One worker thread running submitted calls in order, at most ``depth`` waiting (so
    memory stays bounded): the caller builds or reads the next batch while the server writes
    this one (the MySQL driver releases the GIL while the server works).

    The first error stops further calls and is re-raised on the caller's thread by
    ``submit``/``close``. As a context manager it waits for every call on a clean exit and
    drops the calls still queued when the block raised.
    """

    def __init__(self, name: str, depth: int = 2) -> None:
        import queue
        import threading

        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize=depth)
        self._errors: list[BaseException] = []
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __enter__(self) -> BackgroundCalls:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(cancel=exc_type is not None)

    def _run(self) -> None:
        while (call := self._queue.get()) is not None:
            if not self._errors and not self._cancelled:
                try:
                    call()
                except BaseException as exc:  # re-raised on the caller's thread
                    self._errors.append(exc)

    def submit(self, call: Callable[[], object]) -> None:
        self.raise_error()
        self._queue.put(call)

    def raise_error(self) -> None:
        if self._errors:
            raise self._errors[0]

    def close(self, *, cancel: bool = False) -> None:
        """Stop the thread after the queued calls (``cancel``: skip them, raise nothing)."""
        self._cancelled = cancel
        self._queue.put(None)
        self._thread.join()
        if not cancel:
            self.raise_error()
