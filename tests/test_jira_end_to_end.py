"""A signed jira:issue_created webhook routed through the shared pipeline and decision log.

The issue's summary and description are a real row of the it-service-tickets set (CC0):
"transfer license from one user to another ..." labelled Access.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import responses
from responses import matchers

from plugin import create_app
from plugin.webhooks.jira import sign

from conftest import bearer, load_fixture, make_settings

SITE = "https://example.atlassian.net"
ISSUE_URL = f"{SITE}/rest/api/2/issue/ITSD-42"
ISSUE_SELF = f"{SITE}/rest/api/2/issue/10042"
JIRA_SECRET = "jira-webhook-test-secret"
OWN_ACCOUNT = "712020:deadbeef-0000-4000-8000-00000000d5e7"
INTERNAL = [{"key": "sd.public.comment", "value": {"internal": True}}]

POLICY = """
mode = "{mode}"

[defaults]
priority = "normal"

[jira]
organization_field = "customfield_10002"

[queues.Access]
priority = "high"
tags = ["access"]

[queues.Access.jira]
request_type = "Request access"

[queues.Hardware]
priority = "normal"

[queues.Hardware.jira]
field = "customfield_10050"
option = "Hardware"
"""


def make_app(tmp_path, classifier, mode):
    policy = tmp_path / "policy.toml"
    policy.write_text(textwrap.dedent(POLICY.format(mode=mode)))
    settings = make_settings(
        tmp_path,
        policy_file=str(policy),
        jira_url=SITE,
        jira_email="deskroute@example.com",
        jira_token="jira-api-test-token",
        jira_webhook_secret=JIRA_SECRET,
        jira_account_id=OWN_ACCOUNT,
    )
    app = create_app(settings, classifier=classifier)
    # No test waits on a real Retry-After or backoff.
    app.extensions["deskroute"].connectors["jira"].sleep = lambda seconds: None
    return app


@pytest.fixture
def auto_app(tmp_path, classifier):
    app = make_app(tmp_path, classifier, "auto")
    yield app
    app.extensions["deskroute"].store.dispose()


def post_created(client, identifier="e2e-1"):
    body = json.dumps(load_fixture("jira/issue_created.json")).encode()
    return client.post(
        "/webhooks/jira",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature": sign(JIRA_SECRET, body),
            "X-Atlassian-Webhook-Identifier": identifier,
        },
    )


def decisions(client, ticket_id="ITSD-42"):
    response = client.get(
        "/api/decisions",
        query_string={"helpdesk": "jira", "ticket_id": ticket_id},
        headers=bearer(),
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["decisions"]


def mock_fetch(mock):
    # The pipeline reads the full issue first, whatever the webhook carried.
    mock.get(
        ISSUE_URL, json=load_fixture("jira/issue.json"), match=[matchers.query_param_matcher({})]
    )


def mock_read(mock):
    mock.get(
        ISSUE_URL,
        json=load_fixture("jira/issue.json"),
        match=[matchers.query_param_matcher({"fields": "project,priority,labels,comment"})],
    )


def mock_request_types(mock):
    mock.get(
        f"{SITE}/rest/servicedeskapi/servicedesk/ITSD/requesttype",
        json={
            "isLastPage": True,
            "values": [
                {"id": "10", "name": "Get IT help"},
                {"id": "12", "name": "Request access"},
            ],
        },
    )


def mock_comment(mock):
    def check(request):
        body = json.loads(request.body)
        assert body["properties"] == INTERNAL
        assert body["body"].startswith("deskroute suggests queue Access, priority high.")
        return 201, {}, json.dumps({"id": "10301", **body})

    mock.add_callback(responses.POST, f"{ISSUE_URL}/comment", callback=check)


def test_created_issue_is_routed_in_auto_mode(auto_app):
    client = auto_app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock_fetch(mock)
        mock_read(mock)
        mock_request_types(mock)
        mock.put(
            ISSUE_SELF,
            status=204,
            match=[
                matchers.json_params_matcher(
                    {
                        "fields": {"priority": {"name": "High"}, "customfield_10010": "12"},
                        "update": {
                            "labels": [
                                {"add": "deskroute"},
                                {"add": "deskroute_access"},
                                {"add": "deskroute_auto_route"},
                                {"add": "access"},
                            ]
                        },
                    }
                )
            ],
        )
        mock.get(ISSUE_SELF, json=load_fixture("jira/issue.json"))
        mock_comment(mock)

        assert post_created(client).status_code == 202
        assert auto_app.extensions["deskroute"].worker.drain() == 1

    [decision] = decisions(client)
    assert decision["mode"] == "auto"
    assert decision["queue"] == "Access"
    assert decision["action"] == "auto_route"
    assert decision["priority"] == "high"
    assert decision["status"] == "applied"
    assert decision["writeback_request"]["group"] == {"request_type": "Request access"}
    sent = decision["writeback_result"]["requests"]
    assert [item["method"] for item in sent] == ["PUT", "POST"]
    assert sent[1]["body"]["properties"] == INTERNAL


def test_retried_webhook_is_decided_once(auto_app):
    client = auto_app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock_fetch(mock)
        mock_read(mock)
        mock_request_types(mock)
        mock.put(ISSUE_SELF, status=204)
        mock.get(ISSUE_SELF, json=load_fixture("jira/issue.json"))
        mock_comment(mock)

        assert post_created(client, "same-id").status_code == 202
        assert post_created(client, "same-id").status_code == 200
        auto_app.extensions["deskroute"].worker.drain()

        assert len([call for call in mock.calls if call.request.method == "PUT"]) == 1
    assert len(decisions(client)) == 1


def test_write_back_error_is_recorded(auto_app):
    client = auto_app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock_fetch(mock)
        mock.get(
            ISSUE_URL,
            match=[matchers.query_param_matcher({"fields": "project,priority,labels,comment"})],
            status=403,
            json={"errorMessages": ["You do not have the permission to see the specified issue."]},
        )

        post_created(client)
        auto_app.extensions["deskroute"].worker.drain()

    [decision] = decisions(client)
    assert decision["queue"] == "Access"
    assert decision["status"] == "failed"
    assert "ConnectorUnauthorized" in json.dumps(decision["writeback_result"])


def test_shadow_mode_writes_nothing(tmp_path, classifier):
    app = make_app(tmp_path, classifier, "shadow")
    client = app.test_client()
    try:
        with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
            mock_fetch(mock)
            assert post_created(client).status_code == 202
            assert app.extensions["deskroute"].worker.drain() == 1
        [decision] = decisions(client)
    finally:
        app.extensions["deskroute"].store.dispose()

    assert decision["queue"] == "Access"
    assert decision["status"] == "skipped"
    assert decision["writeback_request"] is None


def test_agent_changes_become_feedback(auto_app):
    client = auto_app.test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock_fetch(mock)
        mock_read(mock)
        mock_request_types(mock)
        mock.put(ISSUE_SELF, status=204)
        mock.get(ISSUE_SELF, json=load_fixture("jira/issue.json"))
        mock_comment(mock)
        post_created(client)
        auto_app.extensions["deskroute"].worker.drain()

    # An agent raises the priority to High and moves the issue to another request type.
    body = json.dumps(load_fixture("jira/issue_updated.json")).encode()
    response = client.post(
        "/webhooks/jira",
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature": sign(JIRA_SECRET, body),
            "X-Atlassian-Webhook-Identifier": "e2e-update-1",
        },
    )
    assert response.status_code == 202
    assert auto_app.extensions["deskroute"].worker.drain() == 1

    store = auto_app.extensions["deskroute"].store
    feedback = {row["field"]: row for row in store.feedback_for_ticket("jira", "ITSD-42")}
    assert feedback["priority"]["verdict"] == "accept"
    assert feedback["priority"]["chosen"] == "high"
    assert feedback["group"]["verdict"] == "override"
    assert feedback["group"]["chosen"] == "Request new software"
    assert feedback["group"]["actor"] == "712020:3b9d6f40-1e2c-4a7b-8c0d-5f6e7a8b9c01"
    assert store.overridden_fields("jira", "ITSD-42") == {"group"}
