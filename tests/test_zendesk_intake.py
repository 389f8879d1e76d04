"""Intake of Zendesk webhooks: signatures, both webhook kinds, validation, deduplication."""

from __future__ import annotations

import json
import logging
import time

import pytest

from plugin.store import PENDING

from conftest import WEBHOOK_SECRET, load_fixture, now_stamp, post_zendesk, zendesk_headers


def created_event():
    return load_fixture("zendesk/event_ticket_created.json")


def stored(app):
    return app.extensions["deskroute"].store.list_deliveries()


def test_signed_event_is_accepted_and_stored(app, client):
    payload = created_event()

    response = post_zendesk(client, payload, invocation_id="inv-1")

    assert response.status_code == 202
    assert response.get_json()["status"] == "accepted"
    rows = stored(app)
    assert len(rows) == 1
    assert rows[0]["delivery_id"] == payload["id"]
    assert rows[0]["ticket_id"] == payload["detail"]["id"]
    assert rows[0]["kind"] == "ticket.created"
    assert rows[0]["status"] == PENDING


def test_wrong_signature_is_401(app, client):
    body = json.dumps(created_event()).encode()
    headers = zendesk_headers(body, secret="not-the-secret")

    response = client.post("/webhooks/zendesk", data=body, headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_signature"
    assert stored(app) == []


def test_body_changed_after_signing_is_401(client):
    body = json.dumps(created_event()).encode()
    headers = zendesk_headers(body)

    response = client.post("/webhooks/zendesk", data=body.replace(b"}", b" }", 1), headers=headers)

    assert response.status_code == 401


@pytest.mark.parametrize(
    "header", ["X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp"]
)
def test_missing_signature_header_is_401(app, client, header):
    body = json.dumps(created_event()).encode()
    headers = zendesk_headers(body)
    del headers[header]

    response = client.post("/webhooks/zendesk", data=body, headers=headers)

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_signature"
    assert stored(app) == []


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_timestamp_is_401(client, offset):
    response = post_zendesk(client, created_event(), timestamp=now_stamp(offset))

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "stale_signature"


def test_timestamp_inside_window_is_accepted(client):
    response = post_zendesk(client, created_event(), timestamp=now_stamp(-290))

    assert response.status_code == 202


def test_unparsable_timestamp_is_401(client):
    response = post_zendesk(client, created_event(), timestamp="yesterday")

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_timestamp"


def test_error_body_has_one_shape(client):
    body = json.dumps(created_event()).encode()

    response = client.post("/webhooks/zendesk", data=body, headers={})

    error = response.get_json()["error"]
    assert set(error) == {"status", "code", "message"}
    assert error["status"] == 401


def test_duplicate_delivery_is_stored_once(app, client):
    payload = created_event()

    first = post_zendesk(client, payload, invocation_id="inv-dup")
    second = post_zendesk(client, payload, invocation_id="inv-dup")

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.get_json()["status"] == "duplicate"
    assert len(stored(app)) == 1


def test_event_id_identifies_delivery_without_invocation_header(app, client):
    payload = created_event()

    post_zendesk(client, payload, invocation_id=False)
    again = post_zendesk(client, payload, invocation_id=False)

    assert again.get_json()["status"] == "duplicate"
    assert stored(app)[0]["delivery_id"] == payload["id"]


def test_same_event_with_new_invocation_id_is_duplicate(app, client):
    payload = created_event()

    post_zendesk(client, payload, invocation_id="inv-a")
    again = post_zendesk(client, payload, invocation_id="inv-b")

    assert again.get_json()["status"] == "duplicate"
    assert len(stored(app)) == 1


def test_deeply_nested_json_is_400(client):
    body = b'{"a":' * 5000 + b"1" + b"}" * 5000

    response = post_zendesk(client, body)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_overlong_invocation_id_is_400(app, client):
    response = post_zendesk(client, {"ticket_id": "12"}, invocation_id="x" * 201)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_delivery_id"
    assert stored(app) == []


def test_control_character_in_ticket_id_is_400(client):
    payload = created_event()
    payload["detail"]["id"] = "12\u0000"

    response = post_zendesk(client, payload)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "detail.id"


def test_tags_event_with_wrong_list_is_400(client):
    payload = load_fixture("zendesk/event_ticket_tags_changed.json")
    payload["event"]["tags_removed"] = 5

    response = post_zendesk(client, payload)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "event.tags_removed"


def test_malformed_json_is_400(client):
    response = post_zendesk(client, b'{"type": "zen:event-type:ticket.created",')

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_json_array_is_400(client):
    response = post_zendesk(client, b"[1, 2]")

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_payload"


def test_event_without_ticket_id_names_the_field(app, client):
    payload = created_event()
    del payload["detail"]["id"]

    response = post_zendesk(client, payload)

    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["field"] == "detail.id"
    assert "detail.id" in error["message"]
    assert stored(app) == []


def test_event_with_wrong_tags_type_names_the_field(client):
    payload = created_event()
    payload["detail"]["tags"] = {"not": "a list"}

    response = post_zendesk(client, payload)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "detail.tags"


def test_unknown_event_type_is_200_and_logged(app, client, caplog):
    payload = created_event()
    payload["type"] = "zen:event-type:ticket.something_new"

    with caplog.at_level(logging.INFO, logger="deskroute.unsupported"):
        response = post_zendesk(client, payload, invocation_id="inv-unknown")

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert stored(app) == []
    assert any("inv-unknown" in record.getMessage() for record in caplog.records)


def test_non_ticket_event_is_ignored(app, client):
    payload = {
        "type": "zen:event-type:user.active_changed",
        "account_id": 1,
        "id": "a1",
        "time": now_stamp(),
        "subject": "zen:user:1",
        "detail": {"id": "1"},
        "event": {"current": False, "previous": True},
    }

    response = post_zendesk(client, payload)

    assert response.status_code == 200
    assert stored(app) == []


def test_comment_added_is_ignored_on_purpose(app, client):
    payload = load_fixture("zendesk/event_ticket_comment_added.json")

    response = post_zendesk(client, payload)

    assert response.status_code == 200
    assert response.get_json()["reason"] == "event not used"
    assert stored(app) == []


def test_group_change_is_stored_as_update(app, client):
    payload = load_fixture("zendesk/event_ticket_group_changed.json")

    response = post_zendesk(client, payload)

    assert response.status_code == 202
    row = stored(app)[0]
    assert row["kind"] == "ticket.updated"
    event = app.extensions["deskroute"].store.get_delivery(row["id"]).event
    assert event["changes"][0]["field"] == "group"
    assert event["changes"][0]["current"] is not None


def test_trigger_body_is_accepted(app, client):
    payload = load_fixture("zendesk/trigger_ticket_created.json")

    response = post_zendesk(client, payload, invocation_id="trigger-1")

    assert response.status_code == 202
    row = stored(app)[0]
    assert row["source_type"] == "trigger"
    event = app.extensions["deskroute"].store.get_delivery(row["id"]).event
    assert event["ticket"]["subject"]
    assert event["ticket"]["complete"] is True


def test_trigger_body_with_only_ticket_id_is_accepted(app, client):
    response = post_zendesk(client, {"ticket_id": 4711})

    assert response.status_code == 202
    event = app.extensions["deskroute"].store.get_delivery(stored(app)[0]["id"]).event
    assert event["ticket_id"] == "4711"
    assert event["ticket"]["complete"] is False


def test_trigger_body_without_ticket_id_names_the_field(client):
    response = post_zendesk(client, {"ticket": {"subject": "printer jammed"}})

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "ticket.id"


def test_trigger_body_without_any_ticket_is_400(client):
    response = post_zendesk(client, {"hello": "world"})

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "ticket.id"


def test_trigger_with_other_event_is_ignored(app, client, caplog):
    caplog.set_level("INFO", logger="deskroute.unsupported")

    response = post_zendesk(client, {"event": "solved", "ticket": {"id": "82"}})

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert "must be 'created' or 'updated'" in response.get_json()["reason"]
    assert app.extensions["deskroute"].store.list_deliveries() == []
    assert "trigger 'solved'" in caplog.text


def test_non_json_constant_is_400(client):
    body = b'{"ticket": {"id": 35436, "priority_score": NaN}}'

    response = post_zendesk(client, body)

    assert response.status_code == 400
    assert "NaN is not a JSON value" in response.get_json()["error"]["message"]


def test_trigger_ticket_not_an_object_names_ticket(client):
    response = post_zendesk(client, {"ticket": ["printer jammed"]})

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "ticket"


def test_trigger_without_invocation_header_deduplicates_by_body(app, client):
    payload = {"ticket": {"id": "77", "subject": "laptop screen flickers"}}

    post_zendesk(client, payload, invocation_id=False)
    again = post_zendesk(client, payload, invocation_id=False)

    assert again.get_json()["status"] == "duplicate"
    assert len(stored(app)) == 1


def test_body_over_limit_is_413(tmp_path, classifier):
    from plugin import create_app

    from conftest import make_settings

    app = create_app(make_settings(tmp_path, max_body_bytes=2048), classifier=classifier)
    payload = created_event()
    payload["detail"]["description"] = "x" * 4096

    response = post_zendesk(app.test_client(), payload)

    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "body_too_large"
    assert app.extensions["deskroute"].store.list_deliveries() == []


def test_own_api_user_update_is_ignored(tmp_path, classifier):
    from plugin import create_app

    from conftest import make_settings

    app = create_app(make_settings(tmp_path, zendesk_user_id="900001"), classifier=classifier)
    payload = load_fixture("zendesk/event_ticket_group_changed.json")
    payload["detail"]["actor_id"] = "900001"

    response = post_zendesk(app.test_client(), payload)

    assert response.status_code == 200
    assert "deskroute" in response.get_json()["reason"]
    assert app.extensions["deskroute"].store.list_deliveries() == []


def test_trigger_update_with_own_tag_is_ignored(app, client):
    payload = {"event": "updated", "ticket": {"id": "88", "tags": "deskroute vip"}}

    response = post_zendesk(client, payload)

    assert response.status_code == 200
    assert response.get_json()["status"] == "ignored"
    assert stored(app) == []


def test_webhook_secret_never_in_logs(client, caplog):
    with caplog.at_level(logging.DEBUG):
        post_zendesk(client, created_event())
        post_zendesk(client, created_event(), secret="wrong")

    assert WEBHOOK_SECRET not in caplog.text


def test_store_failure_is_500_so_zendesk_retries(app, client, monkeypatch):
    from sqlalchemy.exc import OperationalError

    store = app.extensions["deskroute"].store
    original = store.add_delivery

    def locked(event_data):
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "add_delivery", locked)
    failed = post_zendesk(client, created_event(), invocation_id="inv-retry")
    monkeypatch.setattr(store, "add_delivery", original)
    retried = post_zendesk(client, created_event(), invocation_id="inv-retry")

    assert failed.status_code == 500
    assert failed.get_json()["error"]["code"] == "internal_error"
    assert retried.status_code == 202
    assert len(stored(app)) == 1


def test_get_on_webhook_is_405_json(client):
    response = client.get("/webhooks/zendesk")

    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


def test_ticket_ids_are_normalised(app, client):
    payload = created_event()
    payload["detail"]["id"] = "05001"

    response = post_zendesk(client, payload)

    assert response.status_code == 202
    assert stored(app)[0]["ticket_id"] == "5001"


@pytest.mark.parametrize("ticket_id", ["١٢٣", "12a", "-5", "1" * 21])
def test_non_numeric_ticket_id_is_400(client, ticket_id):
    payload = created_event()
    payload["detail"]["id"] = ticket_id

    response = post_zendesk(client, payload)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "detail.id"


@pytest.mark.parametrize("event_id", ["", "   "])
def test_blank_event_id_is_400(client, event_id):
    payload = created_event()
    payload["id"] = event_id

    response = post_zendesk(client, payload)

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "id"


def test_huge_json_integer_is_400(client):
    body = b'{"ticket": {"id": ' + b"9" * 5000 + b"}}"

    response = post_zendesk(client, body)

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"


def test_comment_header_strip_is_linear(app, client):
    body = {"ticket": {"id": "1", "description": "----------" + "\n" * 200_000}}

    started = time.perf_counter()
    response = post_zendesk(client, body)

    assert response.status_code == 202
    # Exponential backtracking took seconds at 27 newlines; linear work takes milliseconds.
    assert time.perf_counter() - started < 5
