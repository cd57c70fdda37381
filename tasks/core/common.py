"""Small helpers every stage shares: time normalisation, results for XCom, logging."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import Any


def to_naive_utc(value: datetime | str) -> datetime:
    """Normalise an Airflow interval bound (aware, any zone, or ISO string) to naive UTC.

    The databases store naive UTC DATETIMEs; every comparison goes through here.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError(f"expected a datetime, got {value!r}")
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def check_interval(start: datetime | str, end: datetime | str) -> tuple[datetime, datetime]:
    """Normalise and check a half-open data interval [start, end)."""
    s, e = to_naive_utc(start), to_naive_utc(end)
    if not s < e:
        raise ValueError(f"data interval must have start < end, got [{s}, {e})")
    return s, e


class StageResult:
    """Mixin for frozen result dataclasses: ``as_dict()`` is what goes into XCom."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif hasattr(value, "__fspath__"):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out


def get_logger(name: str) -> logging.Logger:
    """Module logger; under Airflow its records land in the task log."""
    return logging.getLogger(f"recsys4pix.{name}")


#: Environment read by third-party libraries at import: their chatter on stderr (which
#: Airflow's task log shows as ERROR lines) is turned down to real problems.
QUIET_ENV: dict[str, str] = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow C++: errors only
    "GRPC_VERBOSITY": "ERROR",
    "MLFLOW_CONFIGURE_LOGGING": "false",  # no stderr handler of MLflow's own: log records propagate
    "TQDM_DISABLE": "1",  # progress bars on stderr; progress is logged as INFO lines instead
}
#: Loggers of libraries that log every step at INFO; they keep WARNING and above.
NOISY_LOGGERS = ("absl", "mlflow", "alembic", "great_expectations", "tensorflow", "h5py", "urllib3")


def quiet_third_party() -> None:
    """Route third-party stderr and warnings to their real level in the task log.

    Python ``warnings`` become ``py.warnings`` WARNING records (not raw stderr);
    TensorFlow/gRPC C++ logging, MLflow's own stderr handler and tqdm bars are turned off
    through their environment variables (call before those libraries are imported);
    chatty library loggers keep WARNING and above. Idempotent; ``os.environ`` values
    someone set on purpose win.
    """
    import os

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.captureWarnings(True)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
