"""Hyper-parameter search for the two-tower: a small grid, trained by the pipeline's own stage.

Each trial is one ``train_two_tower`` run (distinct params, so a distinct
``params_fingerprint`` and MLflow run) and is scored by that stage's own holdout: each user's
last bookmark of the interactions in the recsys DB's mirror before the interval end. Selection
therefore sees only what the mirror holds; a caller scoring on a test split (bench/tune.py)
writes only that split's train part, so the test users' held-out items never reach a choice.
The search is logged to MLflow as one parent run (``tune <interval>``) holding the grid, a
table and a plot of the trials, the chosen params and their validation score; each run trained
for it is tagged with the parent (``mlflow.parentRunId``, so the UI nests it). A run the stage
reuses (same interval and params, trained earlier) is listed in the table but not re-parented.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tasks.core.common import check_interval, get_logger
from tasks.core.lineage import RunLineage, run_name
from tasks.core.settings import Settings
from tasks.model.training.config import TrainParams

if TYPE_CHECKING:
    import pandas as pd

log = get_logger("tune")

SELECTION_METRIC = "HR@10"
TABLE_FILE = "tune_trials.json"
PLOT_FILE = "tune_hr_at_10.png"
PARENT_TAG = "tune.parent_run_id"
TRIAL_TAG = "tune.trial"


@dataclass(frozen=True)
class Trial:
    """One grid point: its values, full params, MLflow run and validation metrics."""

    index: int  # position in grid order (the tie-break)
    values: dict[str, Any]  # this trial's value of each grid field
    params: TrainParams
    run_id: str
    metrics: dict[str, float]  # the stage's holdout on the train-cut split: HR/NDCG@10/20
    reused: bool  # the stage returned an earlier finished run with the same params
    seconds: float


@dataclass(frozen=True)
class TuneResult:
    """The search: the chosen params, every trial (grid order) and the parent MLflow run."""

    best: TrainParams
    best_index: int
    trials: tuple[Trial, ...]
    ranking: tuple[int, ...]  # trial indices, best first
    selection_metric: str
    parent_run_id: str
    base_rank: int | None  # 1-based rank of the trial equal to the base params, if in the grid

    def table(self) -> pd.DataFrame:
        """One row per trial: grid values, validation metrics, rank, chosen, run id."""
        return trial_table(self.trials, self.ranking, self.best_index)


def grid_params(base: TrainParams, grid: Mapping[str, Sequence[Any]]) -> list[TrainParams]:
    """Every combination of the grid's values over ``base`` (last field varies fastest).

    Raises ``ValueError`` on an unknown field, ``feature_config``, an empty or repeated value
    list (repeats would train the same run twice and tie with themselves).
    """
    fields = {f.name for f in dataclasses.fields(TrainParams)} - {"feature_config"}
    if not grid:
        raise ValueError("the grid is empty: give at least one field and its values")
    for name, values in grid.items():
        if name not in fields:
            raise ValueError(f"grid field {name!r} is not a TrainParams knob")
        if len(values) == 0 or len(set(values)) != len(values):
            raise ValueError(f"grid field {name!r} needs distinct values, got {list(values)!r}")
    names = list(grid)
    return [
        dataclasses.replace(base, **dict(zip(names, combo, strict=True)))
        for combo in itertools.product(*(grid[n] for n in names))
    ]


def parse_grid(items: Sequence[str], base: TrainParams | None = None) -> dict[str, list[Any]]:
    """``["dim=32,64", "dropout=0.3,0.1"]`` -> ``{"dim": [32, 64], "dropout": [0.3, 0.1]}``,
    each value cast to the type of the field's value in ``base`` (``TrainParams()``)."""
    base = base or TrainParams()
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not text or name == "feature_config" or not hasattr(base, name):
            raise ValueError(f"--grid {item!r}: expected FIELD=v1,v2 with a TrainParams field")
        kind = type(getattr(base, name))
        grid[name] = [
            v.strip().lower() in ("1", "true", "yes") if kind is bool else kind(v.strip())
            for v in text.split(",")
        ]
    return grid


def rank_trials(scores: Sequence[float]) -> tuple[int, ...]:
    """Trial indices, best first: highest score, a tie going to the earlier trial."""
    return tuple(sorted(range(len(scores)), key=lambda i: (-scores[i], i)))


def tune_two_tower(
    settings: Settings,
    interval_start: datetime | str,
    interval_end: datetime | str,
    base: TrainParams,
    grid: Mapping[str, Sequence[Any]],
    *,
    selection_metric: str = SELECTION_METRIC,
    lineage: RunLineage | None = None,
) -> TuneResult:
    """Train every grid point with ``train_two_tower`` over the interval; choose the highest
    ``selection_metric`` on the stage's holdout (ties: the earliest trial in grid order, so
    list the base value first to keep it on a tie); log the search as one MLflow parent run.

    There is no test split among the arguments: the only data is the recsys DB's mirror
    (through the stage), so nothing the caller holds out can take part in the choice.
    """
    import keras
    import mlflow

    from tasks.model.training.stage import train_two_tower
    from tasks.model.training.tracking import experiment_id

    start, end = check_interval(interval_start, interval_end)
    candidates = grid_params(base, grid)
    names = list(grid)
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    # Created with the client, not started: the stage starts its own (fluent) run per trial.
    parent = client.create_run(
        experiment_id(settings),
        run_name=run_name("tune", start, end, lineage),
        tags={
            "data_interval_start": start.isoformat(),
            "data_interval_end": end.isoformat(),
            "tune.selection": f"validation {selection_metric} on the stage's holdout",
            **(lineage.as_tags() if lineage is not None else {}),
        },
    )
    parent_id = parent.info.run_id
    log.info("tuning %d trials over %s (parent run %s)", len(candidates), names, parent_id)
    try:
        trials = []
        for index, params in enumerate(candidates):
            keras.backend.clear_session()  # each trial starts from the same clean Keras state
            started = time.perf_counter()
            result = train_two_tower(settings, start, end, params=params, lineage=lineage)
            if selection_metric not in result.metrics:
                raise ValueError(
                    f"trial {index} has no {selection_metric} (stage holdout empty?): "
                    f"{result.metrics}"
                )
            if not result.reused:
                client.set_tag(result.run_id, "mlflow.parentRunId", parent_id)
                client.set_tag(result.run_id, PARENT_TAG, parent_id)
                client.set_tag(result.run_id, TRIAL_TAG, str(index))
            trial = Trial(
                index=index,
                values={n: getattr(params, n) for n in names},
                params=params,
                run_id=result.run_id,
                metrics=dict(result.metrics),
                reused=result.reused,
                seconds=round(time.perf_counter() - started, 1),
            )
            log.info("trial %d %s: %s", index, trial.values, trial.metrics)
            client.log_metric(
                parent_id,
                f"trial_{_key(selection_metric)}",
                trial.metrics[selection_metric],
                step=index,
            )
            trials.append(trial)
        ranking = rank_trials([t.metrics[selection_metric] for t in trials])
        best = trials[ranking[0]]
        base_rank = next(
            (rank for rank, i in enumerate(ranking, 1) if trials[i].params == base), None
        )
        result = TuneResult(
            best=best.params,
            best_index=best.index,
            trials=tuple(trials),
            ranking=ranking,
            selection_metric=selection_metric,
            parent_run_id=parent_id,
            base_rank=base_rank,
        )
        _log_search(client, result, grid)
    except BaseException:
        client.set_terminated(parent_id, status="FAILED")
        raise
    client.set_terminated(parent_id, status="FINISHED")
    log.info("chose trial %d %s (%s)", best.index, best.values, best.metrics)
    return result


def trial_table(trials: Sequence[Trial], ranking: Sequence[int], best_index: int) -> pd.DataFrame:
    """The trials as a frame (grid order): values, metrics, rank, chosen, run id, reused."""
    import pandas as pd

    rank = {index: k for k, index in enumerate(ranking, 1)}
    rows = [
        {
            "trial": t.index,
            **t.values,
            **t.metrics,
            "rank": rank[t.index],
            "chosen": t.index == best_index,
            "run_id": t.run_id,
            "reused": t.reused,
            "seconds": t.seconds,
        }
        for t in trials
    ]
    return pd.DataFrame(rows)


def _key(metric: str) -> str:
    from tasks.model.training.tracking import mlflow_metric_name

    return mlflow_metric_name(metric)


def _log_search(client: Any, result: TuneResult, grid: Mapping[str, Sequence[Any]]) -> None:
    """Log the grid, the trial table and plot, and the choice on the parent run."""
    from mlflow.entities import Metric, Param

    run_id = result.parent_run_id
    best = result.trials[result.best_index]
    metric = result.selection_metric
    now = int(time.time() * 1000)
    params = [Param("selection_metric", metric), Param("n_trials", str(len(result.trials)))]
    params += [Param(f"grid.{k}", ",".join(map(str, v))) for k, v in grid.items()]
    params += [Param(f"best.{k}", str(v)) for k, v in best.values.items()]
    metrics = [Metric(f"best_{_key(k)}", v, now, 0) for k, v in best.metrics.items()]
    metrics.append(Metric("best_trial", best.index, now, 0))
    if result.base_rank is not None:
        metrics.append(Metric("base_rank", result.base_rank, now, 0))
    client.log_batch(run_id, metrics=metrics, params=params)
    client.log_dict(run_id, {k: list(v) for k, v in grid.items()}, "grid.json")
    client.log_dict(run_id, best.params.as_mlflow_params(), "chosen_params.json")
    table = result.table()
    client.log_table(run_id, table, TABLE_FILE)
    import matplotlib.pyplot as plt

    figure = _plot(table, metric, list(grid))
    client.log_figure(run_id, figure, PLOT_FILE)
    plt.close(figure)
    client.set_tag(run_id, "tune.best_run_id", best.run_id)
    client.set_tag(run_id, "tune.best", json.dumps(best.values, default=str))


def _plot(table: pd.DataFrame, metric: str, names: list[str]) -> Any:
    """Bar chart of ``metric`` per trial, the chosen one highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(table)), 4))
    colours = ["tab:orange" if chosen else "tab:blue" for chosen in table["chosen"]]
    bars = axis.bar(range(len(table)), table[metric], color=colours)
    axis.bar_label(bars, fmt="%.3f", fontsize=7)
    labels = ["\n".join(f"{n}={row[n]}" for n in names) for _, row in table.iterrows()]
    axis.set_xticks(range(len(table)), labels, fontsize=7)
    axis.set_ylabel(f"validation {metric} (stage holdout)")
    axis.set_title("two-tower grid search (orange: chosen)")
    figure.tight_layout()
    return figure
