"""
### recsys_extract_validate

Pulls one data interval from the business **MySQL replica** (read-only) into the recsys
DB's mirror tables and validates it with **Great Expectations**.

* `wait_for_replica`: a sensor in **reschedule** mode: while the replica is more than
  `RECSYS_MAX_REPLICA_LAG_S` behind it pokes every 30 s and gives its worker slot back in
  between (up to 6 h); NULL lag (replication stopped or broken) fails it at once, naming the
  replica's IO/SQL thread state, and it retries.
* `extract`: interactions with `create_time` in the run's data interval; illusts, users and
  follows by update/create time past the watermark (with a safety overlap). Upserts, so
  re-running an interval or backfilling a range gives the same tables. Waits for or fails
  on replica lag (NULL lag = replication stopped = failure).
* `validate`: runs the suites in `expectations/`. Bad rows go to the `quarantine` table
  with the reason and this run id; good rows reach the mirror. A failing batch fails this
  task (no retry) so nothing downstream trains on it; fix the replica and clear the task.
  The Data Docs path is in the task log and in XCom.
* `publish_validated`: publishes the asset **recsys_validated_data**, which schedules
  `recsys_train`, when interactions of the interval reached the mirror. An interval with
  none (a quiet day, or the empty latest interval a scheduler runs right after the DAG is
  unpaused) is **skipped** with the reason in its log: no asset event, so no training run
  that would fail on zero samples. When extraction caught up a gap (the DAG was paused, the
  scheduler down), the event's interval starts at the gap, so training samples it too.

**Schedule**: daily, data interval `[00:00, 24:00)` UTC, one run at a time, oldest first.

**Backfill**, oldest interval first and one at a time:
`airflow backfill create --dag-id recsys_extract_validate --from-date 2026-10-01 --to-date 2026-10-07 --max-active-runs 1`.
Order matters: validation checks interactions and follows against the users and illusts
already in the mirror, and a user or illust created on day N reaches the mirror with day N's
run. Without `--max-active-runs 1` (an Airflow backfill runs 10 at once by default, whatever
the DAG's own `max_active_runs`) or with `--run-backwards`, day N+1 can be validated before
day N and its rows referring to day-N users are quarantined as unknown; clearing that run
after the backfill picks them up again (nothing is lost, the run just fails first).
**Manual trigger**: fill `interval_start`/`interval_end` in the form to extract any range;
`max_replica_lag_s` overrides the lag the sensor and extraction accept for this run.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param, task

from plugins.dag_defaults import (
    NO_RETRY,
    REPLICA_POOL,
    VALIDATED_DATA,
    interval_params,
    recsys_dag,
    task_settings,
)


@recsys_dag(
    "recsys_extract_validate",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    stage="data",
    doc_md=__doc__,
    params={
        **interval_params("use the run's data interval"),
        "max_replica_lag_s": Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Max replica lag (s)",
            description="Wait while the replica is further behind than this. Leave empty "
            "for RECSYS_MAX_REPLICA_LAG_S (default 300).",
        ),
    },
)
def recsys_extract_validate() -> None:
    def lag_settings(params: dict) -> Any:
        """The task's Settings with the form's replica-lag limit, when one is set."""
        settings = task_settings()
        if params.get("max_replica_lag_s") is None:
            return settings
        return settings.replace(max_replica_lag_s=float(params["max_replica_lag_s"]))

    @task.sensor(poke_interval=30, timeout=6 * 3600, mode="reschedule")
    def wait_for_replica(params=None) -> bool:
        from tasks.data.extract import replica_ready

        return replica_ready(lag_settings(params))

    @task(pool=REPLICA_POOL)
    def extract(params=None, data_interval_start=None, data_interval_end=None, run_id=None) -> dict:
        from tasks.core.intervals import resolve_interval
        from tasks.data.extract import extract_interval

        interval = resolve_interval(
            params.get("interval_start"),
            params.get("interval_end"),
            data_interval_start,
            data_interval_end,
        )
        # The sensor did the waiting: lag that grew again since fails here (and retries).
        result = extract_interval(
            lag_settings(params), interval.start, interval.end, run_id=run_id, lag_wait_s=0
        )
        return {"interval": interval.as_dict(), "extract": result.as_dict()}

    @task(**NO_RETRY)
    def validate(extracted: dict, run_id=None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from tasks.data.validate import DataValidationError, validate_interval

        interval = extracted["interval"]
        try:
            result = validate_interval(
                task_settings(), interval["start"], interval["end"], run_id=run_id
            )
        except DataValidationError as exc:
            raise AirflowFailException(str(exc)) from exc
        return result.as_dict()

    @task(outlets=[VALIDATED_DATA])
    def publish_validated(extracted: dict, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.data.validate import validated_data_event

        interval = extracted["interval"]
        event = validated_data_event(
            task_settings(),
            interval["start"],
            interval["end"],
            interactions_from=extracted["extract"].get("interactions_from"),
        )
        if event is None:
            raise AirflowSkipException(
                f"no interactions of [{interval['start']}, {interval['end']}) reached the "
                "mirror: nothing new to train on, no asset event"
            )
        outlet_events[VALIDATED_DATA].extra = event
        return event

    extracted = extract()
    wait_for_replica() >> extracted
    validate(extracted) >> publish_validated(extracted)


recsys_extract_validate()
