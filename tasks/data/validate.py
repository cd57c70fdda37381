"""Validate one data interval's staged rows with Great Expectations, quarantine bad rows,
upsert good rows into the mirror tables.

Suites: ``expectations/<table>.json`` (GX suite JSON; each expectation's ``meta.severity`` is
``fail`` or ``warn``), plus range expectations derived from ``tasks.data.sources.generate.FIELD_RANGES``
(the generator draws inside the same ranges) and a max-length expectation per sized string
column of the mirror table, derived from ``tasks.core.schema`` (a value its ``String(255)``
cannot hold is quarantined, with the column, the limit and the row's length as the reason).
Each checkpoint run is named ``<Airflow run id>__<table>`` in GX's results and Data Docs. Suite parameters ``site_launch`` and
``interval_end`` make "no create_time before launch or in the future" relative to the data
interval, never to now(); the launch is ``RECSYS_SITE_LAUNCH`` or, when earlier, the loaded data
set's own earliest time that ``recsys-data load`` recorded in the replica (:func:`launch_bound`).
A failure names its row count, the offending values with their counts and example rows.

Columns GX cannot compute row by row are derived before validation and checked like any other
column: ``key_count`` (rows sharing the table's key in the interval, a SQL window count, so
duplicates are found across chunks), ``user_known`` / ``illust_known`` (the reference exists
in the mirror, which already holds this interval's good users and illusts because tables are
validated in the order users, illusts, follows, interactions) and ``tags_checked`` (``tags``
where it parses as JSON, else null, so the JSON-schema expectation does not crash on text that
``expect_column_values_to_be_json_parseable`` already reports).

Per table and interval, in one recsys-DB transaction:

* rows failing a ``fail`` expectation go to ``quarantine`` (one row per row key and
  expectation; ``INSERT IGNORE`` on the unique key, so re-runs add nothing);
* every other row is upserted into ``mirror_<table>`` (``REPLACE INTO`` by primary key);
  ``warn`` failures are logged and reported, the rows still reach the mirror;
* quarantine rows of this table and interval that no longer fail get ``resolved_run_id`` set
  (rows are kept as an audit log; a row failing again is re-opened).

Then, if any ``fail`` expectation failed, ``DataValidationError`` is raised naming the
expectation, its unexpected count and example rows. Re-running after the replica is fixed
(extract, then validate again) lets the rows through and resolves their quarantine entries.
Data Docs are rebuilt by each checkpoint run; the index path is in the result.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tasks.core import schema
from tasks.core.common import StageResult, check_interval, get_logger, to_naive_utc
from tasks.core.db import get_engine, insert_ignore, replace_into
from tasks.core.settings import REPO_ROOT, Settings
from tasks.data.bulk import bulk_execute

log = get_logger("validate")

EXPECTATIONS_DIR = REPO_ROOT / "expectations"
#: Dimensions first: interactions and follows are checked against the mirror they fill.
VALIDATION_ORDER: tuple[str, ...] = ("users", "illusts", "follows", "interactions")
#: Columns identifying a row (the mirror's primary key; interactions add the label to the
#: quarantine key so conflicting duplicates are kept apart).
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("user_id",),
    "illusts": ("illust_id",),
    "follows": ("user_id", "artist_id"),
    "interactions": ("user_id", "illust_id", "create_time"),
}
SEVERITIES = ("fail", "warn")
EXAMPLES_PER_FAILURE = 3


class DataValidationError(RuntimeError):
    """A fail-severity expectation failed; bad rows are already quarantined."""

    def __init__(self, message: str, failures: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.failures = failures


@dataclass(frozen=True)
class ValidationResult(StageResult):
    """Per-table row counts, failed expectations (with severity) and the Data Docs index."""

    run_id: str
    interval_start: datetime
    interval_end: datetime
    rows_read: dict[str, int]
    rows_to_mirror: dict[str, int]
    rows_quarantined: dict[str, int]
    failures: list[dict[str, Any]] = field(default_factory=list)
    data_docs: str = ""
    success: bool = True
    seconds: float = 0.0


def _range_expectations(table_name: str) -> list[dict[str, Any]]:
    try:
        from tasks.data.sources.generate import FIELD_RANGES
    except ImportError:  # pragma: no cover - generator is part of the project
        return []
    out: list[dict[str, Any]] = []
    for column, spec in FIELD_RANGES.get(table_name, {}).items():
        if "values" in spec:
            out.append(
                {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": column, "value_set": list(spec["values"])},
                    "meta": {"severity": "fail", "description": f"{column} in {spec['values']}"},
                }
            )
        else:
            kwargs: dict[str, Any] = {"column": column}
            if "min" in spec:
                kwargs["min_value"] = spec["min"]
            if "max" in spec:
                kwargs["max_value"] = spec["max"]
            out.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": kwargs,
                    "meta": {
                        "severity": "fail",
                        "description": f"{column} in [{spec.get('min')}, {spec.get('max')}]",
                    },
                }
            )
    return out


LENGTH_EXPECTATION = "expect_column_value_lengths_to_be_between"
#: Longest string kept whole in a quarantine row's JSON / in an error example; longer ones
#: (a 10 MB username) are cut with their length noted, so reports and ``quarantine.row_json``
#: (a TEXT column) stay bounded. The full row stays in the staging table.
ROW_JSON_MAX_CHARS = 4096
EXAMPLE_MAX_CHARS = 200


def _length_expectations(table_name: str) -> list[dict[str, Any]]:
    """One max-length expectation per sized string column of the table's mirror.

    Derived from ``tasks.core.schema`` (the one definition of the column sizes), so a value
    the mirror column cannot hold (``String(255)``) is quarantined, not truncated or failed
    at load time.
    """
    mirror = schema.MIRROR_TABLES[table_name]
    out: list[dict[str, Any]] = []
    for column in mirror.columns:
        length = getattr(column.type, "length", None)
        if isinstance(column.type, sa.String) and length:
            out.append(
                {
                    "type": LENGTH_EXPECTATION,
                    "kwargs": {"column": column.name, "max_value": int(length)},
                    "meta": {
                        "severity": "fail",
                        "description": f"{column.name} longer than {length} characters "
                        f"({mirror.name}.{column.name} is String({length}))",
                    },
                }
            )
    return out


def _clip(value: Any, limit: int) -> Any:
    """``value`` with strings over ``limit`` characters cut and their length noted."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}...[{len(value)} chars]"
    return value


def load_suite_dict(table_name: str, expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, Any]:
    """The suite for ``table_name``: ``expectations/<table>.json`` + FIELD_RANGES ranges +
    max lengths of the mirror's sized string columns."""
    if table_name not in KEY_COLUMNS:
        raise ValueError(f"no expectation suite for table {table_name!r}")
    path = expectations_dir / f"{table_name}.json"
    suite = json.loads(path.read_text(encoding="utf-8"))
    suite["expectations"] = (
        list(suite["expectations"])
        + _range_expectations(table_name)
        + _length_expectations(table_name)
    )
    for expectation in suite["expectations"]:
        severity = expectation.get("meta", {}).get("severity")
        if severity not in SEVERITIES:
            raise ValueError(
                f"{path}: expectation {expectation['type']} has severity {severity!r}, "
                f"expected one of {SEVERITIES}"
            )
    return suite


def _staged_select(table_name: str, start: datetime, end: datetime) -> sa.Select:
    """Staged rows of the interval plus the derived columns the suites check."""
    staging = schema.STAGING_TABLES[table_name]
    business = [staging.c[c.name] for c in schema.BUSINESS_TABLES[table_name].columns]
    keys = [staging.c[k] for k in KEY_COLUMNS[table_name]]
    extra: list[sa.ColumnElement[Any]] = [
        sa.func.count().over(partition_by=keys).label("key_count")
    ]

    def known(column: str, mirror: sa.Table, mirror_column: str) -> sa.ColumnElement[Any]:
        exists = sa.exists().where(mirror.c[mirror_column] == staging.c[column])
        return sa.case((exists, 1), else_=0).label(
            "user_known" if mirror is schema.mirror_users else "illust_known"
        )

    if table_name in ("follows", "interactions"):
        extra.append(known("user_id", schema.mirror_users, "user_id"))
    if table_name == "interactions":
        extra.append(known("illust_id", schema.mirror_illusts, "illust_id"))
    return (
        sa.select(staging.c.row_seq, *business, *extra)
        .where(staging.c.data_interval_start == start, staging.c.data_interval_end == end)
        .order_by(staging.c.row_seq)
    )


def _tags_checked(value: Any) -> Any:
    if not isinstance(value, str):
        return None
    try:
        json.loads(value)
    except ValueError:
        return None
    return value


def _plain(value: Any) -> Any:
    """A JSON-able plain value (NaN/NaT -> None, timestamps -> ISO, numpy -> Python)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    if isinstance(value, (datetime, date)):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    try:
        import pandas as pd

        if value is pd.NaT:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def row_key(table_name: str, row: dict[str, Any]) -> str:
    """Readable identity of a row for the quarantine (NULL keys render as ``None``)."""
    parts = [f"{k}={row.get(k)}" for k in KEY_COLUMNS[table_name]]
    if table_name == "interactions":
        parts.append(f"label={row.get('label')}")
    return "|".join(parts)[:255]


@contextmanager
def gx_context_lock(gx_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``gx_dir`` for one validation.

    GX's file context is not safe for concurrent writers: validations running side by side
    (a backfill runs several intervals at once) re-save the suites and checkpoints another
    run's checkpoint is checked against (``CheckpointRelatedResourcesFreshnessError``) and
    rebuild the same Data Docs. One validation per GX directory at a time (``flock``: held
    by this process, released by the kernel if it dies).
    """
    import fcntl

    gx_dir.mkdir(parents=True, exist_ok=True)
    with open(gx_dir / ".validate.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another validation is using %s: waiting for it", gx_dir)
            began = time.perf_counter()
            fcntl.flock(handle, fcntl.LOCK_EX)
            log.info("GX context free after %.1fs", time.perf_counter() - began)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _GxRunner:
    """One GX file context with a pandas data source; one checkpoint per table."""

    def __init__(self, gx_dir: Path, *, data_docs: bool = True) -> None:
        import great_expectations as gx

        self.gx = gx
        gx_dir.mkdir(parents=True, exist_ok=True)
        self.context = gx.get_context(mode="file", project_root_dir=str(gx_dir))
        # GX's tqdm bars ("Calculating Metrics") write to stderr, which Airflow shows as
        # ERROR lines; the chunk/table progress is logged at INFO instead.
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context.variables.progress_bars = ProgressBarsConfig(
            globally=False, metric_calculations=False
        )
        self.source = self.context.data_sources.add_or_update_pandas("recsys_staging")
        self.checkpoints: dict[str, Any] = {}
        self.data_docs = data_docs

    def checkpoint(self, table_name: str, suite_dict: dict[str, Any]) -> Any:
        if table_name in self.checkpoints:
            return self.checkpoints[table_name]
        from great_expectations.core.expectation_suite import ExpectationSuite

        gx = self.gx
        try:
            asset = self.source.get_asset(table_name)
        except LookupError:
            asset = self.source.add_dataframe_asset(table_name)
        try:
            batch = asset.get_batch_definition("interval_chunk")
        except (KeyError, LookupError):
            batch = asset.add_batch_definition_whole_dataframe("interval_chunk")
        suite = self.context.suites.add_or_update(ExpectationSuite(**suite_dict))
        definition = self.context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=f"{table_name}_interval", data=batch, suite=suite)
        )
        checkpoint = self.context.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"{table_name}_checkpoint",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="update_data_docs")]
                if self.data_docs
                else [],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": ["row_seq"],
                },
            )
        )
        self.checkpoints[table_name] = checkpoint
        return checkpoint

    def docs_index(self) -> str:
        if not self.data_docs:
            return ""
        sites = self.context.get_docs_sites_urls()
        return sites[0]["site_url"] if sites else ""


def validate_interval(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    run_id: str,
    chunk_rows: int = 50_000,
    tables: tuple[str, ...] = VALIDATION_ORDER,
    data_docs: bool = True,
) -> ValidationResult:
    """Validate the interval's staged rows (see module doc); raise ``DataValidationError``
    after quarantine and mirror writes when a fail-severity expectation failed.

    ``data_docs=False`` skips the Data Docs rebuild (a third of the run time on small
    intervals; tests that do not look at the docs use it)."""
    start, end = check_interval(interval_start, interval_end)
    if not run_id:
        raise ValueError(f"run_id must be non-empty, got {run_id!r}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows!r}")
    unknown = [t for t in tables if t not in KEY_COLUMNS]
    if unknown:
        raise ValueError(f"unknown tables {unknown!r}")
    began = time.perf_counter()
    import logging

    for noisy in ("great_expectations", "great_expectations.core", "tqdm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    launch = launch_bound(settings)
    # GX refuses a range whose min exceeds its max (and then reports a failure with no rows):
    # an interval ending before launch has every row out of range, which min = max = end
    # (``strict_max``) expresses.
    parameters = {"site_launch": min(launch, end), "interval_end": end}
    engine = get_engine(settings.recsys_db_url)
    schema.ensure_recsys_schema(engine)

    read: dict[str, int] = {}
    to_mirror: dict[str, int] = {}
    quarantined: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    with gx_context_lock(settings.gx_dir):
        runner = _GxRunner(settings.gx_dir, data_docs=data_docs)
        for table_name in tables:
            suite_dict = load_suite_dict(table_name)
            checkpoint = runner.checkpoint(table_name, suite_dict)
            n_read, n_good, n_bad, table_failures = _validate_table(
                engine, checkpoint, table_name, start, end, run_id, parameters, chunk_rows
            )
            read[table_name], to_mirror[table_name] = n_read, n_good
            quarantined[table_name] = n_bad
            failures.extend(table_failures)
        docs = runner.docs_index()
    fatal = [f for f in failures if f["severity"] == "fail"]
    for failure in failures:
        (log.error if failure["severity"] == "fail" else log.warning)(
            "%s [%s]", failure_line(failure), failure["severity"]
        )
    seconds = time.perf_counter() - began
    log.info(
        "validated [%s, %s): read %s, to mirror %s, quarantined %s in %.1fs; data docs %s",
        start,
        end,
        read,
        to_mirror,
        quarantined,
        seconds,
        docs,
    )
    result = ValidationResult(
        run_id=run_id,
        interval_start=start,
        interval_end=end,
        rows_read=read,
        rows_to_mirror=to_mirror,
        rows_quarantined=quarantined,
        failures=failures,
        data_docs=docs,
        success=not fatal,
        seconds=round(seconds, 3),
    )
    if fatal:
        lines = [failure_line(f) for f in fatal]
        raise DataValidationError(
            f"data interval [{start}, {end}) failed {len(fatal)} expectation(s); rows "
            f"quarantined (run {run_id}), data docs {docs}:\n" + "\n".join(lines),
            failures,
        )
    return result


def launch_bound(settings: Settings) -> datetime:
    """The earliest ``create_time`` validation accepts: ``settings.site_launch``, or the
    earliest time the loaded data set recorded in the replica (``recsys-data load`` writes
    it to ``replica_meta``, since MovieLens predates the site) when that is earlier."""
    from tasks.data.sources.frames import read_replica_meta

    launch = datetime.fromisoformat(settings.site_launch)
    recorded = read_replica_meta(settings.replica_url).get(LAUNCH_META_KEY)
    if recorded:
        data_launch = datetime.fromisoformat(recorded)
        if data_launch < launch:
            log.info(
                "launch bound %s: the replica's data set starts before site_launch %s",
                data_launch,
                launch,
            )
            return data_launch
    return launch


#: ``replica_meta`` key holding the loaded data set's earliest time (ISO, naive UTC).
LAUNCH_META_KEY = "data_launch"
VALUES_PER_FAILURE = 5


def failure_line(failure: dict[str, Any]) -> str:
    """One failed expectation as text: rows, the offending values with counts, examples."""
    values = ", ".join(f"{v!r} x{n}" for v, n in failure.get("values", []))
    return (
        f"{failure['table']}.{failure['expectation']} ({failure['column']}): "
        f"{failure['unexpected_count']} unexpected rows; offending values (count): "
        f"{values or 'n/a'}; e.g. {failure['examples']}"
    )


def _raised(er: Any) -> str | None:
    """The exception message of an expectation result that raised, else None.

    GX puts ``raised_exception`` at the top of ``exception_info`` for some errors and, for a
    metric that failed to resolve (e.g. ``min_value cannot be greater than max_value``), in a
    dict per metric; such a result has ``success=False`` and an empty ``result``.
    """
    info = er.exception_info or {}
    candidates = [info] + [v for v in info.values() if isinstance(v, dict)]
    for entry in candidates:
        if entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def gx_run_name(run_id: str, table_name: str) -> str:
    """The GX validation run's name: the Airflow run id and the table (not ``__none__``)."""
    return f"{run_id}__{table_name}"


def gx_run_id(run_id: str, table_name: str) -> Any:
    """A GX ``RunIdentifier`` named by :func:`gx_run_name`."""
    from great_expectations.core.run_identifier import RunIdentifier

    return RunIdentifier(run_name=gx_run_name(run_id, table_name))


def _expectation_name(config: Any) -> tuple[str, str]:
    kwargs = config.kwargs
    column = kwargs.get("column") or ",".join(
        str(kwargs[k]) for k in ("column_A", "column_B") if k in kwargs
    )
    return f"{config.type}:{column}"[:128], column


def _validate_table(
    engine: sa.Engine,
    checkpoint: Any,
    table_name: str,
    start: datetime,
    end: datetime,
    run_id: str,
    parameters: dict[str, Any],
    chunk_rows: int,
) -> tuple[int, int, int, list[dict[str, Any]]]:
    import pandas as pd

    mirror = schema.MIRROR_TABLES[table_name]
    mirror_columns = [c.name for c in mirror.columns]
    quarantine_columns = [
        "table_name", "row_key", "expectation", "reason", "row_json", "run_id",
        "data_interval_start", "data_interval_end",
    ]  # fmt: skip
    business_columns = [c.name for c in schema.BUSINESS_TABLES[table_name].columns]
    failures: dict[str, dict[str, Any]] = {}
    value_counts: dict[str, Counter[Any]] = defaultdict(Counter)
    n_read = n_good = 0
    bad_keys: set[tuple[str, str]] = set()
    quarantine = schema.quarantine
    with engine.begin() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
            _staged_select(table_name, start, end)
        )
        columns = list(result.keys())
        for chunk_no, rows in enumerate(result.partitions(chunk_rows), start=1):
            frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
            if table_name == "illusts":
                frame["tags_checked"] = frame["tags"].map(_tags_checked)
            # Report and write what the database returned, not the frame (pandas turns int
            # columns holding a NULL into floats).
            records = [dict(zip(columns, row, strict=True)) for row in rows]
            by_seq = {int(record["row_seq"]): record for record in records}
            outcome = checkpoint.run(
                batch_parameters={"dataframe": frame},
                expectation_parameters=parameters,
                run_id=gx_run_id(run_id, table_name),
            )
            bad_rows: dict[int, list[tuple[str, str]]] = defaultdict(list)
            for validation in outcome.run_results.values():
                for er in validation.results:
                    config = er.expectation_config
                    severity = (config.meta or {}).get("severity", "fail")
                    name, column = _expectation_name(config)
                    raised = _raised(er)
                    if raised is not None:
                        raise RuntimeError(f"{table_name}: expectation {name} raised {raised}")
                    if er.success:
                        continue
                    seqs = [
                        int(item["row_seq"])
                        for item in er.result.get("unexpected_index_list") or []
                    ]
                    if not seqs and not er.result.get("unexpected_count"):
                        raise RuntimeError(
                            f"{table_name}: expectation {name} failed without naming rows "
                            f"(result {er.result}, exception {er.exception_info})"
                        )
                    entry = failures.setdefault(
                        name,
                        {
                            "table": table_name,
                            "expectation": name,
                            "column": column,
                            "severity": severity,
                            "unexpected_count": 0,
                            "examples": [],
                            "values": [],
                            "description": (config.meta or {}).get("description", ""),
                        },
                    )
                    entry["unexpected_count"] += len(seqs) or int(
                        er.result.get("unexpected_count") or 0
                    )
                    if severity == "fail":
                        for seq in seqs:
                            bad_rows[seq].append((name, entry["description"]))
                    if column in columns:
                        value_counts[name].update(
                            _clip(_plain(by_seq[seq][column]), EXAMPLE_MAX_CHARS) for seq in seqs
                        )
                    if len(entry["examples"]) < EXAMPLES_PER_FAILURE:
                        for seq in seqs[: EXAMPLES_PER_FAILURE - len(entry["examples"])]:
                            entry["examples"].append(
                                {
                                    c: _clip(_plain(by_seq[seq][c]), EXAMPLE_MAX_CHARS)
                                    for c in business_columns
                                }
                            )
            good: list[tuple[Any, ...]] = []
            quarantined_rows: list[tuple[Any, ...]] = []
            for record in records:
                plain = {c: _plain(record[c]) for c in business_columns}
                reasons = bad_rows.get(int(record["row_seq"]))
                if reasons:
                    key = row_key(table_name, plain)
                    row_json = json.dumps(
                        {c: _clip(v, ROW_JSON_MAX_CHARS) for c, v in plain.items()},
                        sort_keys=True,
                        ensure_ascii=False,
                    )
                    for name, description in reasons:
                        bad_keys.add((key, name))
                        if name.startswith(LENGTH_EXPECTATION + ":"):
                            column_name = name.split(":", 1)[1]
                            description = (
                                f"{description}; this row's {column_name} has "
                                f"{len(str(plain[column_name]))} characters"
                            )
                        quarantined_rows.append(
                            (
                                table_name,
                                key,
                                name,
                                description or name,
                                row_json,
                                run_id,
                                start,
                                end,
                            )
                        )
                else:
                    good.append(tuple(record[c] for c in mirror_columns))
            bulk_execute(conn, replace_into(mirror, conn.dialect.name), mirror_columns, good)
            bulk_execute(
                conn,
                insert_ignore(quarantine, conn.dialect.name),
                quarantine_columns,
                quarantined_rows,
            )
            n_read += len(records)
            n_good += len(good)
            if chunk_no % 10 == 0:
                log.info("%s: %d rows validated so far", table_name, n_read)
        _resolve_quarantine(conn, table_name, start, run_id, bad_keys)
    n_bad = n_read - n_good
    log.info(
        "%s [%s, %s): %d staged rows read, %d upserted into %s, %d quarantined",
        table_name,
        start,
        end,
        n_read,
        n_good,
        mirror.name,
        n_bad,
    )
    for name, entry in failures.items():
        entry["values"] = value_counts[name].most_common(VALUES_PER_FAILURE)
    return n_read, n_good, n_bad, list(failures.values())


def _resolve_quarantine(
    conn: sa.Connection,
    table_name: str,
    start: datetime,
    run_id: str,
    still_bad: set[tuple[str, str]],
) -> None:
    """Resolve this interval's quarantine rows that no longer fail; re-open those that do."""
    q = schema.quarantine
    open_rows = conn.execute(
        sa.select(q.c.id, q.c.row_key, q.c.expectation, q.c.resolved_run_id).where(
            q.c.table_name == table_name, q.c.data_interval_start == start
        )
    ).all()
    resolve = [
        r.id
        for r in open_rows
        if r.resolved_run_id is None and (r.row_key, r.expectation) not in still_bad
    ]
    reopen = [
        r.id
        for r in open_rows
        if r.resolved_run_id is not None and (r.row_key, r.expectation) in still_bad
    ]
    if resolve:
        conn.execute(sa.update(q).where(q.c.id.in_(resolve)).values(resolved_run_id=run_id))
        log.info("%s: %d quarantine rows resolved by run %s", table_name, len(resolve), run_id)
    if reopen:
        conn.execute(sa.update(q).where(q.c.id.in_(reopen)).values(resolved_run_id=None))
        log.info("%s: %d quarantine rows re-opened", table_name, len(reopen))


def validated_data_event(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    interactions_from: datetime | str | None = None,
) -> dict[str, Any] | None:
    """The ``recsys_validated_data`` asset event's extra for a validated interval, or None
    when the mirror holds no interaction timed inside it (sampling, and so training, would
    find nothing: no event). When extraction caught up a gap (``interactions_from`` before
    the start: see ``ExtractResult``), the event's interval starts there, so training samples
    the gap's interactions too. Rows re-read in the extraction overlap do not count. Times
    are naive UTC ISO strings, as ``resolve_interval`` writes them."""
    start, end = check_interval(interval_start, interval_end)
    if interactions_from is not None:
        start = min(start, to_naive_utc(interactions_from))
    mi = schema.mirror_interactions
    with get_engine(settings.recsys_db_url).connect() as conn:
        n_interactions = conn.execute(
            sa.select(sa.func.count())
            .select_from(mi)
            .where(mi.c.create_time >= start, mi.c.create_time < end)
        ).scalar_one()
    log.info("mirror interactions in [%s, %s): %d", start, end, n_interactions)
    if not n_interactions:
        return None
    return {
        "interval_start": start.isoformat(),
        "interval_end": end.isoformat(),
        "interactions": int(n_interactions),
    }
