"""The same contract tests run against real Redis and the file-backed default store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.serving.kv import FileKV, KVError, KVStore, RedisKV, open_kv, open_kv_url


@pytest.fixture(params=["file", "redis"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    if request.param == "file":
        store: KVStore = open_kv_url(f"file://{tmp_path / 'kv'}")
    else:
        store = open_kv_url(request.getfixturevalue("redis_url"))
    yield store
    store.close()


def test_get_set_roundtrip_and_missing_key(kv: KVStore) -> None:
    assert kv.get("absent") is None
    kv.set("a", b"\x00\x01binary")
    kv.set("s", "text é")
    assert kv.get("a") == b"\x00\x01binary"
    assert kv.get("s") == "text é".encode()
    kv.set("a", b"new")
    assert kv.get("a") == b"new"


def test_mset_mget_keep_order_and_report_missing(kv: KVStore) -> None:
    kv.mset({f"k:{i}": str(i) for i in range(1200)})
    got = kv.mget(["k:5", "nope", "k:1199", "k:0"])
    assert got == [b"5", None, b"1199", b"0"]
    assert kv.mget([]) == []


def test_delete_counts_removed_keys(kv: KVStore) -> None:
    kv.mset({"x": b"1", "y": b"2"})
    assert kv.delete("x", "missing") == 1
    assert kv.get("x") is None and kv.get("y") == b"2"


def test_sorted_set_orders_by_score_desc_and_slices(kv: KVStore) -> None:
    kv.zadd("z", {"10": 0.5, "11": 2.0, "12": 1.0, "13": -1.0})
    assert kv.zrevrange("z", 0, -1) == [("11", 2.0), ("12", 1.0), ("10", 0.5), ("13", -1.0)]
    assert kv.zrevrange("z", 1, 2) == [("12", 1.0), ("10", 0.5)]
    kv.zadd("z", {"13": 5.0})  # update moves the member to the top
    assert kv.zrevrange("z", 0, 0) == [("13", 5.0)]
    assert kv.zrevrange("missing", 0, 10) == []


def test_zadd_many_replaces_whole_sets(kv: KVStore) -> None:
    kv.zadd("t:1", {"old": 9.0})
    kv.zadd_many({"t:1": {"a": 1.0, "b": 2.0}, "t:2": {"c": 3.0}})
    assert kv.zrevrange("t:1", 0, -1) == [("b", 2.0), ("a", 1.0)]
    assert kv.zrevrange("t:2", 0, -1) == [("c", 3.0)]


def test_scan_and_delete_by_prefix_leave_other_keys(kv: KVStore) -> None:
    kv.mset({"v1:a": b"1", "v1:b": b"2", "v10:a": b"3", "v2:a": b"4", "v1_x": b"5"})
    kv.zadd("v1:z", {"m": 1.0})
    assert sorted(kv.scan_keys("v1:")) == ["v1:a", "v1:b", "v1:z"]
    assert kv.delete_prefix("v1:") == 3
    assert sorted(kv.scan_keys("v")) == ["v10:a", "v1_x", "v2:a"]
    assert kv.zrevrange("v1:z", 0, -1) == []


def test_ping(kv: KVStore) -> None:
    assert kv.ping() is True


def test_open_kv_picks_backend_by_scheme(settings, redis_url: str) -> None:  # type: ignore[no-untyped-def]
    file_store = open_kv(settings)
    assert isinstance(file_store, FileKV)
    assert file_store.path.parent == settings.home / "kv"
    file_store.close()
    redis_store = open_kv(settings.replace(kv_url=redis_url))
    assert isinstance(redis_store, RedisKV)
    redis_store.close()
    with pytest.raises(ValueError, match="memcached://x"):
        open_kv(settings.replace(kv_url="memcached://x"))


def test_file_kv_is_shared_between_two_handles(tmp_path: Path) -> None:
    first, second = FileKV(tmp_path), FileKV(tmp_path)
    first.set("shared", b"yes")
    assert second.get("shared") == b"yes"
    first.close()
    second.close()


def test_redis_down_raises_kv_error() -> None:
    store = RedisKV("redis://127.0.0.1:1/0", socket_timeout=0.5)
    with pytest.raises(KVError, match="127.0.0.1:1"):
        store.get("anything")


def test_file_kv_concurrent_writers_in_separate_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tasks.serving.kv import FileKV\n"
        "kv = FileKV(sys.argv[1]); tag = sys.argv[2]\n"
        "for batch in range(30):\n"
        "    kv.mset({f'{tag}:{batch}:{i}': f'{batch}-{i}' for i in range(10)})\n"
        "    kv.zadd('shared_zset', {f'{tag}{batch}': float(batch)})\n"
        "kv.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag]) for tag in ("p", "q")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    kv = FileKV(tmp_path)
    try:
        assert len(list(kv.scan_keys("p:"))) == len(list(kv.scan_keys("q:"))) == 300
        assert kv.get("q:29:9") == b"29-9"
        assert len(kv.zrevrange("shared_zset", 0, -1)) == 60
    finally:
        kv.close()
