"""Starting worker processes from the gunicorn arbiter while it forks web processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, so that the fork hooks stay out of the pytest process. A
# thread holds the spawn lock for HOLD_SECONDS, as the supervisor does while its Popen
# waits for the child's exec, and the main thread forks as gunicorn does for a web
# process. With the guard, the child takes the lock itself, to show that it was released
# there.
SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    from plugin import worker_process

    HOLD_SECONDS = 1.0
    if sys.argv[1] == "guarded":
        worker_process._install_fork_guard()
    lock_taken = threading.Event()

    def hold():
        with worker_process._spawn_lock:
            lock_taken.set()
            time.sleep(HOLD_SECONDS)

    threading.Thread(target=hold).start()
    lock_taken.wait()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        # Without the guard the child's copy of the lock stays held, so only take it here
        # when the guard released it.
        if sys.argv[1] == "guarded":
            with worker_process._spawn_lock:
                os._exit(0)
        os._exit(0)
    waited = time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    print(waited, os.waitstatus_to_exitcode(status))
    """
)


def fork_wait(mode: str) -> tuple[float, int]:
    """Return how long os.fork() waited, and the child's exit code."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    waited, exitcode = result.stdout.split()
    return float(waited), int(exitcode)


def test_fork_waits_for_spawn_in_progress():
    waited, exitcode = fork_wait("guarded")

    assert waited >= 0.5
    assert exitcode == 0


def test_fork_without_guard_does_not_wait():
    waited, exitcode = fork_wait("unguarded")

    assert waited < 0.5
    assert exitcode == 0
