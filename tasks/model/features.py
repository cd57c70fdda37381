"""Feature configuration and raw feature arrays for the two-tower model.

The configuration follows the write-up's ``build_input`` (numeric, categorical, hashed,
integer-bucketed, dense groups) as a typed list of :class:`FeatureSpec`, with its gaps fixed:
unseen values land in an OOV bucket instead of raising, and the illust_id embedding is one
layer shared by the item tower and the user's history pooling (padding 0 masked out).

Raw arrays produced here are exactly what the SavedModel signatures take (docs/CONTRACTS.md),
so training, the in-process server and TF-Serving all see the same inputs. Bucket boundaries
and vocabularies are fitted on training data only (:func:`fit_feature_stats`) and saved with
the model. The user ``history`` input is built in one place, :class:`BookmarkHistory`, for
training, vector refresh, the pyfunc and the API's user-tower fallback. The item count
features (``total_bookmarks``, ``total_view``) are built in one place too, :class:`ItemCounts`:
counted from mirrored interactions strictly before a cutoff, never the replica's live totals.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import pandas as pd
import sqlalchemy as sa

from tasks.core.common import get_logger, to_naive_utc
from tasks.model.constants import HISTORY_LEN as HISTORY_LEN  # re-exported

log = get_logger("features")

TAG_SEPARATOR = "|"
PRIOR_BOUNDARIES: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0, 10000.0)

ITEM_INT_FEATURES: tuple[str, ...] = (
    "illust_id",
    "artist_id",
    "width",
    "height",
    "sanity_level",
    "restrict",
    "x_restrict",
    "total_bookmarks",
    "total_view",
)
ITEM_FEATURES: tuple[str, ...] = (*ITEM_INT_FEATURES[:2], "tags", *ITEM_INT_FEATURES[2:])
USER_FEATURES: tuple[str, ...] = ("user_id", "history")

FeatureKind = Literal[
    "id_lookup",  # integer id -> vocabulary fitted on train (+1 OOV bucket) -> embedding
    "hashed",  # integer id -> hash bucket -> embedding
    "tags",  # "a|b|c" -> split -> hash buckets -> embeddings, mean-pooled
    "equal_freq",  # numeric -> equal-frequency buckets fitted on train -> embedding
    "prior_buckets",  # numeric -> fixed hand boundaries (0, 10, 100, ...) -> embedding
    "one_hot",  # small categorical -> vocabulary fitted on train (+1 OOV) -> one-hot
    "history",  # int64[B, H] ids, 0 = padding -> shared id embedding, masked mean
]


class FeatureConfigError(ValueError):
    """The feature configuration is inconsistent with itself or with the input columns."""


@dataclass(frozen=True)
class FeatureSpec:
    """One input feature: its raw column, tower, encoding and size."""

    name: str
    tower: Literal["item", "user"]
    kind: FeatureKind
    column: str = ""
    num_bins: int = 0
    embedding_dim: int = 8
    boundaries: tuple[float, ...] = ()
    shared_with: str = ""

    @property
    def source(self) -> str:
        return self.column or self.name


def default_feature_config(
    *, embedding_dim: int = 32, id_dim: int | None = None, hash_bins: int = 10_000
) -> list[FeatureSpec]:
    """DESIGN.md's preprocessing table as feature specs."""
    id_dim = id_dim or embedding_dim
    small = max(4, embedding_dim // 4)
    return [
        FeatureSpec("illust_id", "item", "id_lookup", embedding_dim=id_dim),
        FeatureSpec("artist_id", "item", "hashed", num_bins=hash_bins, embedding_dim=small),
        FeatureSpec("tags", "item", "tags", num_bins=hash_bins, embedding_dim=small),
        FeatureSpec("width", "item", "equal_freq", num_bins=8, embedding_dim=4),
        FeatureSpec("height", "item", "equal_freq", num_bins=8, embedding_dim=4),
        FeatureSpec("sanity_level", "item", "one_hot"),
        FeatureSpec("restrict", "item", "one_hot"),
        FeatureSpec("x_restrict", "item", "one_hot"),
        FeatureSpec("total_bookmarks", "item", "equal_freq", num_bins=10, embedding_dim=4),
        FeatureSpec(
            "total_bookmarks_prior",
            "item",
            "prior_buckets",
            column="total_bookmarks",
            boundaries=PRIOR_BOUNDARIES,
            embedding_dim=4,
        ),
        FeatureSpec("total_view", "item", "equal_freq", num_bins=10, embedding_dim=4),
        FeatureSpec(
            "total_view_prior",
            "item",
            "prior_buckets",
            column="total_view",
            boundaries=PRIOR_BOUNDARIES,
            embedding_dim=4,
        ),
        FeatureSpec("user_id", "user", "hashed", num_bins=hash_bins, embedding_dim=small),
        FeatureSpec("history", "user", "history", shared_with="illust_id"),
    ]


@dataclass(frozen=True)
class FeatureStats:
    """What preprocessing learned from training data: bucket boundaries and vocabularies."""

    boundaries: dict[str, list[float]] = field(default_factory=dict)
    vocabularies: dict[str, list[int]] = field(default_factory=dict)


def validate_feature_config(config: Sequence[FeatureSpec]) -> None:
    """Reject configs the model cannot build (unknown sources, dangling shares, duplicates)."""
    names = [spec.name for spec in config]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FeatureConfigError(f"duplicate feature names {duplicates}")
    allowed = {"item": set(ITEM_FEATURES), "user": set(USER_FEATURES)}
    for spec in config:
        if spec.source not in allowed[spec.tower]:
            raise FeatureConfigError(
                f"feature {spec.name!r} reads column {spec.source!r}, which the {spec.tower} "
                f"tower does not have (known: {sorted(allowed[spec.tower])})"
            )
        if spec.kind in ("hashed", "tags", "equal_freq") and spec.num_bins < 2:
            raise FeatureConfigError(f"feature {spec.name!r} needs num_bins >= 2")
        if spec.kind == "prior_buckets" and not spec.boundaries:
            raise FeatureConfigError(f"feature {spec.name!r} needs fixed boundaries")
        if spec.kind == "history":
            target = next((s for s in config if s.name == spec.shared_with), None)
            if target is None or target.kind != "id_lookup":
                raise FeatureConfigError(
                    f"history feature {spec.name!r} must share an id_lookup feature, "
                    f"got shared_with={spec.shared_with!r}"
                )
    if "illust_id" not in names:
        raise FeatureConfigError("feature config must contain illust_id")


def fit_feature_stats(
    config: Sequence[FeatureSpec], items: Mapping[str, np.ndarray]
) -> FeatureStats:
    """Fit equal-frequency boundaries and vocabularies on training items only."""
    validate_feature_config(config)
    boundaries: dict[str, list[float]] = {}
    vocabularies: dict[str, list[int]] = {}
    for spec in config:
        if spec.tower != "item":
            continue
        if spec.source not in items:
            raise FeatureConfigError(f"feature {spec.name!r}: column {spec.source!r} missing")
        values = np.asarray(items[spec.source])
        if spec.kind == "equal_freq":
            quantiles = np.quantile(values.astype(np.float64), np.linspace(0, 1, spec.num_bins + 1))
            # Interior cut points, deduplicated: ties collapse buckets instead of making empty ones.
            boundaries[spec.name] = sorted({float(q) for q in quantiles[1:-1]})
        elif spec.kind in ("one_hot", "id_lookup"):
            vocab = np.unique(values.astype(np.int64))
            if spec.kind == "id_lookup":
                vocab = vocab[vocab != 0]  # 0 is padding in history, never a real id
            vocabularies[spec.name] = [int(v) for v in vocab]
    log.info(
        "fitted feature stats: %s",
        {
            **{k: len(v) + 1 for k, v in boundaries.items()},
            **{k: len(v) for k, v in vocabularies.items()},
        },
    )
    return FeatureStats(boundaries=boundaries, vocabularies=vocabularies)


def config_to_json(config: Sequence[FeatureSpec], stats: FeatureStats | None = None) -> str:
    """The feature config (and fitted stats) as JSON, for the MLflow artifact and the export."""
    payload: dict[str, Any] = {"features": [dataclasses.asdict(s) for s in config]}
    if stats is not None:
        payload["stats"] = dataclasses.asdict(stats)
    return json.dumps(payload, indent=2, sort_keys=True)


def config_from_json(text: str) -> tuple[list[FeatureSpec], FeatureStats | None]:
    payload = json.loads(text)
    config = [
        FeatureSpec(**{**f, "boundaries": tuple(f.get("boundaries", ()))})
        for f in payload["features"]
    ]
    stats = FeatureStats(**payload["stats"]) if "stats" in payload else None
    return config, stats


def _tag_names(value: Any) -> str:
    """Business ``tags`` (JSON text ``[{"name", ...}]``, a list, or "a|b") -> "a|b"."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("["):
            return text
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return ""
    if isinstance(value, Iterable):
        names = []
        for tag in value:
            name = tag.get("name") if isinstance(tag, Mapping) else tag
            if name:
                names.append(str(name).replace(TAG_SEPARATOR, " "))
        return TAG_SEPARATOR.join(names)
    return ""


def _int_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    if name not in frame.columns:
        raise FeatureConfigError(f"illusts frame lacks column {name!r}")
    return pd.to_numeric(frame[name], errors="coerce").fillna(0).to_numpy().astype(np.int64)


def item_features_from_frame(illusts_df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Raw ``item_tower`` inputs from an illusts frame (business schema); nulls become 0/""."""
    out = {name: _int_column(illusts_df, name) for name in ITEM_INT_FEATURES}
    if "tags" not in illusts_df.columns:
        raise FeatureConfigError("illusts frame lacks column 'tags'")
    out["tags"] = np.array([_tag_names(v) for v in illusts_df["tags"]], dtype=object)
    return {name: out[name] for name in ITEM_FEATURES}


# ---------------------------------------------------------------- user history: the one builder


@dataclass
class BookmarkHistory:
    """The ``history`` input, built here only: each user's bookmarked illust_ids before a time,
    newest first, 0-padded to a length H (docs/CONTRACTS.md, ``user_tower``).

    Point in time: times are whole seconds (the DATETIME resolution); a history as of ``t``
    holds bookmarks of seconds strictly before ``t``'s second, so a target never sees itself
    nor anything bookmarked in the same second. Ties on equal ``create_time`` put the larger
    illust_id first. Lookups are vectorised through one sorted key ``user_row * span + second``.
    Already-cut id lists (the KV ``hist`` value, the pyfunc's ``"12|7|3"`` column) are laid out
    the same way by :meth:`pad`.
    """

    user_ids: np.ndarray
    offsets: np.ndarray
    seconds: np.ndarray
    items: np.ndarray
    keys: np.ndarray
    base: int
    span: int

    @classmethod
    def from_frame(cls, bookmarks: pd.DataFrame) -> BookmarkHistory:
        """From rows (user_id, illust_id, create_time[, label]); rows whose label is not 1
        (views) are dropped."""
        if "label" in bookmarks.columns:
            bookmarks = bookmarks[bookmarks["label"] == 1]
        frame = bookmarks.sort_values(["user_id", "create_time", "illust_id"], kind="mergesort")
        users = frame["user_id"].to_numpy(np.int64)
        user_ids, starts, counts = np.unique(users, return_index=True, return_counts=True)
        seconds = (
            pd.to_datetime(frame["create_time"]).to_numpy().astype("datetime64[s]").astype(np.int64)
            if len(frame)
            else np.zeros(0, np.int64)
        )
        base = int(seconds.min()) if len(seconds) else 0
        span = int(seconds.max()) - base + 2 if len(seconds) else 1
        if len(user_ids) * span >= 2**62:
            raise ValueError(f"history key overflow: {len(user_ids)} users x {span} s")
        rows = np.repeat(np.arange(len(user_ids), dtype=np.int64), counts)
        return cls(
            user_ids=user_ids,
            offsets=np.append(starts, len(users)).astype(np.int64),
            seconds=seconds,
            items=frame["illust_id"].to_numpy(np.int64),
            keys=rows * span + (seconds - base),
            base=base,
            span=span,
        )

    def histories(self, user_ids: np.ndarray, as_of: np.ndarray, length: int) -> np.ndarray:
        """int64[B, length]: bookmarks strictly before ``as_of`` (datetime64 or epoch µs),
        newest first, 0-padded."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        out = np.zeros((len(user_ids), length), dtype=np.int64)
        if not len(self.user_ids) or not len(user_ids):
            return out
        as_of = np.asarray(as_of)
        if np.issubdtype(as_of.dtype, np.datetime64):
            as_of_s = as_of.astype("datetime64[s]").astype(np.int64)
        else:
            as_of_s = np.floor_divide(as_of.astype(np.int64), 1_000_000)
        rows = np.clip(np.searchsorted(self.user_ids, user_ids), 0, len(self.user_ids) - 1)
        known = self.user_ids[rows] == user_ids
        offset = np.clip(as_of_s - self.base, 0, self.span - 1)
        cut = np.searchsorted(self.keys, rows * self.span + offset, side="left")
        lo = self.offsets[rows]
        index = cut[:, None] - 1 - np.arange(length)[None, :]
        valid = known[:, None] & (index >= lo[:, None])
        out[valid] = self.items[index[valid]]
        return out

    def latest(self, user_ids: np.ndarray, length: int) -> np.ndarray:
        """int64[B, length]: every user's most recent bookmarks (no time cut)."""
        as_of = np.full(len(np.asarray(user_ids)), np.iinfo(np.int64).max)
        return self.histories(user_ids, as_of, length)

    @staticmethod
    def pad(values: Any, length: int) -> np.ndarray:
        """Already-cut newest-first histories (int lists, or ``"12|7|3"`` strings) ->
        int64[B, length], truncated to the newest ``length`` and 0-padded."""
        out = np.zeros((len(values), length), dtype=np.int64)
        for row, value in enumerate(values):
            if isinstance(value, str):
                ids = [int(v) for v in value.split("|") if v.strip()]
            else:
                ids = [int(v) for v in (value if value is not None else [])]
            ids = ids[:length]
            out[row, : len(ids)] = ids
        return out


def _as_of_second(as_of: datetime | str) -> datetime:
    """``as_of`` as naive UTC, floored to the second (the history cut's resolution)."""
    return pd.Timestamp(to_naive_utc(as_of)).floor("s").to_pydatetime()


def user_features_from_frames(
    user_ids: Sequence[int] | np.ndarray,
    interactions_df: pd.DataFrame,
    *,
    as_of: datetime | str | None = None,
    history_len: int = HISTORY_LEN,
) -> dict[str, np.ndarray]:
    """Raw ``user_tower`` inputs: each user's bookmarked illust_ids before ``as_of``.

    Built by :class:`BookmarkHistory` (newest first, ties: larger illust_id first, 0-padded;
    ``as_of`` exclusive at whole-second resolution, so a target never sees itself).
    """
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    missing = {"user_id", "illust_id", "label", "create_time"} - set(interactions_df.columns)
    if missing:
        raise FeatureConfigError(f"interactions frame lacks columns {sorted(missing)}")
    ids = np.asarray(user_ids, dtype=np.int64)
    history = BookmarkHistory.from_frame(interactions_df)
    if as_of is None:
        return {"user_id": ids, "history": history.latest(ids, history_len)}
    cut = np.full(len(ids), np.datetime64(_as_of_second(as_of), "s"))
    return {"user_id": ids, "history": history.histories(ids, cut, history_len)}


# ---------------------------------------------------------------- item counts: point in time

COUNT_FEATURES: tuple[str, ...] = ("total_bookmarks", "total_view")


def _epoch_seconds(as_of: Any, n: int) -> np.ndarray:
    """``as_of`` as int64 epoch seconds, one per row: a scalar (datetime, str, datetime64)
    is broadcast; an array is datetime64 or epoch µs (the samples stream's unit)."""
    if isinstance(as_of, np.ndarray):
        if np.issubdtype(as_of.dtype, np.datetime64):
            return as_of.astype("datetime64[s]").astype(np.int64)
        return np.floor_divide(as_of.astype(np.int64), 1_000_000)
    if isinstance(as_of, np.datetime64):
        return np.full(n, as_of.astype("datetime64[s]").astype(np.int64), dtype=np.int64)
    second = np.datetime64(_as_of_second(as_of), "s").astype(np.int64)
    return np.full(n, second, dtype=np.int64)


@dataclass
class ItemCounts:
    """The item count features (``total_bookmarks``, ``total_view``) as of any time, built
    here only, from mirrored interactions: bookmarks = rows with label 1, views = rows of any
    label, each counted strictly before the cutoff's second (the history's resolution).

    The replica's live totals are never a feature: they include later interactions, the
    holdout's own among them. Training (per example, as of its cutoff), holdout scoring (as of
    each query's cutoff, from the split's train part) and serving's vector refresh (as of its
    data time) all call :meth:`as_of`. One sorted key ``item_row * span + second`` and a
    cumulative bookmark count make a lookup two ``searchsorted`` calls for any number of
    (item, cutoff) pairs.
    """

    item_ids: np.ndarray
    offsets: np.ndarray
    keys: np.ndarray
    bookmarks_cum: np.ndarray
    base: int
    span: int

    @classmethod
    def from_frame(cls, interactions: pd.DataFrame) -> ItemCounts:
        """From rows (illust_id, label, create_time); other columns are ignored."""
        missing = {"illust_id", "label", "create_time"} - set(interactions.columns)
        if missing:
            raise FeatureConfigError(f"interactions frame lacks columns {sorted(missing)}")
        items = interactions["illust_id"].to_numpy(np.int64)
        seconds = (
            pd.to_datetime(interactions["create_time"])
            .to_numpy()
            .astype("datetime64[s]")
            .astype(np.int64)
            if len(interactions)
            else np.zeros(0, np.int64)
        )
        order = np.lexsort((seconds, items))
        items, seconds = items[order], seconds[order]
        labels = interactions["label"].to_numpy()[order] == 1
        item_ids, starts = np.unique(items, return_index=True)
        base = int(seconds.min()) if len(seconds) else 0
        span = int(seconds.max()) - base + 2 if len(seconds) else 1
        if len(item_ids) * span >= 2**62:
            raise ValueError(f"item count key overflow: {len(item_ids)} items x {span} s")
        rows = np.searchsorted(item_ids, items)
        return cls(
            item_ids=item_ids,
            offsets=np.append(starts, len(items)).astype(np.int64),
            keys=rows.astype(np.int64) * span + (seconds - base),
            bookmarks_cum=np.concatenate([[0], np.cumsum(labels, dtype=np.int64)]),
            base=base,
            span=span,
        )

    def as_of(self, illust_ids: np.ndarray, as_of: Any = None) -> dict[str, np.ndarray]:
        """``{"total_bookmarks", "total_view"}`` int64 arrays aligned with ``illust_ids``:
        interactions strictly before ``as_of`` (a scalar time, or one cutoff per id as
        datetime64 / epoch µs; ``None``: every interaction). Unknown ids count 0."""
        ids = np.asarray(illust_ids, dtype=np.int64)
        bookmarks = np.zeros(len(ids), np.int64)
        views = np.zeros(len(ids), np.int64)
        if not len(self.item_ids) or not len(ids):
            return {"total_bookmarks": bookmarks, "total_view": views}
        rows = np.clip(np.searchsorted(self.item_ids, ids), 0, len(self.item_ids) - 1)
        known = self.item_ids[rows] == ids
        if as_of is None:
            offset = np.full(len(ids), self.span - 1, np.int64)
        else:
            offset = np.clip(_epoch_seconds(as_of, len(ids)) - self.base, 0, self.span - 1)
        cut = np.searchsorted(self.keys, rows * self.span + offset, side="left")
        lo = self.offsets[rows]
        views[known] = (cut - lo)[known]
        bookmarks[known] = (self.bookmarks_cum[cut] - self.bookmarks_cum[lo])[known]
        return {"total_bookmarks": bookmarks, "total_view": views}

    def apply(self, features: Mapping[str, np.ndarray], as_of: Any = None) -> dict[str, np.ndarray]:
        """A copy of raw item features with the count features replaced by :meth:`as_of`
        for ``features["illust_id"]``."""
        return {**features, **self.as_of(features["illust_id"], as_of)}


def load_item_counts(engine: sa.Engine, *, as_of: datetime | str | None = None) -> ItemCounts:
    """:class:`ItemCounts` over ``mirror_interactions`` before ``as_of`` (None: all rows)."""
    from tasks.core.schema import mirror_interactions as mi

    query = sa.select(mi.c.illust_id, mi.c.label, mi.c.create_time)
    if as_of is not None:  # read less; the cut itself is ItemCounts'
        query = query.where(mi.c.create_time < _as_of_second(as_of))
    with engine.connect() as conn:
        return ItemCounts.from_frame(pd.read_sql(query, conn))


def load_item_features(
    engine: sa.Engine, *, as_of: datetime | str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every illust in the recsys DB mirror, as (illust_ids, item_tower inputs).

    The count features are :class:`ItemCounts` from ``mirror_interactions`` strictly before
    ``as_of`` (None: every mirrored interaction), never the replica's live totals.
    """
    from tasks.core.schema import mirror_illusts

    with engine.connect() as conn:
        frame = pd.read_sql(sa.select(mirror_illusts).order_by(mirror_illusts.c.illust_id), conn)
    features = load_item_counts(engine, as_of=as_of).apply(item_features_from_frame(frame), as_of)
    log.info(
        "loaded item features for %d illusts from mirror_illusts, counts as of %s",
        len(frame),
        as_of or "the newest mirror interaction",
    )
    return features["illust_id"], features


def load_user_features(
    engine: sa.Engine, *, as_of: datetime | str | None = None, history_len: int = HISTORY_LEN
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every mirrored user (plus users seen only in interactions), as (user_ids, inputs)."""
    from tasks.core.schema import mirror_interactions, mirror_users

    query = sa.select(
        mirror_interactions.c.user_id,
        mirror_interactions.c.illust_id,
        mirror_interactions.c.label,
        mirror_interactions.c.create_time,
    ).where(mirror_interactions.c.label == 1)
    if as_of is not None:  # read less; the cut itself is BookmarkHistory's
        query = query.where(mirror_interactions.c.create_time < _as_of_second(as_of))
    with engine.connect() as conn:
        users = pd.read_sql(sa.select(mirror_users.c.user_id), conn)
        interactions = pd.read_sql(query, conn)
    ids = np.union1d(
        users["user_id"].to_numpy(np.int64), interactions["user_id"].to_numpy(np.int64)
    )
    features = user_features_from_frames(ids, interactions, as_of=as_of, history_len=history_len)
    log.info(
        "loaded user features for %d users from %d bookmarks (as_of=%s)",
        len(ids),
        len(interactions),
        as_of,
    )
    return ids, features
