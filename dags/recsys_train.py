"""
### recsys_train

Builds training samples, trains the two-tower model, registers it in **MLflow** and runs
the promotion gate.

* Scheduled on the asset **recsys_validated_data**: each validated interval (from the
  asset events that triggered the run) gets its samples built. A manual trigger takes
  `interval_start`/`interval_end` instead; left empty (the form's defaults), it trains on
  the validated intervals in the recsys DB that are not sampled yet, or, when all are, on
  the newest validated interval (a retrain). With nothing validated yet the `intervals`
  task fails saying to run `recsys_extract_validate` first.
* `build_samples`: random + popularity-weighted negatives written with INSERT IGNORE,
  then positives with REPLACE INTO, keyed on `(user_id, illust_id)`.
* `train`: TF/Keras two-tower on the samples table; curves, plots, the feature config and
  baseline metrics are logged to the MLflow run. Retried once after 10 s (a lost worker):
  the retry reuses the interval's finished run, so one model version results.
* `register`: new version of the registered model with alias **challenger**.
* `promotion_gate`: challenger vs current **champion** on the same holdout; promotes only
  if it wins by `gate_margin` on `gate_metric` against the champion and the strongest of
  MostPop / ItemKNN / EASE scored in the same run (the first model too; the floor is
  `RECSYS_GATE_FLOOR`, default `strongest`). When it
  does not, the run ends cleanly, the reason is in the log and on the version's
  `gate_reason` tag, and `publish_champion` is skipped.
* `publish_champion` publishes **recsys_champion_model**, which schedules `recsys_deploy`.
* `train_ranker` (after `train`, same interval): the DCN-V2 ranker on candidate sets built
  like the API's pool (recall channels, ANN from the just-trained two-tower's export) at
  earlier positives of each user below the gate's holdout, with or without the interval's
  shown rows and sampled negatives (picked on validation users); AUC, GAUC, logloss and list
  metrics in its own MLflow run.
  `register_ranker`: new version of the registered model **ranker** (alias challenger).
  `ranker_gate` (after `promotion_gate`, so the ANN channel is the newest two-tower
  champion): on each holdout user's candidate set from the recall channels, the ranked list's
  NDCG@10 must beat the recall order and the ranker champion's; `publish_ranker` publishes
  **recsys_champion_model** when it promotes.
  The ranker runs in this DAG rather than its own: it trains on exactly this run's interval
  and samples, and its gate needs this run's two-tower decision first.

A person can also move the `champion` alias in the MLflow UI; `recsys_deploy` notices.
"""

from __future__ import annotations

import logging

from airflow.sdk import Param, task

from plugins.dag_defaults import (
    CHAMPION_MODEL,
    NO_RETRY,
    VALIDATED_DATA,
    WORKER_LOSS_RETRY,
    interval_params,
    recsys_dag,
    task_settings,
)
from tasks.model.ranker.config import RANKER_DEFAULTS
from tasks.model.training.config import LOSSES, TRAIN_DEFAULTS


@recsys_dag(
    "recsys_train",
    schedule=[VALIDATED_DATA],
    stage="model",
    doc_md=__doc__,
    params={
        **interval_params(
            "sample the intervals named by the triggering asset events; on a manual "
            "trigger, the validated intervals not sampled yet (else the newest validated one)"
        ),
        "negatives_per_positive": Param(
            4,
            type="integer",
            minimum=1,
            maximum=100,
            title="Negatives per positive",
            description="Negative samples drawn for each positive interaction.",
        ),
        "popular_ratio": Param(
            0.5,
            type="number",
            minimum=0,
            maximum=1,
            title="Popular ratio",
            description="Share of negatives drawn by popularity.",
        ),
        "popularity_exponent": Param(
            0.75,
            type="number",
            minimum=0,
            maximum=2,
            title="Popularity exponent",
            description="Popular negatives are drawn with probability ~ count**exponent "
            "(0 = uniform, 1 = proportional to popularity).",
        ),
        # Training defaults come from TrainParams (tasks/model/training/config.py), the one source.
        "epochs": Param(
            TRAIN_DEFAULTS.epochs,
            type="integer",
            minimum=1,
            maximum=200,
            title="Epochs",
            description="Training epochs of the two-tower model.",
        ),
        "loss": Param(
            TRAIN_DEFAULTS.loss,
            enum=list(LOSSES),
            title="Loss",
            description="inbatch_softmax (logQ-corrected, wins on bench/quality.py) or "
            "pointwise BCE on the samples table (the write-up's choice).",
        ),
        "ranker_epochs": Param(
            RANKER_DEFAULTS.epochs,
            type="integer",
            minimum=1,
            maximum=100,
            title="Ranker epochs",
            description="Training epochs of the DCN-V2 ranker (early stopping on validation "
            "loss may stop it sooner).",
        ),
        "ranker_id_features": Param(
            RANKER_DEFAULTS.id_features,
            type="boolean",
            title="Ranker id embeddings",
            description="Learn per-user and per-illust embeddings in the ranker. Off, it ranks "
            "by attributes, counts, cross features and recall evidence only: fewer weights for "
            "a small site (the ranker gate decides whether the result serves).",
        ),
        "promote": Param(
            True,
            type="boolean",
            title="Promote",
            description="Run the promotion gate (off: register the challenger only).",
        ),
        "gate_metric": Param(
            "HR@10",
            enum=["HR@10", "NDCG@10", "HR@20", "NDCG@20"],
            title="Gate metric",
            description="Holdout metric the challenger must win on to be promoted.",
        ),
        "gate_margin": Param(
            0.0,
            type="number",
            minimum=0,
            title="Gate margin",
            description="How much the challenger must beat the champion by on the gate "
            "metric (absolute, e.g. 0.01 = one point of HR).",
        ),
    },
)
def recsys_train() -> None:
    @task
    def intervals(params=None, triggering_asset_events=None) -> list[dict]:
        from tasks.core.intervals import training_intervals

        extras = [
            dict(event.extra or {})
            for events in (triggering_asset_events or {}).values()
            for event in events
        ]
        return training_intervals(
            task_settings().recsys_db_url,
            params.get("interval_start"),
            params.get("interval_end"),
            extras,
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

    @task(**WORKER_LOSS_RETRY)
    def train(samples: dict, params=None) -> dict:
        from plugins.lineage import lineage_from_context
        from tasks.model.training.stage import TrainParams, train_two_tower

        result = train_two_tower(
            task_settings(),
            samples["start"],
            samples["end"],
            params=TrainParams(epochs=params["epochs"], loss=params["loss"]),
            lineage=lineage_from_context(),
        )
        return result.as_dict()

    @task
    def register(trained: dict) -> int:
        from model_registry.registry import register_challenger
        from plugins.lineage import lineage_from_context

        return register_challenger(
            task_settings(), trained["run_id"], lineage=lineage_from_context()
        )

    @task(**NO_RETRY)
    def promotion_gate(version: int, params=None) -> dict:
        from model_registry.gate import promote_if_better
        from plugins.run_notes import announce_decision

        if not params["promote"]:
            return announce_decision(
                {
                    "promoted": False,
                    "reason": "promotion disabled by the 'promote' param",
                    "version": version,
                }
            )
        from plugins.lineage import lineage_from_context

        settings = task_settings()
        decision = promote_if_better(
            settings,
            version,
            metric=params["gate_metric"],
            margin=params["gate_margin"],
            floor=settings.gate_floor,
            lineage=lineage_from_context(),
        )
        return announce_decision(decision.as_dict() | {"version": version})

    @task(outlets=[CHAMPION_MODEL])
    def publish_champion(decision: dict, outlet_events=None) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        from plugins.run_notes import decision_line

        if not decision["promoted"]:
            line = decision_line(decision)
            logging.getLogger("recsys4pix.publish_champion").info("skipped: %s", line)
            raise AirflowSkipException(line)
        outlet_events[CHAMPION_MODEL].extra = {"version": decision["version"]}
        return decision["version"]

    @task(**NO_RETRY)
    def train_ranker(samples: dict, two_tower: dict, params=None) -> dict:
        import tasks.serving.recall as recall
        from plugins.lineage import lineage_from_context
        from tasks.model.ranker.config import RankerParams
        from tasks.model.ranker.stage import train_ranker as train_ranker_stage

        result = train_ranker_stage(
            task_settings(),
            samples["start"],
            samples["end"],
            params=RankerParams(
                epochs=params["ranker_epochs"], id_features=params["ranker_id_features"]
            ),
            lineage=lineage_from_context(),
            channels=recall,
            ann_export_dir=two_tower.get("export_dir") or None,
        )
        return result.as_dict()

    @task
    def register_ranker(trained: dict) -> int:
        from model_registry.registry import SAVED_MODEL_ARTIFACT, register_challenger
        from plugins.lineage import lineage_from_context

        settings = task_settings()
        return register_challenger(
            settings,
            trained["run_id"],
            lineage=lineage_from_context(),
            model=settings.ranker_registered_model_name,
            artifact=SAVED_MODEL_ARTIFACT,
        )

    @task(**NO_RETRY)
    def ranker_gate(version: int, params=None) -> dict:
        if not params["promote"]:
            return {"promoted": False, "reason": "promotion disabled by the 'promote' param"}
        import tasks.serving.recall as recall
        from model_registry.ranker_gate import promote_ranker_if_better
        from plugins.lineage import lineage_from_context

        decision = promote_ranker_if_better(
            task_settings(), version, recall, lineage=lineage_from_context()
        )
        return decision.as_dict()

    @task(outlets=[CHAMPION_MODEL])
    def publish_ranker(decision: dict, outlet_events=None) -> int:
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision["promoted"]:
            raise AirflowSkipException(f"ranker not promoted: {decision['reason']}")
        version = decision["challenger_version"]
        outlet_events[CHAMPION_MODEL].extra = {"model": "ranker", "version": version}
        return version

    samples = build_samples(intervals())
    trained = train(samples)
    decision = promotion_gate(register(trained))
    publish_champion(decision)
    ranker_trained = train_ranker(samples, trained)
    ranker_decision = ranker_gate(register_ranker(ranker_trained))
    decision >> ranker_decision
    publish_ranker(ranker_decision)


recsys_train()
