"""The worker loop: takes stored deliveries in order and runs the pipeline on them.

It runs as a daemon thread of an app process, or in a worker process of its own. At
start-up it first returns deliveries claimed by processes that died to the queue, so an
accepted delivery is processed even when the process that accepted it was killed before
or during its work.
"""

from __future__ import annotations

import logging
import threading
import time

from plugin.pipeline import Pipeline, StepFailed
from plugin.store import FAILED, Delivery

log = logging.getLogger(__name__)

# Maximum wait between two attempts of one delivery, in seconds.
MAX_BACKOFF_SECONDS = 300.0
# How often a running worker records that it is alive, in seconds.
HEARTBEAT_SECONDS = 5.0


class LeaseKeeper:
    """Extends the lease of the delivery being processed until the ``with`` block ends.

    A slow step, such as waiting out a help desk's rate limit, would otherwise let the
    lease run out, and a second worker would process the same delivery.
    """

    def __init__(self, store, delivery: Delivery, interval: float):
        self.store = store
        self.delivery = delivery
        self.interval = max(interval, 0.05)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="deskroute-lease", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._done.wait(self.interval):
            try:
                held = self.store.extend_lease(self.delivery.id)
            except Exception:  # noqa: BLE001 - the next interval tries again
                log.exception("delivery %s: extending the lease failed", self.delivery.delivery_id)
                continue
            if not held:
                log.warning(
                    "%s delivery %s: claim lost to another worker",
                    self.delivery.helpdesk,
                    self.delivery.delivery_id,
                )
                return


class Worker:
    """Started by the app factory (or by tests, which call :meth:`drain` instead)."""

    def __init__(self, state, receiver=None):
        self.state = state
        self.pipeline = Pipeline(state)
        # A worker in a process of its own waits on a wake-up socket, else on an event.
        self._receiver = receiver
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="deskroute-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self) -> None:
        self._wake.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        released = self.state.store.release_orphans()
        if released:
            log.warning(
                "worker start: %s delivery(ies) of stopped processes queued again", released
            )
        log.info("worker started")
        poll = self.state.settings.worker_poll_seconds
        started_at = time.time()
        last_beat = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    self.state.store.heartbeat(started_at)
                    last_beat = time.monotonic()
                handled = self.run_once()
            except Exception:
                # The store itself failed (database down or locked): wait and try again,
                # since stored deliveries stay where they are.
                log.exception("worker loop failed, retrying in %s s", poll * 10)
                self._stop.wait(poll * 10)
                continue
            if not handled:
                self._idle(poll)
        try:
            self.state.store.remove_worker()
        except Exception:  # noqa: BLE001 - the row then ages out of /healthz
            log.exception("worker stop: removing the heartbeat failed")
        log.info("worker stopped")

    def _idle(self, timeout: float) -> None:
        if self._receiver is not None:
            self._receiver.wait(timeout)
            return
        self._wake.wait(timeout)
        self._wake.clear()

    def run_forever(self, stopped: threading.Event) -> None:
        """Run the loop in the calling thread until ``stopped`` is set (worker processes)."""
        self._stop = stopped
        self._run()

    def run_once(self) -> bool:
        """Claim and handle one due delivery; return whether there was one."""
        delivery = self.state.store.claim_next()
        if delivery is None:
            return False
        self.handle(delivery)
        return True

    def drain(self, max_deliveries: int = 10_000) -> int:
        """Handle due deliveries until none is left; return how many were handled."""
        handled = 0
        while handled < max_deliveries and self.run_once():
            handled += 1
        return handled

    def handle(self, delivery: Delivery) -> None:
        store = self.state.store
        settings = self.state.settings
        try:
            with LeaseKeeper(store, delivery, settings.lease_seconds / 3):
                status = self.pipeline.process(delivery)
        except StepFailed as exc:
            self._fail(delivery, exc.step, exc.message, exc.transient, exc.retry_after)
            return
        except Exception as exc:
            # An unexpected error is treated as transient: the attempts bound it.
            log.exception(
                "%s delivery %s: unexpected error in the pipeline",
                delivery.helpdesk,
                delivery.delivery_id,
            )
            self._fail(delivery, "pipeline", f"{type(exc).__name__}: {exc}", True, None)
            return
        store.finish_delivery(delivery.id, status)
        if settings.max_attempts and delivery.attempts > 1:
            log.info(
                "%s delivery %s: %s after %s attempts",
                delivery.helpdesk,
                delivery.delivery_id,
                status,
                delivery.attempts,
            )

    def _fail(self, delivery: Delivery, step: str, message: str, transient: bool, retry_after):
        store = self.state.store
        settings = self.state.settings
        store.record_failure(delivery, step, message, transient=transient)
        error = f"{step}: {message}"
        if transient and delivery.attempts < settings.max_attempts:
            delay = min(
                settings.retry_base_seconds * 2 ** (delivery.attempts - 1), MAX_BACKOFF_SECONDS
            )
            if retry_after is not None:
                delay = max(delay, retry_after)
            log.warning(
                "%s delivery %s for ticket %s: attempt %s failed at %s, retry in %.1f s: %s",
                delivery.helpdesk,
                delivery.delivery_id,
                delivery.ticket_id,
                delivery.attempts,
                step,
                delay,
                message,
            )
            store.retry_delivery(delivery.id, error, delay)
            return
        log.error(
            "%s delivery %s for ticket %s failed at %s after %s attempt(s): %s",
            delivery.helpdesk,
            delivery.delivery_id,
            delivery.ticket_id,
            step,
            delivery.attempts,
            message,
        )
        store.finish_delivery(delivery.id, FAILED, error)
