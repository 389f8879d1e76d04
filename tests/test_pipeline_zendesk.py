"""End to end with Zendesk credentials: webhook in, ticket read, update and note out.

The Zendesk API is mocked with ``responses`` in its documented wire format; every
write-back is asserted as the whole PUT body.
"""

from __future__ import annotations

import csv
import json
import logging
import time

import pytest
import requests
import responses
from responses import matchers
from responses.registries import OrderedRegistry

from connectors.zendesk import ZendeskConnector
from model.data import load_dataset
from model.inference import Classifier
from model.train import TrainConfig, train_model
from plugin import create_app
from plugin.pipeline import WRITEBACK_TIMEOUT_WAIT
from plugin.store import DONE, FAILED, PENDING

from conftest import FIXTURES, bearer, load_fixture, make_settings, post_zendesk

SUBDOMAIN = "example"
TOKEN = "zendesk-api-token-value"
TICKET_URL = f"https://{SUBDOMAIN}.zendesk.com/api/v2/tickets/35436.json"
ME_URL = f"https://{SUBDOMAIN}.zendesk.com/api/v2/users/me.json"
STAMP = "2026-12-04T09:14:02Z"
GROUPS = {
    "Access": 360000000101,
    "Administrative rights": 360000000102,
    "Hardware": 360000000103,
    "HR Support": 360000000104,
    "Internal Project": 360000000105,
    "Miscellaneous": 360000000106,
    "Purchase": 360000000107,
    "Storage": 360000000108,
}


def api(name):
    return json.loads((FIXTURES / "zendesk" / "api" / f"{name}.json").read_text())


def write_policy(path, mode):
    lines = [f'mode = "{mode}"', "[defaults]", 'priority = "normal"', 'tags = ["triaged"]']
    for queue, group in GROUPS.items():
        lines += [
            f'[queues."{queue}"]',
            'priority = "normal"',
            f'[queues."{queue}".zendesk]',
            f"group_id = {group}",
        ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_app(tmp_path, classifier, sleeps):
    apps = []

    def build(mode="auto", **overrides):
        policy = write_policy(tmp_path / f"policy-{mode}.toml", mode)
        settings = make_settings(
            tmp_path,
            policy_file=policy,
            zendesk_subdomain=SUBDOMAIN,
            zendesk_email="deskroute@example.com",
            zendesk_token=TOKEN,
            **overrides,
        )
        connector = ZendeskConnector(
            SUBDOMAIN, "deskroute@example.com", TOKEN, sleep=sleeps.append, max_attempts=3
        )
        app = create_app(settings, classifier=classifier, connectors={"zendesk": connector})
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["deskroute"].store.dispose()


@pytest.fixture
def http():
    with responses.RequestsMock(
        assert_all_requests_are_fired=True, registry=OrderedRegistry
    ) as mock:
        yield mock


def expect_me(http):
    http.get(ME_URL, json=api("users_me"))


def expect_show(http, fixture="ticket_show__sideloads", status=200):
    http.get(
        TICKET_URL,
        json=api(fixture),
        status=status,
        match=[matchers.query_param_matcher({"include": "users,organizations"})],
    )


def created_event():
    payload = load_fixture("zendesk/event_ticket_created.json")
    payload["detail"]["id"] = "35436"
    return payload


def ticket_text():
    ticket = api("ticket_show__sideloads")["ticket"]
    return f"{ticket['subject']}\n{ticket['description']}"


def run(app, client, payload=None, **kwargs):
    response = post_zendesk(client, payload or created_event(), **kwargs)
    assert response.status_code == 202, response.get_json()
    app.extensions["deskroute"].worker.drain()


def only_decision(app):
    rows = app.extensions["deskroute"].store.decisions_for_ticket("zendesk", "35436")
    assert len(rows) == 1
    return rows[0]


def expected_put(decision, *, group=True, priority=True, stamp=STAMP):
    request = decision["writeback_request"]
    body = {"id": 35436}
    if group:
        body["group_id"] = GROUPS[decision["queue"]]
    if priority:
        body["priority"] = decision["priority"]
    body["additional_tags"] = request["add_tags"]
    body["comment"] = {"body": request["note"], "public": False}
    body["safe_update"] = True
    body["updated_stamp"] = stamp
    return {"ticket": body}


def capture_put(http, status=200, **kwargs):
    """Register a PUT and return the list its JSON bodies are collected in."""
    bodies = []

    def callback(request):
        bodies.append(json.loads(request.body))
        payload = kwargs.get("json", api("ticket_update"))
        return status, kwargs.get("headers", {}), json.dumps(payload)

    http.add_callback(responses.PUT, TICKET_URL, callback=callback)
    return bodies


def test_auto_mode_routes_confident_ticket(make_app, http, classifier):
    app = make_app("auto")
    prediction = classifier.predict(ticket_text())
    assert prediction.meets_threshold, "fixture text should be confidently classified"
    expect_me(http)
    expect_show(http)
    bodies = capture_put(http)

    run(app, app.test_client())

    decision = only_decision(app)
    assert decision["action"] == "auto_route"
    assert decision["status"] == "applied"
    assert bodies == [expected_put(decision)]
    tags = bodies[0]["ticket"]["additional_tags"]
    assert tags[0] == "deskroute"
    assert "triaged" in tags
    note = bodies[0]["ticket"]["comment"]["body"]
    assert f"queue {prediction.queue}" in note
    assert f"Confidence {prediction.confidence:.2f}" in note
    assert f"deskroute decision {decision['id']}" in note
    assert "Reasons:" in note
    assert decision["writeback_result"]["ok"] is True
    assert decision["timings"]["writeback_ms"] > 0


@pytest.fixture(scope="module")
def priority_model(tmp_path_factory):
    """A model whose priority head learned Jira's "Highest" for hardware and access tickets.

    Returns the classifier and a sample text that its head calls urgent and whose queue
    reaches its threshold, so that auto mode writes the priority.
    """
    rows = list(csv.DictReader((FIXTURES / "data" / "it-service-tickets-sample.csv").open()))
    for row in rows:
        row["priority"] = "Highest" if row["queue"] in ("Hardware", "Access") else "Low"
    folder = tmp_path_factory.mktemp("priority-model")
    with (folder / "tickets.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "queue", "priority"])
        writer.writeheader()
        writer.writerows(rows)
    dataset = load_dataset(folder / "tickets.csv", ["text"], "queue", priority_column="priority")
    train_model(dataset, folder / "model", TrainConfig(name="sample", target_precision=0.8))
    classifier = Classifier.load(folder / "model")
    highest = [row["text"] for row in rows if row["priority"] == "Highest"]
    urgent = [
        text
        for text, prediction in zip(highest, classifier.predict_many(highest), strict=True)
        if prediction.predicted_priority == "urgent" and prediction.meets_threshold
    ]
    assert urgent, "no sample ticket is both routed and called urgent"
    return classifier, urgent[0]


def test_priority_head_sets_the_written_priority(tmp_path, http, priority_model):
    classifier, text = priority_model
    settings = make_settings(
        tmp_path,
        policy_file=write_policy(tmp_path / "policy.toml", "auto"),
        zendesk_subdomain=SUBDOMAIN,
        zendesk_email="deskroute@example.com",
        zendesk_token=TOKEN,
    )
    connector = ZendeskConnector(SUBDOMAIN, "deskroute@example.com", TOKEN, max_attempts=1)
    app = create_app(settings, classifier=classifier, connectors={"zendesk": connector})
    ticket = api("ticket_show__sideloads")
    ticket["ticket"].update(subject="", description=text)
    expect_me(http)
    http.get(TICKET_URL, json=ticket)
    bodies = capture_put(http)

    try:
        run(app, app.test_client())
        decision = only_decision(app)
    finally:
        app.extensions["deskroute"].store.dispose()

    assert decision["action"] == "auto_route"
    assert decision["priority"] == "urgent"
    assert decision["prediction"]["predicted_priority"] == "urgent"
    assert bodies[0]["ticket"]["priority"] == "urgent"
    assert "- priority: urgent from the priority model" in bodies[0]["ticket"]["comment"]["body"]


def test_suggest_mode_writes_note_and_tags_only(make_app, http):
    app = make_app("suggest")
    expect_me(http)
    expect_show(http)
    bodies = capture_put(http)

    run(app, app.test_client())

    decision = only_decision(app)
    assert bodies == [expected_put(decision, group=False, priority=False)]
    assert decision["mode"] == "suggest"


def test_shadow_mode_with_credentials_writes_nothing(make_app, http):
    app = make_app("shadow")
    expect_me(http)
    expect_show(http)

    run(app, app.test_client())

    decision = only_decision(app)
    assert decision["status"] == "skipped"
    assert decision["writeback_request"] is None


def test_low_confidence_in_auto_mode_is_only_suggested(make_app, http):
    app = make_app("auto")
    show = api("ticket_show__sideloads")
    show["ticket"]["subject"] = "question"
    show["ticket"]["description"] = "hello"
    expect_me(http)
    http.get(TICKET_URL, json=show)
    bodies = capture_put(http)

    run(app, app.test_client())

    decision = only_decision(app)
    assert decision["action"] == "needs_confirmation"
    assert bodies == [expected_put(decision, group=False, priority=False)]


def test_thin_trigger_reads_ticket_through_api(make_app, http):
    app = make_app("auto")
    expect_me(http)
    expect_show(http)
    bodies = capture_put(http)

    run(app, app.test_client(), {"ticket_id": "35436"})

    decision = only_decision(app)
    assert decision["prediction"]["queue"] == decision["queue"]
    assert len(bodies) == 1


def test_conflict_rereads_and_retries(make_app, http):
    app = make_app("auto")
    expect_me(http)
    expect_show(http)
    first = capture_put(http, status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__changed_by_agent")
    http.get(
        f"https://{SUBDOMAIN}.zendesk.com/api/v2/tickets/35436/comments.json",
        json=api("ticket_comments"),
    )
    second = capture_put(http)

    run(app, app.test_client())

    decision = only_decision(app)
    assert decision["status"] == "applied"
    assert decision["writeback_result"]["attempts"] == 2
    changed = api("ticket_show__changed_by_agent")["ticket"]
    assert second[0]["ticket"]["updated_stamp"] == changed["updated_at"]
    assert first[0]["ticket"]["updated_stamp"] == STAMP


def test_rate_limit_waits_for_retry_after(make_app, http, sleeps):
    app = make_app("auto")
    expect_me(http)
    expect_show(http)
    capture_put(http, status=429, json={"error": "TooManyRequests"}, headers={"Retry-After": "7"})
    bodies = capture_put(http)

    run(app, app.test_client())

    assert sleeps == [7.0]
    assert only_decision(app)["status"] == "applied"
    assert len(bodies) == 1


def test_writeback_timeout_waits_before_retrying(make_app, http):
    app = make_app("auto")
    store = app.extensions["deskroute"].store
    expect_me(http)
    expect_show(http)
    for _ in range(3):
        http.put(TICKET_URL, body=requests.exceptions.ReadTimeout("Read timed out."))

    post_zendesk(app.test_client(), created_event())
    started = time.time()
    app.extensions["deskroute"].worker.drain(max_deliveries=1)

    delivery = store.list_deliveries()[0]
    assert delivery["status"] == PENDING
    assert "ConnectorTimeout" in delivery["last_error"]
    # The timed-out PUT may still land, so the retry waits for it rather than re-reading
    # the ticket at once and posting the note again.
    assert delivery["next_attempt_at"] >= started + WRITEBACK_TIMEOUT_WAIT


def test_server_errors_retry_the_delivery(make_app, http):
    app = make_app("auto")
    store = app.extensions["deskroute"].store
    expect_me(http)
    expect_show(http)
    for _ in range(3):
        capture_put(http, status=500, json={"error": "InternalError"})

    post_zendesk(app.test_client(), created_event())
    app.extensions["deskroute"].worker.drain(max_deliveries=1)

    delivery = store.list_deliveries()[0]
    assert delivery["status"] == PENDING
    assert "ConnectorUnavailable" in delivery["last_error"]
    assert store.failures(delivery["id"])[0]["step"] == "writeback"
    assert only_decision(app)["status"] == "failed"

    # The next attempt reuses the recorded decision and only repeats the write-back.
    bodies = capture_put(http)
    app.extensions["deskroute"].worker.drain()

    assert store.get_delivery(delivery["id"]).status == DONE
    decision = only_decision(app)
    assert decision["status"] == "applied"
    assert bodies == [expected_put(decision)]


def test_unauthorized_fails_without_retry(make_app, http):
    app = make_app("auto")
    store = app.extensions["deskroute"].store
    http.get(ME_URL, status=401, json={"error": "Couldn't authenticate you"})
    http.get(TICKET_URL, status=401, json={"error": "Couldn't authenticate you"})

    post_zendesk(app.test_client(), created_event())
    app.extensions["deskroute"].worker.drain()

    delivery = store.list_deliveries()[0]
    assert delivery["status"] == FAILED
    assert "ConnectorUnauthorized" in delivery["last_error"]
    assert delivery["attempts"] == 1


def test_missing_ticket_fails_visibly(make_app, http):
    app = make_app("auto")
    store = app.extensions["deskroute"].store
    expect_me(http)
    expect_show(http, "ticket_show__not_found", status=404)

    post_zendesk(app.test_client(), created_event())
    app.extensions["deskroute"].worker.drain()

    delivery = store.list_deliveries()[0]
    assert delivery["status"] == FAILED
    assert "ConnectorNotFound" in delivery["last_error"]


def test_own_update_is_not_processed(make_app, http):
    app = make_app("auto")
    expect_me(http)
    payload = load_fixture("zendesk/event_ticket_group_changed.json")
    payload["detail"]["actor_id"] = str(api("users_me")["user"]["id"])

    run(app, app.test_client(), payload)

    assert app.extensions["deskroute"].store.list_deliveries()[0]["status"] == "ignored"


def test_human_regroup_is_feedback_and_never_overwritten(make_app, http):
    app = make_app("auto")
    client = app.test_client()
    expect_me(http)
    expect_show(http)
    capture_put(http)
    run(app, client)
    decision = only_decision(app)

    change = load_fixture("zendesk/event_ticket_group_changed.json")
    change["detail"]["id"] = "35436"
    change["event"] = {"current": "360000999999", "previous": str(GROUPS[decision["queue"]])}
    run(app, client, change)

    feedback = client.get(
        "/api/decisions",
        query_string={"helpdesk": "zendesk", "ticket_id": "35436"},
        headers=bearer(),
    ).get_json()["feedback"]
    assert [(item["verdict"], item["field"], item["chosen"]) for item in feedback] == [
        ("override", "group", "360000999999")
    ]
    store = app.extensions["deskroute"].store
    assert store.overridden_fields("zendesk", "35436") == {"group"}
    policy = app.extensions["deskroute"].policy
    from plugin.policy import Decision
    from plugin.tickets import Ticket

    again = Decision(**{k: v for k, v in decision["decision"].items() if k != "target"})
    writeback, held = policy.writeback_for(
        again,
        Ticket(helpdesk="zendesk", id="35436"),
        mode="auto",
        helpdesk="zendesk",
        note="n",
        overridden=store.overridden_fields("zendesk", "35436"),
    )
    assert writeback.group is None
    assert any(reason["rule"] == "feedback" for reason in held)


def test_token_absent_from_logs_and_decision_log(make_app, http, caplog):
    app = make_app("auto")
    expect_me(http)
    expect_show(http)
    capture_put(http)

    with caplog.at_level(logging.DEBUG):
        run(app, app.test_client())

    assert TOKEN not in caplog.text
    assert TOKEN not in json.dumps(only_decision(app), default=str)
    assert TOKEN not in repr(app.extensions["deskroute"].connectors["zendesk"])
