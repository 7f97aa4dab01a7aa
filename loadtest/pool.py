"""Several bench runs judged together: every run's same-run pairs, pooled.

    python -m loadtest.pool RUN [RUN ...] [--out pooled.md]

RUN is a ``results.json`` written by ``loadtest.bench``, or the directory holding one.

Within one run a ratio is taken pair by pair (repeat i of each server ran in the same
minute), which cancels a noisy minute, but not a machine that is in a different state
for the whole run: between two runs hours apart the same pair has moved by 15% while
neither server changed (docs/performance.md). So a target such as "CPU per message
<= 1.0x uvloop" is judged here over runs: the pairs of every run pooled (median and
range), each run's own median beside it, and how many runs met the target on theirs.

The bare Python loop (``python-floor``) over uvloop is pooled alike. Where it is above
1.0x, even a loop that only reads and writes does not meet the uvloop target in that
scenario; beside it, what the engine adds to the bare loop.

Reads files and prints; touches no socket. A RUN that is missing or is not a bench
result, runs with nothing to pair, or an ``--out`` that cannot be written is a one-line
error and exit 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.report import (
    BASELINE,
    CEILING,
    OURS,
    RATIO_TARGETS,
    REFERENCE,
    UVLOOP,
    by_repeat,
    paired,
)
from loadtest.servers import FLOOR_SERVER

# (ours, theirs): the columns, in order. The first server of each is divided by the second.
COLUMNS = (
    (OURS, UVLOOP),
    (FLOOR_SERVER, UVLOOP),
    (OURS, FLOOR_SERVER),
    (OURS, REFERENCE),
    (OURS, CEILING),
    (OURS, BASELINE),
)
SHORT_NAMES = {
    OURS: "echo-service",
    UVLOOP: "uvloop",
    FLOOR_SERVER: "bare loop",
    REFERENCE: "asyncio",
    CEILING: "C",
    BASELINE: "baseline",
}


class BadRun(ValueError):
    """A RUN that is not a bench result: its message names the file and what is wrong."""


@dataclass
class Pooled:
    """One ratio in one scenario over several runs."""

    scenario: str
    ours: str
    theirs: str
    pairs: list[float]  # every run's pairs, pooled
    run_medians: list[float | None]  # one per run, in order; None where it lacked either server
    limit: float | None  # echo-service's CPU target against ``theirs``, if there is one
    noisy_pairs: int = 0  # pairs with a row measured beside a busy neighbour (report.py)

    @property
    def median(self) -> float:
        return statistics.median(self.pairs)

    @property
    def runs_measured(self) -> int:
        return sum(1 for value in self.run_medians if value is not None)

    @property
    def runs_meeting(self) -> int:
        limit = self.limit
        return sum(1 for value in self.run_medians if value is not None and limit is not None and value <= limit)


def load_run(path: Path) -> list[dict[str, Any]]:
    """The rows of one bench run."""
    file = path / "results.json" if path.is_dir() else path
    try:
        document = json.loads(file.read_text())
    except OSError as error:
        raise BadRun(f"{file}: cannot read it ({error.strerror or error})") from None
    except ValueError as error:
        raise BadRun(f"{file}: not JSON ({error})") from None
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not rows:
        raise BadRun(f"{file}: not a loadtest.bench results.json (no rows)")
    for number, row in enumerate(rows):
        problem = _row_problem(row)
        if problem:
            raise BadRun(f"{file}: row {number} {problem}")
    return rows


def _row_problem(row: object) -> str | None:
    """What makes ``row`` unlike a bench row, or None."""
    if not isinstance(row, dict):
        return "is not an object"
    for key in ("scenario", "server"):
        if not isinstance(row.get(key), str):
            return f"has no {key} name"
    if not isinstance(row.get("repeat", 0), int):
        return "has a repeat that is not a whole number"
    for figure in ("msgs_per_s", "cpu_us_per_msg", "conns_per_s", "cpu_us_per_conn"):
        value = row.get(figure)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"has a {figure} that is not a number"
    return None


def _limit(theirs: str, cpu_ratio: str) -> float | None:
    return next((limit for server, figure, limit, _ in RATIO_TARGETS if server == theirs and figure == cpu_ratio), None)


def pool(runs: list[list[dict[str, Any]]]) -> list[Pooled]:
    """CPU ratios (per message; per connection in churn) per scenario and column, pooled over runs."""
    keyed = [by_repeat(rows) for rows in runs]
    scenarios = dict.fromkeys(r["scenario"] for rows in runs for r in rows)
    pooled: list[Pooled] = []
    for scenario in scenarios:
        for ours, theirs in COLUMNS:
            values: list[float] = []
            medians: list[float | None] = []
            cpu_ratio = "cpu_per_msg"
            noisy = 0
            for by_key in keyed:
                pair = paired(by_key, scenario, ours, theirs)
                medians.append(statistics.median(pair.cpu) if pair.cpu else None)
                if pair.cpu:
                    values += pair.cpu
                    cpu_ratio = pair.cpu_ratio
                    noisy += pair.noisy_pairs
            if values:
                limit = _limit(theirs, cpu_ratio) if ours == OURS else None
                pooled.append(Pooled(scenario, ours, theirs, values, medians, limit, noisy))
    return pooled


def _cell(entry: Pooled) -> str:
    """Pooled median (range); each run's median ("-" where that run lacked a server); the
    target's verdict; noisy pairs, if any."""
    runs = ", ".join("-" if value is None else f"{value:.2f}" for value in entry.run_medians)
    text = f"{entry.median:.2f}x ({min(entry.pairs):.2f}-{max(entry.pairs):.2f}); runs {runs}"
    if entry.limit is not None:
        mark = "" if entry.median <= entry.limit else "**"
        text += f"; {mark}{entry.runs_meeting}/{entry.runs_measured} runs <= {entry.limit:g}x{mark}"
    if entry.noisy_pairs:
        text += f"; {entry.noisy_pairs} noisy pairs"
    return text


def markdown(pooled: list[Pooled], sources: list[str]) -> str:
    columns = [(ours, theirs) for ours, theirs in COLUMNS if any((p.ours, p.theirs) == (ours, theirs) for p in pooled)]
    heads = [f"{SHORT_NAMES[ours]} / {SHORT_NAMES[theirs]}" for ours, theirs in columns]
    lines = [
        "# Bench runs pooled",
        "",
        f"{len(sources)} runs: " + ", ".join(f"`{source}`" for source in sources) + ".",
        "",
        "Each cell: CPU per message (churn: per connection) of the first server over the second's, "
        "median (min-max) of every same-run pair of every run; then each run's own median, in the order "
        "above (- where that run lacked either server); then, for echo-service's targets, how many of the "
        "runs that measured it met it on their median (in bold when the pooled median misses it); then "
        "how many pairs had a row measured beside a busy neighbour, if any did.",
        "",
        "| scenario | " + " | ".join(heads) + " |",
        "| --- |" + " ---: |" * len(heads),
    ]
    for scenario in dict.fromkeys(p.scenario for p in pooled):
        by_column = {(p.ours, p.theirs): p for p in pooled if p.scenario == scenario}
        cells = [_cell(by_column[column]) if column in by_column else "-" for column in columns]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.pool", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="a results.json, or its directory")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(path) for path in args.runs]
    except BadRun as error:
        print(f"loadtest.pool: {error}", file=sys.stderr)
        return 2
    pooled = pool(runs)
    if not pooled:
        print("loadtest.pool: no scenario has two servers measured in the same run: nothing to pool", file=sys.stderr)
        return 2
    table = markdown(pooled, [str(path) for path in args.runs])
    if args.out:
        try:
            args.out.write_text(table)
        except OSError as error:
            print(f"loadtest.pool: --out {args.out}: cannot write it ({error.strerror or error})", file=sys.stderr)
            return 2
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
