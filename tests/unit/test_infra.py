"""infra/: the compose stack names every service, wires the connections tasks.core.settings reads,
and the SQL schemas in infra/sql cannot drift from tasks.core.schema. (No Docker engine here:
this checks the files, not a running stack.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks.core.schema import business_metadata, mysql_ddl, recsys_metadata
from tasks.data.bulk import local_infile_enabled

INFRA = Path(__file__).resolve().parents[2] / "infra"
EXPECTED_SERVICES = {
    "mysql-primary",
    "mysql-replica",
    "recsys-db",
    "postgres",
    "redis",
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "mlflow",
    "tfserving",
    "milvus-etcd",
    "milvus-minio",
    "milvus",
    "api",
}
AIRFLOW_SERVICES = sorted(s for s in EXPECTED_SERVICES if s.startswith("airflow-"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == EXPECTED_SERVICES


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_services_share_celery_config_and_connections(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    env = spec["environment"]
    assert spec["build"]["dockerfile"] == "infra/Dockerfile.airflow"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-api-server:8080/execution/"
    )
    for conn in ("REPLICA", "DB", "KV", "MILVUS", "TFSERVING"):
        assert f"AIRFLOW_CONN_RECSYS_{conn}" in env


def test_airflow_commands(compose: dict[str, Any]) -> None:
    commands = {s: compose["services"][s]["command"] for s in AIRFLOW_SERVICES}
    assert commands["airflow-init"] == ["airflow", "db", "migrate"]
    assert commands["airflow-api-server"][:2] == ["airflow", "api-server"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-worker"] == ["airflow", "celery", "worker"]


def test_connection_uris_reach_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The compose URIs, secrets filled in, become the backends tasks.core.settings hands out."""
    from tasks.core.settings import load_settings

    env = compose["services"]["airflow-worker"]["environment"]
    for name, value in env.items():
        if name.startswith(("AIRFLOW_CONN_", "MLFLOW_", "RECSYS_")) and name != "RECSYS_HOME":
            monkeypatch.setenv(name, re.sub(r"\$\{[^}]*\}", "secret", str(value)))
    for name in ("RECSYS_REPLICA_URL", "RECSYS_DB_URL", "RECSYS_KV_URL", "RECSYS_MILVUS_URI",
                 "RECSYS_TFSERVING_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(tmp_path)
    assert settings.replica_url == "mysql+mysqldb://recsys_ro:secret@mysql-replica:3306/pixiv"
    assert settings.recsys_db_url == (
        "mysql+mysqldb://recsys:secret@recsys-db:3306/recsys?local_infile=1"
    )
    # ... which turns on the LOAD DATA paths of extraction and sampling, on a server that allows it
    assert local_infile_enabled(settings.recsys_db_url)
    assert "--local-infile=1" in compose["services"]["recsys-db"]["command"]
    assert settings.kv_url == "redis://redis:6379/1"
    assert settings.milvus_uri == "http://milvus:19530"
    assert settings.tfserving_url == "http://tfserving:8501"
    assert settings.mlflow_tracking_uri == "http://mlflow:5000"
    assert str(settings.serving_base_path) == "/models"


def test_tfserving_and_its_model_config(compose: dict[str, Any]) -> None:
    spec = compose["services"]["tfserving"]
    assert spec["image"].startswith("tensorflow/serving:")
    args = spec["command"]
    assert "--model_config_file=/models/models.config" in args
    assert "--enable_batching=false" in args
    assert any(a.startswith("--model_config_file_poll_wait_seconds=") for a in args)
    assert "--rest_api_port=8501" in args and "--port=8500" in args
    config = (INFRA / "tfserving" / "models.config").read_text()
    assert 'name: "two_tower"' in config and 'base_path: "/models/two_tower"' in config
    assert config.count("{") == config.count("}")


def test_milvus_standalone_wiring(compose: dict[str, Any]) -> None:
    milvus = compose["services"]["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "milvus-etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "milvus-minio:9000"
    assert "19530:19530" in milvus["ports"]


def test_api_and_dockerfiles() -> None:
    airflow = (INFRA / "Dockerfile.airflow").read_text()
    api = (INFRA / "Dockerfile.api").read_text()
    assert "requirements.lock" in airflow and "requirements-prod.txt" in airflow
    assert "requirements.lock" in api
    assert '"api.app:create_app", "--factory"' in api
    prod = (INFRA / "requirements-prod.txt").read_text()
    assert "apache-airflow-providers-celery==" in prod
    assert "apache-airflow-providers-postgres==" in prod


def test_mounted_files_exist(compose: dict[str, Any]) -> None:
    mounted = []
    for spec in compose["services"].values():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                mounted.append(INFRA / source)
    assert len(mounted) >= 8
    missing = [str(p) for p in mounted if not p.is_file()]
    assert missing == []


def test_sql_schemas_match_tasks_schema() -> None:
    """Re-render after changing tasks/core/schema.py:
    python -m tasks.core.schema > infra/sql/replica_schema.sql
    python -m tasks.core.schema --ddl recsys > infra/sql/recsys_schema.sql"""
    replica = (INFRA / "sql" / "replica_schema.sql").read_text().strip()
    recsys = (INFRA / "sql" / "recsys_schema.sql").read_text().strip()
    assert replica == mysql_ddl(business_metadata).strip(), "re-render replica_schema.sql"
    assert recsys == mysql_ddl(recsys_metadata).strip(), "re-render recsys_schema.sql"


def test_readonly_user_can_only_read_and_check_lag() -> None:
    sql = (INFRA / "sql" / "readonly_user.sql").read_text()
    grants = [line for line in sql.splitlines() if line.upper().startswith("GRANT")]
    privileges = {line.split(" ON ")[0][len("GRANT ") :].strip().upper() for line in grants}
    assert privileges == {"SELECT", "REPLICATION CLIENT"}
    assert "`pixiv`.*" in sql
