"""The report of one loadtest/reload.py run: a JSON document and its text summary.

Called on that run's main thread once the run has ended; reads the Run, the connect
loop's counts and failures, and the server's log lines. Nothing here holds a payload
byte: failures are kinds, times and lengths.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from loadtest.connect_loop import ATTEMPT_TIMEOUT_S, FAILURES, OK, THREADS, ConnectLoop, Failure
from loadtest.server_log import ServerLog

if TYPE_CHECKING:
    from loadtest.reload import Kill, Run

KILL_WINDOW_S = 0.5  # failures this soon after a kill are the killed worker's


def in_window(failure: Failure, kills: list[Kill]) -> bool:
    return any(kill.at <= failure.ended <= kill.at + KILL_WINDOW_S for kill in kills)


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _context(at: float, result: Run, log: ServerLog) -> str:
    """What happened last before ``at``: the latest reload done or kill sent."""
    marks = [(k.at, f"kill {n + 1}") for n, k in enumerate(result.kills)]
    marks += [(arrived, f"reloaded gen {r['generation']}") for arrived, r in log.seen if r.get("event") == "reloaded"]
    earlier = [(t, label) for t, label in marks if t <= at]
    if not earlier:
        return "before any reload or kill"
    t, label = max(earlier)
    return f"{at - t:.3f} s after {label}"


def report(result: Run, load: ConnectLoop, log: ServerLog) -> dict[str, Any]:
    counts = load.counts
    attempted = sum(counts.values())
    elapsed = max(1e-9, load.ended - load.started)
    outside = [f for f in load.failures if not in_window(f, result.kills)]
    stopped = log.named("stopped")
    dropped = log.named("log_dropped")
    warnings = [
        f"{r.get('level')}: {r.get('logger')}: {r.get('message')}"
        for r in log.named("log")
        if r.get("level") in ("warning", "error")
    ]
    return {
        "passed": not result.problems,
        "problems": result.problems,
        "settings": {
            "workers": result.settings.workers,
            "rate": result.settings.rate,
            "seconds": result.settings.seconds,
            "reloads": result.settings.reloads,
            "kills": result.settings.kills,
            "threads": THREADS,
            "attempt_timeout_s": ATTEMPT_TIMEOUT_S,
            "kill_window_s": KILL_WINDOW_S,
        },
        "address": result.address,
        "admin_address": result.admin_address,
        "load_s": round(elapsed, 3),
        "attempted": attempted,
        **{kind: counts[kind] for kind in (OK, *FAILURES)},
        "rate": round(attempted / elapsed, 1),
        "outside_kill_windows": {kind: sum(1 for f in outside if f.kind == kind) for kind in FAILURES},
        "in_kill_windows": {kind: sum(k.window[kind] for k in result.kills) for kind in FAILURES},
        "failures_outside": [
            {
                "at_s": round(f.ended - load.started, 3),
                "took_s": round(f.ended - f.started, 3),
                "kind": f.kind,
                "detail": f.detail,
                "when": _context(f.ended, result, log),
            }
            for f in sorted(outside, key=lambda f: f.ended)[:20]
        ],
        "reloads": len(result.reload_s),
        "reload_s": [round(s, 3) for s in result.reload_s],
        "kills": [
            {
                "at_s": round(k.at - load.started, 3),
                "worker": k.worker,
                "pid": k.pid,
                "status": k.status,
                "connections_lost": k.connections_lost,
                "replacement_pid": k.replacement_pid,
                "ready_s": None if k.ready_s is None else round(k.ready_s, 3),
                "restart_s": k.restart_s,
                "failed_in_window": {kind: k.window[kind] for kind in FAILURES if k.window[kind]},
            }
            for k in result.kills
        ],
        "kill_to_ready_s": _spread([k.ready_s for k in result.kills if k.ready_s is not None]),
        "restart_s": _spread([k.restart_s for k in result.kills if k.restart_s is not None]),
        "server_exit": result.exit_code,
        "server_workers_restarted": stopped[-1].get("workers_restarted") if stopped else None,
        "server_log_dropped": sum(int(r.get("dropped", 0)) for r in dropped),
        "server_lines": log.counts(),
        "server_warnings": warnings[:20],
    }


def _ms(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    return " / ".join(f"{spread[k] * 1000:.0f}" for k in ("min", "median", "max")) + " ms (min / median / max)"


def summary(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        f"reload harness: {s['workers']} workers, up to {s['rate']:g} connections/s for {s['seconds']:g} s, "
        f"{s['reloads']} reloads, {s['kills']} kills (server {doc['address']})",
        f"  connections  {doc['attempted']} attempted in {doc['load_s']:.1f} s ({doc['rate']:.0f}/s): "
        + ", ".join(f"{kind} {doc[kind]}" for kind in (OK, *FAILURES)),
        "  outside kill windows: " + ", ".join(f"{k} {v}" for k, v in doc["outside_kill_windows"].items()),
        f"  within {s['kill_window_s']} s of a kill: "
        + ", ".join(f"{k} {v}" for k, v in doc["in_kill_windows"].items()),
    ]
    for failure in doc["failures_outside"]:
        lines.append(
            f"    {failure['kind']} at {failure['at_s']:.3f} s ({failure['when']}, took {failure['took_s']:.3f} s): "
            f"{failure['detail']}"
        )
    lines.append(
        f"  reloads      {doc['reloads']} of {s['reloads']}; SIGHUP -> reloaded: "
        + (", ".join(f"{v * 1000:.0f}" for v in doc["reload_s"]) + " ms" if doc["reload_s"] else "-")
    )
    for n, kill in enumerate(doc["kills"], 1):
        ready = "not replaced" if kill["ready_s"] is None else f"ready after {kill['ready_s'] * 1000:.0f} ms"
        restart = "" if kill["restart_s"] is None else f" (restart_s {kill['restart_s']:.3f})"
        lines.append(
            f"  kill {n}       at {kill['at_s']:.2f} s: worker {kill['worker']} pid {kill['pid']} "
            f"({kill['status']}, {kill['connections_lost']} connections lost) -> pid {kill['replacement_pid']}, "
            f"{ready}{restart}; failed in window: {kill['failed_in_window'] or 'none'}"
        )
    lines.append(f"  kill -> ready  {_ms(doc['kill_to_ready_s'])}")
    lines.append(f"  restart_s      {_ms(doc['restart_s'])}")
    lines.append(
        f"  server exit {doc['server_exit']}, workers restarted {doc['server_workers_restarted']}, "
        f"log lines dropped {doc['server_log_dropped']}"
    )
    for warning in doc["server_warnings"]:
        lines.append(f"  server said  {warning}")
    lines.append("PASS" if doc["passed"] else "FAIL:\n" + "\n".join(f"  - {p}" for p in doc["problems"]))
    return "\n".join(lines)
