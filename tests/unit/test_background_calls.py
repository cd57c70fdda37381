"""tasks.data.bulk.BackgroundCalls: the ordered writer thread extraction and sampling share."""

from __future__ import annotations

import threading
import time

import pytest

from tasks.data.bulk import BackgroundCalls


def test_calls_run_in_order_on_one_other_thread() -> None:
    seen: list[tuple[int, str]] = []
    with BackgroundCalls("t", depth=1) as calls:
        for i in range(5):
            calls.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    assert seen == [(i, "t") for i in range(5)]


def test_first_error_stops_later_calls_and_is_raised_on_close() -> None:
    seen: list[int] = []
    calls = BackgroundCalls("t")
    calls.submit(lambda: seen.append(1))
    calls.submit(lambda: 1 / 0)
    calls.submit(lambda: seen.append(3))
    with pytest.raises(ZeroDivisionError):
        calls.close()
    assert seen == [1]


def test_error_in_the_block_drops_queued_calls_and_is_not_masked() -> None:
    started = threading.Event()
    seen: list[int] = []

    def running_call() -> None:  # still running when the caller's block fails
        started.set()
        while not calls._cancelled:
            time.sleep(0.01)
        seen.append(1)

    with pytest.raises(KeyError), BackgroundCalls("t", depth=2) as calls:
        calls.submit(running_call)
        started.wait(5)
        calls.submit(lambda: seen.append(2))  # queued behind the running call
        raise KeyError("caller failed")
    assert seen == [1]  # the queued call was dropped, not run after the caller gave up
