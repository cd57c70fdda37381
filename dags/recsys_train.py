"""
### recsys_train

Builds training samples, trains the two-tower model, registers it in **MLflow** and runs
the promotion gate.

* Scheduled on the asset **recsys_validated_data**: each validated interval (from the
  asset events that triggered the run) gets its samples built. A manual trigger takes
  `interval_start`/`interval_end` instead.
* `build_samples`: random + popularity-weighted negatives written with INSERT IGNORE,
  then positives with REPLACE INTO, keyed on `(user_id, illust_id)`.
* `train`: TF/Keras two-tower on the samples table; curves, plots, the feature config and
  baseline metrics are logged to the MLflow run.
* `register`: new version of the registered model with alias **challenger**.
* `promotion_gate`: challenger vs current **champion** on the same holdout; promotes only
  if it wins by `gate_margin` on `gate_metric` (first model: must beat MostPop). When it
  does not, the run ends cleanly, the reason is in the log and on the version's
  `gate_reason` tag, and `publish_champion` is skipped.
* `publish_champion` publishes **recsys_champion_model**, which schedules `recsys_deploy`.

A person can also move the `champion` alias in the MLflow UI; `recsys_deploy` notices.
"""

from __future__ import annotations

from airflow.sdk import Param, task

from plugins.dag_defaults import (
    CHAMPION_MODEL,
    NO_RETRY,
    VALIDATED_DATA,
    interval_params,
    recsys_dag,
    task_settings,
)
from tasks.model.training.config import LOSSES, TRAIN_DEFAULTS


@recsys_dag(
    "recsys_train",
    schedule=[VALIDATED_DATA],
    stage="model",
    doc_md=__doc__,
    params={
        **interval_params("sample the intervals named by the triggering asset events"),
        "negatives_per_positive": Param(4, type="integer", minimum=1, maximum=100),
        "popular_ratio": Param(
            0.5,
            type="number",
            minimum=0,
            maximum=1,
            description="Share of negatives drawn by popularity.",
        ),
        "popularity_exponent": Param(0.75, type="number", minimum=0, maximum=2),
        # Training defaults come from TrainParams (tasks/model/training/config.py), the one source.
        "epochs": Param(TRAIN_DEFAULTS.epochs, type="integer", minimum=1, maximum=200),
        "loss": Param(
            TRAIN_DEFAULTS.loss,
            enum=list(LOSSES),
            description="inbatch_softmax (logQ-corrected, wins on bench/quality.py) or "
            "pointwise BCE on the samples table (the write-up's choice).",
        ),
        "promote": Param(True, type="boolean", description="Run the promotion gate."),
        "gate_metric": Param("HR@10", enum=["HR@10", "NDCG@10", "HR@20", "NDCG@20"]),
        "gate_margin": Param(0.0, type="number", minimum=0),
    },
)
def recsys_train() -> None:
    @task
    def intervals(params=None, triggering_asset_events=None) -> list[dict]:
        from tasks.core.intervals import intervals_from_events

        extras = [
            dict(event.extra or {})
            for events in (triggering_asset_events or {}).values()
            for event in events
        ]
        return intervals_from_events(
            params.get("interval_start"), params.get("interval_end"), extras
        )

    @task
    def build_samples(run_intervals: list[dict], params=None) -> dict:
        from tasks.data.sampling import build_samples as build

        settings = task_settings()
        written = [
            build(
                settings,
                interval["start"],
                interval["end"],
                negatives_per_positive=params["negatives_per_positive"],
                popular_ratio=params["popular_ratio"],
                popularity_exponent=params["popularity_exponent"],
            ).as_dict()
            for interval in run_intervals
        ]
        return {
            "start": run_intervals[0]["start"],
            "end": run_intervals[-1]["end"],
            "runs": written,
        }

    @task(**NO_RETRY)
    def train(samples: dict, params=None) -> dict:
        from tasks.model.training.stage import TrainParams, train_two_tower

        result = train_two_tower(
            task_settings(),
            samples["start"],
            samples["end"],
            params=TrainParams(epochs=params["epochs"], loss=params["loss"]),
        )
        return result.as_dict()

    @task
    def register(trained: dict) -> int:
        from model_registry.registry import register_challenger

        return register_challenger(task_settings(), trained["run_id"])

    @task(**NO_RETRY)
    def promotion_gate(version: int, params=None) -> dict:
        from model_registry.gate import promote_if_better

        if not params["promote"]:
            return {
                "promoted": False,
                "reason": "promotion disabled by the 'promote' param",
                "version": version,
            }
        decision = promote_if_better(
            task_settings(), version, metric=params["gate_metric"], margin=params["gate_margin"]
        )
        return decision.as_dict() | {"version": version}

    @task(outlets=[CHAMPION_MODEL])
    def publish_champion(decision: dict, outlet_events=None) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["promoted"]:
            raise AirflowSkipException(f"not promoted: {decision['reason']}")
        outlet_events[CHAMPION_MODEL].extra = {"version": decision["version"]}
        return decision["version"]

    publish_champion(promotion_gate(register(train(build_samples(intervals())))))


recsys_train()
