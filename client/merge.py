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

from client import options
from client.cli import EXIT_USAGE, PROG, UsageError, _Parser
from client.rate import report
from client.rate_result import RateResult

COMMAND = "merge"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=f"{PROG} {COMMAND}",
        usage=f"{PROG} {COMMAND} [options] RESULT.json [RESULT.json ...]",
        description="Merge the --json output of echo-client rate runs made on several hosts at once.",
    )
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULT.json", help="what rate --json printed")
    parser.add_argument("--json", action="store_true", help="print one JSON object (with the raw histograms)")
    parser.add_argument("--report", type=Path, metavar="FILE.html", help="write a self-contained HTML report")
    parser.add_argument("--hdr-log", type=Path, metavar="FILE", help="write per-second percentiles as CSV")
    parser.add_argument("--max-p99", type=options.positive_duration, help="fail (exit 1) if corrected p99 exceeds")
    parser.add_argument("--max-p999", type=options.positive_duration, help="fail if corrected p99.9 exceeds")
    parser.add_argument("--max-error-rate", type=options.fraction, help="fail if more of the messages fail")
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
