"""The benchmark's outputs: ratios, target verdicts and the markdown table (chart.py: the SVG).

Pure functions of what loadtest.bench measured: its rows (one per server, scenario and
repeat) and their summary (medians and ranges per scenario and server). Ratios are taken
per repeat (servers are interleaved, so repeat i of each ran in the same minute), then
their median and range reported.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

OURS = "echo-service"
REFERENCE = "asyncio-protocol"
UVLOOP = "uvloop-protocol"
CEILING = "c-epoll"
BASELINE = "echo-service@baseline"

# The targets, as ratios to servers measured in the same run (see the README).
THROUGHPUT_VS_REFERENCE_MIN = 0.9  # at parity with asyncio Protocol: not more than 10% slower
CPU_VS_REFERENCE_MAX = 1.1  # at parity with asyncio Protocol: not more than 10% more CPU per message
CPU_VS_CEILING_MAX = 2.0  # on this VM the kernel's loopback TCP is most of a message's CPU, in C or Python
CPU_VS_UVLOOP_MAX = 1.0  # issue 25: the fastest event loop Python has is the bar
CHURN_CPU_VS_REFERENCE_MAX = 1.0  # issue 25: a connection, info logging included, as cheap as asyncio's
CPU_VS_BASELINE_MAX = 1.05  # no regression against the baseline checkout, beyond 5% of noise
IDLE_BYTES_MAX = 2048
# (server, ratio, limit, wording): throughput must reach the limit, CPU per message stay under it.
RATIO_TARGETS = (
    (REFERENCE, "throughput", THROUGHPUT_VS_REFERENCE_MIN, "throughput >= {limit:g}x asyncio Protocol"),
    (REFERENCE, "cpu_per_msg", CPU_VS_REFERENCE_MAX, "CPU per message <= {limit:g}x asyncio Protocol"),
    (UVLOOP, "cpu_per_msg", CPU_VS_UVLOOP_MAX, "CPU per message <= {limit:g}x uvloop Protocol"),
    (CEILING, "cpu_per_msg", CPU_VS_CEILING_MAX, "CPU per message <= {limit:g}x the C epoll server"),
    (BASELINE, "cpu_per_msg", CPU_VS_BASELINE_MAX, "CPU per message <= {limit:g}x the baseline"),
    (REFERENCE, "cpu_per_conn", CHURN_CPU_VS_REFERENCE_MAX, "CPU per connection <= {limit:g}x asyncio Protocol"),
    (BASELINE, "cpu_per_conn", CPU_VS_BASELINE_MAX, "CPU per connection <= {limit:g}x the baseline"),
)
# A row's throughput and CPU figures: per message, or per connection in the churn scenario.
MESSAGE_FIGURES = ("msgs_per_s", "cpu_us_per_msg", "cpu_per_msg")
CHURN_FIGURES = ("conns_per_s", "cpu_us_per_conn", "cpu_per_conn")


def figures_of(row: dict[str, Any]) -> tuple[str, str, str]:
    """(throughput figure, CPU figure, CPU ratio name) of a row or summary entry."""
    return CHURN_FIGURES if "conns_per_s" in row else MESSAGE_FIGURES


P999_OVER_P50_MAX = 3.0


def _median(entry: dict[str, Any] | None, figure: str) -> float | None:
    if not entry or figure not in entry:
        return None
    return float(entry[figure]["median"])


def find_entry(summary: list[dict[str, Any]], scenario: str, server: str) -> dict[str, Any] | None:
    return next((e for e in summary if e["scenario"] == scenario and e["server"] == server), None)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


@dataclass
class Paired:
    """One server's figures over another's, repeat by repeat, in one run's rows."""

    throughput: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    cpu_ratio: str = "cpu_per_msg"  # or cpu_per_conn, in the churn scenario
    pairs: int = 0
    noisy_pairs: int = 0  # either row of the pair measured beside a busy neighbour


Rows = dict[tuple[str, str, int], dict[str, Any]]


def by_repeat(rows: list[dict[str, Any]]) -> Rows:
    """One run's rows, keyed by (scenario, server, repeat)."""
    return {(r["scenario"], r["server"], r.get("repeat", 0)): r for r in rows}


def paired(by_key: Rows, scenario: str, ours: str, theirs: str) -> Paired:
    """``ours`` / ``theirs`` in ``scenario``, for every repeat in which both ran."""
    result = Paired()
    for (s, name, repeat), their_row in by_key.items():
        our_row = by_key.get((s, ours, repeat))
        if s != scenario or name != theirs or our_row is None:
            continue
        result.pairs += 1
        result.noisy_pairs += bool(our_row.get("noisy") or their_row.get("noisy"))
        throughput, cpu_figure, result.cpu_ratio = figures_of(our_row)
        if their_row.get(throughput):
            result.throughput.append(our_row[throughput] / their_row[throughput])
        if our_row.get(cpu_figure) and their_row.get(cpu_figure):
            result.cpu.append(our_row[cpu_figure] / their_row[cpu_figure])
    return result


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """echo-service against every other server (the baseline checkout's too), per
    scenario: throughput and CPU per message (per connection in the churn scenario) as
    ours / theirs, taken repeat by repeat; median and range of those."""
    by_key = by_repeat(rows)
    out: list[dict[str, Any]] = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        for server in dict.fromkeys(r["server"] for r in rows if r["scenario"] == scenario):
            if server == OURS:
                continue
            pair = paired(by_key, scenario, OURS, server)
            entry: dict[str, Any] = {"scenario": scenario, "versus": server, "pairs": pair.pairs}
            entry["noisy_pairs"] = pair.noisy_pairs
            if pair.throughput:
                entry["throughput"] = _spread(pair.throughput)
            if pair.cpu:
                entry[pair.cpu_ratio] = _spread(pair.cpu)
            out.append(entry)
    return out


def _range_text(spread: dict[str, float]) -> str:
    return f"{spread['median']:.2f}x ({spread['min']:.2f}-{spread['max']:.2f})"


def targets(summary: list[dict[str, Any]], ratio_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target, per scenario where it applies: holds (on the median) or not, and the
    median with the range over repeats."""
    verdicts: list[dict[str, Any]] = []
    scenarios = list(dict.fromkeys(e["scenario"] for e in summary))
    for scenario in scenarios:
        ours = find_entry(summary, scenario, OURS)
        versus = {r["versus"]: r for r in ratio_list if r["scenario"] == scenario}
        for server, figure, limit, wording in RATIO_TARGETS:
            spread = versus.get(server, {}).get(figure)
            if spread is None:
                continue
            holds = spread["median"] >= limit if figure == "throughput" else spread["median"] <= limit
            target = f"{wording.format(limit=limit)} ({scenario})"
            verdicts.append({"target": target, "holds": holds, "detail": _range_text(spread)})
        if ours and "idle_held" in ours:
            held = _median(ours, "idle_held") or 0
            per_conn = _median(ours, "rss_per_idle_conn_bytes") or 0
            idle_total = int(scenario.split("+ ")[1].split()[0]) if "+ " in scenario else 0
            verdicts.append(
                {
                    "target": f"all {idle_total} idle connections held, < 2 KB RSS each",
                    "holds": held >= idle_total and per_conn < IDLE_BYTES_MAX,
                    "detail": f"{held:.0f} held, {per_conn:.0f} B each",
                }
            )
        if ours and scenario.startswith("1000 busy") and "p999_over_p50" in ours:
            spread = ours["p999_over_p50"]
            p50, p999 = _median(ours, "p50_ms"), _median(ours, "p999_ms")
            verdicts.append(
                {
                    "target": f"1000 busy clients: p99.9 <= {P999_OVER_P50_MAX:g}x p50",
                    "holds": spread["median"] <= P999_OVER_P50_MAX,
                    "detail": f"{_range_text(spread)} over repeats; medians p99.9 {p999:.2f} ms, p50 {p50:.2f} ms",
                }
            )
    return verdicts


def _cell(entry: dict[str, Any], figure: str, fmt: str) -> str:
    if figure not in entry:
        return "-"
    value = entry[figure]
    median = format(value["median"], fmt)
    if value["min"] == value["max"]:
        return median
    return f"{median} ({format(value['min'], fmt)}-{format(value['max'], fmt)})"


def markdown(document: dict[str, Any]) -> str:
    machine, settings = document["machine"], document["settings"]
    lines = [
        "# Benchmark: echo-service and reference servers",
        "",
        f"One run on {machine['cpus']} CPUs, Python {machine['python']}; servers pinned to CPUs "
        f"{machine['server_cpus'] or 'unpinned'}, the load generator to {machine['load_cpus'] or 'unpinned'}. "
        f"Each row: median (min-max) of {settings['repeats']} runs of {settings['duration_s']:g} s, "
        "1 message in flight per connection, every echoed byte verified.",
        "",
        "CPU us/msg is the server's user+system CPU time over the measured window divided by the messages "
        "echoed in it: the fair figure when the Python load generator, not the server, is the bottleneck. "
        "CPU x C is that figure over the C epoll server's (the practical ceiling) in the same scenario.",
        "",
        f"Before its measured window every server was warmed up alike: {settings.get('warm_up', 'not recorded')} "
        f"({settings.get('warmup_s', 0):g} s).",
    ]
    for server, why in document.get("skipped", {}).items():
        lines += ["", f"Skipped {server}: {why}."]
    threshold = settings.get("noise_threshold_cores")
    if threshold is not None:
        lines += [
            "",
            f"Others is the CPU, in cores, that the machine's other processes used during the window. A row where "
            f"they used more than {threshold:g} of a core was re-run (at most {settings['noise_retries']} times); "
            "**noisy** n/m after it counts the repeats still over it, kept for want of a quiet one.",
        ]
    if "churn_rate" in settings:
        lines += [
            "",
            f"Churn: short connections (connect, echo 16 bytes, close) offered at {settings['churn_rate']:,.0f} a "
            f"second from {settings['churn_processes']} load process(es); CPU us/conn is the server's CPU over the "
            "window divided by the connections completed in it, log lines/conn the lines the server wrote to "
            "its output in the window per connection completed. Late is the share of connections the load "
            "generator started more than 5 ms after their time (high: it, not the server, fell behind). "
            "echo-service logs at info (two lines per connection) to a pipe that the bench drains; the reference "
            "servers log nothing.",
        ]
    for scenario in dict.fromkeys(e["scenario"] for e in document["summary"]):
        entries = [e for e in document["summary"] if e["scenario"] == scenario]
        churn = any("conns_per_s" in e for e in entries)
        _, cpu_figure, _ = CHURN_FIGURES if churn else MESSAGE_FIGURES
        lines += ["", f"## {scenario}", ""]
        if churn:
            lines += [
                "| server | offered conn/s | late | conn/s | p50 ms | p99 ms | log lines/conn | CPU us/conn | CPU x C "
                "| peak RSS MiB | errors | others |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
        else:
            lines += [
                "| server | msgs/s | MB/s | p50 ms | p99 ms | p99.9 ms | CPU us/msg | CPU x C | peak RSS MiB "
                "| errors | others |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
        ceiling_cpu = _median(find_entry(document["summary"], scenario, CEILING), cpu_figure)
        for entry in entries:
            cpu = _median(entry, cpu_figure)
            times_c = f"{cpu / ceiling_cpu:.1f}" if cpu and ceiling_cpu else "-"
            others = _cell(entry, "others_cores", ".2f")
            if entry.get("noisy_repeats"):
                others += f" **noisy** {entry['noisy_repeats']}/{entry['repeats']}"
            if churn:
                middle = (
                    f"{_cell(entry, 'offered_per_s', ',.0f')} | {_cell(entry, 'late_fraction', '.0%')} | "
                    f"{_cell(entry, 'conns_per_s', ',.0f')} | "
                    f"{_cell(entry, 'p50_ms', '.3f')} | {_cell(entry, 'p99_ms', '.3f')} | "
                    f"{_cell(entry, 'log_lines_per_conn', '.2f')} | "
                )
            else:
                middle = (
                    f"{_cell(entry, 'msgs_per_s', ',.0f')} | {_cell(entry, 'mb_per_s', '.1f')} | "
                    f"{_cell(entry, 'p50_ms', '.3f')} | {_cell(entry, 'p99_ms', '.3f')} | "
                    f"{_cell(entry, 'p999_ms', '.3f')} | "
                )
            errors = _cell(entry, "errors", ".0f")
            if "idle_held" in entry:
                errors += (
                    f"; idle held {_cell(entry, 'idle_held', '.0f')}, "
                    f"{_cell(entry, 'rss_per_idle_conn_bytes', '.0f')} B RSS each"
                )
            lines.append(
                f"| {entry['server']} | {middle}{_cell(entry, cpu_figure, '.2f')} | {times_c} | "
                f"{_cell(entry, 'peak_rss_mib', '.1f')} | {errors} | {others} |"
            )
    lines += [
        "",
        "## echo-service / other server, per repeat",
        "",
        "Median (min-max) over repeats of echo-service's figure divided by the other server's in the same repeat; "
        "noisy pairs counts the pairs in which either row was measured beside a busy neighbour.",
        "",
        "| scenario | versus | throughput | CPU per message (churn: per connection) | noisy pairs |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for entry in document.get("ratios", []):
        rate = _range_text(entry["throughput"]) if "throughput" in entry else "-"
        cpu_ratio = entry.get("cpu_per_msg", entry.get("cpu_per_conn"))
        per_msg = _range_text(cpu_ratio) if cpu_ratio else "-"
        noisy = f"{entry['noisy_pairs']}/{entry['pairs']}" if "pairs" in entry else "-"
        lines.append(f"| {entry['scenario']} | {entry['versus']} | {rate} | {per_msg} | {noisy} |")
    lines += ["", "## Targets", "", "| target | holds | measured |", "| --- | --- | --- |"]
    lines += [f"| {v['target']} | {'yes' if v['holds'] else '**no**'} | {v['detail']} |" for v in document["targets"]]
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and range of each figure, per (scenario, server), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["server"]), []).append(row)
    summary = []
    figures = (
        "msgs_per_s",
        "mb_per_s",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "p999_over_p50",
        "cpu_us_per_msg",
        "peak_rss_mib",
        "rss_per_idle_conn_bytes",
        "idle_held",
        "errors",
        "offered_per_s",
        "conns_per_s",
        "cpu_us_per_conn",
        "load_cpu_us_per_conn",
        "late_fraction",
        "log_lines_per_conn",
        "others_cores",
    )
    for (scenario, server), group in groups.items():
        entry: dict[str, Any] = {"scenario": scenario, "server": server, "repeats": len(group)}
        entry["noisy_repeats"] = sum(1 for row in group if row.get("noisy"))
        entry["reruns"] = sum(row.get("attempt", 0) for row in group)
        for figure in figures:
            values = [row[figure] for row in group if row.get(figure) is not None]
            if values:
                entry[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        summary.append(entry)
    return summary
