"""loadtest.pool: several bench runs' same-run pairs, pooled and judged together."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import pool
from tests.helpers import run_cli

SCENARIO = "1 conn, 64 B"


def _run(cpu: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One bench run's rows: each server's CPU per message, repeat by repeat."""
    return [
        {"scenario": SCENARIO, "server": server, "repeat": repeat, "msgs_per_s": 1000.0, "cpu_us_per_msg": value}
        for server, values in cpu.items()
        for repeat, value in enumerate(values)
    ]


def _entry(pooled: list[pool.Pooled], ours: str, theirs: str) -> pool.Pooled:
    [entry] = [p for p in pooled if (p.ours, p.theirs) == (ours, theirs)]
    return entry


def test_pairs_stay_within_their_run_and_are_pooled_across_runs() -> None:
    # Run A's machine is slow for everyone, run B's fast: comparing across runs would
    # make echo-service look 2x dearer or 2x cheaper; pairs within a run do not.
    run_a = _run({"echo-service": [20.0, 22.0], "uvloop-protocol": [20.0, 20.0], "python-floor": [21.0, 21.0]})
    run_b = _run({"echo-service": [9.0, 10.0], "uvloop-protocol": [10.0, 10.0], "python-floor": [10.5, 10.5]})
    pooled = pool.pool([run_a, run_b])

    versus_uvloop = _entry(pooled, "echo-service", "uvloop-protocol")
    assert sorted(versus_uvloop.pairs) == [0.9, 1.0, 1.0, 1.1]
    assert versus_uvloop.run_medians == pytest.approx([1.05, 0.95])
    assert versus_uvloop.median == pytest.approx(1.0)
    assert versus_uvloop.limit == 1.0 and versus_uvloop.runs_meeting == 1

    floor = _entry(pooled, "python-floor", "uvloop-protocol")
    assert floor.pairs == pytest.approx([1.05] * 4) and floor.limit is None


def test_a_server_missing_from_a_run_shows_as_a_dash_and_is_not_counted() -> None:
    run_a = _run({"echo-service": [10.0], "uvloop-protocol": [8.0]})
    run_b = _run({"echo-service": [10.0], "asyncio-protocol": [12.5]})
    pooled = pool.pool([run_a, run_b])
    assert _entry(pooled, "echo-service", "uvloop-protocol").run_medians == [1.25, None]
    assert _entry(pooled, "echo-service", "asyncio-protocol").run_medians == [None, 0.8]
    table = pool.markdown(pooled, ["a", "b"])
    assert "| echo-service / uvloop | echo-service / asyncio |" in table
    # uvloop's target is missed on the pooled median, so its verdict is in bold.
    assert "1.25x (1.25-1.25); runs 1.25, -; **0/1 runs <= 1x**" in table
    assert "0.80x (0.80-0.80); runs -, 0.80; 1/1 runs <= 1.1x" in table


def test_noisy_pairs_are_counted_in_the_cell() -> None:
    run = _run({"echo-service": [10.0, 10.0], "uvloop-protocol": [10.0, 10.0]})
    run[1]["noisy"] = True  # echo-service's second repeat ran beside a busy neighbour
    [entry] = [p for p in pool.pool([run]) if p.theirs == "uvloop-protocol"]
    assert entry.noisy_pairs == 1
    assert "; 1 noisy pairs" in pool.markdown([entry], ["a"])


def test_the_cli_reads_run_directories_and_writes_the_table(tmp_path: Path) -> None:
    for name, echo_cpu in (("a", 9.0), ("b", 11.0)):
        (tmp_path / name).mkdir()
        rows = _run({"echo-service": [echo_cpu], "uvloop-protocol": [10.0]})
        (tmp_path / name / "results.json").write_text(json.dumps({"rows": rows}))
    out = tmp_path / "pooled.md"
    result = run_cli([str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)], module="loadtest.pool")
    assert result.returncode == 0, result.stderr
    assert "1.00x (0.90-1.10); runs 0.90, 1.10; 1/2 runs <= 1x" in result.stdout
    assert out.read_text() == result.stdout


def _file(tmp_path: Path, name: str, document: object) -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_a_run_that_is_not_a_bench_result_is_one_line_and_exit_2(tmp_path: Path) -> None:
    row = {"scenario": SCENARIO, "server": "echo-service", "repeat": 0, "cpu_us_per_msg": 10.0}
    unpaired = _file(tmp_path, "alone.json", {"rows": [row]})
    cases = [
        (tmp_path / "missing", "cannot read it"),
        (_file(tmp_path, "notes.txt", "hello"), "not JSON"),
        (_file(tmp_path, "list.json", [row]), "no rows"),
        (_file(tmp_path, "other.json", {"rows": "none"}), "no rows"),
        (_file(tmp_path, "empty.json", {"rows": []}), "no rows"),
        (_file(tmp_path, "nameless.json", {"rows": [{"scenario": SCENARIO}]}), "row 0 has no server name"),
        (_file(tmp_path, "words.json", {"rows": [{**row, "cpu_us_per_msg": "ten"}]}), "not a number"),
        (unpaired, "nothing to pool"),
    ]
    for path, why in cases:
        result = run_cli([str(path)], module="loadtest.pool")
        assert result.returncode == 2, (path, result.stderr)
        assert result.stderr.count("\n") == 1 and why in result.stderr, (path, result.stderr)
        assert path == unpaired or str(path) in result.stderr
        assert result.stdout == ""


def test_an_out_file_that_cannot_be_written_is_one_line_and_exit_2(tmp_path: Path) -> None:
    run = _file(tmp_path, "run.json", {"rows": _run({"echo-service": [9.0], "uvloop-protocol": [10.0]})})
    out = tmp_path / "no-such-directory" / "pooled.md"
    result = run_cli([str(run), "--out", str(out)], module="loadtest.pool")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "--out" in result.stderr and "cannot write it" in result.stderr
