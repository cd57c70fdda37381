"""Bulk writes into MySQL/MariaDB (and SQLite) for the data stages: one escaper, the
LOAD DATA and multi-row INSERT writers, executemany, and the writer thread they share.

How rows travel, fastest first:

* ``LOAD DATA LOCAL INFILE`` of a text file (connection URL with ``local_infile=1``, see
  ``local_infile_enabled``): ``load_data_field`` escapes one value in Python,
  ``load_data_line`` makes a MySQL server render whole rows, ``load_data_file`` loads one
  file and checks it, ``BulkWriter.load_lines`` does that on the writer thread.
* Multi-row ``INSERT`` statements built as SQL text: ``sql_string`` quotes one string,
  ``RowLiterals`` renders rows by column type, ``BulkWriter.insert`` cuts them into
  statements of at most ``MYSQL_MAX_STATEMENT_BYTES`` and runs them on the writer thread.
* ``bulk_execute``: the DB-API ``executemany`` (the driver escapes; on SQLite through
  SQLAlchemy).

One escaper. MySQL reads the same backslash escapes in string literals and in LOAD DATA
fields (``ESCAPED BY '\\\\'``, the default): ``BACKSLASH_ESCAPES`` lists the characters
written that way, and every escaping here (Python or the SQL a replica runs) uses it. A
SQL literal escapes its quote besides; under the SQL mode ``NO_BACKSLASH_ESCAPES`` a literal
only doubles its quote. utf8mb4 multi-byte characters never contain ASCII bytes, so
escaping characters is charset-safe (non-BMP text included).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.sql.expression import Insert

#: Largest multi-row statement sent (bytes for mysqlclient's executemany, characters for
#: ``BulkWriter.insert``); well under the server's ``max_allowed_packet`` (16 MiB default).
MYSQL_MAX_STATEMENT_BYTES = 4 * 1024 * 1024

#: The characters written as a backslash escape, in SQL string literals and in LOAD DATA
#: fields alike, with their escape. Backslash first, so replacing in order never re-escapes.
#: Tab and newline are LOAD DATA's field and line terminators; NUL, CR and Ctrl-Z are the
#: bytes ``mysql_real_escape_string`` escapes too.
BACKSLASH_ESCAPES: tuple[tuple[str, str], ...] = (
    ("\\", "\\\\"),
    ("\x00", "\\0"),
    ("\t", "\\t"),
    ("\n", "\\n"),
    ("\r", "\\r"),
    ("\x1a", "\\Z"),
)
#: SQL NULL in a LOAD DATA field (the text ``\N`` itself is escaped to ``\\N``).
LOAD_DATA_NULL = "\\N"

_LITERAL_ESCAPES = (*BACKSLASH_ESCAPES, ("'", "\\'"))


def _special(pairs: Sequence[tuple[str, str]]) -> re.Pattern[str]:
    return re.compile("[" + "".join(re.escape(raw) for raw, _ in pairs) + "]")


_LOAD_DATA_SPECIAL = _special(BACKSLASH_ESCAPES)
_LITERAL_SPECIAL = _special(_LITERAL_ESCAPES)


def _escape(text: str, special: re.Pattern[str], pairs: Sequence[tuple[str, str]]) -> str:
    # most values hold nothing special: one regex scan, then a replace per character present
    if special.search(text) is None:
        return text
    for raw, escaped in pairs:
        if raw in text:
            text = text.replace(raw, escaped)
    return text


def load_data_field(value: str | None) -> str:
    """One text value as a LOAD DATA field (``None``: SQL NULL, ``\\N``)."""
    if value is None:
        return LOAD_DATA_NULL
    return _escape(value, _LOAD_DATA_SPECIAL, BACKSLASH_ESCAPES)


def sql_string(value: str, *, no_backslash_escapes: bool = False) -> str:
    """``value`` as a quoted SQL string literal for a session with or without the SQL mode
    ``NO_BACKSLASH_ESCAPES`` (there only the quote is special, written twice)."""
    if no_backslash_escapes:
        return "'" + value.replace("'", "''") + "'"
    return "'" + _escape(value, _LITERAL_SPECIAL, _LITERAL_ESCAPES) + "'"


def session_has_no_backslash_escapes(conn: sa.Connection) -> bool:
    """True when the MySQL session's ``sql_mode`` has ``NO_BACKSLASH_ESCAPES`` (backslash is
    then an ordinary character in literals, and the LOAD DATA clauses here cannot be spelled)."""
    sql_mode = str(conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar() or "")
    return "NO_BACKSLASH_ESCAPES" in sql_mode


def local_infile_enabled(url: sa.URL | str) -> bool:
    """True when a MySQL URL asks the driver for ``LOAD DATA LOCAL INFILE`` (``local_infile``
    = 1/true in its query, as written by hand or by an Airflow MySQL connection's extra)."""
    value = sa.make_url(url).query.get("local_infile", "0")
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def load_data_line(table: sa.Table | sa.Subquery) -> sa.ColumnElement[str]:
    """One row of ``table`` as a LOAD DATA text line, rendered by a MySQL server (the
    replica), so Python handles one string per row instead of typed values.

    Fields are tab-separated; NULL is ``\\N``; text values are escaped by
    ``BACKSLASH_ESCAPES`` like ``load_data_field``. Numbers and timestamps print as MySQL
    casts them to text, which LOAD DATA parses back exactly.
    """
    fields = []
    for column in table.columns:
        value: sa.ColumnElement[Any] = column
        if isinstance(column.type, (sa.String, sa.Text)):
            for raw, escaped in BACKSLASH_ESCAPES:
                value = sa.func.replace(value, sa.literal(raw), sa.literal(escaped))
        elif not isinstance(column.type, (sa.Integer, sa.DateTime)):
            raise ValueError(
                f"no LOAD DATA text form for {table.name}.{column.name}: {column.type}"
            )
        fields.append(sa.func.ifnull(value, sa.literal(LOAD_DATA_NULL)))
    return sa.func.concat_ws(sa.literal("\t"), *fields, type_=sa.Text)


class BulkLoadError(RuntimeError):
    """``LOAD DATA`` read another number of lines than written, or gave warnings (LOCAL turns
    errors such as duplicate keys or truncated values into warnings)."""


@dataclass(frozen=True)
class LoadDataTarget:
    """Where and how a LOAD DATA file goes: ``table``'s ``columns`` in file order (user
    variables ``@name`` allowed), ``duplicates`` (``None``: a duplicate key is an error;
    ``IGNORE`` keeps the old row; ``REPLACE`` the new one), and an optional ``SET`` clause."""

    table: str
    columns: tuple[str, ...]
    duplicates: Literal["IGNORE", "REPLACE"] | None = None
    set_clause: str = ""

    def statement(self, path: str) -> str:
        """The ``LOAD DATA LOCAL INFILE`` statement for the file ``path`` (tab-separated
        fields, newline-terminated lines, backslash escapes, utf8mb4)."""
        if "'" in path or "\\" in path:
            raise ValueError(f"path not usable in LOAD DATA: {path!r}")
        columns = ", ".join(c if c.startswith("@") else f"`{c}`" for c in self.columns)
        duplicates = f" {self.duplicates}" if self.duplicates else ""
        sql = (
            f"LOAD DATA LOCAL INFILE '{path}'{duplicates} INTO TABLE `{self.table}` "
            "CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' "
            f"LINES TERMINATED BY '\\n' ({columns})"
        )
        return f"{sql} SET {self.set_clause}" if self.set_clause else sql


_LOAD_INFO = re.compile(r"Records: (\d+)\s+Deleted: (\d+)\s+Skipped: (\d+)\s+Warnings: (\d+)")


def load_data_file(
    dbapi_connection: Any,
    path: str,
    target: LoadDataTarget,
    *,
    expected_rows: int | None = None,
) -> int:
    """Run ``LOAD DATA LOCAL INFILE`` of ``path`` on a mysqlclient connection (inside its
    current transaction) and check it; returns the affected row count.

    Raises ``BulkLoadError`` when the server read another number of lines than
    ``expected_rows``, or gave a warning other than one per duplicate skipped by ``IGNORE``
    (LOCAL turns errors into warnings: refusing to go on is the only safe reading).
    """
    cursor = dbapi_connection.cursor()
    try:
        affected = int(cursor.execute(target.statement(path)))
        info = _LOAD_INFO.search(str(dbapi_connection.info() or ""))
        if info is not None:
            records, _deleted, skipped, warnings = map(int, info.groups())
        else:  # no info string: judge by the affected rows and the warning count
            records, skipped, warnings = affected, 0, int(dbapi_connection.warning_count())
        allowed = skipped if target.duplicates == "IGNORE" else 0
        if warnings > allowed:
            cursor.execute("SHOW WARNINGS LIMIT 5")
            raise BulkLoadError(
                f"LOAD DATA into {target.table} of {records} rows gave {warnings} warnings "
                f"(LOCAL turns errors into warnings; refusing to go on): {cursor.fetchall()!r}"
            )
        if expected_rows is not None and records != expected_rows:
            raise BulkLoadError(
                f"LOAD DATA into {target.table} read {records} rows, expected {expected_rows}"
            )
        if target.duplicates is None and affected != records:
            raise BulkLoadError(
                f"LOAD DATA into {target.table} loaded {affected} rows of {records}"
            )
        return affected
    finally:
        cursor.close()


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


class RowLiterals:
    """Renders rows as the value tuples of a multi-row INSERT, by column type: integers
    with ``int()``, datetimes (or timestamp text) as quoted timestamps, everything else as
    ``sql_string`` for the session's SQL mode; ``None`` is ``NULL``.

    Rows of integers and timestamps only, without NULLs, render as Python's tuple text,
    which is valid SQL here (ints, and timestamp text checked by a pattern) and ~10x
    cheaper than formatting value by value.
    """

    def __init__(
        self, types: Sequence[sa.types.TypeEngine[Any]], *, no_backslash_escapes: bool = False
    ) -> None:
        self._no_backslash_escapes = no_backslash_escapes
        self._formats = [self._formatter(t) for t in types]
        self._tuple_text_ok = (
            all(isinstance(t, (sa.Integer, sa.DateTime)) for t in types) and len(types) > 1
        )
        self._timestamp_columns = {i for i, t in enumerate(types) if isinstance(t, sa.DateTime)}

    def _formatter(self, column_type: sa.types.TypeEngine[Any]) -> Callable[[Any], str]:
        if isinstance(column_type, sa.Integer):
            return lambda v: "NULL" if v is None else str(int(v))
        if isinstance(column_type, sa.DateTime):
            return lambda v: "NULL" if v is None else f"'{_timestamp_text(v)}'"
        quote = self._no_backslash_escapes
        return lambda v: "NULL" if v is None else sql_string(str(v), no_backslash_escapes=quote)

    def literal(self, value: object, column_type: sa.types.TypeEngine[Any]) -> str:
        """One value as SQL literal text, rendered as a column of ``column_type`` would be."""
        return self._formatter(column_type)(value)

    def render(
        self, rows: Sequence[Sequence[Any]], *, lead: str = "", number_from: int | None = None
    ) -> list[str]:
        """Each row as ``(<lead><n>,<values>)``: ``lead`` is literal text for leading
        constant columns (ending in a comma), ``n`` a running row number from
        ``number_from`` (left out when ``None``)."""
        prefix = "(" + lead
        rows = [tuple(row) for row in rows]
        if self._batch_is_plain(rows):
            if number_from is None:
                return [f"{prefix}{str(row)[1:-1]})" for row in rows]
            return [
                f"{prefix}{seq},{str(row)[1:-1]})"
                for seq, row in enumerate(rows, start=number_from)
            ]
        formats = self._formats
        if number_from is None:
            return [
                f"{prefix}{','.join([f(v) for f, v in zip(formats, row, strict=True)])})"
                for row in rows
            ]
        return [
            f"{prefix}{seq},{','.join([f(v) for f, v in zip(formats, row, strict=True)])})"
            for seq, row in enumerate(rows, start=number_from)
        ]

    def _batch_is_plain(self, rows: list[tuple[Any, ...]]) -> bool:
        """True when every row can be rendered as tuple text: integer columns hold only
        ints, timestamp columns only timestamp text (no NULLs: ``NoneType`` fails both);
        checked column-wise with C-level map/regex calls."""
        if not self._tuple_text_ok or not rows:
            return False
        for i in range(len(self._formats)):
            column = list(map(itemgetter(i), rows))
            if i in self._timestamp_columns:
                if set(map(type, column)) != {str}:
                    return False
                if not _TIMESTAMP_LINES.fullmatch("\n".join(column)):
                    return False
            elif set(map(type, column)) != {int}:
                return False
        return True


def insert_statements(
    head: str, parts: Sequence[str], max_bytes: int = MYSQL_MAX_STATEMENT_BYTES
) -> Iterator[str]:
    """``head`` (``INSERT ... VALUES ``) followed by the value tuples ``parts``, cut into
    statements of about ``max_bytes`` characters (one tuple more at most)."""
    start, size = 0, 0
    for index, part in enumerate(parts):
        size += len(part) + 1
        if size >= max_bytes:
            yield head + ",".join(parts[start : index + 1])
            start, size = index + 1, 0
    if start < len(parts):
        yield head + ",".join(parts[start:])


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


class BulkWriter:
    """Bulk statements on one mysqlclient connection, run in order on a background thread
    (``BackgroundCalls``) while the caller reads or formats the next batch.

    Once started only the writer thread touches the connection; the statements join the
    connection's current transaction. As a context manager it waits for every statement on
    a clean exit (re-raising the thread's first error) and drops the queued ones when the
    block raised. LOAD DATA files go to a private temp folder and are deleted once loaded.
    """

    def __init__(
        self,
        dbapi_connection: Any,
        *,
        name: str = "bulk-writer",
        depth: int = 2,
        max_bytes: int = MYSQL_MAX_STATEMENT_BYTES,
    ) -> None:
        self._connection = dbapi_connection
        self._max_bytes = max_bytes
        self._cursor = dbapi_connection.cursor()
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._files = 0
        self._background = BackgroundCalls(name, depth=depth)

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.close(cancel=exc_type is not None)

    def execute(self, sql: str) -> None:
        """Queue one statement."""
        cursor = self._cursor
        self._background.submit(lambda: cursor.execute(sql))

    def insert(self, head: str, parts: Sequence[str]) -> None:
        """Queue ``head`` + the value tuples ``parts`` (``RowLiterals.render``) as multi-row
        statements of at most ``max_bytes``."""
        for sql in insert_statements(head, parts, self._max_bytes):
            self.execute(sql)

    def load_lines(
        self, lines: Sequence[str], target: LoadDataTarget, *, number_from: int | None = None
    ) -> None:
        """Write ``lines`` (LOAD DATA text, no line ends) to a file here and queue its load
        (checked by ``load_data_file`` for exactly ``len(lines)`` rows). ``number_from``
        puts a running row number first on each line."""
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="bulk-load-")
        self._files += 1
        path = os.path.join(self._folder.name, f"{self._files}.tsv")
        if number_from is None:
            text = "\n".join(lines)
        else:
            numbered = zip(range(number_from, number_from + len(lines)), lines, strict=True)
            text = "\n".join(map("%d\t%s".__mod__, numbered))
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.write("\n")
        expected = len(lines)
        self._background.submit(lambda: self._load(path, target, expected))

    def _load(self, path: str, target: LoadDataTarget, expected_rows: int) -> None:
        try:
            load_data_file(self._connection, path, target, expected_rows=expected_rows)
        finally:
            os.unlink(path)

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the queued statements (``cancel``: drop them), then free the cursor."""
        try:
            self._background.close(cancel=cancel)
        finally:
            self._cursor.close()
            if self._folder is not None:
                self._folder.cleanup()


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
    ``executemany`` of ``INSERT``/``REPLACE ... VALUES`` into multi-row statements (it
    escapes the values itself). Values must be plain Python objects (call ``.tolist()`` on
    numpy arrays). Runs inside the caller's transaction. Returns the number of rows sent.
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
    # bytes (64 KiB by default); bigger statements mean far fewer round trips.
    if hasattr(cursor, "max_stmt_length"):
        cursor.max_stmt_length = MYSQL_MAX_STATEMENT_BYTES
    try:
        cursor.executemany(str(compiled), rows)
    finally:
        cursor.close()
    return len(rows)
