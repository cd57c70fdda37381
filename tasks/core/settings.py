"""One settings module for every backend.

Each backend has an embedded default (files under ``RECSYS_HOME``) so a fresh clone runs
end to end with no servers. Environment variables switch a backend to a real service; in
Airflow, ``plugins.connections.settings_from_connections`` overlays Airflow Connections
(``recsys_replica``, ``recsys_db``, ``recsys_kv``, ``recsys_milvus``, ``recsys_tfserving``)
on top of these. Airflow's own ``AIRFLOW_CONN_<ID>`` URI variables are honoured here too,
without importing Airflow.

Precedence, highest first: explicit ``RECSYS_*`` env var, ``AIRFLOW_CONN_*`` env var,
embedded default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def airflow_conn_uri_to_sqlalchemy(uri: str) -> str:
    """Turn an Airflow connection URI (``mysql://u:p@h:3306/db``) into a SQLAlchemy URL."""
    if uri.startswith("mysql://"):
        return "mysql+mysqldb://" + uri[len("mysql://") :]
    if uri.startswith("sqlite://") and not uri.startswith("sqlite:///"):
        return "sqlite:///" + uri[len("sqlite://") :]
    return uri


@dataclass(frozen=True)
class Settings:
    """Where every backend lives. Frozen: derive variants with ``dataclasses.replace``."""

    home: Path
    replica_url: str
    recsys_db_url: str
    kv_url: str
    milvus_uri: str
    milvus_token: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    tfserving_url: str | None
    serving_base_path: Path
    model_name: str
    registered_model_name: str
    site_launch: str
    max_replica_lag_s: float
    # The MLflow tracking UI as a person's browser reaches it (links in logs and XCom).
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    # The ranker (issue 12): its TF-Serving model name and its MLflow registered model.
    ranker_model_name: str = "ranker"
    ranker_registered_model_name: str = "ranker"
    # The two-tower gate's baseline floor (model_registry.gate): "strongest" of MostPop /
    # ItemKNN / EASE, or one of them by name (env RECSYS_GATE_FLOOR).
    gate_floor: str = "strongest"

    @property
    def gx_dir(self) -> Path:
        """Great Expectations file context (Data Docs land under it)."""
        return self.home / "gx"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def load_settings(home: str | os.PathLike[str] | None = None) -> Settings:
    """Read settings from the environment, falling back to embedded defaults under ``home``."""
    home_path = Path(home or _env("RECSYS_HOME") or REPO_ROOT / "var").resolve()
    replica = _env("RECSYS_REPLICA_URL", "AIRFLOW_CONN_RECSYS_REPLICA")
    recsys_db = _env("RECSYS_DB_URL", "AIRFLOW_CONN_RECSYS_DB")
    kv = _env("RECSYS_KV_URL", "AIRFLOW_CONN_RECSYS_KV")
    milvus = _env("RECSYS_MILVUS_URI", "AIRFLOW_CONN_RECSYS_MILVUS")
    tfserving = _env("RECSYS_TFSERVING_URL", "AIRFLOW_CONN_RECSYS_TFSERVING")
    if milvus and milvus.startswith("milvus://"):
        milvus = "http://" + milvus[len("milvus://") :]
    if tfserving and tfserving.startswith("tfserving://"):
        tfserving = "http://" + tfserving[len("tfserving://") :]
    return Settings(
        home=home_path,
        replica_url=airflow_conn_uri_to_sqlalchemy(replica)
        if replica
        else f"sqlite:///{home_path / 'replica.db'}",
        recsys_db_url=airflow_conn_uri_to_sqlalchemy(recsys_db)
        if recsys_db
        else f"sqlite:///{home_path / 'recsys.db'}",
        kv_url=kv or f"file://{home_path / 'kv'}",
        milvus_uri=milvus or str(home_path / "milvus.db"),
        milvus_token=_env("RECSYS_MILVUS_TOKEN") or "",
        mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI") or f"sqlite:///{home_path / 'mlflow.db'}",
        mlflow_artifact_root=_env("RECSYS_MLFLOW_ARTIFACT_ROOT")
        or (home_path / "mlartifacts").as_uri(),
        tfserving_url=tfserving,
        serving_base_path=Path(_env("RECSYS_SERVING_BASE_PATH") or home_path / "serving"),
        model_name=_env("RECSYS_MODEL_NAME") or "two_tower",
        registered_model_name=_env("RECSYS_REGISTERED_MODEL") or "recsys4pix_two_tower",
        site_launch=_env("RECSYS_SITE_LAUNCH") or "2007-09-10",
        gate_floor=_env("RECSYS_GATE_FLOOR") or "strongest",
        max_replica_lag_s=float(_env("RECSYS_MAX_REPLICA_LAG_S") or 300),
        mlflow_ui_url=(_env("RECSYS_MLFLOW_UI_URL") or "http://127.0.0.1:5000").rstrip("/"),
        ranker_model_name=_env("RECSYS_RANKER_MODEL_NAME") or "ranker",
        ranker_registered_model_name=_env("RECSYS_RANKER_REGISTERED_MODEL") or "ranker",
    )
