"""
### recsys_deploy

Deploys the MLflow **champion** to TF-Serving and refreshes the serving vectors.

* Scheduled on the asset **recsys_champion_model** (a promotion by `recsys_train`) *or*
  every 15 minutes, so a champion moved by hand in the MLflow UI (a promotion or a
  rollback) is deployed without anyone touching Airflow.
* `deploy`: resolves the `champion` alias; if that version is already live it does
  nothing. Otherwise it writes `<base>/<model>/<version>.tmp/`, renames it to
  `<version>/` (never overwriting), writes `models.config` and the warmup file, verifies
  the version (TF-Serving REST status + a predict per signature, or the SavedModel in
  process on embedded defaults) and only then switches the live pointer. A failed check
  leaves the previous version serving.
* `refresh_vectors`: item tower → new Milvus collection `items_v<version>` (flushed,
  indexed, loaded, row-count checked) → alias `items` switched; user vectors and recall
  channel lists → KV namespace `v<version>:` → pointer key switched. Publishes
  **recsys_serving_vectors**, which schedules `recsys_precompute`.

* `deploy_ranker`: the same for the **ranker** registered model's champion, as the second
  model of the same `models.config` (`<base>/ranker/<version>/`, warmup and a `rank`
  predict before the switch). Skipped when the ranker has no champion (the API then keeps
  its round-robin order) or when that champion is already live; independent of `deploy`.

**Rollback**: `python -m model_registry.cli rollback [--model ranker]` (or move `champion` in
the MLflow UI), then wait for the next run or trigger this DAG. `force` redeploys/refreshes the
current champion.
"""

from __future__ import annotations

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, task

from plugins.dag_defaults import (
    CHAMPION_MODEL,
    MILVUS_POOL,
    SERVING_VECTORS,
    recsys_dag,
    task_settings,
)


@recsys_dag(
    "recsys_deploy",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("*/15 * * * *", timezone="UTC"), assets=[CHAMPION_MODEL]
    ),
    stage="serving",
    doc_md=__doc__,
    params={
        "force": Param(
            False,
            type="boolean",
            title="Force refresh",
            description="Refresh vectors even if the champion is already live.",
        ),
        "keep_versions": Param(
            3,
            type="integer",
            minimum=1,
            maximum=20,
            title="Versions to keep",
            description="Model versions kept in the TF-Serving base path (older ones removed).",
        ),
    },
)
def recsys_deploy() -> None:
    @task
    def deploy(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.serving.deploy import deploy_champion

        result = deploy_champion(task_settings(), keep_last=params["keep_versions"])
        if result.version is None:
            raise AirflowSkipException(f"nothing to deploy: {result.reason}")
        return result.as_dict()

    @task(pool=MILVUS_POOL, outlets=[SERVING_VECTORS])
    def refresh_vectors(deployed: dict, params=None, outlet_events=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.serving.vectors import refresh_vectors as refresh

        settings = task_settings()
        if not params["force"]:
            from tasks.serving.namespace import serving_is_current

            if serving_is_current(settings, deployed["version"]):
                raise AirflowSkipException(
                    f"champion v{deployed['version']} already live with vectors of the newest data"
                )
        result = refresh(settings, version=deployed["version"])
        outlet_events[SERVING_VECTORS].extra = {"version": deployed["version"]}
        return result.as_dict()

    @task
    def deploy_ranker(params=None) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from tasks.serving.deploy import deploy_champion

        settings = task_settings()
        result = deploy_champion(
            settings, keep_last=params["keep_versions"], model_name=settings.ranker_model_name
        )
        if result.version is None:
            raise AirflowSkipException(f"no ranker to deploy: {result.reason}")
        return result.as_dict()

    refresh_vectors(deploy())
    deploy_ranker()


recsys_deploy()
