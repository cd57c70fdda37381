"""Tiny hand-made business data for the extraction / validation / sampling tests.

Three days of activity starting at ``DAY0``: 6 users, 8 illusts, follows and interactions,
all valid. Tests mutate copies to inject bad rows.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from tasks.core import schema

DAY0 = datetime(2024, 1, 1)
DAY = timedelta(days=1)


def tags_json(*names: str) -> str:
    tags = [{"name": n, "translatedName": n.upper(), "id": i} for i, n in enumerate(names)]
    return json.dumps(tags, ensure_ascii=False)


def tiny_world() -> dict[str, list[dict[str, Any]]]:
    """Deterministic rows: users 1-6, illusts 101-108 by artists 1-2, 3 days of events."""
    users = [
        {"user_id": u, "username": f"user{u}", "create_time": DAY0 - timedelta(days=30 - u)}
        for u in range(1, 5)
    ]
    # two users join during the data: user 5 on day 0, user 6 on day 1
    users.append({"user_id": 5, "username": "user5", "create_time": DAY0 + timedelta(hours=2)})
    users.append(
        {"user_id": 6, "username": "user6", "create_time": DAY0 + DAY + timedelta(hours=1)}
    )
    illusts = []
    for k, illust_id in enumerate(range(101, 109)):
        created = DAY0 - timedelta(days=10) + timedelta(days=k * 1.5)
        illusts.append(
            {
                "illust_id": illust_id,
                "artist_id": 1 + k % 2,
                "tags": tags_json("girl", f"tag{k}"),
                "width": 800 + k,
                "height": 600 + k,
                "sanity_level": 2,
                "restrict": 0,
                "x_restrict": 0,
                "total_bookmarks": 10 * k,
                "total_view": 100 * k + 50,
                "create_time": created,
                "update_time": created + timedelta(hours=3),
            }
        )
    follows = [
        {"user_id": 1, "artist_id": 2, "create_time": DAY0 - timedelta(days=2)},
        {"user_id": 2, "artist_id": 1, "create_time": DAY0 + timedelta(hours=5)},
        {"user_id": 3, "artist_id": 1, "create_time": DAY0 + DAY + timedelta(hours=5)},
        {"user_id": 6, "artist_id": 2, "create_time": DAY0 + 2 * DAY + timedelta(hours=5)},
    ]
    interactions = []
    for day in range(3):
        for user_id in range(1, 7):
            for j in range(3):
                illust_id = 101 + (user_id * 3 + j * 2 + day) % 8
                when = DAY0 + day * DAY + timedelta(hours=6 + user_id, minutes=7 * j)
                if user_id == 6 and day == 0:
                    continue  # user 6 joins on day 1
                illust_created = illusts[illust_id - 101]["create_time"]
                if illust_created > when:
                    continue
                label = 1 if (user_id + j + day) % 3 == 0 else 0
                interactions.append(
                    {
                        "user_id": user_id,
                        "illust_id": illust_id,
                        "label": label,
                        "create_time": when,
                    }
                )
    return {"users": users, "illusts": illusts, "follows": follows, "interactions": interactions}


def seed_replica(engine: sa.Engine, world: dict[str, list[dict[str, Any]]]) -> None:
    """Create the business schema on ``engine`` and insert ``world``'s rows."""
    schema.create_business_schema(engine)
    with engine.begin() as conn:
        for name, rows in world.items():
            conn.execute(sa.delete(schema.BUSINESS_TABLES[name]))
            if rows:
                conn.execute(sa.insert(schema.BUSINESS_TABLES[name]), rows)


def table_rows(engine: sa.Engine, table: sa.Table, *, exclude: tuple[str, ...] = ()) -> list[tuple]:
    """Every row of ``table`` (minus ``exclude`` columns), sorted, for whole-table comparisons."""
    columns = [c for c in table.columns if c.name not in exclude]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*columns)).all()
    return sorted((tuple(r) for r in rows), key=repr)
