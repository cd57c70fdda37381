"""One user-history builder: training, vector refresh, the pyfunc and the API fallback agree.

User 7's interactions (base = 2024-01-01 00:00:00), cut as of ``base + 10.5 s``:

    illust 3  bookmarked at +0 s   -> in
    illust 8  viewed     at +2 s   -> never (label 0)
    illust 4  bookmarked at +5 s   -> in  } same time: the larger id first, 5 then 4
    illust 5  bookmarked at +5 s   -> in  }
    illust 9  bookmarked at +10 s  -> out: same second as the cut (whole-second resolution)
    illust 11 bookmarked at +60 s  -> out: after the cut

so the ``history`` input is [5, 4, 3] then 0-padding, whoever builds it. User 8's bookmark
must not leak into user 7's row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.model.constants import HISTORY_LEN

BASE = pd.Timestamp("2024-01-01 00:00:00")
CUT = BASE + pd.Timedelta(seconds=10.5)
USER = 7
EXPECTED = [5, 4, 3] + [0] * (HISTORY_LEN - 3)


def _interactions() -> pd.DataFrame:
    rows = [
        (7, 3, 1, 0.0),
        (7, 8, 0, 2.0),
        (7, 4, 1, 5.0),
        (7, 5, 1, 5.0),
        (7, 9, 1, 10.0),
        (7, 11, 1, 60.0),
        (8, 21, 1, 1.0),
    ]
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "illust_id": [r[1] for r in rows],
            "label": [r[2] for r in rows],
            "create_time": [BASE + pd.Timedelta(seconds=r[3]) for r in rows],
        }
    )


def _training_inputs(as_of_end: pd.Timestamp, length: int) -> np.ndarray:
    """What SampleStream feeds the model: a negative (as of the interval end) and the positive
    illust 9 (as of its own bookmark time, +10 s)."""
    from tasks.model.features import BookmarkHistory
    from tasks.model.scoring import ItemCatalogue
    from tasks.model.training.config import TrainParams
    from tasks.model.training.examples import SampleStream

    interactions = _interactions()
    stream = SampleStream(
        engine=None,  # type: ignore[arg-type]  # featurize never queries
        interval_end=as_of_end.to_pydatetime(),
        catalogue=ItemCatalogue(ids=np.zeros(0, np.int64), features={}),
        history=BookmarkHistory.from_frame(interactions[interactions["label"] == 1]),
        params=TrainParams(history_len=length),
    )
    frame = pd.DataFrame(
        {
            "user_id": [USER, USER],
            "illust_id": [30, 9],
            "label": [0, 1],
            "event_time": [pd.NaT, BASE + pd.Timedelta(seconds=10)],
        }
    )
    return stream.featurize(frame)["history"]


def _write_mirror(url: str) -> sa.Engine:
    from tasks.core.db import get_engine
    from tasks.core.schema import (
        ensure_recsys_schema,
        mirror_interactions,
        mirror_users,
    )

    engine = get_engine(url)
    ensure_recsys_schema(engine)
    frame = _interactions()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(mirror_users),
            [{"user_id": u, "username": f"u{u}", "create_time": BASE} for u in (7, 8)],
        )
        conn.execute(
            sa.insert(mirror_interactions),
            [
                {**row, "create_time": row["create_time"].to_pydatetime()}
                for row in frame.to_dict("records")
            ],
        )
    return engine


class _KV:
    """The KV reads recommend_for makes, over a payload dict."""

    def __init__(self, payload: dict[str, bytes]) -> None:
        self.payload = payload

    def mget(self, keys: list[str]) -> list[bytes | None]:
        return [self.payload.get(k) for k in keys]


class _RecordingModel:
    """A model client that records the user-tower inputs it is asked for."""

    def __init__(self) -> None:
        self.calls: list[dict[str, np.ndarray]] = []

    def predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        assert signature == "user_tower"
        self.calls.append({k: np.asarray(v) for k, v in inputs.items()})
        return {"embedding": np.ones((1, 4), np.float32)}


def _api_fallback_input(settings: Any, payload: dict[str, bytes], ns: str) -> np.ndarray:
    """recommend_for with no user vector in the KV: the history it gives the user tower."""
    from api.app import NamespaceView, ServingState, recommend_for

    model = _RecordingModel()
    state = ServingState(settings=settings, kv=_KV(payload), model=model)
    state.view = NamespaceView(ns, {}, False, [(1, 1.0)], read_at=math.inf)  # cached for good
    recommend_for(state, USER, 3)
    assert len(model.calls) == 1
    return model.calls[0]["history"]


def _pyfunc_input(history: str, length: int) -> np.ndarray:
    """What the pyfunc's predict hands the SavedModel for a row with this history column."""
    import tensorflow as tf

    from tasks.model.pyfunc import make_pyfunc_model

    seen: dict[str, np.ndarray] = {}

    def score(**tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        seen.update({k: v.numpy() for k, v in tensors.items()})
        return {"score": tf.zeros([tf.shape(tensors["user_id"])[0]])}

    class Loaded:
        signatures = {"score": score}

    pyfunc = make_pyfunc_model(length)
    pyfunc._loaded = Loaded()
    row = {
        "user_id": [USER],
        "history": [history],
        "illust_id": [30],
        "artist_id": [1],
        "tags": ["cat"],
        **{k: [0] for k in ("width", "height", "sanity_level", "restrict", "x_restrict")},
        **{k: [0] for k in ("total_bookmarks", "total_view")},
    }
    pyfunc.predict(None, pd.DataFrame(row))
    return seen["history"]


@pytest.mark.mariadb
def test_four_builders_give_the_same_history(settings, mariadb_database) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.features import load_user_features
    from tasks.serving.recall import load_channel_frames
    from tasks.serving.vectors import build_kv_payload

    engine = _write_mirror(mariadb_database)

    # Training: a negative cut at the interval end and the positive 9 cut at its own time.
    training = _training_inputs(CUT, HISTORY_LEN)
    assert training.tolist() == [EXPECTED, EXPECTED]

    # Vector refresh: load_user_features over the DB, as of the same time.
    user_ids, features = load_user_features(engine, as_of=CUT.to_pydatetime())
    assert user_ids.tolist() == [7, 8]
    refresh = features["history"][0]
    assert refresh.tolist() == EXPECTED
    assert features["history"][1].tolist() == [21] + [0] * (HISTORY_LEN - 1)

    # The API fallback: refresh's rows go to the KV (hist:<uid>), the API reads them back.
    ns = "rt_ns"
    payload = build_kv_payload(
        ns,
        user_ids=user_ids,
        user_vectors=np.zeros((len(user_ids), 4), np.float32),
        histories=features["history"],
        frames=load_channel_frames(engine),
        as_of=CUT.to_pydatetime(),
    )
    del payload[f"{ns}:user_vec:{USER}"]  # no vector: the API runs the user tower itself
    api = _api_fallback_input(settings, payload, ns)
    assert api.dtype == np.int64 and api.tolist() == [EXPECTED]

    # The pyfunc: a client sends the history column as "5|4|3".
    pyfunc = _pyfunc_input("5|4|3", HISTORY_LEN)
    assert pyfunc.tolist() == [EXPECTED]

    np.testing.assert_array_equal(training[0], refresh)
    np.testing.assert_array_equal(api[0], refresh)
    np.testing.assert_array_equal(pyfunc[0], refresh)


@pytest.mark.mariadb
def test_short_history_keeps_the_newest(mariadb_database) -> None:  # type: ignore[no-untyped-def]
    """H = 2 keeps [5, 4]; with no cut (refresh's production call) the newest are 11 and 9."""
    from tasks.model.features import load_user_features

    engine = _write_mirror(mariadb_database)
    assert _training_inputs(CUT, 2).tolist() == [[5, 4], [5, 4]]
    _, cut = load_user_features(engine, as_of=CUT.to_pydatetime(), history_len=2)
    assert cut["history"][0].tolist() == [5, 4]
    assert _pyfunc_input("5|4|3", 2).tolist() == [[5, 4]]
    _, latest = load_user_features(engine, history_len=2)
    assert latest["history"][0].tolist() == [11, 9]
    after_all = _training_inputs(BASE + pd.Timedelta(minutes=5), 2)
    assert after_all[0].tolist() == [11, 9]
