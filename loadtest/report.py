"""The benchmark's outputs: target verdicts, a markdown table and an SVG bar chart.

Pure functions of the summary that loadtest.bench computes (medians and ranges per
scenario and server); the SVG is written by hand with the standard library.
"""

from __future__ import annotations

from html import escape
from typing import Any

OURS = "echo-service"
REFERENCE = "asyncio-protocol"
COLORS = ["#1b7837", "#2166ac", "#67a9cf", "#ef8a62", "#b2182b", "#999999"]


def _median(entry: dict[str, Any] | None, figure: str) -> float | None:
    if not entry or figure not in entry:
        return None
    return float(entry[figure]["median"])


def _find(summary: list[dict[str, Any]], scenario: str, server: str) -> dict[str, Any] | None:
    return next((e for e in summary if e["scenario"] == scenario and e["server"] == server), None)


def targets(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target from the bench issue, per scenario where it applies: holds or not, by how much."""
    verdicts: list[dict[str, Any]] = []
    scenarios = list(dict.fromkeys(e["scenario"] for e in summary))
    for scenario in scenarios:
        ours, reference = _find(summary, scenario, OURS), _find(summary, scenario, REFERENCE)
        if ours and reference:
            our_cpu, ref_cpu = _median(ours, "cpu_us_per_msg"), _median(reference, "cpu_us_per_msg")
            if our_cpu and ref_cpu:
                ratio = our_cpu / ref_cpu
                verdicts.append(
                    {
                        "target": f"CPU per message <= 0.8x asyncio Protocol ({scenario})",
                        "holds": ratio <= 0.8,
                        "detail": f"{ratio:.2f}x ({our_cpu:.2f} vs {ref_cpu:.2f} us)",
                    }
                )
            our_rate, ref_rate = _median(ours, "msgs_per_s"), _median(reference, "msgs_per_s")
            if our_rate is not None and ref_rate:
                ratio = our_rate / ref_rate
                verdicts.append(
                    {
                        "target": f"throughput >= asyncio Protocol ({scenario})",
                        "holds": ratio >= 1.0,
                        "detail": f"{ratio:.2f}x ({our_rate:,.0f} vs {ref_rate:,.0f} msgs/s)",
                    }
                )
        if ours and "idle_held" in ours:
            held = _median(ours, "idle_held") or 0
            per_conn = _median(ours, "rss_per_idle_conn_bytes") or 0
            idle_total = int(scenario.split("+ ")[1].split()[0]) if "+ " in scenario else 0
            verdicts.append(
                {
                    "target": f"all {idle_total} idle connections held, < 2 KB RSS each",
                    "holds": held >= idle_total and per_conn < 2048,
                    "detail": f"{held:.0f} held, {per_conn:.0f} B each",
                }
            )
        if ours and scenario.startswith("1000 busy"):
            p50, p999 = _median(ours, "p50_ms"), _median(ours, "p999_ms")
            if p50 and p999 is not None:
                verdicts.append(
                    {
                        "target": "1000 busy clients: p99.9 <= 3x p50",
                        "holds": p999 <= 3 * p50,
                        "detail": f"p99.9 {p999:.2f} ms = {p999 / p50:.1f}x p50 {p50:.2f} ms",
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
        "echoed in it: the fair figure when the Python load generator, not the server, is the bottleneck.",
    ]
    for scenario in dict.fromkeys(e["scenario"] for e in document["summary"]):
        lines += [
            "",
            f"## {scenario}",
            "",
            "| server | msgs/s | MB/s | p50 ms | p99 ms | p99.9 ms | CPU us/msg | peak RSS MiB | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for entry in (e for e in document["summary"] if e["scenario"] == scenario):
            lines.append(
                f"| {entry['server']} | {_cell(entry, 'msgs_per_s', ',.0f')} | {_cell(entry, 'mb_per_s', '.1f')} | "
                f"{_cell(entry, 'p50_ms', '.3f')} | {_cell(entry, 'p99_ms', '.3f')} | "
                f"{_cell(entry, 'p999_ms', '.3f')} | "
                f"{_cell(entry, 'cpu_us_per_msg', '.2f')} | {_cell(entry, 'peak_rss_mib', '.1f')} | "
                f"{_cell(entry, 'errors', '.0f')} |"
            )
            if "idle_held" in entry:
                lines[-1] = lines[-1][:-1] + (
                    f" idle held {_cell(entry, 'idle_held', '.0f')}, "
                    f"{_cell(entry, 'rss_per_idle_conn_bytes', '.0f')} B RSS each |"
                )
    lines += ["", "## Targets", "", "| target | holds | measured |", "| --- | --- | --- |"]
    lines += [f"| {v['target']} | {'yes' if v['holds'] else '**no**'} | {v['detail']} |" for v in document["targets"]]
    return "\n".join(lines) + "\n"


def svg(summary: list[dict[str, Any]]) -> str:
    """Two grouped bar charts: median msgs/s and median server CPU us/msg, with ranges."""
    scenarios = list(dict.fromkeys(e["scenario"] for e in summary))
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
        peak = max((e[figure]["max"] for e in summary if figure in e), default=1) or 1
        parts.append(f'<text x="{left}" y="{y0 - 12}" font-size="13" font-weight="bold">{escape(title)}</text>')
        parts.append(
            f'<line x1="{left}" y1="{y0 + panel_height}" x2="{width - 20}" y2="{y0 + panel_height}" stroke="#333"/>'
        )
        for tick in range(5):
            value = peak * tick / 4
            y = y0 + panel_height - panel_height * tick / 4
            parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{value:,.0f}</text>')
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
        x = left + s * 170
        parts.append(f'<rect x="{x}" y="{legend_y - 10}" width="12" height="12" fill="{COLORS[s % len(COLORS)]}"/>')
        parts.append(f'<text x="{x + 16}" y="{legend_y}">{escape(server)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
