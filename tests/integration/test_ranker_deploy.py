"""The ranker as TF-Serving's second model: one models.config with both, warmup, REST
verification through the stand-in, registry champion + rollback, and the two-tower alone
unchanged when there is no ranker."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.serving.deploy import (
    WARMUP_PATH,
    deploy_champion,
    deploy_saved_model,
    live_version,
    model_base,
    parse_models_config,
)
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.tfserving_standin import StandInModelServer


def export_tiny_ranker(path: Path, seed: int) -> Path:
    """An untrained DCN-V2 ranker (tiny, stats fitted on a generated catalogue), exported."""
    import keras

    from tasks.data.sources.generate import GeneratorConfig, generate_frames
    from tasks.model.features import fit_feature_stats, item_features_from_frame
    from tasks.model.ranker.config import RankerParams
    from tasks.model.ranker.model import build_ranker, export_ranker, ranker_feature_config

    frames = generate_frames(
        GeneratorConfig(n_users=5, n_illusts=20, n_artists=4, n_tags=5, days=1, seed=1)
    )
    params = RankerParams(dim=4, hash_bins=16, deep_layers=(8,), cross_layers=1, seed=seed)
    config = ranker_feature_config(params)
    stats = fit_feature_stats(config, item_features_from_frame(frames.illusts))
    keras.utils.set_random_seed(seed)
    return export_ranker(build_ranker(config, stats, params), path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ranker_models")
    return {
        "tower": export_hash_two_tower(root / "tower", HashModelSpec(dim=8, buckets=101, seed=1)),
        "r1": export_tiny_ranker(root / "r1", seed=1),
        "r2": export_tiny_ranker(root / "r2", seed=2),
    }


@pytest.fixture
def standin(settings) -> Iterator[StandInModelServer]:  # type: ignore[no-untyped-def]
    server = StandInModelServer(settings.serving_base_path, settings.model_name, poll_s=0.1).start()
    yield server
    server.stop()


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_one_models_config_holds_both_models_with_their_own_versions(settings, models) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings, 1, models["tower"])
    tower_block = parse_models_config((settings.serving_base_path / "models.config").read_text())
    result = deploy_saved_model(settings, 1, models["r1"], model_name="ranker")
    assert (result.version, result.verified_with, result.embedding_dim) == (1, "in_process", 0)
    entries = parse_models_config((settings.serving_base_path / "models.config").read_text())
    assert [e.name for e in entries] == ["two_tower", "ranker"]
    assert entries[0] == tower_block[0]  # the two-tower's entry untouched
    assert (entries[1].base_path, entries[1].versions, entries[1].stable) == (
        settings.serving_base_path / "ranker",
        (1,),
        1,
    )
    assert live_version(settings, "ranker") == 1 and live_version(settings) == 1
    assert (settings.serving_base_path / "ranker" / "1" / "saved_model.pb").exists()

    # A second ranker version: the replaced one stays loaded, the two-tower still untouched.
    deploy_saved_model(settings, 2, models["r2"], model_name="ranker")
    entries = parse_models_config((settings.serving_base_path / "models.config").read_text())
    assert entries[0] == tower_block[0]
    assert (entries[1].versions, entries[1].stable) == ((1, 2), 2)
    assert live_version(settings, "ranker") == 2
    # And a new two-tower version keeps the ranker's entry as it was.
    deploy_saved_model(settings, 2, models["tower"])
    again = parse_models_config((settings.serving_base_path / "models.config").read_text())
    assert again[1] == entries[1] and (again[0].versions, again[0].stable) == ((1, 2), 2)
    # Deploying the live ranker version again is a no-op.
    assert deploy_saved_model(settings, 2, models["r2"], model_name="ranker").skipped


def test_ranker_warmup_holds_one_rank_request(settings, models) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    from tasks.model.ranker.features import RANK_INPUTS

    deploy_saved_model(settings, 1, models["r1"], model_name="ranker")
    warmup = model_base(settings, "ranker") / "1" / WARMUP_PATH
    records = [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(warmup))]
    assert len(records) == 1
    # PredictionLog -> PredictLog -> PredictRequest: the model name, signature and all inputs.
    assert b"ranker" in records[0] and b"rank" in records[0]
    assert all(name.encode() in records[0] for name in RANK_INPUTS)


def test_ranker_over_rest_matches_in_process(settings, models, standin) -> None:  # type: ignore[no-untyped-def]
    from tasks.model.ranker.saved import sample_rank_inputs
    from tasks.serving.local_model import LocalModel
    from tasks.serving.tfserving import TFServingClient

    rest = settings.replace(tfserving_url=standin.url)
    assert deploy_saved_model(rest, 1, models["tower"]).verified_with == "tfserving"
    result = deploy_saved_model(rest, 1, models["r1"], model_name="ranker")
    assert result.verified_with == "tfserving"
    inputs = sample_rank_inputs(batch=3)
    expected = LocalModel(models["r1"], signatures=("rank",)).predict("rank", inputs)["score"]
    assert expected.shape == (3,)
    client = TFServingClient(standin.url, "ranker")
    np.testing.assert_allclose(client.predict("rank", inputs)["score"], expected, rtol=1e-5)

    url = f"{standin.url}/v1/models/ranker:predict"
    columnar = {k: np.asarray(v).tolist() for k, v in inputs.items()}
    code, answer = _post(url, {"signature_name": "rank", "inputs": columnar})
    assert code == 200
    np.testing.assert_allclose(answer["outputs"], expected, rtol=1e-5)
    rows = [{k: v[i] for k, v in columnar.items()} for i in range(3)]
    code, answer = _post(url, {"signature_name": "rank", "instances": rows})
    assert code == 200
    np.testing.assert_allclose(answer["predictions"], expected, rtol=1e-5)
    # The two-tower is still served next to it; a wrong signature is a 400 naming it.
    code, _ = _post(
        f"{standin.url}/v1/models/two_tower:predict",
        {"signature_name": "score", "inputs": _two_tower_score_inputs()},
    )
    assert code == 200
    code, answer = _post(url, {"signature_name": "score", "inputs": columnar})
    assert code == 400 and "score" in answer["error"]


def _two_tower_score_inputs() -> dict:
    from tasks.serving.local_model import sample_inputs

    return {k: np.asarray(v).tolist() for k, v in sample_inputs()["score"].items()}


def test_failed_ranker_verification_keeps_everything_as_it_was(settings, models, standin) -> None:  # type: ignore[no-untyped-def]
    from tasks.serving.local_model import ModelVerificationError

    rest = settings.replace(tfserving_url=standin.url)
    deploy_saved_model(rest, 1, models["tower"])
    deploy_saved_model(rest, 1, models["r1"], model_name="ranker")
    config = settings.serving_base_path / "models.config"
    before = config.read_bytes()
    # A two-tower SavedModel has no `rank` signature: the stand-in cannot load it as a ranker.
    with pytest.raises(ModelVerificationError):
        deploy_saved_model(rest, 2, models["tower"], model_name="ranker", verify_timeout_s=20)
    assert config.read_bytes() == before
    assert live_version(settings, "ranker") == 1 and live_version(settings) == 1


def test_two_tower_alone_when_no_ranker_champion(settings, tmp_path, models) -> None:  # type: ignore[no-untyped-def]
    """No ranker registered: the ranker deploy is a no-op and models.config is the
    two-tower's alone, byte for byte what a one-model deploy writes."""
    from tasks.serving.deploy import render_model_config

    deploy_saved_model(settings, 1, models["tower"])
    result = deploy_champion(settings, model_name="ranker")
    assert (result.version, result.skipped) == (None, True)
    assert result.reason == "no champion alias on ranker"
    text = (settings.serving_base_path / "models.config").read_text()
    assert text == render_model_config("two_tower", model_base(settings), [1], stable=1)
    assert live_version(settings, "ranker") is None
    with pytest.raises(ValueError, match="unknown served model 'nope'"):
        live_version(settings, "nope")


def _register_ranker(settings, experiment_id: str, saved_model: Path) -> int:  # type: ignore[no-untyped-def]
    import mlflow

    from model_registry.registry import SAVED_MODEL_ARTIFACT, register_challenger

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(saved_model), artifact_path=SAVED_MODEL_ARTIFACT)
    client.set_terminated(run.info.run_id)
    return register_challenger(
        settings,
        run.info.run_id,
        model=settings.ranker_registered_model_name,
        artifact=SAVED_MODEL_ARTIFACT,
    )


def test_ranker_champion_is_deployed_and_a_cli_rollback_redeployed(
    settings, models, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    from model_registry.cli import main as registry_cli
    from model_registry.registry import resolve_alias, set_champion

    client = mlflow.MlflowClient(settings.mlflow_tracking_uri, settings.mlflow_tracking_uri)
    experiment = client.create_experiment(
        "ranker-deploy", artifact_location=settings.mlflow_artifact_root
    )
    first = _register_ranker(settings, experiment, models["r1"])
    second = _register_ranker(settings, experiment, models["r2"])
    assert (first, second) == (1, 2)
    # The two-tower's registered model is not touched by the ranker's.
    assert resolve_alias(settings, "challenger") is None
    ranker = settings.ranker_registered_model_name
    assert resolve_alias(settings, "challenger", model=ranker).version == second

    deploy_saved_model(settings, 1, models["tower"])
    set_champion(settings, first, reason="test", model=ranker)
    assert deploy_champion(settings, model_name="ranker").version == first
    assert deploy_champion(settings, model_name="ranker").skipped
    set_champion(settings, second, reason="test", model=ranker)
    assert deploy_champion(settings, model_name="ranker").version == second
    assert live_version(settings, "ranker") == second

    monkeypatch.setenv("RECSYS_HOME", str(settings.home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    assert registry_cli(["--model", "ranker", "rollback"]) == 0
    assert resolve_alias(settings, "champion", model=ranker).version == first
    rolled = deploy_champion(settings, model_name="ranker")
    assert (rolled.version, rolled.reused) == (first, True)
    assert live_version(settings, "ranker") == first and live_version(settings) == 1
    # The two-tower has no champion of its own: its rollback names that and fails cleanly.
    assert registry_cli(["rollback"]) == 2
