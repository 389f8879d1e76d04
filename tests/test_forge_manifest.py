"""The Forge app in manifest/jira against the server's real routes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "manifest" / "jira"
PANEL_JS = APP_DIR / "static" / "panel" / "panel.js"
ROUTE = re.compile(r'\{\s*method:\s*"(GET|POST|PUT|PATCH|DELETE)",\s*path:\s*"([^"]+)"\s*\}')


@pytest.fixture(scope="module")
def manifest():
    return yaml.safe_load((APP_DIR / "manifest.yml").read_text())


def panel_routes() -> list[tuple[str, str]]:
    return ROUTE.findall(PANEL_JS.read_text())


def rule_methods(app, path: str) -> set[str]:
    adapter = app.url_map.bind("deskroute.example.com")
    methods = set()
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        try:
            adapter.match(path, method=method)
        except Exception:  # noqa: BLE001 - werkzeug raises NotFound or MethodNotAllowed
            continue
        methods.add(method)
    return methods


def test_manifest_panel_uses_remote_endpoint(manifest):
    [panel] = manifest["modules"]["jira:issuePanel"]
    endpoints = {item["key"]: item for item in manifest["modules"]["endpoint"]}
    remotes = {item["key"]: item for item in manifest["remotes"]}

    endpoint = endpoints[panel["resolver"]["endpoint"]]
    remote = remotes[endpoint["remote"]]
    assert remote["baseUrl"].startswith("https://")
    backends = manifest["permissions"]["external"]["fetch"]["backend"]
    assert {"remote": endpoint["remote"]} in backends


def test_manifest_resources_exist(manifest):
    [panel] = manifest["modules"]["jira:issuePanel"]
    resources = {item["key"]: item for item in manifest["resources"]}
    folder = APP_DIR / resources[panel["resource"]]["path"]

    assert (folder / "index.html").is_file()
    assert (folder / "panel.js").is_file()
    resource_key, _, icon = panel["icon"].removeprefix("resource:").partition(";")
    assert resource_key == panel["resource"]
    assert (folder / icon).is_file()


def test_manifest_app_id_shape(manifest):
    assert manifest["app"]["id"].startswith("ari:cloud:ecosystem::app/")


def test_panel_names_routes():
    assert panel_routes() == [("GET", "/forge/panel"), ("POST", "/forge/panel/feedback")]


def test_panel_routes_exist_on_server(app):
    for method, path in panel_routes():
        assert method in rule_methods(app, path), f"{method} {path} is not a route of the app"


def test_webhook_route_exists_on_server(app):
    assert "POST" in rule_methods(app, "/webhooks/jira")


def test_panel_routes_need_forge_token(app):
    client = app.test_client()
    for method, path in panel_routes():
        response = client.open(path, method=method, json={})
        assert response.status_code in (401, 503), (method, path, response.status_code)


def test_panel_script_is_valid_javascript():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the syntax check of panel.js needs it")

    result = subprocess.run(
        [node, "--check", str(PANEL_JS)], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
