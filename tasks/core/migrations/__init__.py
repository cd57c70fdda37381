"""Alembic migrations of the recsys DB (driven by :mod:`tasks.core.migrate`)."""
