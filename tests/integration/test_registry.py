"""One real training on MariaDB, then the whole registry flow on a real MLflow store:
logged run and export -> register_challenger -> gate (real re-scoring) -> aliases -> download
-> CLI -> rollback. One training keeps the TensorFlow cost of the suite down."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.integration.test_train import END, START, TINY, seed_recsys_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.mariadb
def test_train_register_gate_download_rollback(
    settings, mariadb_database, monkeypatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    import mlflow
    import tensorflow as tf

    from model_registry import cli
    from model_registry.gate import (
        BASELINES,
        load_holdout,
        promote_if_better,
        score_saved_model,
    )
    from model_registry.registry import (
        CHALLENGER,
        CHAMPION,
        download_saved_model,
        list_versions,
        register_challenger,
        resolve_alias,
        rollback,
    )
    from tasks.core.lineage import RunLineage
    from tasks.model.training.stage import TrainParams, train_two_tower
    from tasks.model.two_tower import to_tensors

    settings = settings.replace(
        recsys_db_url=mariadb_database, mlflow_ui_url="http://mlflow.test:5000"
    )
    counts = seed_recsys_db(settings.recsys_db_url)
    lineage = RunLineage(
        dag_id="recsys_train",
        run_id="manual__2024-02-01T00:00:00+00:00",
        task_id="train",
        try_number=1,
        ti_url="http://af.test/dags/recsys_train/runs/manual/tasks/train?try_number=1",
        git_commit="abc123",
    )
    result = train_two_tower(settings, START, END, params=TrainParams(**TINY), lineage=lineage)

    # ---- the MLflow run: params, per-epoch curves, plot, feature config, baselines, model.
    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["loss"] == "pointwise"
    assert run.data.tags["data_interval_end"] == END.isoformat()
    assert len(client.get_metric_history(result.run_id, "train_loss")) == result.epochs_run
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"feature_config.json", "learning_curves.png", "saved_model"} <= artifacts

    # ---- lineage, name, link, chart, dataset, experiment type (issue 13).
    assert run.info.run_name == (
        "two_tower 2024-01-01..2024-02-01 manual__2024-02-01T00:00:00+00:00"
    )
    assert result.run_name == run.info.run_name
    assert {k: v for k, v in run.data.tags.items() if k.startswith(("airflow.", "recsys."))} == {
        "airflow.dag_id": "recsys_train",
        "airflow.run_id": "manual__2024-02-01T00:00:00+00:00",
        "airflow.task_id": "train",
        "airflow.try_number": "1",
        "airflow.task_instance_url": lineage.ti_url,
        "recsys.git_commit": "abc123",
    }
    assert result.run_url == (
        f"http://mlflow.test:5000/#/experiments/{run.info.experiment_id}/runs/{result.run_id}"
    )
    assert result.as_dict()["run_url"] == result.run_url
    assert "model_vs_baselines.png" in artifacts
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    (dataset_input,) = run.inputs.dataset_inputs
    dataset = dataset_input.dataset
    assert [t.value for t in dataset_input.tags] == ["training"]
    assert dataset.name == "samples 2024-01-01T00:00:00..2024-02-01T00:00:00"
    assert dataset.source_type == "recsys_db"
    source = json.loads(dataset.source)
    assert source["table"] == "samples" and source["interval_end"] == END.isoformat()
    profile = json.loads(dataset.profile)
    assert profile["num_rows"] == counts["samples"] == 30 * (8 + 5)
    assert (profile["positives"], profile["negatives"]) == (150, 240)
    assert {
        "HR_at_10",
        "NDCG_at_10",
        "MostPop.HR_at_10",
        "EASE.HR_at_10",
        "ItemKNN.HR_at_10",
    } <= set(run.data.metrics)
    assert 0.0 <= result.metrics["HR@10"] <= 1.0
    assert result.n_train > 0 and result.n_val > 0
    assert result.n_train + result.n_val <= counts["samples"] - 30  # 30 holdout positives out

    # ---- the export: three named signatures, OOV-safe, probabilities.
    shown = subprocess.run(
        [str(ROOT / ".venv/bin/saved_model_cli"), "show", "--dir", result.export_dir, "--all"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("item_tower", "user_tower", "score"):
        assert f"signature_def['{name}']" in shown
    loaded = tf.saved_model.load(result.export_dir)
    feats = {
        "user_id": np.array([1, 999], np.int64),
        "history": np.array([[1, 5, 0], [0, 0, 0]], np.int64),
        "illust_id": np.array([1, 12345], np.int64),
        "artist_id": np.array([101, 7], np.int64),
        "tags": np.array(["cat", "never-seen|tag"], object),
        **{
            k: np.array([1, 2], np.int64)
            for k in ("width", "height", "sanity_level", "restrict", "x_restrict")
        },
        "total_bookmarks": np.array([1, 2], np.int64),
        "total_view": np.array([1, 2], np.int64),
    }
    score = loaded.signatures["score"](**to_tensors(feats))["score"].numpy()
    assert score.shape == (2,) and np.all((score > 0) & (score < 1))

    # ---- the pyfunc flavour loads and scores like the SavedModel.
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    frame = pd.DataFrame({k: v for k, v in feats.items() if k != "history"})
    frame.insert(1, "history", ["1|5", ""])
    frame["tags"] = frame["tags"].astype(str)
    np.testing.assert_allclose(np.asarray(pyfunc.predict(frame)["score"]), score, atol=1e-5)

    # ---- idempotent re-run: same interval and params -> the same run, no new training.
    again = train_two_tower(settings, START, END, params=TrainParams(**TINY))
    assert again.run_id == result.run_id and again.reused

    # ---- register (idempotent), aliases, tags.
    version = register_challenger(settings, result.run_id, lineage=lineage)
    assert register_challenger(settings, result.run_id) == version
    challenger = resolve_alias(settings, CHALLENGER)
    assert challenger is not None and challenger.version == version
    assert challenger.tags["data_interval_end"] == END.isoformat()
    # Clean version tags: lineage only (no copies of the run's metrics, issue 13).
    assert not [k for k in challenger.tags if k.startswith("metric.")]
    assert challenger.tags["mlflow_run_id"] == result.run_id
    assert challenger.tags["data_interval_start"] == START.isoformat()
    assert challenger.tags["airflow.run_id"] == lineage.run_id
    assert resolve_alias(settings, CHAMPION) is None

    # ---- gate: the real model is re-scored on the holdout and compared with MostPop.
    holdout = load_holdout(settings, END)
    rescored = score_saved_model(settings, challenger, holdout)
    assert rescored["HR@10"] == pytest.approx(result.metrics["HR@10"], abs=1e-9)
    decision = promote_if_better(settings, version, holdout=holdout)
    # the floor is the strongest baseline on this holdout, by the gate's own metric
    baselines = {m: s["HR@10"] for m, s in decision.scores.items() if m in BASELINES}
    assert decision.reference == max(baselines, key=lambda m: baselines[m])
    assert decision.reference_score == pytest.approx(max(baselines.values()))
    assert decision.challenger_score == pytest.approx(result.metrics["HR@10"])
    assert decision.promoted == (decision.challenger_score > decision.reference_score)
    assert decision.run_url == result.run_url
    gate_tags = resolve_alias(settings, CHALLENGER).tags
    assert gate_tags["gate_decision"] == ("promoted" if decision.promoted else "not promoted")
    assert gate_tags["gate.challenger_score"] == f"{decision.challenger_score:.6f}"
    if not decision.promoted:  # force it so the rest of the flow runs either way
        assert cli.main(["promote", str(version), "--force"]) == 0
    assert resolve_alias(settings, CHAMPION).version == version

    # ---- download what serving would deploy.
    path = download_saved_model(settings, resolve_alias(settings, CHAMPION), settings.home / "dl")
    assert (path / "saved_model.pb").exists()
    assert set(tf.saved_model.load(str(path)).signatures) >= {"item_tower", "user_tower", "score"}

    # ---- a second version (same run re-registered by hand), forced champion, rollback.
    source = f"runs:/{result.run_id}/model"
    v2 = int(
        client.create_model_version(settings.registered_model_name, source, result.run_id).version
    )
    monkeypatch.setenv("RECSYS_HOME", str(settings.home))
    monkeypatch.setenv("RECSYS_DB_URL", settings.recsys_db_url)
    capsys.readouterr()
    assert cli.main(["promote", str(v2), "--force"]) == 0
    assert resolve_alias(settings, CHAMPION).version == v2
    assert cli.main(["list", "--json"]) == 0
    rows = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    assert {r["version"]: r["aliases"] for r in rows} == {version: [CHALLENGER], v2: [CHAMPION]}
    # The CLI reads metrics from the run, now that versions do not copy them into tags.
    assert rows[0]["metrics"]["HR_at_10"] == pytest.approx(result.metrics["HR@10"])
    assert rollback(settings) == version
    assert [r.version for r in list_versions(settings) if CHAMPION in r.aliases] == [version]
    assert cli.main(["rollback"]) == 2  # v1 has no earlier champion: a clear error, exit 2
