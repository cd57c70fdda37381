"""Engines and dialect-aware statements shared by every stage.

``insert_ignore`` and ``replace_into`` render per dialect: ``INSERT IGNORE`` /
``REPLACE INTO`` on MySQL/MariaDB, ``INSERT OR IGNORE`` / ``INSERT OR REPLACE`` on SQLite.
Bulk writes (LOAD DATA, multi-row INSERTs, executemany, their escaping) live in
``tasks.data.bulk``.

``get_read_only_engine`` is the engine for a source that must never be written (the
business replica): every transaction its connections run is read-only (MySQL/MariaDB
``SET SESSION TRANSACTION READ ONLY``: a write fails with error 1792; SQLite
``PRAGMA query_only``), whatever the account's privileges.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=32)
def get_read_only_engine(url: str) -> sa.Engine:
    """One pooled engine per URL whose every session is read-only (see the module doc).

    Applies to autocommit statements and to raw DBAPI connections from its pool too.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})
        statement = "PRAGMA query_only = ON"
    elif url.startswith("mysql") or url.startswith("mariadb"):
        engine = sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600)
        statement = "SET SESSION TRANSACTION READ ONLY"
    else:
        raise ValueError(f"get_read_only_engine: unsupported URL scheme in {url!r}")

    @sa.event.listens_for(engine, "connect")
    def _read_only_session(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()

    return engine


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
