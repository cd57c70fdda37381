"""The REST client and deploy verification over real HTTP, against the TF-Serving stand-in."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tasks.serving.deploy import deploy_saved_model, live_version, model_base
from tasks.serving.local_model import LocalModel, ModelVerificationError, sample_inputs
from tasks.serving.tfserving import TFServingClient, TFServingError
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower
from tests.doubles.tfserving_standin import StandInModelServer, parse_model_config


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import tensorflow as tf

    root = tmp_path_factory.mktemp("models")
    good = export_hash_two_tower(root / "good", HashModelSpec(dim=8, buckets=101, seed=1))
    loaded = tf.saved_model.load(str(good))
    bad = root / "bad"
    tf.saved_model.save(
        loaded, str(bad), signatures={"item_tower": loaded.signatures["item_tower"]}
    )
    return {"good": good, "bad": bad}


@pytest.fixture
def standin(settings) -> Iterator[StandInModelServer]:  # type: ignore[no-untyped-def]
    server = StandInModelServer(settings.serving_base_path, settings.model_name, poll_s=0.1).start()
    yield server
    server.stop()


def test_deploy_verifies_over_rest_and_predictions_match_in_process(
    settings, models, standin
) -> None:  # type: ignore[no-untyped-def]
    rest_settings = settings.replace(tfserving_url=standin.url)
    result = deploy_saved_model(rest_settings, 1, models["good"])
    assert result.verified_with == "tfserving" and result.embedding_dim == 8
    client = TFServingClient(standin.url, settings.model_name, version=1)
    status = client.version_status(1)
    assert status == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
    local = LocalModel(models["good"])
    for signature, inputs in sample_inputs(batch=3).items():
        remote = client.predict(signature, inputs)
        expected = local.predict(signature, inputs)
        assert remote.keys() == expected.keys()
        for name in expected:
            np.testing.assert_allclose(remote[name], expected[name], rtol=1e-5, atol=1e-6)


def test_row_format_instances_answer_predictions(settings, models, standin) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings.replace(tfserving_url=standin.url), 1, models["good"])
    body = {
        "signature_name": "user_tower",
        "instances": [{"user_id": 5, "history": [3, 0]}, {"user_id": 6, "history": [4, 2]}],
    }
    req = urllib.request.Request(
        f"{standin.url}/v1/models/{settings.model_name}/versions/1:predict",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        predictions = json.loads(resp.read())["predictions"]
    expected = LocalModel(models["good"]).predict(
        "user_tower", {"user_id": np.array([5, 6]), "history": np.array([[3, 0], [4, 2]])}
    )["embedding"]
    np.testing.assert_allclose(np.array(predictions), expected, rtol=1e-5, atol=1e-6)


def test_client_errors_name_the_problem(settings, models, standin) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings.replace(tfserving_url=standin.url), 1, models["good"])
    with pytest.raises(TFServingError, match="404"):
        TFServingClient(standin.url, settings.model_name, version=9).predict(
            "score", sample_inputs()["score"]
        )
    with pytest.raises(TFServingError, match="400.*nope"):
        TFServingClient(standin.url, settings.model_name, version=1).predict(
            "nope", sample_inputs()["score"]
        )
    with pytest.raises(TFServingError, match="not AVAILABLE after 0.3s"):
        TFServingClient(standin.url, settings.model_name).wait_available(7, timeout_s=0.3)
    with pytest.raises(TFServingError, match="127.0.0.1:1"):
        TFServingClient("http://127.0.0.1:1", "m", timeout=1).version_status()
    with pytest.raises(ValueError, match="ftp://x"):
        TFServingClient("ftp://x", "m")


def test_failed_rest_verification_keeps_previous_version_served(settings, models, standin) -> None:  # type: ignore[no-untyped-def]
    rest_settings = settings.replace(tfserving_url=standin.url)
    deploy_saved_model(rest_settings, 1, models["good"])
    config_path = settings.serving_base_path / "models.config"
    before = config_path.read_bytes()
    with pytest.raises(ModelVerificationError, match="ended"):
        deploy_saved_model(rest_settings, 2, models["bad"], verify_timeout_s=30)
    assert live_version(settings) == 1
    assert config_path.read_bytes() == before
    config = parse_model_config(config_path.read_text())
    assert config == {settings.model_name: (model_base(settings), [1])}
    # The stand-in follows the config back: version 1 answers, version 2 is unloaded.
    client = TFServingClient(standin.url, settings.model_name, version=1)
    assert client.predict("score", sample_inputs()["score"])["score"].shape == (2,)
    standin.sync_once()
    assert [s["version"] for s in client.version_status()] == ["1"]


def test_new_version_goes_live_with_the_replaced_one_still_loaded(
    settings, models, standin
) -> None:  # type: ignore[no-untyped-def]
    rest_settings = settings.replace(tfserving_url=standin.url)
    deploy_saved_model(rest_settings, 1, models["good"])
    result = deploy_saved_model(rest_settings, 2, models["good"])
    assert result.verified_with == "tfserving" and live_version(settings) == 2
    config = parse_model_config((settings.serving_base_path / "models.config").read_text())
    assert config == {settings.model_name: (model_base(settings), [1, 2])}
    standin.sync_once()
    states = {
        s["version"]: s["state"]
        for s in TFServingClient(standin.url, settings.model_name).version_status()
    }
    assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}
