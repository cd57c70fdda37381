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
  as one LOAD DATA text line (``CONCAT_WS`` of escaped values, so Python handles one string
  per row, not typed values), a server-side cursor streams ``batch_size`` lines at a time
  into a temp file, and a writer thread runs ``LOAD DATA LOCAL INFILE`` on it while the next
  batch is read. Row counts and warnings are checked per file: LOAD DATA LOCAL turns errors
  into warnings, and a warning here fails the run.
* ``insert``: MySQL recsys DB without ``local_infile``: the writer thread sends multi-row
  INSERTs instead.
* ``executemany``: anything else (SQLite): SQLAlchemy executemany per batch.

The replica is only ever read (production: a read-only account); on MySQL/MariaDB a
replica-lag guard runs first (``SHOW REPLICA STATUS``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, Literal

import sqlalchemy as sa

from tasks.core import schema
from tasks.core.common import StageResult, check_interval, get_logger
from tasks.core.db import BackgroundCalls, bulk_execute, get_engine, local_infile_enabled
from tasks.core.settings import Settings

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


def wait_for_replica(
    read_status: Callable[[], Mapping[str, Any] | None],
    *,
    max_lag_s: float,
    allow_no_replication: bool,
    wait_s: float = 60.0,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> LagCheck:
    """Poll the replica status until lag is within ``max_lag_s``, for at most ``wait_s``.

    Raises ``ReplicaLagError`` when still behind after the wait (or at once on NULL lag).
    """
    waited = 0.0
    while True:
        check = decide_replica_lag(
            read_status(), max_lag_s=max_lag_s, allow_no_replication=allow_no_replication
        )
        if check.ok:
            log.info("replica lag check: %s", check.reason)
            return check
        if waited >= wait_s:
            raise ReplicaLagError(f"{check.reason} after waiting {waited:.0f}s; giving up")
        log.warning("replica lag check: %s; waiting %.0fs", check.reason, poll_s)
        sleep(poll_s)
        waited += poll_s


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

    replica = get_engine(settings.replica_url)
    recsys = get_engine(settings.recsys_db_url)
    schema.create_recsys_schema(recsys)

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


def load_data_line(table: sa.Table) -> sa.ColumnElement[str]:
    """One row of ``table`` as a LOAD DATA text line, rendered by the (MySQL) replica.

    Fields are tab-separated; NULL is ``\\N``; in text values backslash, tab and newline
    are escaped as LOAD DATA's default ``ESCAPED BY '\\'`` reads them back. Numbers and
    timestamps print as MySQL casts them to text, which LOAD DATA parses back exactly.
    """
    fields = []
    for column in table.columns:
        value: sa.ColumnElement[Any] = column
        if isinstance(column.type, (sa.String, sa.Text)):
            for raw, escaped in (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n")):
                value = sa.func.replace(value, sa.literal(raw), sa.literal(escaped))
        elif not isinstance(column.type, (sa.Integer, sa.DateTime)):
            raise ValueError(
                f"no LOAD DATA text form for {table.name}.{column.name}: {column.type}"
            )
        fields.append(sa.func.ifnull(value, sa.literal("\\N")))
    return sa.func.concat_ws(sa.literal("\t"), *fields, type_=sa.Text)


def _copy_load_data(job: _CopyJob) -> int:
    """Stream the window as LOAD DATA text lines (rendered by the replica) through temp
    files into staging; a writer thread loads file k while this thread reads batch k+1."""
    import tempfile

    from MySQLdb.cursors import SSCursor

    sql_mode = str(job.out.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar() or "")
    if "NO_BACKSLASH_ESCAPES" in sql_mode:  # the LOAD DATA clause below spells '\\t'
        log.info("%s: recsys session has NO_BACKSLASH_ESCAPES: multi-row INSERTs", job.table_name)
        return _copy_streamed(job, mysql=True)
    business = schema.BUSINESS_TABLES[job.table_name]
    inner = replica_select(job.table_name, job.lower, job.end).subquery()
    compiled = sa.select(load_data_line(inner)).compile(dialect=job.replica.dialect)
    params = [compiled.params[name] for name in compiled.positiontup or ()]
    staging = schema.STAGING_TABLES[job.table_name]
    columns = ", ".join(f"`{c.name}`" for c in business.columns)
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
    with (
        tempfile.TemporaryDirectory(prefix=f"extract-{job.table_name}-") as tmp,
        _LoadDataWriter(
            dbapi_out,
            f"INTO TABLE `{staging.name}` CHARACTER SET utf8mb4 "
            f"FIELDS TERMINATED BY '\\t' (`row_seq`, {columns}) "
            f"SET data_interval_start = @recsys_interval_start, "
            f"data_interval_end = @recsys_interval_end, "
            "run_id = @recsys_run_id",
        ) as writer,
    ):
        raw = job.replica.raw_connection()
        try:
            cursor = raw.cursor(SSCursor)
            try:
                cursor.execute(str(compiled), params)
                batch_no = 0
                while lines := cursor.fetchmany(job.batch_size):
                    batch_no += 1
                    path = os.path.join(tmp, f"{batch_no}.tsv")
                    # row_seq first: "<n>\t<line>", numbered across batches
                    numbered = zip(
                        range(written, written + len(lines)), map(itemgetter(0), lines), strict=True
                    )
                    text = "\n".join(map("%d\t%s".__mod__, numbered))
                    with open(path, "w", encoding="utf-8", newline="\n") as handle:
                        handle.write(text)
                        handle.write("\n")
                    writer.load(path, len(lines))
                    written += len(lines)
                    if batch_no % 20 == 0:
                        log.info("%s: %d rows read, loading", job.table_name, written)
            finally:
                cursor.close()
        finally:
            raw.close()
    return written


class _LoadDataWriter:
    """Runs ``LOAD DATA LOCAL INFILE <file> <clause>`` per file on a background thread, in
    order, checking each file's affected row count and warnings; deletes loaded files.
    Errors from the thread are re-raised by ``load`` and on exit."""

    def __init__(self, dbapi_connection: Any, clause: str) -> None:
        self._connection = dbapi_connection
        self._clause = clause
        self._background = BackgroundCalls("staging-loader")

    def __enter__(self) -> _LoadDataWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._background.close(cancel=exc_type is not None)

    def load(self, path: str, expected_rows: int) -> None:
        if "'" in path or "\\" in path:
            raise ValueError(f"temp path not usable in LOAD DATA: {path!r}")
        self._background.submit(lambda: self._load(path, expected_rows))

    def _load(self, path: str, expected_rows: int) -> None:
        cursor = self._connection.cursor()
        try:
            loaded = cursor.execute(f"LOAD DATA LOCAL INFILE '{path}' {self._clause}")
            if self._connection.warning_count():
                cursor.execute("SHOW WARNINGS LIMIT 5")
                raise RuntimeError(
                    f"LOAD DATA of {expected_rows} staged rows gave warnings (LOCAL turns "
                    f"errors into warnings; refusing to go on): {cursor.fetchall()!r}"
                )
            if loaded != expected_rows:
                raise RuntimeError(f"LOAD DATA loaded {loaded} rows, expected {expected_rows}")
        finally:
            cursor.close()
            os.unlink(path)


def _copy_streamed(job: _CopyJob, *, mysql: bool) -> int:
    """Stream the window with a server-side cursor, ``batch_size`` rows at a time, into
    staging. On MySQL a writer thread sends multi-row INSERTs while the next batch is read
    (the driver releases the GIL while the server works)."""
    staging = schema.STAGING_TABLES[job.table_name]
    business = list(schema.BUSINESS_TABLES[job.table_name].columns)
    query = replica_select(job.table_name, job.lower, job.end)
    writer = (
        _MysqlWriter(job.out, staging, business, job.start, job.end, job.run_id) if mysql else None
    )
    if writer is not None:
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
    columns = ["data_interval_start", "data_interval_end", "row_seq"]
    columns += [c.name for c in business] + ["run_id"]
    insert = sa.insert(staging)
    written = 0
    try:
        with job.replica.connect() as source:
            result = source.execution_options(
                stream_results=True, yield_per=job.batch_size
            ).execute(query)
            for batch_no, batch in enumerate(result.partitions(job.batch_size), start=1):
                if writer is not None:
                    written += writer.send(written, batch)
                else:
                    rows = [
                        (job.start, job.end, written + i, *row, job.run_id)
                        for i, row in enumerate(batch)
                    ]
                    written += bulk_execute(job.out, insert, columns, rows)
                if batch_no % 20 == 0:
                    log.info("%s: %d rows staged so far", job.table_name, written)
    finally:
        if writer is not None:
            writer.close()
    return written


_TIMESTAMP = r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?"
_TIMESTAMP_TEXT = re.compile(_TIMESTAMP)
_TIMESTAMP_LINES = re.compile(rf"{_TIMESTAMP}(?:\n{_TIMESTAMP})*")


def _timestamp_text(value: object) -> str:
    """A timestamp as SQL literal text (no quotes), refusing anything that is not one."""
    if isinstance(value, datetime):
        return value.isoformat(" ")
    text = str(value)
    if not _TIMESTAMP_TEXT.fullmatch(text):
        raise ValueError(f"not a timestamp: {text!r}")
    return text


class _MysqlWriter:
    """Formats batches as multi-row INSERT literals and runs them on a background thread.

    Values are rendered per column type: integers with ``int()``, datetimes as quoted ISO
    text, everything else escaped for the session's SQL mode (see ``_escaper``). Only the
    writer thread (``BackgroundCalls``) touches the connection once started; its errors are
    re-raised by ``send``/``close``.
    """

    def __init__(
        self,
        out: sa.Connection,
        staging: sa.Table,
        business: list[sa.Column[Any]],
        start: datetime,
        end: datetime,
        run_id: str,
    ) -> None:

        from tasks.core.db import MYSQL_MAX_STATEMENT_BYTES

        self._dbapi = out.connection.dbapi_connection
        self._escape = self._escaper(out)
        self._max_bytes = MYSQL_MAX_STATEMENT_BYTES
        names = ", ".join(
            f"`{n}`"
            for n in ["data_interval_start", "data_interval_end", "row_seq"]
            + [c.name for c in business]
            + ["run_id"]
        )
        self._head = f"INSERT INTO `{staging.name}` ({names}) VALUES "
        self._prefix = f"('{start.isoformat(' ')}','{end.isoformat(' ')}',"
        self._suffix = f",{self._text(run_id)})"
        self._formats = [self._formatter(c.type) for c in business]
        # Tables of integers and timestamps only: a row without NULLs renders as Python's
        # tuple text, which is valid SQL here (ints, and timestamp text checked by
        # _timestamp_text's pattern), and ~10x cheaper than formatting value by value.
        self._tuple_text_ok = (
            all(isinstance(c.type, (sa.Integer, sa.DateTime)) for c in business)
            and len(business) > 1
        )
        self._timestamp_columns = [
            i for i, c in enumerate(business) if isinstance(c.type, sa.DateTime)
        ]
        self._cursor = self._dbapi.cursor()
        self._background = BackgroundCalls("staging-writer", depth=3)

    def _text(self, value: object) -> str:
        return "'" + self._escape(str(value)) + "'"

    def _escaper(self, out: sa.Connection) -> Callable[[str], str]:
        """String escaping for literals, decided once from the session's SQL mode.

        Not the connection's ``escape_string``: the writer thread uses that connection
        while this thread formats the next batch. utf8mb4 multi-byte characters never
        contain ASCII bytes, so byte-wise escaping is charset-safe.
        """
        sql_mode = str(out.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar() or "")
        if "NO_BACKSLASH_ESCAPES" in sql_mode:
            return lambda text: text.replace("'", "''")
        from MySQLdb import _mysql

        return lambda text: _mysql.escape_string(text.encode("utf-8")).decode("utf-8")

    def _formatter(self, column_type: sa.types.TypeEngine[Any]) -> Callable[[Any], str]:
        if isinstance(column_type, sa.Integer):
            return lambda v: "NULL" if v is None else str(int(v))
        if isinstance(column_type, sa.DateTime):
            return lambda v: "NULL" if v is None else f"'{_timestamp_text(v)}'"
        return lambda v: "NULL" if v is None else self._text(v)

    def send(self, first_seq: int, batch: Any) -> int:
        """Format one batch (rows numbered from ``first_seq``) and queue its statements."""
        prefix, suffix = self._prefix, self._suffix
        rows = [tuple(row) for row in batch]
        if self._batch_is_plain(rows):
            parts = [
                f"{prefix}{seq},{str(row)[1:-1]}{suffix}"
                for seq, row in enumerate(rows, start=first_seq)
            ]
        else:
            formats = self._formats
            parts = [
                f"{prefix}{seq},{','.join([f(v) for f, v in zip(formats, row, strict=True)])}"
                f"{suffix}"
                for seq, row in enumerate(rows, start=first_seq)
            ]
        start, size = 0, 0
        for index, part in enumerate(parts):
            size += len(part) + 1
            if size >= self._max_bytes:
                self._execute(self._head + ",".join(parts[start : index + 1]))
                start, size = index + 1, 0
        if start < len(parts):
            self._execute(self._head + ",".join(parts[start:]))
        return len(rows)

    def _batch_is_plain(self, rows: list[tuple[Any, ...]]) -> bool:
        """True when every row can be rendered as tuple text: integer columns hold only
        ints, timestamp columns only timestamp text (no NULLs: ``NoneType`` fails both);
        checked column-wise with C-level map/regex calls."""
        if not self._tuple_text_ok or not rows:
            return False
        for i in range(len(rows[0])):
            column = list(map(itemgetter(i), rows))
            if i in self._timestamp_columns:
                if set(map(type, column)) != {str}:
                    return False
                if not _TIMESTAMP_LINES.fullmatch("\n".join(column)):
                    return False
            elif set(map(type, column)) != {int}:
                return False
        return True

    def _execute(self, sql: str) -> None:
        self._background.submit(lambda: self._cursor.execute(sql))

    def close(self) -> None:
        try:
            self._background.close()
        finally:
            self._cursor.close()
