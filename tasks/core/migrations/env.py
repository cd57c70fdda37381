"""Alembic environment of the recsys DB.

Run through :mod:`tasks.core.migrate` (``ensure_recsys_schema`` or ``python -m
tasks.core.migrate``), which builds the Alembic config in code and usually hands over an open
connection in ``config.attributes["connection"]`` (inside its migration lock). Without one,
the URL comes from the config's ``sqlalchemy.url``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from tasks.core.migrate import context_options
from tasks.core.schema import recsys_metadata

config = context.config
target_metadata = recsys_metadata


def run_migrations_offline() -> None:
    """Render the SQL instead of running it (``--sql``)."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(sa.make_url(url).get_backend_name()),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        **context_options(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate over the caller's connection, or over a new one to ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
