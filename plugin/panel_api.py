"""Read-only routes the help desk side panels call besides the decisions API.

The Zendesk sidebar's Override control lists the policy's queues with the value each one
routes to, so the agent's choice can be recorded and applied as a group id. Every route
needs ``Authorization: Bearer <DESKROUTE_API_TOKEN>``, like the decisions API.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from marshmallow import Schema, fields, validate

from plugin import intake
from plugin.api import require_token
from plugin.pipeline import routing_value
from plugin.policy import HELPDESK_TABLES

bp = Blueprint("panel_api", __name__)


class QueueQuery(Schema):
    helpdesk = fields.String(required=True, validate=validate.OneOf(HELPDESK_TABLES))


@bp.get("/queues")
@require_token
def list_queues():
    """List the policy's queues in file order with their routing target on one help desk.

    ``target`` is the value :func:`plugin.pipeline.routing_value` reads from the queue's
    table for that help desk, or ``None`` when the queue has none. For Zendesk that is the
    group id as a string, the same value a decision reports as ``decision.target``.

    NOTE: Jira tables with per-project targets can give a different value here than in
    ``decision.target``, which the Jira connector resolves for the ticket's project.
    """
    helpdesk = intake.validate(QueueQuery(), request.args.to_dict())["helpdesk"]
    policy = current_app.extensions["deskroute"].policy
    queues = [
        {
            "name": queue.name,
            "priority": queue.priority or policy.default_priority,
            "auto": queue.auto,
            "target": routing_value(queue.targets.get(helpdesk)),
        }
        for queue in policy.queues.values()
    ]
    return jsonify({"helpdesk": helpdesk, "queues": queues})
