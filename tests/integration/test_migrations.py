"""Schema changes by Alembic migrations (tasks/core/migrations, tasks.core.migrate).

The legacy database is built from ``LEGACY_MYSQL_DDL``: a frozen copy of the recsys DDL that
``create_recsys_schema`` (create_all) emitted before migrations existed; it is also what
infra/sql/recsys_schema.sql held then, which docker-compose's recsys-db ran at first start.
SQLite's create_all DDL differed from it only by INTEGER for BIGINT, no AUTO_INCREMENT and
double-quoted identifiers (``_sqlite_ddl``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tasks.core import migrate
from tasks.core.migrate import SchemaMigrationError, ensure_recsys_schema
from tasks.core.schema import recsys_metadata

ROOT = Path(__file__).resolve().parents[2]

LEGACY_MYSQL_DDL = """
CREATE TABLE mirror_follows (
	user_id BIGINT NOT NULL,
	artist_id BIGINT NOT NULL,
	create_time DATETIME,
	PRIMARY KEY (user_id, artist_id)
);
CREATE INDEX ix_mirror_follows_create_time ON mirror_follows (create_time);
CREATE TABLE mirror_illusts (
	illust_id BIGINT NOT NULL,
	artist_id BIGINT,
	tags TEXT,
	width INTEGER,
	height INTEGER,
	sanity_level SMALLINT,
	`restrict` SMALLINT,
	x_restrict SMALLINT,
	total_bookmarks BIGINT,
	total_view BIGINT,
	create_time DATETIME,
	update_time DATETIME,
	PRIMARY KEY (illust_id)
);
CREATE INDEX ix_mirror_illusts_update_time ON mirror_illusts (update_time);
CREATE TABLE mirror_interactions (
	user_id BIGINT NOT NULL,
	illust_id BIGINT NOT NULL,
	create_time DATETIME NOT NULL,
	label SMALLINT NOT NULL,
	PRIMARY KEY (user_id, illust_id, create_time)
);
CREATE INDEX ix_mirror_interactions_create_time ON mirror_interactions (create_time);
CREATE TABLE mirror_users (
	user_id BIGINT NOT NULL,
	username VARCHAR(255),
	create_time DATETIME,
	PRIMARY KEY (user_id)
);
CREATE INDEX ix_mirror_users_create_time ON mirror_users (create_time);
CREATE TABLE pipeline_failures (
	id BIGINT NOT NULL AUTO_INCREMENT,
	dag_id VARCHAR(250) NOT NULL,
	task_id VARCHAR(250) NOT NULL,
	run_id VARCHAR(250) NOT NULL,
	try_number INTEGER NOT NULL,
	error TEXT NOT NULL,
	log_url TEXT,
	PRIMARY KEY (id),
	CONSTRAINT uq_failure_try UNIQUE (dag_id, task_id, run_id, try_number)
);
CREATE TABLE quarantine (
	id BIGINT NOT NULL AUTO_INCREMENT,
	table_name VARCHAR(64) NOT NULL,
	row_key VARCHAR(255) NOT NULL,
	expectation VARCHAR(128) NOT NULL,
	reason TEXT NOT NULL,
	row_json TEXT NOT NULL,
	run_id VARCHAR(255) NOT NULL,
	data_interval_start DATETIME NOT NULL,
	data_interval_end DATETIME NOT NULL,
	resolved_run_id VARCHAR(255),
	PRIMARY KEY (id),
	CONSTRAINT uq_quarantine_row UNIQUE (table_name, row_key, expectation, data_interval_start)
);
CREATE TABLE samples (
	user_id BIGINT NOT NULL,
	illust_id BIGINT NOT NULL,
	label SMALLINT NOT NULL,
	source VARCHAR(16) NOT NULL,
	interval_start DATETIME NOT NULL,
	interval_end DATETIME NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (user_id, illust_id)
);
CREATE TABLE staging_follows (
	data_interval_start DATETIME NOT NULL,
	data_interval_end DATETIME NOT NULL,
	row_seq BIGINT NOT NULL,
	user_id BIGINT,
	artist_id BIGINT,
	create_time DATETIME,
	run_id VARCHAR(255) NOT NULL,
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);
CREATE TABLE staging_illusts (
	data_interval_start DATETIME NOT NULL,
	data_interval_end DATETIME NOT NULL,
	row_seq BIGINT NOT NULL,
	illust_id BIGINT,
	artist_id BIGINT,
	tags TEXT,
	width INTEGER,
	height INTEGER,
	sanity_level SMALLINT,
	`restrict` SMALLINT,
	x_restrict SMALLINT,
	total_bookmarks BIGINT,
	total_view BIGINT,
	create_time DATETIME,
	update_time DATETIME,
	run_id VARCHAR(255) NOT NULL,
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);
CREATE TABLE staging_interactions (
	data_interval_start DATETIME NOT NULL,
	data_interval_end DATETIME NOT NULL,
	row_seq BIGINT NOT NULL,
	user_id BIGINT,
	illust_id BIGINT,
	label SMALLINT,
	create_time DATETIME,
	run_id VARCHAR(255) NOT NULL,
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);
CREATE TABLE staging_users (
	data_interval_start DATETIME NOT NULL,
	data_interval_end DATETIME NOT NULL,
	row_seq BIGINT NOT NULL,
	user_id BIGINT,
	username VARCHAR(255),
	create_time DATETIME,
	run_id VARCHAR(255) NOT NULL,
	PRIMARY KEY (data_interval_start, data_interval_end, row_seq)
);
CREATE TABLE watermarks (
	table_name VARCHAR(64) NOT NULL,
	high_water DATETIME NOT NULL,
	low_water DATETIME,
	PRIMARY KEY (table_name)
);
"""

LEGACY_TABLES = {
    "mirror_follows",
    "mirror_illusts",
    "mirror_interactions",
    "mirror_users",
    "pipeline_failures",
    "quarantine",
    "samples",
    "staging_follows",
    "staging_illusts",
    "staging_interactions",
    "staging_users",
    "watermarks",
}


def _sqlite_ddl(mysql_ddl: str) -> str:
    return mysql_ddl.replace("BIGINT", "INTEGER").replace(" AUTO_INCREMENT", "").replace("`", '"')


def _run_ddl(engine: sa.Engine, ddl: str) -> None:
    if engine.dialect.name == "sqlite":
        ddl = _sqlite_ddl(ddl)
    with engine.begin() as conn:
        for statement in ddl.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)


def _insert_legacy_rows(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO mirror_users (user_id, username, create_time) VALUES "
                "(7, 'alice', '2024-01-02 03:04:05'), (8, NULL, NULL)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO watermarks (table_name, high_water, low_water) VALUES "
                "('interactions', '2024-01-03 00:00:00', '2024-01-01 00:00:00')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO quarantine (table_name, row_key, expectation, reason, row_json,"
                " run_id, data_interval_start, data_interval_end) VALUES ('users', '9',"
                " 'not_null', 'user_id is null', '{}', 'r1', '2024-01-01 00:00:00',"
                " '2024-01-02 00:00:00')"
            )
        )


def _assert_legacy_rows_kept(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        users = conn.execute(
            sa.text(
                "SELECT user_id, username, create_time FROM mirror_users ORDER BY user_id"
            ).columns(create_time=sa.DateTime)
        ).all()
        marks = conn.execute(
            sa.text("SELECT table_name, high_water, low_water FROM watermarks").columns(
                high_water=sa.DateTime, low_water=sa.DateTime
            )
        ).all()
        quarantined = conn.execute(sa.text("SELECT id, row_key, reason FROM quarantine")).all()
    assert [tuple(r) for r in users] == [
        (7, "alice", datetime(2024, 1, 2, 3, 4, 5)),
        (8, None, None),
    ]
    assert [tuple(r) for r in marks] == [
        ("interactions", datetime(2024, 1, 3), datetime(2024, 1, 1))
    ]
    assert [tuple(r) for r in quarantined] == [(1, "9", "user_id is null")]


def _versions(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return sorted(
            r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        )


def _head() -> list[str]:
    heads = migrate.head_revisions()
    assert len(heads) == 1, f"the migrations have more than one head: {heads}"
    return list(heads)


def _autogenerate_diff(engine: sa.Engine, metadata: sa.MetaData = recsys_metadata) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=migrate.context_options(conn.dialect.name))
        return compare_metadata(context, metadata)


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty recsys DB on each backend (a fresh file / a fresh MariaDB database)."""
    migrate.forget_cached_state()
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'recsys.db'}"
    else:
        yield request.getfixturevalue("mariadb_database")
    migrate.forget_cached_state()


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


# (a) a database built by the old create_all upgrades in place


def test_legacy_create_all_db_upgrades_in_place(engine: sa.Engine) -> None:
    _run_ddl(engine, LEGACY_MYSQL_DDL)
    _insert_legacy_rows(engine)
    assert set(sa.inspect(engine).get_table_names()) == LEGACY_TABLES

    ensure_recsys_schema(engine)

    assert _versions(engine) == _head()
    _assert_legacy_rows_kept(engine)
    assert _autogenerate_diff(engine) == []
    # quarantine.id still counts on from the legacy rows
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO quarantine (table_name, row_key, expectation, reason, row_json,"
                " run_id, data_interval_start, data_interval_end) VALUES ('users', '10',"
                " 'not_null', 'x', '{}', 'r2', '2024-01-01 00:00:00', '2024-01-02 00:00:00')"
            )
        )
        ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM quarantine ORDER BY id"))]
    assert ids == [1, 2]


def test_baseline_revision_is_the_legacy_schema(engine: sa.Engine) -> None:
    """Revision 0001 replayed into a MetaData matches the frozen legacy DDL exactly."""
    _run_ddl(engine, LEGACY_MYSQL_DDL)
    baseline = migrate.baseline_metadata()
    assert set(baseline.tables) == LEGACY_TABLES
    with engine.connect() as conn:
        assert migrate.schema_differences(conn, baseline) == []


# (b) a new database goes to head and matches schema.py


def test_fresh_db_goes_to_head_and_matches_schema_py(engine: sa.Engine) -> None:
    ensure_recsys_schema(engine)
    assert _versions(engine) == _head()
    tables = set(sa.inspect(engine).get_table_names())
    assert tables == set(recsys_metadata.tables) | {"alembic_version"}
    # `alembic check`: a table or column added to schema.py without a revision fails here
    assert _autogenerate_diff(engine) == []
    with engine.connect() as conn:
        assert migrate.schema_differences(conn, recsys_metadata) == []


def test_fresh_db_ignores_tables_that_are_not_ours(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)")
    ensure_recsys_schema(engine)
    assert _versions(engine) == _head()
    assert "someone_elses" in sa.inspect(engine).get_table_names()


def test_the_check_sees_a_column_missing_from_the_migrations(engine: sa.Engine) -> None:
    """The comparison above can fail: schema.py with one more column than the revisions."""
    ensure_recsys_schema(engine)
    ahead = sa.MetaData()
    for table in recsys_metadata.sorted_tables:
        table.to_metadata(ahead)
    ahead.tables["samples"].append_column(sa.Column("score", sa.Float, nullable=True))
    sa.Index("ix_samples_source", ahead.tables["samples"].c.source)
    diffs = _autogenerate_diff(engine, ahead)
    assert sorted(d[0] for d in diffs) == ["add_column", "add_index"]
    with engine.connect() as conn:
        lines = migrate.schema_differences(conn, ahead)
    assert sorted(lines) == [
        "missing column samples.score",
        "missing index ix_samples_source on samples['source']",
    ]


# (c) at head: a no-op, and a free one once cached


def test_ensure_twice_is_a_no_op(engine: sa.Engine) -> None:
    ensure_recsys_schema(engine)
    statements: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def _record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        statements.append(statement)

    ensure_recsys_schema(engine)  # cached for this URL: no round trip at all
    assert statements == []

    migrate.forget_cached_state()
    ensure_recsys_schema(engine)  # re-checked: reads alembic_version, changes nothing
    writes = [
        s
        for s in statements
        if s.split()[0].upper() not in ("SELECT", "PRAGMA", "SHOW", "DESCRIBE")
    ]
    assert statements and writes == []
    assert _versions(engine) == _head()


def test_in_memory_engines_are_separate_databases() -> None:
    first, second = sa.create_engine("sqlite://"), sa.create_engine("sqlite://")
    ensure_recsys_schema(first)
    ensure_recsys_schema(second)  # same URL, another database: must not hit the cache
    assert "samples" in sa.inspect(second).get_table_names()


# (d) states that need a person: clear errors


def test_unknown_revision_is_refused(engine: sa.Engine) -> None:
    ensure_recsys_schema(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    migrate.forget_cached_state()
    with pytest.raises(SchemaMigrationError, match="9999_from_the_future.*not know"):
        ensure_recsys_schema(engine)


def test_legacy_db_that_differs_from_0001_is_refused(engine: sa.Engine) -> None:
    ddl = re.sub(r"CREATE TABLE staging_users \(.*?\);", "", LEGACY_MYSQL_DDL, flags=re.S)
    ddl = (
        ddl.replace("\tlow_water DATETIME,\n", "")  # watermarks before low_water existed
        .replace("\tlabel SMALLINT NOT NULL,\n\tsource", "\tlabel SMALLINT,\n\tsource")
        .replace("\tlog_url TEXT,\n", "\tlog_url TEXT,\n\textra_note TEXT,\n")
        .replace("CREATE INDEX ix_mirror_users_create_time ON mirror_users (create_time);", "")
    )
    _run_ddl(engine, ddl)
    with pytest.raises(SchemaMigrationError) as caught:
        ensure_recsys_schema(engine)
    message = str(caught.value)
    assert "do not match revision 0001" in message
    for expected in (
        "missing table staging_users",
        "missing column watermarks.low_water",
        "unexpected column pipeline_failures.extra_note",
        "samples.label: nullable=True, expected nullable=False",
        "missing index ix_mirror_users_create_time on mirror_users['create_time']",
    ):
        assert expected in message
    # nothing was stamped or created
    tables = set(sa.inspect(engine).get_table_names())
    assert "alembic_version" not in tables and "staging_users" not in tables


def test_legacy_primary_key_difference_is_named(engine: sa.Engine) -> None:
    _run_ddl(
        engine,
        LEGACY_MYSQL_DDL.replace(
            "PRIMARY KEY (user_id, illust_id)\n);", "PRIMARY KEY (user_id, illust_id, label)\n);"
        ),
    )
    with pytest.raises(
        SchemaMigrationError,
        match=r"samples: primary key \['user_id', 'illust_id', 'label'\], expected \['user_id', 'illust_id'\]",
    ):
        ensure_recsys_schema(engine)


# a later revision: legacy DB -> 0001 -> 0002 in one call, rows kept


REVISION_0002 = '''"""add a ranker table and a watermark note; widen samples.source"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("watermarks", sa.Column("note", sa.String(32), nullable=True))
    op.create_table(
        "ranker_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    with op.batch_alter_table("samples") as batch:
        batch.alter_column("source", existing_type=sa.String(16), type_=sa.String(32),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.alter_column("source", existing_type=sa.String(32), type_=sa.String(16),
                           existing_nullable=False)
    op.drop_table("ranker_runs")
    op.drop_column("watermarks", "note")
'''


@pytest.fixture
def tmp_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of tasks/core/migrations that tests may add revisions to."""
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", copy)
    migrate.script_directory.cache_clear()
    migrate.baseline_metadata.cache_clear()
    yield copy
    migrate.script_directory.cache_clear()
    migrate.baseline_metadata.cache_clear()


def test_next_revision_upgrades_a_legacy_db(engine: sa.Engine, tmp_migrations: Path) -> None:
    (tmp_migrations / "versions" / "0002_ranker.py").write_text(REVISION_0002)
    assert migrate.head_revisions() == ("0002",)
    _run_ddl(engine, LEGACY_MYSQL_DDL)
    _insert_legacy_rows(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO samples VALUES (7, 70, 1, 'positive', '2024-01-01 00:00:00',"
                " '2024-01-02 00:00:00', '2024-01-02 00:00:00')"
            )
        )

    ensure_recsys_schema(engine)

    assert _versions(engine) == ["0002"]
    _assert_legacy_rows_kept(engine)
    inspector = sa.inspect(engine)
    assert "ranker_runs" in inspector.get_table_names()
    assert [c["name"] for c in inspector.get_columns("watermarks")] == [
        "table_name",
        "high_water",
        "low_water",
        "note",
    ]
    source = {c["name"]: c for c in inspector.get_columns("samples")}["source"]
    assert source["type"].length == 32 and source["nullable"] is False
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE samples SET source = 'a-thirty-char-source-name-xxxx'"))
        assert conn.execute(
            sa.text("SELECT user_id, illust_id, label, source FROM samples")
        ).all() == [(7, 70, 1, "a-thirty-char-source-name-xxxx")]
        conn.execute(sa.text("UPDATE samples SET source = 'positive'"))  # fits 0001's 16

    url = engine.url.render_as_string(hide_password=False)
    assert migrate.main(["--url", url, "downgrade", "0001"]) == 0
    assert _versions(engine) == ["0001"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT user_id, source FROM samples")).all() == [
            (7, "positive")
        ]
    assert "ranker_runs" not in sa.inspect(engine).get_table_names()


def test_tables_matching_the_current_schema_py_are_stamped_head(
    engine: sa.Engine, tmp_migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a revision 0002, infra/sql/recsys_schema.sql (rendered from schema.py) builds
    head's tables with no alembic_version: not 0001, but head, so stamped 0002."""
    (tmp_migrations / "versions" / "0002_ranker.py").write_text(REVISION_0002)
    schema_0002 = sa.MetaData()  # schema.py as it would read with 0002
    for table in recsys_metadata.sorted_tables:
        table.to_metadata(schema_0002)
    schema_0002.tables["watermarks"].append_column(sa.Column("note", sa.String(32)))
    schema_0002.tables["samples"].c.source.type = sa.String(32)
    sa.Table(
        "ranker_runs",
        schema_0002,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    monkeypatch.setattr(migrate, "_recsys_metadata", lambda: schema_0002)
    schema_0002.create_all(engine)

    ensure_recsys_schema(engine)

    assert _versions(engine) == ["0002"]
    with engine.connect() as conn:
        assert migrate.schema_differences(conn, schema_0002) == []


def test_failed_upgrade_on_sqlite_leaves_nothing_half_done(
    tmp_migrations: Path, tmp_path: Path
) -> None:
    """SQLite migrates inside BEGIN IMMEDIATE: a revision that fails midway rolls back whole."""
    (tmp_migrations / "versions" / "0002_broken.py").write_text(
        REVISION_0002.replace(
            '    with op.batch_alter_table("samples") as batch:',
            '    op.execute("SELECT no_such_column FROM watermarks")\n'
            '    with op.batch_alter_table("samples") as batch:',
            1,
        )
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'recsys.db'}")
    _run_ddl(engine, LEGACY_MYSQL_DDL)
    _insert_legacy_rows(engine)
    with pytest.raises(sa.exc.OperationalError, match="no_such_column"):
        ensure_recsys_schema(engine)
    inspector = sa.inspect(engine)
    assert set(inspector.get_table_names()) == LEGACY_TABLES  # no alembic_version, ranker_runs
    assert "note" not in [c["name"] for c in inspector.get_columns("watermarks")]
    _assert_legacy_rows_kept(engine)


def test_revision_command_writes_from_the_template(
    tmp_migrations: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'recsys.db'}"
    monkeypatch.chdir(tmp_path)  # any working directory
    assert migrate.main(["--url", url, "upgrade"]) == 0
    assert (
        migrate.main(
            ["--url", url, "revision", "-m", "add ranker", "--rev-id", "0002", "--autogenerate"]
        )
        == 0
    )
    written = tmp_migrations / "versions" / "0002_add_ranker.py"
    text = written.read_text()
    assert "revision: str = '0002'" in text
    assert "down_revision: str | Sequence[str] | None = '0001'" in text
    compile(text, str(written), "exec")
    migrate.script_directory.cache_clear()
    assert migrate.head_revisions() == ("0002",)


# the CLI and concurrent first calls


def test_cli_upgrade_current_check(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'recsys.db'}"
    _run_ddl(sa.create_engine(url), LEGACY_MYSQL_DDL)
    run = [sys.executable, "-m", "tasks.core.migrate", "--url", url]
    cwd = tmp_path  # not the repository root
    before = subprocess.run([*run, "check"], cwd=cwd, capture_output=True, text=True)
    assert before.returncode == 1 and "database: (none)" in before.stdout
    upgraded = subprocess.run([*run, "upgrade"], cwd=cwd, capture_output=True, text=True)
    assert upgraded.returncode == 0, upgraded.stderr
    head = _head()[0]
    assert f"database: {head}  head: {head}" in upgraded.stdout
    after = subprocess.run([*run, "check"], cwd=cwd, capture_output=True, text=True)
    assert after.returncode == 0, after.stdout + after.stderr


_RACER = """
import os, sys, time
from pathlib import Path
import sqlalchemy as sa
from tasks.core.migrate import ensure_recsys_schema
url, gate, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
engine = sa.create_engine(url)
(gate / str(os.getpid())).touch()
while len(list(gate.iterdir())) < count:  # start together once all have imported alembic
    time.sleep(0.001)
ensure_recsys_schema(engine)
"""


@pytest.mark.parametrize("legacy", [False, True], ids=["fresh", "legacy"])
def test_concurrent_first_calls(engine: sa.Engine, legacy: bool, tmp_path: Path) -> None:
    """Three processes migrate the same database at once: all succeed, one upgrade applied.
    (Without the migration lock, MariaDB runs fail on half-created tables.)"""
    if legacy:
        _run_ddl(engine, LEGACY_MYSQL_DDL)
        _insert_legacy_rows(engine)
    url = engine.url.render_as_string(hide_password=False)
    gate = tmp_path / "gate"
    gate.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, url, str(gate), "3"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    errors = [r.communicate(timeout=120)[1] for r in racers]
    assert [r.returncode for r in racers] == [0, 0, 0], [err[-2000:] for err in errors]
    assert _versions(engine) == _head()
    if legacy:
        _assert_legacy_rows_kept(engine)
