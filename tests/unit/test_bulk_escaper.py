"""tasks.data.bulk's escaper and SQL text builders, against hand-written outputs."""

from __future__ import annotations

from datetime import datetime

import pytest
import sqlalchemy as sa

from tasks.data.bulk import (
    BACKSLASH_ESCAPES,
    LoadDataTarget,
    RowLiterals,
    insert_statements,
    load_data_field,
    sql_string,
)


def test_one_table_of_special_characters() -> None:
    assert dict(BACKSLASH_ESCAPES) == {
        "\\": "\\\\",
        "\x00": "\\0",
        "\t": "\\t",
        "\n": "\\n",
        "\r": "\\r",
        "\x1a": "\\Z",
    }
    assert BACKSLASH_ESCAPES[0][0] == "\\"  # escaped first, so nothing is escaped twice


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (None, r"\N"),
        (r"\N", r"\\N"),
        ("plain", "plain"),
        ("a\tb\nc\rd\x00e\x1af\\g", r"a\tb\nc\rd\0e\Zf\\g"),
        ("\\\t", r"\\\t"),
        ('it\'s "q"', 'it\'s "q"'),  # quotes are not special in a LOAD DATA field
        ("🎨猫", "🎨猫"),
        ("", ""),
    ],
)
def test_load_data_field(value: str | None, field: str) -> None:
    assert load_data_field(value) == field


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("it's", r"'it\'s'"),
        ('say "hi"', "'say \"hi\"'"),
        ("a\\b\x00\n\r\t\x1a", r"'a\\b\0\n\r\t\Z'"),
        (r"\N", r"'\\N'"),
        ("🎨", "'🎨'"),
        ("", "''"),
    ],
)
def test_sql_string(value: str, literal: str) -> None:
    assert sql_string(value) == literal


def test_sql_string_without_backslash_escapes_doubles_quotes_only() -> None:
    assert sql_string("it's a\\b\n'", no_backslash_escapes=True) == "'it''s a\\b\n'''"


def test_row_literals_by_column_type() -> None:
    literals = RowLiterals([sa.BigInteger(), sa.Text(), sa.DateTime()])
    rows = [(1, "x'y\\", datetime(2024, 1, 2, 3, 4, 5)), (None, None, None), (2, "🎨", None)]
    assert literals.render(rows) == [
        r"(1,'x\'y\\','2024-01-02 03:04:05')",
        "(NULL,NULL,NULL)",
        "(2,'🎨',NULL)",
    ]
    assert literals.render(rows[:1], lead="'run',", number_from=7) == [
        r"('run',7,1,'x\'y\\','2024-01-02 03:04:05')"
    ]
    nbe = RowLiterals([sa.Text()], no_backslash_escapes=True)
    assert nbe.render([("x'y\\",)]) == ["('x''y\\')"]
    assert literals.literal("run-1", sa.String()) == "'run-1'"
    with pytest.raises(ValueError, match="not a timestamp"):
        literals.render([(1, "a", "2024-01-01'; DROP TABLE x; --")])


def test_row_literals_tuple_text_for_ints_and_timestamps() -> None:
    literals = RowLiterals([sa.Integer(), sa.DateTime()])
    plain = [(1, "2024-01-01 00:00:00"), (2, "2024-01-02 12:30:00.5")]
    assert literals.render(plain, number_from=0) == [
        "(0,1, '2024-01-01 00:00:00')",
        "(1,2, '2024-01-02 12:30:00.5')",
    ]
    # a NULL (or a bool) leaves the tuple-text path for the value-by-value one
    assert literals.render([(1, None), (True, "2024-01-01 00:00:00")]) == [
        "(1,NULL)",
        "(1,'2024-01-01 00:00:00')",
    ]


def test_insert_statements_are_cut_by_size() -> None:
    parts = ["(1)", "(2)", "(3)"]
    assert list(insert_statements("H ", parts, max_bytes=8)) == ["H (1),(2)", "H (3)"]
    assert list(insert_statements("H ", parts)) == ["H (1),(2),(3)"]
    assert list(insert_statements("H ", [])) == []


def test_load_data_statement() -> None:
    target = LoadDataTarget(
        "staging", ("row_seq", "name", "@skip"), duplicates="IGNORE", set_clause="run_id = @r"
    )
    assert target.statement("/tmp/x/1.tsv") == (
        "LOAD DATA LOCAL INFILE '/tmp/x/1.tsv' IGNORE INTO TABLE `staging` CHARACTER SET "
        "utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' "
        "(`row_seq`, `name`, @skip) SET run_id = @r"
    )
    plain = LoadDataTarget("t", ("a",)).statement("/f")
    assert plain.startswith("LOAD DATA LOCAL INFILE '/f' INTO TABLE `t` CHARACTER")
    assert plain.endswith("LINES TERMINATED BY '\\n' (`a`)")
    for bad in ("/tmp/it's", "C:\\tmp"):
        with pytest.raises(ValueError, match="not usable"):
            target.statement(bad)
