"""The ``--report FILE.html`` page of ``echo-client rate`` (and ``merge``): one
self-contained HTML file, inline SVG charts, no script and nothing fetched from elsewhere.

Charts: corrected latency percentiles per second (by intended send time, log scale), the
corrected and uncorrected distributions (latency by percentile, HdrHistogram's plot), and
the send rate achieved per second against the target. A table repeats the numbers of the
``--json`` summary; each cell carries ``data-key`` (e.g. ``corrected.p99``) and shows the
JSON's value as is, so what a person reads is what a pipeline reads.

``render`` is a pure function of a RateResult; any thread may call it.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

from client.histogram import PERCENTILES
from client.rate_result import LATE_S, RateResult

WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 860, 300, 70, 150, 30, 40
COLORS = {"p50": "#2b7bb9", "p90": "#3aa655", "p99": "#e08a1e", "max": "#c0392b", "uncorrected": "#7f8c8d"}
Series = tuple[str, str, Sequence[tuple[float, float]], bool]  # name, color, points, dashed

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; max-width: 1000px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: right; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
.warning { color: #a94400; font-weight: 600; }
svg text { font: 12px system-ui, sans-serif; fill: #333; } .grid { stroke: #e5e5e5; } .axis { stroke: #888; }
"""


def _cell(key: str, value: object) -> str:
    return f'<td data-key="{html.escape(key)}">{html.escape(str(value))}</td>'


def _log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    exponent = math.floor(math.log10(low))
    steps = (1, 2, 5) if high / low <= 1000 else (1,)  # over many decades 1-2-5 labels collide
    while 10**exponent <= high * 1.0001:
        for step in steps:
            tick = step * 10.0**exponent
            if low <= tick <= high:
                ticks.append(tick)
        exponent += 1
    return ticks


def _nice_step(rough: float) -> float:
    """The 1, 2, 2.5 or 5 times a power of ten at or above ``rough``."""
    power = 10 ** math.floor(math.log10(rough))
    return float(next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= rough))


def _chart(title: str, series: list[Series], x_label: str, x_ticks: list[tuple[float, str]], log_y: bool) -> str:
    points = [p for _, _, line, _ in series for p in line]
    if not points:
        return f"<p>{html.escape(title)}: no samples.</p>"
    xs = [x for x, _ in points] + [x for x, _ in x_ticks]
    x_low, x_high = min(xs), max(xs)
    x_high = x_high if x_high > x_low else x_low + 1
    ys = [y for _, y in points]
    if log_y:
        y_low = 10 ** math.floor(math.log10(max(min(y for y in ys if y > 0) if any(ys) else 0.001, 1e-4)))
        y_high = 10 ** math.ceil(math.log10(max(max(ys), y_low * 10)))
        y_ticks = _log_ticks(y_low, y_high)

        def scale_y(y: float) -> float:
            return math.log10(max(y, y_low) / y_low) / math.log10(y_high / y_low)
    else:
        y_step = _nice_step(max(max(ys) * 1.1, 1.0) / 5)
        y_low, y_high = 0.0, y_step * 5
        y_ticks = [y_step * step for step in range(6)]

        def scale_y(y: float) -> float:
            return (y - y_low) / (y_high - y_low)

    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> str:
        return f"{LEFT + (x - x_low) / (x_high - x_low) * inner_w:.1f},{TOP + inner_h - scale_y(y) * inner_h:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f'<text x="{LEFT}" y="18" font-weight="600">{html.escape(title)}</text>',
    ]
    for tick in y_ticks:
        y = TOP + inner_h - scale_y(tick) * inner_h
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for x_value, label in x_ticks:
        x = LEFT + (x_value - x_low) / (x_high - x_low) * inner_w
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + inner_h}"/>')
        parts.append(f'<text x="{x:.1f}" y="{TOP + inner_h + 16}" text-anchor="middle">{html.escape(label)}</text>')
    parts.append(f'<text x="{LEFT + inner_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">{html.escape(x_label)}</text>')
    for index, (name, color, line, dashed) in enumerate(series):
        if line:
            dash = ' stroke-dasharray="5,4"' if dashed else ""
            path = " ".join(at(x, y) for x, y in line)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{path}"/>')
        y = TOP + 10 + index * 18
        parts.append(f'<line x1="{WIDTH - RIGHT + 12}" x2="{WIDTH - RIGHT + 32}" y1="{y}" y2="{y}" stroke="{color}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 38}" y="{y + 4}">{html.escape(name)}</text>')
    parts.append(f'<rect class="axis" fill="none" x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}"/></svg>')
    return "\n".join(parts)


def _second_ticks(seconds: list[int]) -> list[tuple[float, str]]:
    if not seconds:
        return []
    last = max(seconds) + 1
    step = max(1, math.ceil(last / 10))
    return [(float(s), f"{s}") for s in range(0, last + 1, step)]


def _over_time(result: RateResult) -> str:
    seconds = sorted(result.seconds)
    lines: list[Series] = []
    for name in ("p50", "p90", "p99", "max"):
        points = [
            (index + 0.5, result.seconds[index].corrected.summary_ms()[name])
            for index in seconds
            if result.seconds[index].corrected.total
        ]
        lines.append((f"corrected {name}", COLORS[name], points, False))
    uncorrected = [
        (index + 0.5, result.seconds[index].uncorrected.summary_ms()["p99"])
        for index in seconds
        if result.seconds[index].uncorrected.total
    ]
    lines.append(("uncorrected p99", COLORS["uncorrected"], uncorrected, True))
    return _chart("Latency per second (ms, by intended send time)", lines, "second", _second_ticks(seconds), True)


def _distribution(result: RateResult) -> str:
    """Latency against percentile, x = log10(1 / (1 - p)): 0%, 90%, 99%, 99.9%, 99.99%."""
    fractions = [1 - 10 ** (-step / 20) for step in range(0, 20 * 5 + 1)]  # 0 .. 99.999%
    lines: list[Series] = []
    for name, histogram, color, dashed in (
        ("corrected", result.corrected, COLORS["p99"], False),
        ("uncorrected", result.uncorrected, COLORS["uncorrected"], True),
    ):
        points = [(-math.log10(1 - f), histogram.value_at(f) / 1e6) for f in fractions] if histogram.total else []
        lines.append((name, color, points, dashed))
    ticks = [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%"), (5.0, "99.999%")]
    return _chart("Latency by percentile (ms)", lines, "percentile", ticks, True)


def _rate(result: RateResult) -> str:
    seconds = [index for index in sorted(result.seconds) if index < result.duration_s]  # not the trailing part
    sent = [(index + 0.5, float(result.seconds[index].sent)) for index in seconds]
    target = [(0.0, result.target_rate), (float(max(seconds, default=0) + 1), result.target_rate)]
    lines: list[Series] = [("target", COLORS["max"], target, True), ("sent/s", COLORS["p50"], sent, False)]
    return _chart("Sends per second", lines, "second", _second_ticks(seconds), False)


def _table(summary: dict[str, object]) -> str:
    latency = summary["latency_ms"]
    assert isinstance(latency, dict)
    rows = ["<table><tr><th>ms</th>" + "".join(f"<th>{name}</th>" for name, _ in PERCENTILES) + "<th>max</th></tr>"]
    extra = {"send lateness": summary["send_lateness_ms"], "connect": summary["connect_ms"]}
    for label, values in [*latency.items(), *extra.items()]:
        key = label.replace(" ", "_")
        cells = "".join(_cell(f"{key}.{name}", values[name]) for name in [*(n for n, _ in PERCENTILES), "max"])
        rows.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    rows.append("</table>")
    facts = ["target_rate", "achieved_rate", "sent", "received", "late_sends", "error_rate", "connected", "processes"]
    rows.append("<table>" + "".join(f"<tr><th>{name}</th>{_cell(name, summary[name])}</tr>" for name in facts))
    errors = summary["errors"]
    assert isinstance(errors, dict)
    for kind, count in errors.items():
        rows.append(f"<tr><th>errors: {html.escape(kind)}</th>{_cell('errors.' + kind, count)}</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def render(result: RateResult) -> str:
    summary = result.summary()
    warnings = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in result.warnings())
    heading = (
        f"echo-client rate: {result.target_rate:,.0f}/s target, {result.achieved_rate:,.1f}/s achieved, "
        f"{result.duration_s:g} s, {result.connected} connections x {result.size} B"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>{STYLE}</style></head>
<body>
<h1>{html.escape(heading)}</h1>
<p>Corrected latency runs from when each message <em>should</em> have been sent (its place in the schedule) to
when its echo came back, so a stall counts for every message it delayed; uncorrected runs from when it actually
left. A send is late when it left more than {LATE_S * 1000:g} ms after its intended time.</p>
{warnings}
{_table(summary)}
<h2>Latency over time</h2>
{_over_time(result)}
<h2>Distribution</h2>
{_distribution(result)}
<h2>Rate achieved</h2>
{_rate(result)}
</body></html>
"""
