"""Deploy a model version to the TF-Serving base path atomically, verify it, then switch.

Layout under ``settings.serving_base_path``::

    models.config               TF-Serving ModelServerConfig (text proto), written tmp+rename
    <model_name>/<version>/     complete, never rewritten SavedModel dirs (TF-Serving layout)
    <model_name>/<version>.tmp/ being written; TF-Serving ignores non-numeric names
    <model_name>/LIVE           JSON pointer to the verified live version, written tmp+rename

Steps: copy the SavedModel into ``<version>.tmp/`` with the warmup file
(``assets.extra/tf_serving_warmup_requests``) and a manifest, fsync files and folders, rename
to ``<version>/``; verify (TF-Serving: poll status until AVAILABLE and predict each signature;
embedded default: load in process and do the same); only then rewrite ``models.config`` and
``LIVE`` (``models.config`` keeps the replaced version loaded too, for an instant rollback);
then prune versions beyond the newest ``keep_last`` (never the live one or the one it
replaced) and remove stale temp leftovers of interrupted deploys (``<v>.tmp/``,
``.download-<v>/``, ``.LIVE.tmp``, ``.models.config.tmp``) untouched for ``STALE_TMP_S``:
a leftover still being written by another deploy is younger than that. A failed verification raises and leaves the previous version live, with
``models.config`` restored byte for byte. Rollback is ``deploy_champion`` after the alias moved back: that version is
already on disk, so it is verified and re-pointed, never rewritten.

Two models share the base path and the one ``models.config``: the two-tower
(``settings.model_name``, signatures ``item_tower``/``user_tower``/``score``) and the ranker
(``settings.ranker_model_name``, signature ``rank``). Every function takes ``model_name``
(default: the two-tower's); rewriting ``models.config`` for one model keeps the other's
entry exactly as it was. The ranker's warmup and verification call ``rank`` on
:func:`tasks.model.ranker.saved.sample_rank_inputs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.core.common import StageResult, get_logger
from tasks.core.settings import Settings

log = get_logger("deploy")

MANIFEST = "recsys_manifest.json"
LIVE_FILE = "LIVE"
CONFIG_FILE = "models.config"
WARMUP_PATH = Path("assets.extra") / "tf_serving_warmup_requests"
# A temp file or folder untouched this long belongs to no running deploy (copies and
# downloads touch their tree continuously); younger ones are left alone.
STALE_TMP_S = 600.0


class DeployError(RuntimeError):
    """A version on disk is unusable (corrupt, or its source is missing)."""


@dataclass(frozen=True)
class DeployResult(StageResult):
    """What deploy did: ``version`` live at ``path``; ``skipped`` when it already was;
    ``reused`` when its complete directory was already on disk; ``rewritten`` when the live
    version's directory was missing and was written and verified again; ``removed_temp`` the
    stale temp leftovers cleaned up."""

    version: int | None
    path: str
    skipped: bool
    reused: bool = False
    verified_with: str = ""
    embedding_dim: int = 0
    removed_versions: tuple[int, ...] = ()
    reason: str = ""
    rewritten: bool = False
    removed_temp: tuple[str, ...] = ()


# -- paths and pointers ------------------------------------------------------------------
def _model(settings: Settings, model_name: str | None) -> str:
    """The served model a call is about (default: the two-tower); unknown names raise."""
    name = model_name or settings.model_name
    if name not in (settings.model_name, settings.ranker_model_name):
        raise ValueError(
            f"unknown served model {name!r}; expected {settings.model_name!r} or "
            f"{settings.ranker_model_name!r}"
        )
    return name


def is_ranker(settings: Settings, model_name: str | None) -> bool:
    """Whether ``model_name`` is the ranker (else the two-tower)."""
    return _model(settings, model_name) == settings.ranker_model_name


def registered_name(settings: Settings, model_name: str | None = None) -> str:
    """The MLflow registered model behind a served model."""
    if is_ranker(settings, model_name):
        return settings.ranker_registered_model_name
    return settings.registered_model_name


def model_base(settings: Settings, model_name: str | None = None) -> Path:
    """``<serving_base_path>/<model_name>``: the TF-Serving model base path."""
    return settings.serving_base_path / _model(settings, model_name)


def live_version(settings: Settings, model_name: str | None = None) -> int | None:
    """The verified live version (from ``LIVE``), or None before the first deploy."""
    pointer = model_base(settings, model_name) / LIVE_FILE
    if not pointer.exists():
        return None
    return int(json.loads(pointer.read_text())["version"])


def live_model_dir(settings: Settings, model_name: str | None = None) -> Path | None:
    """Directory of the live SavedModel, or None."""
    version = live_version(settings, model_name)
    return None if version is None else model_base(settings, model_name) / str(version)


def deployed_versions(settings: Settings, model_name: str | None = None) -> list[int]:
    """Complete version directories on disk, ascending."""
    base = model_base(settings, model_name)
    if not base.exists():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(Path(dirpath) / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(dirpath))


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` via a fsynced temp file and ``os.replace``: readers see old or new."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _manifest(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def check_version_dir(path: Path) -> None:
    """Raise ``DeployError`` unless ``path`` holds exactly what its manifest lists."""
    manifest_file = path / MANIFEST
    if not (path / "saved_model.pb").exists() or not manifest_file.exists():
        raise DeployError(f"{path} is not a complete deployed version (no saved_model.pb/manifest)")
    expected = json.loads(manifest_file.read_text())
    actual = _manifest(path)
    if actual != expected:
        diff = sorted(set(expected.items()) ^ set(actual.items()))[:3]
        raise DeployError(f"{path} does not match its manifest (e.g. {diff}); not reusing it")


# -- TF-Serving files --------------------------------------------------------------------
@dataclass(frozen=True)
class ModelEntry:
    """One ``config`` of ``models.config``: a model, its base path, versions, stable label."""

    name: str
    base_path: Path
    versions: tuple[int, ...]
    stable: int | None = None


def render_models_config(entries: Sequence[ModelEntry]) -> str:
    """ModelServerConfig text proto serving every entry (label ``stable`` on its live one)."""
    if not entries:
        raise ValueError("models.config needs at least one model")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"models.config lists a model twice: {names}")
    lines = ["model_config_list {"]
    for entry in entries:
        if not entry.versions:
            raise ValueError(
                f"models.config needs at least one version of {entry.name!r}, got {entry.versions}"
            )
        lines += [
            "  config {",
            f'    name: "{entry.name}"',
            f'    base_path: "{entry.base_path}"',
            '    model_platform: "tensorflow"',
            "    model_version_policy {",
            "      specific {",
            *[f"        versions: {v}" for v in sorted(set(entry.versions))],
            "      }",
            "    }",
        ]
        if entry.stable is not None:
            lines += [
                "    version_labels {",
                '      key: "stable"',
                f"      value: {entry.stable}",
                "    }",
            ]
        lines += ["  }"]
    lines += ["}", ""]
    return "\n".join(lines)


def render_model_config(
    model_name: str, base_path: Path, versions: list[int], *, stable: int | None = None
) -> str:
    """ModelServerConfig text proto serving one model's ``versions`` (label ``stable``)."""
    if not versions:
        raise ValueError(f"models.config needs at least one version, got {versions}")
    return render_models_config([ModelEntry(model_name, base_path, tuple(versions), stable)])


def parse_models_config(text: str) -> list[ModelEntry]:
    """The entries of a ``models.config`` written by :func:`render_models_config`."""
    entries = []
    for block in re.split(r"\bconfig\s*\{", text)[1:]:
        name = re.search(r'name:\s*"([^"]+)"', block)
        base = re.search(r'base_path:\s*"([^"]+)"', block)
        if not name or not base:
            raise ValueError(f"models.config block without name/base_path: {block[:200]!r}")
        versions = tuple(int(v) for v in re.findall(r"versions:\s*(\d+)", block))
        stable = re.search(r'key:\s*"stable"\s*value:\s*(\d+)', block)
        entries.append(
            ModelEntry(
                name.group(1),
                Path(base.group(1)),
                versions,
                int(stable.group(1)) if stable else None,
            )
        )
    return entries


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def prediction_log_bytes(
    model_name: str, signature: str, inputs: Mapping[str, np.ndarray]
) -> bytes:
    """Serialized ``tensorflow.serving.PredictionLog`` holding one ``PredictRequest``.

    ``tensorflow-serving-api`` is installable from PyPI but not in our lock (it would pull a
    second protobuf/grpc pin next to TensorFlow's), so the three small wrapper messages are
    encoded by hand here and the tensors with TensorFlow's own ``TensorProto``. Field
    numbers from tensorflow_serving/apis: PredictionLog.predict_log = 6, PredictLog.request
    = 1, PredictRequest.model_spec = 1 / inputs (map<string, TensorProto>) = 2, ModelSpec.name
    = 1 / signature_name = 3; a map entry is a message with key = 1, value = 2.
    """
    import tensorflow as tf

    model_spec = _field(1, model_name.encode()) + _field(3, signature.encode())
    request = _field(1, model_spec)
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.dtype == object:
            array = array.astype(bytes)
        tensor = tf.make_tensor_proto(array).SerializeToString()
        request += _field(2, _field(1, name.encode()) + _field(2, tensor))
    return _field(6, _field(1, request))


def warmup_requests(ranker: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Signature -> probe inputs: the two-tower's three signatures, or the ranker's ``rank``."""
    if ranker:
        from tasks.model.ranker.model import SIGNATURE
        from tasks.model.ranker.saved import sample_rank_inputs

        return {SIGNATURE: sample_rank_inputs()}
    from tasks.serving.local_model import SIGNATURES, sample_inputs

    probes = sample_inputs()
    return {signature: probes[signature] for signature in SIGNATURES}


def write_warmup_file(version_dir: Path, model_name: str, *, ranker: bool = False) -> Path:
    """``assets.extra/tf_serving_warmup_requests``: one PredictionLog per signature (TFRecord)."""
    import tensorflow as tf

    path = version_dir / WARMUP_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in warmup_requests(ranker).items():
            writer.write(prediction_log_bytes(model_name, signature, inputs))
    return path


# -- verification ------------------------------------------------------------------------
def _verify(
    settings: Settings, version: int, version_dir: Path, timeout_s: float, model_name: str
) -> tuple[int, str]:
    """Verify the version (TF-Serving when configured, else in process); returns (dim, how).

    The ranker has no embedding: its dim is 0 and its check is ``verify_ranker``.
    """
    from tasks.serving.local_model import LocalModel, verify_model

    ranker = is_ranker(settings, model_name)
    if settings.tfserving_url:
        from tasks.serving.tfserving import TFServingClient

        client = TFServingClient(settings.tfserving_url, model_name, version=version)
        client.wait_available(version, timeout_s=timeout_s)
        model: object = client
        how = "tfserving"
    else:
        signatures = tuple(warmup_requests(ranker)) if ranker else None
        model = (
            LocalModel(version_dir, version=version, signatures=signatures)
            if signatures
            else LocalModel(version_dir, version=version)
        )
        how = "in_process"
    if ranker:
        from tasks.model.ranker.saved import verify_ranker

        verify_ranker(model)  # type: ignore[arg-type]
        return 0, how
    return verify_model(model), how  # type: ignore[arg-type]


def _write_config(
    settings: Settings, model_name: str, versions: list[int], stable: int | None
) -> None:
    """Rewrite ``models.config`` with this model's entry; other models' entries kept as is."""
    settings.serving_base_path.mkdir(parents=True, exist_ok=True)
    path = settings.serving_base_path / CONFIG_FILE
    entries = parse_models_config(path.read_text()) if path.exists() else []
    mine = ModelEntry(model_name, model_base(settings, model_name), tuple(versions), stable)
    if any(e.name == model_name for e in entries):
        entries = [mine if e.name == model_name else e for e in entries]
    else:
        entries.append(mine)
    write_atomic(path, render_models_config(entries).encode())


def _materialize(
    settings: Settings, version: int, saved_model_dir: Path, model_name: str
) -> tuple[Path, bool]:
    """Make ``<base>/<version>/`` exist and be complete; returns (path, reused)."""
    base = model_base(settings, model_name)
    base.mkdir(parents=True, exist_ok=True)
    final = base / str(version)
    if final.exists():
        check_version_dir(final)
        log.info("version %s already on disk at %s: verified manifest, reusing", version, final)
        return final, True
    if not (saved_model_dir / "saved_model.pb").exists():
        raise DeployError(f"no saved_model.pb under {saved_model_dir}")
    tmp = base / f"{version}.tmp"
    if tmp.exists():
        log.warning("removing leftover %s from an interrupted deploy", tmp)
        shutil.rmtree(tmp)
    shutil.copytree(saved_model_dir, tmp)
    write_warmup_file(tmp, model_name, ranker=is_ranker(settings, model_name))
    (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1, sort_keys=True))
    _fsync_tree(tmp)
    os.rename(tmp, final)
    _fsync_dir(base)
    n_files = sum(1 for p in final.rglob("*") if p.is_file())
    log.info("wrote version %s to %s (%d files)", version, final, n_files)
    return final, False


def _touched(path: Path) -> float:
    """When ``path`` last changed: ctime too, since copies keep their source's mtime."""
    stat = path.lstat()
    return max(stat.st_mtime, stat.st_ctime)


def _newest_mtime(path: Path) -> float:
    """The latest change time anywhere under ``path`` (itself included)."""
    try:
        newest = _touched(path)
    except FileNotFoundError:
        return float("inf")
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in (*dirnames, *filenames):
                try:
                    newest = max(newest, _touched(Path(dirpath) / name))
                except FileNotFoundError:  # being removed or renamed right now: not stale
                    return float("inf")
    return newest


def clean_stale_temp(
    settings: Settings,
    *,
    older_than_s: float | None = None,
    now: float | None = None,
    keep: tuple[Path, ...] = (),
    model_name: str | None = None,
) -> tuple[str, ...]:
    """Remove temp leftovers of interrupted deploys untouched for ``older_than_s``
    (default ``STALE_TMP_S``), except ``keep`` and folders holding one of them.

    Under the model base: ``<v>.tmp/`` (a copy never renamed), ``.download-<v>/`` (a
    registry download) and ``.LIVE.tmp``; under the serving base path:
    ``.models.config.tmp``. Returns the removed names (relative to the serving base path).
    """
    import time

    now = time.time() if now is None else now
    older_than_s = STALE_TMP_S if older_than_s is None else older_than_s
    kept = [k.resolve() for k in keep]
    base = model_base(settings, model_name)
    candidates: list[Path] = []
    if base.exists():
        candidates += [
            p
            for p in base.iterdir()
            if (p.is_dir() and (p.name.endswith(".tmp") or p.name.startswith(".download-")))
            or (p.is_file() and p.name == f".{LIVE_FILE}.tmp")
        ]
    config_tmp = settings.serving_base_path / f".{CONFIG_FILE}.tmp"
    if config_tmp.is_file():
        candidates.append(config_tmp)
    removed: list[str] = []
    for path in sorted(candidates):
        if any(k == path.resolve() or path.resolve() in k.parents for k in kept):
            continue
        if now - _newest_mtime(path) < older_than_s:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.relative_to(settings.serving_base_path).as_posix())
        log.info("removed stale deploy leftover %s", path)
    return tuple(removed)


def _prune(
    settings: Settings, keep_last: int, protected: set[int], model_name: str
) -> tuple[int, ...]:
    """Delete version dirs beyond the newest ``keep_last``, except ``protected`` ones."""
    versions = deployed_versions(settings, model_name)
    keep = set(versions[-keep_last:]) | protected
    removed = tuple(v for v in versions if v not in keep)
    for version in removed:
        shutil.rmtree(model_base(settings, model_name) / str(version))
        log.info("removed old version %s", version)
    return removed


def deploy_saved_model(
    settings: Settings,
    version: int,
    saved_model_dir: str | Path,
    *,
    keep_last: int = 3,
    verify_timeout_s: float = 120.0,
    model_name: str | None = None,
) -> DeployResult:
    """Deploy ``saved_model_dir`` as ``version``, verify it, then make it live.

    Idempotent: an existing complete ``<version>/`` is verified and reused, never rewritten;
    if it is already live nothing changes and ``skipped`` is True. When the live version's
    directory was missing it is written again and verified (``rewritten``, not skipped).
    """
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be a positive int, got {version!r}")
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    name = _model(settings, model_name)
    previous = live_version(settings, name)
    stale = clean_stale_temp(settings, keep=(Path(saved_model_dir),), model_name=name)
    final, reused = _materialize(settings, version, Path(saved_model_dir), name)
    rewritten = previous == version and not reused
    if previous == version and reused and _config_serves(settings, name, version):
        return DeployResult(
            version,
            str(final),
            skipped=True,
            reused=True,
            reason="already live",
            removed_temp=stale,
        )
    if rewritten:
        log.warning("live version %s was missing on disk: rewrote it, verifying again", version)

    config_path = settings.serving_base_path / CONFIG_FILE
    config_before = config_path.read_bytes() if config_path.exists() else None
    if settings.tfserving_url:
        # TF-Serving must load the new version to be asked about it; the old one keeps
        # serving (and keeps the "stable" label) until the new one passes.
        staging = [v for v in (previous, version) if v is not None]
        _write_config(settings, name, staging, stable=previous)
    try:
        dim, how = _verify(settings, version, final, verify_timeout_s, name)
    except Exception as exc:
        if settings.tfserving_url:  # put TF-Serving back on exactly what it served before
            if config_before is not None:
                write_atomic(config_path, config_before)
            else:
                config_path.unlink(missing_ok=True)
        log.error(
            "%s version %s failed verification; %s stays live: %s", name, version, previous, exc
        )
        from tasks.serving.local_model import ModelVerificationError

        if isinstance(exc, ModelVerificationError):
            raise
        raise ModelVerificationError(f"version {version} failed verification: {exc}") from exc

    # Serve the new version (label "stable") and keep the one it replaces loaded, so that
    # a rollback is instant; both are protected from pruning.
    keep_loaded = [v for v in (version, previous) if v is not None]
    _write_config(settings, name, keep_loaded, stable=version)
    pointer = {"version": version, "path": str(final), "embedding_dim": dim, "verified_with": how}
    write_atomic(model_base(settings, name) / LIVE_FILE, json.dumps(pointer).encode())
    removed = _prune(settings, keep_last, set(keep_loaded), name)
    log.info("%s version %s live (was %s), verified %s, dim %d", name, version, previous, how, dim)
    return DeployResult(
        version,
        str(final),
        skipped=False,
        reused=reused,
        verified_with=how,
        embedding_dim=dim,
        removed_versions=removed,
        reason="live version directory was missing: rewritten and verified" if rewritten else "",
        rewritten=rewritten,
        removed_temp=stale,
    )


def _config_serves(settings: Settings, model_name: str, version: int) -> bool:
    """Whether ``models.config`` exists and serves ``version`` of ``model_name``."""
    path = settings.serving_base_path / CONFIG_FILE
    if not path.exists():
        return False
    return any(
        e.name == model_name and version in e.versions
        for e in parse_models_config(path.read_text())
    )


def deploy_champion(
    settings: Settings, *, keep_last: int = 3, model_name: str | None = None
) -> DeployResult:
    """Deploy the MLflow ``champion`` version of a served model (default: the two-tower;
    the ranker's comes from its own registered model); no-op if it is already live."""
    from model_registry.registry import download_saved_model, resolve_alias

    name = _model(settings, model_name)
    registered = registered_name(settings, name)
    ranker = is_ranker(settings, name)
    # The two-tower's lookup is called exactly as before the ranker existed.
    ref = (
        resolve_alias(settings, "champion", model=registered)
        if ranker
        else resolve_alias(settings, "champion")
    )
    if ref is None:
        log.warning("no champion alias on %s; nothing to deploy", registered)
        reason = f"no champion alias on {registered}" if ranker else "no champion alias"
        return DeployResult(None, "", skipped=True, reason=reason)
    version = int(ref.version)
    final = model_base(settings, name) / str(version)
    if (
        live_version(settings, name) == version
        and final.exists()
        and _config_serves(settings, name, version)
    ):
        check_version_dir(final)
        log.info("%s champion version %s is already live", name, version)
        stale = clean_stale_temp(settings, model_name=name)
        return DeployResult(
            version,
            str(final),
            skipped=True,
            reused=True,
            reason="already live",
            removed_temp=stale,
        )
    if final.exists():
        return deploy_saved_model(settings, version, final, keep_last=keep_last, model_name=name)
    staging = model_base(settings, name) / f".download-{version}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        source = download_saved_model(settings, ref, staging)
        return deploy_saved_model(settings, version, source, keep_last=keep_last, model_name=name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "DeployError",
    "DeployResult",
    "clean_stale_temp",
    "deploy_champion",
    "deploy_saved_model",
    "is_ranker",
    "live_model_dir",
    "live_version",
    "parse_models_config",
    "prediction_log_bytes",
    "registered_name",
    "render_model_config",
    "render_models_config",
]
