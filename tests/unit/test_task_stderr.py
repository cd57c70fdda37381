"""Task stderr reaches the task log at each line's real level (issue 13).

Airflow's task supervisor logs every line of a task's fd 2 (a socket) as ERROR; a successful
``train`` showed TensorFlow's C++ start-up lines and MLflow's prints as errors.
``plugins.task_stderr`` puts a pipe on fd 2 and logs each line at the level it states.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.task_stderr import LineGrouper, classify, install_stderr_forwarding

REPO = Path(__file__).resolve().parents[2]
INFO, WARN, ERR, CRIT = logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL


@pytest.mark.parametrize(
    ("line", "level"),
    [
        # TensorFlow 2.21 on a CPU machine (captured here), glog/absl prefix: severity letter
        (
            "I0000 00:00:1796094862.186212   10490 port.cc:153] oneDNN custom operations are on.",
            INFO,
        ),
        ("W0000 00:00:1796094862.1 10490 loader.cc:1] could not load libcudart", WARN),
        ("E0000 00:00:1796094862.1 10490 dso_loader.cc:9] something really failed", ERR),
        ("F0000 00:00:1796094862.1 10490 check.cc:9] Check failed: x", CRIT),
        ("W1201 03:13:07.123456 140 file.cc:12] classic glog", WARN),
        # benign: no GPU driver on a CPU machine is how we run, not an error
        (
            "E0000 00:00:1796094885.437596   10490 cuda_platform.cc:52] failed call to cuInit: "
            "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
            INFO,
        ),
        (
            "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
            INFO,
        ),
        # leading level words, with or without a timestamp in front
        ("WARNING: something odd", WARN),
        ("ERROR: it broke", ERR),
        ("INFO: fine", INFO),
        ("WARNING:tensorflow:5 out of the last 5 calls triggered retracing", WARN),
        ("2026/12/01 03:13:07 WARNING mlflow.models.model: Input example should be provided", WARN),
        ("[2026-12-01T03:13:07.123Z] ERROR lost connection", ERR),
        ("error: compiler said no", ERR),
        ("Warning: deprecated flag", WARN),
        # Python warnings format
        ("/x/site-packages/keras/src/layer.py:12: UserWarning: Do not pass input_shape", WARN),
        ("/a.py:3: DeprecationWarning: old", WARN),
        ("Traceback (most recent call last):", ERR),
        # everything else: INFO (not ERROR)
        ("Successfully registered model 'recsys_two_tower'.", INFO),
        ("Created version '3' of model 'recsys_two_tower'.", INFO),
        (" 50%|█████     | 5/10 [00:01<00:01,  4.50it/s]", INFO),
        ("To enable the following instructions: AVX2 FMA, in other operations, rebuild", INFO),
        ("Errors are counted below", INFO),
        ("INFORMATION follows", INFO),
    ],
)
def test_classify_states_each_lines_own_level(line: str, level: int) -> None:
    assert logging.getLevelName(classify(line)) == logging.getLevelName(level)


def _feed(lines: list[str]) -> list[tuple[int | None, str]]:
    grouper = LineGrouper()
    out = [record for line in lines for record in grouper.feed(line)]
    return out + grouper.flush()


def test_a_chained_traceback_is_one_error_record_and_warnings_keep_their_source_line() -> None:
    tb = [
        "Traceback (most recent call last):",
        '  File "/t.py", line 2, in <module>',
        "    1 / 0",
        "ZeroDivisionError: division by zero",
        "",
        "During handling of the above exception, another exception occurred:",
        "",
        "Traceback (most recent call last):",
        '  File "/t.py", line 4, in <module>',
        "    raise ValueError('boom')",
        "ValueError: boom",
    ]
    warning = ["/t.py:9: UserWarning: careful", "  warnings.warn('careful')"]
    records = _feed(["before", *tb, "", *warning, "after"])
    assert records == [
        (INFO, "before"),
        (ERR, "\n".join(tb)),
        (WARN, "\n".join(warning)),
        (INFO, "after"),
    ]


def test_logging_errors_go_raw_and_blank_lines_are_dropped() -> None:
    block = ["--- Logging error ---", "Traceback (most recent call last):", "  x", "Message: 'm'"]
    records = _feed(["", *block, "Arguments: ()", "", "  indented stays INFO"])
    assert records == [
        (None, "\n".join([*block, "Arguments: ()"])),
        (INFO, "  indented stays INFO"),
    ]


# A task process as the supervisor starts it: fd 2 is a socket; Python logging goes elsewhere
# (here: a JSON-lines file). Writes C-level to fd 2 and Python-level to sys.stderr.
CHILD = r"""
import json, logging, os, sys, traceback

class ToFile(logging.Handler):
    def __init__(self, path):
        super().__init__()
        self.file = open(path, "a", buffering=1)
    def emit(self, record):
        self.file.write(json.dumps([record.name, record.levelname, record.getMessage()]) + "\n")

mode, records = sys.argv[1], sys.argv[2]
logging.root.setLevel(logging.INFO)
if mode == "stream_on_fd2":
    logging.root.addHandler(logging.StreamHandler(sys.stderr))
if mode == "unrelated_stream_on_fd2":  # as Airflow's config leaves on flask_appbuilder
    logging.getLogger("flask_appbuilder").addHandler(logging.StreamHandler(sys.stderr))
logging.root.addHandler(ToFile(records))

from plugins.task_stderr import install_stderr_forwarding

installed = install_stderr_forwarding()
assert install_stderr_forwarding() == installed  # idempotent
print(json.dumps({"installed": installed}), flush=True)
if mode == "stream_on_fd2":
    sys.exit(0)
if mode == "unrelated_stream_on_fd2":
    logging.getLogger("flask_appbuilder").warning("WARNING: via an unrelated stderr handler")
    sys.exit(0)
os.write(2, b"I0000 00:00:1 123 cpu_feature_guard.cc:1] hello\n")
os.write(2, b"W0000 00:00:1 123 loader.cc:2] careful\n")
os.write(2, b"E0000 00:00:1 123 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)\n")
os.write(2, b"E0000 00:00:1 123 op.cc:3] a real C++ error\n")
os.write(2, b"Successfully registered model 'x'.\n")
try:
    raise ValueError("boom")
except ValueError:
    traceback.print_exc()
print("tail without newline", end="", file=sys.stderr)
if mode == "fallback":
    import time
    print(file=sys.stderr)
    time.sleep(1)  # the lines above are logged
    for handler in list(logging.root.handlers):
        logging.root.removeHandler(handler)  # nowhere to log: the line must reach the socket
    print("after the handlers are gone", file=sys.stderr)
"""


def _run_child(tmp_path: Path, mode: str) -> tuple[dict[str, bool], str, list[list[str]]]:
    """Run CHILD with fd 2 = one end of a socketpair; return its stdout, socket bytes, records."""
    records = tmp_path / "records.jsonl"
    script = tmp_path / "task.py"  # a file, so that tracebacks show source lines
    script.write_text(CHILD)
    parent_end, child_end = socket.socketpair()
    with parent_end:
        try:
            proc = subprocess.Popen(
                [sys.executable, str(script), mode, str(records)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=child_end.fileno(),
                text=True,
            )
        finally:
            child_end.close()
        received = b""
        parent_end.settimeout(60)
        while chunk := parent_end.recv(65536):
            received += chunk
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, received.decode()
    lines = records.read_text().splitlines() if records.exists() else []
    return json.loads(out), received.decode(), [json.loads(line) for line in lines]


def test_supervised_stderr_is_logged_once_at_its_level_and_not_on_the_socket(
    tmp_path: Path,
) -> None:
    state, on_socket, records = _run_child(tmp_path, "normal")
    assert state == {"installed": True}
    assert on_socket == ""  # the supervisor would have shown each of these as ERROR
    tb = [r for r in records if r[2].startswith("Traceback")]
    assert len(tb) == 1
    assert tb[0][:2] == ["task.stderr", "ERROR"]
    assert tb[0][2].splitlines()[-1] == "ValueError: boom"
    assert 'raise ValueError("boom")' in tb[0][2]
    assert [r for r in records if r not in tb] == [
        ["task.stderr", "INFO", "I0000 00:00:1 123 cpu_feature_guard.cc:1] hello"],
        ["task.stderr", "WARNING", "W0000 00:00:1 123 loader.cc:2] careful"],
        [
            "task.stderr",
            "INFO",
            "E0000 00:00:1 123 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR (303)",
        ],
        ["task.stderr", "ERROR", "E0000 00:00:1 123 op.cc:3] a real C++ error"],
        ["task.stderr", "INFO", "Successfully registered model 'x'."],
        # written last, without a newline: logged at exit, not lost
        ["task.stderr", "INFO", "tail without newline"],
    ]
    assert records.index(tb[0]) == 5  # in the order written


def test_a_line_that_cannot_be_logged_falls_back_to_the_socket(tmp_path: Path) -> None:
    state, on_socket, records = _run_child(tmp_path, "fallback")
    assert state == {"installed": True}
    assert on_socket == "after the handlers are gone\n"
    assert ["task.stderr", "INFO", "tail without newline"] in records
    assert not any("after the handlers" in r[2] for r in records)


def test_nothing_is_installed_when_a_handler_of_our_records_writes_to_fd2(tmp_path: Path) -> None:
    # records of that handler would come back through the pipe, forever
    state, on_socket, _ = _run_child(tmp_path, "stream_on_fd2")
    assert state == {"installed": False}
    assert on_socket == ""


def test_a_stderr_handler_elsewhere_does_not_stop_forwarding(tmp_path: Path) -> None:
    # a worker's task process inherits one on flask_appbuilder; our records never reach it
    state, on_socket, records = _run_child(tmp_path, "unrelated_stream_on_fd2")
    assert state == {"installed": True}
    assert on_socket == ""
    # Two threads log these (the caller's propagation to root, and the forwarder reading the
    # pipe), so their order is not fixed: a loaded machine has shown either.
    assert sorted(records) == [
        ["flask_appbuilder", "WARNING", "WARNING: via an unrelated stderr handler"],
        ["task.stderr", "WARNING", "WARNING: via an unrelated stderr handler"],
    ]


def test_nothing_is_installed_when_fd2_is_not_a_socket() -> None:
    # pytest, dag.test() and a terminal: fd 2 is a file, pipe or tty
    assert install_stderr_forwarding() is False
