"""Third-party stderr in a task log at its real level, not as red ERROR lines (issue 13).

Under Airflow 3's task supervisor a task process's fd 2 is a socket whose every line the
supervisor logs as ERROR (``task.stderr``), while Python logging travels on a separate
channel with its real level. TensorFlow's C++ start-up lines (``I0000 ...``, ``W0000 ...``,
``E0000 ... failed call to cuInit`` on a machine without GPU) and MLflow's
``Successfully registered model ...`` prints so showed as errors in successful tasks.

:func:`install_stderr_forwarding` puts a pipe on fd 2 (C code and ``sys.stderr`` alike write
there) and a daemon thread turns each line into a ``task.stderr`` log record at the level the
line itself states (glog/absl prefix, a leading level word, the Python warnings format, a
traceback as one ERROR record; anything else INFO). It installs only under the supervisor (fd 2
is a socket) and only when no logging handler our records reach writes to fd 2 (that would
loop). Lines that
cannot be logged go to the original socket (last-chance fallback), as they did before.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import stat
import threading

#: Records go to this logger (the name the supervisor gave raw stderr).
LOGGER_NAME = "task.stderr"

# glog / absl C++ (TensorFlow, gRPC, XLA): ``I0000 00:00:1796094862.186212   10490 port.cc:153] ...``
# (severity letter + MMDD, then a time). F is fatal.
_GLOG = re.compile(r"^([IWEF])\d{4} +\d\d:\d\d:[\d.]+ ")
_GLOG_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# An optional leading timestamp (``2026/12/01 03:13:07``, ``[2026-12-01T03:13:07.123Z]``) ...
_TIMESTAMP = re.compile(
    r"^\[?\d{4}[-/]\d\d[-/]\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?\s+"
)
# ... then a level word: upper case (``WARNING: ...``, ``ERROR ...``, ``[INFO] ...``), or any case
# when a colon follows (``Error: ...``, ``warning: ...``).
_LEVEL_WORD = re.compile(r"^\[?(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)\]?(?=[\s:]|$)")
_LEVEL_WORD_COLON = re.compile(r"^(debug|info|warning|warn|error|critical|fatal):", re.IGNORECASE)
_WORD_LEVELS = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "WARN": logging.WARNING,
    "ERROR": logging.ERROR,
    "CRITICAL": logging.CRITICAL,
    "FATAL": logging.CRITICAL,
}
# ``warnings.showwarning``'s format: ``/path/mod.py:12: DeprecationWarning: message``.
_PY_WARNING = re.compile(r"^.+:\d+: \w*Warning: ")
_TRACEBACK_STARTS = ("Traceback (most recent call last):", "+ Exception Group Traceback")
# Lines that continue a traceback after its exception line (chained exceptions).
_CHAIN_MARKERS = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
# What ``logging.Handler.handleError`` writes to stderr: sent raw to the socket, never logged
# again (logging it could fail the same way, forever).
_LOGGING_ERROR = "--- Logging error ---"

#: Lines that state a higher level than they deserve, with why; matched case-insensitively.
BENIGN: tuple[tuple[str, int], ...] = (
    # TensorFlow probes CUDA at import; on our CPU-only machines there is no driver, so cuInit
    # fails by design (TF then runs on CPU, as intended). Not an error of the task.
    ("failed call to cuinit", logging.INFO),
    # absl's notice that logging before its init goes to stderr: a fact about logging itself.
    ("all log messages before absl::initializelog() is called are written to stderr", logging.INFO),
)

#: Seconds a pending multi-line record (traceback, warning) waits for its next line.
GROUP_IDLE_S = 0.3
#: A partial line longer than this is emitted as it is (bounds memory).
MAX_LINE_BYTES = 64 * 1024


def classify(line: str) -> int:
    """The logging level one stderr line states about itself; INFO when it states none."""
    level = _stated_level(line)
    lowered = line.lower()
    for needle, benign_level in BENIGN:
        if needle in lowered:
            return min(level, benign_level)
    return level


def _stated_level(line: str) -> int:
    if match := _GLOG.match(line):
        return _GLOG_LEVELS[match.group(1)]
    if _PY_WARNING.match(line):
        return logging.WARNING
    stripped = line.strip()
    if stripped.startswith(_TRACEBACK_STARTS):
        return logging.ERROR
    rest = _TIMESTAMP.sub("", stripped, count=1)
    if match := _LEVEL_WORD.match(rest) or _LEVEL_WORD_COLON.match(rest):
        return _WORD_LEVELS[match.group(1).upper()]
    return logging.INFO


class LineGrouper:
    """Turns stderr lines into records: one per line, one per traceback or warning block.

    ``feed`` returns the records a line completes; ``flush`` the pending one (on idle or EOF).
    A record is ``(level, text)``; level ``None`` means "send raw to the original stderr".
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._level: int | None = logging.INFO
        # None | "traceback" (frames) | "after_exc" (exception line seen) | "chain" | "warning"
        # | "logging_error"
        self._kind: str | None = None

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def flush(self) -> list[tuple[int | None, str]]:
        """The pending record, if any (trailing blank lines dropped)."""
        lines = self._lines
        while lines and not lines[-1].strip():
            lines.pop()
        out = [(self._level, "\n".join(lines))] if lines else []
        self._lines, self._kind = [], None
        return out

    def feed(self, line: str) -> list[tuple[int | None, str]]:
        """Take one line (without its newline); return the records it completes."""
        kind = self._kind
        stripped = line.strip()
        indented = line[:1].isspace()
        if kind == "logging_error":
            self._lines.append(line)
            return self.flush() if line.startswith("Arguments: ") else []
        if kind == "traceback":
            self._lines.append(line)
            if not indented and stripped and not stripped.startswith(_TRACEBACK_STARTS):
                self._kind = "after_exc"  # the exception line ends the frames
            return []
        if kind in ("after_exc", "chain"):
            if not stripped or stripped in _CHAIN_MARKERS:
                self._lines.append(line)
                self._kind = "chain" if stripped in _CHAIN_MARKERS else kind
                return []
            if kind == "chain" and stripped.startswith(_TRACEBACK_STARTS):
                self._lines.append(line)
                self._kind = "traceback"
                return []
        if kind == "warning" and indented and stripped:
            self._lines.append(line)  # the source line under a warning
            return []
        out = self.flush() if self._lines else []
        if not stripped:
            return out  # blank lines carry nothing
        if line.startswith(_LOGGING_ERROR):
            self._start(line, None, "logging_error")
        elif stripped.startswith(_TRACEBACK_STARTS):
            self._start(line, logging.ERROR, "traceback")
        elif _PY_WARNING.match(line):
            self._start(line, classify(line), "warning")
        else:
            out.append((classify(line), line))
        return out

    def _start(self, line: str, level: int | None, kind: str) -> None:
        self._lines, self._level, self._kind = [line], level, kind


def _writes_to_fd2(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    try:
        return stream is not None and stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _chain_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers a record of ``logger`` reaches (what ``Logger.callHandlers`` walks).

    Only these matter for the loop guard: a stderr handler on an unrelated logger (a worker
    inherits one on ``flask_appbuilder`` from Airflow's logging config) never sees our records.
    """
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers += current.handlers
        current = current.parent if current.propagate else None
    return handlers


class _Forwarder:
    """The pipe on fd 2, the reader thread and the saved original fd 2."""

    def __init__(self) -> None:
        self.logger = logging.getLogger(LOGGER_NAME)
        self.pid = os.getpid()
        self.saved_fd = os.dup(2)  # the supervisor's socket: last-chance fallback
        self.read_fd, self.write_fd = os.pipe()
        os.set_inheritable(self.saved_fd, False)
        self.stop_requested = threading.Event()
        self.grouper = LineGrouper()
        self.thread = threading.Thread(target=self._run, name="task-stderr-forwarder", daemon=True)

    def start(self) -> None:
        os.dup2(self.write_fd, 2)  # C code and sys.stderr (fd 2) now write into the pipe
        self.thread.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        """Put the original fd 2 back and log what is still in the pipe (at exit)."""
        import sys

        for stream in (sys.stderr, sys.__stderr__):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                pass
        if self.stop_requested.is_set() or os.getpid() != self.pid:
            return  # stopped already, or a forked child's exit: the pipe is its parent's
        os.dup2(self.saved_fd, 2)  # later writes go straight to the supervisor
        os.close(self.write_fd)  # EOF for the reader, unless a child process still holds fd 2
        self.stop_requested.set()
        self.thread.join(timeout)

    def _run(self) -> None:
        buffer = b""
        try:
            while True:
                wait = GROUP_IDLE_S if self.grouper.pending else 1.0
                ready, _, _ = select.select([self.read_fd], [], [], wait)
                if not ready:
                    self._emit(self.grouper.flush())
                    if self.stop_requested.is_set():
                        break  # a child process keeps the pipe open: nothing more will come
                    continue
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    break
                buffer = self._take_lines(buffer + chunk)
            if buffer:
                self._emit(self.grouper.feed(_decode(buffer)))
            self._emit(self.grouper.flush())
        except BaseException:  # the forwarder must never lose stderr: hand fd 2 back
            os.dup2(self.saved_fd, 2)
            if buffer:
                _write_all(self.saved_fd, buffer)
            raise
        finally:
            os.close(self.read_fd)

    def _take_lines(self, buffer: bytes) -> bytes:
        *lines, rest = buffer.split(b"\n")
        for raw in lines:
            self._emit(self.grouper.feed(_decode(raw)))
        redraw = rest.rstrip(b"\r").rfind(b"\r")
        if redraw > 0:  # a progress bar redrawing itself: only its latest state counts
            rest = rest[redraw:]
        if len(rest) > MAX_LINE_BYTES:
            self._emit(self.grouper.feed(_decode(rest)))
            rest = b""
        return rest

    def _emit(self, records: list[tuple[int | None, str]]) -> None:
        for level, text in records:
            handlers = _chain_handlers(self.logger)
            if level is None or not handlers or any(_writes_to_fd2(h) for h in handlers):
                # Nowhere to log it without looping through fd 2: the original stderr.
                _write_all(self.saved_fd, (text + "\n").encode("utf-8", errors="replace"))
            else:
                # the text is the message itself (no args: a '%' in it is never formatted)
                self.logger.log(level, text)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _decode(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    if "\r" in text:  # what a terminal would show: the last non-empty redraw
        text = next((part for part in reversed(text.split("\r")) if part), "")
    return text.rstrip()


_lock = threading.Lock()
_forwarder: _Forwarder | None = None


def install_stderr_forwarding() -> bool:
    """Forward fd 2 to logging at each line's real level when under Airflow's task supervisor.

    Installs only when fd 2 is a socket (the supervisor's stderr channel; ``dag.test()``,
    pytest and a terminal are left alone) and no logging handler writes to fd 2 (the records
    would come back through the pipe; with none at all, ``logging.lastResort`` would write them
    to stderr). Idempotent; returns whether forwarding is active.
    """
    global _forwarder
    with _lock:
        if _forwarder is not None and _forwarder.pid == os.getpid():
            return True
        # (a forked child has no reader thread: it decides afresh for its own fd 2)
        try:
            if not stat.S_ISSOCK(os.fstat(2).st_mode):
                return False
        except OSError:
            return False
        handlers = _chain_handlers(logging.getLogger(LOGGER_NAME))
        if not handlers or any(_writes_to_fd2(h) for h in handlers):
            return False  # nowhere to log to, or the records would come back through fd 2
        forwarder = _Forwarder()
        forwarder.start()
        _forwarder = forwarder
        return True
