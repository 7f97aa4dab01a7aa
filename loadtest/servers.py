"""The servers ``make bench`` runs: their commands, how the C reference and the TLS
files are made, and a running server's CPU time and memory from /proc.

Used by loadtest/bench.py on its main thread only. ``build_c_server`` and
``make_tls_files`` fill in the commands of the two servers that need a build step.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from loadtest.noise import process_tree, tree_seconds

ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = ROOT / "loadtest" / "epoll_echo.c"
C_SERVER = "c-epoll"
UVLOOP_SERVER = "uvloop-protocol"
FLOOR_SERVER = "python-floor"  # the interpreter's floor: a bare epoll loop, no engine
TLS_SERVER = "echo-service-tls"
TLS_SERVERS = ("echo-service", TLS_SERVER)
SERVERS = {
    # As users run it (info logging included); only the limits are raised for 10,000 idle.
    "echo-service": [
        sys.executable,
        "-m",
        "server",
        "--port",
        "0",
        "--admin-port",
        "off",
        "--max-connections",
        "15000",
        "--max-connections-per-ip",
        "15000",
    ],
    "asyncio-protocol": [sys.executable, "-m", "loadtest.reference_servers", "asyncio"],
    UVLOOP_SERVER: [sys.executable, "-m", "loadtest.reference_servers", "uvloop"],
    FLOOR_SERVER: [sys.executable, "-m", "loadtest.reference_servers", "floor"],
    "asyncio-streams": [sys.executable, "-m", "loadtest.reference_servers", "streams"],
    "threading-tcpserver": [sys.executable, "-m", "loadtest.reference_servers", "threading"],
    "seed-threadpool-128": [sys.executable, "-m", "loadtest.reference_servers", "seed"],
    C_SERVER: [],  # filled in by build_c_server()
    TLS_SERVER: [],  # filled in by make_tls_files(): echo-service with --tls-port
}
BASELINE_SERVER = "echo-service@baseline"
SERVER_CWD: dict[str, Path] = {}  # a server run from another checkout (the baseline)
WORKERS_SERVER = "echo-service-2-workers"
SERVERS[WORKERS_SERVER] = [*SERVERS["echo-service"], "--workers", "2"]
WORKER_SERVERS = ("echo-service", WORKERS_SERVER)


def add_baseline(checkout: Path) -> str:
    """echo-service as another checkout has it (``git worktree add DIR COMMIT``), for a
    same-run before/after: the same command, run from that checkout."""
    if not (checkout / "server" / "__main__.py").exists():
        raise ValueError(f"{checkout} is not a checkout of echo-service (no server/__main__.py)")
    SERVERS[BASELINE_SERVER] = list(SERVERS["echo-service"])
    SERVER_CWD[BASELINE_SERVER] = checkout
    return BASELINE_SERVER


def uvloop_missing() -> str | None:
    """Why the uvloop row cannot run here, or None (it is a development-only dependency)."""
    if importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install uvloop; the product never imports it)"
    return None


def watch_admin(port: int) -> None:
    """Give every echo-service command the admin endpoint on ``port`` instead of none
    (one server runs at a time, so one port serves them all in turn)."""
    for command in SERVERS.values():
        if "--admin-port" in command:
            command[command.index("--admin-port") + 1] = str(port)


def build_c_server(build_dir: Path) -> str | None:
    """Compile the C reference into ``build_dir``; None if done, else why it was not."""
    compiler = shutil.which("cc")
    if compiler is None:
        return "no C compiler (cc) on PATH"
    binary = build_dir / "epoll_echo"
    result = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(C_SOURCE)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        return f"cc failed: {(result.stderr.strip().splitlines() or ['exit ' + str(result.returncode)])[0]}"
    SERVERS[C_SERVER] = [str(binary), "127.0.0.1", "0"]
    return None


def make_tls_files(build_dir: Path) -> str | None:
    """A self-signed certificate and key in ``build_dir`` for TLS_SERVER; None if done, else why not."""
    if shutil.which("openssl") is None:
        return "no openssl command on PATH"
    cert, key = build_dir / "cert.pem", build_dir / "key.pem"
    result = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return f"openssl failed: exit {result.returncode}"
    SERVERS[TLS_SERVER] = [*SERVERS["echo-service"], "--tls-port", "0", "--tls-cert", str(cert), "--tls-key", str(key)]
    return None


class ServerUnderTest:
    """A server subprocess; its address comes from its first line of output."""

    def __init__(self, name: str, server_cpus: set[int] | None) -> None:
        if not SERVERS[name]:
            raise RuntimeError(f"{name} has no command (not built)")
        self.name = name
        self.tls_address: tuple[str, int] | None = None

        def pin() -> None:
            if server_cpus:
                os.sched_setaffinity(0, server_cpus)

        self.proc = subprocess.Popen(
            SERVERS[name],
            cwd=SERVER_CWD.get(name, ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=pin,
        )
        assert self.proc.stdout is not None
        self.address = self._read_address()
        # Keep reading its output (echo-service's log lines) as a collector would, so a full
        # pipe never stalls it; the lines are counted and dropped, not kept in memory.
        self.log_lines = self.log_bytes = 0  # written by the drain thread only; read as snapshots
        self._drain = threading.Thread(target=self._drain_output, args=(self.proc.stdout.fileno(),), daemon=True)
        self._drain.start()

    def _drain_output(self, fd: int) -> None:
        while chunk := os.read(fd, 65536):
            self.log_lines += chunk.count(b"\n")
            self.log_bytes += len(chunk)

    def _read_address(self) -> tuple[str, int]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until the server says where it listens
            if " tls_address=" in line:
                host, _, port = line.split("tls_address=")[1].split()[0].rpartition(":")
                self.tls_address = (host.strip("[]"), int(port))
            if line.startswith("LISTENING "):
                _, host, port = line.split()
                return host, int(port)
            if '"event":"ready"' in line or " ready address=" in line:
                host, _, port = line.split("address=")[1].split()[0].rpartition(":")
                return host.strip("[]"), int(port)
        raise RuntimeError(f"{self.name} exited before listening")

    def cpu_seconds(self) -> float:
        """The server's CPU time, with its child processes' (a supervisor's workers)."""
        return tree_seconds([self.proc.pid])

    def _process_tree(self) -> list[int]:
        return process_tree([self.proc.pid])

    def memory_kib(self, key: str) -> int:
        """Summed over the server's processes (for VmHWM: the sum of each one's peak)."""
        total = 0
        for pid in self._process_tree():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += sum(int(line.split()[1]) for line in lines if line.startswith(key + ":"))
        return total

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._drain.join(10)
        if self.proc.stdout:
            self.proc.stdout.close()
