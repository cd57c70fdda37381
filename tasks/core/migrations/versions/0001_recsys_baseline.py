"""Baseline: the recsys DB as create_all built it before migrations.

Frozen: these are literal table definitions, not imports from ``tasks.core.schema``, so the
revision keeps meaning the same tables after the schema moves on. ``tasks.core.migrate`` also
replays ``create_schema`` into a MetaData to check that a legacy database (tables but no
``alembic_version``) is exactly this revision before stamping it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

TABLES = (
    "mirror_users",
    "mirror_illusts",
    "mirror_follows",
    "mirror_interactions",
    "watermarks",
    "quarantine",
    "staging_users",
    "staging_illusts",
    "staging_interactions",
    "staging_follows",
    "samples",
    "pipeline_failures",
)


def upgrade() -> None:
    create_schema(op)


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)


def _illust_columns(*, key: bool) -> list[sa.Column[Any]]:
    return [
        sa.Column("illust_id", BigInt, primary_key=key, autoincrement=False, nullable=not key),
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
    ]


def _staging_key() -> list[sa.Column[Any]]:
    return [
        sa.Column("data_interval_start", sa.DateTime, primary_key=True),
        sa.Column("data_interval_end", sa.DateTime, primary_key=True),
        sa.Column("row_seq", BigInt, primary_key=True, autoincrement=False),
    ]


def create_schema(ops: Any) -> None:
    """Create revision 0001's tables through ``ops`` (``alembic.op``, or a recorder that
    builds a MetaData with the same ``create_table``/``create_index`` signatures)."""
    ops.create_table(
        "mirror_users",
        sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("username", sa.String(255), nullable=True),
        sa.Column("create_time", sa.DateTime, nullable=True),
    )
    ops.create_index("ix_mirror_users_create_time", "mirror_users", ["create_time"])
    ops.create_table("mirror_illusts", *_illust_columns(key=True))
    ops.create_index("ix_mirror_illusts_update_time", "mirror_illusts", ["update_time"])
    ops.create_table(
        "mirror_follows",
        sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("artist_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("create_time", sa.DateTime, nullable=True),
    )
    ops.create_index("ix_mirror_follows_create_time", "mirror_follows", ["create_time"])
    ops.create_table(
        "mirror_interactions",
        sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("illust_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("create_time", sa.DateTime, primary_key=True),
        sa.Column("label", sa.SmallInteger, nullable=False),
    )
    ops.create_index("ix_mirror_interactions_create_time", "mirror_interactions", ["create_time"])
    ops.create_table(
        "watermarks",
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("high_water", sa.DateTime, nullable=False),
        sa.Column("low_water", sa.DateTime, nullable=True),
    )
    ops.create_table(
        "quarantine",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("row_key", sa.String(255), nullable=False),
        sa.Column("expectation", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("row_json", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(255), nullable=False),
        sa.Column("data_interval_start", sa.DateTime, nullable=False),
        sa.Column("data_interval_end", sa.DateTime, nullable=False),
        sa.Column("resolved_run_id", sa.String(255), nullable=True),
        sa.UniqueConstraint(
            "table_name",
            "row_key",
            "expectation",
            "data_interval_start",
            name="uq_quarantine_row",
        ),
    )
    ops.create_table(
        "staging_users",
        *_staging_key(),
        sa.Column("user_id", BigInt, nullable=True),
        sa.Column("username", sa.String(255), nullable=True),
        sa.Column("create_time", sa.DateTime, nullable=True),
        sa.Column("run_id", sa.String(255), nullable=False),
    )
    ops.create_table(
        "staging_illusts",
        *_staging_key(),
        *_illust_columns(key=False),
        sa.Column("run_id", sa.String(255), nullable=False),
    )
    ops.create_table(
        "staging_interactions",
        *_staging_key(),
        sa.Column("user_id", BigInt, nullable=True),
        sa.Column("illust_id", BigInt, nullable=True),
        sa.Column("label", sa.SmallInteger, nullable=True),
        sa.Column("create_time", sa.DateTime, nullable=True),
        sa.Column("run_id", sa.String(255), nullable=False),
    )
    ops.create_table(
        "staging_follows",
        *_staging_key(),
        sa.Column("user_id", BigInt, nullable=True),
        sa.Column("artist_id", BigInt, nullable=True),
        sa.Column("create_time", sa.DateTime, nullable=True),
        sa.Column("run_id", sa.String(255), nullable=False),
    )
    ops.create_table(
        "samples",
        sa.Column("user_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("illust_id", BigInt, primary_key=True, autoincrement=False),
        sa.Column("label", sa.SmallInteger, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("interval_start", sa.DateTime, nullable=False),
        sa.Column("interval_end", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    ops.create_table(
        "pipeline_failures",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("dag_id", sa.String(250), nullable=False),
        sa.Column("task_id", sa.String(250), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("try_number", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("log_url", sa.Text, nullable=True),
        sa.UniqueConstraint("dag_id", "task_id", "run_id", "try_number", name="uq_failure_try"),
    )
