"""Run the app behind gunicorn, the production WSGI server.

The same app can be served by gunicorn directly::

    gunicorn --workers 2 --threads 8 --bind 127.0.0.1:8000 'plugin.wsgi:app'

``deskroute serve`` runs the pipeline in one worker process beside the web processes,
started and restarted by the gunicorn arbiter. Served directly as above, each gunicorn
process builds its own app, and so its own worker thread, after the fork. Either way the
store's claims keep two workers off one delivery.
"""

from __future__ import annotations

import dataclasses

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from plugin.logs import escape_controls


class AccessLogger(Logger):
    """gunicorn's logger with control characters escaped in the request path.

    The path is logged decoded, so ``%0a`` in a request would start a forged line.
    """

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        atoms["U"] = escape_controls(atoms["U"])
        return atoms


class DeskrouteServer(BaseApplication):
    def __init__(self, settings, options: dict, supervisor=None):
        self.settings = settings
        self.options = options
        self.supervisor = supervisor
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from plugin import create_app

        return create_app(self.settings)


def run_gunicorn(
    settings,
    *,
    host: str,
    port: int,
    workers: int,
    threads: int,
    worker_mode: str = "process",
    config_file: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the app behind gunicorn.

    ``worker_mode`` runs the pipeline in a process of its own (``process``), in a thread of
    each web process (``thread``), or not at all (``off``).
    """
    supervisor = None
    if worker_mode == "process":
        from plugin.worker_process import WorkerSupervisor

        supervisor = WorkerSupervisor(config_file, log_level)
    web_settings = dataclasses.replace(settings, run_worker=worker_mode == "thread")
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "accesslog": "-",
        "graceful_timeout": 20,
        # gunicorn's control socket has one path per user, so a second deskroute on the host
        # would take over the first one's. deskroute does not use it.
        "control_socket_disable": True,
        "timeout": 60,
        # The access log format leaves out query strings and headers, which may carry tokens.
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms',
        "logger_class": AccessLogger,
    }
    if supervisor is not None:
        options["when_ready"] = lambda _arbiter: supervisor.start()
        options["on_exit"] = lambda _arbiter: supervisor.stop()
    DeskrouteServer(web_settings, options).run()
