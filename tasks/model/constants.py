"""Model-wide constants, importable without numpy or pandas.

The DAG reads training defaults at parse time (``tasks.model.training.config``), so the one
number they share with the feature code lives here rather than in ``features.py``.
"""

from __future__ import annotations

HISTORY_LEN = 20
"""Length H of the ``history`` input: most recent bookmarked illust_ids, 0-padded."""
