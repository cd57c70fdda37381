"""``recsys-registry`` / ``python -m model_registry.cli``: list, promote, rollback.

* ``list``: every version with its aliases, data interval, its run's metrics and the
  gate's reason.
* ``promote VERSION``: run the promotion gate for VERSION (``--force`` moves the alias
  without the gate, recording the reason; ``--metric``/``--margin`` tune the gate).
* ``rollback``: the previous champion becomes champion again.

``--model ranker`` (before the command) works on the ranker's registered model instead of
the two-tower's; ``recsys_deploy`` then deploys whichever champion moved. The ranker's gate
needs the recall channels (``tasks.serving``), so it runs in ``recsys_train``; here a ranker
can only be promoted with ``--force``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from model_registry.registry import (
    RegistryError,
    list_versions,
    rollback,
    run_metrics,
    set_champion,
)
from tasks.core.settings import load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-registry", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        choices=("two_tower", "ranker"),
        default="two_tower",
        help="which registered model (default: the two-tower)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("list", help="versions with metrics and aliases")
    show.add_argument("--json", action="store_true", help="one JSON object per line")
    promote = sub.add_parser("promote", help="gate (or force) a version to champion")
    promote.add_argument("version", type=int)
    promote.add_argument("--metric", default="HR@10")
    promote.add_argument("--margin", type=float, default=0.0)
    promote.add_argument("--force", action="store_true", help="skip the gate")
    sub.add_parser("rollback", help="previous champion becomes champion")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = load_settings()
    ranker = args.model == "ranker"
    model = settings.ranker_registered_model_name if ranker else settings.registered_model_name
    try:
        if args.command == "list":
            for ref in list_versions(settings, model=model):
                # Read from the run (versions no longer copy metrics into tags).
                metrics = {
                    k.replace("@", "_at_"): v for k, v in run_metrics(settings, ref.run_id).items()
                }
                row = {
                    "version": ref.version,
                    "aliases": list(ref.aliases),
                    "run_id": ref.run_id,
                    "data_interval_end": ref.tags.get("data_interval_end", ""),
                    "metrics": metrics,
                    "gate_reason": ref.tags.get("gate_reason", ""),
                }
                if args.json:
                    print(json.dumps(row, sort_keys=True))
                else:
                    aliases = ",".join(ref.aliases) or "-"
                    shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
                    print(f"v{ref.version}\t{aliases}\t{row['data_interval_end']}\t{shown}")
        elif args.command == "promote":
            if args.force:
                previous = set_champion(
                    settings, args.version, reason="forced from recsys-registry CLI", model=model
                )
                print(f"champion -> v{args.version} (was {previous})")
            elif ranker:
                print(
                    "error: the ranker's gate runs in recsys_train (it needs the recall "
                    "channels); use --force to move the alias by hand",
                    file=sys.stderr,
                )
                return 2
            else:
                from model_registry.gate import promote_if_better

                decision = promote_if_better(
                    settings, args.version, metric=args.metric, margin=args.margin
                )
                print(json.dumps(decision.as_dict(), sort_keys=True))
                return 0 if decision.promoted else 3
        elif args.command == "rollback":
            print(f"champion -> v{rollback(settings, model=model)}")
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
