"""Suite files, severities and row keys (no GX run here; see tests/integration)."""

from __future__ import annotations

import json

import pytest

from tasks.data.sources.generate import FIELD_RANGES
from tasks.data.validate import EXPECTATIONS_DIR, KEY_COLUMNS, load_suite_dict, row_key


@pytest.mark.parametrize("table", ["users", "illusts", "follows", "interactions"])
def test_every_table_has_a_suite_with_severities(table: str) -> None:
    suite = load_suite_dict(table)
    assert suite["name"] == f"recsys4pix_{table}"
    severities = {e["meta"]["severity"] for e in suite["expectations"]}
    assert severities <= {"fail", "warn"}
    columns = {e["kwargs"].get("column") for e in suite["expectations"]}
    for key in KEY_COLUMNS[table]:
        assert key in columns  # not-null on every key column
    assert "key_count" in columns  # uniqueness


def test_ranges_come_from_the_generator() -> None:
    suite = load_suite_dict("illusts")
    by_column = {
        e["kwargs"]["column"]: e
        for e in suite["expectations"]
        if e["type"] in ("expect_column_values_to_be_in_set", "expect_column_values_to_be_between")
        and e["kwargs"]["column"] in FIELD_RANGES["illusts"]
    }
    assert (
        by_column["sanity_level"]["kwargs"]["value_set"]
        == FIELD_RANGES["illusts"]["sanity_level"]["values"]
    )
    assert by_column["width"]["kwargs"]["min_value"] == 1
    labels = [
        e
        for e in load_suite_dict("interactions")["expectations"]
        if e["kwargs"].get("column") == "label" and e["type"].endswith("in_set")
    ]
    assert labels[0]["kwargs"]["value_set"] == [0, 1]


def test_bad_severity_is_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = {"name": "x", "expectations": [{"type": "expect_column_values_to_not_be_null",
           "kwargs": {"column": "user_id"}, "meta": {"severity": "fatal"}}]}  # fmt: skip
    (tmp_path / "users.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="'fatal'"):
        load_suite_dict("users", tmp_path)
    with pytest.raises(ValueError, match="'bogus'"):
        load_suite_dict("bogus")
    assert (EXPECTATIONS_DIR / "users.json").exists()


def test_row_key_names_key_columns_and_nulls() -> None:
    assert row_key("follows", {"user_id": 3, "artist_id": 9}) == "user_id=3|artist_id=9"
    key = row_key(
        "interactions",
        {"user_id": None, "illust_id": 5, "create_time": "2024-01-01 00:00:00", "label": 2},
    )
    assert key == "user_id=None|illust_id=5|create_time=2024-01-01 00:00:00|label=2"
