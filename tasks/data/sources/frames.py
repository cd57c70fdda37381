"""Business frames (users, illusts, interactions, follows) and their atomic write to a replica.

The generator (``tasks.data.sources.generate``) and the MovieLens loaders (``tasks.data.sources.loaders``) both produce a
:class:`BusinessFrames`; :func:`write_business_frames` publishes it to the business replica
(an embedded SQLite file or a MySQL/MariaDB database) so that readers see either the old
contents or the new ones, never a mix:

* SQLite: the tables are written to a NEW file next to the target, row counts are verified,
  then ``os.replace`` swaps it over the target (a crash leaves the old file untouched).
* MySQL/MariaDB: the tables are loaded into ``<table>__new`` copies, verified, then swapped in
  with one ``RENAME TABLE`` statement (atomic in InnoDB); the old copies are dropped after.

Two replacing writers must not run at once against one MySQL database (they would share the
``__new`` staging tables); the pipeline only ever seeds a replica from one place.

``replace=False`` appends in one transaction instead (for streaming big data sets in chunks);
appending is not idempotent by nature, replacing is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.core.schema import BUSINESS_TABLES, create_business_schema
from tasks.data.bulk import LOAD_DATA_NULL, LoadDataTarget, load_data_field, load_data_file
from tasks.data.bulk import BulkLoadError as BulkLoadError  # what load_data=True raises

log = get_logger("datasets")

TABLE_ORDER: tuple[str, ...] = ("users", "illusts", "interactions", "follows")
BUSINESS_COLUMNS: dict[str, list[str]] = {
    name: [column.name for column in table.columns] for name, table in BUSINESS_TABLES.items()
}
TIME_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("create_time",),
    "illusts": ("create_time", "update_time"),
    "interactions": ("create_time",),
    "follows": ("create_time",),
}
DEFAULT_CHUNK_ROWS = 10_000

#: Key/value facts about the data set in the replica, written with the four tables by
#: :func:`write_business_frames` (``recsys-data load`` records the data set's earliest time
#: there, since MovieLens predates ``RECSYS_SITE_LAUNCH``); read by
#: :func:`read_replica_meta`. Not a business table: extraction never reads it.
REPLICA_META = sa.Table(
    "replica_meta",
    sa.MetaData(),
    sa.Column("meta_key", sa.String(64), primary_key=True),
    sa.Column("meta_value", sa.String(255), nullable=False),
)


@dataclass
class BusinessFrames:
    """The four business tables as DataFrames with exactly the replica's columns.

    Timestamps are naive UTC ``datetime64`` columns; ``tags`` holds a JSON string.
    """

    users: pd.DataFrame
    illusts: pd.DataFrame
    interactions: pd.DataFrame
    follows: pd.DataFrame
    #: Facts about the data set that readers need (``replica_meta`` rows), e.g. the
    #: ``data_launch`` bound validation reads; replacing the replica replaces them too.
    meta: dict[str, str] = field(default_factory=dict)

    def frame(self, table_name: str) -> pd.DataFrame:
        """The frame of ``table_name`` (one of ``TABLE_ORDER``)."""
        if table_name not in TABLE_ORDER:
            raise ValueError(
                f"unknown business table {table_name!r}; expected one of {TABLE_ORDER}"
            )
        frame: pd.DataFrame = getattr(self, table_name)
        return frame

    def validate_columns(self) -> None:
        """Raise ``ValueError`` naming the table and columns when a frame's columns differ
        from the business schema, or when a time column is not naive datetime64."""
        for name in TABLE_ORDER:
            frame = self.frame(name)
            if not isinstance(frame, pd.DataFrame):
                raise ValueError(f"{name}: expected a pandas DataFrame, got {type(frame).__name__}")
            expected = BUSINESS_COLUMNS[name]
            actual = [str(c) for c in frame.columns]
            missing = [c for c in expected if c not in actual]
            extra = [c for c in actual if c not in expected]
            if missing or extra or len(actual) != len(expected):
                raise ValueError(
                    f"{name}: columns {actual} do not match the business schema {expected} "
                    f"(missing {missing}, extra {extra})"
                )
            for column in TIME_COLUMNS[name]:
                dtype = frame[column].dtype
                if not pd.api.types.is_datetime64_dtype(dtype) or getattr(dtype, "tz", None):
                    raise ValueError(
                        f"{name}.{column}: expected naive UTC datetime64, got dtype {dtype}"
                    )

    def row_counts(self) -> dict[str, int]:
        """Rows per table, in ``TABLE_ORDER``."""
        return {name: len(self.frame(name)) for name in TABLE_ORDER}

    def summary(self) -> str:
        """One line of row counts, e.g. ``users=10 illusts=20 interactions=300 follows=4``."""
        return " ".join(f"{name}={count}" for name, count in self.row_counts().items())


def empty_frame(table_name: str) -> pd.DataFrame:
    """An empty frame with the columns (and datetime dtypes) of a business table."""
    frame = pd.DataFrame(
        {column: pd.Series(dtype="int64") for column in BUSINESS_COLUMNS[table_name]}
    )
    for column in TIME_COLUMNS[table_name]:
        frame[column] = pd.Series(dtype="datetime64[ns]")
    if "tags" in frame.columns:
        frame["tags"] = pd.Series(dtype=object)
    if "username" in frame.columns:
        frame["username"] = pd.Series(dtype=object)
    return frame


def _column_values(series: pd.Series) -> list[Any]:
    """Plain Python values for the DB driver: ints, strs, datetimes, None for missing."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        # datetime64[us] -> object gives datetime.datetime (NaT -> None) without a Python loop.
        values: list[Any] = series.to_numpy().astype("datetime64[us]").astype(object).tolist()
        return values
    if pd.api.types.is_integer_dtype(series.dtype) and not series.hasnans:
        return series.tolist()
    if pd.api.types.is_float_dtype(series.dtype):
        # Integer columns with missing values arrive as float: keep whole numbers as ints.
        return [None if pd.isna(v) else (int(v) if float(v).is_integer() else v) for v in series]
    return [None if pd.isna(v) else v for v in series.astype(object)]


def iter_row_chunks(
    frame: pd.DataFrame, columns: Sequence[str], chunk_rows: int
) -> Iterator[list[tuple[Any, ...]]]:
    """Yield the rows of ``frame[columns]`` as lists of tuples, ``chunk_rows`` at a time."""
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    for start in range(0, len(frame), chunk_rows):
        part = frame.iloc[start : start + chunk_rows]
        yield list(zip(*(_column_values(part[c]) for c in columns), strict=True))


def _bulk_insert(conn: sa.Connection, table: sa.Table, frame: pd.DataFrame, chunk_rows: int) -> int:
    """executemany in chunks through the raw driver (mysqlclient rewrites it to multi-row
    INSERTs); returns the rows written."""
    if frame.empty:
        return 0
    columns = [c.name for c in table.columns]
    sql = str(sa.insert(table).compile(dialect=conn.dialect))
    written = 0
    started = time.monotonic()
    for index, rows in enumerate(iter_row_chunks(frame, columns, chunk_rows), start=1):
        conn.exec_driver_sql(sql, rows)
        written += len(rows)
        if index % 20 == 0:
            log.info(
                "%s: %d/%d rows written (%.0f rows/s)",
                table.name,
                written,
                len(frame),
                written / max(time.monotonic() - started, 1e-9),
            )
    return written


def _count_rows(conn: sa.Connection, table: sa.Table) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _check_counts(counts: dict[str, int], expected: dict[str, int], where: str) -> None:
    if counts != expected:
        raise RuntimeError(f"{where}: row counts {counts} differ from the frames {expected}")


def _sqlite_path(url: sa.URL) -> Path:
    database = url.database
    if not database or database == ":memory:":
        raise ValueError(f"cannot publish atomically to an in-memory SQLite URL {url!s}")
    return Path(database)


def _write_sqlite_replace(frames: BusinessFrames, url: sa.URL, chunk_rows: int) -> dict[str, int]:
    """Write a new SQLite file next to the target, verify it, then os.replace it over."""
    target = _sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    expected = frames.row_counts()
    engine = sa.create_engine(f"sqlite:///{tmp_path}")
    try:
        create_business_schema(engine)
        with engine.begin() as conn:
            for name in TABLE_ORDER:
                written = _bulk_insert(conn, BUSINESS_TABLES[name], frames.frame(name), chunk_rows)
                log.info("%s: %d rows written to %s", name, written, tmp_path.name)
            if frames.meta:  # a fresh file: no table means no meta
                _write_meta(conn, REPLICA_META, frames.meta)
        with engine.connect() as conn:
            counts = {name: _count_rows(conn, BUSINESS_TABLES[name]) for name in TABLE_ORDER}
        _check_counts(counts, expected, str(tmp_path))
        engine.dispose()
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        _checkpoint_sqlite_wal(target)
        os.replace(tmp_path, target)
        with contextlib.suppress(FileNotFoundError):
            # The old file's (checkpointed, empty) WAL must not be replayed into the new one.
            for suffix in ("-wal", "-shm"):
                Path(f"{target}{suffix}").unlink()
    except BaseException:
        engine.dispose()
        tmp_path.unlink(missing_ok=True)
        raise
    _forget_cached_engine(str(url))
    log.info("published %s over %s", {k: counts[k] for k in TABLE_ORDER}, target)
    return counts


def _checkpoint_sqlite_wal(target: Path) -> None:
    """Fold the target's WAL into its main file so nothing of it is lost or mis-applied."""
    if not Path(f"{target}-wal").exists():
        return
    engine = sa.create_engine(f"sqlite:///{target}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()


def _forget_cached_engine(url: str) -> None:
    """Close pooled connections of both cached engines for ``url`` (``tasks.core.db``) so
    readers and read-only readers reopen the new file."""
    from tasks.core.db import get_engine, get_read_only_engine

    get_engine(url).dispose()
    if url.startswith(("sqlite", "mysql", "mariadb")):
        get_read_only_engine(url).dispose()


def _new_table(table: sa.Table, name: str) -> sa.Table:
    """A copy of ``table`` named ``name`` (index names are per table in MySQL)."""
    return table.to_metadata(sa.MetaData(), name=name)


def _tsv_column(series: pd.Series) -> pd.Series:
    """One column as MySQL ``LOAD DATA`` text: ``\\N`` for NULL, strings escaped by
    ``tasks.data.bulk.load_data_field``."""
    missing = series.isna()
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        text = series.dt.strftime("%Y-%m-%d %H:%M:%S")  # DATETIME(0): whole seconds
    elif pd.api.types.is_integer_dtype(series.dtype):
        text = series.astype(str)
    elif pd.api.types.is_float_dtype(series.dtype):
        text = series.map(
            lambda v: str(int(v)) if float(v).is_integer() else repr(v), na_action="ignore"
        )
    else:
        text = series.astype(object).map(lambda v: load_data_field(str(v)), na_action="ignore")
    return text.astype(object).where(~missing, LOAD_DATA_NULL)


def _load_data_local(
    conn: sa.Connection, table: sa.Table, frame: pd.DataFrame, folder: Path
) -> int:
    """``LOAD DATA LOCAL INFILE`` of ``frame`` into ``table``; any warning aborts.

    Needs ``local_infile`` on the server and ``?local_infile=1`` in the URL. With LOCAL, MySQL
    skips duplicate keys with a warning instead of failing, so ``load_data_file`` treats
    warnings as errors (``BulkLoadError``).
    """
    if frame.empty:
        return 0
    columns = [c.name for c in table.columns]
    path = folder / f"{table.name}.tsv"
    lines = _tsv_column(frame[columns[0]])
    for column in columns[1:]:
        lines = lines + "\t" + _tsv_column(frame[column])
    path.write_text("\n".join(lines.tolist()) + "\n", encoding="utf-8", newline="\n")
    written = load_data_file(
        conn.connection.dbapi_connection,
        path.as_posix(),
        LoadDataTarget(table.name, tuple(columns)),
        expected_rows=len(frame),
    )
    path.unlink()
    return written


def _write_mysql_replace(
    frames: BusinessFrames, url: str, chunk_rows: int, *, load_data: bool = False
) -> dict[str, int]:
    """Load ``<t>__new`` tables, verify, then swap them in with one RENAME TABLE."""
    from tasks.core.db import get_engine

    engine = get_engine(url)
    create_business_schema(engine)
    suffix = "__new"
    new_tables = {name: _new_table(BUSINESS_TABLES[name], name + suffix) for name in TABLE_ORDER}
    expected = frames.row_counts()
    try:
        with engine.begin() as conn:
            for table in new_tables.values():
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{table.name}`")
                # Secondary indexes are built after the load: one sorted build is much
                # faster than maintaining them row by row.
                conn.execute(sa.schema.CreateTable(table))
        for name in TABLE_ORDER:
            with engine.begin() as conn:
                if load_data:
                    with tempfile.TemporaryDirectory(prefix="recsys-load-") as folder:
                        written = _load_data_local(
                            conn, new_tables[name], frames.frame(name), Path(folder)
                        )
                else:
                    written = _bulk_insert(conn, new_tables[name], frames.frame(name), chunk_rows)
            log.info("%s: %d rows written to %s", name, written, new_tables[name].name)
        with engine.begin() as conn:
            for table in new_tables.values():
                for index in sorted(table.indexes, key=lambda i: i.name or ""):
                    index.create(conn)
            counts = {name: _count_rows(conn, new_tables[name]) for name in TABLE_ORDER}
        _check_counts(counts, expected, "new tables")
        # replica_meta is swapped with the tables when there is meta to write or old meta to
        # replace; a replica that never had meta keeps exactly the four business tables.
        meta_new = _new_table(REPLICA_META, REPLICA_META.name + suffix)
        with engine.begin() as conn:
            with_meta = bool(frames.meta) or sa.inspect(conn).has_table(REPLICA_META.name)
            if with_meta:
                REPLICA_META.create(conn, checkfirst=True)
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{meta_new.name}`")
                _write_meta(conn, meta_new, frames.meta)
        swapped = (*TABLE_ORDER, REPLICA_META.name) if with_meta else TABLE_ORDER
        renames = []
        for name in swapped:
            renames.append(f"`{name}` TO `{name}__old`")
            renames.append(f"`{name}{suffix}` TO `{name}`")
        with engine.begin() as conn:
            for name in swapped:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}__old`")
            conn.exec_driver_sql("RENAME TABLE " + ", ".join(renames))
            for name in swapped:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}__old`")
    except BaseException:
        try:
            with engine.begin() as conn:
                for table in new_tables.values():
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{table.name}`")
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{REPLICA_META.name}{suffix}`")
        except Exception:  # keep the original error; staging tables are dropped next run
            log.exception("could not drop staging tables %s", [t.name for t in new_tables.values()])
        raise
    log.info("published %s into %s", counts, engine.url.render_as_string(hide_password=True))
    return counts


def _write_append(frames: BusinessFrames, url: str, chunk_rows: int) -> dict[str, int]:
    """Append every table in one transaction: all chunks land, or none."""
    from tasks.core.db import get_engine

    engine = get_engine(url)
    create_business_schema(engine)
    written: dict[str, int] = {}
    with engine.begin() as conn:
        for name in TABLE_ORDER:
            written[name] = _bulk_insert(
                conn, BUSINESS_TABLES[name], frames.frame(name), chunk_rows
            )
    log.info("appended %s to %s", written, engine.url.render_as_string(hide_password=True))
    return written


def write_business_frames(
    frames: BusinessFrames,
    replica_url: str,
    *,
    replace: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    load_data: bool = False,
) -> dict[str, int]:
    """Publish ``frames`` to the business replica at ``replica_url`` atomically.

    ``replace=True`` (default) makes the four tables hold exactly ``frames`` (idempotent);
    ``replace=False`` appends them in one transaction. Returns rows per table (the verified
    table counts when replacing, rows appended otherwise). ``load_data=True`` (MySQL/MariaDB,
    replacing, URL with ``local_infile=1``) bulk-loads with ``LOAD DATA LOCAL INFILE``: several
    times faster for seeding millions of rows; any load warning aborts the publish.
    """
    frames.validate_columns()
    url = sa.make_url(replica_url)
    backend = url.get_backend_name()
    log.info(
        "writing %s to %s (replace=%s)",
        frames.summary(),
        url.render_as_string(hide_password=True),
        replace,
    )
    shown = url.render_as_string(hide_password=True)
    if backend not in ("sqlite", "mysql", "mariadb"):
        raise ValueError(f"unsupported replica backend {backend!r} in {shown!r}")
    if load_data and (backend == "sqlite" or not replace):
        raise ValueError(
            f"load_data=True needs a MySQL/MariaDB replica and replace=True, got {shown!r}, "
            f"replace={replace}"
        )
    if not replace:
        return _write_append(frames, replica_url, chunk_rows)
    if backend == "sqlite":
        return _write_sqlite_replace(frames, url, chunk_rows)
    return _write_mysql_replace(frames, replica_url, chunk_rows, load_data=load_data)


def _write_meta(conn: sa.Connection, table: sa.Table, meta: dict[str, str]) -> None:
    """Create ``table`` (a ``replica_meta`` copy) if needed and fill it with ``meta``."""
    table.create(conn, checkfirst=True)
    if meta:
        conn.execute(
            table.insert(), [{"meta_key": k, "meta_value": str(v)} for k, v in meta.items()]
        )


def read_replica_meta(replica_url: str) -> dict[str, str]:
    """The replica's ``replica_meta`` rows as a dict; empty when the table does not exist
    (a replica written before it existed, or by another tool)."""
    from tasks.core.db import get_read_only_engine

    engine = get_read_only_engine(replica_url)
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(REPLICA_META.name):
            return {}
        rows = conn.execute(sa.select(REPLICA_META.c.meta_key, REPLICA_META.c.meta_value))
        return {str(k): str(v) for k, v in rows}


def read_business_counts(replica_url: str) -> dict[str, int]:
    """Rows per business table at ``replica_url`` (for summaries and checks)."""
    from tasks.core.db import get_read_only_engine

    engine = get_read_only_engine(replica_url)
    with engine.connect() as conn:
        return {name: _count_rows(conn, BUSINESS_TABLES[name]) for name in TABLE_ORDER}
