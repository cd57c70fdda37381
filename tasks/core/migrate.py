"""Bring the recsys DB to the newest schema with Alembic (``tasks/core/migrations``).

``ensure_recsys_schema(engine)`` is what the stages call before they touch the recsys DB:

* a new database (none of our tables) is upgraded to head;
* a database built by the old ``create_recsys_schema`` (create_all: our tables, no
  ``alembic_version``) is checked against revision 0001, stamped 0001, then upgraded; tables
  with no ``alembic_version`` that match the current ``schema.py`` instead (the DDL in
  infra/sql/recsys_schema.sql, run by a new recsys-db container) are stamped head;
* a database at head is left alone; the answer is cached per engine URL in this process, so
  every later call is a set lookup;
* a database at a revision this code does not know, or legacy tables that differ from
  revision 0001, raise :class:`SchemaMigrationError` naming what differs.

Concurrent first calls: a read-only check comes first (a database at head takes no lock).
Upgrades then run under one lock per database and re-check under it: on MySQL/MariaDB a named
``GET_LOCK`` held by the migrating connection; on SQLite a ``BEGIN IMMEDIATE`` transaction
around the whole migration (SQLite DDL is transactional, so a failed upgrade leaves nothing
half done, and a second process waits on the busy timeout, then sees the new revision).

CLI (URL from ``--url`` or the settings' ``recsys_db_url``)::

    python -m tasks.core.migrate upgrade            # ensure_recsys_schema: legacy-aware
    python -m tasks.core.migrate current            # the database's revision and the head
    python -m tasks.core.migrate check              # exit 1 when tables differ from schema.py
    python -m tasks.core.migrate stamp 0001
    python -m tasks.core.migrate downgrade 0001
    python -m tasks.core.migrate history
    python -m tasks.core.migrate revision -m "add ranker table" --rev-id 0002 --autogenerate
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"
VERSION_TABLE = "alembic_version"
LOCK_TIMEOUT_S = 300


class SchemaMigrationError(RuntimeError):
    """The recsys DB is in a state the migrations cannot take to head without a person."""


# ---------------------------------------------------------------------------------------------
# Alembic plumbing


def context_options(dialect_name: str) -> dict[str, Any]:
    """Options for ``context.configure`` shared by env.py and the checks here: only tables of
    ``recsys_metadata`` are ours (a shared database may hold others); types are compared;
    SQLite gets batch mode so future ALTERs work there."""
    return {
        "include_name": _include_recsys_name,
        "compare_type": True,
        "render_as_batch": dialect_name == "sqlite",
    }


def _include_recsys_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    from tasks.core.schema import recsys_metadata

    if type_ == "table":
        return name in recsys_metadata.tables
    return True


def alembic_config(
    connection: sa.Connection | None = None, url: str | sa.URL | None = None
) -> Config:
    """An Alembic config built in code (no alembic.ini), valid from any working directory.

    ``connection``: env.py migrates over it, inside the caller's transaction; else ``url``.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        text = url.render_as_string(hide_password=False) if isinstance(url, sa.URL) else url
        config.set_main_option("sqlalchemy.url", text.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    """The revision scripts (parsed once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revisions() -> tuple[str, ...]:
    return tuple(script_directory().get_heads())


def current_revisions(conn: sa.Connection) -> tuple[str, ...]:
    """The revision(s) in the database's ``alembic_version`` (empty when there is none)."""
    from alembic.runtime.migration import MigrationContext

    return tuple(MigrationContext.configure(conn).get_current_heads())


@functools.cache
def baseline_metadata() -> sa.MetaData:
    """Revision 0001's tables as a MetaData, replayed from its ``create_schema``."""
    module = script_directory().get_revision(BASELINE).module
    recorder = _MetadataRecorder()
    module.create_schema(recorder)
    return recorder.metadata


class _MetadataRecorder:
    """Takes ``op.create_table``/``op.create_index`` calls and builds Tables instead."""

    def __init__(self) -> None:
        self.metadata = sa.MetaData()

    def create_table(self, name: str, *elements: Any, **kw: Any) -> sa.Table:
        return sa.Table(name, self.metadata, *elements, **kw)

    def create_index(
        self, name: str, table_name: str, columns: Sequence[str], unique: bool = False
    ) -> sa.Index:
        table = self.metadata.tables[table_name]
        return sa.Index(name, *(table.c[c] for c in columns), unique=unique)


# ---------------------------------------------------------------------------------------------
# Comparing a database with a MetaData


def schema_differences(conn: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """What the database's tables (those named in ``metadata``) lack or have beyond it, one
    readable line each: Alembic's autogenerate comparison plus primary keys, which it skips."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
        return name in metadata.tables if type_ == "table" else True

    opts = {**context_options(conn.dialect.name), "include_name": include_name}
    context = MigrationContext.configure(conn, opts=opts)
    lines = [_describe(diff) for diff in _flatten(compare_metadata(context, metadata))]
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    for table in metadata.sorted_tables:
        if table.name not in present:
            continue
        found = inspector.get_pk_constraint(table.name).get("constrained_columns") or []
        wanted = [c.name for c in table.primary_key.columns]
        if list(found) != wanted:
            lines.append(f"{table.name}: primary key {list(found)}, expected {wanted}")
    return lines


def _flatten(diffs: list[Any]) -> Iterator[tuple[Any, ...]]:
    for diff in diffs:
        if isinstance(diff, list):  # column modifications come grouped per column
            yield from diff
        else:
            yield diff


def _describe(diff: tuple[Any, ...]) -> str:
    kind = diff[0]
    if kind == "add_table":
        return f"missing table {diff[1].name}"
    if kind == "remove_table":
        return f"unexpected table {diff[1].name}"
    if kind == "add_column":
        return f"missing column {diff[2]}.{diff[3].name}"
    if kind == "remove_column":
        return f"unexpected column {diff[2]}.{diff[3].name}"
    if kind in ("add_index", "remove_index", "add_constraint", "remove_constraint"):
        element = diff[1]
        what = "index" if "index" in kind else "constraint"
        state = "missing" if kind.startswith("add") else "unexpected"
        columns = [c.name for c in element.columns]
        return f"{state} {what} {element.name} on {element.table.name}{columns}"
    if kind == "modify_type":
        return f"{diff[2]}.{diff[3]}: type {diff[5]!r}, expected {diff[6]!r}"
    if kind == "modify_nullable":
        return f"{diff[2]}.{diff[3]}: nullable={diff[5]}, expected nullable={diff[6]}"
    if kind.startswith("modify_"):
        return f"{diff[2]}.{diff[3]}: {kind[7:]} {diff[5]!r}, expected {diff[6]!r}"
    return repr(diff)


# ---------------------------------------------------------------------------------------------
# ensure_recsys_schema

_at_head_urls: set[str] = set()
_at_head_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()
_process_lock = threading.Lock()


def _is_memory_db(url: sa.URL) -> bool:
    return url.get_backend_name() == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )


def _url_key(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _known(engine: sa.Engine) -> bool:
    if _is_memory_db(engine.url):  # each in-memory engine is its own database
        return engine in _at_head_engines
    return _url_key(engine) in _at_head_urls


def _remember(engine: sa.Engine) -> None:
    if _is_memory_db(engine.url):
        _at_head_engines.add(engine)
    else:
        _at_head_urls.add(_url_key(engine))


def forget_cached_state() -> None:
    """Drop the in-process "at head" cache (tests that rebuild a database at the same URL)."""
    _at_head_urls.clear()
    _at_head_engines.clear()


def ensure_recsys_schema(engine: sa.Engine) -> None:
    """Bring the recsys DB behind ``engine`` to the head revision (see the module doc)."""
    if _known(engine):
        return
    with _process_lock:
        if _known(engine):
            return
        heads = head_revisions()
        with engine.connect() as conn:
            current = current_revisions(conn)
        if set(current) != set(heads):
            with _migration_lock(engine) as conn:
                _upgrade_locked(conn, engine.url)
        _remember(engine)


def _upgrade_locked(conn: sa.Connection, url: sa.URL) -> None:
    """Under the migration lock: decide what the database is and take it to head."""
    from alembic import command

    script = script_directory()
    where = url.render_as_string(hide_password=True)
    current = current_revisions(conn)
    if not current:
        baseline = baseline_metadata()
        present = set(sa.inspect(conn).get_table_names())
        if present & set(baseline.tables):
            differences = schema_differences(conn, baseline)
            if not differences:
                command.stamp(alembic_config(conn), BASELINE)
            elif set(script.get_heads()) != {BASELINE} and not schema_differences(
                conn, _recsys_metadata()
            ):
                # Built from the current schema.py's DDL (infra/sql/recsys_schema.sql run by
                # a new recsys-db container): that is the head revision.
                command.stamp(alembic_config(conn), "heads")
            else:
                raise SchemaMigrationError(
                    f"recsys DB {where} has tables but no {VERSION_TABLE}, and they do not "
                    f"match revision {BASELINE} (the schema create_all used to build), so it "
                    "cannot be stamped and upgraded. Bring them to revision "
                    f"{BASELINE} by hand (or drop them), or, if they are known to be "
                    f"equivalent, `python -m tasks.core.migrate stamp {BASELINE}`. "
                    "Differences:\n  " + "\n  ".join(differences)
                )
    else:
        unknown = [rev for rev in current if _lookup(script, rev) is None]
        if unknown:
            raise SchemaMigrationError(
                f"recsys DB {where} is at revision {', '.join(unknown)}, which this code does "
                f"not know (its head is {', '.join(script.get_heads())}): it was migrated by a "
                "newer version; run that version, or downgrade the database with it."
            )
    command.upgrade(alembic_config(conn), "heads")


def _lookup(script: ScriptDirectory, revision: str) -> Any:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision)
    except CommandError:
        return None


@contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection that holds this database's migration lock; commits on success."""
    dialect = engine.dialect.name
    with engine.connect() as conn:
        if dialect == "sqlite":
            # The write lock for the whole migration (pysqlite would not BEGIN before DDL).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        elif dialect in ("mysql", "mariadb"):
            name = _lock_name(conn)
            got = conn.execute(
                sa.text("SELECT GET_LOCK(:name, :timeout)"),
                {"name": name, "timeout": LOCK_TIMEOUT_S},
            ).scalar()
            conn.commit()
            if got != 1:
                raise SchemaMigrationError(
                    f"no migration lock {name!r} after {LOCK_TIMEOUT_S}s (another process "
                    "is migrating this database)"
                )
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()
        else:  # no cross-process lock for other databases; one transaction at least
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()


def _lock_name(conn: sa.Connection) -> str:
    """A server-wide lock name per database (MySQL caps names at 64 characters)."""
    database = conn.execute(sa.text("SELECT DATABASE()")).scalar() or ""
    name = f"recsys_migrate:{database}"
    if len(name) > 64:
        name = "recsys_migrate:" + hashlib.sha1(database.encode()).hexdigest()
    return name


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    from alembic import command

    parser = argparse.ArgumentParser(prog="python -m tasks.core.migrate", description=__doc__)
    parser.add_argument("--url", help="recsys DB URL (default: the settings' recsys_db_url)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("upgrade", help="bring the DB to head (stamps a legacy create_all DB first)")
    sub.add_parser("current", help="print the DB's revision and the head")
    sub.add_parser("check", help="exit 1 when the DB is not at head or differs from schema.py")
    sub.add_parser("history", help="list the revisions")
    stamp = sub.add_parser("stamp", help="write a revision into alembic_version, no DDL")
    stamp.add_argument("revision")
    down = sub.add_parser("downgrade", help="run downgrade steps to a revision")
    down.add_argument("revision")
    rev = sub.add_parser("revision", help="write a new revision script")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--rev-id", help="e.g. 0002 (default: a random id)")
    rev.add_argument("--autogenerate", action="store_true", help="diff the DB against schema.py")
    args = parser.parse_args(argv)

    if args.cmd == "history":
        command.history(alembic_config())
        return 0
    url = args.url
    if url is None:
        from tasks.core.settings import load_settings

        url = load_settings().recsys_db_url
    engine = sa.create_engine(url)
    try:
        return _run_command(args, engine)
    finally:
        engine.dispose()


def _run_command(args: argparse.Namespace, engine: sa.Engine) -> int:
    from alembic import command

    if args.cmd == "upgrade":
        ensure_recsys_schema(engine)
    if args.cmd in ("upgrade", "current", "check"):
        with engine.connect() as conn:
            current = current_revisions(conn)
            differences = schema_differences(conn, _recsys_metadata()) if current else []
        heads = head_revisions()
        print(f"database: {', '.join(current) or '(none)'}  head: {', '.join(heads)}")
        if args.cmd == "check":
            if set(current) != set(heads):
                print("not at head")
                return 1
            for line in differences:
                print(line)
            return 1 if differences else 0
        return 0
    with _migration_lock(engine) as conn:
        config = alembic_config(conn)
        if args.cmd == "stamp":
            command.stamp(config, args.revision)
        elif args.cmd == "downgrade":
            command.downgrade(config, args.revision)
        elif args.cmd == "revision":
            command.revision(
                config, message=args.message, rev_id=args.rev_id, autogenerate=args.autogenerate
            )
    forget_cached_state()
    return 0


def _recsys_metadata() -> sa.MetaData:
    from tasks.core.schema import recsys_metadata

    return recsys_metadata


if __name__ == "__main__":  # pragma: no cover - CLI
    raise SystemExit(main())
