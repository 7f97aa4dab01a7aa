"""Log sinks: where the LogActor's lines go, and what happens when writing there fails.

    sink = open_sink(path, max_bytes, backups, report)   # main thread, before the actor starts
    sink.write(text); sink.flush(); sink.reopen(); sink.close()   # then the LogActor's thread only

- ``RotatingGzipFile``: a regular file. It rotates by size and gzips what it rotates:

      app.log          the file being written
      app.log.1.gz     the newest rotated file ... app.log.N.gz the oldest (N = backups)

  Rotation happens before a write that would take the file past ``max_bytes`` (a single
  longer line still goes in whole): rename app.log to app.log.1 (needs no disk space),
  open a fresh app.log, then compress app.log.1. If compressing fails (a full disk),
  app.log.1 stays uncompressed. ``reopen`` opens the path again: after ``mv app.log
  app.log.old``, new lines go to a fresh app.log (logrotate's convention, SIGUSR1).
- ``FdSink``: anything that is not a regular file (a pipe, a FIFO, a character device
  such as /dev/null or /dev/full) and stdout itself. Written as it is: no rotation, and
  ``reopen`` does nothing. ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` duplicate
  the descriptor instead of opening a path (a socket or a pipe may not be re-openable).
- ``TextSink``: a Python text stream (tests, embedding).

Lines gather in a byte buffer written with ``os.write`` when the actor runs idle or the
buffer passes BUFFER_BYTES. Python's buffered files are not used on purpose: after a
failed flush they keep the data, raise again on every write and on ``close()``. Here a
failed write (a full disk, a closed pipe, an I/O error) drops the lines not written and
says so through ``report(problem, lines_lost)``; nothing raises out of write, flush,
reopen or close, so the log actor keeps running and a stop never trips over the log.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import os
import re
import shutil
import stat
from collections.abc import Callable
from typing import IO, Protocol

BUFFER_BYTES = 64 * 1024
Report = Callable[[str, int], None]  # (what went wrong, log lines lost by it)
_INHERITED = re.compile(r"/dev/(stdout|stderr|fd/(\d+))|/proc/self/fd/(\d+)")
_STD_FDS = {"stdout": 1, "stderr": 2}


class LogSink(Protocol):
    def write(self, text: str) -> None: ...
    def flush(self) -> None: ...
    def reopen(self) -> bool: ...
    def close(self) -> None: ...


class LogFileError(Exception):
    """The log file cannot be opened; the message says which file and why, in one line."""


def open_sink(path: str, max_bytes: int, backups: int, report: Report) -> FdSink:
    """A RotatingGzipFile for a regular file, else an FdSink. Raises LogFileError."""
    inherited = _INHERITED.fullmatch(path)
    if inherited:
        number = inherited[2] or inherited[3]
        try:
            return FdSink(os.dup(int(number) if number else _STD_FDS[inherited[1]]), report)
        except OSError as error:
            raise LogFileError(f"cannot open {path}: {_reason(error)}") from None
    try:
        # O_NONBLOCK: opening a FIFO that nobody reads fails (ENXIO) instead of hanging.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        raise LogFileError(f"cannot open {path}: {_reason(error)}") from None
    _set_blocking(fd)  # our own open file description: nobody else shares these flags
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return RotatingGzipFile(path, max_bytes, backups, report, fd=fd)
    return FdSink(fd, report)


def _reason(error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.errno == errno.ENXIO:
        return f"{reason} (a FIFO needs a reader before the server starts)"
    return reason


def _set_blocking(fd: int) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)


class FdSink:
    """Lines to a file descriptor, buffered here and written with os.write."""

    def __init__(self, fd: int, report: Report, *, owns: bool = True) -> None:
        self._fd = fd
        self._owns = owns
        self._report = report
        self._pending = bytearray()
        self._torn = False  # the last failed write left half a line: start the next on a new one
        self._broken: str | None = None  # the reader is gone for good (EPIPE): why

    def write(self, text: str) -> None:
        self._append(text.encode("utf-8", "backslashreplace"))

    def _append(self, data: bytes) -> None:
        if self._broken is not None:
            self._report(self._broken, data.count(b"\n"))
            return
        self._pending += data
        if len(self._pending) >= BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self._fd < 0:
            return
        data, self._pending = self._pending, bytearray()
        if self._torn:
            data[0:0] = b"\n"
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as error:
            lost = data.count(b"\n", written) - (1 if self._torn and written == 0 else 0)
            if written:  # else the file ends as it did: torn or not
                self._torn = data[written - 1] != ord("\n")
            problem = f"cannot write the log ({error.strerror or error})"
            if error.errno == errno.EPIPE:
                self._broken = problem
            self._report(problem, lost)
        else:
            self._torn = False
        finally:
            view.release()

    def reopen(self) -> bool:
        """Nothing to reopen for a pipe or a device; False says so."""
        self.flush()
        return False

    def close(self) -> None:
        self.flush()
        if self._owns and self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                os.close(fd)
            except OSError as error:
                self._report(f"cannot close the log ({error.strerror or error})", 0)


class RotatingGzipFile(FdSink):
    def __init__(self, path: str, max_bytes: int, backups: int, report: Report, *, fd: int | None = None) -> None:
        super().__init__(_open_append(path) if fd is None else fd, report)
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._size = os.fstat(self._fd).st_size  # what the file will hold once the buffer is written

    def write(self, text: str) -> None:
        data = text.encode("utf-8", "backslashreplace")
        if self._size and self._size + len(data) > self._max_bytes:
            self._rotate()
        self._size += len(data)
        self._append(data)

    def reopen(self) -> bool:
        """Write what is buffered to the old file, then continue in a new one at ``path``."""
        self.flush()
        try:
            fd = _open_append(self.path)
        except OSError as error:
            self._report(f"cannot reopen the log {self.path} ({error.strerror}); still writing the old one", 0)
            return False
        self._swap(fd)
        return True

    def rotated_name(self, index: int) -> str:
        return f"{self.path}.{index}.gz"

    def _swap(self, fd: int) -> None:
        old, self._fd = self._fd, fd
        self._torn = False
        self._size = os.fstat(fd).st_size
        try:
            os.close(old)
        except OSError as error:
            self._report(f"cannot close the log ({error.strerror or error})", 0)

    def _rotate(self) -> None:
        self.flush()
        first = f"{self.path}.1"
        try:
            self._shift_backups()
            if self._backups > 0:
                os.replace(self.path, first)
            else:
                os.remove(self.path)
            fd = _open_append(self.path)
        except OSError as error:
            self._report(f"cannot rotate the log ({error.strerror or error}); it grows past its size limit", 0)
            self._size = 0  # try again after another max_bytes, not on every line
            return
        self._swap(fd)
        if self._backups > 0:
            self._compress(first, self.rotated_name(1))

    def _shift_backups(self) -> None:
        for index in range(self._backups, 0, -1):
            for name in (self.rotated_name(index), f"{self.path}.{index}"):
                if not os.path.exists(name):
                    continue
                if index == self._backups:
                    os.remove(name)
                else:
                    shifted = self.rotated_name(index + 1) if name.endswith(".gz") else f"{self.path}.{index + 1}"
                    os.replace(name, shifted)

    def _compress(self, source: str, target: str) -> None:
        partial = target + ".tmp"
        try:
            with open(source, "rb") as plain, gzip.open(partial, "wb") as packed:
                shutil.copyfileobj(plain, packed)
            os.replace(partial, target)
            os.remove(source)
        except OSError as error:
            try:
                os.remove(partial)
            except OSError:
                pass
            self._report(f"cannot compress {source} ({error.strerror or error}); kept it uncompressed", 0)


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)


class TextSink:
    """A Python text stream the caller owns (closing the sink leaves it open)."""

    def __init__(self, stream: IO[str], report: Report) -> None:
        self._stream = stream
        self._report = report

    def write(self, text: str) -> None:
        try:
            self._stream.write(text)
        except (OSError, ValueError) as error:
            self._report(f"cannot write the log ({error})", text.count("\n"))

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as error:
            self._report(f"cannot write the log ({error})", 0)

    def reopen(self) -> bool:
        self.flush()
        return False

    def close(self) -> None:
        self.flush()
