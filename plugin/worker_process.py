"""The pipeline worker as a process of its own, started by ``deskroute serve`` or
``deskroute worker``.

Keeping the pipeline out of the web processes leaves their interpreter lock to intake, so
acceptance stays fast while the worker classifies and writes back. Intake wakes the worker
through :mod:`plugin.wakeup`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

# Waits before starting a worker process again after it exited, in seconds.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)


def run_worker_process(settings, log_level: str = "info", parent: int | None = None) -> None:
    """Run the worker loop in this process until SIGTERM or SIGINT.

    With ``parent``, the pid of the process that started this one, the loop also stops
    when that process dies, so a worker started by a ``deskroute serve`` that was killed
    does not go on with old settings. The pid is passed in because the parent may already
    be gone by the time this process has started.
    """
    from plugin.cli import configure_logging
    from plugin.state import AppState
    from plugin.wakeup import WakeReceiver, socket_path
    from plugin.worker import Worker

    configure_logging(log_level)
    state = AppState(settings)
    try:
        receiver = WakeReceiver(socket_path(settings.data_dir))
    except OSError as exc:
        # A data folder path too long for a Unix socket, for one: the worker still polls.
        log.warning("no wake-up socket in %s (%s): polling only", settings.data_dir, exc)
        receiver = None
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    if parent is not None:
        threading.Thread(target=_stop_when_orphaned, args=(parent, stopped), daemon=True).start()
    try:
        Worker(state, receiver).run_forever(stopped)
    finally:
        if receiver is not None:
            receiver.close()
        state.store.dispose()


def _stop_when_orphaned(parent: int, stopped: threading.Event) -> None:
    while True:
        if os.getppid() != parent:
            log.warning("parent process %s is gone, worker process stopping", parent)
            stopped.set()
            return
        if stopped.wait(1.0):
            return


class WorkerSupervisor:
    """Keeps one worker process running beside gunicorn; runs in the gunicorn arbiter."""

    def __init__(self, settings, log_level: str = "info"):
        self.settings = settings
        self.log_level = log_level
        self._stopping = threading.Event()
        self._process = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._supervise, name="deskroute-supervisor", daemon=True
        )
        self._thread.start()

    def _supervise(self) -> None:
        context = multiprocessing.get_context("spawn")
        restarts = 0
        while not self._stopping.is_set():
            self._process = context.Process(
                target=run_worker_process,
                args=(self.settings, self.log_level, os.getpid()),
                name="deskroute-worker",
            )
            started = time.monotonic()
            self._process.start()
            log.info("worker process %s started", self._process.pid)
            self._process.join()
            # A worker that exits cleanly received a stop signal, usually from the shutdown
            # that is about to call stop(); give that a moment before starting another.
            if self._process.exitcode == 0 and self._stopping.wait(5.0):
                break
            if self._stopping.is_set():
                break
            # A worker that ran for over a minute before it died restarts after the shortest delay.
            restarts = 0 if time.monotonic() - started > 60 else restarts + 1
            delay = RESTART_DELAYS[min(restarts, len(RESTART_DELAYS) - 1)]
            log.error(
                "worker process %s exited with code %s, starting another in %.0f s",
                self._process.pid,
                self._process.exitcode,
                delay,
            )
            self._stopping.wait(delay)

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            process.join(timeout)
            if process.is_alive():
                log.warning("worker process %s did not stop, killing it", process.pid)
                process.kill()
        if self._thread is not None:
            self._thread.join(timeout)
