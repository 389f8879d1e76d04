"""The Zendesk sidebar app: its manifest, and the panel in Chromium against a live server.

The browser tests run the real deskroute app on a loopback port, create decisions through
signed webhooks, and open manifest/zendesk/assets/iframe.html in Debian's Chromium. The ZAF
SDK that iframe.html loads from Zendesk's CDN is served from tests/zaf_stub.js, and every
other request that leaves loopback is aborted.
"""

from __future__ import annotations

import json
import re
import socket
import struct
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import expect, sync_playwright
from werkzeug.exceptions import HTTPException
from zaf_harness import STUB_SCRIPT, LiveServer, ZafHost

from plugin import create_app
from plugin.context import AccountContext

from conftest import API_TOKEN, bearer, load_fixture, make_settings, zendesk_headers

APP_DIR = Path(__file__).parents[1] / "manifest" / "zendesk"
ASSETS_DIR = APP_DIR / "assets"
ZAF_SDK_URL = "https://static.zdassets.com/zendesk_app_framework_sdk/2.0/zaf_sdk.min.js"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-default-browser-check",
    # Every request that is not for loopback (which Chromium never proxies) goes to a closed
    # local port, so the browser cannot reach any other host during the tests.
    "--proxy-server=http://127.0.0.1:9",
]
# Group ids start here, one per model queue, in label order.
FIRST_GROUP_ID = 360000000100
XSS_MARKUP = "<img src=x onerror=\"window.__xss = 'reason'\">"
XSS_ACCOUNT = "<script>window.__xss = 'account'</script>Acme GmbH"


def percent(value: float) -> str:
    """Format a probability as panel.js does."""
    return "<1%" if 0 < value < 0.005 else f"{round(value * 100)}%"


def manifest() -> dict:
    return json.loads((APP_DIR / "manifest.json").read_text())


# -- manifest and sources ---------------------------------------------------------------


def test_manifest_has_required_zaf_fields():
    app = manifest()

    assert app["frameworkVersion"] == "2.0"
    assert app["name"]
    assert app["version"]
    assert set(app["author"]) >= {"name", "email", "url"}
    assert app["defaultLocale"] == "en"
    sidebar = app["location"]["support"]["ticket_sidebar"]
    assert sidebar["url"] == "assets/iframe.html"
    assert (APP_DIR / sidebar["url"]).is_file()


def test_manifest_parameters_and_secure_token():
    parameters = {item["name"]: item for item in manifest()["parameters"]}

    assert set(parameters) == {"deskroute_url", "api_token"}
    assert parameters["api_token"]["secure"] is True
    assert parameters["api_token"]["required"] is True
    assert parameters["deskroute_url"]["type"] == "url"
    assert parameters["deskroute_url"]["required"] is True
    # The panel reads the URL from client.metadata(), which omits secure settings.
    assert not parameters["deskroute_url"].get("secure", False)


def test_manifest_whitelists_default_server_host():
    app = manifest()
    default_url = next(p["default"] for p in app["parameters"] if p["name"] == "deskroute_url")

    whitelist = app["domainWhitelist"]
    assert urlsplit(default_url).hostname in whitelist
    for domain in whitelist:
        assert re.fullmatch(r"[a-z0-9.-]+", domain), f"{domain!r} is not a bare host name"


def test_translations_label_every_parameter():
    strings = json.loads((APP_DIR / "translations" / "en.json").read_text())["app"]

    for key in ("name", "short_description", "long_description", "installation_instructions"):
        assert strings[key], key
    for parameter in manifest()["parameters"]:
        labels = strings["parameters"][parameter["name"]]
        assert labels["label"], parameter["name"]
        assert labels["helpText"], parameter["name"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def test_app_package_has_required_files():
    assets = {path.name for path in ASSETS_DIR.iterdir()}

    assert (APP_DIR / "manifest.json").is_file()
    assert (APP_DIR / "translations" / "en.json").is_file()
    # Zendesk requires the two logos in every app. The other files are the sidebar itself.
    assert assets == {"iframe.html", "panel.js", "panel.css", "logo.png", "logo-small.png"}
    assert png_size(ASSETS_DIR / "logo.png") == (320, 320)
    assert png_size(ASSETS_DIR / "logo-small.png") == (128, 128)


def test_iframe_loads_only_the_zaf_sdk_from_outside():
    html = (ASSETS_DIR / "iframe.html").read_text()

    assert re.findall(r'src="([^"]+)"', html) == [ZAF_SDK_URL, "panel.js"]
    assert re.findall(r'href="([^"]+)"', html) == ["panel.css"]


def test_panel_never_writes_html():
    source = (ASSETS_DIR / "panel.js").read_text()

    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in source, sink


def panel_routes() -> list[tuple[str, str]]:
    """Return (method, path) for each deskroute path panel.js calls, with ids filled in."""
    source = (ASSETS_DIR / "panel.js").read_text()
    paths = dict(re.findall(r'const (\w+)_PATH = "([^"]+)";', source))
    calls = re.findall(r'call\("(GET|POST)", (?:`\$\{)?(\w+)_PATH', source)
    assert paths and calls, "panel.js no longer declares its paths as *_PATH constants"
    return sorted({(method, paths[name].replace("{id}", "7")) for method, name in calls})


def test_panel_routes_exist_in_url_map(tmp_path, classifier):
    app = create_app(make_settings(tmp_path), classifier=classifier)
    adapter = app.url_map.bind("deskroute.example.com")

    routes = panel_routes()

    assert routes == [
        ("GET", "/api/decisions"),
        ("GET", "/api/queues"),
        ("POST", "/api/decisions/7/feedback"),
    ]
    missing = []
    for method, path in routes:
        try:
            adapter.match(path, method=method)
        except HTTPException:
            missing.append(f"{method} {path}")
    assert missing == [], "routes panel.js calls that the app does not serve"
    app.extensions["deskroute"].store.dispose()


# -- the queues route -----------------------------------------------------------------


def test_queues_route_lists_zendesk_group_ids(client_with_groups):
    client, labels = client_with_groups

    response = client.get("/api/queues?helpdesk=zendesk", headers=bearer())

    assert response.status_code == 200
    body = response.get_json()
    assert body["helpdesk"] == "zendesk"
    assert [queue["name"] for queue in body["queues"]] == labels
    assert body["queues"][0]["target"] == str(FIRST_GROUP_ID)
    assert body["queues"][0]["priority"] == "normal"


def test_queues_route_without_jira_targets(client_with_groups):
    client, _ = client_with_groups

    body = client.get("/api/queues?helpdesk=jira", headers=bearer()).get_json()

    assert {queue["target"] for queue in body["queues"]} == {None}


def test_queues_route_rejects_bad_requests(client_with_groups):
    client, _ = client_with_groups

    missing = client.get("/api/queues?helpdesk=zendesk")
    wrong = client.get("/api/queues?helpdesk=zendesk", headers=bearer("wrong"))
    unknown = client.get("/api/queues?helpdesk=freshdesk", headers=bearer())
    absent = client.get("/api/queues", headers=bearer())

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert unknown.status_code == 400
    assert unknown.get_json()["error"]["field"] == "helpdesk"
    assert absent.status_code == 400


# -- fixtures for the live app ----------------------------------------------------------


class AccountsByTicket:
    """Account context per ticket id, in place of the Salesforce and ERP lookups."""

    def __init__(self):
        self.by_ticket: dict[str, AccountContext] = {}

    def enrich(self, ticket):
        return self.by_ticket.get(str(ticket.id))


def write_policy(path: Path, labels: list[str]) -> Path:
    lines = ['mode = "shadow"', "", "[defaults]", 'priority = "normal"', ""]
    for offset, label in enumerate(labels):
        name = json.dumps(label)
        lines += [f"[queues.{name}]", 'priority = "normal"', f"[queues.{name}.zendesk]"]
        lines += [f"group_id = {FIRST_GROUP_ID + offset}", ""]
    path.write_text("\n".join(lines))
    return path


def build_app(directory: Path, classifier, enricher=None):
    policy = write_policy(directory / "policy.toml", list(classifier.labels))
    settings = make_settings(directory, policy_file=str(policy))
    return create_app(settings, classifier=classifier, enricher=enricher or AccountsByTicket())


@pytest.fixture
def client_with_groups(tmp_path, classifier):
    app = build_app(tmp_path, classifier)
    yield app.test_client(), list(classifier.labels)
    app.extensions["deskroute"].store.dispose()


class Live:
    def __init__(self, app, server: LiveServer, accounts: AccountsByTicket):
        self.app = app
        self.server = server
        self.url = server.url
        self.accounts = accounts
        self.store = app.extensions["deskroute"].store

    def decide(self, ticket_id: str, subject: str, description: str) -> dict:
        """Post a signed ticket.created webhook, run the worker, return the decision row."""
        payload = load_fixture("zendesk/event_ticket_created.json")
        payload["detail"].update(id=ticket_id, subject=subject, description=description)
        payload["subject"] = f"zen:ticket:{ticket_id}"
        payload["id"] = f"event-{ticket_id}"
        body = json.dumps(payload).encode()
        response = requests.post(
            f"{self.url}/webhooks/zendesk", data=body, headers=zendesk_headers(body), timeout=5
        )
        assert response.status_code == 202, response.text
        assert self.app.extensions["deskroute"].worker.drain() == 1
        return self.store.latest_decision("zendesk", ticket_id)


@pytest.fixture(scope="module")
def live(tmp_path_factory, classifier):
    accounts = AccountsByTicket()
    app = build_app(tmp_path_factory.mktemp("live"), classifier, accounts)
    server = LiveServer(app)
    yield Live(app, server, accounts)
    server.stop()
    app.extensions["deskroute"].worker.stop()
    app.extensions["deskroute"].store.dispose()


@pytest.fixture(scope="module")
def zaf_host():
    host = ZafHost(ASSETS_DIR, allowed_hosts=["127.0.0.1"])
    yield host
    host.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


def keep_on_loopback(route) -> None:
    """Abort every browser request that would leave the loopback interface."""
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


def serve_zaf_stub(route) -> None:
    route.fulfill(body=STUB_SCRIPT.read_text(), content_type="application/javascript")


@pytest.fixture
def open_panel(browser, zaf_host, live):
    contexts = []

    def open_panel(ticket_id: str, api_token=API_TOKEN, user_id=4242, deskroute_url=None):
        settings = {"deskroute_url": deskroute_url or live.url, "api_token": api_token}
        installation, visible = zaf_host.install(settings, secure={"api_token"})
        config = {
            "installationId": installation,
            "settings": visible,
            "data": {"ticket.id": int(ticket_id), "currentUser": {"id": user_id}},
        }

        context = browser.new_context(viewport={"width": 340, "height": 900})
        contexts.append(context)
        context.set_default_timeout(5000)
        context.route("**/*", keep_on_loopback)
        context.route(ZAF_SDK_URL, serve_zaf_stub)
        context.add_init_script(f"window.__zafTest = {json.dumps(config)};")

        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(f"{zaf_host.url}/assets/iframe.html?origin=https%3A%2F%2Fexample.zendesk.com")
        return page

    yield open_panel
    for context in contexts:
        context.close()


def zaf_calls(page) -> dict:
    return page.evaluate("window.__zafCalls")


# -- the panel in Chromium --------------------------------------------------------------


def test_panel_shows_queue_confidence_and_reasons(live, open_panel, tmp_path):
    row = live.decide("6101", "laptop screen broken", "need a replacement monitor cable")

    page = open_panel("6101")

    expect(page.locator('[data-field="queue"]')).to_have_text(row["queue"])
    threshold = row["decision"]["threshold"]
    expect(page.locator('[data-field="confidence"]')).to_have_text(
        f"{percent(row['confidence'])} (threshold {percent(threshold)})"
        if threshold is not None
        else f"{percent(row['confidence'])} (no safe threshold for this queue)"
    )
    expect(page.locator('[data-field="priority"]')).to_have_text(row["priority"])
    expect(page.locator('[data-field="action"]')).to_have_text(f"{row['action']} (shadow mode)")
    alternatives = ", ".join(f"{q} {percent(p)}" for q, p in row["decision"]["alternatives"])
    expect(page.locator('[data-field="alternatives"]')).to_have_text(alternatives)
    reasons = page.locator(".reasons li")
    expect(reasons).to_have_count(len(row["decision"]["reasons"]))
    expect(reasons.first).to_contain_text(row["decision"]["reasons"][0]["detail"])
    expect(page.locator(".account")).to_have_count(0)
    expect(page.locator(".feedback")).to_have_text("No feedback from an agent yet.")
    text = page.locator("main").inner_text()
    assert "null" not in text
    assert "undefined" not in text
    page.screenshot(path=str(tmp_path / "zendesk-panel.png"), full_page=True)

    calls = zaf_calls(page)
    assert calls["invoke"][-1][0] == "resize"
    assert calls["invoke"][-1][1]["width"] == "100%"
    for options in calls["request"]:
        assert options["secure"] is True
        assert options["headers"] == {"Authorization": "Bearer {{setting.api_token}}"}
    assert API_TOKEN not in page.content()
    assert page.errors == []


def test_panel_shows_markup_as_text(live, open_panel):
    live.accounts.by_ticket["6102"] = AccountContext(
        account_id="001XSS",
        account_name=XSS_ACCOUNT,
        tier="Gold",
        open_cases=3,
        billing_hold=True,
        failures=[{"source": "netsuite", "error": XSS_MARKUP}],
    )
    live.decide("6102", "cannot log in", "password reset needed for my account")

    page = open_panel("6102")

    reason = page.locator(".reasons li", has_text="netsuite lookup failed")
    expect(reason).to_have_text(f"enrichment: netsuite lookup failed: {XSS_MARKUP}")
    expect(page.locator('[data-field="account_name"]')).to_have_text(XSS_ACCOUNT)
    expect(page.locator('[data-field="tier"]')).to_have_text("Gold")
    expect(page.locator('[data-field="billing_hold"]')).to_have_text("yes")
    assert page.locator("main img").count() == 0
    assert page.locator("main script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.errors == []


def test_accept_records_feedback_and_sets_group(live, open_panel):
    row = live.decide("6103", "new keyboard", "my keyboard is broken please send a new one")
    target = row["decision"]["target"]
    assert target is not None

    page = open_panel("6103")
    page.get_by_role("button", name="Accept").click()

    expect(page.locator(".status")).to_have_text(
        f"Accepted. The group for {row['queue']} is set in the ticket form. "
        "Submit the ticket to save it."
    )
    expect(page.locator(".feedback li")).to_contain_text(f"accept group: {row['queue']}")
    feedback = live.store.feedback_for_ticket("zendesk", "6103")
    assert [(item["verdict"], item["field"]) for item in feedback] == [("accept", "group")]
    assert feedback[0]["decision"] == row["id"]
    assert feedback[0]["chosen"] == target
    assert feedback[0]["actor"] == "zendesk user 4242"
    assert feedback[0]["source"] == "api"
    assert zaf_calls(page)["set"] == [["ticket.assignee", {"groupId": int(target)}]]


def test_accept_without_group_sets_nothing(live, open_panel):
    row = live.decide("6109", "new mouse", "my mouse stopped working")
    # A decision for a queue without a [queues.X.zendesk] table carries no target.
    live.store.update_decision(row["id"], decision={**row["decision"], "target": None})

    page = open_panel("6109")
    page.get_by_role("button", name="Accept").click()

    expect(page.locator(".status")).to_have_text(
        f"Accepted. Queue {row['queue']} has no Zendesk group in the policy, "
        "so set the group by hand."
    )
    feedback = live.store.feedback_for_ticket("zendesk", "6109")
    assert [(item["verdict"], item["chosen"]) for item in feedback] == [("accept", None)]
    assert zaf_calls(page)["set"] == []


def test_override_records_chosen_group(live, open_panel, classifier):
    row = live.decide("6104", "vpn access", "please grant me access to the vpn")
    other = next(label for label in classifier.labels if label != row["queue"])
    other_group = str(FIRST_GROUP_ID + list(classifier.labels).index(other))

    page = open_panel("6104")
    page.get_by_label("Override queue").select_option(label=other)
    page.get_by_role("button", name="Override").click()

    expect(page.locator(".status")).to_have_text(
        f"Overridden. The group for {other} is set in the ticket form. "
        "Submit the ticket to save it."
    )
    expect(page.locator(".feedback li")).to_contain_text(f"override group: {other}")
    feedback = live.store.feedback_for_ticket("zendesk", "6104")
    assert [(item["verdict"], item["chosen"]) for item in feedback] == [("override", other_group)]
    assert feedback[0]["suggested"] == row["decision"]["target"]
    assert live.store.overridden_fields("zendesk", "6104") == {"group"}
    assert zaf_calls(page)["set"] == [["ticket.assignee", {"groupId": int(other_group)}]]


def test_override_choices_exclude_suggested_queue(live, open_panel, classifier):
    row = live.decide("6105", "printer", "the printer on floor 2 is jammed")

    page = open_panel("6105")

    options = page.get_by_label("Override queue").locator("option")
    expect(options).to_have_count(len(classifier.labels) - 1)
    assert row["queue"] not in options.all_text_contents()


def test_invalid_token_shows_error(live, open_panel):
    live.decide("6106", "monitor", "second monitor flickers")

    page = open_panel("6106", api_token="not-the-token")

    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("deskroute rejected the API token (HTTP 401")
    expect(alert).to_contain_text("Check the API token in the deskroute app's settings.")
    expect(page.locator(".summary")).to_have_count(0)
    assert live.store.feedback_for_ticket("zendesk", "6106") == []


def test_ticket_without_decision_says_so(open_panel):
    page = open_panel("6199")

    expect(page.locator("main")).to_contain_text("deskroute has not decided on ticket 6199 yet.")
    expect(page.get_by_role("button", name="Refresh")).to_be_visible()


def test_unreachable_server_shows_error(open_panel):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    page = open_panel("6107", deskroute_url=closed_url)

    expect(page.get_by_role("alert")).to_contain_text(
        f"deskroute at {closed_url} could not be reached"
    )


def test_invalid_server_url_shows_error(open_panel):
    page = open_panel("6108", deskroute_url="deskroute.example.com")

    expect(page.get_by_role("alert")).to_have_text(
        "The deskroute server URL is missing or invalid in the app's settings."
    )
