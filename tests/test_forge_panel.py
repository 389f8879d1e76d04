"""The Forge panel backend: invocation token checks against a JWKS the test serves."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
import responses
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from plugin import forge
from plugin.config import load_settings
from plugin.errors import register_error_handlers
from plugin.policy import Policy
from plugin.store import Store

APP_ID = "ari:cloud:ecosystem::app/8db33809-1f32-48bb-8c52-5877dab48107"
JWKS_URL = "https://forge-keys.example.test/.well-known/jwks.json"
KID = "forge-test-key-1"
INSTALLATION = "ari:cloud:ecosystem::installation/0a3a7799-53ae-4a5b-9e7e-03338980abb5"
PRINCIPAL = "712020:3b9d6f40-1e2c-4a7b-8c0d-5f6e7a8b9c01"


@pytest.fixture(scope="module")
def signing_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_for(key, kid=KID) -> dict:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return {"keys": [public]}


def claims(issue_key="ITSD-42", **overrides) -> dict:
    now = int(time.time())
    values = {
        "app": {
            "id": APP_ID,
            "installationId": INSTALLATION,
            "apiBaseUrl": "https://api.atlassian.com/ex/jira/d0d52620-3203-4cfa-8db5-f2587155f0dd",
            "environment": {"type": "PRODUCTION", "id": "ari:cloud:ecosystem::environment/x"},
            "module": {"type": "jira:issuePanel", "key": "deskroute-panel"},
        },
        "context": {
            "cloudId": "d0d52620-3203-4cfa-8db5-f2587155f0dd",
            "moduleKey": "deskroute-panel",
            "siteUrl": "https://example.atlassian.net",
            "extension": {
                "type": "jira:issuePanel",
                "issue": {"id": "10042", "key": issue_key, "type": "Service Request"},
                "project": {"id": "10001", "key": "ITSD", "type": "service_desk"},
            },
        },
        "principal": PRINCIPAL,
        "aud": APP_ID,
        "iss": "forge/invocation-token",
        "iat": now,
        "nbf": now,
        "exp": now + 25,
        "jti": "d8a496253ec8c18a54631e4c82cbedd5d0ae8570",
    }
    values.update(overrides)
    return values


def token_for(key, payload=None, kid=KID, algorithm="RS256") -> str:
    return jwt.encode(payload or claims(), key, algorithm=algorithm, headers={"kid": kid})


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def store(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'deskroute.sqlite3'}")
    store.create_schema()
    yield store
    store.dispose()


def make_app(tmp_path, store, **overrides):
    values = {"data_dir": str(tmp_path), "forge_app_id": APP_ID, "forge_jwks_url": JWKS_URL}
    values.update(overrides)

    class State:
        settings = load_settings(environ={}, **values)
        policy = Policy.load(None)

    State.store = store
    app = Flask(__name__)
    app.extensions["deskroute"] = State()
    register_error_handlers(app)
    app.register_blueprint(forge.bp, url_prefix="/forge")
    return app


@pytest.fixture
def client(tmp_path, store):
    return make_app(tmp_path, store).test_client()


@pytest.fixture
def jwks(signing_key):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(JWKS_URL, json=jwks_for(signing_key))
        yield mock


def add_decision(store, ticket_id="ITSD-42") -> int:
    return store.add_decision(
        helpdesk="jira",
        ticket_id=ticket_id,
        delivery_id="3a2b9c1e-0f4d-4e8a-b1c2-d3e4f5a6b7c8",
        mode="suggest",
        model_version="it-service-tickets-1",
        queue="Access",
        priority="high",
        action="needs_confirmation",
        confidence=0.72,
        prediction={"queue": "Access", "confidence": 0.72},
        decision={
            "queue": "Access",
            "priority": "high",
            "action": "needs_confirmation",
            "tags": ["deskroute", "deskroute-access"],
            "reasons": [{"rule": "threshold", "detail": "0.72 is below the 0.80 of Access"}],
            "confidence": 0.72,
            "threshold": 0.8,
            "alternatives": [["Hardware", 0.18], ["HR Support", 0.05]],
        },
        account={"name": "Example Industries", "tier": "gold"},
        status="applied",
    )


# Token checks


def test_panel_valid_token(client, store, jwks, signing_key):
    decision_id = add_decision(store)

    response = client.get("/forge/panel", headers=auth(token_for(signing_key)))

    assert response.status_code == 200
    body = response.get_json()
    assert body["issue"] == {"id": "10042", "key": "ITSD-42"}
    assert body["decision"]["id"] == decision_id
    assert body["decision"]["queue"] == "Access"
    assert body["decision"]["priority"] == "high"
    assert body["decision"]["confidence"] == 0.72
    assert body["decision"]["alternatives"] == [["Hardware", 0.18], ["HR Support", 0.05]]
    assert body["decision"]["reasons"][0]["rule"] == "threshold"
    assert body["decision"]["account"] == {"name": "Example Industries", "tier": "gold"}
    assert "Hardware" in body["queues"]


def test_panel_ignores_issue_parameter(client, store, jwks, signing_key):
    add_decision(store, "ITSD-42")
    add_decision(store, "HR-7")

    response = client.get(
        "/forge/panel?issue=HR-7&issueKey=HR-7", headers=auth(token_for(signing_key))
    )

    assert response.get_json()["issue"]["key"] == "ITSD-42"


def test_panel_without_decision(client, jwks, signing_key):
    response = client.get("/forge/panel", headers=auth(token_for(signing_key)))

    assert response.status_code == 200
    assert response.get_json()["decision"] is None


def rejected(response, fragment: str) -> None:
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "invalid_token"
    assert fragment in error["message"]


def test_panel_expired_token(client, jwks, signing_key):
    past = int(time.time()) - 600
    token = token_for(signing_key, claims(iat=past, nbf=past, exp=past + 25))

    rejected(client.get("/forge/panel", headers=auth(token)), "expired")


def test_panel_token_not_yet_valid(client, jwks, signing_key):
    future = int(time.time()) + 600
    token = token_for(signing_key, claims(nbf=future, exp=future + 25))

    rejected(client.get("/forge/panel", headers=auth(token)), "not valid yet")


def test_panel_wrong_audience(client, jwks, signing_key):
    token = token_for(signing_key, claims(aud="ari:cloud:ecosystem::app/someone-else"))

    rejected(client.get("/forge/panel", headers=auth(token)), "audience")


def test_panel_wrong_issuer(client, jwks, signing_key):
    token = token_for(signing_key, claims(iss="someone/else"))

    rejected(client.get("/forge/panel", headers=auth(token)), "issuer")


def test_panel_missing_expiry(client, jwks, signing_key):
    payload = claims()
    payload.pop("exp")

    rejected(client.get("/forge/panel", headers=auth(token_for(signing_key, payload))), "exp")


def test_panel_wrong_key(client, jwks, other_key):
    rejected(client.get("/forge/panel", headers=auth(token_for(other_key))), "signature")


def test_panel_unknown_key_id(client, jwks, signing_key):
    response = client.get("/forge/panel", headers=auth(token_for(signing_key, kid="rotated-2")))

    rejected(response, "rotated-2")


def test_panel_tampered_claims(client, store, jwks, signing_key):
    add_decision(store, "HR-7")
    header, payload, signature = token_for(signing_key).split(".")
    forged = claims(issue_key="HR-7")
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()

    response = client.get("/forge/panel", headers=auth(f"{header}.{forged_payload}.{signature}"))

    rejected(response, "signature")


def test_panel_rejects_hmac_token(client, jwks):
    token = jwt.encode(
        claims(), "a-shared-secret-guess-of-32-bytes!", algorithm="HS256", headers={"kid": KID}
    )

    rejected(client.get("/forge/panel", headers=auth(token)), "RS256")


def test_panel_rejects_garbage(client, jwks):
    rejected(client.get("/forge/panel", headers=auth("not-a-jwt")), "not a JWT")


def test_panel_missing_token(client):
    response = client.get("/forge/panel")

    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "missing_token"


def test_panel_token_without_issue(client, jwks, signing_key):
    payload = claims()
    payload["context"]["extension"].pop("issue")

    response = client.get("/forge/panel", headers=auth(token_for(signing_key, payload)))

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "no_issue_context"


def test_panel_not_configured(tmp_path, store, signing_key):
    client = make_app(tmp_path, store, forge_app_id=None).test_client()

    response = client.get("/forge/panel", headers=auth(token_for(signing_key)))

    assert response.status_code == 503
    assert "DESKROUTE_FORGE_APP_ID" in response.get_json()["error"]["message"]


def test_panel_key_set_unavailable(client, signing_key):
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, status=500)

        response = client.get("/forge/panel", headers=auth(token_for(signing_key)))

    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "jwks_unavailable"


def test_panel_key_set_fetched_once(client, jwks, signing_key):
    for _ in range(3):
        assert client.get("/forge/panel", headers=auth(token_for(signing_key))).status_code == 200

    assert len(jwks.calls) == 1


def test_key_cache_refetches_after_an_hour(signing_key):
    now = [1000.0]
    cache = forge.JWKSCache(JWKS_URL, clock=lambda: now[0])
    with responses.RequestsMock() as mock:
        mock.get(JWKS_URL, json=jwks_for(signing_key))
        mock.get(JWKS_URL, json=jwks_for(signing_key))

        cache.key(KID)
        now[0] += 30
        cache.key(KID)
        now[0] += forge.JWKS_CACHE_SECONDS
        cache.key(KID)

        assert len(mock.calls) == 2


# Accept and override


def post_action(client, key, body, issue_key="ITSD-42"):
    return client.post(
        "/forge/panel/feedback",
        json=body,
        headers=auth(token_for(key, claims(issue_key=issue_key))),
    )


def test_feedback_accept(client, store, jwks, signing_key):
    decision_id = add_decision(store)

    response = post_action(client, signing_key, {"action": "accept", "decision_id": decision_id})

    assert response.status_code == 201
    rows = store.feedback_for_ticket("jira", "ITSD-42")
    assert [(row["field"], row["verdict"], row["chosen"]) for row in rows] == [
        ("group", "accept", "Access"),
        ("priority", "accept", "high"),
    ]
    assert {row["actor"] for row in rows} == {PRINCIPAL}
    assert {row["source"] for row in rows} == {"forge_panel"}
    assert {row["decision"] for row in rows} == {decision_id}


def test_feedback_override_queue(client, store, jwks, signing_key):
    add_decision(store)

    response = post_action(client, signing_key, {"action": "override", "queue": "Hardware"})

    assert response.status_code == 201
    rows = store.feedback_for_ticket("jira", "ITSD-42")
    assert [(r["field"], r["verdict"], r["suggested"], r["chosen"]) for r in rows] == [
        ("group", "override", "Access", "Hardware")
    ]


def test_feedback_override_needs_choice(client, store, jwks, signing_key):
    add_decision(store)

    response = post_action(client, signing_key, {"action": "override"})

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "queue"


def test_feedback_invalid_action(client, store, jwks, signing_key):
    add_decision(store)

    response = post_action(client, signing_key, {"action": "maybe"})

    assert response.status_code == 400
    assert response.get_json()["error"]["field"] == "action"


def test_feedback_without_decision(client, jwks, signing_key):
    response = post_action(client, signing_key, {"action": "accept"})

    assert response.status_code == 404


def test_feedback_for_other_decision_is_409(client, store, jwks, signing_key):
    # A panel left open shows a decision id, and an answer must name this issue's decision.
    add_decision(store)
    other = add_decision(store, "HR-7")

    response = post_action(client, signing_key, {"action": "accept", "decision_id": other})

    assert response.status_code == 409
    assert store.feedback_for_ticket("jira", "ITSD-42") == []


def test_feedback_goes_to_token_issue(client, store, jwks, signing_key):
    add_decision(store, "ITSD-42")
    add_decision(store, "HR-7")

    response = post_action(
        client, signing_key, {"action": "accept", "issue": "HR-7"}, issue_key="ITSD-42"
    )

    assert response.status_code == 201
    assert store.feedback_for_ticket("jira", "HR-7") == []
    assert len(store.feedback_for_ticket("jira", "ITSD-42")) == 2


def test_feedback_rejects_bad_token(client, store, jwks, other_key):
    add_decision(store)

    response = post_action(client, other_key, {"action": "accept"})

    assert response.status_code == 401
    assert store.feedback_for_ticket("jira", "ITSD-42") == []
