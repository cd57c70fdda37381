"""MLflow model registry operations: register, aliases, download, rollback, listing.

Version tags are kept few and readable: lineage (the MLflow run, its data interval, the
Airflow task try that registered it) and the gate's decision, reason and compared scores;
the run's metrics stay on the run (``run_metrics`` reads them).

Aliases are the only source of truth for "what is deployed": ``champion`` may be moved by
the gate *or* by a person in the MLflow UI, so every function reads it fresh. Each promotion
records the version it replaced in the ``previous_champion`` tag of the new champion, which
is what :func:`rollback` follows.

Every function works on the two-tower's registered model by default; ``model=`` names
another one (the ranker's, ``settings.ranker_registered_model_name``) with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.common import get_logger
from tasks.core.lineage import RunLineage
from tasks.core.settings import Settings

log = get_logger("registry")

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION_TAG = "previous_champion"
GATE_REASON_TAG = "gate_reason"
GATE_DECISION_TAG = "gate_decision"  # "promoted" / "not promoted"
RUN_ID_TAG = "mlflow_run_id"
# Copied from the training run onto the version: what it was trained on.
LINEAGE_RUN_TAGS = ("data_interval_start", "data_interval_end", "params_fingerprint")
# Registered-model tag: comma-separated champion versions in the order they were set by
# this package. A person moving the alias in the MLflow UI bypasses it; rollback then falls
# back to the last champion recorded here that is not the current one.
CHAMPION_HISTORY_TAG = "champion_history"
MODEL_ARTIFACT = "model"
SAVED_MODEL_ARTIFACT = "saved_model"


class RegistryError(ValueError):
    """A registry request names something that does not exist or cannot be done."""


@dataclass(frozen=True)
class ModelRef:
    """One registered model version."""

    version: int
    run_id: str
    source: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)


def client(settings: Settings) -> Any:
    """An MlflowClient on the settings' tracking/registry store."""
    import mlflow

    return mlflow.MlflowClient(
        tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri
    )


def _name(settings: Settings, model: str | None) -> str:
    """The registered model a call works on (default: the two-tower's)."""
    return model or settings.registered_model_name


def _ref(version: Any) -> ModelRef:
    return ModelRef(
        version=int(version.version),
        run_id=version.run_id or "",
        source=version.source or "",
        aliases=tuple(getattr(version, "aliases", []) or []),
        tags=dict(version.tags or {}),
    )


def get_version(settings: Settings, version: int, *, model: str | None = None) -> ModelRef:
    """The registered version ``version``, or :class:`RegistryError` naming it."""
    from mlflow.exceptions import MlflowException

    name = _name(settings, model)
    try:
        found = client(settings).get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} has no version {version!r}: {exc}") from exc
    return _ref(found)


def register_challenger(
    settings: Settings,
    run_id: str,
    *,
    lineage: RunLineage | None = None,
    model: str | None = None,
    artifact: str = MODEL_ARTIFACT,
) -> int:
    """Register the run's logged model as a new version and point ``challenger`` at it.

    Idempotent: a run already registered keeps its version (the alias is re-pointed).
    Tags carry lineage only: the run id, its data interval and params fingerprint, and
    ``lineage``'s Airflow tags (the task try that registered it) when given. ``artifact``
    is the run's artifact the version points at (the ranker registers its ``saved_model``).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        run = mlflow_client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"unknown MLflow run {run_id!r}: {exc}") from exc
    if run.info.status != "FINISHED":
        raise RegistryError(f"run {run_id!r} is {run.info.status}, not FINISHED: not registering")
    name = _name(settings, model)
    existing = [
        v
        for v in _search(settings, model=name)
        if v.run_id == run_id and v.tags.get("registered_by") == "register_challenger"
    ]
    if existing:
        version = existing[0].version
        log.info("run %s already registered as %s v%d", run_id, name, version)
    else:
        mlflow.set_registry_uri(settings.mlflow_tracking_uri)
        mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
        tags = {
            "registered_by": "register_challenger",
            RUN_ID_TAG: run_id,
            **{k: v for k, v in run.data.tags.items() if k in LINEAGE_RUN_TAGS},
            **(lineage.as_tags() if lineage is not None else {}),
        }
        if artifact == MODEL_ARTIFACT:
            created = mlflow.register_model(f"runs:/{run_id}/{artifact}", name, tags=tags)
        else:  # a plain artifact folder (no MLmodel): register its location directly
            _ensure_registered_model(mlflow_client, name)
            created = mlflow_client.create_model_version(
                name, f"{run.info.artifact_uri}/{artifact}", run_id=run_id, tags=tags
            )
        version = int(created.version)
        log.info("registered run %s as %s v%d", run_id, name, version)
    mlflow_client.set_registered_model_alias(name, CHALLENGER, str(version))
    return version


def _ensure_registered_model(mlflow_client: Any, name: str) -> None:
    """Create the registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        mlflow_client.create_registered_model(name)


def run_metrics(settings: Settings, run_id: str) -> dict[str, float]:
    """The training run's own rank metrics (``HR@10``, ...), read from the run itself."""
    from mlflow.exceptions import MlflowException

    try:
        run = client(settings).get_run(run_id)
    except MlflowException:
        return {}
    return {
        k.replace("_at_", "@"): float(v)
        for k, v in run.data.metrics.items()
        if "_at_" in k and "." not in k
    }


def run_url_of(settings: Settings, run_id: str) -> str:
    """The run's page in the MLflow UI, or "" when the run is unknown."""
    from mlflow.exceptions import MlflowException

    from tasks.model.training.tracking import run_url

    if not run_id:
        return ""
    try:
        run = client(settings).get_run(run_id)
    except MlflowException:
        return ""
    return run_url(settings, run.info.experiment_id, run_id)


def resolve_alias(
    settings: Settings, alias: str = CHAMPION, *, model: str | None = None
) -> ModelRef | None:
    """The version an alias points at right now, or None when it is unset."""
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).get_model_version_by_alias(_name(settings, model), alias)
    except MlflowException:
        return None
    return _ref(found)


def download_saved_model(settings: Settings, ref: ModelRef, dst: Path | str) -> Path:
    """Download the version's SavedModel directory into ``dst`` and return its path."""
    import mlflow

    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    path = mlflow.artifacts.download_artifacts(
        run_id=ref.run_id,
        artifact_path=SAVED_MODEL_ARTIFACT,
        dst_path=str(dst),
        tracking_uri=settings.mlflow_tracking_uri,
    )
    out = Path(path)
    if not (out / "saved_model.pb").exists():
        raise RegistryError(f"version {ref.version} artifact {out} holds no saved_model.pb")
    log.info("downloaded v%d SavedModel to %s", ref.version, out)
    return out


def set_champion(
    settings: Settings, version: int, *, reason: str, model: str | None = None
) -> int | None:
    """Point ``champion`` at ``version``, remembering the replaced champion; returns it."""
    name = _name(settings, model)
    target = get_version(settings, version, model=name)
    current = resolve_alias(settings, CHAMPION, model=name)
    mlflow_client = client(settings)
    previous = current.version if current is not None else None
    if previous is not None and previous != target.version:
        mlflow_client.set_model_version_tag(
            name, str(target.version), PREVIOUS_CHAMPION_TAG, str(previous)
        )
    mlflow_client.set_model_version_tag(name, str(target.version), GATE_REASON_TAG, reason)
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(target.version))
    _append_champion_history(settings, target.version, model=name)
    log.info("%s champion -> v%d (was %s): %s", name, target.version, previous, reason)
    return previous


def champion_history(settings: Settings, *, model: str | None = None) -> list[int]:
    """Champion versions in the order this package set them (oldest first)."""
    found = client(settings).get_registered_model(_name(settings, model))
    raw = (found.tags or {}).get(CHAMPION_HISTORY_TAG, "")
    return [int(v) for v in raw.split(",") if v.strip()]


def _append_champion_history(settings: Settings, version: int, *, model: str | None) -> None:
    history = champion_history(settings, model=model)[-49:] + [int(version)]
    client(settings).set_registered_model_tag(
        _name(settings, model), CHAMPION_HISTORY_TAG, ",".join(map(str, history))
    )


def rollback(settings: Settings, *, model: str | None = None) -> int:
    """Make the previous champion (the current champion's ``previous_champion``) champion."""
    name = _name(settings, model)
    current = resolve_alias(settings, CHAMPION, model=name)
    if current is None:
        raise RegistryError(f"{name}: no champion to roll back from")
    previous = current.tags.get(PREVIOUS_CHAMPION_TAG)
    if not previous:
        # The alias was moved by hand (MLflow UI) when the current champion is not the
        # last one we recorded: that last one is what was champion before the hand move.
        history = champion_history(settings, model=name)
        if not history or history[-1] == current.version:
            raise RegistryError(f"champion v{current.version} has no previous champion recorded")
        previous = str(history[-1])
    version = int(previous)
    get_version(settings, version, model=name)
    mlflow_client = client(settings)
    mlflow_client.set_registered_model_alias(name, CHAMPION, str(version))
    mlflow_client.set_model_version_tag(name, str(current.version), "rolled_back_to", str(version))
    _append_champion_history(settings, version, model=name)
    log.info("%s: rolled back champion v%d -> v%d", name, current.version, version)
    return version


def _search(settings: Settings, *, model: str | None = None) -> list[ModelRef]:
    from mlflow.exceptions import MlflowException

    try:
        found = client(settings).search_model_versions(f"name = '{_name(settings, model)}'")
    except MlflowException:
        return []
    return sorted((_ref(v) for v in found), key=lambda r: r.version)


def list_versions(settings: Settings, *, model: str | None = None) -> list[ModelRef]:
    """Every version, oldest first, with its aliases (read fresh) and tags."""
    refs = _search(settings, model=model)
    # search results may omit aliases on some stores: fill them from the live alias lookup.
    live: dict[int, list[str]] = {}
    for alias in (CHAMPION, CHALLENGER):
        ref = resolve_alias(settings, alias, model=model)
        if ref is not None:
            live.setdefault(ref.version, []).append(alias)
    return [
        ModelRef(
            version=r.version,
            run_id=r.run_id,
            source=r.source,
            aliases=tuple(sorted(set(r.aliases) | set(live.get(r.version, [])))),
            tags=r.tags,
        )
        for r in refs
    ]
