"""RotatingGzipFile: a text log file that rotates by size and gzips what it rotates.

    app.log          the file being written
    app.log.1.gz     the newest rotated file ... app.log.N.gz the oldest (N = backups)

Rotation happens before a write that would take the file past ``max_bytes`` (a single
longer line still goes in whole). The analytics read the .gz files as they are.
Used by one thread only: the LogActor's.
"""

from __future__ import annotations

import gzip
import os
import shutil


class RotatingGzipFile:
    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._backups = backups
        self._file = open(path, "a", encoding="utf-8")
        self._size = self._file.tell()

    def write(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        if self._size and self._size + size > self._max_bytes:
            self._rotate()
        self._file.write(text)
        self._size += size

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def rotated_name(self, index: int) -> str:
        return f"{self.path}.{index}.gz"

    def _rotate(self) -> None:
        self._file.close()
        if self._backups > 0:
            oldest = self.rotated_name(self._backups)
            if os.path.exists(oldest):
                os.remove(oldest)
            for index in range(self._backups - 1, 0, -1):
                if os.path.exists(self.rotated_name(index)):
                    os.replace(self.rotated_name(index), self.rotated_name(index + 1))
            with open(self.path, "rb") as source, gzip.open(self.rotated_name(1), "wb") as target:
                shutil.copyfileobj(source, target)
        os.remove(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._size = 0
