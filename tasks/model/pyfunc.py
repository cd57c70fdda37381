"""MLflow pyfunc flavour of the two-tower model: scores (user, item) rows via the SavedModel.

The class is built inside :func:`make_pyfunc_model` so importing this module does not import
MLflow; cloudpickle stores it by value with the logged model. Input rows carry the raw
``score`` signature features, with ``history`` as a ``|``-joined string of illust_ids
(newest first) so the MLflow signature stays a flat table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tasks.model.features import ITEM_FEATURES, BookmarkHistory

# The pyfunc's ``history`` column is an already-cut newest-first list; BookmarkHistory lays it
# out. Kept under this name: logged models refer to it by module path.
history_matrix = BookmarkHistory.pad


def example_frame(items: Mapping[str, np.ndarray], *, history_len: int) -> pd.DataFrame:
    """A small input example in the pyfunc's column layout (for the MLflow signature)."""
    n = len(items["illust_id"])
    frame = pd.DataFrame({name: np.asarray(items[name]) for name in ITEM_FEATURES})
    frame.insert(0, "history", ["|".join(str(v) for v in items["illust_id"][:history_len])] * n)
    frame.insert(0, "user_id", np.arange(1, n + 1, dtype=np.int64))
    frame["tags"] = frame["tags"].astype(str)
    return frame


def make_pyfunc_model(history_len: int) -> Any:
    """A ``mlflow.pyfunc.PythonModel`` that loads the ``saved_model`` artifact and scores rows."""
    import mlflow

    class TwoTowerPyfunc(mlflow.pyfunc.PythonModel):
        def __getstate__(self) -> dict[str, Any]:
            # The loaded SavedModel is rebuilt by load_context; never pickle it.
            return {k: v for k, v in self.__dict__.items() if k != "_loaded"}

        def load_context(self, context: Any) -> None:
            import tensorflow as tf

            self._loaded = tf.saved_model.load(context.artifacts["saved_model"])

        def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
            from tasks.model.two_tower import to_tensors

            features = {name: model_input[name].to_numpy() for name in ITEM_FEATURES}
            features["user_id"] = model_input["user_id"].to_numpy()
            features["history"] = history_matrix(model_input["history"].tolist(), history_len)
            out = self._loaded.signatures["score"](**to_tensors(features))["score"].numpy()
            return pd.DataFrame({"score": out.astype(np.float64)})

    return TwoTowerPyfunc()
