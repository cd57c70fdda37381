"""``scripts/stack.py``'s restart of one part: a port left in ``TIME_WAIT`` by a part just
stopped is free to its next start (the fault tests stop and start MLflow, Redis, Milvus and
the TF-Serving stand-in), a port someone listens on is not; a stopped part started by this
process (a zombie until reaped) no longer counts as running."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import stack  # noqa: E402  (scripts/stack.py)


def _time_wait_port() -> int:
    """A port whose server closed an accepted connection first (server side in TIME_WAIT)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server closes first: its end goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    server.close()
    return int(port)


def test_a_port_in_time_wait_is_bindable_by_the_restarted_part() -> None:
    port = _time_wait_port()
    assert not stack.ui._port_free(port)  # the old check: a plain bind fails on TIME_WAIT
    assert stack._port_bindable(port)


def test_a_port_with_a_listener_is_not_bindable() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not stack._port_bindable(listener.getsockname()[1])


def test_a_stopped_child_group_is_not_running() -> None:
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        assert stack._group_running(child.pid)
        child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while stack._group_running(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not stack._group_running(child.pid)  # reaped, not a zombie group
    finally:
        child.kill()
