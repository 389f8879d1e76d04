"""The durable store: deliveries, their failures, decisions and feedback, through SQLAlchemy.

SQLite is the embedded default and PostgreSQL the production database; both run the same
statements. A delivery is claimed by one worker at a time with a lease, so several app
processes can share one database. When a worker dies mid-delivery, another claims the
delivery once the lease runs out, or at once when the dead process is on the same host.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

log = logging.getLogger(__name__)

metadata = MetaData()

PENDING = "pending"
PROCESSING = "processing"
DONE = "done"
IGNORED = "ignored"
FAILED = "failed"
DELIVERY_STATUSES = (PENDING, PROCESSING, DONE, IGNORED, FAILED)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("helpdesk", String(32), nullable=False),
    Column("delivery_id", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("source_type", String(120), nullable=False),
    Column("ticket_id", String(64), nullable=False, index=True),
    Column("event", JSON, nullable=False),
    Column("status", String(16), nullable=False, default=PENDING),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("claimed_by", String(200)),
    Column("claimed_until", Float),
    Column("last_error", Text),
    Column("received_at", Float, nullable=False),
    Column("finished_at", Float),
    UniqueConstraint("helpdesk", "delivery_id", name="uq_delivery"),
    # The worker claims by status in arrival order, and expired leases by their end.
    Index("ix_deliveries_status_id", "status", "id"),
    Index("ix_deliveries_status_lease", "status", "claimed_until"),
)

delivery_failures = Table(
    "delivery_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery", Integer, nullable=False, index=True),
    Column("delivery_id", String(200), nullable=False),
    Column("step", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error", Text, nullable=False),
    Column("transient", Integer, nullable=False),
    Column("at", Float, nullable=False),
)

decisions = Table(
    "decisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("helpdesk", String(32), nullable=False),
    Column("ticket_id", String(64), nullable=False),
    Column("delivery_id", String(200), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("model_version", String(120)),
    Column("queue", String(120)),
    Column("priority", String(16)),
    Column("action", String(32), nullable=False),
    Column("confidence", Float),
    Column("prediction", JSON),
    Column("decision", JSON, nullable=False),
    Column("account", JSON),
    Column("writeback_request", JSON),
    Column("writeback_result", JSON),
    # recorded, applied, skipped or failed: what became of the write-back.
    Column("status", String(16), nullable=False),
    Column("timings", JSON),
    # One routing decision per ticket: two workers racing on two deliveries for the same
    # new ticket cannot both decide it.
    Index("ix_decisions_ticket", "helpdesk", "ticket_id", unique=True),
    Index("ix_decisions_delivery", "helpdesk", "delivery_id"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("helpdesk", String(32), nullable=False),
    Column("ticket_id", String(64), nullable=False),
    Column("decision", Integer),
    # accept or override, from an analyst in a panel or a human change seen in an update.
    Column("verdict", String(16), nullable=False),
    Column("field", String(32), nullable=False),
    Column("suggested", String(200)),
    Column("chosen", String(200)),
    Column("actor", String(200)),
    Column("source", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_feedback_ticket", "helpdesk", "ticket_id"),
)


workers = Table(
    "workers",
    metadata,
    Column("identity", String(200), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)


class DecisionExists(Exception):
    """Another delivery already decided this ticket."""


def _worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Delivery:
    """A stored delivery, as the worker reads it."""

    id: int
    helpdesk: str
    delivery_id: str
    kind: str
    source_type: str
    ticket_id: str
    event: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # noqa: ANN001
        cursor = dbapi_connection.cursor()
        # WAL lets the intake write while the worker reads. synchronous=NORMAL keeps a
        # committed delivery through a crash of the process (not of the machine's power).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class Store:
    """The database behind intake, worker, decisions API and reports."""

    def __init__(self, url: str, *, lease_seconds: float = 120.0, clock=time.time):
        self.url = url
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.identity = _worker_identity()
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                # The database contains ticket text, so a new folder and file are the owner's only.
                os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
                if not os.path.exists(path):
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            self.engine = create_engine(url, connect_args={"timeout": 10})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
        self.dialect = self.engine.dialect.name

    def create_schema(self) -> None:
        try:
            metadata.create_all(self.engine)
        except (OperationalError, ProgrammingError, IntegrityError):
            # Another process created the tables between the check and the CREATE; a second
            # pass finds them and creates only what is still missing.
            metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # Deliveries

    def add_delivery(self, event_data: dict[str, Any]) -> tuple[int, bool]:
        """Store a canonical event; return its row id and whether it is new.

        A second delivery with the same help desk and delivery id is a retry or a
        duplicate, so the row of the first one is returned and nothing is stored.
        """
        row = {
            "helpdesk": event_data["helpdesk"],
            "delivery_id": event_data["delivery_id"],
            "kind": event_data["kind"],
            "source_type": event_data["source_type"],
            "ticket_id": str(event_data["ticket_id"]),
            "event": event_data,
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": 0.0,
            "received_at": self.clock(),
        }
        try:
            with self.engine.begin() as conn:
                # Executing the insert with parameters reuses one compiled statement.
                result = conn.execute(insert(deliveries), row)
                return int(result.inserted_primary_key[0]), True
        except IntegrityError:
            existing = self.find_delivery(event_data["helpdesk"], event_data["delivery_id"])
            if existing is None:
                raise
            return existing.id, False

    def find_delivery(self, helpdesk: str, delivery_id: str) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(deliveries).where(
                    deliveries.c.helpdesk == helpdesk, deliveries.c.delivery_id == delivery_id
                )
            ).first()
        return self._delivery(row) if row else None

    def get_delivery(self, row_id: int) -> Delivery | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == row_id)).first()
        return self._delivery(row) if row else None

    @staticmethod
    def _delivery(row) -> Delivery:
        event_data = row.event if isinstance(row.event, dict) else json.loads(row.event)
        return Delivery(
            id=row.id,
            helpdesk=row.helpdesk,
            delivery_id=row.delivery_id,
            kind=row.kind,
            source_type=row.source_type,
            ticket_id=row.ticket_id,
            event=event_data,
            status=row.status,
            attempts=row.attempts,
            last_error=row.last_error,
        )

    def claim_next(self) -> Delivery | None:
        """Claim the next due delivery: new ones and lapsed leases first, then retries.

        A retry waits behind new deliveries, so an outside system that keeps failing
        delays only the deliveries that need it, not every ticket behind them.
        """
        now = self.clock()
        columns = (deliveries.c.id, deliveries.c.status, deliveries.c.claimed_by)
        due = (deliveries.c.status == PENDING, deliveries.c.next_attempt_at <= now)
        # Separate indexed look-ups instead of one OR, which would scan the table.
        fresh = select(*columns).where(*due, deliveries.c.attempts == 0)
        retried = select(*columns).where(*due, deliveries.c.attempts > 0)
        expired = (
            select(*columns)
            .where(deliveries.c.status == PROCESSING, deliveries.c.claimed_until < now)
            .order_by(deliveries.c.claimed_until)
            .limit(1)
        )
        fresh = fresh.order_by(deliveries.c.id).limit(1)
        retried = retried.order_by(deliveries.c.id).limit(1)
        for _ in range(5):
            with self.engine.begin() as conn:
                found = [
                    row
                    for row in (conn.execute(fresh).first(), conn.execute(expired).first())
                    if row is not None
                ]
                if not found:
                    found = [row for row in (conn.execute(retried).first(),) if row is not None]
                if not found:
                    return None
                candidate = min(found, key=lambda row: row.id)
                # The status and owner in the WHERE clause make the claim atomic: of two
                # workers that read the same row, only one update matches.
                claimed = conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.id == candidate.id,
                        deliveries.c.status == candidate.status,
                        (deliveries.c.claimed_by == candidate.claimed_by)
                        if candidate.claimed_by is not None
                        else deliveries.c.claimed_by.is_(None),
                    )
                    .values(
                        status=PROCESSING,
                        claimed_by=self.identity,
                        claimed_until=now + self.lease_seconds,
                        attempts=deliveries.c.attempts + 1,
                    )
                )
                if claimed.rowcount == 1:
                    if candidate.status == PROCESSING:
                        log.warning(
                            "delivery %s: lease of %s ran out, claimed again",
                            candidate.id,
                            candidate.claimed_by,
                        )
                    row = conn.execute(
                        select(deliveries).where(deliveries.c.id == candidate.id)
                    ).first()
                    return self._delivery(row)
        return None

    def release_orphans(self) -> int:
        """Return deliveries claimed by dead processes on this host to the pending state.

        Run at worker start-up, so that a delivery whose process was killed mid-way is
        processed at once instead of after its lease.
        """
        host = socket.gethostname()
        released = 0
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(deliveries.c.id, deliveries.c.claimed_by).where(
                    deliveries.c.status == PROCESSING
                )
            ).all()
            for row in rows:
                owner_host, _, rest = (row.claimed_by or "").partition(":")
                pid_text = rest.partition(":")[0]
                if owner_host != host or not pid_text.isdigit():
                    continue
                if _process_alive(int(pid_text)):
                    continue
                conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == row.id, deliveries.c.claimed_by == row.claimed_by)
                    .values(status=PENDING, claimed_by=None, claimed_until=None)
                )
                released += 1
        return released

    def extend_lease(self, row_id: int) -> bool:
        """Push the lease of a delivery this store claimed forward; return whether it still
        holds the claim."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == row_id,
                    deliveries.c.status == PROCESSING,
                    deliveries.c.claimed_by == self.identity,
                )
                .values(claimed_until=self.clock() + self.lease_seconds)
            )
        return result.rowcount == 1

    def heartbeat(self, started_at: float) -> None:
        """Record that this store's worker is alive, for ``/healthz``."""
        now = self.clock()
        host, pid = socket.gethostname(), os.getpid()
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(workers).where(workers.c.identity == self.identity).values(last_seen=now)
            )
            if updated.rowcount == 0:
                conn.execute(
                    insert(workers).values(
                        identity=self.identity,
                        host=host,
                        pid=pid,
                        started_at=started_at,
                        last_seen=now,
                    )
                )
            # Rows of workers silent for a day are of no use to anyone.
            conn.execute(workers.delete().where(workers.c.last_seen < now - 86400))

    def live_workers(self, within_seconds: float) -> list[dict[str, Any]]:
        """Return workers seen within ``within_seconds``, less those on this host that died."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(workers).where(workers.c.last_seen >= self.clock() - within_seconds)
            ).all()
        host = socket.gethostname()
        return [dict(row._mapping) for row in rows if row.host != host or _process_alive(row.pid)]

    def remove_worker(self) -> None:
        """Delete this store's heartbeat row, when its worker stops cleanly."""
        with self.engine.begin() as conn:
            conn.execute(workers.delete().where(workers.c.identity == self.identity))

    def finish_delivery(self, row_id: int, status: str, error: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row_id)
                .values(
                    status=status,
                    last_error=error,
                    finished_at=self.clock(),
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    def retry_delivery(self, row_id: int, error: str, delay: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row_id)
                .values(
                    status=PENDING,
                    last_error=error,
                    next_attempt_at=self.clock() + delay,
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    def requeue_delivery(self, row_id: int) -> bool:
        """Put a failed delivery back in the queue; return whether it was failed."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(deliveries)
                .where(deliveries.c.id == row_id, deliveries.c.status == FAILED)
                .values(status=PENDING, attempts=0, next_attempt_at=0.0, finished_at=None)
            )
        return result.rowcount == 1

    def record_failure(self, delivery: Delivery, step: str, error: str, *, transient: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(delivery_failures).values(
                    delivery=delivery.id,
                    delivery_id=delivery.delivery_id,
                    step=step,
                    attempt=delivery.attempts,
                    error=error,
                    transient=int(transient),
                    at=self.clock(),
                )
            )

    def failures(self, row_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(delivery_failures)
                .where(delivery_failures.c.delivery == row_id)
                .order_by(delivery_failures.c.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def list_deliveries(
        self, status: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Return deliveries newest first; ``before`` pages on to ids below it."""
        query = select(deliveries).order_by(deliveries.c.id.desc()).limit(limit)
        if status:
            query = query.where(deliveries.c.status == status)
        if before is not None:
            query = query.where(deliveries.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        shown = []
        for row in rows:
            item = dict(row._mapping)
            item.pop("event", None)
            shown.append(item)
        return shown

    def delivery_counts(self) -> dict[str, int]:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.status, func.count()).group_by(deliveries.c.status)
            ).all()
        counts = dict.fromkeys(DELIVERY_STATUSES, 0)
        counts.update({status: count for status, count in rows})
        return counts

    # Decisions

    def add_decision(self, complete=None, **values: Any) -> int:
        """Insert a decision and return its id; raise :class:`DecisionExists` for a decided ticket.

        ``complete(decision_id)`` may return more values, such as the write-back request
        whose note names the id. They are stored in the same transaction, so a crash
        cannot leave a decision without its write-back request.
        """
        values.setdefault("created_at", self.clock())
        try:
            with self.engine.begin() as conn:
                result = conn.execute(insert(decisions), values)
                decision_id = int(result.inserted_primary_key[0])
                if complete is not None:
                    conn.execute(
                        update(decisions)
                        .where(decisions.c.id == decision_id)
                        .values(**complete(decision_id))
                    )
        except IntegrityError as exc:
            if self.latest_decision(values["helpdesk"], values["ticket_id"]) is None:
                raise
            raise DecisionExists(f"{values['helpdesk']} ticket {values['ticket_id']}") from exc
        return decision_id

    def update_decision(self, decision_id: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(decisions).where(decisions.c.id == decision_id).values(**values))

    def decision_for_delivery(self, helpdesk: str, delivery_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(decisions)
                .where(decisions.c.helpdesk == helpdesk, decisions.c.delivery_id == delivery_id)
                .order_by(decisions.c.id.desc())
                .limit(1)
            ).first()
        return dict(row._mapping) if row else None

    def decisions_for_ticket(self, helpdesk: str, ticket_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(decisions)
                .where(decisions.c.helpdesk == helpdesk, decisions.c.ticket_id == str(ticket_id))
                .order_by(decisions.c.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def decisions_after(self, helpdesk: str, after_id: int, limit: int) -> list[dict[str, Any]]:
        """Return up to ``limit`` decisions with an id above ``after_id``, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(decisions)
                .where(decisions.c.helpdesk == helpdesk, decisions.c.id > after_id)
                .order_by(decisions.c.id)
                .limit(limit)
            ).all()
        return [dict(row._mapping) for row in rows]

    def last_decision_id(self, helpdesk: str) -> int:
        from sqlalchemy import func

        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(decisions.c.id)).where(decisions.c.helpdesk == helpdesk)
            ).scalar()
        return int(value or 0)

    def latest_decision(self, helpdesk: str, ticket_id: str) -> dict[str, Any] | None:
        found = self.decisions_for_ticket(helpdesk, ticket_id)
        return found[-1] if found else None

    def get_decision(self, decision_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(decisions).where(decisions.c.id == decision_id)).first()
        return dict(row._mapping) if row else None

    # Feedback

    def add_feedback(self, **values: Any) -> int:
        values.setdefault("created_at", self.clock())
        with self.engine.begin() as conn:
            result = conn.execute(insert(feedback).values(**values))
        return int(result.inserted_primary_key[0])

    def feedback_for_ticket(self, helpdesk: str, ticket_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(feedback)
                .where(feedback.c.helpdesk == helpdesk, feedback.c.ticket_id == str(ticket_id))
                .order_by(feedback.c.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    def overridden_fields(self, helpdesk: str, ticket_id: str) -> set[str]:
        """Return the fields a human has overridden on a ticket, never to be set again."""
        return {
            item["field"]
            for item in self.feedback_for_ticket(helpdesk, ticket_id)
            if item["verdict"] == "override"
        }
