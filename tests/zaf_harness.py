"""Test-only servers for the Zendesk sidebar: the deskroute app on a port, and a ZAF host.

:class:`ZafHost` plays the part of Zendesk around an app's iframe: it serves the app's
assets and a ``/zaf-proxy`` route that the ZAF stub (``zaf_stub.js``) posts its
``client.request`` options to. Like Zendesk's proxy, it replaces ``{{setting.NAME}}``
placeholders on the server side and only for ``secure: true`` requests, so a secure
setting's value never reaches the browser. It forwards requests only to the allowed hosts
and answers others with 403, which keeps every test request on loopback.
"""

from __future__ import annotations

import itertools
import re
import threading
from pathlib import Path
from urllib.parse import urlsplit

import requests
from flask import Flask, jsonify, request, send_from_directory
from werkzeug.serving import make_server

PLACEHOLDER = re.compile(r"\{\{setting\.([A-Za-z0-9_]+)\}\}")
STUB_SCRIPT = Path(__file__).parent / "zaf_stub.js"


class LiveServer:
    """A WSGI app served on a free loopback port by a thread, until :meth:`stop`."""

    def __init__(self, app):
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


class ZafHost:
    """Serves ``assets_dir`` at ``/assets/`` and proxies requests for installed apps."""

    def __init__(self, assets_dir: Path, allowed_hosts: list[str]):
        self.assets_dir = assets_dir
        self.allowed_hosts = set(allowed_hosts)
        self.installations: dict[str, dict[str, str]] = {}
        self._ids = itertools.count(1)
        self.server = LiveServer(self._build_app())
        self.url = self.server.url

    def install(self, settings: dict[str, str], secure: set[str]) -> tuple[str, dict]:
        """Store an installation's settings and return its id and its non-secure settings.

        The non-secure settings are what ``client.metadata()`` returns in the browser.
        """
        installation_id = str(next(self._ids))
        self.installations[installation_id] = dict(settings)
        visible = {name: value for name, value in settings.items() if name not in secure}
        return installation_id, visible

    def stop(self) -> None:
        self.server.stop()

    def _build_app(self) -> Flask:
        app = Flask(__name__)

        @app.get("/assets/<path:name>")
        def asset(name):
            return send_from_directory(self.assets_dir, name)

        @app.post("/zaf-proxy")
        def proxy():
            body = request.get_json()
            settings = self.installations[body["installation"]]
            return jsonify(self._forward(body["options"], settings))

        return app

    def _forward(self, options: dict, settings: dict[str, str]) -> dict:
        url = options["url"]
        if urlsplit(url).hostname not in self.allowed_hosts:
            return {"status": 403, "statusText": "Forbidden", "responseText": ""}
        headers = dict(options.get("headers") or {})
        data = options.get("data")
        if options.get("secure"):

            def substitute(text):
                return PLACEHOLDER.sub(lambda match: settings.get(match.group(1), ""), text)

            url = substitute(url)
            headers = {name: substitute(value) for name, value in headers.items()}
            data = substitute(data) if isinstance(data, str) else data
        if options.get("contentType"):
            headers["Content-Type"] = options["contentType"]
        try:
            response = requests.request(
                options.get("type", "GET"), url, headers=headers, data=data, timeout=5
            )
        except requests.ConnectionError:
            return {"status": 0, "statusText": "error", "responseText": ""}
        return {
            "status": response.status_code,
            "statusText": response.reason,
            "responseText": response.text,
        }
