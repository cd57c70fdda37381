"""Non-vector recall channels and how their lists are merged and encoded for the KV store.

Channels (all computed from the recsys DB mirror, keyed to the data's own clock ``as_of`` =
the newest interaction, never to now()):

* ``hot``: most bookmarked illusts in the window before ``as_of`` (filled up by
  ``total_bookmarks`` when the window is thin) - also the API's last-resort answer;
* ``follow_new``: newest works of the artists a user follows;
* ``i2i``: item-CF neighbours (cosine on the binary user x item bookmark matrix, like the
  ItemKNN baseline) - a user's candidates are the summed neighbours of their recent bookmarks;
* ``seen``: everything a user has interacted with (any label), dropped from answers.

The ANN channel (user vector -> Milvus alias ``items``) lives in ``tasks.serving.vectors``/``api``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks.core.common import get_logger
from tasks.model import constants

log = get_logger("recall")

SCORED_DTYPE = np.dtype([("id", "<i8"), ("score", "<f4")])


# -- encoding ----------------------------------------------------------------------------
def encode_ids(ids: Iterable[int]) -> bytes:
    """Pack ids as little-endian int64 bytes (compact, and zero-copy to decode)."""
    return np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype="<i8").tobytes()


def decode_ids(raw: bytes | None) -> list[int]:
    return [] if not raw else np.frombuffer(raw, dtype="<i8").tolist()


def encode_scored(pairs: Sequence[tuple[int, float]]) -> bytes:
    """Pack (id, score) pairs as int64 + float32 records."""
    return np.array([(int(i), float(s)) for i, s in pairs], dtype=SCORED_DTYPE).tobytes()


def decode_scored(raw: bytes | None) -> list[tuple[int, float]]:
    if not raw:
        return []
    arr = np.frombuffer(raw, dtype=SCORED_DTYPE)
    return [(int(i), float(s)) for i, s in zip(arr["id"], arr["score"], strict=True)]


def encode_vector(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def decode_vector(raw: bytes | None) -> np.ndarray | None:
    return None if not raw else np.frombuffer(raw, dtype="<f4")


# -- channel builders (pure, on frames) --------------------------------------------------
def data_as_of(interactions: pd.DataFrame) -> datetime:
    """The data's clock: the newest interaction time (raises on an empty frame)."""
    if interactions.empty:
        raise ValueError("no interactions: cannot derive the data's as_of time")
    return pd.Timestamp(interactions["create_time"].max()).to_pydatetime()


def hot_items(
    interactions: pd.DataFrame,
    illusts: pd.DataFrame,
    *,
    as_of: datetime,
    window_days: float = 7.0,
    n: int = 200,
) -> list[tuple[int, float]]:
    """Top ``n`` illusts by bookmarks in ``[as_of - window, as_of]``; score = that count.

    Ties go to the larger ``total_bookmarks``, then the smaller id. When the window has fewer
    than ``n`` bookmarked illusts the rest come by ``total_bookmarks`` with score 0.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    start = pd.Timestamp(as_of) - pd.Timedelta(days=window_days)
    recent = interactions[
        (interactions["label"] == 1)
        & (interactions["create_time"] >= start)
        & (interactions["create_time"] <= pd.Timestamp(as_of))
    ]
    counts = recent.groupby("illust_id").size().rename("count")
    table = illusts[["illust_id", "total_bookmarks"]].copy()
    table["total_bookmarks"] = pd.to_numeric(table["total_bookmarks"], errors="coerce").fillna(0)
    table = table.merge(counts, left_on="illust_id", right_index=True, how="left").fillna(
        {"count": 0}
    )
    table = table.sort_values(
        ["count", "total_bookmarks", "illust_id"], ascending=[False, False, True], kind="mergesort"
    ).head(n)
    return [(int(i), float(c)) for i, c in zip(table["illust_id"], table["count"], strict=True)]


def follow_new_items(
    follows: pd.DataFrame,
    illusts: pd.DataFrame,
    *,
    as_of: datetime,
    window_days: float = 30.0,
    per_user: int = 50,
) -> dict[int, list[int]]:
    """Per user: illusts by followed artists created in ``[as_of - window, as_of]``, newest first."""
    start = pd.Timestamp(as_of) - pd.Timedelta(days=window_days)
    fresh = illusts[
        (illusts["create_time"] >= start) & (illusts["create_time"] <= pd.Timestamp(as_of))
    ][["illust_id", "artist_id", "create_time"]]
    joined = follows[["user_id", "artist_id"]].merge(fresh, on="artist_id")
    joined = joined.sort_values(
        ["user_id", "create_time", "illust_id"], ascending=[True, False, False], kind="mergesort"
    )
    return {
        int(user): group["illust_id"].head(per_user).astype(int).tolist()
        for user, group in joined.groupby("user_id", sort=True)
    }


def item_cf_neighbors(
    interactions: pd.DataFrame, *, top_m: int = 50
) -> dict[int, list[tuple[int, float]]]:
    """Per illust: the ``top_m`` most cosine-similar illusts over users' bookmarks.

    ``sim(i, j) = |U_i & U_j| / sqrt(|U_i| |U_j|)`` with ``U_i`` the users who bookmarked i;
    ties go to the smaller id.
    """
    from scipy import sparse

    positives = interactions[interactions["label"] == 1][["user_id", "illust_id"]].drop_duplicates()
    if positives.empty:
        return {}
    users, user_idx = np.unique(positives["user_id"].to_numpy(np.int64), return_inverse=True)
    items, item_idx = np.unique(positives["illust_id"].to_numpy(np.int64), return_inverse=True)
    matrix = sparse.csr_matrix(
        (np.ones(len(positives), dtype=np.float32), (user_idx, item_idx)),
        shape=(len(users), len(items)),
    )
    co = (matrix.T @ matrix).tocsr()
    norms = np.sqrt(np.asarray(matrix.sum(axis=0)).ravel())
    out: dict[int, list[tuple[int, float]]] = {}
    for row in range(len(items)):
        start, end = co.indptr[row], co.indptr[row + 1]
        cols, vals = co.indices[start:end], co.data[start:end]
        keep = cols != row
        cols, vals = cols[keep], vals[keep] / (norms[row] * norms[cols[keep]])
        order = np.lexsort((items[cols], -vals))[:top_m]
        if len(order):
            out[int(items[row])] = [(int(items[cols[j]]), float(vals[j])) for j in order]
    return out


def seen_items(interactions: pd.DataFrame) -> dict[int, list[int]]:
    """Per user: the sorted distinct illusts they interacted with (any label)."""
    pairs = (
        interactions[["user_id", "illust_id"]]
        .drop_duplicates()
        .sort_values(["user_id", "illust_id"])
    )
    return {
        int(u): g["illust_id"].astype(int).tolist() for u, g in pairs.groupby("user_id", sort=True)
    }


def active_users(
    interactions: pd.DataFrame, *, as_of: datetime, window_days: float = 30.0
) -> list[int]:
    """Users with any interaction in ``[as_of - window, as_of]``, ascending."""
    start = pd.Timestamp(as_of) - pd.Timedelta(days=window_days)
    recent = interactions[interactions["create_time"] >= start]
    return sorted(int(u) for u in recent["user_id"].unique())


# -- online helpers ----------------------------------------------------------------------
def combine_neighbors(
    lists: Iterable[Sequence[tuple[int, float]]], *, n: int
) -> list[tuple[int, float]]:
    """Sum neighbour similarities over several seed items (ItemKNN scoring); top ``n``."""
    totals: dict[int, float] = {}
    for pairs in lists:
        for item, sim in pairs:
            totals[item] = totals.get(item, 0.0) + sim
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


I2I_SEEDS = constants.I2I_SEEDS  # re-exported: the API and precompute import it from here


def follow_new_scored(ids: Sequence[int]) -> list[tuple[int, float]]:
    """The follow_new channel's list (newest first) scored ``1 / (rank + 1)``."""
    return [(int(i), 1.0 / (r + 1)) for r, i in enumerate(ids)]


@dataclass(frozen=True)
class Candidate:
    """One recommended item: id, the score its channel gave it, and the channel's name."""

    illust_id: int
    score: float
    channel: str


def merge_round_robin(
    channels: Mapping[str, Sequence[tuple[int, float]]]
    | Sequence[tuple[str, Sequence[tuple[int, float]]]],
    k: int,
    *,
    exclude: Iterable[int] = (),
) -> list[Candidate]:
    """Take each channel's next head in turn (channel order = priority), skipping repeats
    and excluded ids, until ``k`` items or every channel is exhausted."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    ordered = list(channels.items()) if isinstance(channels, Mapping) else list(channels)
    skip = set(exclude)
    cursors = [0] * len(ordered)
    out: list[Candidate] = []
    while len(out) < k:
        progressed = False
        for c, (name, items) in enumerate(ordered):
            while cursors[c] < len(items):
                item, score = items[cursors[c]]
                cursors[c] += 1
                if item not in skip:
                    skip.add(item)
                    out.append(Candidate(int(item), float(score), name))
                    progressed = True
                    break
            if len(out) >= k:
                break
        if not progressed:
            break
    return out


# -- reading the mirror ------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelFrames:
    """The mirror tables the channels need."""

    illusts: pd.DataFrame
    interactions: pd.DataFrame
    follows: pd.DataFrame


def load_channel_frames(engine: sa.Engine) -> ChannelFrames:
    """Read illusts (id, artist, bookmarks, create_time), interactions and follows."""
    from tasks.core.schema import mirror_follows, mirror_illusts, mirror_interactions

    with engine.connect() as conn:
        illusts = pd.read_sql(
            sa.select(
                mirror_illusts.c.illust_id,
                mirror_illusts.c.artist_id,
                mirror_illusts.c.total_bookmarks,
                mirror_illusts.c.create_time,
            ),
            conn,
        )
        interactions = pd.read_sql(sa.select(mirror_interactions), conn)
        follows = pd.read_sql(sa.select(mirror_follows.c.user_id, mirror_follows.c.artist_id), conn)
    for frame, column in ((illusts, "create_time"), (interactions, "create_time")):
        frame[column] = pd.to_datetime(frame[column])
    log.info(
        "read %d illusts, %d interactions, %d follows from the mirror",
        len(illusts),
        len(interactions),
        len(follows),
    )
    return ChannelFrames(illusts, interactions, follows)
