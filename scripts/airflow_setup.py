"""Create the Airflow pools the DAGs use (idempotent). Run after `airflow db migrate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from plugins.dag_defaults import POOLS  # noqa: E402


def main() -> None:
    airflow = str(Path(sys.executable).with_name("airflow"))
    for name, (slots, description) in POOLS.items():
        subprocess.run(
            [airflow, "pools", "set", name, str(slots), description],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(f"pool {name}: {slots} slots")


if __name__ == "__main__":
    main()
