"""MovieLens loaders on tiny hand-written files (hand-checked rows) and on the real ml-100k."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tasks.data.sources.frames import BUSINESS_COLUMNS
from tasks.data.sources.loaders import (
    DatasetFormatError,
    read_dataset,
    read_movielens_100k,
    read_movielens_csv,
)

ROOT = Path(__file__).resolve().parents[2]
ML100K = ROOT.parent / "shared" / "data" / "ml-100k"

GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def _flags(*genre_ids: int) -> str:
    return "|".join("1" if g in genre_ids else "0" for g in range(19))


def write_ml100k(folder: Path, data_lines: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.genre").write_text(
        "".join(f"{name}|{i}\n" for i, name in enumerate(GENRES)) + "\n", encoding="latin-1"
    )
    (folder / "u.item").write_bytes(
        (
            f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{_flags(3, 4, 5)}\n"
            f"2|Café Society (1996)|||http://x/2|{_flags(8)}\n"
            f"3|Nameless|||http://x/3|{_flags(0)}\n"
        ).encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    lines = data_lines or [
        "1\t1\t5\t1000",
        "1\t2\t3\t2000",
        "2\t1\t4\t1500",
        "2\t2\t2\t500",
        "2\t3\t1\t3000",
    ]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    return folder


def test_ml100k_tiny_rows_labels_and_times(tmp_path: Path) -> None:
    frames = read_movielens_100k(write_ml100k(tmp_path / "ml"))
    assert frames.row_counts() == {"users": 2, "illusts": 3, "interactions": 5, "follows": 0}
    for name, columns in BUSINESS_COLUMNS.items():
        assert list(getattr(frames, name).columns) == columns

    inter = frames.interactions
    assert inter[["user_id", "illust_id", "label"]].values.tolist() == [
        [1, 1, 1],  # rating 5
        [1, 2, 0],  # rating 3
        [2, 1, 1],  # rating 4 counts as bookmarked
        [2, 2, 0],
        [2, 3, 0],
    ]
    assert inter["create_time"].tolist()[0] == datetime(1970, 1, 1, 0, 16, 40)  # ts 1000

    illusts = frames.illusts.set_index("illust_id")
    assert illusts.loc[1, "total_view"] == 2 and illusts.loc[1, "total_bookmarks"] == 2
    assert illusts.loc[2, "total_view"] == 2 and illusts.loc[2, "total_bookmarks"] == 0
    assert illusts.loc[3, "total_view"] == 1 and illusts.loc[3, "total_bookmarks"] == 0
    # create_time = earliest rating: item 2 was first rated at ts 500.
    assert illusts.loc[2, "create_time"] == datetime(1970, 1, 1, 0, 8, 20)
    assert (frames.illusts["update_time"] == frames.illusts["create_time"]).all()
    # artist_id = release year (date, else title), 0 when unknown.
    assert illusts["artist_id"].to_dict() == {1: 1995, 2: 1996, 3: 0}
    assert json.loads(illusts.loc[1, "tags"]) == [
        {"name": "Animation", "translatedName": "Animation", "id": 3},
        {"name": "Children's", "translatedName": "Children's", "id": 4},
        {"name": "Comedy", "translatedName": "Comedy", "id": 5},
    ]
    assert json.loads(illusts.loc[3, "tags"])[0]["name"] == "unknown"
    assert illusts.loc[1, "sanity_level"] == 2 and illusts.loc[1, "width"] == 1000

    users = frames.users.set_index("user_id")
    assert users["username"].to_dict() == {1: "ml_user_1", 2: "ml_user_2"}
    assert users.loc[2, "create_time"] == datetime(1970, 1, 1, 0, 8, 20)  # first rating ts 500


def test_ml100k_accepts_a_file_inside_the_folder(tmp_path: Path) -> None:
    folder = write_ml100k(tmp_path / "ml")
    assert read_dataset(folder / "u.data", "ml-100k").row_counts()["interactions"] == 5


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("1\t3\t4", r"u\.data line 3: expected 4 tab-separated fields, got 3"),
        ("1\t3\t4\t10\t99", r"u\.data line 3: expected 4 tab-separated fields, got 5"),
        ("1\tthree\t4\t10", r"u\.data line 3: field 'illust_id' must be an integer, got 'three'"),
        ("1\t9\t4\t10", r"u\.data line 3: item 9 is not defined"),
    ],
)
def test_ml100k_malformed_line_names_file_and_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    folder = write_ml100k(tmp_path / "ml", ["1\t1\t5\t1000", "1\t2\t3\t2000", bad_line])
    with pytest.raises(DatasetFormatError, match=message):
        read_movielens_100k(folder)


def test_ml100k_format_error_is_a_value_error() -> None:
    assert issubclass(DatasetFormatError, ValueError)


def test_missing_path_and_missing_file_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset(tmp_path / "nowhere", "ml-100k")
    folder = write_ml100k(tmp_path / "ml")
    (folder / "u.item").unlink()
    with pytest.raises(FileNotFoundError, match=r"u\.item"):
        read_movielens_100k(folder)
    with pytest.raises(FileNotFoundError, match=r"ratings\.csv"):
        read_movielens_csv(folder)


def test_unknown_format_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ml-1m'"):
        read_dataset(tmp_path, "ml-1m")


def write_csv_dataset(folder: Path, ratings: str | None = None, tags: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Heat (1995),Action|Crime|Thriller\n"
        "30,Unnamed,(no genres listed)\n"
    )
    (folder / "ratings.csv").write_text(
        ratings
        or "userId,movieId,rating,timestamp\n"
        "7,10,4.0,100\n"
        "7,20,3.5,200\n"
        "8,20,4.5,50\n"
        "8,30,0.5,300\n"
    )
    if tags:
        (folder / "tags.csv").write_text(
            "userId,movieId,tag,timestamp\n"
            "7,20,heist,210\n"
            "8,20,heist,60\n"
            "8,20, De Niro ,61\n"
            "7,10,politics,110\n"
        )
    return folder


def test_movielens_csv_tiny_rows_labels_and_tags(tmp_path: Path) -> None:
    frames = read_dataset(write_csv_dataset(tmp_path / "csv"), "movielens-csv")
    assert frames.row_counts() == {"users": 2, "illusts": 3, "interactions": 4, "follows": 0}
    inter = frames.interactions
    assert inter[["user_id", "illust_id", "label"]].values.tolist() == [
        [7, 10, 1],  # 4.0
        [7, 20, 0],  # 3.5
        [8, 20, 1],  # 4.5
        [8, 30, 0],  # 0.5
    ]
    illusts = frames.illusts.set_index("illust_id")
    assert illusts["artist_id"].to_dict() == {10: 1995, 20: 1995, 30: 0}
    assert illusts["total_view"].to_dict() == {10: 1, 20: 2, 30: 1}
    assert illusts["total_bookmarks"].to_dict() == {10: 1, 20: 1, 30: 0}
    assert illusts.loc[20, "create_time"] == datetime(1970, 1, 1, 0, 0, 50)
    # Genres sorted get ids 1..6 (Action, Comedy, Crime, Drama, Romance, Thriller), then
    # user tags sorted: "De Niro" 7, "heist" 8, "politics" 9; per movie most used tag first.
    heat = json.loads(illusts.loc[20, "tags"])
    assert [t["name"] for t in heat] == ["Action", "Crime", "Thriller", "heist", "De Niro"]
    assert [t["id"] for t in heat] == [1, 3, 6, 8, 7]
    assert json.loads(illusts.loc[30, "tags"]) == []
    assert frames.users["username"].tolist() == ["ml_user_7", "ml_user_8"]


def test_movielens_csv_without_tags_file(tmp_path: Path) -> None:
    frames = read_movielens_csv(write_csv_dataset(tmp_path / "csv", tags=False))
    names = [t["name"] for t in json.loads(frames.illusts.set_index("illust_id").loc[20, "tags"])]
    assert names == ["Action", "Crime", "Thriller"]


def test_movielens_csv_bad_rating_names_line(tmp_path: Path) -> None:
    bad = "userId,movieId,rating,timestamp\n7,10,4.0,100\n\n7,20,good,200\n"
    folder = write_csv_dataset(tmp_path / "csv", ratings=bad)
    with pytest.raises(DatasetFormatError, match=r"ratings\.csv line 4: field 'rating'"):
        read_movielens_csv(folder)


def test_movielens_csv_short_line_and_bad_header(tmp_path: Path) -> None:
    short = "userId,movieId,rating,timestamp\n7,10,4.0,100\n7,20,3.5\n"
    folder = write_csv_dataset(tmp_path / "a", ratings=short)
    with pytest.raises(
        DatasetFormatError, match=r"ratings\.csv line 3: expected 4 comma-separated fields, got 3"
    ):
        read_movielens_csv(folder)
    header = "user,movie,rating,timestamp\n7,10,4.0,100\n"
    folder = write_csv_dataset(tmp_path / "b", ratings=header)
    with pytest.raises(DatasetFormatError, match=r"ratings\.csv line 1: expected header"):
        read_movielens_csv(folder)


def test_real_movielens_100k() -> None:
    frames = read_dataset(ML100K, "ml-100k")
    assert frames.row_counts() == {
        "users": 943,
        "illusts": 1682,
        "interactions": 100000,
        "follows": 0,
    }
    assert int(frames.interactions["label"].sum()) == 55375  # ratings >= 4
    assert int(frames.illusts["total_view"].sum()) == 100000
    assert int(frames.illusts["total_bookmarks"].sum()) == 55375
    assert frames.users["username"].is_unique
    toy_story = frames.illusts.set_index("illust_id").loc[1]
    assert toy_story["artist_id"] == 1995
    assert [t["name"] for t in json.loads(toy_story["tags"])] == [
        "Animation",
        "Children's",
        "Comedy",
    ]
