"""Log analytics over real rotated logs: `python3 -m server analyze` in a subprocess."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from server.observe.logger import LogActor
from server.observe.stats import REJECT_PER_IP
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


def _closed(ts: str, duration_s: float, size: int, peer: str = "127.0.0.1:5000") -> str:
    record = {
        "ts": ts,
        "level": "info",
        "event": "closed",
        "conn": 1,
        "peer": peer,
        "reason": "eof",
        "bytes_in": size,
        "bytes_out": size,
        "duration_s": duration_s,
    }
    return json.dumps(record) + "\n"


def test_bad_lines_and_fields_are_counted_skipped_and_summed_up_in_one_line(tmp_path: Path) -> None:
    log = tmp_path / "echo.log"
    log.write_text(
        _closed("2026-11-24T21:23:16.100Z", 0.5, 10)
        + '{"event":"closed","ts":"x","bytes_in":"lots"}\n'
        + '{"event":"closed","bytes_out":true,"duration_s":-1,"reason":7,"peer":["x"]}\n'
        + '{"event":"rejected","reason":"max_connections","count":"many"}\n'
        + '{"event":["not","a","name"]}\n'
        + "[1, 2]\n"
        + "{truncated\n"
        + _closed("2026-11-24T21:23:17.200Z", 0.25, 20)
    )
    result = run_cli(["analyze", str(log), "--json"])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["connections_closed"] == 4 and report["rejected"] == {"max_connections": 1}
    assert report["close_reasons"] == {"eof": 2, "?": 2}
    assert report["bytes_in"] == report["bytes_out"] == 30
    assert report["first"] == "2026-11-24T21:23:16.100Z" and report["last"] == "2026-11-24T21:23:17.200Z"
    assert report["unparsed_lines"] == 3
    assert report["bad_fields"] == {
        "ts": 1,
        "bytes_in": 1,
        "bytes_out": 1,
        "duration_s": 1,
        "reason": 1,
        "peer": 1,
        "count": 1,
    }
    assert report["duration_s"]["min"] == 0.25 and report["duration_s"]["max"] == 0.5
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        "echo-server analyze: skipped 3 line(s) that are not JSON events; "
        "7 bad field value(s) (bytes_in 1, bytes_out 1, count 1, duration_s 1, peer 1, reason 1, ts 1)\n"
    )
    text = run_cli(["analyze", str(log)])
    assert text.returncode == 0 and "connections: 0 opened, 4 closed" in text.stdout
    assert text.stderr.count("\n") == 1


def test_a_text_format_log_is_named_and_exits_2(make_server: ServerFactory, tmp_path: Path) -> None:
    server, recorder = make_server()
    log_path = tmp_path / "echo.log"
    actor = LogActor(server.stats, log_format="text", log_file=str(log_path))
    actor.start()
    server.exchange.attach(actor)
    echo_round_trip(server.server_address[:2], b"hello")
    recorder.wait_for(lambda e: e.name == "closed")
    server.shutdown()
    assert actor.close() and actor.join(10)
    assert " closed " in log_path.read_text()  # a real text log, with a connection in it

    result = run_cli(["analyze", str(log_path)])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        f"echo-server analyze: {log_path}: no JSON events (analyze reads logs written with --log-format json)\n"
    )


def test_min_and_max_durations_are_exact_not_bucket_bounds(tmp_path: Path) -> None:
    durations = [0.001234, 0.0105, 0.2, 1.5, 2.3678]
    first, second = tmp_path / "a.log", tmp_path / "b.log"  # extremes in different files: merged across workers
    first.write_text("".join(_closed("2026-11-24T21:23:16.000Z", d, 1) for d in durations[:3]))
    second.write_text("".join(_closed("2026-11-24T21:23:17.000Z", d, 1) for d in durations[3:]))
    result = run_cli(["analyze", str(first), str(second), "--json", "--workers", "2"])
    assert result.returncode == 0 and result.stderr == ""
    figures = json.loads(result.stdout)["duration_s"]
    assert figures["min"] == 0.001234 and figures["max"] == 2.3678
    assert figures["min"] <= figures["p50"] <= figures["p90"] <= figures["p99"] <= figures["max"]
    text = run_cli(["analyze", str(first), str(second)]).stdout
    assert "min 1.234 ms" in text and "max 2,367.800 ms" in text
