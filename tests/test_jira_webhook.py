"""``POST /webhooks/jira``: signatures, automation secret, event mapping, dedupe, own updates."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid

import pytest

from plugin import create_app
from plugin.webhooks.jira import sign

from conftest import load_fixture, make_settings

JIRA_SECRET = "jira-webhook-test-secret"
AUTOMATION_SECRET = "jira-automation-test-secret"
OWN_ACCOUNT = "712020:deadbeef-0000-4000-8000-00000000d5e7"


@pytest.fixture
def jira_app(tmp_path, classifier):
    settings = make_settings(
        tmp_path,
        jira_webhook_secret=JIRA_SECRET,
        jira_automation_secret=AUTOMATION_SECRET,
        jira_account_id=OWN_ACCOUNT,
    )
    app = create_app(settings, classifier=classifier)
    yield app
    app.extensions["deskroute"].store.dispose()


@pytest.fixture
def client(jira_app):
    return jira_app.test_client()


def store_of(app):
    return app.extensions["deskroute"].store


def post_signed(client, payload, *, secret=JIRA_SECRET, identifier=None, signature=None):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Hub-Signature": signature or sign(secret, body),
        "X-Atlassian-Webhook-Identifier": identifier or str(uuid.uuid4()),
    }
    return client.post("/webhooks/jira", data=body, headers=headers)


def post_automation(client, payload, secret=AUTOMATION_SECRET):
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "X-Deskroute-Secret": secret}
    return client.post("/webhooks/jira", data=body, headers=headers)


def error_of(response):
    return response.get_json()["error"]


# Signatures and secrets


def test_signed_created_event_is_stored(jira_app, client):
    response = post_signed(client, load_fixture("jira/issue_created.json"), identifier="d-1")

    assert response.status_code == 202
    delivery = store_of(jira_app).find_delivery("jira", "d-1")
    assert delivery is not None
    event = delivery.event
    assert event["kind"] == "ticket.created"
    assert event["ticket_id"] == "ITSD-42"
    assert event["source_type"] == "jira:issue_created"
    assert event["actor_id"] == "qm:0f1c8e2a-7d3b-4c55-9a61-2b7e4d9c0a11"
    assert event["occurred_at"] == "2026-12-04T09:12:31.123000Z"
    ticket = event["ticket"]
    assert ticket["subject"] == "transfer license from one user to another"
    assert ticket["description"] == (
        "transfer license user hello left going please transfer his license replaced role\n"
        "best regards senior engineer"
    )
    assert ticket["priority"] == "normal"
    assert ticket["group"] == "Get IT help"
    assert ticket["complete"] is True


def test_wrong_signature_rejected(jira_app, client):
    response = post_signed(client, load_fixture("jira/issue_created.json"), secret="not-it")

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_signature"
    assert store_of(jira_app).list_deliveries() == []


def test_signature_over_other_body_rejected(client):
    payload = load_fixture("jira/issue_created.json")
    signature = sign(JIRA_SECRET, json.dumps(payload).encode())
    payload["issue"]["fields"]["summary"] = "changed after signing"

    response = post_signed(client, payload, signature=signature)

    assert response.status_code == 401


def test_signature_needs_sha256_scheme(client):
    body = json.dumps(load_fixture("jira/issue_created.json")).encode()
    digest = sign(JIRA_SECRET, body).removeprefix("sha256=")

    response = post_signed(client, body, signature=f"sha1={digest}")

    assert response.status_code == 401
    assert "sha256=<hex>" in error_of(response)["message"]


def test_missing_signature_rejected(client):
    response = client.post("/webhooks/jira", json=load_fixture("jira/issue_created.json"))

    assert response.status_code == 401
    assert error_of(response)["code"] == "missing_signature"


def test_generated_secret_rejects_other_signatures(tmp_path, classifier):
    # Without DESKROUTE_JIRA_WEBHOOK_SECRET the app generates one in the data folder, the
    # one `deskroute install jira` registers, so a request signed otherwise is rejected.
    settings = make_settings(tmp_path)
    app = create_app(settings, classifier=classifier)
    try:
        response = post_signed(app.test_client(), load_fixture("jira/issue_created.json"))
    finally:
        app.extensions["deskroute"].store.dispose()

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_signature"
    assert (tmp_path / "data" / "jira-webhook-secret").exists()


def test_automation_secret_and_adf_description(jira_app, client):
    payload = load_fixture("jira/issue_created__automation_adf.json")

    response = post_automation(client, payload)

    assert response.status_code == 202
    body = json.dumps(payload).encode()
    delivery_id = "sha256:" + hashlib.sha256(body).hexdigest()
    event = store_of(jira_app).find_delivery("jira", delivery_id).event
    assert event["source_type"] == "automation:jira:issue_created"
    assert event["ticket"]["description"] == (
        "transfer license user hello left going please transfer his license replaced role\n"
        "best regards senior engineer"
    )


def test_automation_wrong_secret_rejected(jira_app, client):
    response = post_automation(
        client, load_fixture("jira/issue_created__automation_adf.json"), secret="guess"
    )

    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_secret"
    assert store_of(jira_app).list_deliveries() == []


def test_automation_same_body_stored_once(jira_app, client):
    payload = load_fixture("jira/issue_created__automation_adf.json")

    assert post_automation(client, payload).status_code == 202
    assert post_automation(client, payload).status_code == 200
    assert len(store_of(jira_app).list_deliveries()) == 1


# Events


def test_duplicate_identifier_stored_once(jira_app, client):
    payload = load_fixture("jira/issue_created.json")

    first = post_signed(client, payload, identifier="retry-1")
    second = post_signed(client, payload, identifier="retry-1")

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.get_json()["status"] == "duplicate"
    assert len(store_of(jira_app).list_deliveries()) == 1


def test_updated_event_maps_changelog(jira_app, client):
    response = post_signed(client, load_fixture("jira/issue_updated.json"), identifier="u-1")

    assert response.status_code == 202
    event = store_of(jira_app).find_delivery("jira", "u-1").event
    assert event["kind"] == "ticket.updated"
    assert event["actor_id"] == "712020:3b9d6f40-1e2c-4a7b-8c0d-5f6e7a8b9c01"
    assert event["changes"] == [
        {"field": "priority", "previous": "normal", "current": "high"},
        {
            "field": "group",
            "previous": "Get IT help",
            "current": "Request new software",
            "jira_field": "customfield_10010",
        },
        {"field": "tags", "previous": ["license"], "current": ["deskroute", "license"]},
    ]


def test_own_update_ignored(jira_app, client):
    response = post_signed(client, load_fixture("jira/issue_updated__own.json"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert store_of(jira_app).list_deliveries() == []


def test_update_without_followed_change_ignored(jira_app, client):
    response = post_signed(client, load_fixture("jira/issue_updated__comment.json"))

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert store_of(jira_app).list_deliveries() == []


def test_comment_event_ignored(jira_app, client):
    response = post_signed(client, load_fixture("jira/comment_created.json"))

    assert response.status_code == 200
    assert response.get_json()["event_type"] == "comment_created"
    assert store_of(jira_app).list_deliveries() == []


def test_unknown_event_ignored(client):
    response = post_signed(client, {"webhookEvent": "jira:issue_teleported", "timestamp": 1})

    assert response.status_code == 200
    assert response.get_json()["reason"] == "unknown event"


# Malformed bodies


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda p: p["issue"].pop("key"), "issue.key"),
        (lambda p: p["issue"].__setitem__("key", "not a key"), "issue.key"),
        (lambda p: p["issue"].pop("fields"), "issue.fields"),
        (lambda p: p["issue"]["fields"].__setitem__("description", 42), "issue.fields.description"),
        (lambda p: p["issue"]["fields"].__setitem__("labels", "a b"), "issue.fields.labels"),
        (lambda p: p.pop("issue"), "issue"),
        (lambda p: p.__setitem__("timestamp", "yesterday"), "timestamp"),
        (lambda p: p.pop("webhookEvent"), "webhookEvent"),
    ],
)
def test_malformed_body_names_field(jira_app, client, change, field):
    payload = copy.deepcopy(load_fixture("jira/issue_created.json"))
    change(payload)

    response = post_signed(client, payload)

    assert response.status_code == 400
    assert error_of(response)["field"] == field
    assert store_of(jira_app).list_deliveries() == []


def test_changelog_item_needs_field(client):
    payload = load_fixture("jira/issue_updated.json")
    payload["changelog"]["items"][0].pop("field")

    response = post_signed(client, payload)

    assert response.status_code == 400
    assert error_of(response)["field"] == "changelog.items.0.field"


def test_invalid_json(client):
    response = post_signed(client, b"{not json")

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"


def test_body_too_large(tmp_path, classifier):
    settings = make_settings(tmp_path, jira_webhook_secret=JIRA_SECRET, max_body_bytes=512)
    app = create_app(settings, classifier=classifier)
    try:
        response = post_signed(app.test_client(), load_fixture("jira/issue_created.json"))
    finally:
        app.extensions["deskroute"].store.dispose()

    assert response.status_code == 413


def test_out_of_range_timestamp_is_400(jira_app, client):
    payload = load_fixture("jira/issue_created.json")
    payload["timestamp"] = 10**18

    response = post_signed(client, payload)

    assert response.status_code == 400
    assert error_of(response)["field"] == "timestamp"


def test_field_of_wrong_shape_is_400(jira_app, client):
    payload = load_fixture("jira/issue_created.json")
    payload["issue"]["fields"]["customfield_10010"] = {"requestType": [1, 2]}

    response = post_signed(client, payload)

    assert response.status_code == 400
    assert error_of(response)["field"] == "issue.fields"


@pytest.mark.parametrize("key", ["ITSD-778\n", "itsd-778", "ITSD-7 78"])
def test_malformed_issue_key_is_400(jira_app, client, key):
    payload = load_fixture("jira/issue_created.json")
    payload["issue"]["key"] = key

    response = post_signed(client, payload)

    assert response.status_code == 400
    assert error_of(response)["field"] == "issue.key"
