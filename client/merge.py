"""``echo-client merge A.json B.json ...``: combine ``echo-client rate --json`` runs made on
several hosts at the same time into one result, as one big client would have measured it.

Histograms merge exactly (bucket for bucket), counts and rates add (the hosts ran the same
window), the per-second series merge second by second. The output is what ``rate``
prints: text or ``--json``, the same ``--report`` page, the same budgets and exit codes
(0 fine, 1 errors or a budget exceeded, 2 bad arguments or an unreadable file).
Main thread only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from client.cli import EXIT_USAGE, PROG, UsageError, _Parser
from client.rate import add_output_options, report
from client.rate_result import RateResult

COMMAND = "merge"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} {COMMAND}",
        usage=f"{PROG} {COMMAND} [options] RESULT.json [RESULT.json ...]",
        description="Merge the --json output of echo-client rate runs made on several hosts at once.",
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT.json", help="what rate --json printed")
    add_output_options(parser)
    return parser


def load(path: Path) -> RateResult:
    """The result in ``path`` (its last JSON line); UsageError naming the file otherwise."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
        return RateResult.from_json(json.loads(lines[-1]) if lines else None)
    except OSError as error:
        raise UsageError(f"{PROG} {COMMAND}: {path}: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{PROG} {COMMAND}: {path}: {error}") from None


def main(argv: Sequence[str]) -> int:
    try:
        args = build_parser().parse_args(list(argv))
        results = [load(path) for path in args.results]
    except UsageError as error:
        print(error, file=sys.stderr)
        return EXIT_USAGE
    args.prog = f"{PROG} {COMMAND}"
    merged = results[0]
    for other in results[1:]:
        merged.merge(other, same_host=False)
    return report(merged, args, "merged")
