"""Minimal online recommendation API (FastAPI)."""
