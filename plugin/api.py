"""The decisions API: read by the side panels and reports, and where analysts give feedback.

Every route needs ``Authorization: Bearer <DESKROUTE_API_TOKEN>``.
"""

from __future__ import annotations

import functools
import hmac
import logging

from flask import Blueprint, current_app, jsonify, request
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from plugin import intake
from plugin.errors import APIError
from plugin.policy import PRIORITIES
from plugin.store import DELIVERY_STATUSES

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

# Largest id the routes accept: ids are 32-bit integer columns on PostgreSQL.
MAX_ID = 2**31 - 1


def require_token(view):
    """Reject the request with 401 unless it carries the configured bearer token."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        token = current_app.extensions["deskroute"].settings.api_token
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            raise APIError(401, "missing_token", "send Authorization: Bearer <api token>")
        if not token or not hmac.compare_digest(presented.strip().encode(), token.get().encode()):
            raise APIError(401, "invalid_token", "the bearer token is not valid")
        return view(*args, **kwargs)

    return wrapper


def _decision_view(row: dict) -> dict:
    return {
        "id": row["id"],
        "helpdesk": row["helpdesk"],
        "ticket_id": row["ticket_id"],
        "delivery_id": row["delivery_id"],
        "created_at": row["created_at"],
        "mode": row["mode"],
        "model_version": row["model_version"],
        "queue": row["queue"],
        "priority": row["priority"],
        "action": row["action"],
        "confidence": row["confidence"],
        "status": row["status"],
        "decision": row["decision"],
        "prediction": row["prediction"],
        "account": row["account"],
        "writeback_request": row["writeback_request"],
        "writeback_result": row["writeback_result"],
        "timings": row["timings"],
    }


class DecisionQuery(Schema):
    helpdesk = fields.String(required=True, validate=validate.OneOf(["zendesk", "jira"]))
    ticket_id = fields.String(validate=validate.Length(min=1, max=64))
    # Without a ticket id: the decisions after this decision id, for reports and exports.
    after = fields.Integer(validate=validate.Range(min=0))
    limit = fields.Integer(load_default=500, validate=validate.Range(min=1, max=5000))

    @validates_schema
    def _ticket_or_after(self, data, **kwargs):
        if "ticket_id" not in data and "after" not in data:
            raise ValidationError("either ticket_id or after is required", "ticket_id")


@bp.get("/decisions")
@require_token
def list_decisions():
    query = intake.validate(DecisionQuery(), request.args.to_dict())
    store = current_app.extensions["deskroute"].store
    helpdesk = query["helpdesk"]
    if "ticket_id" not in query:
        rows = store.decisions_after(helpdesk, query["after"], query["limit"])
        return jsonify(
            {
                "helpdesk": helpdesk,
                "after": query["after"],
                "decisions": [_decision_view(row) for row in rows],
                "next": rows[-1]["id"] if rows else query["after"],
                "last": store.last_decision_id(helpdesk),
            }
        )
    rows = store.decisions_for_ticket(helpdesk, query["ticket_id"])
    return jsonify(
        {
            "helpdesk": helpdesk,
            "ticket_id": query["ticket_id"],
            "decisions": [_decision_view(row) for row in rows],
            "feedback": store.feedback_for_ticket(helpdesk, query["ticket_id"]),
        }
    )


@bp.get(f"/decisions/<int(max={MAX_ID}):decision_id>")
@require_token
def show_decision(decision_id: int):
    row = current_app.extensions["deskroute"].store.get_decision(decision_id)
    if row is None:
        raise APIError(404, "not_found", f"decision {decision_id} not found")
    return jsonify(_decision_view(row))


class FeedbackBody(Schema):
    verdict = fields.String(required=True, validate=validate.OneOf(["accept", "override"]))
    field = fields.String(load_default="group", validate=validate.OneOf(["group", "priority"]))
    chosen = fields.String(allow_none=True, validate=validate.Length(max=200))
    actor = fields.String(allow_none=True, validate=validate.Length(max=200))


@bp.post(f"/decisions/<int(max={MAX_ID}):decision_id>/feedback")
@require_token
def add_feedback(decision_id: int):
    store = current_app.extensions["deskroute"].store
    row = store.get_decision(decision_id)
    if row is None:
        raise APIError(404, "not_found", f"decision {decision_id} not found")
    body = intake.validate(FeedbackBody(), intake.parse_json(intake.read_body()))
    if (
        body["field"] == "priority"
        and body["verdict"] == "override"
        and body.get("chosen") not in PRIORITIES
    ):
        raise APIError(
            400,
            "invalid_payload",
            f"invalid field chosen: a priority is one of {', '.join(PRIORITIES)}",
            field="chosen",
        )
    suggested = row["priority"] if body["field"] == "priority" else row["decision"].get("target")
    if body["verdict"] == "override" and not body.get("chosen"):
        raise APIError(
            400, "invalid_payload", "invalid field chosen: required for an override", field="chosen"
        )
    feedback_id = store.add_feedback(
        helpdesk=row["helpdesk"],
        ticket_id=row["ticket_id"],
        decision=decision_id,
        verdict=body["verdict"],
        field=body["field"],
        suggested=suggested,
        chosen=body.get("chosen") if body["verdict"] == "override" else suggested,
        actor=body.get("actor"),
        source="api",
    )
    log.info(
        "%s ticket %s: %s of decision %s recorded",
        row["helpdesk"],
        row["ticket_id"],
        body["verdict"],
        decision_id,
    )
    return jsonify({"status": "recorded", "feedback": feedback_id}), 201


@bp.get("/deliveries")
@require_token
def list_deliveries():
    query = intake.validate(DeliveryQuery(), request.args.to_dict())
    store = current_app.extensions["deskroute"].store
    rows = store.list_deliveries(query.get("status"), query["limit"], query.get("before"))
    return jsonify({"counts": store.delivery_counts(), "deliveries": rows})


class DeliveryQuery(Schema):
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    # The id of the last delivery of the previous page: newer ones are left out.
    before = fields.Integer(validate=validate.Range(min=1, max=MAX_ID))


@bp.get(f"/deliveries/<int(max={MAX_ID}):row_id>")
@require_token
def show_delivery(row_id: int):
    store = current_app.extensions["deskroute"].store
    delivery = store.get_delivery(row_id)
    if delivery is None:
        raise APIError(404, "not_found", f"delivery {row_id} not found")
    return jsonify(
        {
            "id": delivery.id,
            "helpdesk": delivery.helpdesk,
            "delivery_id": delivery.delivery_id,
            "ticket_id": delivery.ticket_id,
            "status": delivery.status,
            "attempts": delivery.attempts,
            "last_error": delivery.last_error,
            "failures": store.failures(row_id),
        }
    )


@bp.post(f"/deliveries/<int(max={MAX_ID}):row_id>/retry")
@require_token
def retry_delivery(row_id: int):
    state = current_app.extensions["deskroute"]
    if not state.store.requeue_delivery(row_id):
        if state.store.get_delivery(row_id) is None:
            raise APIError(404, "not_found", f"delivery {row_id} not found")
        raise APIError(409, "not_failed", f"delivery {row_id} is not in the failed state")
    state.notify_worker()
    return jsonify({"status": "queued", "delivery": row_id}), 202


# A worker that has not recorded a heartbeat for this long is reported as not running.
WORKER_SILENCE_SECONDS = 30


def _worker_health(state) -> dict:
    """Describe the worker thread of this process, or the worker processes seen recently."""
    seen = state.store.live_workers(WORKER_SILENCE_SECONDS)
    if state.settings.run_worker:
        # The thread must be alive and its loop must have recorded a heartbeat lately: a
        # loop that fails on every pass (database locked, say) records none.
        mine = [row for row in seen if row["identity"] == state.store.identity]
        return {"mode": "thread", "running": state.worker.running and bool(mine)}
    return {
        "mode": "process",
        "running": bool(seen),
        "processes": [
            {"host": row["host"], "pid": row["pid"], "last_seen": row["last_seen"]} for row in seen
        ],
    }


def healthz():
    state = current_app.extensions["deskroute"]
    worker = _worker_health(state)
    return jsonify(
        {
            "status": "ok" if worker["running"] else "degraded",
            "worker": worker,
            "model": state.classifier.version,
            "mode": state.settings.mode or state.policy.mode,
            "helpdesks": sorted(state.connectors),
            "deliveries": state.store.delivery_counts(),
        }
    )
