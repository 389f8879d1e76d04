"""The internal note deskroute leaves on a ticket: suggestion, confidence, reasons."""

from __future__ import annotations

from plugin.policy import Decision

ACTION_TEXT = {
    "auto_route": "routed automatically",
    "needs_confirmation": "needs an analyst's confirmation",
    "escalate": "escalated",
}


def note_marker(decision_id: int) -> str:
    """Return the line that identifies a decision's note, so a retry can find it on the ticket."""
    return f"deskroute decision {decision_id}"


def render_note(decision: Decision, *, mode: str, decision_id: int, account=None) -> str:
    lines = [f"deskroute suggests queue {decision.queue}, priority {decision.priority}."]
    if decision.confidence is not None:
        threshold = (
            f"{decision.threshold:.2f}" if decision.threshold is not None else "none (never auto)"
        )
        lines.append(f"Confidence {decision.confidence:.2f}, threshold {threshold}.")
    effective = ACTION_TEXT.get(decision.action, decision.action)
    if mode != "auto" and decision.action == "auto_route":
        effective = f"would be routed automatically in auto mode (mode is {mode})"
    lines.append(f"Action: {effective}.")
    if decision.alternatives:
        others = ", ".join(f"{queue} {prob:.2f}" for queue, prob in decision.alternatives)
        lines.append(f"Alternatives: {others}.")
    if decision.terms:
        lines.append("Words that weighed most: " + ", ".join(decision.terms) + ".")
    if account is not None and getattr(account, "summary", None):
        summary = account.summary()
        if summary:
            lines.append("Account: " + summary)
    lines.append("Reasons:")
    lines.extend(f"- {reason['rule']}: {reason['detail']}" for reason in decision.reasons)
    for follow_up in decision.follow_ups:
        team = follow_up.get("team", "a team")
        lines.append(f"Follow-up for {team}: {follow_up.get('note') or follow_up.get('task', '')}")
    lines.extend(decision.notes)
    lines.append("")
    lines.append(f"({note_marker(decision_id)}; accept or override it in the deskroute panel)")
    return "\n".join(lines)
