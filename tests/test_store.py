"""The store on SQLite and PostgreSQL: deduplication, claims, leases, recovery."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plugin.store import DONE, FAILED, PENDING, PROCESSING, Store


def event(delivery_id="d-1", ticket_id="101", helpdesk="zendesk"):
    return {
        "helpdesk": helpdesk,
        "delivery_id": delivery_id,
        "kind": "ticket.created",
        "source_type": "zen:event-type:ticket.created",
        "ticket_id": ticket_id,
        "actor_id": None,
        "ticket": None,
        "changes": [],
        "occurred_at": None,
    }


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def make_store(url, **kwargs):
    store = Store(url, **kwargs)
    store.create_schema()
    return store


def test_add_delivery_deduplicates(database_url):
    store = make_store(database_url)

    first, created = store.add_delivery(event("d-1"))
    again, created_again = store.add_delivery(event("d-1"))

    assert created is True
    assert created_again is False
    assert again == first
    assert len(store.list_deliveries()) == 1


def test_delivery_id_scoped_by_helpdesk(database_url):
    store = make_store(database_url)

    store.add_delivery(event("d-1", helpdesk="zendesk"))
    _, created = store.add_delivery(event("d-1", helpdesk="jira"))

    assert created is True


def test_claims_in_arrival_order(database_url):
    store = make_store(database_url)
    for index in range(3):
        store.add_delivery(event(f"d-{index}", ticket_id=str(index)))

    claimed = [store.claim_next().delivery_id for _ in range(3)]

    assert claimed == ["d-0", "d-1", "d-2"]
    assert store.claim_next() is None


def test_claim_is_exclusive_between_stores(database_url):
    first = make_store(database_url)
    second = make_store(database_url)
    first.add_delivery(event("d-1"))

    claimed = first.claim_next()

    assert claimed is not None
    assert claimed.status == PROCESSING
    assert second.claim_next() is None


def test_expired_lease_is_claimed_again(database_url):
    clock = Clock()
    first = make_store(database_url, lease_seconds=60, clock=clock)
    second = make_store(database_url, lease_seconds=60, clock=clock)
    first.add_delivery(event("d-1"))
    first.claim_next()

    clock.now += 61
    claimed = second.claim_next()

    assert claimed is not None
    assert claimed.attempts == 2


def test_retry_waits_for_backoff(database_url):
    clock = Clock()
    store = make_store(database_url, clock=clock)
    store.add_delivery(event("d-1"))
    delivery = store.claim_next()

    store.retry_delivery(delivery.id, "writeback: timed out", delay=30)

    assert store.claim_next() is None
    clock.now += 31
    again = store.claim_next()
    assert again.id == delivery.id
    assert again.last_error == "writeback: timed out"


def test_new_delivery_goes_before_due_retry(database_url):
    clock = Clock()
    store = make_store(database_url, clock=clock)
    store.add_delivery(event("d-1", ticket_id="101", helpdesk="jira"))
    retried = store.claim_next()
    store.retry_delivery(retried.id, "fetch: jira could not be reached", delay=1)
    clock.now += 2
    store.add_delivery(event("d-2", ticket_id="102"))

    first = store.claim_next()
    second = store.claim_next()

    assert first.delivery_id == "d-2"
    assert second.id == retried.id
    assert second.attempts == 2


def test_failed_delivery_stays_visible_and_can_be_requeued(database_url):
    store = make_store(database_url)
    store.add_delivery(event("d-1"))
    delivery = store.claim_next()
    store.record_failure(delivery, "ticket", "ConnectorNotFound: 404", transient=False)

    store.finish_delivery(delivery.id, FAILED, "ticket: ConnectorNotFound: 404")

    failed = store.list_deliveries(FAILED)
    assert [row["delivery_id"] for row in failed] == ["d-1"]
    assert store.failures(delivery.id)[0]["step"] == "ticket"
    assert store.delivery_counts()[FAILED] == 1
    assert store.requeue_delivery(delivery.id) is True
    assert store.get_delivery(delivery.id).status == PENDING


def test_orphan_of_dead_process_is_released(database_url):
    store = make_store(database_url)
    store.add_delivery(event("d-1"))
    # A process that claims the delivery and then dies without finishing it.
    script = (
        "import sys; from plugin.store import Store; "
        "s = Store(sys.argv[1], lease_seconds=3600); assert s.claim_next() is not None"
    )
    subprocess.run([sys.executable, "-c", script, database_url], check=True)
    assert store.get_delivery(1).status == PROCESSING
    assert store.claim_next() is None

    released = store.release_orphans()

    assert released == 1
    assert store.claim_next().delivery_id == "d-1"


def test_claim_of_live_process_is_kept(database_url):
    owner = make_store(database_url, lease_seconds=3600)
    other = make_store(database_url)
    owner.add_delivery(event("d-1"))
    owner.claim_next()

    assert other.release_orphans() == 0


def test_decisions_and_feedback_roundtrip(database_url):
    store = make_store(database_url)
    decision_id = store.add_decision(
        helpdesk="zendesk",
        ticket_id="101",
        delivery_id="d-1",
        mode="auto",
        model_version="m-1",
        queue="Hardware",
        priority="normal",
        action="auto_route",
        confidence=0.97,
        prediction={"queue": "Hardware"},
        decision={"queue": "Hardware", "target": "360001"},
        status="recorded",
    )
    store.update_decision(decision_id, status="applied", writeback_result={"ok": True})
    store.add_feedback(
        helpdesk="zendesk",
        ticket_id="101",
        decision=decision_id,
        verdict="override",
        field="group",
        suggested="360001",
        chosen="360002",
        actor="42",
        source="helpdesk",
    )

    row = store.latest_decision("zendesk", "101")
    assert row["status"] == "applied"
    assert row["decision"]["target"] == "360001"
    assert store.decision_for_delivery("zendesk", "d-1")["id"] == decision_id
    assert store.overridden_fields("zendesk", "101") == {"group"}


def test_finish_marks_done(database_url):
    store = make_store(database_url)
    store.add_delivery(event("d-1"))
    delivery = store.claim_next()

    store.finish_delivery(delivery.id, DONE)

    assert store.get_delivery(delivery.id).status == DONE
    assert store.claim_next() is None


def decision_values(ticket_id="101", delivery_id="d-1"):
    return {
        "helpdesk": "zendesk",
        "ticket_id": ticket_id,
        "delivery_id": delivery_id,
        "mode": "shadow",
        "action": "auto_route",
        "decision": {"queue": "Hardware"},
        "status": "recorded",
    }


def test_second_decision_for_ticket_is_rejected(database_url):
    from plugin.store import DecisionExists

    store = make_store(database_url)
    store.add_decision(**decision_values(delivery_id="d-1"))

    with pytest.raises(DecisionExists):
        store.add_decision(**decision_values(delivery_id="d-2"))
    assert len(store.decisions_for_ticket("zendesk", "101")) == 1


def test_decision_completion_is_stored_with_insert(database_url):
    store = make_store(database_url)

    decision_id = store.add_decision(
        complete=lambda new_id: {"writeback_request": {"note": f"decision {new_id}"}},
        **decision_values(),
    )

    row = store.get_decision(decision_id)
    assert row["writeback_request"] == {"note": f"decision {decision_id}"}


def test_lease_is_extended_only_by_its_owner(database_url):
    clock = Clock()
    owner = make_store(database_url, lease_seconds=60, clock=clock)
    other = make_store(database_url, lease_seconds=60, clock=clock)
    owner.add_delivery(event("d-1"))
    delivery = owner.claim_next()

    clock.now += 50
    assert owner.extend_lease(delivery.id) is True
    assert other.extend_lease(delivery.id) is False
    clock.now += 50

    assert other.claim_next() is None


def test_heartbeat_lists_live_workers(database_url):
    clock = Clock()
    store = make_store(database_url, clock=clock)

    store.heartbeat(started_at=clock.now)
    store.heartbeat(started_at=clock.now)

    assert [row["identity"] for row in store.live_workers(30)] == [store.identity]
    clock.now += 31
    assert store.live_workers(30) == []
