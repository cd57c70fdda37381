"""Hooks that turn Airflow Connections into the URLs our ``tasks`` functions take.

Operators configure every backend in the Airflow UI (Admin → Connections); when a
connection is absent the embedded default from ``tasks.core.settings`` applies. The MySQL side
goes through apache-airflow-providers-mysql's ``MySqlHook``. These hooks are thin: clients
are built by ``tasks`` code from the URL, so the same code runs inside and outside Airflow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook


def _auth(login: str | None, password: str | None) -> str:
    if not login and not password:
        return ""
    user = quote(login or "", safe="")
    return f"{user}:{quote(password or '', safe='')}@" if password else f"{user}@"


def mysql_sqlalchemy_url(conn_id: str) -> str:
    """SQLAlchemy URL (mysqlclient driver) for a MySQL connection, via the provider's hook."""
    from airflow.providers.mysql.hooks.mysql import MySqlHook

    uri = MySqlHook(mysql_conn_id=conn_id).get_uri()
    if uri.startswith("mysql://"):
        uri = "mysql+mysqldb://" + uri[len("mysql://") :]
    return uri


class RecsysKVHook(BaseHook):
    """The online KV store (Redis). Connection type ``redis``: host, port, password, db in schema."""

    conn_name_attr = "recsys_kv_conn_id"
    default_conn_name = "recsys_kv"
    conn_type = "redis"
    hook_name = "recsys4pix KV store"

    def __init__(self, recsys_kv_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = recsys_kv_conn_id

    def get_uri(self) -> str:
        conn = self.get_connection(self.conn_id)
        db = conn.schema or (conn.extra_dejson or {}).get("db", 0)
        return f"redis://{_auth(None, conn.password)}{conn.host}:{conn.port or 6379}/{db}"

    def get_conn(self) -> Any:
        from tasks.core.settings import load_settings
        from tasks.serving.kv import open_kv

        return open_kv(load_settings().replace(kv_url=self.get_uri()))


class MilvusHook(BaseHook):
    """Milvus standalone/cluster. Connection: host, port (19530), password = token."""

    conn_name_attr = "milvus_conn_id"
    default_conn_name = "recsys_milvus"
    conn_type = "milvus"
    hook_name = "recsys4pix Milvus"

    def __init__(self, milvus_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = milvus_conn_id

    def get_uri_and_token(self) -> tuple[str, str]:
        conn = self.get_connection(self.conn_id)
        scheme = (conn.extra_dejson or {}).get("scheme", "http")
        token = conn.password or ""
        if conn.login and conn.password:
            token = f"{conn.login}:{conn.password}"
        return f"{scheme}://{conn.host}:{conn.port or 19530}", token

    def get_conn(self) -> Any:
        from pymilvus import MilvusClient

        uri, token = self.get_uri_and_token()
        return MilvusClient(uri=uri, token=token)


class TFServingHook(BaseHook):
    """TF-Serving's REST endpoint. Connection type ``http``: host, port (8501)."""

    conn_name_attr = "tfserving_conn_id"
    default_conn_name = "recsys_tfserving"
    conn_type = "http"
    hook_name = "recsys4pix TF-Serving"

    def __init__(self, tfserving_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id = tfserving_conn_id

    def get_uri(self) -> str:
        conn = self.get_connection(self.conn_id)
        host = conn.host or "localhost"
        if host.startswith(("http://", "https://")):
            return f"{host}:{conn.port}" if conn.port else host
        return f"{conn.schema or 'http'}://{host}:{conn.port or 8501}"
