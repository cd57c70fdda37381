"""Atomic deploy to the serving base path, verified in process (the embedded default)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from tasks.serving import deploy as deploy_mod
from tasks.serving.deploy import (
    DeployError,
    deploy_champion,
    deploy_saved_model,
    deployed_versions,
    live_version,
    model_base,
)
from tasks.serving.local_model import ModelVerificationError
from tests.doubles.fixture_model import HashModelSpec, export_hash_two_tower


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two good fixture SavedModels (different seeds) and one lacking the `score` signature."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("models")
    good_a = export_hash_two_tower(root / "a", HashModelSpec(dim=8, buckets=101, seed=1))
    good_b = export_hash_two_tower(root / "b", HashModelSpec(dim=8, buckets=101, seed=2))
    loaded = tf.saved_model.load(str(good_a))
    bad = root / "bad"
    tf.saved_model.save(
        loaded,
        str(bad),
        signatures={k: loaded.signatures[k] for k in ("item_tower", "user_tower")},
    )
    return {"a": good_a, "b": good_b, "bad": bad}


def _config(settings) -> str:  # type: ignore[no-untyped-def]
    return (settings.serving_base_path / "models.config").read_text()


def test_deploy_writes_version_config_warmup_and_live_pointer(settings, models) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    result = deploy_saved_model(settings, 1, models["a"])
    version_dir = model_base(settings) / "1"
    assert result.version == 1 and not result.skipped and result.path == str(version_dir)
    assert result.verified_with == "in_process" and result.embedding_dim == 8
    assert (version_dir / "saved_model.pb").exists()
    warmup = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    assert sum(1 for _ in tf.data.TFRecordDataset(str(warmup))) == 3
    assert live_version(settings) == 1
    config = _config(settings)
    assert 'name: "two_tower"' in config and f'base_path: "{model_base(settings)}"' in config
    assert "versions: 1" in config
    assert not list(model_base(settings).glob("*.tmp"))
    assert result.as_dict()["removed_versions"] == []


def test_redeploy_same_version_is_a_noop(settings, models) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings, 1, models["a"])
    pb = model_base(settings) / "1" / "saved_model.pb"
    before = pb.stat().st_mtime_ns
    again = deploy_saved_model(settings, 1, models["b"])
    assert again.skipped and again.reason == "already live"
    assert pb.stat().st_mtime_ns == before
    assert pb.read_bytes() == (models["a"] / "saved_model.pb").read_bytes()


def test_crash_between_write_and_rename_leaves_no_version(settings, models, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings, 1, models["a"])

    def crash(src, dst):  # type: ignore[no-untyped-def]
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(deploy_mod.os, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
        deploy_saved_model(settings, 2, models["b"])
    monkeypatch.undo()
    assert not (model_base(settings) / "2").exists()
    assert deployed_versions(settings) == [1]
    assert live_version(settings) == 1
    # The next run clears the leftover tmp dir and completes.
    assert deploy_saved_model(settings, 2, models["b"]).version == 2
    assert not (model_base(settings) / "2.tmp").exists()
    assert live_version(settings) == 2


def test_existing_version_is_never_overwritten(settings, models) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings, 1, models["a"])
    deploy_saved_model(settings, 2, models["a"])
    # Re-pointing to 1 with a *different* source reuses what is on disk.
    result = deploy_saved_model(settings, 1, models["b"])
    assert result.reused and not result.skipped and live_version(settings) == 1
    variables = sorted((model_base(settings) / "1" / "variables").glob("*.data*"))[0]
    assert variables.read_bytes() == (models["a"] / "variables" / variables.name).read_bytes()
    # A tampered version dir is refused, not rewritten.
    variables.write_bytes(b"corrupt")
    with pytest.raises(DeployError, match="manifest"):
        deploy_saved_model(settings, 1, models["a"])
    assert variables.read_bytes() == b"corrupt"


def test_failed_verification_keeps_previous_version_live(settings, models) -> None:  # type: ignore[no-untyped-def]
    deploy_saved_model(settings, 1, models["a"])
    config_before = _config(settings)
    with pytest.raises(ModelVerificationError, match="score"):
        deploy_saved_model(settings, 2, models["bad"])
    assert live_version(settings) == 1
    assert _config(settings) == config_before
    assert json.loads((model_base(settings) / "LIVE").read_text())["version"] == 1


def test_keep_last_prunes_old_versions_but_not_live(settings, models) -> None:  # type: ignore[no-untyped-def]
    for version in (1, 2, 3, 4):
        result = deploy_saved_model(settings, version, models["a"], keep_last=2)
    assert deployed_versions(settings) == [3, 4]
    assert result.removed_versions == (2,)  # 1 went when 3 was deployed
    # Rollback to 3 keeps 3 and 4; deploying 5 keeps the newest two (4, 5) plus 3, the
    # version 5 replaced, which models.config keeps loaded for an instant rollback.
    deploy_saved_model(settings, 3, models["a"], keep_last=2)
    deploy_saved_model(settings, 5, models["a"], keep_last=2)
    assert deployed_versions(settings) == [3, 4, 5]
    config = _config(settings)
    assert "versions: 3" in config and "versions: 5" in config and "versions: 4" not in config
    assert "value: 5" in config  # the "stable" label
    deploy_saved_model(settings, 6, models["a"], keep_last=2)
    assert deployed_versions(settings) == [5, 6]


def test_bad_arguments_name_the_value(settings, models, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="-1"):
        deploy_saved_model(settings, -1, models["a"])
    with pytest.raises(ValueError, match="keep_last must be >= 1, got 0"):
        deploy_saved_model(settings, 1, models["a"], keep_last=0)
    with pytest.raises(DeployError, match=str(tmp_path)):
        deploy_saved_model(settings, 1, tmp_path)


def test_deploy_champion_follows_the_alias_and_rolls_back(settings, models, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Registry calls are replaced by an in-memory alias here (MLflow is covered elsewhere)."""
    alias = {"champion": 1}
    downloads: list[int] = []

    def resolve_alias(_settings, name="champion"):  # type: ignore[no-untyped-def]
        if name not in alias:
            return None
        return types.SimpleNamespace(version=alias[name], run_id=f"run{alias[name]}", source="x")

    def download_saved_model(_settings, ref, dst):  # type: ignore[no-untyped-def]
        import shutil

        downloads.append(ref.version)
        shutil.copytree(models["a"] if ref.version == 1 else models["b"], dst)
        return dst

    fake = types.ModuleType("model_registry.registry")
    fake.resolve_alias = resolve_alias  # type: ignore[attr-defined]
    fake.download_saved_model = download_saved_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "model_registry.registry", fake)

    assert deploy_champion(settings).version == 1
    assert deploy_champion(settings).skipped
    alias["champion"] = 2
    assert deploy_champion(settings).version == 2 and live_version(settings) == 2
    alias["champion"] = 1  # rollback: already on disk, re-pointed without a download
    rolled = deploy_champion(settings)
    assert rolled.version == 1 and rolled.reused and live_version(settings) == 1
    assert downloads == [1, 2]
    assert not list(model_base(settings).glob(".download-*"))
    del alias["champion"]
    assert deploy_champion(settings).reason == "no champion alias"


def test_stale_temp_leftovers_are_cleaned_but_fresh_ones_kept(
    settings, models, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """Leftovers of interrupted deploys (another version's ``.tmp``, a download, the LIVE and
    models.config temp files) go at the next deploy once untouched for STALE_TMP_S; one
    being written right now (younger) stays."""
    import time

    deploy_saved_model(settings, 1, models["a"])
    base = model_base(settings)
    (base / "7.tmp" / "variables").mkdir(parents=True)
    (base / "7.tmp" / "variables" / "part").write_bytes(b"x")
    (base / ".download-8").mkdir()
    (base / ".LIVE.tmp").write_text("{}")
    (settings.serving_base_path / ".models.config.tmp").write_text("")
    leftovers = {
        "two_tower/.LIVE.tmp",
        "two_tower/.download-8",
        "two_tower/7.tmp",
        ".models.config.tmp",
    }

    # Young (just written): an hour-old threshold keeps all of them.
    assert deploy_mod.clean_stale_temp(settings, older_than_s=3600) == ()
    assert (base / "7.tmp").exists() and (base / ".LIVE.tmp").exists()
    # An hour later they are stale; the folder named in ``keep`` (a running deploy's source)
    # is spared.
    later = time.time() + 3600
    spared = deploy_mod.clean_stale_temp(
        settings, older_than_s=600, now=later, keep=(base / ".download-8",)
    )
    assert set(spared) == leftovers - {"two_tower/.download-8"}
    assert (base / ".download-8").exists() and not (base / "7.tmp").exists()

    # deploy_saved_model cleans them itself (threshold 0 here: everything is "old").
    (base / "7.tmp").mkdir()
    (base / ".LIVE.tmp").write_text("{}")
    monkeypatch.setattr(deploy_mod, "STALE_TMP_S", 0.0)
    result = deploy_saved_model(settings, 2, models["b"])
    assert set(result.removed_temp) == {
        "two_tower/.LIVE.tmp",
        "two_tower/.download-8",
        "two_tower/7.tmp",
    }
    assert sorted(p.name for p in base.iterdir()) == ["1", "2", "LIVE"]
    assert live_version(settings) == 2


def test_missing_live_version_dir_is_rewritten_and_reported_so(settings, models) -> None:  # type: ignore[no-untyped-def]
    """LIVE says 1 but ``1/`` is gone: the deploy writes it again and verifies it, and says
    so (rewritten, not skipped/reused/'already live')."""
    import shutil

    deploy_saved_model(settings, 1, models["a"])
    shutil.rmtree(model_base(settings) / "1")
    result = deploy_saved_model(settings, 1, models["a"])
    assert (result.skipped, result.reused, result.reason) == (
        False,
        False,
        "live version directory was missing: rewritten and verified",
    )
    assert result.rewritten
    assert result.reason == "live version directory was missing: rewritten and verified"
    assert result.verified_with == "in_process" and result.embedding_dim == 8
    assert (model_base(settings) / "1" / "saved_model.pb").exists()
    assert live_version(settings) == 1
    # Now it is complete and live: a true no-op.
    again = deploy_saved_model(settings, 1, models["a"])
    assert (again.skipped, again.reused, again.rewritten) == (True, True, False)
