"""deploy_champion against a real MLflow registry (SQLite store): promote, redeploy, roll back."""

from __future__ import annotations

from pathlib import Path

from tasks.serving.deploy import deploy_champion, deployed_versions, live_version, model_base
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower


def _register(settings, experiment_id: str, saved_model: Path) -> int:  # type: ignore[no-untyped-def]
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(saved_model), artifact_path="saved_model")
    client.set_terminated(run.info.run_id)
    created = client.create_model_version(
        settings.registered_model_name,
        source=f"runs:/{run.info.run_id}/model",
        run_id=run.info.run_id,
    )
    return int(created.version)


def test_deploy_champion_follows_mlflow_alias_and_rollback(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from model_registry.registry import rollback, set_champion

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    client.create_registered_model(settings.registered_model_name)
    experiment = client.create_experiment(
        "deploy-test", artifact_location=settings.mlflow_artifact_root
    )
    first = _register(
        settings,
        experiment,
        export_hash_two_tower(tmp_path / "a", HashModelSpec(dim=8, buckets=101, seed=1)),
    )
    second = _register(
        settings,
        experiment,
        export_hash_two_tower(tmp_path / "b", HashModelSpec(dim=8, buckets=101, seed=2)),
    )

    assert deploy_champion(settings).reason == "no champion alias"
    set_champion(settings, first, reason="test")
    result = deploy_champion(settings)
    assert (result.version, result.skipped, result.verified_with) == (first, False, "in_process")
    assert deploy_champion(settings).skipped

    set_champion(settings, second, reason="test")
    assert deploy_champion(settings).version == second
    assert live_version(settings) == second and deployed_versions(settings) == [first, second]

    assert rollback(settings) == first
    rolled = deploy_champion(settings)
    assert rolled.version == first and rolled.reused and not rolled.skipped
    assert live_version(settings) == first
    assert not list(model_base(settings).glob(".download-*"))


def test_deploy_champion_rewrites_a_missing_live_version_and_says_so(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The live champion's directory was deleted: deploy_champion downloads it again and
    reports a rewrite, not ``skipped: True, reused: True, reason: 'already live'``."""
    import shutil

    import mlflow

    from model_registry.registry import set_champion

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    client.create_registered_model(settings.registered_model_name)
    experiment = client.create_experiment(
        "deploy-test", artifact_location=settings.mlflow_artifact_root
    )
    first = _register(
        settings,
        experiment,
        export_hash_two_tower(tmp_path / "a", HashModelSpec(dim=8, buckets=101, seed=1)),
    )
    set_champion(settings, first, reason="test")
    assert not deploy_champion(settings).skipped
    shutil.rmtree(model_base(settings) / str(first))

    result = deploy_champion(settings)
    assert (result.version, result.skipped, result.reused) == (first, False, False)
    assert result.rewritten
    assert result.reason == "live version directory was missing: rewritten and verified"
    assert (model_base(settings) / str(first) / "saved_model.pb").exists()
    assert live_version(settings) == first
    assert not list(model_base(settings).glob(".download-*"))
