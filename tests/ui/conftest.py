"""Markers of the real-browser tests."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "ui: drives the local UI stack (scripts/ui.py) in headless Chromium via Selenium",
    )
