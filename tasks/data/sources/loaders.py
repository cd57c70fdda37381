"""Read public MovieLens layouts into :class:`tasks.data.sources.frames.BusinessFrames`.

Nothing is downloaded: the caller points at files already on disk. Every check runs while
reading, so a malformed file raises (:class:`DatasetFormatError`, naming the file and line)
before anything could be written to a replica.

Mapping onto the Pixiv-style business schema (the same for both layouts):

* ``interactions``: one row per rating; ``label = 1`` when rating >= 4 ("bookmarked"), else 0
  ("viewed, not bookmarked"); ``create_time`` = the rating's Unix timestamp (naive UTC).
* ``illusts`` (movies): ``tags`` = JSON ``[{"name", "translatedName", "id"}]`` of the movie's
  genres (plus, for the CSV layout, user tags from ``tags.csv``); ``artist_id`` = the release
  year (from the ml-100k release date, else the ``(YYYY)`` in the title; 0 when unknown), so
  movies of one era share an "artist"; ``create_time`` = the movie's earliest rating (else its
  release date, else the data set's first rating); ``update_time`` = ``create_time``;
  ``total_view`` / ``total_bookmarks`` = its rating count / its label-1 count. Neutral values
  (within ``tasks.data.sources.generate.FIELD_RANGES``) fill what MovieLens lacks: ``width`` = ``height`` =
  :data:`NEUTRAL_SIZE`, ``sanity_level`` = 2 (all ages), ``restrict`` = ``x_restrict`` = 0.
* ``users``: ``username`` = ``ml_user_<id>``; ``create_time`` = the user's earliest rating (else
  the data set's first rating).
* ``follows``: empty; MovieLens has no follow graph.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from tasks.core.common import get_logger
from tasks.data.sources.frames import TIME_COLUMNS, BusinessFrames, empty_frame

log = get_logger("loaders")

DatasetFormat = Literal["ml-100k", "movielens-csv"]
DATASET_FORMATS: tuple[str, ...] = ("ml-100k", "movielens-csv")
POSITIVE_RATING = 4.0
NEUTRAL_SIZE = 1000
NEUTRAL_SANITY_LEVEL = 2
ML100K_GENRE_FLAGS = 19
MAX_USER_TAGS_PER_MOVIE = 10
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")


class DatasetFormatError(ValueError):
    """A data file does not have the expected layout; the message names file and line."""


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    return path


def _dataset_dir(path: str | Path, marker: str) -> Path:
    """Accept the data set's folder or one of its files (e.g. ``.../ml-100k/u.data``)."""
    base = Path(path)
    if not base.exists():
        raise FileNotFoundError(f"dataset path not found: {base}")
    if base.is_file():
        base = base.parent
    _require_file(base / marker)
    return base


def _read_delimited(
    path: Path,
    names: list[str],
    *,
    sep: str,
    header: bool,
    encoding: str = "utf-8",
    quoting: int = csv.QUOTE_MINIMAL,
    int_columns: tuple[str, ...] = (),
    float_columns: tuple[str, ...] = (),
    sep_name: str,
) -> pd.DataFrame:
    """Read a delimited file as strings, then check field counts and numbers line by line.

    Errors name the file and the 1-based line number in the file.
    """
    try:
        frame = pd.read_csv(
            path,
            sep=sep,
            header=0 if header else None,
            names=None if header else names,
            dtype=str,
            keep_default_na=False,
            encoding=encoding,
            quoting=quoting,
            engine="c",
            skip_blank_lines=True,
        )
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, saw = match.groups()
            raise DatasetFormatError(
                f"{path.name} line {line}: expected {expected} {sep_name}-separated fields, got {saw}"
            ) from exc
        raise DatasetFormatError(f"{path.name}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path.name}: not {encoding} text ({exc})") from exc
    if header:
        actual = [str(c).strip() for c in frame.columns]
        if actual[: len(names)] != names:
            raise DatasetFormatError(f"{path.name} line 1: expected header {names}, got {actual}")
        frame.columns = actual
        frame = frame[names]
    location = _Location(path, header=header, encoding=encoding, sep=sep, quoting=quoting)
    # A short row comes back with "" in its missing trailing fields, indistinguishable here
    # from a legitimately empty field: re-read the suspect lines' raw text to count fields.
    numbers: dict[str, pd.Series] = {}
    suspect = frame[names[-1]].str.strip().eq("").to_numpy(copy=True)
    for column in int_columns + float_columns:
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        bad = values.isna().to_numpy(copy=True)
        if column in int_columns:
            bad |= (values.fillna(0) % 1 != 0).to_numpy(copy=True)
        numbers[column] = values
        suspect |= bad
    for row, line_no, text in location.lines(np.flatnonzero(suspect)):
        n_fields = location.field_count(text)
        if n_fields != len(names):
            raise DatasetFormatError(
                f"{path.name} line {line_no}: expected {len(names)} {sep_name}-separated "
                f"fields, got {n_fields}"
            )
        for column, values in numbers.items():
            if pd.isna(values.iloc[row]) or (column in int_columns and values.iloc[row] % 1 != 0):
                kind = "an integer" if column in int_columns else "a number"
                raise DatasetFormatError(
                    f"{path.name} line {line_no}: field {column!r} must be {kind}, "
                    f"got {frame[column].iloc[row]!r}"
                )
    out = frame.copy()
    for column, values in numbers.items():
        out[column] = values.astype(np.int64) if column in int_columns else values.astype(float)
    log.info("read %d rows from %s", len(out), path)
    return out


class _Location:
    """Finds the raw text of a parsed row: only used on the error path, so a big file that
    is fine is not scanned twice. Assumes no quoted field spans lines (true of MovieLens)."""

    def __init__(self, path: Path, *, header: bool, encoding: str, sep: str, quoting: int):
        self.path, self.header, self.encoding = path, header, encoding
        self.sep, self.quoting = sep, quoting

    def lines(self, rows: np.ndarray) -> Iterator[tuple[int, int, str]]:
        """``(row, line number, text)`` of each wanted data row (sorted), in one file pass."""
        wanted = iter(sorted(int(r) for r in rows))
        target = next(wanted, None)
        seen = -1
        with open(self.path, encoding=self.encoding, errors="replace", newline="") as handle:
            for line_no, text in enumerate(handle, start=1):
                if target is None:
                    return
                if (self.header and line_no == 1) or not text.strip():
                    continue
                seen += 1
                if seen == target:
                    yield target, line_no, text.rstrip("\r\n")
                    target = next(wanted, None)

    def line_number(self, row: int) -> int:
        """1-based file line of the ``row``-th data row (blank lines skipped)."""
        return next((line_no for _, line_no, _ in self.lines(np.array([row]))), 0)

    def field_count(self, text: str) -> int:
        return len(next(csv.reader([text], delimiter=self.sep, quoting=self.quoting), []))


def _line_of(path: Path, row: int) -> int:
    """File line of a parsed row of one of the MovieLens files (CSV files have a header)."""
    header = path.suffix == ".csv"
    encoding = "utf-8" if path.name != "u.item" else "latin-1"
    return _Location(path, header=header, encoding=encoding, sep=",", quoting=0).line_number(row)


def _check_references(ids: pd.Series, known: pd.Series, *, path: Path, field: str) -> None:
    """Raise naming the first line whose ``field`` id is not in ``known``."""
    unknown = ~ids.isin(known).to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DatasetFormatError(
            f"{path.name} line {_line_of(path, row)}: {field} {int(ids.iloc[row])} is not defined"
        )


def _seconds_to_time(seconds: pd.Series | np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(np.asarray(seconds, dtype=np.int64), unit="s")).astype(
        "datetime64[ns]"
    )


def _tags_json(tags: list[tuple[str, int]]) -> str:
    return json.dumps(
        [{"name": name, "translatedName": name, "id": int(tag_id)} for name, tag_id in tags],
        ensure_ascii=False,
    )


def _year_from_title(title: str) -> int:
    match = _TITLE_YEAR.search(title.strip())
    return int(match.group(1)) if match else 0


def _assemble(
    ratings: pd.DataFrame,
    items: pd.DataFrame,
    user_ids: np.ndarray,
) -> BusinessFrames:
    """Build the frames from ``ratings(user_id, illust_id, rating, seconds)`` and
    ``items(illust_id, artist_id, tags, release_seconds)`` (release may be NaN)."""
    labels = (ratings["rating"].to_numpy(dtype=float) >= POSITIVE_RATING).astype(np.int64)
    interactions = pd.DataFrame(
        {
            "user_id": ratings["user_id"].to_numpy(dtype=np.int64),
            "illust_id": ratings["illust_id"].to_numpy(dtype=np.int64),
            "label": labels,
            "create_time": _seconds_to_time(ratings["seconds"].to_numpy()),
        }
    )
    first_rating = int(ratings["seconds"].min()) if len(ratings) else 0
    per_item = (
        ratings.assign(label=labels)
        .groupby("illust_id")
        .agg(first=("seconds", "min"), views=("seconds", "size"), bookmarks=("label", "sum"))
    )
    items = items.set_index("illust_id")
    item_first = per_item["first"].reindex(items.index)
    release = items["release_seconds"].astype(float)
    created = item_first.fillna(release).fillna(first_rating).astype(np.int64)
    illusts = pd.DataFrame(
        {
            "illust_id": items.index.to_numpy(dtype=np.int64),
            "artist_id": items["artist_id"].to_numpy(dtype=np.int64),
            "tags": items["tags"].to_numpy(dtype=object),
            "width": np.full(len(items), NEUTRAL_SIZE, dtype=np.int64),
            "height": np.full(len(items), NEUTRAL_SIZE, dtype=np.int64),
            "sanity_level": np.full(len(items), NEUTRAL_SANITY_LEVEL, dtype=np.int64),
            "restrict": np.zeros(len(items), dtype=np.int64),
            "x_restrict": np.zeros(len(items), dtype=np.int64),
            "total_bookmarks": per_item["bookmarks"]
            .reindex(items.index)
            .fillna(0)
            .to_numpy(dtype=np.int64),
            "total_view": per_item["views"].reindex(items.index).fillna(0).to_numpy(dtype=np.int64),
            "create_time": _seconds_to_time(created.to_numpy()),
        }
    )
    illusts["update_time"] = illusts["create_time"]
    user_first = ratings.groupby("user_id")["seconds"].min().reindex(user_ids)
    users = pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=np.int64),
            "username": [f"ml_user_{int(u)}" for u in user_ids],
            "create_time": _seconds_to_time(user_first.fillna(first_rating).to_numpy()),
        }
    )
    frames = BusinessFrames(
        users=users, illusts=illusts, interactions=interactions, follows=empty_frame("follows")
    )
    frames.validate_columns()
    frames.meta = dataset_meta(frames)
    log.info("loaded %s; %s", frames.summary(), frames.meta)
    return frames


def dataset_meta(frames: BusinessFrames) -> dict[str, str]:
    """What validation needs to know about a loaded data set: ``data_launch``, its earliest
    time over every time column (MovieLens predates the site launch date, so validation's
    "nothing before launch" bound comes from the data set itself)."""
    earliest = [
        frames.frame(name)[column].min()
        for name, columns in TIME_COLUMNS.items()
        for column in columns
        if len(frames.frame(name))
    ]
    earliest = [t for t in earliest if not pd.isna(t)]
    if not earliest:
        return {}
    return {"data_launch": min(earliest).to_pydatetime().isoformat()}


def read_movielens_100k(path: str | Path) -> BusinessFrames:
    """Read MovieLens 100K (``u.data``, ``u.item`` latin-1, ``u.user``, ``u.genre``).

    ``path`` is the folder or any file in it.
    """
    base = _dataset_dir(path, "u.data")
    data_path = base / "u.data"
    item_path = _require_file(base / "u.item")
    user_path = _require_file(base / "u.user")
    genre_path = _require_file(base / "u.genre")

    genres = _read_delimited(
        genre_path, ["name", "genre_id"], sep="|", header=False, encoding="latin-1",
        quoting=csv.QUOTE_NONE, int_columns=("genre_id",), sep_name="pipe",
    )  # fmt: skip
    genre_names = dict(zip(genres["genre_id"], genres["name"], strict=True))
    missing_genres = [g for g in range(ML100K_GENRE_FLAGS) if g not in genre_names]
    if missing_genres:
        raise DatasetFormatError(f"u.genre: genre ids {missing_genres} are not defined")

    flag_columns = [f"g{g}" for g in range(ML100K_GENRE_FLAGS)]
    item_columns = ["illust_id", "title", "release", "video_release", "url", *flag_columns]
    items = _read_delimited(
        item_path, item_columns, sep="|", header=False, encoding="latin-1",
        quoting=csv.QUOTE_NONE, int_columns=("illust_id", *flag_columns), sep_name="pipe",
    )  # fmt: skip
    flags = items[flag_columns].to_numpy()
    bad_flag = ~np.isin(flags, (0, 1)).all(axis=1)
    if bad_flag.any():
        row = int(np.flatnonzero(bad_flag)[0])
        raise DatasetFormatError(
            f"u.item line {_line_of(item_path, row)}: genre flags must be 0 or 1"
        )
    duplicated = items["illust_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DatasetFormatError(
            f"u.item line {_line_of(item_path, row)}: movie id {items['illust_id'].iloc[row]} repeated"
        )
    release = pd.to_datetime(items["release"].str.strip(), format="%d-%b-%Y", errors="coerce")
    release_years = release.dt.year
    title_years = items["title"].map(_year_from_title)
    artist_id = release_years.fillna(title_years).fillna(0).astype(np.int64)
    release_seconds = (release - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    tags = [_tags_json([(genre_names[g], g) for g in np.flatnonzero(row)]) for row in flags]
    item_frame = pd.DataFrame(
        {
            "illust_id": items["illust_id"],
            "artist_id": artist_id,
            "tags": tags,
            "release_seconds": release_seconds.astype(float),
        }
    )

    users = _read_delimited(
        user_path, ["user_id", "age", "gender", "occupation", "zip"], sep="|", header=False,
        encoding="latin-1", quoting=csv.QUOTE_NONE, int_columns=("user_id",), sep_name="pipe",
    )  # fmt: skip
    ratings = _read_delimited(
        data_path, ["user_id", "illust_id", "rating", "seconds"], sep="\t", header=False,
        quoting=csv.QUOTE_NONE, int_columns=("user_id", "illust_id", "rating", "seconds"),
        sep_name="tab",
    )  # fmt: skip
    _check_references(ratings["user_id"], users["user_id"], path=data_path, field="user")
    _check_references(ratings["illust_id"], items["illust_id"], path=data_path, field="item")
    return _assemble(ratings, item_frame, users["user_id"].to_numpy())


def read_movielens_csv(path: str | Path) -> BusinessFrames:
    """Read the MovieLens CSV layout (``ratings.csv``, ``movies.csv``, optional ``tags.csv``).

    Genres get tag ids 1..G (sorted by name); user tags from ``tags.csv`` get ids after them
    (sorted by name) and at most :data:`MAX_USER_TAGS_PER_MOVIE` per movie, most used first.
    """
    base = _dataset_dir(path, "ratings.csv")
    ratings_path = base / "ratings.csv"
    movies_path = _require_file(base / "movies.csv")
    tags_path = base / "tags.csv"

    movies = _read_delimited(
        movies_path, ["movieId", "title", "genres"], sep=",", header=True,
        int_columns=("movieId",), sep_name="comma",
    )  # fmt: skip
    duplicated = movies["movieId"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise DatasetFormatError(
            f"movies.csv line {_line_of(movies_path, row)}: movie id {movies['movieId'].iloc[row]} repeated"
        )
    ratings = _read_delimited(
        ratings_path, ["userId", "movieId", "rating", "timestamp"], sep=",", header=True,
        int_columns=("userId", "movieId", "timestamp"), float_columns=("rating",), sep_name="comma",
    )  # fmt: skip
    _check_references(ratings["movieId"], movies["movieId"], path=ratings_path, field="movie")

    movie_genres = [
        []
        if g.strip() in ("", "(no genres listed)")
        else [x.strip() for x in g.split("|") if x.strip()]
        for g in movies["genres"]
    ]
    genre_vocab = sorted({g for genres in movie_genres for g in genres})
    tag_ids = {name: index + 1 for index, name in enumerate(genre_vocab)}
    user_tags: dict[int, list[str]] = {}
    if tags_path.is_file():
        tag_rows = _read_delimited(
            tags_path, ["userId", "movieId", "tag", "timestamp"], sep=",", header=True,
            int_columns=("userId", "movieId", "timestamp"), sep_name="comma",
        )  # fmt: skip
        tag_rows["tag"] = tag_rows["tag"].str.strip()
        tag_rows = tag_rows[tag_rows["tag"] != ""]
        counts = (
            tag_rows.groupby(["movieId", "tag"]).size().rename("n").reset_index()
            .sort_values(["movieId", "n", "tag"], ascending=[True, False, True])
        )  # fmt: skip
        counts = counts.groupby("movieId").head(MAX_USER_TAGS_PER_MOVIE)
        for name in sorted(set(counts["tag"]) - set(tag_ids)):
            tag_ids[name] = len(tag_ids) + 1
        for movie_id, group in counts.groupby("movieId", sort=False):
            user_tags[int(movie_id)] = group["tag"].tolist()
    tags = []
    for movie_id, genres in zip(movies["movieId"], movie_genres, strict=True):
        names = list(dict.fromkeys(genres + user_tags.get(int(movie_id), [])))
        tags.append(_tags_json([(name, tag_ids[name]) for name in names]))
    item_frame = pd.DataFrame(
        {
            "illust_id": movies["movieId"],
            "artist_id": movies["title"].map(_year_from_title).astype(np.int64),
            "tags": tags,
            "release_seconds": np.nan,
        }
    )
    ratings = ratings.rename(
        columns={"userId": "user_id", "movieId": "illust_id", "timestamp": "seconds"}
    )
    user_ids = np.unique(ratings["user_id"].to_numpy())
    return _assemble(ratings, item_frame, user_ids)


def read_dataset(path: str | Path, fmt: DatasetFormat | str) -> BusinessFrames:
    """Read ``path`` in layout ``fmt`` (``"ml-100k"`` or ``"movielens-csv"``)."""
    if fmt == "ml-100k":
        return read_movielens_100k(path)
    if fmt == "movielens-csv":
        return read_movielens_csv(path)
    raise ValueError(f"unknown dataset format {fmt!r}; expected one of {DATASET_FORMATS}")
