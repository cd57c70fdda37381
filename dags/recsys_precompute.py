"""
### recsys_precompute

The "precomputed" serving style: top-N lists per active user, scored by the live model,
written as sorted sets in the KV store (Redis in production) under the live namespace.
The online API serves a fresh precomputed list first and falls back to real-time recall.

Scheduled on **recsys_serving_vectors** (after every vector refresh) and every 6 hours.
`top_n` sets the list length.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from plugins.dag_defaults import SERVING_VECTORS, recsys_dag, task_settings


@recsys_dag(
    "recsys_precompute",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 */6 * * *", timezone="UTC"), assets=[SERVING_VECTORS]
    ),
    stage="serving",
    doc_md=__doc__,
    params={
        "top_n": Param(
            100,
            type="integer",
            minimum=1,
            maximum=1000,
            title="Top N",
            description="Recommendations precomputed per user.",
        )
    },
)
def recsys_precompute() -> None:
    @task
    def precompute(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.serving.namespace import live_namespace
        from tasks.serving.precompute import precompute_topn

        settings = task_settings()
        if live_namespace(settings) is None:
            raise AirflowSkipException("no live vectors yet: recsys_deploy has not refreshed any")
        return precompute_topn(settings, n=params["top_n"]).as_dict()

    precompute()


recsys_precompute()
