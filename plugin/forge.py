"""The backend of the Forge issue panel, reached through Forge Remote.

Forge calls these routes with a Forge Invocation Token (FIT) in ``Authorization: Bearer``:
a JWT that Atlassian signs with RS256, whose public keys are published as a JWKS
(``DESKROUTE_FORGE_JWKS_URL``). A request is trusted only when the signature matches a key
of that set, ``aud`` is this app's id (``DESKROUTE_FORGE_APP_ID``), ``iss`` is
``forge/invocation-token`` and the token is inside its ``nbf``/``exp`` window.

The issue comes from the token's ``context.extension.issue``, which Atlassian signed, and
never from the URL or the body. A user who can open one issue's panel therefore cannot read
or respond to another issue's decision by changing a parameter.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import jwt
import requests
from flask import Blueprint, current_app, g, jsonify, request
from marshmallow import EXCLUDE, Schema, fields, validate, validates_schema
from marshmallow import ValidationError as SchemaError

from plugin import intake
from plugin.errors import APIError

log = logging.getLogger(__name__)

bp = Blueprint("forge", __name__)

HELPDESK = "jira"
FORGE_ISSUER = "forge/invocation-token"
ALGORITHMS = ["RS256"]
# Forge tokens are valid for about 25 seconds, and the leeway absorbs clock skew.
LEEWAY_SECONDS = 10
JWKS_CACHE_SECONDS = 3600
# An unknown key id refetches the set, but at most this often, so forged key ids cannot
# turn every request into a fetch.
JWKS_REFETCH_SECONDS = 60
JWKS_TIMEOUT_SECONDS = 5


class ForgeTokenError(Exception):
    """A token that is missing, malformed or fails a check. The message names the check."""


class JWKSUnavailable(Exception):
    """The key set could not be fetched or parsed."""


class JWKSCache:
    """The Forge key set, fetched with ``requests`` and kept for an hour."""

    def __init__(self, url: str, *, session: requests.Session | None = None, clock=time.time):
        self.url = url
        self.session = session or requests.Session()
        self.clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def key(self, kid: str) -> jwt.PyJWK:
        """Return the key with id ``kid``, fetching the set when it is stale or lacks it."""
        with self._lock:
            now = self.clock()
            stale = self._fetched_at is None or now - self._fetched_at > JWKS_CACHE_SECONDS
            may_refetch = self._fetched_at is None or now - self._fetched_at > JWKS_REFETCH_SECONDS
            if stale or (kid not in self._keys and may_refetch):
                self._fetch(now)
            try:
                return self._keys[kid]
            except KeyError:
                raise ForgeTokenError(f"signing key {kid!r} is not in the Forge key set") from None

    def _fetch(self, now: float) -> None:
        try:
            response = self.session.get(self.url, timeout=JWKS_TIMEOUT_SECONDS)
            response.raise_for_status()
            key_set = jwt.PyJWKSet.from_dict(response.json())
        except (requests.RequestException, ValueError, jwt.PyJWKSetError) as exc:
            raise JWKSUnavailable(f"Forge key set {self.url}: {type(exc).__name__}") from exc
        self._keys = {key.key_id: key for key in key_set.keys if key.key_id}
        self._fetched_at = now
        log.info("Forge key set fetched from %s: %d keys", self.url, len(self._keys))


class ForgeTokenVerifier:
    """Checks Forge Invocation Tokens for one app id against one key set."""

    def __init__(self, app_id: str, jwks: JWKSCache, *, leeway: float = LEEWAY_SECONDS):
        self.app_id = app_id
        self.jwks = jwks
        self.leeway = leeway

    def verify(self, token: str) -> dict[str, Any]:
        """Return the token's claims, or raise :class:`ForgeTokenError` saying what failed."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise ForgeTokenError(f"token is not a JWT: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise ForgeTokenError(f"token algorithm {header.get('alg')!r} is not RS256")
        kid = header.get("kid")
        if not kid:
            raise ForgeTokenError("token header has no key id (kid)")
        key = self.jwks.key(kid)
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self.app_id,
                issuer=FORGE_ISSUER,
                leeway=self.leeway,
                options={"require": ["exp", "nbf", "iat", "aud", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise ForgeTokenError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise ForgeTokenError("token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise ForgeTokenError("token audience is not this app's id") from None
        except jwt.InvalidIssuerError:
            raise ForgeTokenError(f"token issuer is not {FORGE_ISSUER}") from None
        except jwt.InvalidSignatureError:
            raise ForgeTokenError("token signature does not match the Forge key") from None
        except jwt.MissingRequiredClaimError as exc:
            raise ForgeTokenError(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidTokenError as exc:
            raise ForgeTokenError(f"token is invalid: {type(exc).__name__}") from None


def _verifier() -> ForgeTokenVerifier:
    """Return the app's verifier, built on first use from the settings."""
    settings = current_app.extensions["deskroute"].settings
    if not settings.forge_app_id:
        raise APIError(
            503,
            "forge_not_configured",
            "the Forge panel is not configured: set DESKROUTE_FORGE_APP_ID to the app id "
            "from manifest.yml (ari:cloud:ecosystem::app/...)",
        )
    verifier = current_app.extensions.get("deskroute.forge")
    if verifier is None or verifier.app_id != settings.forge_app_id:
        verifier = ForgeTokenVerifier(settings.forge_app_id, JWKSCache(settings.forge_jwks_url))
        current_app.extensions["deskroute.forge"] = verifier
    return verifier


def issue_from_claims(claims: dict[str, Any]) -> dict[str, str]:
    """Return ``{"id", "key"}`` of the issue the panel was opened on, from signed claims."""
    context = claims.get("context") or {}
    issue = (context.get("extension") or {}).get("issue") or {}
    key = issue.get("key")
    if not isinstance(key, str) or not key:
        raise APIError(
            400,
            "no_issue_context",
            "the Forge token's context.extension.issue has no key: "
            "call this route from the jira:issuePanel module",
        )
    return {"id": str(issue.get("id") or ""), "key": key}


def forge_token_required(view):
    """Reject the request with 401 unless it carries a valid Forge Invocation Token."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        verifier = _verifier()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401, "missing_token", "send Authorization: Bearer <Forge invocation token>"
            )
        try:
            claims = verifier.verify(token.strip())
        except ForgeTokenError as exc:
            log.warning("Forge token rejected on %s: %s", request.path, exc)
            raise APIError(401, "invalid_token", str(exc)) from None
        except JWKSUnavailable as exc:
            log.error("Forge token not checked on %s: %s", request.path, exc)
            raise APIError(503, "jwks_unavailable", str(exc)) from None
        g.forge_claims = claims
        g.forge_issue = issue_from_claims(claims)
        return view(*args, **kwargs)

    return wrapper


def _store():
    return current_app.extensions["deskroute"].store


def panel_view(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """Return what the panel shows of a decision row: suggestion, confidence, reasons, account."""
    if row is None:
        return None
    decision = row.get("decision") or {}
    return {
        "id": row["id"],
        "created_at": row["created_at"],
        "mode": row["mode"],
        "status": row["status"],
        "queue": row["queue"],
        "priority": row["priority"],
        "action": row["action"],
        "confidence": row["confidence"],
        "threshold": decision.get("threshold"),
        "alternatives": decision.get("alternatives") or [],
        "reasons": decision.get("reasons") or [],
        "tags": decision.get("tags") or [],
        "account": row.get("account"),
    }


@bp.get("/panel")
@forge_token_required
def panel():
    issue = g.forge_issue
    row = _store().latest_decision(HELPDESK, issue["key"])
    feedback = _store().feedback_for_ticket(HELPDESK, issue["key"]) if row else []
    # The queue names let the panel offer the other queues for an override.
    queues = sorted(current_app.extensions["deskroute"].policy.queues)
    return jsonify(
        {"issue": issue, "decision": panel_view(row), "feedback": feedback, "queues": queues}
    )


class PanelAction(Schema):
    class Meta:
        # Other keys, such as an issue key, are dropped: the issue comes from the token.
        unknown = EXCLUDE

    action = fields.String(required=True, validate=validate.OneOf(["accept", "override"]))
    # For an override: the queue and/or priority the analyst chose instead.
    queue = fields.String(allow_none=True, validate=validate.Length(min=1, max=200))
    priority = fields.String(
        allow_none=True, validate=validate.OneOf(["low", "normal", "high", "urgent"])
    )
    decision_id = fields.Integer(allow_none=True)

    @validates_schema
    def _override_needs_choice(self, data, **kwargs):
        if data["action"] == "override" and not (data.get("queue") or data.get("priority")):
            raise SchemaError("an override needs queue or priority", "queue")


@bp.post("/panel/feedback")
@forge_token_required
def panel_feedback():
    issue = g.forge_issue
    body = intake.validate(PanelAction(), request.get_json(silent=True) or {})
    store = _store()
    row = store.latest_decision(HELPDESK, issue["key"])
    if row is None:
        raise APIError(404, "not_found", f"no decision recorded for Jira issue {issue['key']}")
    if body.get("decision_id") is not None and body["decision_id"] != row["id"]:
        raise APIError(
            409,
            "stale_decision",
            f"decision {body['decision_id']} is not the latest for {issue['key']} "
            f"(latest is {row['id']}): reload the panel",
        )

    actor = g.forge_claims.get("principal")
    suggested = {"group": row["queue"], "priority": row["priority"]}
    chosen = {"group": body.get("queue"), "priority": body.get("priority")}
    recorded = []
    for field_name in ("group", "priority"):
        if body["action"] == "override" and not chosen[field_name]:
            continue
        verdict = "accept" if body["action"] == "accept" else "override"
        recorded.append(
            store.add_feedback(
                helpdesk=HELPDESK,
                ticket_id=issue["key"],
                decision=row["id"],
                verdict=verdict,
                field=field_name,
                suggested=suggested[field_name],
                chosen=suggested[field_name] if verdict == "accept" else chosen[field_name],
                actor=actor,
                source="forge_panel",
            )
        )
    log.info(
        "jira issue %s: %s of decision %s by %s from the Forge panel",
        issue["key"],
        body["action"],
        row["id"],
        actor,
    )
    return jsonify({"status": "recorded", "feedback": recorded}), 201
