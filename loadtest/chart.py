"""The benchmark's SVG bar chart, written by hand with the standard library.

A pure function of loadtest.bench's summary (medians and ranges per scenario and
server); report.py holds the rest of the bench's outputs.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from loadtest.report import find_entry

COLORS = ["#1b7837", "#2166ac", "#67a9cf", "#ef8a62", "#b2182b", "#999999"]


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
                entry = find_entry(summary, scenario, server)
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
