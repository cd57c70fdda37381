"""The ranker's training rows for one data interval, read from the recsys DB (SQLAlchemy Core).

Rows ``(user_id, illust_id, request_time, label, source)``:

* ``shown`` rows: every ``mirror_interactions`` row with ``create_time`` in ``[start, end)``;
  label 1 = bookmarked, 0 = viewed and not bookmarked (a view of a pair that is also
  bookmarked in the interval is dropped: it is not a "not bookmarked");
* ``sampled`` rows: the label-0 rows of ``samples`` written for intervals inside
  ``[start, end)`` (``tasks.data.sampling``), minus pairs the user interacted with before
  ``end``. The table keeps no time per negative: the negatives of one (user, interval) are
  spread over the times of that user's bookmarks in the interval (the positives they were
  drawn for), in id order round robin; a user without one there gets the interval's start.

Features are then computed as of each row's request time (:mod:`tasks.model.ranker.features`).
The stage drops rows at or after a user's gate holdout positive (:func:`before_holdout`) and,
given the recall channels, trains on candidate sets built like serving's pool
(:mod:`tasks.model.ranker.candidates`) with or without these rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.model.ranker.features import pair_key

log = get_logger("ranker")

ROW_COLUMNS = ("user_id", "illust_id", "request_time", "label", "source")


@dataclass(frozen=True)
class RankingFrames:
    """The mirror as the features need it: interactions before ``end``, illusts, follows."""

    interactions: pd.DataFrame
    illusts: pd.DataFrame
    follows: pd.DataFrame


def read_ranking_frames(engine: sa.Engine, interval_end: datetime) -> RankingFrames:
    """Mirror frames known by ``interval_end`` (interactions and follows strictly before it)."""
    from tasks.core.schema import mirror_follows, mirror_illusts, mirror_interactions

    mi, mf = mirror_interactions, mirror_follows
    with engine.connect() as conn:
        interactions = pd.read_sql(
            sa.select(mi.c.user_id, mi.c.illust_id, mi.c.label, mi.c.create_time).where(
                mi.c.create_time < interval_end
            ),
            conn,
        )
        illusts = pd.read_sql(sa.select(mirror_illusts), conn)
        follows = pd.read_sql(
            sa.select(mf.c.user_id, mf.c.artist_id, mf.c.create_time).where(
                sa.or_(mf.c.create_time < interval_end, mf.c.create_time.is_(None))
            ),
            conn,
        )
    for frame in (interactions, illusts, follows):
        if "create_time" in frame.columns:
            frame["create_time"] = pd.to_datetime(frame["create_time"])
    log.info(
        "read %d interactions, %d illusts, %d follows before %s",
        len(interactions),
        len(illusts),
        len(follows),
        interval_end,
    )
    return RankingFrames(interactions, illusts, follows)


def read_sampled_negatives(
    engine: sa.Engine, interval_start: datetime, interval_end: datetime
) -> pd.DataFrame:
    """Label-0 ``samples`` rows of the intervals inside ``[start, end)``."""
    from tasks.core.schema import samples

    query = (
        sa.select(
            samples.c.user_id,
            samples.c.illust_id,
            samples.c.interval_start,
            samples.c.interval_end,
        )
        .where(
            samples.c.label == 0,
            samples.c.interval_start >= interval_start,
            samples.c.interval_end <= interval_end,
        )
        .order_by(samples.c.user_id, samples.c.interval_start, samples.c.illust_id)
    )
    with engine.connect() as conn:
        frame = pd.read_sql(query, conn)
    for column in ("interval_start", "interval_end"):
        frame[column] = pd.to_datetime(frame[column])
    return frame


def training_rows(
    interactions: pd.DataFrame,
    negatives: pd.DataFrame,
    interval_start: datetime,
    interval_end: datetime,
) -> pd.DataFrame:
    """Shown rows of the interval plus timed sampled negatives, ordered by request time."""
    times = pd.to_datetime(interactions["create_time"])
    inside = interactions[(times >= interval_start) & (times < interval_end)]
    keys = pair_key(inside["user_id"].to_numpy(np.int64), inside["illust_id"].to_numpy(np.int64))
    booked = np.unique(keys[inside["label"].to_numpy() == 1])
    drop = (inside["label"].to_numpy() != 1) & np.isin(keys, booked)
    shown = pd.DataFrame(
        {
            "user_id": inside["user_id"].to_numpy(np.int64)[~drop],
            "illust_id": inside["illust_id"].to_numpy(np.int64)[~drop],
            "request_time": pd.to_datetime(inside["create_time"]).to_numpy()[~drop],
            "label": (inside["label"].to_numpy()[~drop] == 1).astype(np.int64),
            "source": "shown",
        }
    )
    sampled = _timed_negatives(interactions, negatives)
    rows = pd.concat([shown, sampled], ignore_index=True)
    rows = rows.sort_values(
        ["request_time", "user_id", "illust_id", "label"], kind="mergesort", ignore_index=True
    )
    log.info(
        "ranker rows [%s, %s): %d shown (%d bookmarked), %d sampled negatives",
        interval_start,
        interval_end,
        len(shown),
        int(shown["label"].sum()),
        len(sampled),
    )
    return rows[list(ROW_COLUMNS)]


def _timed_negatives(interactions: pd.DataFrame, negatives: pd.DataFrame) -> pd.DataFrame:
    """Sampled negatives (minus interacted pairs), each given a request time (module doc)."""
    empty = pd.DataFrame(
        {
            "user_id": np.zeros(0, np.int64),
            "illust_id": np.zeros(0, np.int64),
            "request_time": pd.to_datetime(pd.Series([], dtype="datetime64[ns]")),
            "label": np.zeros(0, np.int64),
            "source": np.zeros(0, object),
        }
    )
    if negatives.empty:
        return empty
    seen = pair_key(
        interactions["user_id"].to_numpy(np.int64), interactions["illust_id"].to_numpy(np.int64)
    )
    neg = negatives[
        ~np.isin(
            pair_key(
                negatives["user_id"].to_numpy(np.int64), negatives["illust_id"].to_numpy(np.int64)
            ),
            seen,
        )
    ].sort_values(["user_id", "interval_start", "illust_id"], kind="mergesort", ignore_index=True)
    if neg.empty:
        return empty
    times = pd.to_datetime(interactions["create_time"])
    bookmarks = interactions.assign(create_time=times)[interactions["label"] == 1]
    # Each negative's interval: join the user's bookmark times inside it.
    slots = neg[["user_id", "interval_start", "interval_end"]].drop_duplicates(ignore_index=True)
    joined = slots.merge(bookmarks[["user_id", "create_time"]], on="user_id")
    joined = joined[
        (joined["create_time"] >= joined["interval_start"])
        & (joined["create_time"] < joined["interval_end"])
    ].sort_values(["user_id", "interval_start", "create_time"], kind="mergesort")
    per_slot = joined.groupby(["user_id", "interval_start"])["create_time"].apply(list)
    neg["slot_index"] = neg.groupby(["user_id", "interval_start"]).cumcount()
    request = []
    for user, start, index in zip(
        neg["user_id"], neg["interval_start"], neg["slot_index"], strict=True
    ):
        options = per_slot.get((user, start))
        request.append(options[index % len(options)] if options else start)
    return pd.DataFrame(
        {
            "user_id": neg["user_id"].to_numpy(np.int64),
            "illust_id": neg["illust_id"].to_numpy(np.int64),
            "request_time": pd.to_datetime(pd.Series(request)).to_numpy(),
            "label": np.zeros(len(neg), np.int64),
            "source": "sampled",
        }
    )


def before_holdout(rows: pd.DataFrame, cutoffs: pd.Series) -> pd.DataFrame:
    """The rows strictly before their user's holdout cutoff (``cutoffs``: user -> time of
    the gate's held-out positive); users without one keep every row. The gate's holdout
    never trains the ranker."""
    users = rows["user_id"].to_numpy(np.int64)
    limit = pd.Series(cutoffs).reindex(users).to_numpy(dtype="datetime64[ns]")
    times = pd.to_datetime(rows["request_time"]).to_numpy(dtype="datetime64[ns]")
    keep = np.isnat(limit) | (times < limit)
    return rows[keep].reset_index(drop=True)


def time_split(rows: pd.DataFrame, val_share: float) -> np.ndarray:
    """bool[N]: validation rows = those at or after the ``1 - val_share`` time quantile (the
    latest rows), so validation never precedes training."""
    seconds = (
        pd.to_datetime(rows["request_time"]).to_numpy().astype("datetime64[s]").astype(np.int64)
    )
    if not len(seconds):
        return np.zeros(0, bool)
    cut = np.quantile(seconds, 1.0 - val_share, method="higher")
    is_val = seconds >= cut
    if is_val.all():  # every row in one second: fall back to the last rows by position
        is_val = np.arange(len(seconds)) >= int(len(seconds) * (1.0 - val_share))
    return is_val
