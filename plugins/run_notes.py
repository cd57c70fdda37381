"""The promotion gate's decision where a person looks first: the DAG run's note and one
plain task-log line.

Airflow 3's task SDK has no call that sets the running DAG run's note, so
:func:`set_dag_run_note` writes it through the metadata DB where the task process may use it
(``dag.test()``: tasks run in process), else through the REST API when an ``airflow_api``
Connection (``http://user:password@127.0.0.1:8080``) is configured, else it logs why it could
not. The decision is in the task log and XCom either way.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

API_CONN_ID = "airflow_api"


def decision_line(decision: dict[str, Any]) -> str:
    """One line a person reads first: ``PROMOTED v3: HR@10 0.2100 > champion 0.1800 ...``."""
    version = decision.get("version", decision.get("challenger_version"))
    metric = decision.get("metric")
    head = f"PROMOTED v{version}" if decision.get("promoted") else f"NOT PROMOTED v{version}"
    if metric is None:  # the gate did not run (``promote`` param off)
        return f"{head}: {decision.get('reason', '')}"
    return (
        f"{head}: {metric} {float(decision['challenger_score']):.4f} vs "
        f"{decision.get('reference', 'reference')} {float(decision['reference_score']):.4f} "
        f"- {decision.get('reason', '')}"
    ).strip()


def set_dag_run_note(dag_id: str, run_id: str, note: str) -> str:
    """Set the DAG run's note; returns how (``orm``, ``rest``) or ``""`` when it could not."""
    try:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session

        with create_session() as session:
            run = session.query(DagRun).filter_by(dag_id=dag_id, run_id=run_id).one_or_none()
            if run is not None:
                run.note = note
                return "orm"
    except Exception as exc:  # the task SDK blocks the ORM in real workers
        log.debug("no metadata DB access for the run note: %s", exc)
    try:
        return _set_note_rest(dag_id, run_id, note)
    except Exception as exc:
        log.warning("could not set the DAG run note (%s); the decision is in this log", exc)
        return ""


def _set_note_rest(dag_id: str, run_id: str, note: str) -> str:
    import requests
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(API_CONN_ID)
    base = f"{conn.schema or 'http'}://{conn.host}:{conn.port or 8080}"
    token = requests.post(
        f"{base}/auth/token", json={"username": conn.login, "password": conn.password}, timeout=10
    )
    token.raise_for_status()
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    response = requests.patch(
        f"{base}/api/v2/dags/{dag_id}/dagRuns/{run_id}",
        params={"update_mask": "note"},
        json={"note": note},
        headers=headers,
        timeout=10,
    )
    response.raise_for_status()
    return "rest"


def announce_decision(decision: dict[str, Any]) -> dict[str, Any]:
    """Log the gate's decision line and put it on the running DAG run's note."""
    from airflow.sdk import get_current_context

    line = decision_line(decision)
    log.info("%s", line)
    context = get_current_context()
    dag_id = context["dag"].dag_id
    set_dag_run_note(dag_id, str(context["run_id"]), line)
    return decision
