"""``POST /webhooks/zendesk``: Zendesk's event-subscribed and trigger-connected webhooks.

Zendesk signs every webhook request: ``X-Zendesk-Webhook-Signature`` is
``base64(HMAC-SHA256(secret, timestamp + raw body))`` with the timestamp from
``X-Zendesk-Webhook-Signature-Timestamp``. The check runs on the raw bytes before any
parsing, and a timestamp outside the tolerance window is rejected, so a captured request
cannot be replayed later.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, request
from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

from plugin import intake
from plugin.errors import APIError
from plugin.tickets import TICKET_CREATED, TICKET_UPDATED, Party, Ticket, TicketEvent

log = logging.getLogger(__name__)

bp = Blueprint("zendesk_webhook", __name__)

HELPDESK = "zendesk"
EVENT_PREFIX = "zen:event-type:"

# Event-subscribed ticket events that become work or feedback. Zendesk names the field
# that changed in the event type; the canonical change record uses deskroute's field name.
UPDATE_EVENTS = {
    "ticket.group_assignment_changed": "group",
    "ticket.priority_changed": "priority",
    "ticket.tags_changed": "tags",
    "ticket.status_changed": "status",
    "ticket.agent_assignment_changed": "assignee",
}
# Ticket events deskroute receives when an admin subscribes to all of them, and skips.
IGNORED_EVENTS = {
    "ticket.comment_added",
    "ticket.comment_made_private",
    "ticket.comment_redacted",
    "ticket.attachment_linked_to_comment",
    "ticket.attachment_redacted_from_comment",
    "ticket.brand_changed",
    "ticket.custom_field_changed",
    "ticket.description_changed",
    "ticket.email_ccs_changed",
    "ticket.external_id_changed",
    "ticket.followers_changed",
    "ticket.form_changed",
    "ticket.marked_as_spam",
    "ticket.merged",
    "ticket.organization_changed",
    "ticket.problem_link_changed",
    "ticket.requester_changed",
    "ticket.subject_changed",
    "ticket.submitter_changed",
    "ticket.soft_deleted",
    "ticket.permanently_deleted",
    "ticket.undeleted",
    "ticket.type_changed",
    "ticket.task_due_at_changed",
    "ticket.custom_status_changed",
    "ticket.sla_policy_changed",
    "ticket.ola_policy_changed",
    "ticket.schedule_changed",
    "ticket.priority_changed_by_sla",
}


def _id_field(**kwargs):
    # Zendesk event payloads carry ids as strings, API payloads and trigger placeholders
    # as numbers or strings: both are accepted and kept as strings.
    return IdField(**kwargs)


def _ticket_id_field(**kwargs):
    return IdField(metadata={"numeric": True}, **kwargs)


class IdField(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValidationError("must be an id (string or integer)")
        if self.metadata.get("numeric"):
            # Zendesk ids are integers: "05001" and 5001 are one ticket, and digits of other
            # scripts, which int() would accept, are not ids.
            text = str(value).strip()
            if not text.isascii() or not text.isdigit() or len(text) > 20:
                raise ValidationError("must be a Zendesk id: digits 0-9")
            return str(int(text))
        text = str(value).strip()
        if not text:
            raise ValidationError("must not be empty")
        if len(text) > 64:
            raise ValidationError("is longer than 64 characters")
        if not text.isprintable():
            raise ValidationError("must not contain control characters")
        return text


class TagsField(fields.Field):
    """Tags as a list, or as the space-separated string ``{{ticket.tags}}`` renders to."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value is None:
            return []
        if isinstance(value, str):
            return value.split()
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        raise ValidationError("must be a list of strings or a space-separated string")


class ViaSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    channel = fields.String(allow_none=True)


class TicketDetailSchema(Schema):
    """The ticket snapshot in the ``detail`` of a ``zen:event-type:ticket.*`` event."""

    class Meta:
        unknown = EXCLUDE

    id = _ticket_id_field(required=True)
    actor_id = _id_field(allow_none=True)
    subject = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    requester_id = _id_field(allow_none=True)
    organization_id = _id_field(allow_none=True)
    group_id = _id_field(allow_none=True)
    priority = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    tags = TagsField(allow_none=True)
    via = fields.Nested(ViaSchema, allow_none=True)
    updated_at = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)


class EventWebhookSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True)
    id = fields.String(
        required=True,
        validate=[
            validate.Length(max=200),
            validate.Predicate("strip", error="must not be empty"),
        ],
    )
    account_id = fields.Integer(allow_none=True)
    subject = fields.String(allow_none=True)
    time = fields.String(allow_none=True)
    zendesk_event_version = fields.String(allow_none=True)
    detail = fields.Nested(TicketDetailSchema, required=True)
    event = fields.Raw(allow_none=True)


class TriggerTicketSchema(Schema):
    """The ticket in a trigger-connected body; only ``id`` is required.

    README shows the body template with Zendesk placeholders. With API credentials the
    full ticket is read through the API anyway; the optional fields let shadow mode
    classify without credentials.
    """

    class Meta:
        unknown = EXCLUDE

    id = _ticket_id_field(required=True)
    subject = fields.String(allow_none=True)
    title = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    requester_id = _id_field(allow_none=True)
    requester_email = fields.String(allow_none=True)
    requester_name = fields.String(allow_none=True)
    organization_id = _id_field(allow_none=True)
    organization_name = fields.String(allow_none=True)
    organization_external_id = fields.String(allow_none=True)
    group_id = _id_field(allow_none=True)
    priority = fields.String(allow_none=True)
    status = fields.String(allow_none=True)
    tags = TagsField(allow_none=True)
    via = fields.String(allow_none=True)
    channel = fields.String(allow_none=True)
    locale = fields.String(allow_none=True)
    updated_at = fields.String(allow_none=True)


class TriggerWebhookSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    ticket = fields.Nested(TriggerTicketSchema, allow_none=True)
    ticket_id = _ticket_id_field(allow_none=True)
    # "created" (the default) or "updated", as the admin writes it in the trigger body.
    event = fields.String(allow_none=True)
    current_user_id = _id_field(allow_none=True)

    @validates_schema
    def _needs_ticket(self, data, **kwargs):
        if not data.get("ticket") and not data.get("ticket_id"):
            raise ValidationError("a ticket id is required", "ticket.id")


event_schema = EventWebhookSchema()
trigger_schema = TriggerWebhookSchema()


def verify_signature(body: bytes) -> None:
    """Raise 401 unless the request carries a valid, fresh Zendesk signature."""
    settings = intake.state().settings
    secret = settings.zendesk_webhook_secret
    if not secret:
        raise APIError(
            401,
            "signature_not_configured",
            "no Zendesk webhook signing secret is configured: set "
            "DESKROUTE_ZENDESK_WEBHOOK_SECRET to the secret Zendesk shows for the webhook",
        )

    signature = request.headers.get("X-Zendesk-Webhook-Signature")
    timestamp = request.headers.get("X-Zendesk-Webhook-Signature-Timestamp")
    if not signature or not timestamp:
        raise APIError(
            401,
            "missing_signature",
            "missing X-Zendesk-Webhook-Signature or X-Zendesk-Webhook-Signature-Timestamp",
        )

    expected = sign(secret.get(), timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise APIError(401, "invalid_signature", "X-Zendesk-Webhook-Signature does not match")

    # The timestamp is parsed after the signature check, so only signed requests reach it.
    sent_at = _parse_timestamp(timestamp)
    if sent_at is None:
        raise APIError(
            401,
            "invalid_timestamp",
            f"X-Zendesk-Webhook-Signature-Timestamp {timestamp!r} is not an ISO 8601 time",
        )
    skew = abs(datetime.now(UTC).timestamp() - sent_at.timestamp())
    if skew > settings.signature_tolerance_seconds:
        raise APIError(
            401,
            "stale_signature",
            f"signature timestamp {timestamp} is {int(skew)} s from now, "
            f"beyond the {settings.signature_tolerance_seconds} s window",
        )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Compute the signature Zendesk sends for ``body`` signed at ``timestamp``."""
    digest = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _parse_timestamp(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


@bp.post("")
def receive():
    body = intake.read_body()
    verify_signature(body)
    payload = intake.parse_json(body)
    invocation_id = request.headers.get("X-Zendesk-Webhook-Invocation-Id")

    if isinstance(payload.get("type"), str) and payload["type"].startswith("zen:"):
        return _receive_event(payload, invocation_id)
    return _receive_trigger(payload, invocation_id, body)


def _receive_event(payload: dict[str, Any], invocation_id: str | None):
    event_type = payload["type"]
    name = event_type.removeprefix(EVENT_PREFIX)
    if not name.startswith("ticket."):
        return intake.ignore(HELPDESK, invocation_id, event_type, "not a ticket event")
    if name in IGNORED_EVENTS:
        return intake.ignore(HELPDESK, invocation_id, event_type, "event not used")
    if name != "ticket.created" and name not in UPDATE_EVENTS:
        return intake.ignore(HELPDESK, invocation_id, event_type, "unknown ticket event")

    data = intake.validate(event_schema, payload)
    detail = data["detail"]
    # The event id stays the same when Zendesk retries, and also when two webhooks carry
    # the same event, which have two invocation ids: the event id is the delivery id.
    delivery_id = intake.check_delivery_id(data["id"], "the event id")
    changes = []
    if name in UPDATE_EVENTS:
        changes.append(_change(UPDATE_EVENTS[name], payload.get("event")))

    event = TicketEvent(
        helpdesk=HELPDESK,
        delivery_id=delivery_id,
        kind=TICKET_CREATED if name == "ticket.created" else TICKET_UPDATED,
        ticket_id=detail["id"],
        source_type=event_type,
        actor_id=detail.get("actor_id"),
        ticket=_ticket_from_detail(detail),
        changes=changes,
        occurred_at=data.get("time"),
    )
    return _accept_unless_own(event)


def _change(field: str, event: Any) -> dict[str, Any]:
    event = event if isinstance(event, dict) else {}
    if field == "tags":
        # Tag events list what was added and removed instead of a previous and current value.
        return {
            "field": "tags",
            "previous": None,
            "current": None,
            "added": _tag_list(event.get("tags_added"), "event.tags_added"),
            "removed": _tag_list(event.get("tags_removed"), "event.tags_removed"),
        }
    return {
        "field": field,
        "previous": _change_value(event.get("previous")),
        "current": _change_value(event.get("current")),
    }


def _tag_list(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise APIError(
            400, "invalid_payload", f"invalid field {field}: must be a list of tags", field=field
        )
    return value


def _change_value(value: Any) -> str | None:
    """Return a changed field's value as a string; anything but an id or a word is None."""
    # Group and agent changes may carry objects such as {"id": "123", "name": ...}.
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    text = str(value)
    if len(text) > 200 or not text.isprintable():
        return None
    return text.lower() if text.isupper() else text


def _ticket_from_detail(detail: dict[str, Any]) -> Ticket:
    via = detail.get("via") or {}
    return Ticket(
        helpdesk=HELPDESK,
        id=detail["id"],
        subject=detail.get("subject") or "",
        description=detail.get("description") or "",
        requester=Party(id=detail.get("requester_id")),
        organization=Party(id=detail.get("organization_id")),
        tags=detail.get("tags") or [],
        channel=via.get("channel"),
        status=(detail.get("status") or "").lower() or None,
        priority=(detail.get("priority") or "").lower() or None,
        group=detail.get("group_id"),
        updated_stamp=detail.get("updated_at"),
        complete=bool(detail.get("subject") or detail.get("description")),
    )


def _receive_trigger(payload: dict[str, Any], invocation_id: str | None, body: bytes):
    data = intake.validate(trigger_schema, payload)
    ticket_data = data.get("ticket") or {"id": data["ticket_id"]}
    # A trigger body has no event id of its own. Without the invocation header the body's
    # digest identifies it, so an identical retried body is still recognised.
    delivery_id = invocation_id or "sha256:" + hashlib.sha256(body).hexdigest()
    if data.get("event") not in (None, "", "created", "updated"):
        return intake.ignore(
            HELPDESK,
            delivery_id,
            f"trigger {data['event']!r}",
            "a trigger body's event must be 'created' or 'updated'",
        )
    email = ticket_data.get("requester_email")
    ticket = Ticket(
        helpdesk=HELPDESK,
        id=ticket_data["id"],
        subject=ticket_data.get("subject") or ticket_data.get("title") or "",
        description=_strip_comment_header(ticket_data.get("description") or ""),
        requester=Party(
            id=ticket_data.get("requester_id"),
            name=ticket_data.get("requester_name"),
            email=email,
            domain=email.rpartition("@")[2].lower() if email and "@" in email else None,
        ),
        organization=Party(
            id=ticket_data.get("organization_id"),
            name=ticket_data.get("organization_name"),
            external_id=ticket_data.get("organization_external_id"),
        ),
        tags=ticket_data.get("tags") or [],
        channel=ticket_data.get("channel") or ticket_data.get("via"),
        language=ticket_data.get("locale"),
        # Placeholders render display names ("Normal", "New"); the API uses lower case.
        status=(ticket_data.get("status") or "").lower() or None,
        priority=(ticket_data.get("priority") or "").lower() or None,
        group=ticket_data.get("group_id"),
        updated_stamp=ticket_data.get("updated_at"),
    )
    ticket.complete = bool(ticket.subject or ticket.description)
    kind = TICKET_UPDATED if data.get("event") == "updated" else TICKET_CREATED
    event = TicketEvent(
        helpdesk=HELPDESK,
        delivery_id=delivery_id,
        kind=kind,
        ticket_id=ticket.id,
        source_type="trigger",
        actor_id=data.get("current_user_id"),
        ticket=ticket,
    )
    return _accept_unless_own(event)


def _strip_comment_header(text: str) -> str:
    """Drop the dashes line and the "author, date" line ``{{ticket.description}}`` starts with.

    Line by line rather than with one regular expression: nested quantifiers over blank
    lines took exponential time on a body of dashes and newlines.
    """
    lines = text.lstrip().split("\n")
    if not lines or len(lines[0].strip()) < 10 or set(lines[0].strip()) != {"-"}:
        return text.strip()
    start = 1
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start < len(lines) and "," in lines[start]:
        start += 1
    return "\n".join(lines[start:]).strip()


def _accept_unless_own(event: TicketEvent):
    """Skip what deskroute's own write-back caused; accept everything else."""
    app_state = intake.state()
    own_user = app_state.own_user_id(HELPDESK)
    if own_user and event.actor_id == own_user:
        return intake.ignore(
            HELPDESK, event.delivery_id, event.source_type, "change made by deskroute's API user"
        )
    own_tag = app_state.settings.own_tag
    if (
        event.kind == TICKET_UPDATED
        and event.source_type == "trigger"
        and event.ticket
        and own_tag in event.ticket.tags
        and not event.actor_id
    ):
        # A trigger that fires on updates finds deskroute's tag after its own write-back.
        # Without an actor in the body, that update cannot be distinguished from a human one.
        return intake.ignore(
            HELPDESK, event.delivery_id, "trigger", f"ticket already carries tag {own_tag}"
        )
    return intake.accept(event)
