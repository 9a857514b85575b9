"""The service's log: one line per record on stderr, written by a thread (never by the
event loop), and nothing queued is lost when the process ends."""

from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from component.__main__ import main, setup_logging, stop_logging
from storage.instance_lock import InstanceLock

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<message>.*)$")


SWITCHES = ("logThreads", "logProcesses", "logMultiprocessing", "_srcfile")


@pytest.fixture
def root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    switches = {name: getattr(logging, name) for name in SWITCHES}
    yield root
    stop_logging()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in switches.items():  # pytest's own log reports name the call site
        setattr(logging, name, value)


def test_other_handlers_see_the_record_as_logged_and_the_line_the_values_at_log_time(root_logger, capsys) -> None:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    setup_logging("info")
    root_logger.addHandler(Keep())
    jids = ["alice@example.test"]
    try:
        raise KeyError("gone")
    except KeyError:
        logging.getLogger("component").warning("roster of %s", jids, exc_info=True)
    jids.append("bob@example.test")  # after the call: the line keeps what was logged
    stop_logging()
    err = capsys.readouterr().err
    assert "WARNING component: roster of ['alice@example.test']" in err
    assert "KeyError: 'gone'" in err and "bob@" not in err
    assert len(seen) == 1 and seen[0].args == (jids,) and seen[0].exc_info is not None


def test_the_root_logger_gets_a_queue_handler_and_lines_keep_their_format(root_logger, capsys) -> None:
    before = list(root_logger.handlers)
    setup_logging("info")
    added = [h for h in root_logger.handlers if h not in before]
    assert len(added) == 1 and isinstance(added[0], logging.handlers.QueueHandler)
    logging.getLogger("component.login").info("login check for %s: %s", "alice@example.test", "ok")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("component").exception("housekeeping failed")
    logging.getLogger("component").debug("not at info")
    stop_logging()
    assert added[0] not in root_logger.handlers
    lines = capsys.readouterr().err.splitlines()
    first = LINE.match(lines[0])
    assert first is not None, lines
    assert first.group("level", "name", "message") == (
        "INFO", "component.login", "login check for alice@example.test: ok")
    second = LINE.match(lines[1])
    assert second is not None and second.group("level", "message") == ("ERROR", "housekeeping failed")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: boom"
    assert not any("not at info" in line for line in lines)


def test_a_blocked_stderr_does_not_block_the_caller(root_logger, monkeypatch) -> None:
    entered, release = threading.Event(), threading.Event()
    writers: list[threading.Thread] = []
    written: list[str] = []

    class SlowStderr:
        def write(self, text: str) -> int:
            writers.append(threading.current_thread())
            entered.set()
            release.wait(10)
            written.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", SlowStderr())
    setup_logging("INFO")
    logging.getLogger("component").warning("first")
    assert entered.wait(10)  # the writer thread is now stuck in write()
    logging.getLogger("component").warning("second")  # returns although stderr is blocked
    assert not release.is_set()
    release.set()
    stop_logging()
    assert writers and all(t is not threading.current_thread() for t in writers)
    # Lines may be written several to a write(): the writer gathers what is queued.
    assert [LINE.match(line).group("message") for line in "".join(written).splitlines()] == ["first", "second"]


def test_a_line_logged_right_before_exit_is_written() -> None:
    code = (
        "import logging, sys\n"
        "from component.__main__ import setup_logging\n"
        "setup_logging('INFO')\n"
        "for k in range(200):\n"
        "    logging.getLogger('component').info('line %d', k)\n"
        "logging.getLogger('component').error('the last line')\n"
        "sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    lines = result.stderr.splitlines()
    assert len(lines) == 201, result.stderr[-2000:]
    assert LINE.match(lines[-1]).group("level", "message") == ("ERROR", "the last line")


def test_a_refused_start_writes_its_reason_before_main_returns(root_logger, tmp_path: Path, capsys) -> None:
    db = tmp_path / "presence.sqlite3"
    config = tmp_path / "service.toml"
    config.write_text(
        '[component]\njid = "presence.example.test"\nsecret = "s"\n'
        f'[storage]\npath = "{db}"\n'
    )
    held = InstanceLock(db)
    held.acquire()
    try:
        assert main(["--config", str(config)]) == 2
    finally:
        held.release()
    lines = [LINE.match(line) for line in capsys.readouterr().err.splitlines()]
    assert any(m and m.group("level") == "ERROR" and m.group("message").startswith("cannot start: another service")
               for m in lines), lines


class _Stream:
    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _held_writer(lines: queue.SimpleQueue, stream: _Stream):
    """A `_LineWriter` that has written "the first line" and lingers until the returned
    event is set."""
    from component.__main__ import _LineWriter

    lingering, release = threading.Event(), threading.Event()

    class HeldWriter(_LineWriter):
        def linger(self) -> None:
            if not lingering.is_set():
                lingering.set()
                release.wait(10)

    lines.put("the first line")
    writer = HeldWriter(lines, stream)
    writer.start()
    assert lingering.wait(10)  # the line is written: the writer lingers, nobody waits on the queue
    assert stream.writes == ["the first line\n"]
    return writer, release


def test_lines_queued_while_the_writer_lingers_are_written_without_waking_it() -> None:
    """The writer thread waits on the queue (and is woken by a line) only when it has
    lingered and found nothing: a burst is written after one wake-up, not one per line."""

    class CountingQueue(queue.SimpleQueue):
        waits = 0

        def get(self, block=True, timeout=None):
            type(self).waits += 1
            return super().get(block, timeout)

    lines, stream = CountingQueue(), _Stream()
    writer, release = _held_writer(lines, stream)
    for k in range(100):
        lines.put(f"line {k}")
    release.set()
    writer.stop()
    assert "".join(stream.writes).splitlines() == ["the first line"] + [f"line {k}" for k in range(100)]
    # The first line's wait, one that found the burst, perhaps one for stop()'s None:
    # not one per line.
    assert CountingQueue.waits <= 3


def test_a_burst_is_written_in_one_write_not_one_per_line() -> None:
    """The writer gathers the queued lines and writes them when the queue runs dry (or
    every LOG_BATCH_LINES): a write and a flush per line cost a loaded service a system
    call and a turn of the GIL per request."""
    from component.__main__ import LOG_BATCH_LINES

    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    stream = _Stream()
    writer, release = _held_writer(lines, stream)
    count = LOG_BATCH_LINES + 44
    for k in range(count):
        lines.put(f"line {k}")
    release.set()
    writer.stop()
    assert "".join(stream.writes).splitlines() == ["the first line"] + [f"line {k}" for k in range(count)]
    # The first line, then a full batch, then the rest when the queue ran dry.
    assert [text.count("\n") for text in stream.writes] == [1, LOG_BATCH_LINES, 44]


def test_lines_are_made_by_the_caller_with_the_values_at_log_time(root_logger) -> None:
    """The queue carries each record's finished line, made on the caller's side: no copy
    of the record, no formatting left for the writer thread."""
    from component.__main__ import _QueueHandler

    setup_logging("info")
    handler = next(h for h in root_logger.handlers if isinstance(h, _QueueHandler))
    record = logging.makeLogRecord({"name": "http_bridge", "levelname": "INFO", "levelno": logging.INFO,
                                    "msg": "http %s -> %d", "args": ("GET", 200)})
    line = handler.prepare(record)
    assert isinstance(line, str) and LINE.match(line).group("name", "message") == ("http_bridge", "http GET -> 200")
    assert record.args == ("GET", 200)  # the record itself is left as logged


def test_the_line_format_is_the_stdlibs_to_the_millisecond() -> None:
    from component.__main__ import LOG_FORMAT, _LineFormat

    ours, stdlib = _LineFormat(), logging.Formatter(LOG_FORMAT)
    start = 1_764_741_008.0
    for created in [start + k * 0.0999 for k in range(40)] + [start - 86400.5, start + 0.9995]:
        record = logging.makeLogRecord({"name": "component", "levelname": "INFO", "msg": "m"})
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        assert ours.format(record) == stdlib.format(record)


def test_the_request_line_is_written_as_a_record_of_http_bridge_at_info_would_be(root_logger, capsys) -> None:
    """write_request_line (the service's Services.request_log) skips the logging module's
    record and handlers: its line must still be the one LOG_FORMAT makes, in order with
    the other lines, and follow the configured level."""
    from component.__main__ import write_request_line

    setup_logging("info")
    logging.getLogger("component").info("before")
    write_request_line("http GET /healthz -> 200 in 0.3 ms request_id=r1 user=-")
    logging.getLogger("component").info("after")
    stop_logging()
    lines = capsys.readouterr().err.splitlines()
    # LINE is LOG_FORMAT's shape; the date and time are tested against the stdlib's below.
    assert [LINE.match(line).group("level", "name", "message") for line in lines] == [
        ("INFO", "component", "before"),
        ("INFO", "http_bridge", "http GET /healthz -> 200 in 0.3 ms request_id=r1 user=-"),
        ("INFO", "component", "after"),
    ]

    setup_logging("warning")
    write_request_line("http GET /healthz -> 200 in 0.3 ms request_id=r2 user=-")
    logging.getLogger("component").warning("a warning")
    stop_logging()
    assert [LINE.match(line).group("message") for line in capsys.readouterr().err.splitlines()] == ["a warning"]


def test_without_the_writer_the_request_line_goes_through_the_logging_module(caplog) -> None:
    from component.__main__ import write_request_line

    stop_logging()
    with caplog.at_level(logging.INFO, logger="http_bridge"):
        write_request_line("http GET /metrics -> 200 in 1.0 ms request_id=r3 user=-")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("http_bridge", "INFO", "http GET /metrics -> 200 in 1.0 ms request_id=r3 user=-")]
