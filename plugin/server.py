"""Run the app behind gunicorn, the production WSGI server.

The same app can be served by gunicorn directly::

    gunicorn --workers 2 --threads 8 --bind 127.0.0.1:8000 'plugin.wsgi:app'

Each gunicorn process builds its own app, and so its own worker thread, after the fork:
threads do not survive a fork, and the store's claims keep two processes off one delivery.
"""

from __future__ import annotations

from gunicorn.app.base import BaseApplication


class DeskrouteServer(BaseApplication):
    def __init__(self, settings, options: dict):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from plugin import create_app

        return create_app(self.settings)


def run_gunicorn(settings, *, host: str, port: int, workers: int, threads: int) -> None:
    options = {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "accesslog": "-",
        "graceful_timeout": 20,
        "timeout": 60,
        # The access log format leaves out query strings and headers, which may carry tokens.
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms',
    }
    DeskrouteServer(settings, options).run()
