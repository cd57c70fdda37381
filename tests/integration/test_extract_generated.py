"""End to end on the project's synthetic generator: generated data passes every suite, and
extract -> validate -> build_samples over daily intervals fills mirror and samples."""

from __future__ import annotations

import time

import sqlalchemy as sa

from tasks.core import schema
from tasks.core.db import get_engine
from tasks.data.extract import extract_interval
from tasks.data.sampling import build_samples
from tasks.data.sources.frames import write_business_frames
from tasks.data.sources.generate import GeneratorConfig, generate_frames, interval_days
from tasks.data.validate import validate_interval


def test_generated_days_pass_validation_and_sample(settings) -> None:  # type: ignore[no-untyped-def]
    config = GeneratorConfig(n_users=150, n_illusts=300, n_artists=30, n_tags=40, days=3, seed=7)
    frames = generate_frames(config)
    write_business_frames(frames, settings.replica_url)
    days = interval_days(config)
    for start, end in days:
        extract_interval(settings, start, end, run_id=f"gen-{start:%Y%m%d}")
        began = time.perf_counter()
        result = validate_interval(
            settings, start, end, run_id=f"gen-{start:%Y%m%d}", data_docs=start == days[-1][0]
        )
        seconds = time.perf_counter() - began
        assert result.success, result.failures
        assert [f for f in result.failures if f["severity"] == "fail"] == []
        assert sum(result.rows_quarantined.values()) == 0
        assert seconds < 60, f"validating {result.rows_read} took {seconds:.1f}s"
        build_samples(settings, start, end)
    assert result.data_docs.endswith("index.html")
    engine = get_engine(settings.recsys_db_url)
    with engine.connect() as conn:
        mirrored = conn.execute(
            sa.select(sa.func.count()).select_from(schema.mirror_interactions)
        ).scalar_one()
        positives = conn.execute(
            sa.select(sa.func.count())
            .select_from(schema.samples)
            .where(schema.samples.c.label == 1)
        ).scalar_one()
    period_start, period_end = days[0][0], days[-1][1]
    in_period = frames.interactions[
        (frames.interactions.create_time >= period_start)
        & (frames.interactions.create_time < period_end)
    ]
    assert mirrored == len(in_period)
    expected_positive_pairs = in_period[in_period.label == 1][["user_id", "illust_id"]]
    assert positives == len(expected_positive_pairs.drop_duplicates())
