"""Synthetic Pixiv-style business data with a structure a good recommender can learn.

Planted structure (all drawn from one ``numpy.random.Generator`` seeded by the config):

* Tags have Zipf-like popularity. Each artist has ``tags_per_artist`` signature tags; each
  illust carries its artist's first signature tag plus 0-3 more (from the artist, or random).
* Illust popularity is Zipf (``weight ~ 1 / rank ** zipf_exponent`` over a random ranking).
* Each user has ``tastes_per_user`` taste tags and ``favourite_artists_per_user`` favourite
  artists (drawn among artists whose signature tags match the user's tastes).
* A view comes from the user's tastes (a taste tag's or favourite artist's illusts, weighted by
  popularity) with probability ``taste_view_share``, else from global popularity.
* A view becomes a bookmark (label 1) with probability ``taste_bookmark_rate`` when the illust
  matches the user (carries a taste tag or is by a favourite artist), else ``bookmark_rate``.
* Views come in sessions (``session_length`` views, >= 1 s apart) spread over ``days`` days from
  ``start_date``, so an incremental daily extraction has work every day. One row per
  (user, illust): a repeated view keeps its first time, labelled 1 if any view bookmarked it.
* Half the catalogue exists before ``start_date`` (created up to ``days`` days earlier), the
  rest is created during the period; a view is never earlier than its illust's creation.
  ``update_share`` of illusts are updated later than created (``update_time > create_time``).
* ``total_view`` / ``total_bookmarks`` are the generated counts scaled by ``site_scale`` (the
  site has more users than the sample), so ``total_bookmarks <= total_view`` always.
* Users follow each favourite artist with probability ``follow_rate``.

Valid ranges of every generated field are in :data:`FIELD_RANGES`, which the validation suite
imports, so the generator and the expectations cannot disagree.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.common import get_logger
from tasks.data.sources.frames import BusinessFrames

log = get_logger("generate")

# Valid values of business fields (Pixiv's conventions). "values": the allowed set;
# "min"/"max": inclusive bounds. The generator draws within these; validation enforces them.
FIELD_RANGES: dict[str, dict[str, dict[str, Any]]] = {
    "illusts": {
        "illust_id": {"min": 1},
        "artist_id": {"min": 0},  # 0 = unknown artist (MovieLens items without a year)
        "width": {"min": 1, "max": 32768},
        "height": {"min": 1, "max": 32768},
        "sanity_level": {"values": [0, 2, 4, 6]},  # Pixiv: even levels, 2 = all ages
        "restrict": {"values": [0, 1, 2]},  # 0 public, 1 my-pixiv only, 2 private
        "x_restrict": {"values": [0, 1, 2]},  # 0 all ages, 1 R-18, 2 R-18G
        "total_bookmarks": {"min": 0},
        "total_view": {"min": 0},
    },
    "users": {"user_id": {"min": 1}},
    "interactions": {
        "user_id": {"min": 1},
        "illust_id": {"min": 1},
        "label": {"values": [0, 1]},  # 0 viewed, not bookmarked; 1 bookmarked
    },
    "follows": {"user_id": {"min": 1}, "artist_id": {"min": 0}},
}
# Generator's draw probabilities for the categorical fields (all inside FIELD_RANGES).
SANITY_LEVEL_PROBS: dict[int, float] = {2: 0.8, 4: 0.15, 6: 0.05}
RESTRICT_PROBS: dict[int, float] = {0: 0.97, 1: 0.02, 2: 0.01}
X_RESTRICT_PROBS: dict[int, float] = {0: 0.9, 1: 0.09, 2: 0.01}
TAG_THEMES = (
    "オリジナル", "風景", "女の子", "男の子", "猫", "犬", "ファンタジー", "SF", "メカ", "背景",
    "空", "海", "花", "夜", "雨", "制服", "和風", "ドット絵", "落書き", "水彩",
)  # fmt: skip
TAG_THEME_TRANSLATIONS = (
    "original", "landscape", "girl", "boy", "cat", "dog", "fantasy", "sci-fi", "mecha", "background",
    "sky", "sea", "flower", "night", "rain", "uniform", "japanese style", "pixel art", "doodle", "watercolor",
)  # fmt: skip


@dataclass(frozen=True)
class GeneratorConfig:
    """Size, time span and behaviour knobs of the synthetic site (see the module docstring)."""

    n_users: int = 1000
    n_illusts: int = 2000
    n_artists: int = 200
    n_tags: int = 100
    days: int = 14
    start_date: date | str = "2026-01-01"  # a date, a midnight datetime, or "YYYY-MM-DD" (UTC)
    seed: int = 42
    views_per_user: float = 40.0  # mean views per user over the period (Poisson, >= 1)
    bookmark_rate: float = 0.02  # P(bookmark | view of a non-matching illust)
    taste_bookmark_rate: float = 0.15  # P(bookmark | view of a taste-matching illust)
    taste_view_share: float = 0.5  # share of views drawn from the user's tastes
    follow_rate: float = 0.5  # P(user follows each favourite artist)
    zipf_exponent: float = 1.0
    tags_per_artist: int = 3
    tastes_per_user: int = 3
    favourite_artists_per_user: int = 3
    session_length: int = 8
    update_share: float = 0.3
    site_scale: int = 10

    def check(self) -> None:
        """Raise ``ValueError`` naming the first impossible setting."""
        for name in ("n_users", "n_illusts", "n_artists", "n_tags", "days", "session_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tags_per_artist", "tastes_per_user", "favourite_artists_per_user"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.tags_per_artist > self.n_tags:
            raise ValueError(f"tags_per_artist={self.tags_per_artist} exceeds n_tags={self.n_tags}")
        if self.tastes_per_user > self.n_tags:
            raise ValueError(f"tastes_per_user={self.tastes_per_user} exceeds n_tags={self.n_tags}")
        if self.favourite_artists_per_user > self.n_artists:
            raise ValueError(
                f"favourite_artists_per_user={self.favourite_artists_per_user} exceeds "
                f"n_artists={self.n_artists}"
            )
        for name in (
            "bookmark_rate",
            "taste_bookmark_rate",
            "taste_view_share",
            "follow_rate",
            "update_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.views_per_user <= 0:
            raise ValueError(f"views_per_user must be > 0, got {self.views_per_user}")
        if self.zipf_exponent < 0:
            raise ValueError(f"zipf_exponent must be >= 0, got {self.zipf_exponent}")
        if self.site_scale < 1:
            raise ValueError(f"site_scale must be >= 1, got {self.site_scale}")
        self.start()

    def start(self) -> datetime:
        """``start_date`` as a naive UTC midnight (a datetime's time of day is dropped)."""
        value = self.start_date
        if isinstance(value, datetime):
            value = value.date()
        if isinstance(value, date):
            return datetime.combine(value, datetime.min.time())
        try:
            return datetime.combine(date.fromisoformat(str(value)), datetime.min.time())
        except ValueError as exc:
            raise ValueError(f"start_date must be a date or YYYY-MM-DD, got {value!r}") from exc


def tag_vocabulary(n_tags: int) -> list[dict[str, Any]]:
    """Tag dicts ``{"name", "translatedName", "id"}``; names are Japanese themes + a number."""
    tags = []
    for index in range(n_tags):
        theme = index % len(TAG_THEMES)
        round_ = index // len(TAG_THEMES)
        suffix = "" if round_ == 0 else str(round_)
        tags.append(
            {
                "name": f"{TAG_THEMES[theme]}{suffix}",
                "translatedName": f"{TAG_THEME_TRANSLATIONS[theme]}{suffix}",
                "id": index + 1,
            }
        )
    return tags


def _zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Normalised Zipf weights over a random ranking of ``n`` items."""
    ranks = rng.permutation(n) + 1
    weights = 1.0 / ranks.astype(np.float64) ** exponent
    return weights / weights.sum()


def _choice_rows(rng: np.random.Generator, n_rows: int, k: int, p: np.ndarray) -> np.ndarray:
    """``n_rows`` draws of ``k`` distinct indices each, weighted by ``p`` (Gumbel top-k)."""
    gumbel = rng.gumbel(size=(n_rows, len(p)))
    keys = np.log(np.maximum(p, 1e-300))[None, :] + gumbel
    return np.argpartition(-keys, k - 1, axis=1)[:, :k]


def _categorical(rng: np.random.Generator, probs: dict[int, float], size: int) -> np.ndarray:
    values = np.array(list(probs), dtype=np.int64)
    weights = np.array(list(probs.values()), dtype=np.float64)
    return rng.choice(values, size=size, p=weights / weights.sum())


def _seconds(values: np.ndarray) -> np.ndarray:
    """Float seconds → int64 whole seconds (DATETIME columns keep no fractions)."""
    return np.floor(values).astype(np.int64)


def _sample_from_pools(
    rng: np.random.Generator,
    pool_keys: np.ndarray,
    pool_members: list[np.ndarray],
    popularity: np.ndarray,
    fallback: np.ndarray,
) -> np.ndarray:
    """For each entry of ``pool_keys`` draw one member of that pool, weighted by popularity;
    empty pools fall back to the matching entry of ``fallback``."""
    out = fallback.copy()
    order = np.argsort(pool_keys, kind="stable")
    keys_sorted = pool_keys[order]
    unique_keys, starts = np.unique(keys_sorted, return_index=True)
    ends = np.append(starts[1:], len(keys_sorted))
    for key, start, end in zip(unique_keys, starts, ends, strict=True):
        members = pool_members[int(key)]
        if len(members) == 0:
            continue
        weights = popularity[members]
        out[order[start:end]] = rng.choice(members, size=end - start, p=weights / weights.sum())
    return out


@dataclass(frozen=True)
class PlantedStructure:
    """The hidden tastes behind generated data (1-based ids), for tests and benchmarks that
    check a model recovers them. Row ``u`` belongs to ``user_id = u + 1``."""

    user_taste_tags: np.ndarray  # int64[n_users, tastes_per_user], tag ids
    user_favourite_artists: np.ndarray  # int64[n_users, favourite_artists_per_user], artist ids

    def matches(
        self, user_ids: np.ndarray, illusts: pd.DataFrame, illust_ids: np.ndarray
    ) -> np.ndarray:
        """Whether each (user, illust) pair matches the user's taste tags or favourite artists."""
        by_id = illusts.set_index("illust_id")
        tag_ids = by_id["tags"].map(lambda text: {t["id"] for t in json.loads(text)})
        artists = by_id["artist_id"].reindex(illust_ids).to_numpy()
        pair_tags = tag_ids.reindex(illust_ids).to_numpy()
        rows = np.asarray(user_ids) - 1
        tastes = self.user_taste_tags[rows]
        favourites = self.user_favourite_artists[rows]
        by_artist = (favourites == artists[:, None]).any(axis=1)
        by_tag = np.array(
            [
                bool(tags.intersection(row.tolist()))
                for tags, row in zip(pair_tags, tastes, strict=True)
            ]
        )
        return by_artist | by_tag


DEMO_CONFIG = GeneratorConfig(
    n_users=400, n_illusts=1500, n_artists=120, days=7, start_date="2026-10-01", seed=3
)
"""``make demo``'s site (scripts/demo.py's defaults; ``bench/quality.py --format demo``)."""


def generate_frames(config: GeneratorConfig) -> BusinessFrames:
    """Generate users, illusts, interactions and follows for ``config`` (same seed → same frames)."""
    return generate_with_structure(config)[0]


def generate_with_structure(config: GeneratorConfig) -> tuple[BusinessFrames, PlantedStructure]:
    """:func:`generate_frames` plus the hidden tastes it planted."""
    config.check()
    started = time.monotonic()
    rng = np.random.default_rng(config.seed)
    start = config.start()
    period_s = float(config.days * 86400)

    n_users, n_illusts, n_artists, n_tags = (
        config.n_users,
        config.n_illusts,
        config.n_artists,
        config.n_tags,
    )
    tag_popularity = _zipf_weights(n_tags, 0.8, rng)

    # Artists: signature tags and productivity.
    artist_tags = _choice_rows(rng, n_artists, config.tags_per_artist, tag_popularity)
    artist_productivity = _zipf_weights(n_artists, 0.7, rng)

    # Illusts: artist, tags (first signature tag + up to 3 more), popularity, times.
    illust_artist = rng.choice(n_artists, size=n_illusts, p=artist_productivity)
    illust_has_tag = np.zeros((n_illusts, n_tags), dtype=bool)
    rows = np.arange(n_illusts)
    illust_has_tag[rows, artist_tags[illust_artist, 0]] = True
    n_extra = rng.integers(0, 4, size=n_illusts)
    for slot in range(3):
        wants = n_extra > slot
        from_artist = rng.random(n_illusts) < 0.6
        artist_pick = artist_tags[illust_artist, rng.integers(0, config.tags_per_artist, n_illusts)]
        random_pick = rng.choice(n_tags, size=n_illusts, p=tag_popularity)
        pick = np.where(from_artist, artist_pick, random_pick)
        illust_has_tag[rows[wants], pick[wants]] = True
    popularity = _zipf_weights(n_illusts, config.zipf_exponent, rng)
    pre_existing = rng.random(n_illusts) < 0.5
    illust_create_s = np.where(
        pre_existing,
        rng.uniform(-period_s, 0.0, n_illusts),
        rng.uniform(0.0, 0.9 * period_s, n_illusts),
    )
    illust_create_s = _seconds(illust_create_s)
    log.info("illusts: %d over %d artists and %d tags", n_illusts, n_artists, n_tags)

    # Users: taste tags and favourite artists (among artists signing a taste tag).
    user_tastes = _choice_rows(rng, n_users, config.tastes_per_user, tag_popularity)
    artist_signs_tag = np.zeros((n_tags, n_artists), dtype=bool)
    for slot in range(config.tags_per_artist):
        artist_signs_tag[artist_tags[:, slot], np.arange(n_artists)] = True
    user_artist_affinity = np.zeros((n_users, n_artists), dtype=np.float64)
    for slot in range(config.tastes_per_user):
        user_artist_affinity += artist_signs_tag[user_tastes[:, slot]]
    fav_p = (user_artist_affinity * 20.0 + 1.0) * artist_productivity[None, :]
    fav_p /= fav_p.sum(axis=1, keepdims=True)
    favourite_artists = _favourites(rng, fav_p, config.favourite_artists_per_user)

    # Views: per user Poisson count, taste or global source.
    n_views = np.maximum(rng.poisson(config.views_per_user, n_users), 1)
    view_user = np.repeat(np.arange(n_users), n_views)
    n_total = len(view_user)
    log.info("drawing %d views for %d users", n_total, n_users)
    global_pick = rng.choice(n_illusts, size=n_total, p=popularity)
    from_taste = rng.random(n_total) < config.taste_view_share
    by_artist = rng.random(n_total) < 0.4
    taste_tag = user_tastes[view_user, rng.integers(0, config.tastes_per_user, n_total)]
    fav_artist = favourite_artists[
        view_user, rng.integers(0, config.favourite_artists_per_user, n_total)
    ]
    illusts_by_tag = [np.flatnonzero(illust_has_tag[:, t]) for t in range(n_tags)]
    illusts_by_artist = _members_by_key(illust_artist, n_artists)
    tag_views = from_taste & ~by_artist
    artist_views = from_taste & by_artist
    view_illust = global_pick.copy()
    view_illust[tag_views] = _sample_from_pools(
        rng, taste_tag[tag_views], illusts_by_tag, popularity, global_pick[tag_views]
    )
    view_illust[artist_views] = _sample_from_pools(
        rng, fav_artist[artist_views], illusts_by_artist, popularity, global_pick[artist_views]
    )
    log.info("views drawn (%.1fs)", time.monotonic() - started)

    # Bookmarks: far likelier when the illust matches the user's tastes.
    matches = np.zeros(n_total, dtype=bool)
    for slot in range(config.tastes_per_user):
        matches |= illust_has_tag[view_illust, user_tastes[view_user, slot]]
    for slot in range(config.favourite_artists_per_user):
        matches |= illust_artist[view_illust] == favourite_artists[view_user, slot]
    bookmark_p = np.where(matches, config.taste_bookmark_rate, config.bookmark_rate)
    view_label = (rng.random(n_total) < bookmark_p).astype(np.int64)

    # Times: sessions of consecutive views, never before the illust exists.
    first_view_index = np.concatenate([[0], np.cumsum(n_views)[:-1]])
    rank_in_user = np.arange(n_total) - np.repeat(first_view_index, n_views)
    session_of_view = rank_in_user // config.session_length
    n_sessions = (n_views + config.session_length - 1) // config.session_length
    session_offset = np.concatenate([[0], np.cumsum(n_sessions)[:-1]])
    session_start = rng.uniform(
        0.0, period_s - 3600.0 if period_s > 7200 else period_s / 2, n_sessions.sum()
    )
    gaps = 1.0 + rng.exponential(30.0, n_total)
    gaps[rank_in_user % config.session_length == 0] = 0.0
    session_id = session_offset[view_user] + session_of_view
    within = _cumsum_by_group(gaps, session_id)
    view_s = _seconds(session_start[session_id] + within)
    too_early = view_s < illust_create_s[view_illust]
    redrawn = rng.uniform(illust_create_s[view_illust] + 1.0, period_s - 1.0)
    view_s = np.where(too_early, _seconds(redrawn), view_s)
    view_s = np.clip(view_s, 0, int(period_s) - 1)

    interactions = pd.DataFrame(
        {
            "user_id": view_user + 1,
            "illust_id": view_illust + 1,
            "label": view_label,
            "seconds": view_s,
        }
    )
    interactions = interactions.sort_values(["user_id", "illust_id", "seconds"], kind="stable")
    firsts = interactions.groupby(["user_id", "illust_id"], sort=False).agg(
        label=("label", "max"), seconds=("seconds", "min")
    )
    interactions = firsts.reset_index().sort_values(["seconds", "user_id", "illust_id"])
    interactions = interactions.reset_index(drop=True)
    log.info(
        "interactions: %d unique (user, illust) of %d views, %d bookmarks (%.1fs)",
        len(interactions),
        n_total,
        int(interactions["label"].sum()),
        time.monotonic() - started,
    )

    # Illust counters: generated counts scaled to the whole site.
    views_per_illust = np.bincount(interactions["illust_id"] - 1, minlength=n_illusts)
    bookmarks_per_illust = np.bincount(
        interactions["illust_id"] - 1, weights=interactions["label"], minlength=n_illusts
    ).astype(np.int64)
    total_view = views_per_illust * config.site_scale + rng.integers(
        0, config.site_scale, n_illusts
    )
    total_bookmarks = bookmarks_per_illust * config.site_scale
    updated = rng.random(n_illusts) < config.update_share
    illust_update_s = np.where(
        updated,
        _seconds(rng.uniform(np.maximum(illust_create_s, 0) + 1.0, period_s)),
        illust_create_s,
    )

    vocabulary = tag_vocabulary(n_tags)
    tag_json = [
        json.dumps([vocabulary[t] for t in np.flatnonzero(row)], ensure_ascii=False)
        for row in illust_has_tag
    ]
    width = rng.integers(600, 3001, n_illusts)
    aspect = rng.choice([0.5, 0.75, 1.0, 1.333, 1.414, 1.777], size=n_illusts)
    height = np.clip(np.round(width * aspect), 1, 32768).astype(np.int64)

    def to_time(seconds: np.ndarray) -> pd.Series:
        return pd.Series(pd.Timestamp(start) + pd.to_timedelta(seconds, unit="s")).astype(
            "datetime64[ns]"
        )

    illusts = pd.DataFrame(
        {
            "illust_id": np.arange(1, n_illusts + 1, dtype=np.int64),
            "artist_id": illust_artist.astype(np.int64) + 1,
            "tags": tag_json,
            "width": width.astype(np.int64),
            "height": height,
            "sanity_level": _categorical(rng, SANITY_LEVEL_PROBS, n_illusts),
            "restrict": _categorical(rng, RESTRICT_PROBS, n_illusts),
            "x_restrict": _categorical(rng, X_RESTRICT_PROBS, n_illusts),
            "total_bookmarks": total_bookmarks.astype(np.int64),
            "total_view": total_view.astype(np.int64),
            "create_time": to_time(illust_create_s),
            "update_time": to_time(illust_update_s),
        }
    )

    first_seen = interactions.groupby("user_id")["seconds"].min()
    user_first_s = np.full(n_users, int(period_s) - 1, dtype=np.int64)
    user_first_s[first_seen.index.to_numpy() - 1] = first_seen.to_numpy()
    user_create_s = _seconds(rng.uniform(-period_s, user_first_s.astype(np.float64)))
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64),
            "username": [f"user_{i:07d}" for i in range(1, n_users + 1)],
            "create_time": to_time(user_create_s),
        }
    )

    follow_mask = rng.random(favourite_artists.shape) < config.follow_rate
    follow_user, follow_slot = np.nonzero(follow_mask)
    follow_artist = favourite_artists[follow_user, follow_slot]
    follow_s = _seconds(
        rng.uniform(np.maximum(user_create_s[follow_user], 0).astype(np.float64), period_s)
    )
    follows = pd.DataFrame(
        {
            "user_id": follow_user.astype(np.int64) + 1,
            "artist_id": follow_artist.astype(np.int64) + 1,
            "create_time": to_time(follow_s),
        }
    ).sort_values(["create_time", "user_id", "artist_id"], ignore_index=True)

    frames = BusinessFrames(
        users=users,
        illusts=illusts,
        interactions=interactions.assign(create_time=to_time(interactions["seconds"].to_numpy()))[
            ["user_id", "illust_id", "label", "create_time"]
        ],
        follows=follows,
    )
    frames.validate_columns()
    log.info(
        "generated %s in %.1fs (seed %d)", frames.summary(), time.monotonic() - started, config.seed
    )
    structure = PlantedStructure(
        user_taste_tags=user_tastes.astype(np.int64) + 1,
        user_favourite_artists=favourite_artists.astype(np.int64) + 1,
    )
    return frames, structure


def _favourites(rng: np.random.Generator, p: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct artists per user, weighted by row ``p`` (Gumbel top-k, row-wise)."""
    gumbel = rng.gumbel(size=p.shape)
    keys = np.log(np.maximum(p, 1e-300)) + gumbel
    return np.argpartition(-keys, k - 1, axis=1)[:, :k]


def _members_by_key(keys: np.ndarray, n_keys: int) -> list[np.ndarray]:
    """Indices of ``keys`` grouped by key value (0..n_keys-1)."""
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n_keys + 1))
    return [order[bounds[k] : bounds[k + 1]] for k in range(n_keys)]


def _cumsum_by_group(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running sum of ``values`` restarting at each new (contiguous, sorted) group."""
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    offsets = np.repeat(total[starts] - values[starts], np.diff(np.r_[starts, len(values)]))
    return total - offsets


def interval_days(config: GeneratorConfig) -> list[tuple[datetime, datetime]]:
    """The daily ``[start, end)`` intervals the generated period covers."""
    start = config.start()
    return [(start + timedelta(days=d), start + timedelta(days=d + 1)) for d in range(config.days)]
