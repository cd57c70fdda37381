"""A hand-made six-illust catalogue for hand-computed ranker tests (a test double).

Illusts 1..6: artists 10, 10, 20, 20, 30, 30; tags "a", "a|b", "b", "c", "c|d", "d";
total_bookmarks 60, 50, ..., 10 (so "hot" ties break by it); total_view 100; all out on
2026-01-01 except the ones ``late`` names, which come out on ``late_date``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def six_illusts(late: Iterable[int] = (), late_date: str = "2026-01-03") -> pd.DataFrame:
    """The catalogue above as a mirror_illusts frame."""
    late = set(late)
    created = [pd.Timestamp(late_date if i in late else "2026-01-01") for i in (1, 2, 3, 4, 5, 6)]
    return pd.DataFrame(
        {
            "illust_id": [1, 2, 3, 4, 5, 6],
            "artist_id": [10, 10, 20, 20, 30, 30],
            "tags": ["a", "a|b", "b", "c", "c|d", "d"],
            "width": [100] * 6,
            "height": [100] * 6,
            "sanity_level": [2] * 6,
            "restrict": [0] * 6,
            "x_restrict": [0] * 6,
            "total_bookmarks": [60, 50, 40, 30, 20, 10],
            "total_view": [100] * 6,
            "create_time": created,
            "update_time": created,
        }
    )
