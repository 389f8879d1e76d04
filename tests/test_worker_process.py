"""Starting worker processes from the gunicorn arbiter while it forks web processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter, so that the fork hooks and forked children stay out of the
# pytest process. A thread starts processes the way WorkerSupervisor does while the main
# thread forks children that live for CHILD_SECONDS, as gunicorn forks web processes.
SCRIPT = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    from plugin import worker_process

    CHILD_SECONDS = 3.0
    if sys.argv[1] == "guarded":
        worker_process._install_fork_guard()
    durations = []

    def spawn():
        for _ in range(20):
            started = time.monotonic()
            with worker_process._spawn_lock:
                process = subprocess.Popen([sys.executable, "-c", "pass"])
            durations.append(time.monotonic() - started)
            process.wait()

    thread = threading.Thread(target=spawn)
    thread.start()
    children = []
    while thread.is_alive():
        pid = os.fork()
        if pid == 0:
            time.sleep(CHILD_SECONDS)
            os._exit(0)
        children.append(pid)
        time.sleep(0.01)
    for pid in children:
        os.waitpid(pid, 0)
    print(max(durations))
    """
)


def slowest_start(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(result.stdout.strip())


def test_fork_guard_keeps_popen_from_blocking():
    # A Popen that overlaps a fork waits for the forked child to exit, CHILD_SECONDS.
    assert slowest_start("unguarded") > 2.0
    assert slowest_start("guarded") < 1.0
