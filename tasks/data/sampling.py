"""Negative sampling for one data interval into the ``samples`` table.

Positives: distinct ``(user_id, illust_id)`` pairs of label-1 ``mirror_interactions`` with
``create_time`` in ``[start, end)``. For each positive, ``negatives_per_positive`` negatives:
``round(n * popular_ratio)`` drawn with probability proportional to popularity**exponent
(popularity = label-1 interactions per illust up to ``end``) and the rest uniformly over the
illusts created before ``end``. A user's bookmarked items (ever, up to ``end``) are never
drawn. The RNG is seeded from ``seed`` and the interval start, so a re-run draws the same.

Write order (the product rule): ``INSERT IGNORE`` every negative, then ``REPLACE INTO`` every
positive, so a positive always overrides a sampled negative and a re-run changes nothing.
Every column is a function of the data interval (``created_at`` = interval end), so REPLACE's
delete-and-insert rewrites identical rows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np
import sqlalchemy as sa

from tasks.core import schema
from tasks.core.common import StageResult, check_interval, get_logger
from tasks.core.db import get_engine, insert_ignore, replace_into
from tasks.core.settings import Settings
from tasks.data.bulk import (
    BulkWriter,
    LoadDataTarget,
    bulk_execute,
    load_data_field,
    load_data_file,
    local_infile_enabled,
    sql_string,
)

log = get_logger("sampling")

SAMPLE_COLUMNS: tuple[str, ...] = (
    "user_id", "illust_id", "label", "source", "interval_start", "interval_end", "created_at",
)  # fmt: skip
WRITE_CHUNK_ROWS = 20_000


@dataclass(frozen=True)
class NegativeDraw:
    """Drawn negatives: parallel arrays (one entry per negative)."""

    user_ids: np.ndarray  # int64
    item_ids: np.ndarray  # int64
    popular: np.ndarray  # bool: drawn by popularity (else uniformly)


def draw_negatives(
    positive_users: np.ndarray,
    item_ids: np.ndarray,
    item_popularity: np.ndarray,
    excluded_pairs: np.ndarray,
    *,
    negatives_per_positive: int = 4,
    popular_ratio: float = 0.5,
    popularity_exponent: float = 0.75,
    rng: np.random.Generator,
    max_rounds: int = 32,
) -> NegativeDraw:
    """Draw negatives for each positive, never a pair in ``excluded_pairs``.

    Args:
        positive_users: int64 ``[P]``, the user of each positive (repeats allowed).
        item_ids: int64 ``[I]``, the candidate items (unique).
        item_popularity: ``[I]`` non-negative counts aligned with ``item_ids``.
        excluded_pairs: int64 ``[E, 2]`` of ``(user_id, item_id)`` never to draw (the
            users' bookmarks); pairs with items outside ``item_ids`` are ignored.
        negatives_per_positive: negatives per positive (``n``).
        popular_ratio: share of the ``n`` drawn by popularity: ``round(n * ratio)`` each.
        popularity_exponent: popular draws have probability ∝ popularity**exponent
            (0.75 as in word2vec: flattens the head). Zero-popularity items are never
            drawn as "popular"; uniform draws can pick any item.
        rng: the generator (seed it for determinism).
        max_rounds: redraw rounds for excluded hits; popular draws still excluded after
            that are redrawn uniformly (and flagged not popular) for ``max_rounds`` more;
            what is still excluded then is dropped (a user who bookmarked almost every item
            gets fewer negatives).

    Returns:
        ``NegativeDraw`` ordered positive by positive: the popular draws then the uniform
        ones. Duplicate pairs may occur (the ``samples`` primary key collapses them).
    """
    users = np.asarray(positive_users, dtype=np.int64)
    items = np.asarray(item_ids, dtype=np.int64)
    weights = np.asarray(item_popularity, dtype=np.float64)
    if users.ndim != 1 or items.ndim != 1 or weights.shape != items.shape:
        raise ValueError(
            f"shapes: positive_users {users.shape}, item_ids {items.shape}, "
            f"item_popularity {weights.shape} (want [P], [I], [I])"
        )
    if negatives_per_positive < 0:
        raise ValueError(f"negatives_per_positive must be >= 0, got {negatives_per_positive!r}")
    if not 0.0 <= popular_ratio <= 1.0:
        raise ValueError(f"popular_ratio must be in [0, 1], got {popular_ratio!r}")
    if popularity_exponent < 0:
        raise ValueError(f"popularity_exponent must be >= 0, got {popularity_exponent!r}")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError("item_popularity must be finite and >= 0")
    n_popular = int(round(negatives_per_positive * popular_ratio))
    n_uniform = negatives_per_positive - n_popular
    empty = NegativeDraw(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))
    if len(users) == 0 or len(items) == 0 or negatives_per_positive == 0:
        return empty

    pop_p = np.power(weights, popularity_exponent, where=weights > 0, out=np.zeros_like(weights))
    if pop_p.sum() <= 0:  # no popularity signal: popular draws fall back to uniform
        pop_p = np.ones_like(weights)
    pop_p /= pop_p.sum()

    # Encode (user, item) as user_index * I + item_index for fast membership tests.
    order = np.argsort(items, kind="stable")
    sorted_items = items[order]
    unique_users, user_index = np.unique(users, return_inverse=True)
    excluded = np.asarray(excluded_pairs, dtype=np.int64).reshape(-1, 2)
    ex_u = np.searchsorted(unique_users, excluded[:, 0])
    ex_i = np.searchsorted(sorted_items, excluded[:, 1])
    valid = (
        (ex_u < len(unique_users))
        & (ex_i < len(items))
        & (unique_users[np.minimum(ex_u, len(unique_users) - 1)] == excluded[:, 0])
        & (sorted_items[np.minimum(ex_i, len(items) - 1)] == excluded[:, 1])
    )
    n_items = np.int64(len(items))
    excluded_codes = np.unique(ex_u[valid] * n_items + order[ex_i[valid]])

    per_positive = np.concatenate([np.ones(n_popular, dtype=bool), np.zeros(n_uniform, dtype=bool)])
    popular = np.tile(per_positive, len(users))
    owner = np.repeat(user_index, negatives_per_positive)
    picked = np.empty(len(owner), dtype=np.int64)
    picked[popular] = rng.choice(len(items), size=int(popular.sum()), p=pop_p)
    picked[~popular] = rng.integers(0, len(items), size=int((~popular).sum()))
    popular = popular.copy()
    for round_no in range(2 * max_rounds):
        hit = np.isin(owner * n_items + picked, excluded_codes)
        if not hit.any():
            break
        if round_no == max_rounds:
            # Popularity mass is (almost) all excluded for these users: draw uniformly.
            popular[hit] = False
        redo_pop = hit & popular
        redo_uni = hit & ~popular
        picked[redo_pop] = rng.choice(len(items), size=int(redo_pop.sum()), p=pop_p)
        picked[redo_uni] = rng.integers(0, len(items), size=int(redo_uni.sum()))
    hit = np.isin(owner * n_items + picked, excluded_codes)
    keep = ~hit
    if hit.any():
        log.warning("dropped %d negatives of users who bookmarked almost every item", hit.sum())
    return NegativeDraw(
        user_ids=unique_users[owner[keep]],
        item_ids=items[picked[keep]],
        popular=popular[keep],
    )


def interval_seed(seed: int, interval_start: datetime) -> np.random.SeedSequence:
    """Seed sequence for one interval: same seed + same interval = same draws."""
    epoch_seconds = int((interval_start - datetime(1970, 1, 1)).total_seconds())
    return np.random.SeedSequence([int(seed), epoch_seconds])


@dataclass(frozen=True)
class SamplingResult(StageResult):
    """Counts written for one interval."""

    interval_start: datetime
    interval_end: datetime
    positives: int
    negatives_drawn: int
    negatives_popular: int
    items: int
    samples_total: int
    seconds: float = 0.0


def build_samples(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    *,
    negatives_per_positive: int = 4,
    popular_ratio: float = 0.5,
    popularity_exponent: float = 0.75,
    seed: int = 42,
    write_method: Literal["auto", "insert", "load_data"] = "auto",
) -> SamplingResult:
    """Sample negatives for the interval's positives and write both to ``samples``
    (``write_method``: see ``write_samples``)."""
    start, end = check_interval(interval_start, interval_end)
    began = time.perf_counter()
    engine = get_engine(settings.recsys_db_url)
    schema.ensure_recsys_schema(engine)
    mi, ill = schema.mirror_interactions, schema.mirror_illusts
    with engine.connect() as conn:
        positives = conn.execute(
            sa.select(mi.c.user_id, mi.c.illust_id)
            .where(mi.c.label == 1, mi.c.create_time >= start, mi.c.create_time < end)
            .distinct()
            .order_by(mi.c.user_id, mi.c.illust_id)
        ).all()
        pos = np.array(positives, dtype=np.int64).reshape(-1, 2)
        item_ids = np.array(
            conn.execute(
                sa.select(ill.c.illust_id)
                .where(sa.or_(ill.c.create_time < end, ill.c.create_time.is_(None)))
                .order_by(ill.c.illust_id)
            )
            .scalars()
            .all(),
            dtype=np.int64,
        )
        counts = dict(
            conn.execute(
                sa.select(mi.c.illust_id, sa.func.count())
                .where(mi.c.label == 1, mi.c.create_time < end)
                .group_by(mi.c.illust_id)
            ).all()
        )
        interval_users = (
            sa.select(mi.c.user_id)
            .where(mi.c.label == 1, mi.c.create_time >= start, mi.c.create_time < end)
            .distinct()
            .subquery()
        )
        bookmarked = np.array(
            conn.execute(
                sa.select(mi.c.user_id, mi.c.illust_id)
                .where(
                    mi.c.label == 1,
                    mi.c.create_time < end,
                    mi.c.user_id.in_(sa.select(interval_users.c.user_id)),
                )
                .distinct()
            ).all(),
            dtype=np.int64,
        ).reshape(-1, 2)
    popularity = np.array([counts.get(int(i), 0) for i in item_ids], dtype=np.float64)
    log.info(
        "read %d positives in [%s, %s), %d items, %d bookmarks of their users",
        len(pos),
        start,
        end,
        len(item_ids),
        len(bookmarked),
    )
    draw = draw_negatives(
        pos[:, 0],
        item_ids,
        popularity,
        bookmarked,
        negatives_per_positive=negatives_per_positive,
        popular_ratio=popular_ratio,
        popularity_exponent=popularity_exponent,
        rng=np.random.default_rng(interval_seed(seed, start)),
    )
    negatives = SampleRows(
        user_ids=draw.user_ids,
        item_ids=draw.item_ids,
        sources=np.where(draw.popular, "popular", "random"),
    )
    positives = SampleRows(
        user_ids=pos[:, 0], item_ids=pos[:, 1], sources=np.full(len(pos), "positive")
    )
    write_samples(
        engine, negatives, positives, interval_start=start, interval_end=end, method=write_method
    )
    with engine.connect() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(schema.samples)).scalar_one()
    seconds = time.perf_counter() - began
    log.info(
        "samples [%s, %s): %d positives, %d negatives (%d popular); table now %d rows; %.1fs",
        start,
        end,
        len(positives),
        len(negatives),
        int(draw.popular.sum()),
        total,
        seconds,
    )
    return SamplingResult(
        interval_start=start,
        interval_end=end,
        positives=len(positives),
        negatives_drawn=len(negatives),
        negatives_popular=int(draw.popular.sum()),
        items=len(item_ids),
        samples_total=int(total),
        seconds=round(seconds, 3),
    )


@dataclass(frozen=True)
class SampleRows:
    """Rows for ``samples`` of one interval: parallel arrays; label follows from source."""

    user_ids: np.ndarray  # int64
    item_ids: np.ndarray  # int64
    sources: np.ndarray  # str: "positive" | "random" | "popular"

    def __len__(self) -> int:
        return len(self.user_ids)


SOURCE_LABELS: dict[str, int] = {"positive": 1, "random": 0, "popular": 0}


def write_samples(
    engine: sa.Engine,
    negatives: SampleRows,
    positives: SampleRows,
    *,
    interval_start: datetime,
    interval_end: datetime,
    chunk_rows: int = WRITE_CHUNK_ROWS,
    method: Literal["auto", "insert", "load_data"] = "auto",
) -> None:
    """``INSERT IGNORE`` the negatives, then ``REPLACE INTO`` the positives, in one
    transaction, ``chunk_rows`` rows per statement.

    ``method="load_data"`` (MySQL/MariaDB, connection URL with ``local_infile=1``) sends
    the same two steps as ``LOAD DATA LOCAL INFILE ... IGNORE`` then ``... REPLACE`` (same
    key semantics, the server's bulk path); ``"auto"`` picks it when the URL enables
    ``local_infile``, else ``"insert"``.

    On MySQL/MariaDB the multi-row statements are built here rather than by the driver:
    every value is an int from an int64 array, a source from ``SOURCE_LABELS`` or the
    interval's timestamps, so nothing needs escaping, and skipping mysqlclient's per-value
    escaping is what makes this path fast (see bench/sampling.py); ``tasks.data.bulk``
    runs them (and the LOAD DATA files) on its writer thread. Elsewhere the rows go through
    ``bulk_execute`` (SQLAlchemy's executemany).
    """
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows!r}")
    if method not in ("auto", "insert", "load_data"):
        raise ValueError(f"method must be auto, insert or load_data, got {method!r}")
    for rows in (negatives, positives):
        unknown = set(np.unique(rows.sources).tolist()) - SOURCE_LABELS.keys()
        if unknown:
            raise ValueError(f"unknown sample sources {sorted(unknown)!r}")
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect in ("mysql", "mariadb"):
            if method == "load_data" or (method == "auto" and local_infile_enabled(engine.url)):
                _mysql_load_data(conn, negatives, positives, interval_start, interval_end)
            else:
                _mysql_write(conn, negatives, positives, interval_start, interval_end, chunk_rows)
            return
        if method == "load_data":
            raise ValueError(f"method='load_data' needs MySQL/MariaDB, got {dialect!r}")
        for label, statement, rows in (
            ("negatives", insert_ignore(schema.samples, dialect), negatives),
            ("positives", replace_into(schema.samples, dialect), positives),
        ):
            for offset in range(0, len(rows), chunk_rows):
                chunk = slice(offset, offset + chunk_rows)
                tuples = [
                    (u, i, SOURCE_LABELS[src], src, interval_start, interval_end, interval_end)
                    for u, i, src in zip(
                        rows.user_ids[chunk].tolist(),
                        rows.item_ids[chunk].tolist(),
                        rows.sources[chunk].tolist(),
                        strict=True,
                    )
                ]
                bulk_execute(conn, statement, SAMPLE_COLUMNS, tuples)
                if (offset // chunk_rows) % 25 == 24:
                    log.info("%s: %d/%d rows written", label, offset + chunk_rows, len(rows))


def _mysql_write(
    conn: sa.Connection,
    negatives: SampleRows,
    positives: SampleRows,
    interval_start: datetime,
    interval_end: datetime,
    chunk_rows: int,
) -> None:
    """Build the INSERT IGNORE statements, then the REPLACE ones, on this thread while a
    ``BulkWriter`` thread runs them on ``conn`` in order (so the REPLACEs still run after
    every INSERT IGNORE); one statement running and one waiting at most (bounded memory)."""
    with BulkWriter(conn.connection.dbapi_connection, name="samples-writer", depth=1) as writer:
        for label, statement, rows in (
            ("negatives", insert_ignore(schema.samples, conn.dialect.name), negatives),
            ("positives", replace_into(schema.samples, conn.dialect.name), positives),
        ):
            head = str(statement.compile(dialect=conn.dialect, column_keys=list(SAMPLE_COLUMNS)))
            head = head[: head.index("VALUES")] + "VALUES "
            for offset in range(0, len(rows), chunk_rows):
                writer.execute(
                    head
                    + _mysql_values(
                        rows, slice(offset, offset + chunk_rows), interval_start, interval_end
                    )
                )
                if (offset // chunk_rows) % 25 == 24:
                    log.info("%s: %d/%d rows sent", label, offset + chunk_rows, len(rows))


def _mysql_load_data(
    conn: sa.Connection,
    negatives: SampleRows,
    positives: SampleRows,
    interval_start: datetime,
    interval_end: datetime,
) -> None:
    """The two steps as LOAD DATA LOCAL INFILE (IGNORE, then REPLACE) from temp TSV files,
    checked by ``tasks.data.bulk.load_data_file`` (every line read; IGNORE may only warn
    about the duplicates it skipped)."""
    import tempfile
    from pathlib import Path

    stamp = "%Y-%m-%d %H:%M:%S"
    constant = f"{interval_start:{stamp}}\t{interval_end:{stamp}}\t{interval_end:{stamp}}\n"
    # every line of one source ends alike: escaped once per source, not per row
    tails = {
        src: f"\t{label}\t{load_data_field(src)}\t{constant}"
        for src, label in SOURCE_LABELS.items()
    }
    dbapi = conn.connection.dbapi_connection
    with tempfile.TemporaryDirectory(prefix="samples-") as tmp:
        steps: tuple[tuple[Literal["IGNORE", "REPLACE"], SampleRows], ...] = (
            ("IGNORE", negatives),
            ("REPLACE", positives),
        )
        for mode, rows in steps:
            path = Path(tmp) / f"{mode.lower()}.tsv"
            with path.open("w", encoding="utf-8", newline="\n") as out:
                out.writelines(
                    f"{int(u)}\t{int(i)}{tails[src]}"
                    for u, i, src in zip(
                        rows.user_ids.tolist(), rows.item_ids.tolist(), rows.sources.tolist(),
                        strict=True,
                    )
                )  # fmt: skip
            target = LoadDataTarget("samples", SAMPLE_COLUMNS, duplicates=mode)
            load_data_file(dbapi, path.as_posix(), target, expected_rows=len(rows))
            log.info("LOAD DATA %s: %d rows from %s", mode, len(rows), path.name)


def _mysql_values(
    rows: SampleRows, chunk: slice, interval_start: datetime, interval_end: datetime
) -> str:
    """The ``VALUES`` list of one chunk as SQL text (ints, whitelisted sources, timestamps)."""
    start_s = interval_start.strftime("'%Y-%m-%d %H:%M:%S'")
    end_s = interval_end.strftime("'%Y-%m-%d %H:%M:%S'")
    # sources are whitelisted words: their literal is the same in every SQL mode
    tail = {
        src: f",{label},{sql_string(src)},{start_s},{end_s},{end_s})"
        for src, label in SOURCE_LABELS.items()
    }
    return ",".join(
        f"({int(u)},{int(i)}{tail[src]}"
        for u, i, src in zip(
            rows.user_ids[chunk].tolist(),
            rows.item_ids[chunk].tolist(),
            rows.sources[chunk].tolist(),
            strict=True,
        )
    )
