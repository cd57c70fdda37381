"""Incremental extraction from the business replica into the recsys DB's staging tables.

What is read, per data interval ``[start, end)`` (naive UTC):

* ``interactions`` (events): ``create_time`` in ``[lower, end)``.
* ``users``, ``follows`` (snapshots keyed by ``create_time``) and ``illusts`` (keyed by
  ``update_time``; an illust *created* in the window is read too, so an interaction always
  finds the illust it points at even when the illust was updated again later).

The watermark rule. ``watermarks.high_water`` of a table is the largest interval end ever
extracted for it; it only moves forward (``max(old, end)``), so an older interval run after
a newer one (a backfill) never moves it back. The lower bound is

    lower = min(high_water, start) - overlap

so an interval always re-reads its own window (also in a backfill), a gap since the last run
is caught up, and rows that committed late (up to ``overlap`` after their timestamp) are not
missed. A dimension table seen for the first time (no watermark) is read in full up to
``end`` (the initial snapshot); so is any interval starting at or before ``low_water`` (the
start of the earliest interval extracted), so re-running the first interval reads the same
rows again. Interactions are never snapshotted: without a watermark they start at
``start - overlap``. Rows whose timestamp is NULL fall in no window and are never read.

Rows land in ``staging_<table>`` keyed by the data interval (``row_seq`` numbers them in
arrival order, which a re-run may change: the replica is read without ORDER BY so the scan
stays cheap; nothing downstream depends on it); a re-run replaces that
interval's staging rows in one transaction (together with the watermark), so re-runs and
backfills are idempotent. Mirror tables are written by validation (``tasks.data.validate``),
which upserts good rows by primary key: N backfilled intervals give the same mirror as one
run over their union.

How rows travel (``copy_method``):

* ``insert_select``: replica and recsys DB are one MySQL server and account: one
  ``INSERT ... SELECT`` per table (READ COMMITTED, so no shared locks on replica rows).
* ``load_data``: both MySQL, recsys URL with ``local_infile=1``: the replica renders each row
  as one LOAD DATA text line (``tasks.data.bulk.load_data_line``: ``CONCAT_WS`` of escaped
  values, so Python handles one string per row, not typed values), a server-side cursor
  streams ``batch_size`` lines at a time into a temp file, and a writer thread runs
  ``LOAD DATA LOCAL INFILE`` on it while the next batch is read. Row counts and warnings
  are checked per file: LOAD DATA LOCAL turns errors into warnings, and a warning here
  fails the run.
* ``insert``: MySQL recsys DB without ``local_infile``: the writer thread sends multi-row
  INSERTs instead.
* ``executemany``: anything else (SQLite): SQLAlchemy executemany per batch.

The transport itself (escaping, LOAD DATA files and checks, INSERT literals, the writer
thread) is ``tasks.data.bulk``; this module decides what to read and how it travels.

The replica is never written. Every replica read goes through ``replica_engine``, whose
sessions are read-only (``SET SESSION TRANSACTION READ ONLY`` on MySQL/MariaDB, ``PRAGMA
query_only`` on SQLite), so a write through the pipeline's replica connection is refused
(error 1792) even with a privileged account; in production the account is SELECT-only and
the server ``read_only`` too. ``insert_select`` is the one path that reads the replica's
tables through the recsys-DB connection, so it is only chosen when both URLs are one
server *and* one account (the recsys DB is writable there anyway); a replica on another
server, or reached with another account (the production read-only account), is streamed.
On MySQL/MariaDB a replica-lag guard runs first (``SHOW REPLICA STATUS``); the DAG waits
for the lag in a reschedule-mode sensor (``replica_ready``) so no worker slot sleeps.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Literal, NoReturn

import sqlalchemy as sa
import tenacity

from tasks.core import schema
from tasks.core.common import StageResult, check_interval, get_logger
from tasks.core.db import get_engine, get_read_only_engine
from tasks.core.settings import Settings
from tasks.data.bulk import (
    BulkWriter,
    LoadDataTarget,
    RowLiterals,
    bulk_execute,
    load_data_line,
    local_infile_enabled,
    session_has_no_backslash_escapes,
)

log = get_logger("extract")

#: Order in which tables are extracted (dimensions first, like validation).
EXTRACT_ORDER: tuple[str, ...] = ("users", "illusts", "follows", "interactions")
#: Tables read as snapshots: the first extraction (no watermark) reads every row before end.
SNAPSHOT_TABLES: frozenset[str] = frozenset({"users", "illusts", "follows"})


class ReplicaLagError(RuntimeError):
    """The replica is too far behind (or not replicating) to extract a consistent interval."""


@dataclass(frozen=True)
class LagCheck:
    """Outcome of one look at the replica's replication status."""

    ok: bool
    lag_s: float | None
    reason: str


def decide_replica_lag(
    status_row: Mapping[str, Any] | None,
    *,
    max_lag_s: float,
    allow_no_replication: bool,
) -> LagCheck:
    """Pure decision on one ``SHOW REPLICA STATUS`` row (``None`` = empty result).

    * no row: the server is not a replica. OK only when ``allow_no_replication`` (dev /
      embedded setups where the "replica" is the primary); otherwise ``ReplicaLagError``.
    * ``Seconds_Behind_Master`` NULL: replication is stopped or broken: ``ReplicaLagError``
      (NULL is unknown lag, never zero).
    * lag above ``max_lag_s``: not OK (the caller may wait and look again).
    """
    if max_lag_s < 0:
        raise ValueError(f"max_lag_s must be >= 0, got {max_lag_s!r}")
    if not status_row:
        if allow_no_replication:
            return LagCheck(True, None, "no replication configured: treating server as primary")
        raise ReplicaLagError(
            "SHOW REPLICA STATUS is empty: the server is not a replica "
            "(pass allow_no_replication=True to extract from a primary)"
        )
    key = next(
        (k for k in ("Seconds_Behind_Master", "Seconds_Behind_Source") if k in status_row), None
    )
    if key is None:
        raise ReplicaLagError(
            f"replica status has no Seconds_Behind_* column: {sorted(status_row)}"
        )
    raw = status_row[key]
    if raw is None:
        io = status_row.get("Slave_IO_Running", status_row.get("Replica_IO_Running"))
        sql = status_row.get("Slave_SQL_Running", status_row.get("Replica_SQL_Running"))
        raise ReplicaLagError(
            f"replica lag is unknown ({key} is NULL; IO thread={io!r}, SQL thread={sql!r}): "
            "replication is stopped or broken"
        )
    lag = float(raw)
    if lag > max_lag_s:
        return LagCheck(False, lag, f"replica is {lag:.0f}s behind (limit {max_lag_s:.0f}s)")
    return LagCheck(True, lag, f"replica lag {lag:.0f}s within limit {max_lag_s:.0f}s")


def read_replica_status(engine: sa.Engine) -> dict[str, Any] | None:
    """``SHOW REPLICA STATUS`` (MariaDB 10.5+/MySQL 8.0.22+), else ``SHOW SLAVE STATUS``.

    Returns the first row as a dict, or ``None`` when the server is not a replica.
    """
    with engine.connect() as conn:
        try:
            row = conn.execute(sa.text("SHOW REPLICA STATUS")).mappings().first()
        except sa.exc.ProgrammingError:
            row = conn.execute(sa.text("SHOW SLAVE STATUS")).mappings().first()
    return dict(row) if row is not None else None


def replica_engine(settings: Settings) -> sa.Engine:
    """The pipeline's connection to the business replica: every transaction read-only."""
    return get_read_only_engine(settings.replica_url)


def replica_ready(settings: Settings, *, allow_no_replication: bool | None = None) -> bool:
    """One look at the replica's lag for a sensor: True when extraction may start.

    False while the replica is behind ``settings.max_replica_lag_s`` (the sensor pokes again
    later, in reschedule mode, holding no worker slot); ``ReplicaLagError`` when replication
    is stopped or broken (NULL lag) or absent and not allowed. Non-MySQL replicas (the
    embedded SQLite one) have no replication to wait for.
    """
    if allow_no_replication is None:
        allow_no_replication = _allow_no_replication_default()
    engine = replica_engine(settings)
    if engine.dialect.name not in ("mysql", "mariadb"):
        return True
    check = decide_replica_lag(
        read_replica_status(engine),
        max_lag_s=settings.max_replica_lag_s,
        allow_no_replication=allow_no_replication,
    )
    (log.info if check.ok else log.warning)("replica lag check: %s", check.reason)
    return check.ok


def wait_for_replica(
    read_status: Callable[[], Mapping[str, Any] | None],
    *,
    max_lag_s: float,
    allow_no_replication: bool,
    wait_s: float = 60.0,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> LagCheck:
    """Poll the replica status until lag is within ``max_lag_s``, for at most ``wait_s``
    (the time slept, ``poll_s`` at a time).

    Raises ``ReplicaLagError`` when still behind after the wait (or at once on NULL lag).
    """

    def gave_up(state: tenacity.RetryCallState) -> NoReturn:
        check = state.outcome.result()  # type: ignore[union-attr]
        raise ReplicaLagError(f"{check.reason} after waiting {state.idle_for:.0f}s; giving up")

    def waiting(state: tenacity.RetryCallState) -> None:
        check = state.outcome.result()  # type: ignore[union-attr]
        log.warning("replica lag check: %s; waiting %.0fs", check.reason, poll_s)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda check: not check.ok),  # errors are not retried
        stop=lambda state: state.idle_for >= wait_s,
        wait=tenacity.wait_fixed(poll_s),
        sleep=sleep,
        before_sleep=waiting,
        retry_error_callback=gave_up,
    )
    check: LagCheck = retrying(
        lambda: decide_replica_lag(
            read_status(), max_lag_s=max_lag_s, allow_no_replication=allow_no_replication
        )
    )
    log.info("replica lag check: %s", check.reason)
    return check


def lower_bound(
    table_name: str,
    high_water: datetime | None,
    interval_start: datetime,
    overlap: timedelta,
    low_water: datetime | None = None,
) -> datetime | None:
    """First timestamp read for ``table_name`` (``None`` = from the beginning); see module doc.

    ``low_water`` is the start of the earliest interval extracted so far: an interval that
    starts at or before it re-reads the snapshot, so re-running the first interval (or
    backfilling an even older one) reads what the first run read.
    """
    snapshot = high_water is None or (low_water is not None and interval_start <= low_water)
    if snapshot:
        return None if table_name in SNAPSHOT_TABLES else interval_start - overlap
    return min(high_water, interval_start) - overlap


def _window(column: sa.ColumnElement[Any], lower: datetime | None, end: datetime):  # type: ignore[no-untyped-def]
    condition = column < end
    return condition if lower is None else sa.and_(column >= lower, condition)


def replica_select(
    table_name: str, lower: datetime | None, end: datetime, *, table: sa.Table | None = None
) -> sa.Select:
    """The SELECT that reads ``table_name``'s rows for the window ``[lower, end)``
    (``table``: the same table under another schema, for server-side copies)."""
    if table is None:
        table = schema.BUSINESS_TABLES[table_name]
    if table_name == "illusts":
        where = sa.or_(
            _window(table.c.update_time, lower, end), _window(table.c.create_time, lower, end)
        )
    else:
        where = _window(table.c.create_time, lower, end)
    return sa.select(*table.columns).where(where)


@dataclass(frozen=True)
class ExtractResult(StageResult):
    """What one extraction read (row counts and windows per table)."""

    run_id: str
    interval_start: datetime
    interval_end: datetime
    rows: dict[str, int]
    lower_bounds: dict[str, str | None]
    replica_lag_s: float | None = None
    #: Where this run's interactions start, overlap excluded: the interval's start, or the
    #: older high-water mark when it caught up a gap (a paused DAG, a stopped scheduler).
    interactions_from: str | None = None
    seconds: float = 0.0


def _allow_no_replication_default() -> bool:
    return os.environ.get("RECSYS_ALLOW_NO_REPLICATION", "1").lower() not in ("0", "false", "no")


def extract_interval(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    run_id: str,
    batch_size: int = 10_000,
    overlap: timedelta = timedelta(minutes=10),
    allow_no_replication: bool | None = None,
    lag_wait_s: float = 60.0,
    lag_poll_s: float = 5.0,
    tables: tuple[str, ...] = EXTRACT_ORDER,
    server_side_copy: bool | None = None,
) -> ExtractResult:
    """Copy the interval's replica rows into ``staging_<table>`` and advance the watermarks.

    Streams with a server-side cursor (``batch_size`` rows at a time); each table's staging
    rows and watermark are replaced in one recsys-DB transaction. Idempotent.
    ``allow_no_replication`` defaults to env ``RECSYS_ALLOW_NO_REPLICATION`` (on).
    ``server_side_copy`` (default: when replica and recsys DB are one MySQL server and
    account) copies with ``INSERT ... SELECT`` instead of streaming through Python.
    """
    start, end = check_interval(interval_start, interval_end)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size!r}")
    if overlap < timedelta(0):
        raise ValueError(f"overlap must be >= 0, got {overlap!r}")
    unknown = [t for t in tables if t not in schema.BUSINESS_TABLES]
    if unknown or not run_id:
        raise ValueError(f"bad tables {unknown!r} or run_id {run_id!r}")
    if allow_no_replication is None:
        allow_no_replication = _allow_no_replication_default()
    began = time.perf_counter()

    replica = replica_engine(settings)
    recsys = get_engine(settings.recsys_db_url)
    schema.ensure_recsys_schema(recsys)

    lag: float | None = None
    if replica.dialect.name in ("mysql", "mariadb"):
        lag = wait_for_replica(
            lambda: read_replica_status(replica),
            max_lag_s=settings.max_replica_lag_s,
            allow_no_replication=allow_no_replication,
            wait_s=lag_wait_s,
            poll_s=lag_poll_s,
        ).lag_s

    counts: dict[str, int] = {}
    lowers: dict[str, str | None] = {}
    for table_name in tables:
        n, lower = _extract_table(
            replica,
            recsys,
            table_name,
            start,
            end,
            run_id=run_id,
            batch_size=batch_size,
            overlap=overlap,
            server_side_copy=server_side_copy,
        )
        counts[table_name] = n
        lowers[table_name] = lower.isoformat() if lower else None
    seconds = time.perf_counter() - began
    log.info("extracted %s for [%s, %s) in %.1fs (run %s)", counts, start, end, seconds, run_id)
    return ExtractResult(
        run_id=run_id,
        interval_start=start,
        interval_end=end,
        rows=counts,
        lower_bounds=lowers,
        replica_lag_s=lag,
        interactions_from=(
            (datetime.fromisoformat(lowers["interactions"]) + overlap).isoformat()
            if lowers.get("interactions")
            else None
        ),
        seconds=round(seconds, 3),
    )


def _extract_table(
    replica: sa.Engine,
    recsys: sa.Engine,
    table_name: str,
    start: datetime,
    end: datetime,
    *,
    run_id: str,
    batch_size: int,
    overlap: timedelta,
    server_side_copy: bool | None,
) -> tuple[int, datetime | None]:
    staging = schema.STAGING_TABLES[table_name]
    marks = schema.watermarks
    mysql = recsys.dialect.name in ("mysql", "mariadb")
    method = copy_method(replica.url, recsys.url, server_side_copy)
    # READ COMMITTED: an INSERT ... SELECT must not hold shared locks on replica rows.
    options = {"isolation_level": "READ COMMITTED"} if mysql else {}
    with recsys.connect().execution_options(**options) as out, out.begin():
        mark = out.execute(
            sa.select(marks.c.high_water, marks.c.low_water).where(marks.c.table_name == table_name)
        ).first()
        high_water, low_water = (mark.high_water, mark.low_water) if mark else (None, None)
        lower = lower_bound(table_name, high_water, start, overlap, low_water)
        out.execute(
            sa.delete(staging).where(
                staging.c.data_interval_start == start, staging.c.data_interval_end == end
            )
        )
        job = _CopyJob(replica, out, table_name, lower, start, end, run_id, batch_size)
        if method == "insert_select":
            written = _copy_server_side(job)
            how = "server-side INSERT ... SELECT"
        elif method == "load_data":
            written = _copy_load_data(job)
            how = f"LOAD DATA LOCAL INFILE in batches of {batch_size}"
        else:
            written = _copy_streamed(job, mysql=mysql)
            how = f"{method} in batches of {batch_size}"
        new_mark = end if high_water is None else max(high_water, end)
        new_low = start if low_water is None else min(low_water, start)
        out.execute(sa.delete(marks).where(marks.c.table_name == table_name))
        out.execute(
            sa.insert(marks).values(table_name=table_name, high_water=new_mark, low_water=new_low)
        )
    log.info(
        "%s: read %d rows from replica window [%s, %s) into %s (%s); watermark %s -> %s",
        table_name, written, lower, end, staging.name, how, high_water, new_mark,
    )  # fmt: skip
    return written, lower


def _same_mysql_server(a: sa.URL, b: sa.URL) -> bool:
    """Both URLs reach one MySQL server as one account (so one connection sees both DBs)."""
    if a.get_backend_name() not in ("mysql", "mariadb") or a.get_backend_name() != (
        b.get_backend_name()
    ):
        return False
    return (a.host or "localhost", a.port or 3306, a.username, a.password) == (
        b.host or "localhost",
        b.port or 3306,
        b.username,
        b.password,
    ) and bool(a.database)


@dataclass(frozen=True)
class _CopyJob:
    """One table's window ``[lower, end)`` to copy from the replica into staging, inside the
    recsys-DB transaction ``out``, labelled with the data interval and run."""

    replica: sa.Engine
    out: sa.Connection
    table_name: str
    lower: datetime | None
    start: datetime
    end: datetime
    run_id: str
    batch_size: int


CopyMethod = Literal["insert_select", "load_data", "insert", "executemany"]


def _mysql_url(url: sa.URL) -> bool:
    return url.get_backend_name() in ("mysql", "mariadb")


def copy_method(replica: sa.URL, recsys: sa.URL, server_side_copy: bool | None) -> CopyMethod:
    """How rows travel from ``replica`` to ``recsys`` (see the module doc).

    ``server_side_copy`` True forces ``insert_select`` (``ValueError`` when the two are not
    one MySQL server and account), False forbids it, None picks it when possible.
    """
    same_server = _same_mysql_server(replica, recsys)
    if server_side_copy and not same_server:
        raise ValueError(
            f"server_side_copy needs replica and recsys DB on one MySQL server, got "
            f"{replica.render_as_string()} and {recsys.render_as_string()}"
        )
    if same_server and server_side_copy is not False:
        return "insert_select"
    if not _mysql_url(recsys):
        return "executemany"
    return "load_data" if local_infile_enabled(recsys) and _mysql_url(replica) else "insert"


def _copy_server_side(job: _CopyJob) -> int:
    """Replica and recsys DB share a server: copy with one INSERT ... SELECT (no round trip
    of every row through Python)."""
    source = schema.BUSINESS_TABLES[job.table_name].to_metadata(
        sa.MetaData(), schema=job.replica.url.database
    )
    query = replica_select(job.table_name, job.lower, job.end, table=source)
    columns = [c.name for c in source.columns]
    staging = schema.STAGING_TABLES[job.table_name]
    inner = query.subquery()
    row_seq: sa.ColumnElement[Any]
    if row_numbering(job.out.dialect) == "variable":
        # MariaDB: number rows with a session variable; ROW_NUMBER() OVER () makes the server
        # materialise the whole window in a temp table first (~35% slower, bench/extract.py).
        job.out.exec_driver_sql(f"SET {_SEQ_VARIABLE} = -1")
        row_seq = sa.literal_column(f"({_SEQ_VARIABLE} := {_SEQ_VARIABLE} + 1)", sa.BigInteger())
    else:
        row_seq = sa.func.row_number().over() - 1
    select = sa.select(
        sa.literal(job.start, sa.DateTime),
        sa.literal(job.end, sa.DateTime),
        row_seq,
        *[inner.c[c] for c in columns],
        sa.literal(job.run_id, sa.String),
    )
    target = ["data_interval_start", "data_interval_end", "row_seq", *columns, "run_id"]
    result = job.out.execute(sa.insert(staging).from_select(target, select))
    return int(result.rowcount)


#: Session variable numbering staged rows (``row_seq``) in the MariaDB INSERT ... SELECT.
_SEQ_VARIABLE = "@recsys_row_seq"


def row_numbering(dialect: sa.Dialect) -> Literal["variable", "window"]:
    """How INSERT ... SELECT numbers rows: a session variable on MariaDB, ``ROW_NUMBER()``
    on MySQL, where assigning variables inside expressions is deprecated (8.0.13+)."""
    return "variable" if getattr(dialect, "is_mariadb", False) else "window"


def _copy_load_data(job: _CopyJob) -> int:
    """Stream the window as LOAD DATA text lines (rendered by the replica) into staging: a
    ``BulkWriter`` thread loads batch k's file while this thread reads batch k+1."""
    from MySQLdb.cursors import SSCursor

    if session_has_no_backslash_escapes(job.out):  # the LOAD DATA clause spells '\\t'
        log.info("%s: recsys session has NO_BACKSLASH_ESCAPES: multi-row INSERTs", job.table_name)
        return _copy_streamed(job, mysql=True)
    business = schema.BUSINESS_TABLES[job.table_name]
    inner = replica_select(job.table_name, job.lower, job.end).subquery()
    compiled = sa.select(load_data_line(inner)).compile(dialect=job.replica.dialect)
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    target = LoadDataTarget(
        table=schema.STAGING_TABLES[job.table_name].name,
        columns=("row_seq", *(c.name for c in business.columns)),
        set_clause="data_interval_start = @recsys_interval_start, "
        "data_interval_end = @recsys_interval_end, run_id = @recsys_run_id",
    )
    dbapi_out = job.out.connection.dbapi_connection
    setup = dbapi_out.cursor()
    try:
        setup.execute(
            "SET @recsys_interval_start = %s, @recsys_interval_end = %s, @recsys_run_id = %s",
            (job.start, job.end, job.run_id),
        )
    finally:
        setup.close()
    written = 0
    with BulkWriter(dbapi_out, name="staging-loader") as writer:
        raw = job.replica.raw_connection()
        try:
            cursor = raw.cursor(SSCursor)
            try:
                cursor.execute(str(compiled), params)
                batch_no = 0
                while lines := cursor.fetchmany(job.batch_size):
                    batch_no += 1
                    # row_seq first, numbered across batches
                    writer.load_lines(list(map(itemgetter(0), lines)), target, number_from=written)
                    written += len(lines)
                    if batch_no % 20 == 0:
                        log.info("%s: %d rows read, loading", job.table_name, written)
            finally:
                cursor.close()
        finally:
            raw.close()
    return written


def _copy_streamed(job: _CopyJob, *, mysql: bool) -> int:
    """Stream the window with a server-side cursor, ``batch_size`` rows at a time, into
    staging. On MySQL a ``BulkWriter`` thread sends multi-row INSERTs (``RowLiterals``)
    while the next batch is read (the driver releases the GIL while the server works);
    elsewhere ``bulk_execute``."""
    staging = schema.STAGING_TABLES[job.table_name]
    business = list(schema.BUSINESS_TABLES[job.table_name].columns)
    query = replica_select(job.table_name, job.lower, job.end)
    if mysql:
        # Timestamps are only copied, so read them as text: no parse into datetime and
        # format back for every value (a third of the streamed path's time).
        inner = query.subquery()
        query = sa.select(
            *[
                sa.cast(inner.c[c.name], sa.String).label(c.name)
                if isinstance(c.type, sa.DateTime)
                else inner.c[c.name]
                for c in business
            ]
        )
    with job.replica.connect() as source:
        result = source.execution_options(stream_results=True, yield_per=job.batch_size).execute(
            query
        )
        batches = result.partitions(job.batch_size)
        if mysql:
            return _insert_literals(job, staging, business, batches)
        columns = ["data_interval_start", "data_interval_end", "row_seq"]
        columns += [c.name for c in business] + ["run_id"]
        insert = sa.insert(staging)
        written = 0
        for batch_no, batch in enumerate(batches, start=1):
            rows = [
                (job.start, job.end, written + i, *row, job.run_id) for i, row in enumerate(batch)
            ]
            written += bulk_execute(job.out, insert, columns, rows)
            if batch_no % 20 == 0:
                log.info("%s: %d rows staged so far", job.table_name, written)
    return written


def _insert_literals(
    job: _CopyJob,
    staging: sa.Table,
    business: list[sa.Column[Any]],
    batches: Iterator[Sequence[Any]],
) -> int:
    """Multi-row INSERTs of ``batches`` into staging, each row labelled with the interval,
    the run and its ``row_seq``; formatted here, sent by the writer thread."""
    literals = RowLiterals(
        [c.type for c in business], no_backslash_escapes=session_has_no_backslash_escapes(job.out)
    )
    lead = "".join(
        literals.literal(value, column_type) + ","
        for value, column_type in (
            (job.start, sa.DateTime()),
            (job.end, sa.DateTime()),
            (job.run_id, sa.String()),
        )
    )
    names = ["data_interval_start", "data_interval_end", "run_id", "row_seq"]
    names += [c.name for c in business]
    head = f"INSERT INTO `{staging.name}` ({', '.join(f'`{n}`' for n in names)}) VALUES "
    written = 0
    with BulkWriter(job.out.connection.dbapi_connection, name="staging-writer", depth=3) as writer:
        for batch_no, batch in enumerate(batches, start=1):
            writer.insert(head, literals.render(batch, lead=lead, number_from=written))
            written += len(batch)
            if batch_no % 20 == 0:
                log.info("%s: %d rows staged so far", job.table_name, written)
    return written
