"""A wake-up call from the web processes to a worker process on the same host.

After storing a delivery, intake sends one datagram to a Unix socket in the data folder.
The worker waits on that socket instead of sleeping, so it starts on a new delivery at
once. A lost datagram costs only latency: the worker polls the store on every timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
from pathlib import Path

log = logging.getLogger(__name__)

SOCKET_NAME = "worker.sock"


def socket_path(data_dir: str) -> str:
    return str(Path(data_dir).resolve() / SOCKET_NAME)


class WakeSender:
    """Used by intake in each web process; sending never blocks and never raises."""

    def __init__(self, path: str):
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def notify(self) -> None:
        # With no worker listening yet, or its buffer full, the worker finds the delivery
        # when it next polls the store.
        with contextlib.suppress(OSError):
            self._socket.sendto(b"1", self.path)


class WakeReceiver:
    """Owned by the worker process; binds the socket, replacing a stale one."""

    def __init__(self, path: str):
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(path)
        self._socket.setblocking(False)

    def wait(self, timeout: float) -> None:
        """Return when a wake-up arrives or ``timeout`` seconds pass, draining pending ones."""
        ready, _, _ = select.select([self._socket], [], [], timeout)
        if not ready:
            return
        with contextlib.suppress(BlockingIOError):
            while True:
                self._socket.recv(64)

    def close(self) -> None:
        self._socket.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
