"""Settings for a running task: embedded defaults, overlaid with Airflow Connections.

Precedence, highest first: an explicit ``RECSYS_*`` env var, the Airflow Connection
(``recsys_replica``, ``recsys_db``, ``recsys_kv``, ``recsys_milvus``, ``recsys_tfserving``,
from the metadata DB, a secrets backend or ``AIRFLOW_CONN_*``), the embedded default.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from tasks.core.settings import Settings, load_settings

log = logging.getLogger(__name__)


def _lookup(conn_id: str, build: Callable[[], Any]) -> Any:
    """Run ``build`` if connection ``conn_id`` exists; None when it does not."""
    from airflow.sdk import BaseHook

    try:
        BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no metadata DB outside a task
        return None
    return build()


def settings_from_connections(base: Settings | None = None) -> Settings:
    """Resolve where every backend lives for this task, logging the source of each."""
    from plugins.hooks import MilvusHook, RecsysKVHook, TFServingHook, mysql_sqlalchemy_url

    settings = base or load_settings()
    changes: dict[str, Any] = {}
    if not os.environ.get("RECSYS_REPLICA_URL"):
        url = _lookup("recsys_replica", lambda: mysql_sqlalchemy_url("recsys_replica"))
        if url:
            changes["replica_url"] = url
    if not os.environ.get("RECSYS_DB_URL"):
        url = _lookup("recsys_db", lambda: mysql_sqlalchemy_url("recsys_db"))
        if url:
            changes["recsys_db_url"] = url
    if not os.environ.get("RECSYS_KV_URL"):
        url = _lookup("recsys_kv", lambda: RecsysKVHook().get_uri())
        if url:
            changes["kv_url"] = url
    if not os.environ.get("RECSYS_MILVUS_URI"):
        found = _lookup("recsys_milvus", lambda: MilvusHook().get_uri_and_token())
        if found:
            changes["milvus_uri"], changes["milvus_token"] = found
    if not os.environ.get("RECSYS_TFSERVING_URL"):
        url = _lookup("recsys_tfserving", lambda: TFServingHook().get_uri())
        if url:
            changes["tfserving_url"] = url
    resolved = settings.replace(**changes) if changes else settings
    log.info(
        "backends: replica=%s recsys_db=%s kv=%s milvus=%s mlflow=%s serving=%s (from connections: %s)",
        _redact(resolved.replica_url),
        _redact(resolved.recsys_db_url),
        _redact(resolved.kv_url),
        resolved.milvus_uri,
        _redact(resolved.mlflow_tracking_uri),
        resolved.tfserving_url or f"in-process SavedModel under {resolved.serving_base_path}",
        sorted(changes) or "none",
    )
    return resolved


def _redact(url: str) -> str:
    """Hide a password in a URL for logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
