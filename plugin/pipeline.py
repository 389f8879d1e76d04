"""The pipeline: from a stored delivery to a decision, a write-back and a decision log row.

Nothing here depends on the help desk: it looks up the connector by the event's help desk
name. Each step's failure becomes a :class:`StepFailed` that names the step; the worker
records it with the delivery id and retries transient ones with backoff.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from connectors.base import ConnectorError, ConnectorTimeout, WriteBack
from plugin.note import render_note
from plugin.policy import Decision
from plugin.store import DONE, IGNORED, DecisionExists, Delivery
from plugin.tickets import TICKET_CREATED, Ticket, TicketEvent

log = logging.getLogger(__name__)

# Fields whose human changes are feedback on a decision.
FEEDBACK_FIELDS = ("group", "priority")


class StepFailed(Exception):
    """A failed pipeline step. ``transient`` is true when a later attempt can succeed."""

    def __init__(
        self, step: str, message: str, *, transient: bool, retry_after: float | None = None
    ):
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.transient = transient
        self.retry_after = retry_after


# Wait before another write-back after one timed out, in seconds. The timed-out request
# may still be in flight at the help desk. A retry that re-reads the ticket before it lands
# does not see the note and posts it a second time.
WRITEBACK_TIMEOUT_WAIT = 120.0


def _connector_failure(step: str, exc: ConnectorError) -> StepFailed:
    retry_after = getattr(exc, "retry_after", None)
    if step == "writeback" and isinstance(exc, ConnectorTimeout):
        retry_after = max(retry_after or 0.0, WRITEBACK_TIMEOUT_WAIT)
    return StepFailed(
        step,
        f"{type(exc).__name__}: {exc.message}",
        transient=exc.transient,
        retry_after=retry_after,
    )


def routing_value(target: Any) -> str | None:
    """Return the value a ticket's routing field reads once ``target`` is applied."""
    if target is None:
        return None
    if isinstance(target, dict):
        for key in ("group_id", "value", "id", "name"):
            if target.get(key) is not None:
                return str(target[key])
        return None
    return str(target)


class Pipeline:
    """Runs one delivery at a time; called by the worker thread (or by tests directly)."""

    def __init__(self, state):
        self.state = state

    def effective_mode(self, helpdesk: str) -> str:
        mode = self.state.settings.mode or self.state.policy.mode
        if helpdesk not in self.state.connectors:
            return "shadow"
        return mode

    def process(self, delivery: Delivery) -> str:
        """Handle one delivery; return the status to store (done or ignored)."""
        event = TicketEvent.from_dict(delivery.event)
        connector = self.state.connectors.get(event.helpdesk)
        own_user = self.state.own_user_id(event.helpdesk, fetch=True)
        if own_user and event.actor_id == own_user:
            log.info(
                "%s delivery %s: change by deskroute's own user, ignored",
                event.helpdesk,
                event.delivery_id,
            )
            return IGNORED
        if event.kind == TICKET_CREATED:
            return self._route(delivery, event, connector)
        return self._record_feedback(event)

    # Routing a new ticket

    def _route(self, delivery: Delivery, event: TicketEvent, connector) -> str:
        store = self.state.store
        previous = store.decision_for_delivery(event.helpdesk, event.delivery_id)
        if previous is not None:
            # An earlier attempt decided already and failed while writing back.
            return self._resume_writeback(previous, event, connector)
        if store.latest_decision(event.helpdesk, event.ticket_id) is not None:
            log.info(
                "%s ticket %s already has a decision, delivery %s ignored",
                event.helpdesk,
                event.ticket_id,
                event.delivery_id,
            )
            return IGNORED

        timings: dict[str, float] = {}
        started = time.perf_counter()
        ticket = self._ticket(event, connector)
        timings["ticket_ms"] = _ms(started)
        if self.state.settings.own_tag in ticket.tags:
            log.info(
                "%s ticket %s already carries tag %s, delivery %s ignored",
                event.helpdesk,
                ticket.id,
                self.state.settings.own_tag,
                event.delivery_id,
            )
            return IGNORED

        step_started = time.perf_counter()
        account = self.state.enricher.enrich(ticket) if self.state.enricher else None
        timings["enrich_ms"] = _ms(step_started)

        step_started = time.perf_counter()
        try:
            prediction = self.state.classifier.predict(ticket.text)
        except Exception as exc:
            raise StepFailed("classify", f"{type(exc).__name__}: {exc}", transient=False) from exc
        timings["classify_ms"] = _ms(step_started)

        step_started = time.perf_counter()
        decision = self.state.policy.decide(
            ticket, prediction, account, own_tag=self.state.settings.own_tag
        )
        mode = self.effective_mode(event.helpdesk)
        if mode == "shadow" and connector is None:
            decision.reasons.append(
                {"rule": "mode", "detail": f"no {event.helpdesk} credentials: shadow mode"}
            )
        queue = self.state.policy.queues.get(decision.queue)
        target = _target_value(
            connector, queue.targets.get(event.helpdesk) if queue else None, ticket
        )
        timings["policy_ms"] = _ms(step_started)

        outcome: dict[str, Any] = {}

        def complete(decision_id: int) -> dict[str, Any]:
            # The note names the decision id, so it is written in the insert's transaction.
            note = render_note(decision, mode=mode, decision_id=decision_id, account=account)
            writeback, held = self.state.policy.writeback_for(
                decision,
                ticket,
                mode=mode,
                helpdesk=event.helpdesk,
                note=note,
                overridden=store.overridden_fields(event.helpdesk, ticket.id),
            )
            decision.reasons.extend(held)
            outcome["writeback"] = writeback
            return {
                "decision": {**decision.to_dict(), "target": target},
                "writeback_request": _writeback_dict(writeback),
                "status": "recorded" if writeback is not None else "skipped",
            }

        try:
            decision_id = store.add_decision(
                complete=complete,
                helpdesk=event.helpdesk,
                ticket_id=ticket.id,
                delivery_id=event.delivery_id,
                mode=mode,
                model_version=prediction.model_version,
                queue=decision.queue,
                priority=decision.priority,
                action=decision.action,
                confidence=prediction.confidence,
                prediction=prediction.to_dict(),
                decision={**decision.to_dict(), "target": target},
                account=account.to_dict() if account is not None else None,
                status="recorded",
                timings=timings,
            )
        except DecisionExists:
            log.info(
                "%s ticket %s was decided by another delivery meanwhile, delivery %s ignored",
                event.helpdesk,
                ticket.id,
                event.delivery_id,
            )
            return IGNORED
        writeback = outcome["writeback"]
        if writeback is None:
            timings["total_ms"] = _ms(started)
            store.update_decision(decision_id, timings=timings)
            log.info(
                "%s ticket %s: %s to %s (%s mode), nothing written",
                event.helpdesk,
                ticket.id,
                decision.action,
                decision.queue,
                mode,
            )
            return DONE

        self._apply(decision_id, writeback, event, connector, timings, started)
        return DONE

    def _ticket(self, event: TicketEvent, connector) -> Ticket:
        """Read the full ticket when the help desk can be asked; else use the snapshot."""
        if connector is not None:
            try:
                return connector.fetch_ticket(event.ticket_id)
            except ConnectorError as exc:
                raise _connector_failure("ticket", exc) from exc
        if event.ticket is not None and event.ticket.complete:
            return event.ticket
        raise StepFailed(
            "ticket",
            f"ticket {event.ticket_id} has no subject or description in the payload and no "
            f"{event.helpdesk} credentials are set to read it",
            transient=False,
        )

    def _apply(self, decision_id, writeback, event, connector, timings, started) -> None:
        store = self.state.store
        step_started = time.perf_counter()
        try:
            result = connector.apply(writeback)
        except ConnectorError as exc:
            store.update_decision(decision_id, status="failed", writeback_result=exc.to_dict())
            raise _connector_failure("writeback", exc) from exc
        timings["writeback_ms"] = _ms(step_started)
        timings["total_ms"] = _ms(started)
        store.update_decision(
            decision_id,
            status="applied" if result.ok else "failed",
            writeback_result=_result_dict(result),
            timings=timings,
        )
        log.info(
            # Zendesk counts its PUTs, Jira every request of the write-back with retries.
            "%s ticket %s: write-back %s, %s request(s) including retries, delivery %s",
            event.helpdesk,
            event.ticket_id,
            "applied" if result.ok else "skipped",
            result.attempts,
            event.delivery_id,
        )

    def _resume_writeback(self, previous: dict[str, Any], event: TicketEvent, connector) -> str:
        if previous["status"] in ("applied", "skipped") or not previous.get("writeback_request"):
            return DONE
        if connector is None:
            raise StepFailed(
                "writeback",
                f"decision {previous['id']} waits for a write-back but no "
                f"{event.helpdesk} credentials are set",
                transient=False,
            )
        writeback = WriteBack(**previous["writeback_request"])
        timings = dict(previous.get("timings") or {})
        self._apply(previous["id"], writeback, event, connector, timings, time.perf_counter())
        return DONE

    # Feedback from human changes

    def _record_feedback(self, event: TicketEvent) -> str:
        store = self.state.store
        decision = store.latest_decision(event.helpdesk, event.ticket_id)
        relevant = [change for change in event.changes if change.get("field") in FEEDBACK_FIELDS]
        if decision is None or not relevant:
            return IGNORED
        suggested = {
            "group": (decision["decision"] or {}).get("target"),
            "priority": decision["priority"],
        }
        for change in relevant:
            field_name = change["field"]
            chosen = None if change.get("current") is None else str(change["current"])
            verdict = "accept" if chosen == suggested[field_name] else "override"
            store.add_feedback(
                helpdesk=event.helpdesk,
                ticket_id=event.ticket_id,
                decision=decision["id"],
                verdict=verdict,
                field=field_name,
                suggested=suggested[field_name],
                chosen=chosen,
                actor=event.actor_id,
                source="helpdesk",
            )
            log.info(
                "%s ticket %s: %s of %s by %s recorded against decision %s",
                event.helpdesk,
                event.ticket_id,
                verdict,
                field_name,
                event.actor_id or "an unknown user",
                decision["id"],
            )
        return DONE


def _target_value(connector, target: Any, ticket: Ticket) -> str | None:
    """Return the routing field's value once ``target`` is applied, as feedback compares it.

    A connector whose targets depend on the ticket (Jira, per project) computes it itself.
    """
    if target is None:
        return None
    if connector is not None and hasattr(connector, "routing_value"):
        value = connector.routing_value(target, ticket)
        return None if value is None else str(value)
    return routing_value(target)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _writeback_dict(writeback) -> dict[str, Any] | None:
    if writeback is None:
        return None
    return asdict(writeback)


def _result_dict(result) -> dict[str, Any]:
    return asdict(result)


__all__ = ["Decision", "Pipeline", "StepFailed", "routing_value"]
