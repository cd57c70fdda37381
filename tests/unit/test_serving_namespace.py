"""The serving namespace module: the exact KV key strings, the pointer, meta and freshness.

The expected strings are written out by hand: they are the contract Redis and the file KV
store hold, shared by the refresh, the precompute job and the API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tasks.serving import namespace as ns
from tasks.serving.kv import FileKV


def test_key_strings_are_the_published_format() -> None:
    tag = ns.refresh_tag(7, datetime(2024, 3, 5, 9, 8, 7))
    assert tag == "v7_20240305090807"
    assert ns.POINTER_KEY == "recsys:current"
    assert ns.NAMESPACES_KEY == "recsys:namespaces"
    assert ns.namespace_prefix(tag) == "v7_20240305090807:"
    assert ns.meta_key(tag) == "v7_20240305090807:meta"
    assert ns.user_vec_key(tag, 42) == "v7_20240305090807:user_vec:42"
    assert ns.hist_key(tag, 42) == "v7_20240305090807:hist:42"
    assert ns.seen_key(tag, 42) == "v7_20240305090807:seen:42"
    assert ns.follow_new_key(tag, 42) == "v7_20240305090807:follow_new:42"
    assert ns.i2i_key(tag, 1234) == "v7_20240305090807:i2i:1234"
    assert ns.hot_key(tag) == "v7_20240305090807:hot"
    assert ns.topn_key(tag, 42) == "v7_20240305090807:topn:42"
    assert ns.topn_meta_key(tag) == "v7_20240305090807:topn_meta"
    assert ns.user_vec_prefix(tag) == "v7_20240305090807:user_vec:"
    assert ns.topn_prefix(tag) == "v7_20240305090807:topn:"
    assert ns.key_id("v7_20240305090807:topn:42") == 42


def test_numpy_ids_spell_like_python_ints() -> None:
    # the refresh iterates numpy arrays: an int64 id must not become "np.int64(5)" or "5.0"
    assert ns.user_vec_key("v1_20240101000000", np.int64(5)) == "v1_20240101000000:user_vec:5"
    assert ns.i2i_key("v1_20240101000000", np.int32(9)) == "v1_20240101000000:i2i:9"
    assert ns.refresh_tag(np.int64(3), datetime(2024, 1, 1)) == "v3_20240101000000"


def test_pointer_meta_and_pruning_on_a_file_store(tmp_path: Path) -> None:
    kv = FileKV(tmp_path / "kv")
    try:
        assert ns.current_namespace(kv) is None
        for i, tag in enumerate(["v1_20240101000000", "v1_20240102000000", "v2_20240103000000"]):
            kv.mset({ns.hot_key(tag): b"h", ns.user_vec_key(tag, 1): b"u"})
            ns.write_meta(kv, tag, {"version": 1, "data_as_of": "2024-01-01T00:00:00"})
            ns.switch_namespace(kv, tag, float(i))
        assert kv.get("recsys:current") == b"v2_20240103000000"
        assert ns.current_namespace(kv) == "v2_20240103000000"
        # json.dumps with default separators, byte for byte
        assert kv.get("v1_20240101000000:meta") == (
            b'{"version": 1, "data_as_of": "2024-01-01T00:00:00"}'
        )
        assert ns.namespace_meta(kv, "v1_20240101000000") == {
            "version": 1,
            "data_as_of": "2024-01-01T00:00:00",
        }
        assert ns.namespace_meta(kv, "v9_20240101000000") is None

        assert ns.prune_namespaces(kv, keep_last=2) == ("v1_20240101000000",)
        assert list(kv.scan_keys("v1_20240101000000:")) == []
        assert sorted(kv.scan_keys("v1_20240102000000:")) == [
            "v1_20240102000000:hot",
            "v1_20240102000000:meta",
            "v1_20240102000000:user_vec:1",
        ]
        assert kv.zrevrange("recsys:namespaces", 0, -1) == [
            ("v2_20240103000000", 2.0),
            ("v1_20240102000000", 1.0),
        ]
        assert ns.clear_namespace(kv, "v1_20240102000000") == 3
    finally:
        kv.close()


def test_topn_meta_and_freshness(tmp_path: Path) -> None:
    kv = FileKV(tmp_path / "kv")
    try:
        ns.write_topn_meta(kv, "v1_20240101000000", as_of=datetime(2024, 1, 1), n=100, n_users=3)
        raw = kv.get("v1_20240101000000:topn_meta")
    finally:
        kv.close()
    assert raw == b'{"data_as_of": "2024-01-01T00:00:00", "n": 100, "n_users": 3}'
    day = timedelta(days=1)
    assert ns.topn_is_fresh({"data_as_of": "2024-01-02T00:00:00"}, raw, day) is True
    assert ns.topn_is_fresh({"data_as_of": "2024-01-02T00:00:01"}, raw, day) is False
    assert ns.topn_is_fresh({"data_as_of": "2024-01-01T00:00:00"}, None, day) is False
    with pytest.raises(KeyError, match="data_as_of"):
        ns.topn_is_fresh({}, raw, day)
