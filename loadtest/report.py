"""The benchmark's outputs: ratios, target verdicts, a markdown table and an SVG bar chart.

Pure functions of what loadtest.bench measured: its rows (one per server, scenario and
repeat) and their summary (medians and ranges per scenario and server). Ratios are taken
per repeat (servers are interleaved, so repeat i of each ran in the same minute), then
their median and range reported. The SVG is written by hand with the standard library.
"""

from __future__ import annotations

import math
import statistics
from html import escape
from typing import Any

OURS = "echo-service"
REFERENCE = "asyncio-protocol"
UVLOOP = "uvloop-protocol"
CEILING = "c-epoll"
BASELINE = "echo-service@baseline"
COLORS = ["#1b7837", "#2166ac", "#67a9cf", "#ef8a62", "#b2182b", "#999999"]

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


def _find(summary: list[dict[str, Any]], scenario: str, server: str) -> dict[str, Any] | None:
    return next((e for e in summary if e["scenario"] == scenario and e["server"] == server), None)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """echo-service against every other server (the baseline checkout's too), per
    scenario: throughput and CPU per message (per connection in the churn scenario) as
    ours / theirs, taken repeat by repeat; median and range of those."""
    by_key = {(r["scenario"], r["server"], r.get("repeat", 0)): r for r in rows}
    out: list[dict[str, Any]] = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        for server in dict.fromkeys(r["server"] for r in rows if r["scenario"] == scenario):
            if server == OURS:
                continue
            rate: list[float] = []
            cpu: list[float] = []
            cpu_ratio = "cpu_per_msg"
            pairs = noisy_pairs = 0
            for (s, name, repeat), theirs in by_key.items():
                ours = by_key.get((s, OURS, repeat))
                if s != scenario or name != server or ours is None:
                    continue
                pairs += 1
                noisy_pairs += bool(ours.get("noisy") or theirs.get("noisy"))
                throughput, cpu_figure, cpu_ratio = figures_of(ours)
                if theirs.get(throughput):
                    rate.append(ours[throughput] / theirs[throughput])
                if ours.get(cpu_figure) and theirs.get(cpu_figure):
                    cpu.append(ours[cpu_figure] / theirs[cpu_figure])
            entry: dict[str, Any] = {"scenario": scenario, "versus": server, "pairs": pairs}
            entry["noisy_pairs"] = noisy_pairs  # either row of the pair measured beside a busy neighbour
            if rate:
                entry["throughput"] = _spread(rate)
            if cpu:
                entry[cpu_ratio] = _spread(cpu)
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
        ours = _find(summary, scenario, OURS)
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
        ceiling_cpu = _median(_find(document["summary"], scenario, CEILING), cpu_figure)
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


def nice_ticks(peak: float, most: int = 6) -> list[float]:
    """Axis ticks from 0 past ``peak``, a step of 1, 2 or 5 x 10^n, at most ``most`` of them."""
    if peak <= 0 or not math.isfinite(peak):
        return [0.0, 1.0]
    raw = peak / (most - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    count = math.ceil(peak / step - 1e-9)
    return [round(i * step, 12) for i in range(count + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:,.{decimals}f}"


def svg(summary: list[dict[str, Any]]) -> str:
    """Two grouped bar charts: median msgs/s and median server CPU us/msg, with ranges
    (per-message scenarios only: the churn scenario's figures are per connection)."""
    scenarios = list(dict.fromkeys(e["scenario"] for e in summary if "msgs_per_s" in e))
    servers = list(dict.fromkeys(e["server"] for e in summary))
    width, panel_height, top, left, gap = 980, 260, 40, 70, 60
    group_width = (width - left - 20) / max(1, len(scenarios))
    bar_width = group_width * 0.8 / max(1, len(servers))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_height + gap + 90}" '
        'font-family="sans-serif" font-size="11">',
        '<rect width="100%" height="100%" fill="white"/>',
    ]
    for panel, (figure, title) in enumerate(
        (
            ("msgs_per_s", "Throughput, msgs/s (higher is better)"),
            ("cpu_us_per_msg", "Server CPU per message, us (lower is better)"),
        )
    ):
        y0 = top + panel * (panel_height + gap)
        ticks = nice_ticks(max((e[figure]["max"] for e in summary if figure in e), default=1))
        peak = ticks[-1]
        parts.append(f'<text x="{left}" y="{y0 - 12}" font-size="13" font-weight="bold">{escape(title)}</text>')
        parts.append(
            f'<line x1="{left}" y1="{y0 + panel_height}" x2="{width - 20}" y2="{y0 + panel_height}" stroke="#333"/>'
        )
        for value in ticks:
            y = y0 + panel_height - panel_height * value / peak
            label = _tick_label(value, ticks[1])
            parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{label}</text>')
            parts.append(f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" stroke="#eee"/>')
        for g, scenario in enumerate(scenarios):
            gx = left + g * group_width + group_width * 0.1
            for s, server in enumerate(servers):
                entry = _find(summary, scenario, server)
                if not entry or figure not in entry:
                    continue
                stats = entry[figure]
                x = gx + s * bar_width
                height = panel_height * stats["median"] / peak
                parts.append(
                    f'<rect x="{x:.1f}" y="{y0 + panel_height - height:.1f}" width="{bar_width * 0.9:.1f}" '
                    f'height="{height:.1f}" fill="{COLORS[s % len(COLORS)]}">'
                    f"<title>{escape(server)}: {stats['median']:,.2f}</title></rect>"
                )
                low = y0 + panel_height - panel_height * stats["min"] / peak
                high = y0 + panel_height - panel_height * stats["max"] / peak
                mid = x + bar_width * 0.45
                if stats["max"] == 0:  # served nothing: say so rather than draw nothing
                    parts.append(f'<text x="{mid:.1f}" y="{y0 + panel_height - 4}" text-anchor="middle">0</text>')
                parts.append(f'<line x1="{mid:.1f}" y1="{low:.1f}" x2="{mid:.1f}" y2="{high:.1f}" stroke="#000"/>')
            if panel == 1:
                parts.append(
                    f'<text x="{gx + group_width * 0.4:.1f}" y="{y0 + panel_height + 16}" '
                    f'text-anchor="middle">{escape(scenario)}</text>'
                )
    legend_y = 2 * panel_height + gap + 75
    for s, server in enumerate(servers):
        x = left + s * 150
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{COLORS[s % len(COLORS)]}"/>')
        parts.append(f'<text x="{x + 16}" y="{legend_y}">{escape(server)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
