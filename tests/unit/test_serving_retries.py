"""The serving poll/retry loops: TF-Serving's status wait and the file KV's WAL switch.

Both are scripted here (no server, no second process) so each decision is pinned: what is
retried, what stops at once, and what is raised when time or attempts run out.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.serving.kv import FileKV, sqlite_is_busy
from tasks.serving.tfserving import ModelVersionEndedError, TFServingClient, TFServingError


def _scripted(client: TFServingClient, answers: list[Any]) -> list[int | None]:
    """Make ``client.version_status`` play ``answers`` (an exception is raised); log calls."""
    calls: list[int | None] = []
    it: Iterator[Any] = iter(answers)

    def version_status(version: int | None = None) -> list[dict[str, Any]]:
        calls.append(version)
        answer = next(it)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    client.version_status = version_status  # type: ignore[method-assign]
    return calls


def _entry(version: str, state: str, code: str = "OK", message: str = "") -> dict[str, Any]:
    return {
        "version": version,
        "state": state,
        "status": {"error_code": code, "error_message": message},
    }


def test_wait_available_polls_through_errors_and_loading_states() -> None:
    client = TFServingClient("http://127.0.0.1:1", "m")
    available = _entry("3", "AVAILABLE")
    calls = _scripted(
        client,
        [
            TFServingError("HTTP 404: Could not find any versions", http_status=404),
            TFServingError("connection refused"),
            [],  # not listed yet
            [_entry("2", "AVAILABLE")],  # another version does not count
            [_entry("3", "START")],
            [_entry("3", "LOADING")],
            [_entry("2", "AVAILABLE"), available],
            [_entry("3", "END")],  # never read: AVAILABLE stopped the loop
        ],
    )
    assert client.wait_available(3, timeout_s=30, poll_s=0.001) == available
    assert calls == [3] * 7


def test_an_ended_version_stops_the_wait_at_once_with_its_status() -> None:
    client = TFServingClient("http://127.0.0.1:1", "m")
    ended = _entry("4", "END", "UNKNOWN", "ValueError: no signature")
    calls = _scripted(client, [[_entry("4", "LOADING")], [ended], [_entry("4", "AVAILABLE")]])
    with pytest.raises(ModelVersionEndedError, match="m version 4 ended: .*no signature") as info:
        client.wait_available(4, timeout_s=30, poll_s=0.001)
    assert info.value.entry == ended
    assert calls == [4, 4]


def test_an_error_message_mentioning_ended_is_still_retried() -> None:
    # The decision is the status entry's state, not text: a transient error whose body says
    # "ended:" is polled again (the old loop re-raised it because of the words).
    client = TFServingClient("http://127.0.0.1:1", "m")
    calls = _scripted(
        client,
        [
            TFServingError("HTTP 503: stream ended: retry later", http_status=503),
            [_entry("5", "AVAILABLE")],
        ],
    )
    assert client.wait_available(5, timeout_s=30, poll_s=0.001)["state"] == "AVAILABLE"
    assert calls == [5, 5]


def test_wait_available_times_out_naming_the_last_state() -> None:
    client = TFServingClient("http://127.0.0.1:1", "m")
    calls = _scripted(client, [[_entry("6", "LOADING")]] * 1000)
    with pytest.raises(
        TFServingError, match=r"m version 6 not AVAILABLE after 0.2s \(state LOADING"
    ):
        client.wait_available(6, timeout_s=0.2, poll_s=0.05)
    assert 2 <= len(calls) <= 6  # ~0.2 s / 0.05 s, give or take scheduling


def test_wait_available_times_out_naming_the_last_error() -> None:
    client = TFServingClient("http://127.0.0.1:1", "m")
    _scripted(client, [TFServingError("HTTP 404: nope", http_status=404)] * 1000)
    with pytest.raises(TFServingError, match=r"not AVAILABLE after 0.1s \(HTTP 404: nope\)"):
        client.wait_available(6, timeout_s=0.1, poll_s=0.02)


def test_a_bug_in_the_answer_is_not_retried() -> None:
    client = TFServingClient("http://127.0.0.1:1", "m")
    calls = _scripted(client, [ValueError("bad json"), [_entry("1", "AVAILABLE")]])
    with pytest.raises(ValueError, match="bad json"):
        client.wait_available(1, timeout_s=30, poll_s=0.001)
    assert calls == [1]


def _sqlite_error(message: str, code: int) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    return exc


def test_sqlite_busy_is_decided_by_error_code() -> None:
    assert sqlite_is_busy(_sqlite_error("database is locked", sqlite3.SQLITE_BUSY))
    assert sqlite_is_busy(_sqlite_error("database table is locked", sqlite3.SQLITE_LOCKED))
    assert sqlite_is_busy(_sqlite_error("database is locked", 261))  # SQLITE_BUSY_RECOVERY
    assert not sqlite_is_busy(_sqlite_error("locked out of disk I/O", sqlite3.SQLITE_IOERR))
    assert not sqlite_is_busy(sqlite3.OperationalError("database is locked"))  # no code
    assert not sqlite_is_busy(RuntimeError("database is locked"))


class _FlakyConnection:
    """Stands in for the sqlite3 connection: raises the scripted errors, then succeeds."""

    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = list(errors)
        self.executed: list[str] = []

    def execute(self, sql: str) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.executed.append(sql)


def _kv_with(tmp_path: Path, conn: _FlakyConnection) -> FileKV:
    kv = FileKV(tmp_path / "kv")
    kv._conn.close()
    kv._conn = conn  # type: ignore[assignment]
    return kv


def test_file_kv_schema_retries_busy_then_runs_every_statement(tmp_path: Path) -> None:
    busy = [_sqlite_error("database is locked", sqlite3.SQLITE_BUSY) for _ in range(3)]
    conn = _FlakyConnection(busy)
    _kv_with(tmp_path, conn)._init_schema(attempts=5, wait_s=0.001)
    assert conn.errors == []
    assert len(conn.executed) == 5 and conn.executed[0] == "PRAGMA journal_mode=WAL"


def test_file_kv_schema_gives_up_after_the_attempts(tmp_path: Path) -> None:
    busy = [_sqlite_error(f"database is locked ({i})", sqlite3.SQLITE_BUSY) for i in range(5)]
    conn = _FlakyConnection(busy)
    with pytest.raises(sqlite3.OperationalError, match=r"locked \(3\)"):
        _kv_with(tmp_path, conn)._init_schema(attempts=4, wait_s=0.001)
    assert len(conn.errors) == 1 and conn.executed == []


def test_file_kv_schema_raises_other_errors_at_once(tmp_path: Path) -> None:
    conn = _FlakyConnection([_sqlite_error("disk I/O error", sqlite3.SQLITE_IOERR)])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        _kv_with(tmp_path, conn)._init_schema(attempts=5, wait_s=0.001)
    assert conn.executed == []
