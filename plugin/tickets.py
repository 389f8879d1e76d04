"""The canonical ticket and ticket event that every help desk's intake maps onto."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Party:
    """A requester or organization as the help desk names it; any field may be unknown."""

    id: str | None = None
    name: str | None = None
    email: str | None = None
    external_id: str | None = None
    domain: str | None = None


@dataclass
class Ticket:
    """One ticket, independent of the help desk it came from."""

    helpdesk: str
    id: str
    subject: str = ""
    description: str = ""
    requester: Party = field(default_factory=Party)
    organization: Party = field(default_factory=Party)
    tags: list[str] = field(default_factory=list)
    channel: str | None = None
    language: str | None = None
    status: str | None = None
    priority: str | None = None
    group: str | None = None
    updated_stamp: str | None = None
    # Set when the snapshot is complete enough to classify without reading the help desk.
    complete: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """Subject and description joined, the input of the classifier."""
        return "\n".join(part for part in (self.subject, self.description) if part)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ticket:
        data = dict(data)
        data["requester"] = Party(**(data.get("requester") or {}))
        data["organization"] = Party(**(data.get("organization") or {}))
        return cls(**data)


# Kinds of canonical event. Intake maps each help desk's own event names onto these.
TICKET_CREATED = "ticket.created"
TICKET_UPDATED = "ticket.updated"
EVENT_KINDS = (TICKET_CREATED, TICKET_UPDATED)


@dataclass
class TicketEvent:
    """One accepted delivery, mapped to a help desk independent shape.

    ``changes`` lists field changes carried by update events, each a dict with ``field``,
    ``previous`` and ``current``; feedback and handoff counting read them.
    """

    helpdesk: str
    delivery_id: str
    kind: str
    ticket_id: str
    source_type: str
    actor_id: str | None = None
    ticket: Ticket | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)
    occurred_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # Field by field: asdict would deep-copy the ticket only to convert it again.
        data = {item.name: getattr(self, item.name) for item in fields(self)}
        data["ticket"] = self.ticket.to_dict() if self.ticket else None
        data["changes"] = [dict(change) for change in self.changes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TicketEvent:
        data = dict(data)
        if data.get("ticket"):
            data["ticket"] = Ticket.from_dict(data["ticket"])
        return cls(**data)
