"""The pipeline worker as a process of its own, started by ``deskroute serve`` or
``deskroute worker``.

Keeping the pipeline out of the web processes leaves their interpreter lock to intake, so
acceptance stays fast while the worker classifies and writes back. Intake wakes the worker
through :mod:`plugin.wakeup`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)

# Waits before starting a worker process again after it exited, in seconds.
RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)

# Held while the supervisor starts a worker process, and by every os.fork() of the arbiter.
# Popen waits for its child's exec by reading a pipe until the write end closes. A gunicorn
# web process forked in that moment keeps a copy of the write end, so Popen blocked until
# that web process exited, and a worker that died meanwhile was never restarted.
_spawn_lock = threading.Lock()
_fork_guard_installed = False


def _install_fork_guard() -> None:
    """Make os.fork() in this process wait for a Popen of the supervisor in progress."""
    global _fork_guard_installed
    if _fork_guard_installed:
        return
    # _posixsubprocess runs these hooks only with a preexec_fn, which the supervisor never
    # passes, so its own Popen cannot wait on the lock it holds.
    os.register_at_fork(
        before=_spawn_lock.acquire,
        after_in_parent=_spawn_lock.release,
        after_in_child=_spawn_lock.release,
    )
    _fork_guard_installed = True


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
    """Keeps one worker process running beside gunicorn; runs in the gunicorn arbiter.

    The worker is a new interpreter running ``deskroute worker`` with the same config file
    and environment, not a multiprocessing child: gunicorn's forked web processes would
    otherwise inherit multiprocessing's record of the child and try to join it at exit.
    """

    def __init__(self, config_file: str | None, log_level: str = "info"):
        self.config_file = config_file
        self.log_level = log_level
        self._stopping = threading.Event()
        self._process: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "plugin.cli", "--log-level", self.log_level, "worker"]
        command += ["--parent-pid", str(os.getpid())]
        if self.config_file:
            command += ["--config", self.config_file]
        return command

    def start(self) -> None:
        _install_fork_guard()
        self._thread = threading.Thread(
            target=self._supervise, name="deskroute-supervisor", daemon=True
        )
        self._thread.start()

    def _supervise(self) -> None:
        restarts = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            with _spawn_lock:
                self._process = subprocess.Popen(self.command())
            log.info("worker process %s started", self._process.pid)
            exitcode = self._process.wait()
            # A worker that exits cleanly received a stop signal, usually from the shutdown
            # that is about to call stop(). That call gets a moment before another starts.
            if exitcode == 0 and self._stopping.wait(5.0):
                break
            if self._stopping.is_set():
                break
            # A worker that ran for over a minute before it died restarts after the shortest delay.
            restarts = 0 if time.monotonic() - started > 60 else restarts + 1
            delay = RESTART_DELAYS[min(restarts, len(RESTART_DELAYS) - 1)]
            log.error(
                "worker process %s exited with code %s, starting another in %.0f s",
                self._process.pid,
                exitcode,
                delay,
            )
            self._stopping.wait(delay)

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker process %s did not stop, killing it", process.pid)
                process.kill()
                process.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)
