"""Log analytics over real rotated logs: `python3 -m server analyze` in a subprocess."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from server.logger import LogActor
from server.stats import REJECT_PER_IP
from tests.conftest import ServerFactory
from tests.helpers import echo_round_trip, read_exactly, run_cli


def _from(source_ip: str, address: tuple[str, int], payload: bytes) -> None:
    with socket.socket() as sock:
        sock.bind((source_ip, 0))
        sock.connect(address)
        sock.sendall(payload)
        assert read_exactly(sock, len(payload)) == payload


def test_analyze_summarizes_rotated_json_logs(make_server: ServerFactory, tmp_path: Path) -> None:
    server, recorder = make_server(max_connections_per_ip=3)
    address = server.server_address[:2]
    log_path = tmp_path / "echo.log"
    actor = LogActor(server.stats, log_format="json", log_file=str(log_path), max_bytes=3000, backups=20)
    actor.start()
    server.exchange.attach(actor)
    sizes = [10 * (i + 1) for i in range(10)]
    for size in sizes:
        echo_round_trip(address, b"a" * size)
    for _ in range(4):
        _from("127.0.0.2", address, b"b" * 100)
    held = [socket.socket() for _ in range(3)]
    for sock in held:
        sock.bind(("127.0.0.3", 0))
        sock.connect(address)
        sock.sendall(b"c")
        read_exactly(sock, 1)
    for _ in range(2):  # over the per-address limit
        with socket.socket() as extra:
            extra.bind(("127.0.0.3", 0))
            extra.connect(address)
            assert extra.recv(1) == b""
    for sock in held:
        sock.close()
    recorder.wait_for(lambda e: len(recorder.named("closed")) == 17)
    server.shutdown()
    assert actor.close() and actor.join(10)
    junk = tmp_path / "junk.log"
    junk.write_text('not json\n{"no_event": 1}\n')
    files = sorted(str(p) for p in tmp_path.iterdir())
    assert any(f.endswith(".gz") for f in files), "the small max_bytes should have rotated"

    result = run_cli(["analyze", *files, "--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["connections_opened"] == report["connections_closed"] == 17
    assert report["close_reasons"] == {"eof": 17}
    assert report["rejected"] == {REJECT_PER_IP: 2}
    assert report["bytes_in"] == report["bytes_out"] == sum(sizes) + 400 + 3
    assert report["top_clients_by_connections"] == {"127.0.0.1": 10, "127.0.0.2": 4, "127.0.0.3": 3}
    assert report["unparsed_lines"] == 2
    assert 0 < report["duration_s"]["p50"] <= report["duration_s"]["max"]

    text = run_cli(["analyze", *files])
    assert text.returncode == 0 and "connections: 17 opened, 17 closed" in text.stdout


def test_analyze_names_a_missing_file() -> None:
    result = run_cli(["analyze", "/no/such/echo.log"])
    assert result.returncode == 2
    assert result.stderr == "echo-server analyze: no such file: /no/such/echo.log\n"
