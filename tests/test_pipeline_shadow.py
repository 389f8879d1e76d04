"""The pipeline without help desk credentials: shadow mode, the worker, recovery, the API."""

from __future__ import annotations

import time
import uuid

from plugin import create_app
from plugin.store import FAILED, IGNORED

from conftest import bearer, load_fixture, make_settings, post_zendesk


def created_event(ticket_id="5158", subject=None, description=None):
    payload = load_fixture("zendesk/event_ticket_created.json")
    payload["detail"]["id"] = ticket_id
    payload["subject"] = f"zen:ticket:{ticket_id}"
    # Each call is a new event: Zendesk deduplicates on the event id.
    payload["id"] = str(uuid.uuid4())
    if subject is not None:
        payload["detail"]["subject"] = subject
    if description is not None:
        payload["detail"]["description"] = description
    return payload


def decisions(client, ticket_id, helpdesk="zendesk"):
    response = client.get(
        "/api/decisions",
        query_string={"helpdesk": helpdesk, "ticket_id": ticket_id},
        headers=bearer(),
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["decisions"]


def test_shadow_decision_is_recorded_and_nothing_written(app, client, classifier):
    payload = created_event("5158")

    assert post_zendesk(client, payload).status_code == 202
    assert app.extensions["deskroute"].worker.drain() == 1

    found = decisions(client, "5158")
    assert len(found) == 1
    decision = found[0]
    assert decision["mode"] == "shadow"
    assert decision["status"] == "skipped"
    assert decision["writeback_request"] is None
    assert decision["queue"] in classifier.labels
    assert decision["model_version"] == classifier.version
    rules = [reason["rule"] for reason in decision["decision"]["reasons"]]
    assert rules[0] == "model"
    assert "mode" in rules
    assert decision["timings"]["classify_ms"] >= 0


def test_decision_matches_the_model(app, client, classifier):
    text = "laptop screen broken need replacement monitor cable"
    payload = created_event("61", subject="", description=text)

    post_zendesk(client, payload)
    app.extensions["deskroute"].worker.drain()

    decision = decisions(client, "61")[0]
    expected = classifier.predict(text)
    assert decision["queue"] == expected.queue
    assert abs(decision["confidence"] - expected.confidence) < 1e-6


def test_duplicate_delivery_is_decided_once(app, client):
    payload = created_event("77")

    post_zendesk(client, payload, invocation_id="same")
    post_zendesk(client, payload, invocation_id="same")
    app.extensions["deskroute"].worker.drain()

    assert len(decisions(client, "77")) == 1


def test_second_created_delivery_for_same_ticket_is_ignored(app, client):
    first, second = created_event("78"), created_event("78")
    post_zendesk(client, first)
    post_zendesk(client, second)
    app.extensions["deskroute"].worker.drain()

    assert len(decisions(client, "78")) == 1
    statuses = {
        row["delivery_id"]: row["status"]
        for row in app.extensions["deskroute"].store.list_deliveries()
    }
    assert statuses[second["id"]] == IGNORED


def test_delivery_survives_restart_before_processing(tmp_path, classifier):
    settings = make_settings(tmp_path)
    first = create_app(settings, classifier=classifier)
    assert post_zendesk(first.test_client(), created_event("300")).status_code == 202
    # The process stops before its worker ran.
    first.extensions["deskroute"].store.dispose()

    second = create_app(
        make_settings(tmp_path, run_worker=True, worker_poll_seconds=0.05), classifier=classifier
    )
    try:
        deadline = time.monotonic() + 10
        found = []
        while not found and time.monotonic() < deadline:
            found = decisions(second.test_client(), "300")
            time.sleep(0.05)
    finally:
        second.extensions["deskroute"].worker.stop()
    assert len(found) == 1


def test_thin_trigger_without_credentials_fails_visibly(app, client):
    post_zendesk(client, {"ticket_id": "9001"}, invocation_id="thin")

    app.extensions["deskroute"].worker.drain()

    response = client.get("/api/deliveries", query_string={"status": FAILED}, headers=bearer())
    failed = response.get_json()["deliveries"]
    assert [row["delivery_id"] for row in failed] == ["thin"]
    assert "no zendesk credentials" in failed[0]["last_error"]
    detail = client.get(f"/api/deliveries/{failed[0]['id']}", headers=bearer()).get_json()
    assert detail["failures"][0]["step"] == "ticket"


def test_retry_api_requeues_only_failed_deliveries(app, client):
    post_zendesk(client, {"ticket_id": "9002"}, invocation_id="thin-2")
    app.extensions["deskroute"].worker.drain()
    [failed] = client.get(
        "/api/deliveries", query_string={"status": FAILED}, headers=bearer()
    ).get_json()["deliveries"]

    requeued = client.post(f"/api/deliveries/{failed['id']}/retry", headers=bearer())
    again = client.post(f"/api/deliveries/{failed['id']}/retry", headers=bearer())
    missing = client.post("/api/deliveries/99999/retry", headers=bearer())

    assert requeued.status_code == 202, requeued.get_json()
    assert again.status_code == 409
    assert again.get_json()["error"]["code"] == "not_failed"
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"


def test_decisions_api_requires_token(app, client):
    missing = client.get("/api/decisions?helpdesk=zendesk&ticket_id=1")
    wrong = client.get("/api/decisions?helpdesk=zendesk&ticket_id=1", headers=bearer("nope"))
    basic = client.get(
        "/api/decisions?helpdesk=zendesk&ticket_id=1", headers={"Authorization": "Basic abc"}
    )

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert basic.status_code == 401
    assert wrong.get_json()["error"]["code"] == "invalid_token"


def test_decisions_api_validates_query(client):
    response = client.get("/api/decisions?helpdesk=freshdesk&ticket_id=1", headers=bearer())

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "helpdesk"


def test_feedback_api_records_override(app, client):
    post_zendesk(client, created_event("501"))
    app.extensions["deskroute"].worker.drain()
    decision_id = decisions(client, "501")[0]["id"]

    response = client.post(
        f"/api/decisions/{decision_id}/feedback",
        json={"verdict": "override", "field": "group", "chosen": "360009", "actor": "agent-7"},
        headers=bearer(),
    )

    assert response.status_code == 201
    store = app.extensions["deskroute"].store
    assert store.overridden_fields("zendesk", "501") == {"group"}


def test_feedback_override_needs_chosen_value(app, client):
    post_zendesk(client, created_event("502"))
    app.extensions["deskroute"].worker.drain()
    decision_id = decisions(client, "502")[0]["id"]

    response = client.post(
        f"/api/decisions/{decision_id}/feedback", json={"verdict": "override"}, headers=bearer()
    )

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "chosen"


def test_healthz_reports_worker_and_model(client, classifier):
    body = client.get("/healthz").get_json()

    # The fixture's app runs no worker: the tests drain deliveries themselves.
    assert body["status"] == "degraded"
    assert body["worker"]["running"] is False
    assert body["model"] == classifier.version
    assert body["mode"] == "shadow"


def test_decisions_api_pages_after_an_id(app, client):
    for ticket_id in ("901", "902", "903"):
        post_zendesk(client, created_event(ticket_id))
    app.extensions["deskroute"].worker.drain()

    first = client.get(
        "/api/decisions",
        query_string={"helpdesk": "zendesk", "after": 0, "limit": 2},
        headers=bearer(),
    ).get_json()
    rest = client.get(
        "/api/decisions",
        query_string={"helpdesk": "zendesk", "after": first["next"]},
        headers=bearer(),
    ).get_json()

    assert [d["ticket_id"] for d in first["decisions"]] == ["901", "902"]
    assert [d["ticket_id"] for d in rest["decisions"]] == ["903"]
    assert first["last"] == rest["next"]


def test_decisions_api_needs_ticket_or_after(client):
    response = client.get("/api/decisions", query_string={"helpdesk": "zendesk"}, headers=bearer())

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "ticket_id"


def test_feedback_api_rejects_bad_bodies(app, client):
    post_zendesk(client, created_event("503"))
    app.extensions["deskroute"].worker.drain()
    decision_id = decisions(client, "503")[0]["id"]
    url = f"/api/decisions/{decision_id}/feedback"
    nested = '{"verdict": "accept", "extra": ' + "[" * 5000 + "]" * 5000 + "}"

    deep = client.post(url, data=nested, headers=bearer())
    not_json = client.post(url, data="x", headers=bearer())
    bad_priority = client.post(
        url, json={"verdict": "override", "field": "priority", "chosen": "ultra"}, headers=bearer()
    )

    assert deep.status_code == 400
    assert not_json.get_json()["error"]["code"] == "invalid_json"
    assert bad_priority.status_code == 400
    assert bad_priority.get_json()["error"]["field"] == "chosen"
