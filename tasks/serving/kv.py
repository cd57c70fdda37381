"""Key-value store used by serving: Redis in production, a sqlite3 file by default.

Both implement the same small ``KVStore`` protocol (strings, bulk get/set through one
round trip, sorted sets, prefix scans) so the vector refresh, the precompute job and the
online API never care which one is behind ``settings.kv_url``:

* ``redis://host:port/db`` -> ``RedisKV`` (redis-py; bulk calls go through pipelines).
* ``file:///path/to/dir`` -> ``FileKV``: one sqlite3 file ``kv.sqlite3`` in that folder with
  a ``kv(key PRIMARY KEY, value BLOB)`` table and a ``zset(key, member, score)`` table. WAL
  mode plus sqlite's file locks make it safe to share between processes (Airflow tasks and
  the API), which a dict or a pickle file would not be.

Keys are ``str``; values are ``bytes`` (``str`` values are stored UTF-8 encoded).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlparse

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_fixed

from tasks.core.common import get_logger
from tasks.core.settings import Settings

log = get_logger("kv")

Value = bytes | str


class KVError(RuntimeError):
    """The KV backend could not be reached or failed a command."""


def sqlite_is_busy(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" family (SQLITE_BUSY/SQLITE_LOCKED, any
    extended code): another connection holds the lock, so trying again can succeed."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    )


def _to_bytes(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise ValueError(f"KV values must be bytes or str, got {type(value).__name__}: {value!r}")


@runtime_checkable
class KVStore(Protocol):
    """What serving needs from a key-value store."""

    def get(self, key: str) -> bytes | None: ...
    def set(self, key: str, value: Value) -> None: ...
    def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...
    def mset(self, mapping: Mapping[str, Value]) -> None: ...
    def delete(self, *keys: str) -> int: ...
    def zadd(self, key: str, mapping: Mapping[str, float]) -> None: ...
    def zadd_many(
        self, sets: Mapping[str, Mapping[str, float]], *, replace: bool = True
    ) -> None: ...
    def zrevrange(self, key: str, start: int, stop: int) -> list[tuple[str, float]]: ...
    def scan_keys(self, prefix: str) -> Iterator[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def ping(self) -> bool: ...
    def close(self) -> None: ...


class RedisKV:
    """``KVStore`` on Redis. Bulk writes go through non-transactional pipelines in chunks."""

    def __init__(self, url: str, *, chunk_size: int = 5000, socket_timeout: float = 2.0) -> None:
        import redis

        self.url = url
        self.chunk_size = chunk_size
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )

    def _call(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        import redis

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as exc:
            raise KVError(f"redis at {self.url}: {exc}") from exc

    def get(self, key: str) -> bytes | None:
        return self._call(self._client.get, key)

    def set(self, key: str, value: Value) -> None:
        self._call(self._client.set, key, _to_bytes(value))

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return list(self._call(self._client.mget, list(keys)))

    def mset(self, mapping: Mapping[str, Value]) -> None:
        items = list(mapping.items())
        for start in range(0, len(items), self.chunk_size):
            pipe = self._client.pipeline(transaction=False)
            for key, value in items[start : start + self.chunk_size]:
                pipe.set(key, _to_bytes(value))
            self._call(pipe.execute)

    def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(self._call(self._client.delete, *keys))

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        if mapping:
            self._call(self._client.zadd, key, {m: float(s) for m, s in mapping.items()})

    def zadd_many(self, sets: Mapping[str, Mapping[str, float]], *, replace: bool = True) -> None:
        """Write many sorted sets in pipelined chunks (``replace`` drops old members first)."""
        items = list(sets.items())
        step = max(1, self.chunk_size // 100)
        for start in range(0, len(items), step):
            pipe = self._client.pipeline(transaction=False)
            for key, mapping in items[start : start + step]:
                if replace:
                    pipe.delete(key)
                if mapping:
                    pipe.zadd(key, {m: float(s) for m, s in mapping.items()})
            self._call(pipe.execute)

    def zrevrange(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        rows = self._call(self._client.zrevrange, key, start, stop, withscores=True)
        return [(m.decode("utf-8"), float(s)) for m, s in rows]

    def scan_keys(self, prefix: str) -> Iterator[str]:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
        for key in self._call(self._client.scan_iter, match=pattern, count=1000):
            yield key.decode("utf-8")

    def delete_prefix(self, prefix: str) -> int:
        deleted = 0
        batch: list[str] = []
        for key in self.scan_keys(prefix):
            batch.append(key)
            if len(batch) >= self.chunk_size:
                deleted += self.delete(*batch)
                batch = []
        if batch:
            deleted += self.delete(*batch)
        return deleted

    def ping(self) -> bool:
        return bool(self._call(self._client.ping))

    def close(self) -> None:
        self._client.close()


class FileKV:
    """``KVStore`` in one sqlite3 file: the embedded default, safe across processes."""

    FILE_NAME = "kv.sqlite3"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / self.FILE_NAME
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            self.path, timeout=60, check_same_thread=False, isolation_level=None
        )
        with self._lock:
            self._init_schema()

    def _init_schema(self, attempts: int = 200, wait_s: float = 0.05) -> None:
        """WAL mode and tables. Switching to WAL takes an exclusive lock and SQLite reports
        "database is locked" (SQLITE_BUSY) at once (no busy wait) when another process opens
        the same file at that moment, so retry for a bounded time; any other error, or the
        last busy one after ``attempts`` tries, is raised."""
        statements = (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
            "CREATE TABLE IF NOT EXISTS zset (key TEXT NOT NULL, member TEXT NOT NULL,"
            " score REAL NOT NULL, PRIMARY KEY (key, member))",
            "CREATE INDEX IF NOT EXISTS ix_zset_score ON zset (key, score)",
        )
        for attempt in Retrying(
            retry=retry_if_exception(sqlite_is_busy),
            stop=stop_after_attempt(attempts),
            wait=wait_fixed(wait_s),
            reraise=True,
        ):
            with attempt:
                for sql in statements:
                    self._conn.execute(sql)

    def _write(self, sql_rows: Iterable[tuple[str, Iterable[tuple]]]) -> int:
        """Run statements in one transaction; returns the total affected row count."""
        changed = 0
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                for sql, rows in sql_rows:
                    cur = self._conn.executemany(sql, rows)
                    changed += max(cur.rowcount, 0)
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._conn.execute("ROLLBACK")
                raise KVError(f"file KV {self.path}: {exc}") from exc
        return changed

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def set(self, key: str, value: Value) -> None:
        self.mset({key: value})

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        found: dict[str, bytes] = {}
        keys = list(keys)
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, value in self._conn.execute(
                    f"SELECT key, value FROM kv WHERE key IN ({marks})", chunk
                ):
                    found[key] = bytes(value)
        return [found.get(k) for k in keys]

    def mset(self, mapping: Mapping[str, Value]) -> None:
        rows = [(k, _to_bytes(v)) for k, v in mapping.items()]
        self._write([("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", rows)])

    def delete(self, *keys: str) -> int:
        rows = [(k,) for k in keys]
        return self._write(
            [("DELETE FROM kv WHERE key = ?", rows), ("DELETE FROM zset WHERE key = ?", rows)]
        )

    def zadd(self, key: str, mapping: Mapping[str, float]) -> None:
        rows = [(key, str(m), float(s)) for m, s in mapping.items()]
        self._write([("INSERT OR REPLACE INTO zset (key, member, score) VALUES (?, ?, ?)", rows)])

    def zadd_many(self, sets: Mapping[str, Mapping[str, float]], *, replace: bool = True) -> None:
        """Write many sorted sets in one transaction (``replace`` drops old members first)."""
        statements: list[tuple[str, Iterable[tuple]]] = []
        if replace:
            statements.append(("DELETE FROM zset WHERE key = ?", [(k,) for k in sets]))
        rows = [(k, str(m), float(s)) for k, mp in sets.items() for m, s in mp.items()]
        statements.append(
            ("INSERT OR REPLACE INTO zset (key, member, score) VALUES (?, ?, ?)", rows)
        )
        self._write(statements)

    def zrevrange(self, key: str, start: int, stop: int) -> list[tuple[str, float]]:
        if start < 0 or stop < -1:
            raise ValueError(f"zrevrange supports start >= 0 and stop >= -1, got {start}, {stop}")
        limit = -1 if stop == -1 else max(stop - start + 1, 0)
        with self._lock:
            rows = self._conn.execute(
                "SELECT member, score FROM zset WHERE key = ?"
                " ORDER BY score DESC, member DESC LIMIT ? OFFSET ?",
                (key, limit, start),
            ).fetchall()
        return [(m, float(s)) for m, s in rows]

    def scan_keys(self, prefix: str) -> Iterator[str]:
        # Range scan on the primary key instead of LIKE, so '%' and '_' need no escaping.
        upper = prefix + "\U0010ffff"
        with self._lock:
            keys = [
                r[0]
                for sql in ("SELECT key FROM kv", "SELECT DISTINCT key FROM zset")
                for r in self._conn.execute(f"{sql} WHERE key >= ? AND key < ?", (prefix, upper))
            ]
        yield from keys

    def delete_prefix(self, prefix: str) -> int:
        upper = prefix + "\U0010ffff"
        deleted = self._write(
            [
                ("DELETE FROM kv WHERE key >= ? AND key < ?", [(prefix, upper)]),
                ("DELETE FROM zset WHERE key >= ? AND key < ?", [(prefix, upper)]),
            ]
        )
        return deleted

    def ping(self) -> bool:
        with self._lock:
            self._conn.execute("SELECT 1").fetchone()
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_kv_url(url: str) -> KVStore:
    """Open the store named by ``url`` (``file://DIR`` or ``redis://...``)."""
    scheme = urlparse(url).scheme
    if scheme == "file":
        return FileKV(url[len("file://") :])
    if scheme in ("redis", "rediss", "unix"):
        return RedisKV(url)
    raise ValueError(f"unsupported KV url {url!r}: expected file:// or redis://")


def open_kv(settings: Settings) -> KVStore:
    """Open the KV store configured in ``settings.kv_url``."""
    return open_kv_url(settings.kv_url)
