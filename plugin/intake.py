"""Helpers shared by every help desk's webhook blueprint: body limits, validation, accept.

A blueprint verifies its own signature, validates with its own schema and maps the
payload to a :class:`plugin.tickets.TicketEvent`. :func:`accept` then stores it and
returns the response. Nothing slow happens before the response: the pipeline runs later,
from the store.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import current_app, jsonify, request
from marshmallow import Schema, ValidationError

from plugin.errors import APIError
from plugin.tickets import TicketEvent

log = logging.getLogger(__name__)
unsupported_log = logging.getLogger("deskroute.unsupported")


def state():
    return current_app.extensions["deskroute"]


def read_body() -> bytes:
    """Return the raw request body, or raise 413 when it is larger than the configured limit."""
    limit = state().settings.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        raise APIError(413, "body_too_large", f"request body of {length} bytes exceeds {limit}")
    # Reading one byte past the limit catches chunked bodies that carry no Content-Length.
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise APIError(413, "body_too_large", f"request body exceeds {limit} bytes")
    return body


def _reject_constant(name: str):
    # Python's json accepts NaN and Infinity, which JSON (RFC 8259) does not have. Stored in
    # a delivery, they would make its JSON unreadable to other tools.
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise APIError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise APIError(400, "invalid_json", "request body is nested too deeply") from None
    except ValueError as exc:
        # Python rejects integers of more than 4,300 digits with a plain ValueError.
        raise APIError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise APIError(400, "invalid_payload", "request body must be a JSON object")
    return payload


def validate(schema: Schema, payload: dict[str, Any]) -> dict[str, Any]:
    """Load ``payload`` with ``schema``; a 400 names the first invalid field and why."""
    try:
        return schema.load(payload)
    except ValidationError as exc:
        field, reason = _first_error(exc.messages)
        raise APIError(
            400, "invalid_payload", f"invalid field {field}: {reason}", field=field
        ) from None


def _first_error(messages: Any, prefix: str = "") -> tuple[str, str]:
    if isinstance(messages, dict):
        key = sorted(messages, key=str)[0]
        if key == "_schema":
            # marshmallow files errors of a whole nested object, such as "not an object",
            # under _schema; the field is then the object itself.
            return _first_error(messages[key], prefix or "body")
        name = f"{prefix}.{key}" if prefix else str(key)
        return _first_error(messages[key], name)
    if isinstance(messages, list) and messages:
        first = messages[0]
        if isinstance(first, str):
            return prefix, first
        return _first_error(first, prefix)
    return prefix or "body", str(messages)


# Maximum length of a stored delivery id, in characters (the column is 200 wide).
MAX_DELIVERY_ID = 200


def check_delivery_id(delivery_id: str, source: str) -> str:
    """Return ``delivery_id``, or raise 400 when it cannot be stored as a key."""
    if len(delivery_id) > MAX_DELIVERY_ID or not delivery_id.isprintable():
        raise APIError(
            400,
            "invalid_delivery_id",
            f"{source} must be at most {MAX_DELIVERY_ID} printable characters",
        )
    return delivery_id


def ignore(helpdesk: str, delivery_id: str | None, event_type: str, reason: str):
    """Return 200 for a delivery deskroute skips on purpose, so the sender does not retry."""
    unsupported_log.info(
        "ignored %s delivery %s: event %s, %s", helpdesk, delivery_id, event_type, reason
    )
    return jsonify({"status": "ignored", "event_type": event_type, "reason": reason}), 200


def accept(event: TicketEvent):
    """Store the event durably, wake the worker and return 202 (200 for a known delivery)."""
    app_state = state()
    check_delivery_id(event.delivery_id, "the delivery id")
    row_id, created = app_state.store.add_delivery(event.to_dict())
    if not created:
        log.info(
            "duplicate %s delivery %s for ticket %s, already stored as %s",
            event.helpdesk,
            event.delivery_id,
            event.ticket_id,
            row_id,
        )
        return jsonify({"status": "duplicate", "delivery": row_id}), 200
    log.info(
        "accepted %s delivery %s: %s for ticket %s",
        event.helpdesk,
        event.delivery_id,
        event.kind,
        event.ticket_id,
    )
    app_state.notify_worker()
    return jsonify({"status": "accepted", "delivery": row_id}), 202
