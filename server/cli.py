"""echo-server's command line: argv + environment -> Config, then run until a signal.

Every setting is a flag and an ``ECHO_*`` environment variable, built from
config.SETTINGS; a flag wins over the environment. Exit codes:

    0  stopped by SIGTERM/SIGINT/SIGQUIT after a graceful drain
    1  could not listen (port in use, bad address); a second stop signal during the
       drain; a server thread died (after a graceful, bounded stop); a thread stuck
       in a bug at exit (not waited for)
    2  invalid flag or environment value, a log file that cannot be opened, or a TLS
       certificate/key/CA file that cannot be used: one line naming the setting, no
       traceback

What each signal means is in signals.py; what the main thread does about it, here
(``_Run``).

``python3 -m server healthcheck`` is the container's probe (see healthcheck.py);
``python3 -m server analyze`` summarizes JSON logs (see analyze.py).
Everything here runs on the main thread, but the stopper thread (``_Run._begin_stop``)
and the failure callback (any thread; it only wakes the main thread).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from server.arguments import PROG, UsageError, load_config, load_with_sources, unknown_environment
from server.config import Config, flag_name
from server.core import FINAL_FLUSH_S, STOP_MARGIN_S, EchoServer
from server.engine.tls import TlsError
from server.lib.net import ListenError
from server.listeners import listener_specs, load_tls
from server.observe.exchange import Exchange, get_exchange
from server.observe.faults_api import load_token
from server.observe.logger import LEVELS, LogActor
from server.observe.sinks import LogFileError
from server.observe.stats import Stats
from server.signals import Action, Signals, Wakeup
from server.workers.supervisor import Supervisor

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
LOG_DRAIN_S = 5.0  # at exit, how long the log may take to write what it holds
# Past shutdown_timeout, how long the main thread trusts EchoServer.shutdown() before it
# gives up on it and exits 1: shutdown() itself waits at most the final flush, a margin for
# the acceptor and one for the schedulers, and the admin close (1 s); 2 s to spare.
STOP_WATCHDOG_S = FINAL_FLUSH_S + 2 * STOP_MARGIN_S + 3.0

log = logging.getLogger("echo.cli")


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = os.environ if environ is None else environ
    if argv[:1] == ["healthcheck"]:
        from server.tools.healthcheck import main as healthcheck

        return healthcheck(argv[1:], environ)
    if argv[:1] == ["analyze"]:
        from server.tools.analyze import main as analyze

        return analyze(argv[1:])
    sources: dict[str, str] = {}
    try:
        config, sources = load_with_sources(argv, environ)
        stats = Stats()
        actor = LogActor(
            stats,
            log_format=config.log_format,
            log_level=config.log_level,
            mailbox_size=config.log_queue,
            log_file=config.log_file,
            max_bytes=config.log_max_bytes,
            backups=config.log_backups,
        )
        load_tls(config, listener_specs(config))  # the files' problems, named by flag, before anything starts
        if config.admin_token_file is not None:
            try:
                load_token(config.admin_token_file)
            except ValueError as error:
                raise UsageError(f"{sources.get('admin_token_file', '--admin-token-file')}: {error}") from None
    except TlsError as error:
        print(
            f"{PROG}: error: {sources.get(error.setting, flag_name(error.setting))}: {error.problem}", file=sys.stderr
        )
        return EXIT_USAGE
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except LogFileError as error:
        print(f"{PROG}: error: {sources.get('log_file', flag_name('log_file'))}: {error}", file=sys.stderr)
        return EXIT_USAGE
    return serve(config, stats, actor, unknown_environment(environ), lambda: load_config(argv, environ))


def serve(
    config: Config,
    stats: Stats,
    actor: LogActor,
    warnings: Sequence[str] = (),
    reload_config: Callable[[], Config] | None = None,
) -> int:
    """Run until stopped: one EchoServer, or with ``workers`` > 1 a Supervisor of worker
    processes. ``reload_config`` re-reads the settings for SIGHUP (workers only)."""
    exchange = get_exchange("events")
    echo_logger = logging.getLogger("echo")
    echo_logger.setLevel(LEVELS[config.log_level])
    echo_logger.propagate = False
    with Signals() as signals:  # first: from here on no handled signal kills the process
        echo_logger.addHandler(actor.handler)
        actor.start()
        exchange.attach(actor)

        def finish_logging(timeout: float) -> None:
            _finish_logging(exchange, echo_logger, actor, timeout)

        try:
            for warning in warnings:
                log.warning("%s", warning)
            server: EchoServer | Supervisor
            if config.workers > 1:
                server = Supervisor(config, stats=stats, exchange=exchange, log_actor=actor)
            else:
                server = EchoServer(config, stats=stats, exchange=exchange)
            run = _Run(server, signals, actor, finish_logging, reload_config)
            server.add_failure_callback(run.on_thread_failure)
            try:
                server.start()
            except ListenError as error:
                print(f"{PROG}: {_listen_problem(error, server)}", file=sys.stderr)
                return EXIT_FAILED
            except TlsError as error:  # a TLS file changed since main() checked it
                print(f"{PROG}: error: {flag_name(error.setting)}: {error.problem}", file=sys.stderr)
                return EXIT_USAGE
            code = run.until_stopped()
        finally:
            finish_logging(LOG_DRAIN_S)
    return _exit_past_stuck_threads(code)


def _exit_past_stuck_threads(code: int) -> int:
    """Exiting joins the pool's threads; one stuck in a bug (shutdown() logged it and
    gave up on it) would hang the exit for good. Then exit 1 now instead."""
    main = threading.main_thread()
    stuck = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon and t is not main]
    if not stuck:
        return code
    print(f"{PROG}: not waiting for stuck threads {', '.join(sorted(stuck))}: exit 1", file=sys.stderr, flush=True)
    os._exit(EXIT_FAILED)


class _Run:
    """The main thread's loop: wait for a wake-up (signals.py), act on it, until stopped.

    ``on_thread_failure`` may be called from any thread; everything else belongs to the
    main thread. A stop runs ``EchoServer.shutdown()`` on a stopper thread, so that the
    main thread still hears a second signal (exit 1 at once) and keeps a watchdog.
    """

    def __init__(
        self,
        server: EchoServer | Supervisor,
        signals: Signals,
        actor: LogActor,
        finish: Callable[[float], None],
        reload_config: Callable[[], Config] | None = None,
    ) -> None:
        self._server = server
        self._reload_config = reload_config
        self._signals = signals
        self._actor = actor
        self._finish = finish
        self._exit_code = EXIT_OK
        self._stopper: threading.Thread | None = None
        self._stop_deadline: float | None = None
        self._failure: BaseException | None = None
        self._actions: dict[Action, Callable[[Wakeup], None]] = {
            Action.STOP: self.stop,
            Action.RELOAD: self.reload,
            Action.REOPEN_LOG: self.reopen_log,
            Action.THREAD_FAILED: self.thread_failed,
        }

    def on_thread_failure(self, error: BaseException) -> None:
        """EchoServer's failure callback (any thread): record, wake the main thread."""
        self._failure = error
        self._signals.wake(Action.THREAD_FAILED)

    def until_stopped(self) -> int:
        while True:
            left = None if self._stop_deadline is None else max(0.0, self._stop_deadline - time.monotonic())
            wakeup = self._signals.wait(left)
            if wakeup is None:
                log.error("the server did not stop within %.1f s of the drain's end: exiting now", STOP_WATCHDOG_S)
                self._exit_now()
            if wakeup.action is Action.STOPPED:
                assert self._stopper is not None
                self._stopper.join()
                return self._exit_code
            self._actions[wakeup.action](wakeup)

    # --- what each wake-up does (the main thread) -------------------------------------

    def stop(self, wakeup: Wakeup) -> None:
        """SIGTERM, SIGINT, SIGQUIT: drain and exit 0; a second one: exit 1 now."""
        if self._stopper is not None:
            log.warning("received %s while draining: exiting now", wakeup.name)
            self._exit_now()
        log.info("received %s", wakeup.name)
        self._begin_stop()

    def reload(self, wakeup: Wakeup) -> None:
        """SIGHUP. One worker (no supervisor): re-read the TLS certificate and key, if TLS
        is on (a bad file keeps the old ones and logs one error); nothing else changes,
        and the log says so.
        With workers: re-read the settings (the same flags and this process's environment,
        so they change only where they name files: TLS) and hand them to the supervisor,
        which starts a new generation of workers, fresh interpreters that also load the
        code as it now is on disk, and drains the old one. Bad settings keep the running
        ones."""
        server = self._server
        if isinstance(server, Supervisor) and self._reload_config is not None:
            try:
                config = self._reload_config()
            except UsageError as error:
                log.error("received %s: %s; keeping the running configuration", wakeup.name, error)
                return
            log.info("received %s: reloading the workers", wakeup.name)
            server.reload(config)
            return
        if isinstance(server, EchoServer) and server.config.tls_port is not None:
            log.info("received %s: reloading the TLS certificate and key", wakeup.name)
            server.reload_tls()
            return
        log.warning("received %s: reload is not supported yet; ignored", wakeup.name)

    def reopen_log(self, wakeup: Wakeup) -> None:
        """SIGUSR1: the log actor reopens its file (a no-op for stdout, pipes, devices)."""
        if self._server.config.log_file is None:
            log.info("received %s: the log goes to stdout; nothing to reopen", wakeup.name)
            return
        log.info("received %s: reopening the log file", wakeup.name)
        self._actor.reopen()

    def thread_failed(self, wakeup: Wakeup) -> None:
        """A scheduler or the acceptor died (the core logged its traceback): stop
        gracefully, within the watchdog's bound, and exit 1."""
        self._exit_code = EXIT_FAILED
        what = type(self._failure).__name__ if self._failure is not None else "unknown error"
        if self._stopper is not None:
            log.error("a server thread failed (%s) while draining: exit status will be 1", what)
            return
        log.error("a server thread failed (%s): stopping, exit status will be 1", what)
        self._begin_stop()

    # --- helpers ----------------------------------------------------------------------

    def _begin_stop(self) -> None:
        self._stop_deadline = time.monotonic() + self._server.config.shutdown_timeout + STOP_WATCHDOG_S
        self._stopper = threading.Thread(target=self._shutdown, name="stopper", daemon=True)
        self._stopper.start()

    def _shutdown(self) -> None:  # the stopper thread
        try:
            self._server.shutdown()
        finally:
            self._signals.wake(Action.STOPPED)

    def _exit_now(self) -> NoReturn:
        if isinstance(self._server, Supervisor):
            self._server.kill_workers()  # no worker outlives its supervisor
        self._finish(1.0)
        os._exit(EXIT_FAILED)  # pool threads would otherwise be joined at exit


def _listen_problem(error: ListenError, server: EchoServer | Supervisor) -> str:
    """Say which port could not be had. The echo listener opens first (core.start());
    if it got an address, the one that failed is the admin listener."""
    problem = error.strerror or str(error)
    if isinstance(error.filename, str):  # the TLS or UDP port, named by core
        return f"{error.filename}: {problem}"
    config = server.config
    if config.admin_port is None or not server.server_address[1]:
        where, role, hint = f"{config.host}:{config.port}", "the echo port", ""
    else:
        where, role = f"{config.effective_admin_host}:{config.admin_port}", "the admin port"
        hint = "; is another echo-server running? Give this one --admin-port 0 (any free port) or --admin-port off"
    shown = problem.replace(where, f"{where} ({role})", 1) if where in problem else f"{role}: {problem}"
    return shown + hint


def _finish_logging(exchange: Exchange, logger: logging.Logger, actor: LogActor, timeout: float) -> None:
    """Write everything logged so far, within ``timeout`` in all, then stop the actor."""
    deadline = time.monotonic() + timeout
    exchange.detach(actor)
    logger.removeHandler(actor.handler)
    if actor.alive:
        actor.close(timeout)
    actor.join(max(0.0, deadline - time.monotonic()))
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
