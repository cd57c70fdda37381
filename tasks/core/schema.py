"""Table definitions, written once (SQLAlchemy Core) for SQLite and MySQL/MariaDB.

Two databases:

* the business **replica** (read-only for us): ``users``, ``illusts``, ``interactions``,
  ``follows`` as in DESIGN.md. ``infra/sql/replica_schema.sql`` is the MySQL DDL rendered
  from these definitions (``python -m tasks.core.schema --ddl``).
* the **recsys DB** we own: mirror tables of the replica, extraction watermarks, the
  quarantine of rows that failed validation, and the training ``samples``. Its tables change
  only by Alembic revisions (``tasks/core/migrations``, applied by ``ensure_recsys_schema``):
  a change here needs a new revision, or ``tests/integration/test_migrations.py`` fails.

``tags`` is stored as text holding JSON (``[{"name", "translatedName", "id"}]``) rather than
a JSON column: the replica is not ours to trust, and validation must be able to see (and
quarantine) a malformed value instead of the database rejecting or rewriting it.
"""

from __future__ import annotations

import sqlalchemy as sa

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

business_metadata = sa.MetaData()


def _users(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("username", sa.String(255), nullable=True),
        sa.Column("create_time", sa.DateTime, nullable=True),
        sa.Index(f"ix_{name}_create_time", "create_time"),
    )


def _illusts(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("illust_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("artist_id", BigInt, nullable=True),
        sa.Column("tags", sa.Text, nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("sanity_level", sa.SmallInteger, nullable=True),
        sa.Column("restrict", sa.SmallInteger, nullable=True),
        sa.Column("x_restrict", sa.SmallInteger, nullable=True),
        sa.Column("total_bookmarks", BigInt, nullable=True),
        sa.Column("total_view", BigInt, nullable=True),
        sa.Column("create_time", sa.DateTime, nullable=True),
        sa.Column("update_time", sa.DateTime, nullable=True),
        sa.Index(f"ix_{name}_update_time", "update_time"),
    )


def _follows(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("artist_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("create_time", sa.DateTime, nullable=True),
        sa.Index(f"ix_{name}_create_time", "create_time"),
    )


users = _users(business_metadata, "users")
illusts = _illusts(business_metadata, "illusts")
follows = _follows(business_metadata, "follows")
# An event log: the business site does not promise uniqueness here, so neither does the
# replica schema. Validation checks it; the mirror enforces it.
interactions = sa.Table(
    "interactions",
    business_metadata,
    sa.Column("user_id", BigInt, nullable=True),
    sa.Column("illust_id", BigInt, nullable=True),
    sa.Column("label", sa.SmallInteger, nullable=True),
    sa.Column("create_time", sa.DateTime, nullable=True),
    sa.Index("ix_interactions_create_time", "create_time"),
    sa.Index("ix_interactions_user", "user_id"),
)

BUSINESS_TABLES: dict[str, sa.Table] = {
    "users": users,
    "illusts": illusts,
    "interactions": interactions,
    "follows": follows,
}

recsys_metadata = sa.MetaData()

mirror_users = _users(recsys_metadata, "mirror_users")
mirror_illusts = _illusts(recsys_metadata, "mirror_illusts")
mirror_follows = _follows(recsys_metadata, "mirror_follows")
mirror_interactions = sa.Table(
    "mirror_interactions",
    recsys_metadata,
    sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
    sa.Column("illust_id", BigInt, primary_key=True, autoincrement=False),
    sa.Column("create_time", sa.DateTime, primary_key=True),
    sa.Column("label", sa.SmallInteger, nullable=False),
    sa.Index("ix_mirror_interactions_create_time", "create_time"),
)

MIRROR_TABLES: dict[str, sa.Table] = {
    "users": mirror_users,
    "illusts": mirror_illusts,
    "interactions": mirror_interactions,
    "follows": mirror_follows,
}

watermarks = sa.Table(
    "watermarks",
    recsys_metadata,
    sa.Column("table_name", sa.String(64), primary_key=True),
    sa.Column("high_water", sa.DateTime, nullable=False),
    # Start of the earliest interval ever extracted (tasks.data.extract: an interval starting at or
    # before it re-reads the initial snapshot, so re-running it gives the same rows).
    sa.Column("low_water", sa.DateTime, nullable=True),
)

quarantine = sa.Table(
    "quarantine",
    recsys_metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("table_name", sa.String(64), nullable=False),
    sa.Column("row_key", sa.String(255), nullable=False),
    sa.Column("expectation", sa.String(128), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("row_json", sa.Text, nullable=False),
    sa.Column("run_id", sa.String(255), nullable=False),
    sa.Column("data_interval_start", sa.DateTime, nullable=False),
    sa.Column("data_interval_end", sa.DateTime, nullable=False),
    sa.UniqueConstraint(
        "table_name", "row_key", "expectation", "data_interval_start", name="uq_quarantine_row"
    ),
    # Set (to the validating run's id) once a later validation of the same interval finds the
    # row good again; NULL while the row is still held back. Rows are never deleted, so the
    # quarantine doubles as an audit log.
    sa.Column("resolved_run_id", sa.String(255), nullable=True),
)


def _staging(source: sa.Table) -> sa.Table:
    """A staging copy of a business table: every column nullable (bad rows must land here
    too, for validation to see and quarantine), keyed by data interval and arrival order."""
    columns = [
        sa.Column(column.name, column.type, nullable=True, primary_key=False)
        for column in source.columns
    ]
    name = f"staging_{source.name}"
    return sa.Table(
        name,
        recsys_metadata,
        sa.Column("data_interval_start", sa.DateTime, primary_key=True),
        sa.Column("data_interval_end", sa.DateTime, primary_key=True),
        sa.Column("row_seq", BigInt, primary_key=True, autoincrement=False),
        *columns,
        sa.Column("run_id", sa.String(255), nullable=False),
    )


# What extraction read from the replica for one data interval; validation reads it from
# here, quarantines bad rows and upserts good ones into the mirror tables.
STAGING_TABLES: dict[str, sa.Table] = {
    name: _staging(table) for name, table in BUSINESS_TABLES.items()
}

samples = sa.Table(
    "samples",
    recsys_metadata,
    sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
    sa.Column("illust_id", BigInt, primary_key=True, autoincrement=False),
    sa.Column("label", sa.SmallInteger, nullable=False),
    # positive | random | popular
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("interval_start", sa.DateTime, nullable=False),
    sa.Column("interval_end", sa.DateTime, nullable=False),
    # The data interval's end, not now(): a re-run writes byte-identical rows.
    sa.Column("created_at", sa.DateTime, nullable=False),
)


# One place that records every failed task (written by the DAGs' failure callback).
pipeline_failures = sa.Table(
    "pipeline_failures",
    recsys_metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("dag_id", sa.String(250), nullable=False),
    sa.Column("task_id", sa.String(250), nullable=False),
    sa.Column("run_id", sa.String(250), nullable=False),
    sa.Column("try_number", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("log_url", sa.Text, nullable=True),
    sa.UniqueConstraint("dag_id", "task_id", "run_id", "try_number", name="uq_failure_try"),
)


def create_business_schema(engine: sa.Engine) -> None:
    """Create the business tables (used for the embedded replica and for test replicas)."""
    business_metadata.create_all(engine)


def ensure_recsys_schema(engine: sa.Engine) -> None:
    """Bring the recsys DB to the newest schema by Alembic migrations (new database: all
    revisions; one built by the old create_all: stamped, then upgraded; at head: a no-op
    cached per URL). See :mod:`tasks.core.migrate`."""
    from tasks.core.migrate import ensure_recsys_schema as ensure

    ensure(engine)


def mysql_ddl(metadata: sa.MetaData = business_metadata) -> str:
    """Render the MySQL DDL of ``metadata`` (infra/sql keeps the rendered copy)."""
    from sqlalchemy.dialects import mysql
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = mysql.dialect()
    parts: list[str] = []
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        for index in sorted(table.indexes, key=lambda i: i.name or ""):
            parts.append(str(CreateIndex(index).compile(dialect=dialect)).strip() + ";")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":  # pragma: no cover - tiny CLI
    import sys

    which = sys.argv[2] if len(sys.argv) > 2 else "business"
    print(mysql_ddl(business_metadata if which == "business" else recsys_metadata))
