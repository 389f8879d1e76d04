"""``POST /webhooks/jira``: Jira admin webhooks and JSM automation "Send web request" calls.

Two senders, two proofs of origin, both checked on the raw body before parsing:

- Admin webhooks registered with a secret carry ``X-Hub-Signature: sha256=<hex>``, the
  HMAC-SHA256 of the raw body keyed with that secret (``DESKROUTE_JIRA_WEBHOOK_SECRET``).
- Automation rules cannot sign, so they send a shared secret in a header
  (``DESKROUTE_JIRA_AUTOMATION_HEADER``, default ``X-Deskroute-Secret``, which contains
  ``DESKROUTE_JIRA_AUTOMATION_SECRET``). The header only proves that the sender has the
  secret, so it belongs on HTTPS only.

Both comparisons run in constant time. ``X-Atlassian-Webhook-Identifier`` stays the same
when Jira retries a delivery, so it is the delivery id. An automation call has no such
header, and the body's SHA-256 is used instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, request
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from connectors.jira import JiraOptions, deskroute_priority, routing_fields, ticket_from_issue
from plugin import intake
from plugin.errors import APIError
from plugin.tickets import TICKET_CREATED, TICKET_UPDATED, TicketEvent

log = logging.getLogger(__name__)

bp = Blueprint("jira_webhook", __name__)

HELPDESK = "jira"
SIGNATURE_HEADER = "X-Hub-Signature"
DELIVERY_HEADER = "X-Atlassian-Webhook-Identifier"

ISSUE_EVENTS = {"jira:issue_created": TICKET_CREATED, "jira:issue_updated": TICKET_UPDATED}
# Events an admin may tick when creating the webhook, which deskroute skips on purpose.
IGNORED_EVENTS = {
    "jira:issue_deleted",
    "comment_created",
    "comment_updated",
    "comment_deleted",
    "attachment_created",
    "attachment_deleted",
    "issuelink_created",
    "issuelink_deleted",
    "worklog_created",
    "worklog_updated",
    "worklog_deleted",
    "issue_property_set",
    "issue_property_deleted",
    "jira:version_released",
    "project_created",
    "project_updated",
    "user_created",
    "user_updated",
    "sprint_started",
    "sprint_closed",
}
# Changelog fields that become canonical changes, by Jira field id. The fields the policy
# routes by (request type, team, select fields) become "group".
CHANGE_FIELDS = {
    "priority": "priority",
    "labels": "tags",
    "status": "status",
    "assignee": "assignee",
}

# \Z, not $: a $ would also match before a trailing newline.
_ISSUE_KEY = re.compile(r"\A[A-Z][A-Z0-9_]*-[0-9]+\Z")


class IdField(fields.Field):
    """An id Jira sends as a string and automation bodies may render as a number."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationError("must be an id (string or integer)")
        text = str(value).strip()
        if not text or len(text) > 64:
            raise ValidationError("must be 1 to 64 characters")
        if not text.isprintable():
            raise ValidationError("must not contain control characters")
        return text


class DescriptionField(fields.Field):
    """Wiki markup (a string, REST v2) or Atlassian Document Format (an object)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and value.get("type") == "doc":
            return value
        raise ValidationError("must be wiki markup text or an ADF document")


class NamedSchema(Schema):
    class Meta:
        unknown = INCLUDE

    name = fields.String(allow_none=True)
    key = fields.String(allow_none=True)


class UserSchema(Schema):
    class Meta:
        unknown = INCLUDE

    accountId = fields.String(allow_none=True)  # noqa: N815 - Jira's field name
    displayName = fields.String(allow_none=True)  # noqa: N815
    emailAddress = fields.String(allow_none=True)  # noqa: N815


class IssueFieldsSchema(Schema):
    class Meta:
        # Custom fields (request type, organizations) pass through to the ticket mapping.
        unknown = INCLUDE

    summary = fields.String(allow_none=True)
    description = DescriptionField(allow_none=True)
    labels = fields.List(fields.String(), allow_none=True)
    priority = fields.Nested(NamedSchema, allow_none=True)
    status = fields.Nested(NamedSchema, allow_none=True)
    issuetype = fields.Nested(NamedSchema, allow_none=True)
    project = fields.Nested(NamedSchema, allow_none=True)
    reporter = fields.Nested(UserSchema, allow_none=True)
    updated = fields.String(allow_none=True)


class IssueSchema(Schema):
    class Meta:
        unknown = INCLUDE

    id = IdField(required=True)
    key = fields.String(
        required=True, validate=validate.Regexp(_ISSUE_KEY, error="must be an issue key")
    )
    issue_fields = fields.Nested(IssueFieldsSchema, required=True, data_key="fields")


class ChangeItemSchema(Schema):
    class Meta:
        unknown = INCLUDE

    field = fields.String(required=True)
    fieldId = fields.String(allow_none=True)  # noqa: N815
    fieldtype = fields.String(allow_none=True)
    from_ = fields.String(allow_none=True, data_key="from")
    fromString = fields.String(allow_none=True)  # noqa: N815
    to = fields.String(allow_none=True)
    toString = fields.String(allow_none=True)  # noqa: N815


class ChangelogSchema(Schema):
    class Meta:
        unknown = INCLUDE

    id = IdField(allow_none=True)
    items = fields.List(fields.Nested(ChangeItemSchema), required=True)


class IssueEventSchema(Schema):
    class Meta:
        unknown = INCLUDE

    webhookEvent = fields.String(required=True)  # noqa: N815
    # Milliseconds since the epoch; the range keeps the value a valid date.
    timestamp = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=253402300799999))
    issue_event_type_name = fields.String(allow_none=True)
    user = fields.Nested(UserSchema, allow_none=True)
    issue = fields.Nested(IssueSchema, required=True)
    changelog = fields.Nested(ChangelogSchema, allow_none=True)


issue_event_schema = IssueEventSchema()


def verify_request(body: bytes) -> str:
    """Raise 401 unless the request is signed or carries the automation secret.

    Return ``"webhook"`` or ``"automation"``, the kind of sender that was proven.
    """
    settings = intake.state().settings
    signature = request.headers.get(SIGNATURE_HEADER)
    if signature is not None:
        _check_signature(settings.jira_webhook_secret, signature, body)
        return "webhook"

    presented = request.headers.get(settings.jira_automation_header)
    if presented is not None:
        secret = settings.jira_automation_secret
        if not secret:
            raise APIError(
                401,
                "secret_not_configured",
                f"{settings.jira_automation_header} was sent but no automation secret is "
                "configured: set DESKROUTE_JIRA_AUTOMATION_SECRET",
            )
        if not hmac.compare_digest(presented.strip().encode(), secret.get().encode()):
            raise APIError(
                401, "invalid_secret", f"{settings.jira_automation_header} does not match"
            )
        return "automation"

    raise APIError(
        401,
        "missing_signature",
        f"missing {SIGNATURE_HEADER} (an admin webhook registered with a secret) or "
        f"{settings.jira_automation_header} (an automation rule's shared secret)",
    )


def _check_signature(secret, signature: str, body: bytes) -> None:
    if not secret:
        raise APIError(
            401,
            "signature_not_configured",
            "no Jira webhook secret is configured: set DESKROUTE_JIRA_WEBHOOK_SECRET to "
            "the secret the admin webhook was registered with",
        )
    method, _, digest = signature.strip().partition("=")
    if method != "sha256" or not digest:
        raise APIError(401, "invalid_signature", f"{SIGNATURE_HEADER} must be sha256=<hex>")
    expected = sign(secret.get(), body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise APIError(401, "invalid_signature", f"{SIGNATURE_HEADER} does not match")


def sign(secret: str, body: bytes) -> str:
    """Compute the ``X-Hub-Signature`` value Jira sends for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@bp.post("")
def receive():
    body = intake.read_body()
    sender = verify_request(body)
    payload = intake.parse_json(body)
    delivery_id = request.headers.get(DELIVERY_HEADER) or (
        "sha256:" + hashlib.sha256(body).hexdigest()
    )

    event_type = payload.get("webhookEvent")
    if not isinstance(event_type, str) or not event_type:
        raise APIError(
            400,
            "invalid_payload",
            "invalid field webhookEvent: missing or not a string",
            field="webhookEvent",
        )
    if event_type in IGNORED_EVENTS:
        return intake.ignore(HELPDESK, delivery_id, event_type, "event not used")
    if event_type not in ISSUE_EVENTS:
        return intake.ignore(HELPDESK, delivery_id, event_type, "unknown event")

    data = intake.validate(issue_event_schema, payload)
    return _receive_issue_event(payload, data, delivery_id, sender)


def _options() -> JiraOptions:
    app_state = intake.state()
    connector = app_state.connectors.get(HELPDESK)
    if connector is not None and hasattr(connector, "options"):
        return connector.options
    return JiraOptions.from_table(app_state.policy.helpdesk_options.get(HELPDESK))


def _receive_issue_event(
    payload: dict[str, Any], data: dict[str, Any], delivery_id: str, sender: str
):
    event_type = data["webhookEvent"]
    kind = ISSUE_EVENTS[event_type]
    options = _options()
    actor = (data.get("user") or {}).get("accountId")

    changes: list[dict[str, Any]] = []
    if kind == TICKET_UPDATED:
        changes = _changes((data.get("changelog") or {}).get("items") or [], options)
        if not changes:
            return intake.ignore(
                HELPDESK, delivery_id, event_type, "no change to a field deskroute follows"
            )

    # The mapping reads the issue as Jira sent it, custom fields included.
    try:
        ticket = ticket_from_issue(payload["issue"], options)
    except (AttributeError, TypeError, ValueError) as exc:
        # The schema checks the fields deskroute needs; a field of another shape than
        # Jira's (a list where Jira sends an object, say) surfaces here.
        log.info("jira delivery %s: unreadable issue fields: %r", delivery_id, exc)
        raise APIError(
            400,
            "invalid_payload",
            "invalid field issue.fields: a field does not have the shape Jira sends",
            field="issue.fields",
        ) from None
    event = TicketEvent(
        helpdesk=HELPDESK,
        delivery_id=delivery_id,
        kind=kind,
        ticket_id=ticket.id,
        source_type=event_type if sender == "webhook" else f"automation:{event_type}",
        actor_id=actor,
        ticket=ticket,
        changes=changes,
        occurred_at=_occurred_at(data.get("timestamp")),
    )
    return _accept_unless_own(event)


def _changes(items: list[dict[str, Any]], options: JiraOptions) -> list[dict[str, Any]]:
    policy = intake.state().policy
    groups = [queue.targets.get(HELPDESK) for queue in policy.queues.values()]
    routed = routing_fields([group for group in groups if group], options)
    changes = []
    for item in items:
        field_id = item.get("fieldId") or item["field"]
        if field_id in CHANGE_FIELDS:
            name = CHANGE_FIELDS[field_id]
            changes.append(_change(name, item, options))
        elif field_id in routed:
            by_id = routed[field_id] == "id"
            changes.append(
                {
                    "field": "group",
                    "previous": item.get("from_") if by_id else item.get("fromString"),
                    "current": item.get("to") if by_id else item.get("toString"),
                    "jira_field": field_id,
                }
            )
    return changes


def _change(name: str, item: dict[str, Any], options: JiraOptions) -> dict[str, Any]:
    previous, current = item.get("fromString"), item.get("toString")
    if name == "tags":
        previous, current = (previous or "").split(), (current or "").split()
    elif name == "priority":
        previous, current = (
            deskroute_priority(previous, options),
            deskroute_priority(current, options),
        )
    elif name == "assignee":
        # The account ids, which stay the same when a person changes their display name.
        previous, current = item.get("from_"), item.get("to")
    return {"field": name, "previous": previous, "current": current}


def _occurred_at(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp / 1000, UTC).isoformat().replace("+00:00", "Z")


def _accept_unless_own(event: TicketEvent):
    """Skip what deskroute's own write-back caused; accept everything else."""
    own_user = intake.state().own_user_id(HELPDESK)
    if own_user and event.actor_id == own_user:
        return intake.ignore(
            HELPDESK, event.delivery_id, event.source_type, "change made by deskroute's account"
        )
    return intake.accept(event)
