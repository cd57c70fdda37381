"""Model-wide constants, importable without numpy or pandas.

The DAG reads training defaults at parse time (``tasks.model.training.config``), so the one
number they share with the feature code lives here rather than in ``features.py``.
"""

from __future__ import annotations

HISTORY_LEN = 20
"""Length H of the ``history`` input: most recent bookmarked illust_ids, 0-padded."""

I2I_SEEDS = 5
"""Recall: a user's item-CF candidates come from their newest I2I_SEEDS bookmarks' neighbours
(the API, precompute and the ranker gate's offline recall share it)."""

HOT_N = 500
"""Recall: length of the hot list the vector refresh stores (and the ranker gate rebuilds)."""
