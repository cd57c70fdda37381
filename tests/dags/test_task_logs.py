"""What a person sees in the task logs of a ``dag.test()`` run (issue 13).

One small extraction run, then ``recsys_train``'s ``intervals`` task triggered like the UI
form with its defaults (no params, no asset events): it must pick the validated interval,
not fail with "no interval". The captured output holds the tasks' own lines, no ERROR line
and none of Airflow's ``dag.test`` plumbing. The gate's decision lands on the run's note.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SPAN = {"interval_start": "2026-10-01T00:00:00+00:00", "interval_end": "2026-10-03T00:00:00+00:00"}
PLUMBING = ("[DAG TEST]", "Task instance state updated", "Pushing xcom", "Filling up the DagBag")


def _error_lines(text: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """ERROR lines on fd 1/2 (what the task log shows) and ERROR records logged."""
    lines = [line for line in text.splitlines() if "[error" in line or " ERROR " in line]
    return lines + [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_quiet_successful_runs_and_a_default_form_train_trigger(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tasks.core.settings import load_settings
    from tasks.data.sources.frames import write_business_frames
    from tasks.data.sources.generate import GeneratorConfig, generate_frames
    from tests.doubles.dagrun import run_dag

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    frames = generate_frames(
        GeneratorConfig(
            n_users=50, n_illusts=100, n_artists=10, days=2, start_date=date(2026, 10, 1), seed=3
        )
    )
    write_business_frames(frames, load_settings().replica_url)

    capfd.readouterr()
    caplog.set_level(logging.INFO, logger="recsys4pix")
    caplog.clear()
    extract = run_dag("recsys_extract_validate", conf=SPAN)
    out = capfd.readouterr()
    text = out.out + out.err
    assert extract.ok, extract.task_states
    assert "validated [2026-10-01 00:00:00" in caplog.text + text  # the task's own lines stay
    assert _error_lines(text, caplog) == []
    assert [p for p in PLUMBING if p in text] == []
    assert "Calculating Metrics" not in text  # GX's tqdm bars are off

    # The UI form with its defaults: no interval params, no triggering asset events.
    caplog.clear()
    train = run_dag("recsys_train", task_ids=["intervals"])
    text = "".join(capfd.readouterr())
    assert train.ok, (train.task_states, text[-3000:])
    assert train.xcoms["intervals"] == [
        {"start": "2026-10-01T00:00:00", "end": "2026-10-03T00:00:00"}
    ]
    assert "1 validated interval(s) not sampled yet" in caplog.text + text
    assert _error_lines(text, caplog) == []

    # The gate's decision goes on the DAG run's note (what the UI shows on the run).
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    from plugins.run_notes import set_dag_run_note

    assert set_dag_run_note("recsys_train", train.run_id, "NOT PROMOTED v2: test") == "orm"
    with create_session() as session:
        run = session.query(DagRun).filter_by(dag_id="recsys_train", run_id=train.run_id).one()
        assert run.note == "NOT PROMOTED v2: test"
