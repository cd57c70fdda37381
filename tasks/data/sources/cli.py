"""``recsys-data`` / ``python -m tasks.data.sources.cli``: seed the business replica.

* ``generate``: synthetic Pixiv-style data (``tasks.data.sources.generate``) → replica.
* ``load --format ml-100k|movielens-csv PATH``: a MovieLens data set on disk → replica.

Both write to ``settings.replica_url`` (``RECSYS_REPLICA_URL`` / ``AIRFLOW_CONN_RECSYS_REPLICA``
/ the embedded SQLite file) unless ``--replica-url`` is given, replacing the replica's
contents atomically, and print one summary line of row counts. ``load`` also records the data
set's earliest time in the replica's ``replica_meta`` table (``data_launch``): validation
accepts rows from then on, so MovieLens (1990s) passes without setting ``RECSYS_SITE_LAUNCH``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tasks.core.settings import load_settings
from tasks.data.sources.frames import BusinessFrames, write_business_frames
from tasks.data.sources.generate import GeneratorConfig, generate_frames
from tasks.data.sources.loaders import DATASET_FORMATS, read_dataset

LOAD_DATA_HELP = (
    "MySQL/MariaDB only: bulk-load with LOAD DATA LOCAL INFILE (URL needs local_infile=1)"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and ``--help``)."""
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(
        prog="recsys-data", description="Seed the business replica (synthetic or MovieLens data)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write synthetic Pixiv-style data to the replica")
    gen.add_argument("--users", type=_positive_int, default=defaults.n_users)
    gen.add_argument("--illusts", type=_positive_int, default=defaults.n_illusts)
    gen.add_argument("--artists", type=_positive_int, default=defaults.n_artists)
    gen.add_argument("--tags", type=_positive_int, default=defaults.n_tags)
    gen.add_argument("--days", type=_positive_int, default=defaults.days)
    gen.add_argument("--start-date", default=defaults.start_date, help="YYYY-MM-DD (UTC)")
    gen.add_argument("--seed", type=int, default=defaults.seed)
    gen.add_argument(
        "--views-per-user", type=float, default=defaults.views_per_user, help="mean views per user"
    )
    gen.add_argument("--replica-url", default=None, help="SQLAlchemy URL (default: settings)")
    gen.add_argument("--load-data", action="store_true", help=LOAD_DATA_HELP)

    load = commands.add_parser("load", help="write a MovieLens data set on disk to the replica")
    load.add_argument("--format", dest="fmt", required=True, choices=DATASET_FORMATS)
    load.add_argument("path", help="the data set's folder (or one of its files)")
    load.add_argument("--replica-url", default=None, help="SQLAlchemy URL (default: settings)")
    load.add_argument("--load-data", action="store_true", help=LOAD_DATA_HELP)
    return parser


def _frames_for(args: argparse.Namespace) -> BusinessFrames:
    if args.command == "generate":
        config = GeneratorConfig(
            n_users=args.users,
            n_illusts=args.illusts,
            n_artists=args.artists,
            n_tags=args.tags,
            days=args.days,
            start_date=args.start_date,
            seed=args.seed,
            views_per_user=args.views_per_user,
        )
        return generate_frames(config)
    return read_dataset(args.path, args.fmt)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (2 on bad input, as argparse does)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    replica_url = args.replica_url or load_settings().replica_url
    try:
        frames = _frames_for(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"recsys-data {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        counts = write_business_frames(frames, replica_url, load_data=args.load_data)
    except ValueError as exc:
        print(f"recsys-data {args.command}: {exc}", file=sys.stderr)
        return 2
    target = replica_url.split("@")[-1] if "@" in replica_url else replica_url
    print(
        f"{args.command}: wrote "
        + " ".join(f"{name}={count}" for name, count in counts.items())
        + f" to {target}"
        + "".join(f"; recorded {key}={value}" for key, value in frames.meta.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
