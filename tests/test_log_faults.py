"""A log that cannot be written costs log lines, never the server or its graceful stop;
a log that is not a regular file (a pipe, a FIFO, a device) is written as it is."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from server.observe.events import event
from server.observe.logger import LogActor
from server.observe.sinks import RotatingGzipFile
from server.observe.stats import Stats
from tests.helpers import ROOT, JsonLines, ServerProcess, address_of, read_exactly, read_until_eof, run_cli

SHUTDOWN_S = 1.0
STOP_BOUND_S = SHUTDOWN_S + 1.5  # issue 14: a log fault never costs the graceful stop


class TextLines:
    """Lines from a pipe, read on a thread; ``wait_for`` blocks with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._reader.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        for line in self.lines:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no matching line within {timeout} s; saw {self.lines}") from None
            if got is None:
                raise AssertionError(f"the stream ended first; saw {self.lines}")
            self.lines.append(got)
            if predicate(got):
                return got

    def finish(self, timeout: float) -> list[str]:
        self._reader.join(timeout)
        while not self._queue.empty():
            line = self._queue.get_nowait()
            if line is not None:
                self.lines.append(line)
        return self.lines


class FileTail:
    """Lines of the file at ``path`` (and of a new file that replaces it there), waited
    for with inotify on its directory: every wait ends on a change or a deadline."""

    _MASK = 0x2 | 0x8 | 0x80 | 0x100  # IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.path = path
        self._fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if int(libc.inotify_add_watch(self._fd, str(path.parent).encode(), self._MASK)) < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), "inotify_add_watch")
        self.files: list[list[str]] = [[]]  # one list per file seen at the path, the current last
        self._file: IO[bytes] | None = None  # held open: a file moved away is still read to its end
        self._partial = b""

    def close(self) -> None:
        os.close(self._fd)
        if self._file is not None:
            self._file.close()

    def _read_new(self) -> None:
        if self._file is not None:
            self._take(self._file.read())
        try:
            file = open(self.path, "rb")
        except FileNotFoundError:
            return
        if self._file is not None and os.fstat(file.fileno()).st_ino == os.fstat(self._file.fileno()).st_ino:
            file.close()
            return
        if self._file is not None:  # a new file at the path: the old one is complete, read its end
            self._take(self._file.read())
            self._file.close()
            self.files.append([])
            self._partial = b""
        self._file = file
        self._take(file.read())

    def _take(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        self.files[-1].extend(line.decode() for line in complete)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The first line of the current file that matches."""
        deadline = time.monotonic() + timeout
        while True:
            self._read_new()
            for line in self.files[-1]:
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching line in {self.path} within {timeout} s; saw {self.files}")
            if select.select([self._fd], [], [], left)[0]:
                try:
                    os.read(self._fd, 65536)
                except BlockingIOError:
                    pass

    def wait_for_event(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        line = self.wait_for(lambda text: text.startswith("{") and json.loads(text)["event"] == name, timeout)
        record: dict[str, Any] = json.loads(line)
        return record

    def records(self, index: int = -1) -> list[dict[str, Any]]:
        self._read_new()
        return [json.loads(line) for line in self.files[index] if line.startswith("{")]


def listening_port(pid: int) -> int:
    """The one TCP port process ``pid`` listens on, from /proc (its log is unreadable)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    assert len(ports) == 1, f"listening ports of {pid}: {ports}"
    return ports[0]


def _popen(*args: str, stdout: int | IO[Any] = subprocess.DEVNULL) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_")}
    return subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--admin-port", "off", *args],
        cwd=ROOT,
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        for pipe in (process.stdout, process.stderr):
            if pipe:
                pipe.close()


def _stop_and_check(process: subprocess.Popen[str], stderr: TextLines, held: socket.socket, born: float) -> list[str]:
    """SIGTERM with a connection held open: drained, exit 0 in time, stderr bounded."""
    held.sendall(b"still here")
    assert read_exactly(held, 10) == b"still here"
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert read_until_eof(held) == b""  # drained, then closed with FIN
    held.close()  # as a client does on EOF: the server need not wait for it
    code = process.wait(STOP_BOUND_S + 5)
    took = time.monotonic() - signalled
    lines = stderr.finish(5)
    assert code == 0, lines
    assert took <= STOP_BOUND_S, f"the stop took {took:.2f} s"
    assert not any("Traceback" in line or "Exception ignored" in line for line in lines), lines
    lived = time.monotonic() - born
    assert len(lines) <= lived + 2, f"{len(lines)} stderr lines in {lived:.1f} s: {lines}"  # 1/s + a summary
    return lines


def test_dev_full_costs_log_lines_not_the_stop(processes: list[subprocess.Popen[str]]) -> None:
    born = time.monotonic()
    process = _popen("--log-file", "/dev/full", "--shutdown-timeout", str(SHUTDOWN_S), "--max-connections", "100")
    processes.append(process)
    assert process.stderr is not None
    stderr = TextLines(process.stderr)
    # The first write fails after "started", which follows the listener's open.
    first = stderr.wait_for(lambda line: "cannot write the log" in line)
    assert first.startswith("echo-server: cannot write the log (No space left on device)")
    with socket.create_connection(("127.0.0.1", listening_port(process.pid)), timeout=10) as held:
        lines = _stop_and_check(process, stderr, held, born)
    summary = lines[-1]
    assert summary.endswith("log lines lost in all"), lines
    lost = int(summary.rsplit(": ", 1)[1].split()[0])
    assert lost >= 6  # at least started, listening, ready, opened, stopping, stopped


def test_a_disk_that_fills_mid_run_costs_lines_not_the_stop(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A 64 KiB tmpfs: the first lines fit, then the disk fills under connection churn
    while the file also rotates (renames need no room; compressing fails)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]).returncode:
        pytest.skip("needs root to mount a small tmpfs (the /dev/full test covers a disk that is always full)")
    try:
        (disk / "filler").write_bytes(b"\0" * (56 * 1024))
        log_path = disk / "echo.log"
        tail = FileTail(log_path)
        born = time.monotonic()
        process = _popen(
            "--log-format", "json", "--log-file", str(log_path), "--log-max-bytes", "4096",
            "--log-backups", "2", "--shutdown-timeout", str(SHUTDOWN_S),
        )  # fmt: skip
        processes.append(process)
        assert process.stderr is not None
        stderr = TextLines(process.stderr)
        address = address_of(tail.wait_for_event("ready"))
        tail.close()
        for _ in range(300):
            with socket.create_connection(address, timeout=10) as sock:
                sock.sendall(b"x" * 64)
                assert read_exactly(sock, 64) == b"x" * 64
        stderr.wait_for(lambda line: "No space left on device" in line)
        with socket.create_connection(address, timeout=10) as held:
            lines = _stop_and_check(process, stderr, held, born)
        assert any("log lines lost" in line for line in lines), lines
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_log_actor_on_a_full_device_closes_at_once_and_counts(capsys: pytest.CaptureFixture[str]) -> None:
    stats = Stats()
    actor = LogActor(stats, log_format="json", log_file="/dev/full")
    actor.start()
    for index in range(50):
        assert actor.send(event("opened", conn_id=index))
    started = time.monotonic()
    assert actor.close(5) and actor.join(5)  # today: join() raised ENOSPC from close()
    assert time.monotonic() - started < 1.0
    assert actor.error is None
    assert stats.snapshot().log_events_dropped >= 50
    err = capsys.readouterr().err.splitlines()
    assert 1 <= len(err) <= 2 and err[-1].endswith(": 50 log lines lost in all"), err


def test_rotation_keeps_a_file_it_cannot_compress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problems: list[tuple[str, int]] = []
    path = tmp_path / "echo.log"
    sink = RotatingGzipFile(str(path), 1024, 2, lambda problem, lost: problems.append((problem, lost)))

    def no_space(*args: object, **kwargs: object) -> object:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("server.observe.sinks.gzip.open", no_space)
    for index in range(60):  # three rotations: the third drops the oldest
        sink.write(f"line {index:04d} {'.' * 40}\n")
    sink.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["echo.log", "echo.log.1", "echo.log.2"]  # shifted as plain files, nothing half-written
    assert all(lost == 0 for _, lost in problems)
    assert problems and all("kept it uncompressed" in problem for problem, _ in problems)
    lines = [line for name in names for line in (tmp_path / name).read_text().splitlines()]
    assert len(lines) == len(set(lines)) and all(line.startswith("line ") for line in lines)


def test_log_file_dev_stdout_on_a_pipe_is_written() -> None:
    process = ServerProcess("--port", "0", "--admin-port", "off", "--log-file", "/dev/stdout")
    try:
        process.start()  # today: "--log-file: cannot open None: None", exit 2
        process.signal(signal.SIGTERM)
        assert process.finish() == 0
        assert process.seen[-1]["event"] == "stopped"
    finally:
        process.stop()


def test_log_file_fifo_is_written(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader first, as a collector would be
    os.set_blocking(read_end, True)
    our_write_end = os.open(fifo, os.O_WRONLY)  # so that reading sees no EOF before the server opens it
    with os.fdopen(read_end, "r") as reader:
        lines = JsonLines(reader)
        process = _popen("--log-format", "json", "--log-file", str(fifo))
        processes.append(process)
        try:
            lines.wait_for("ready")
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        finally:
            os.close(our_write_end)
        assert lines.finish(10)[-1]["event"] == "stopped"


@pytest.mark.parametrize(
    ("target", "env", "named", "reason"),
    [
        ("fifo", False, "--log-file", "No such device or address (a FIFO needs a reader"),
        ("dir", False, "--log-file", "Is a directory"),
        ("missing", True, "ECHO_LOG_FILE", "No such file or directory"),
    ],
)
def test_a_log_file_that_cannot_be_opened_is_one_line_exit_2(
    tmp_path: Path, target: str, env: bool, named: str, reason: str
) -> None:
    path = {"fifo": tmp_path / "nobody-reads", "dir": tmp_path, "missing": tmp_path / "no" / "echo.log"}[target]
    if target == "fifo":
        os.mkfifo(path)
    args = ["--port", "0", "--admin-port", "off"]
    result = run_cli(args, {"ECHO_LOG_FILE": str(path)}) if env else run_cli([*args, "--log-file", str(path)])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"echo-server: error: {named}: cannot open {path}: {reason}")


def test_a_line_torn_by_a_failed_write_is_not_glued_to_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fills mid-line: the half line stays alone on its line, counted lost."""
    problems: list[tuple[str, int]] = []
    path = tmp_path / "echo.log"
    sink = RotatingGzipFile(str(path), 1 << 20, 1, lambda problem, lost: problems.append((problem, lost)))
    real_write = os.write
    calls: list[int] = []

    def filling(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))  # "first" fits, then the disk is full
        if len(calls) in (2, 3):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr("server.observe.sinks.os.write", filling)
    sink.write("first line\nsecond line\n")
    sink.flush()  # writes 5 bytes, then fails: two lines lost, one of them torn
    sink.write("third line\n")
    sink.flush()  # fails before writing anything: the file still ends torn
    sink.write("fourth line\n")
    sink.close()
    assert [lost for _, lost in problems] == [2, 1]
    assert path.read_text().splitlines() == ["first", "fourth line"]
