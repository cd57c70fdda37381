"""The item table the user tower encodes its history with: rows by hand, no TensorFlow."""

from __future__ import annotations

import numpy as np

from tasks.model.features import FeatureStats
from tasks.model.two_tower import _item_table_rows


def test_item_table_rows_follow_the_id_vocabulary_and_drop_counts() -> None:
    """Vocabulary [5, 9, 12] -> lookup rows 1, 2, 3 (row 0: OOV/padding). Item 12 is not in
    the catalogue -> empty features. Counts are 0 everywhere: a baked table cannot be point in
    time. Catalogue order (9 before 5) does not matter."""
    items = {
        "illust_id": np.array([9, 5]),
        "artist_id": np.array([90, 50]),
        "tags": np.array(["b|c", "猫"], dtype=object),
        "width": np.array([900, 500]),
        "height": np.array([901, 501]),
        "sanity_level": np.array([4, 2]),
        "restrict": np.array([1, 0]),
        "x_restrict": np.array([2, 0]),
        "total_bookmarks": np.array([7, 3]),
        "total_view": np.array([70, 30]),
    }
    rows = _item_table_rows(FeatureStats(vocabularies={"illust_id": [5, 9, 12]}), items)
    assert rows["illust_id"].tolist() == [0, 5, 9, 12]
    assert rows["artist_id"].tolist() == [0, 50, 90, 0]
    assert rows["width"].tolist() == [0, 500, 900, 0]
    assert rows["x_restrict"].tolist() == [0, 0, 2, 0]
    assert [t.decode() for t in rows["tags"]] == ["", "猫", "b|c", ""]
    assert rows["total_bookmarks"].tolist() == [0, 0, 0, 0]
    assert rows["total_view"].tolist() == [0, 0, 0, 0]
