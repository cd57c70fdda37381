"""Revision scripts, one per schema change (``python -m tasks.core.migrate revision``)."""
