"""bench/quality.py's ``--format movielens-csv`` path, run for real.

The same ratings (a slice of ml-100k from ../shared/data, rewritten to a temp dir in both
layouts; nothing is copied into the repo) go through both formats: the baselines must score
exactly the same, and every model must report HR/NDCG at 10 and 20.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"
USERS = 120  # users 1..USERS: enough for every baseline to score, seconds to train


def _write_slices(tmp_path: Path) -> tuple[Path, Path]:
    """(ml-100k folder, movielens-csv folder) holding the ratings of users 1..USERS."""
    ml, csv_dir = tmp_path / "ml-100k", tmp_path / "csv"
    ml.mkdir()
    csv_dir.mkdir()
    ratings = [
        line.split("\t")
        for line in (ML100K / "u.data").read_text().splitlines()
        if int(line.split("\t")[0]) <= USERS
    ]
    (ml / "u.data").write_text("".join("\t".join(r) + "\n" for r in ratings))
    for name in ("u.item", "u.genre"):
        (ml / name).write_bytes((ML100K / name).read_bytes())
    users = [
        u for u in (ML100K / "u.user").read_text().splitlines() if int(u.split("|")[0]) <= USERS
    ]
    (ml / "u.user").write_text("\n".join(users) + "\n")

    genres = [g.split("|")[0] for g in (ML100K / "u.genre").read_text().splitlines() if g]
    with (csv_dir / "movies.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["movieId", "title", "genres"])
        for line in (ML100K / "u.item").read_text(encoding="latin-1").splitlines():
            fields = line.split("|")
            flags = fields[5:]
            names = [g for g, flag in zip(genres, flags, strict=True) if flag == "1"]
            writer.writerow([fields[0], fields[1], "|".join(names) or "(no genres listed)"])
    with (csv_dir / "ratings.csv").open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        for user, item, rating, seconds in ratings:
            writer.writerow([user, item, f"{float(rating):.1f}", seconds])
    return ml, csv_dir


def _run(capsys: pytest.CaptureFixture[str], data: Path, fmt: str) -> dict:  # type: ignore[type-arg]
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", str(data), "--format", fmt, "--epochs", "2", "--dim", "16"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow
def test_movielens_csv_scores_like_ml_100k(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if not (ML100K / "u.data").exists():
        pytest.fail(f"{ML100K} is missing: the repo must sit beside ../shared/data")
    ml, csv_dir = _write_slices(tmp_path)
    from_csv = _run(capsys, csv_dir, "movielens-csv")
    from_ml = _run(capsys, ml, "ml-100k")
    assert from_csv["format"] == "movielens-csv" and from_csv["n_users"] == USERS
    for name in ("MostPop", "ItemKNN", "EASE"):
        assert from_csv["models"][name] == from_ml["models"][name], name
    for name, metrics in from_csv["models"].items():
        assert {"HR@10", "NDCG@10", "HR@20", "NDCG@20"} <= set(metrics), name
        assert 0.0 <= metrics["NDCG@10"] <= metrics["HR@10"] <= metrics["HR@20"] <= 1.0, name
    assert from_csv["models"]["EASE"]["HR@10"] > from_csv["models"]["MostPop"]["HR@10"] > 0
    assert from_csv["ratio"] == pytest.approx(
        from_csv["models"]["two_tower"]["HR@10"] / from_csv["models"]["EASE"]["HR@10"], abs=1e-3
    )
