"""``deskroute install jira`` against the admin webhook API, mocked with responses."""

from __future__ import annotations

import json

import pytest
import responses
from click.testing import CliRunner
from responses import matchers

from plugin.install_jira import install_jira_command

SITE = "https://example.atlassian.net"
WEBHOOKS = f"{SITE}/rest/webhooks/1.0/webhook"
SERVER = "https://deskroute.example.com"
TARGET = f"{SERVER}/webhooks/jira"
SECRET = "jira-webhook-install-secret"


@pytest.fixture
def env(tmp_path):
    return {
        "DESKROUTE_DATA_DIR": str(tmp_path),
        "DESKROUTE_JIRA_URL": SITE,
        "DESKROUTE_JIRA_EMAIL": "admin@example.com",
        "DESKROUTE_JIRA_TOKEN": "jira-admin-token",
        "DESKROUTE_JIRA_WEBHOOK_SECRET": SECRET,
    }


def run(env, *args):
    return CliRunner().invoke(install_jira_command, ["--url", SERVER, *args], env=env)


def expected_body(jql=None):
    body = {
        "name": "deskroute",
        "url": TARGET,
        "events": ["jira:issue_created", "jira:issue_updated"],
        "excludeBody": False,
        "secret": SECRET,
    }
    if jql:
        body["filters"] = {"issue-related-events-section": jql}
    return body


def registered(hook_id, url=TARGET):
    return {
        "name": "deskroute",
        "url": url,
        "events": ["jira:issue_created", "jira:issue_updated"],
        "filters": {"issue-related-events-section": ""},
        "excludeBody": False,
        "enabled": True,
        "self": f"{WEBHOOKS}/{hook_id}",
    }


class FakeJira:
    """The admin webhook API's state across runs: list, create, update, delete."""

    def __init__(self, mock, hooks=None):
        self.hooks = list(hooks or [])
        self.next_id = 10
        mock.add_callback(responses.GET, WEBHOOKS, callback=self.list)
        mock.add_callback(responses.POST, WEBHOOKS, callback=self.create)
        mock.add_callback(responses.PUT, f"{WEBHOOKS}/10", callback=self.update)
        mock.add_callback(responses.DELETE, f"{WEBHOOKS}/11", callback=self.delete)

    def list(self, request):
        return 200, {}, json.dumps(self.hooks)

    def create(self, request):
        body = json.loads(request.body)
        hook = {**body, "self": f"{WEBHOOKS}/{self.next_id}", "enabled": True}
        hook.pop("secret")
        self.hooks.append(hook)
        self.next_id += 1
        return 201, {}, json.dumps(hook)

    def update(self, request):
        body = json.loads(request.body)
        hook_id = request.url.rsplit("/", 1)[-1]
        for hook in self.hooks:
            if hook["self"].endswith(f"/{hook_id}"):
                hook.update({key: value for key, value in body.items() if key != "secret"})
                self.last_update = body
                return 200, {}, json.dumps(hook)
        return 404, {}, json.dumps({"errorMessages": ["not found"]})

    def delete(self, request):
        hook_id = request.url.rsplit("/", 1)[-1]
        self.hooks = [hook for hook in self.hooks if not hook["self"].endswith(f"/{hook_id}")]
        return 204, {}, ""


def test_install_creates_webhook(env):
    with responses.RequestsMock() as mock:
        mock.get(WEBHOOKS, json=[registered(3, url="https://other.example.com/hook")])
        mock.post(
            WEBHOOKS,
            status=201,
            json=registered(10),
            match=[matchers.json_params_matcher(expected_body("project = ITSD"))],
        )

        result = run(env, "--jql", "project = ITSD")

    assert result.exit_code == 0, result.output
    assert "created Jira webhook 10" in result.output
    assert SECRET not in result.output


def test_install_twice_leaves_one_webhook(env):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake = FakeJira(mock)

        first = run(env)
        second = run(env)

    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert "created Jira webhook 10" in first.output
    assert "updated Jira webhook 10" in second.output
    assert len(fake.hooks) == 1
    assert fake.last_update == expected_body()


def test_install_removes_duplicates(env):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake = FakeJira(mock, hooks=[registered(10), registered(11)])

        result = run(env)

    assert result.exit_code == 0, result.output
    assert [hook["self"] for hook in fake.hooks] == [f"{WEBHOOKS}/10"]


def test_install_not_admin_prints_automation_rule(env):
    with responses.RequestsMock() as mock:
        mock.get(
            WEBHOOKS,
            status=403,
            json={"errorMessages": ["You are not an administrator."]},
        )

        result = run(env)

    assert result.exit_code == 0, result.output
    assert "not a Jira administrator" in result.output
    assert f"Web request URL: {TARGET}" in result.output
    assert "X-Deskroute-Secret = the value of DESKROUTE_JIRA_AUTOMATION_SECRET" in result.output
    assert "{{issue.summary.asJsonString}}" in result.output


def test_install_bad_credentials(env):
    with responses.RequestsMock() as mock:
        mock.get(WEBHOOKS, status=401, body="")

        result = run(env)

    assert result.exit_code == 1
    assert "rejected the credentials of admin@example.com" in result.output
    assert "jira-admin-token" not in result.output


def test_install_server_error(env):
    with responses.RequestsMock() as mock:
        mock.get(WEBHOOKS, status=500, body="oops")

        result = run(env)

    assert result.exit_code == 1
    assert "registering the Jira webhook failed" in result.output


def test_install_needs_credentials(tmp_path):
    result = run({"DESKROUTE_DATA_DIR": str(tmp_path)})

    assert result.exit_code == 1
    assert "DESKROUTE_JIRA_URL" in result.output


def test_install_automation_flag_sends_nothing(tmp_path):
    with responses.RequestsMock():
        result = run({"DESKROUTE_DATA_DIR": str(tmp_path)}, "--automation")

    assert result.exit_code == 0
    assert "Send web request" in result.output


def test_install_generates_secret_file(env, tmp_path):
    env = {**env, "DESKROUTE_JIRA_WEBHOOK_SECRET": ""}
    with responses.RequestsMock() as mock:
        mock.get(WEBHOOKS, json=[])
        mock.post(WEBHOOKS, status=201, json=registered(10))

        result = run(env)

        sent = json.loads(mock.calls[1].request.body)

    assert result.exit_code == 0, result.output
    stored = (tmp_path / "jira-webhook-secret").read_text().strip()
    assert sent["secret"] == stored
    assert stored not in result.output
    assert "set DESKROUTE_JIRA_WEBHOOK_SECRET on the server" in result.output


def test_install_needs_https(env):
    result = CliRunner().invoke(install_jira_command, ["--url", "http://deskroute.local"], env=env)

    assert result.exit_code == 1
    assert "https://" in result.output
