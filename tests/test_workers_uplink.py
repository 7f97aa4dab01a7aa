"""The supervisor's side of a worker's up pipe: FrameReader never blocks.

Real pipes, written by multiprocessing's own Connection (the worker's side), so the
framing is the one workers really send.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import struct
import time
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection

import pytest

from server.workers.worker_process import MAX_FRAME, FrameError, FrameReader


@pytest.fixture
def pipe() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
    yield reader, writer
    for end in (reader, writer):
        if not end.closed:
            end.close()


def frame(batch: Sequence[tuple[object, ...]]) -> bytes:
    body = pickle.dumps(batch)
    return struct.pack("!i", len(body)) + body


def test_whole_frames_come_out_as_sent(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    frames = FrameReader(reader.fileno())
    writer.send([("e", "opened", 1)])
    writer.send([("s", b"x"), ("l", "echo", 20, "text", 0.0)])
    assert frames.read() == [[("e", "opened", 1)], [("s", b"x"), ("l", "echo", 20, "text", 0.0)]]
    assert frames.read() == [] and not frames.ended


def _write_while_reading(writer: Connection, frames: FrameReader, data: bytes) -> list[object]:
    """Write ``data`` without blocking, reading between writes (as the supervisor's
    selector would); what the reader returned meanwhile."""
    got: list[object] = []
    sent = 0
    while sent < len(data):
        try:
            sent += os.write(writer.fileno(), data[sent:])
        except BlockingIOError:
            pass
        got += frames.read()
    return got


def test_a_frame_larger_than_the_pipe_whose_writer_stopped_midway_blocks_nothing(
    pipe: tuple[Connection, Connection],
) -> None:
    reader, writer = pipe
    frames = FrameReader(reader.fileno())
    batch = [("l", "echo", 20, "y" * 1000, 0.0)] * 300  # ~300 KB: several pipe buffers
    data = frame(batch)
    os.set_blocking(writer.fileno(), False)
    half = len(data) // 2
    started = time.monotonic()
    assert _write_while_reading(writer, frames, data[:half]) == []  # the writer stops here
    assert frames.read() == [] and frames.read() == []
    assert time.monotonic() - started < 5.0  # each read returned at once, with half a frame
    assert _write_while_reading(writer, frames, data[half:]) + frames.read() == [batch]


def test_the_rest_of_a_frame_completes_it_and_the_end_is_seen(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    frames = FrameReader(reader.fileno())
    data = frame([("e", "closed", 7)]) + frame([("e", "opened", 8)])
    os.write(writer.fileno(), data[:3])  # mid-header
    assert frames.read() == []
    os.write(writer.fileno(), data[3:20])  # mid-body
    assert frames.read() == []
    os.write(writer.fileno(), data[20:])
    assert frames.read() == [[("e", "closed", 7)], [("e", "opened", 8)]]
    writer.close()
    assert frames.read() == [] and frames.ended


def test_a_length_no_worker_sends_is_an_error(pipe: tuple[Connection, Connection]) -> None:
    reader, writer = pipe
    frames = FrameReader(reader.fileno())
    os.write(writer.fileno(), struct.pack("!i", MAX_FRAME + 1))
    with pytest.raises(FrameError):
        frames.read()
