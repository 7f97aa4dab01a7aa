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
1.0x, no Python event loop meets the uvloop target in that scenario: what is left
between echo-service and uvloop is the interpreter's floor plus what the engine adds
to the bare loop, shown in the column beside it.

Reads files and prints; touches no socket. A RUN that is missing or is not a bench
result is a one-line error and exit 2.
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
    run_medians: list[float]  # one per run that measured both servers
    limit: float | None  # echo-service's CPU target against ``theirs``, if there is one

    @property
    def median(self) -> float:
        return statistics.median(self.pairs)

    @property
    def runs_meeting(self) -> int:
        return sum(1 for value in self.run_medians if self.limit is not None and value <= self.limit)


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
    if not isinstance(rows, list) or not all(isinstance(r, dict) and "scenario" in r for r in rows):
        raise BadRun(f"{file}: not a loadtest.bench results.json (no rows)")
    return rows


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
            medians: list[float] = []
            cpu_ratio = "cpu_per_msg"
            for by_key in keyed:
                pair = paired(by_key, scenario, ours, theirs)
                if pair.cpu:
                    values += pair.cpu
                    medians.append(statistics.median(pair.cpu))
                    cpu_ratio = pair.cpu_ratio
            if values:
                limit = _limit(theirs, cpu_ratio) if ours == OURS else None
                pooled.append(Pooled(scenario, ours, theirs, values, medians, limit))
    return pooled


def _cell(entry: Pooled) -> str:
    text = f"{entry.median:.2f}x ({min(entry.pairs):.2f}-{max(entry.pairs):.2f}); runs " + ", ".join(
        f"{value:.2f}" for value in entry.run_medians
    )
    if entry.limit is not None:
        mark = "" if entry.median <= entry.limit else "**"
        text += f"; {mark}{entry.runs_meeting}/{len(entry.run_medians)} runs <= {entry.limit:g}x{mark}"
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
        "median (min-max) of every same-run pair of every run; then each run's own median; then, for "
        "echo-service's targets, how many runs met it on their median (in bold when the pooled median misses it).",
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
    table = markdown(pool(runs), [str(path) for path in args.runs])
    sys.stdout.write(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
