"""Account context: who the requester's account is and what it is entitled to, before the
policy runs.

:class:`Enricher` is built once by the app factory and called by the pipeline for every new
ticket. It queries Salesforce (account, entitlements, contracts, renewal, open cases) and the
configured ERP (invoices, holds, contracts, projects) and returns one
:class:`AccountContext`. Every lookup runs under a deadline, results are cached per account
for ``enrichment_cache_seconds``, and each source has a circuit breaker. A failed source
leaves its fields empty and adds ``{"source", "error"}`` to ``AccountContext.failures``;
:meth:`Enricher.enrich` never raises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from typing import Any

from connectors.base import ConnectorError
from model.priority import LEVELS as PRIORITIES

log = logging.getLogger(__name__)

# Priority classes, lowest first; the same names the help desks and the policy use.

# Default circuit breaker: this many failures in a row open it for this many seconds.
DEFAULT_BREAKER_FAILURES = 5
DEFAULT_BREAKER_RESET_SECONDS = 60.0


@dataclass
class Entitlement:
    """An active support entitlement and the SLA of its entitlement process."""

    id: str
    name: str | None = None
    status: str | None = None
    process: str | None = None
    start_date: date | None = None
    end_date: date | None = None
    first_response_minutes: float | None = None
    resolution_minutes: float | None = None
    # The priority class the SLA stands for (low, normal, high, urgent).
    sla_priority: str | None = None


@dataclass
class Contract:
    """A service contract (Salesforce) or a billing contract (ERP)."""

    id: str
    name: str | None = None
    status: str | None = None
    start_date: date | None = None
    end_date: date | None = None


@dataclass
class Renewal:
    """The open renewal opportunity that closes first."""

    id: str
    name: str | None = None
    stage: str | None = None
    close_date: date | None = None
    amount: float | None = None


@dataclass
class Project:
    """A customer project in the ERP, with its phase and the dates that matter for support."""

    id: str
    name: str | None = None
    phase: str | None = None
    status: str | None = None
    business_critical: bool | None = None
    go_live_date: date | None = None
    next_milestone: str | None = None
    next_milestone_date: date | None = None
    manager: str | None = None


@dataclass
class FieldSource:
    """The source of one context field and the time it was read (UTC, ISO 8601)."""

    source: str
    at: str


@dataclass
class AccountContext:
    """Everything known about the ticket's account. ``None`` means no source gave a value."""

    account_id: str | None = None
    account_name: str | None = None
    # How Salesforce matched the account: external_id, domain or contact_email.
    matched_by: str | None = None
    tier: str | None = None
    account_owner: str | None = None
    delivery_manager: str | None = None
    entitlements: list[Entitlement] = field(default_factory=list)
    # Derived from the active entitlements: the highest SLA class and the tightest targets.
    sla_priority: str | None = None
    first_response_minutes: float | None = None
    resolution_minutes: float | None = None
    service_contracts: list[Contract] = field(default_factory=list)
    renewal: Renewal | None = None
    days_to_renewal: int | None = None
    open_cases: int | None = None
    erp_customer_id: str | None = None
    overdue_invoices: int | None = None
    overdue_amount: float | None = None
    oldest_overdue_date: date | None = None
    disputed_invoices: int | None = None
    disputed_amount: float | None = None
    billing_hold: bool | None = None
    provisioning_hold: bool | None = None
    erp_contracts: list[Contract] = field(default_factory=list)
    projects: list[Project] = field(default_factory=list)
    # The active project whose go-live or next milestone comes first.
    project: Project | None = None
    days_to_go_live: int | None = None
    # Extra Salesforce Account fields named in the ``[salesforce] account_fields`` option.
    fields: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, FieldSource] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return self.account_id is not None or self.erp_customer_id is not None

    def apply(self, source: str, values: dict[str, Any], at: str) -> None:
        """Copy the fields a source returned, recording the source and time of each."""
        known = {item.name for item in fields(self)} - {"sources", "failures"}
        for name, value in values.items():
            if name not in known:
                raise ValueError(f"{source} returned unknown account field {name!r}")
            if value is None or value == [] or value == {}:
                continue
            setattr(self, name, value)
            self.sources[name] = FieldSource(source=source, at=at)

    def derive(self, today: date) -> None:
        """Compute the fields that summarise others: SLA class, days to dates, main project."""
        active = [item for item in self.entitlements if _is_active(item.status)]
        ranked = [item.sla_priority for item in active if item.sla_priority in PRIORITIES]
        if ranked:
            self.sla_priority = max(ranked, key=PRIORITIES.index)
            self._derived("sla_priority", "entitlements")
        first = [item.first_response_minutes for item in active if item.first_response_minutes]
        if first:
            self.first_response_minutes = min(first)
            self._derived("first_response_minutes", "entitlements")
        resolution = [item.resolution_minutes for item in active if item.resolution_minutes]
        if resolution:
            self.resolution_minutes = min(resolution)
            self._derived("resolution_minutes", "entitlements")
        if self.renewal is not None and self.renewal.close_date is not None:
            self.days_to_renewal = (self.renewal.close_date - today).days
            self._derived("days_to_renewal", "renewal")
        if self.projects and self.project is None:
            self.project = _main_project(self.projects, today)
            self._derived("project", "projects")
        if self.project is not None and self.project.go_live_date is not None:
            self.days_to_go_live = (self.project.go_live_date - today).days
            self._derived("days_to_go_live", "project")

    def _derived(self, name: str, origin: str) -> None:
        if origin in self.sources:
            self.sources[name] = self.sources[origin]

    def add_failure(self, source: str, error: str) -> None:
        self.failures.append({"source": source, "error": error})

    def summary(self) -> str:
        """Return one line for the ticket note: name, tier, people and the dates that matter."""
        parts: list[str] = []
        if self.account_name:
            parts.append(self.account_name + (f" ({self.tier})" if self.tier else ""))
        elif self.tier:
            parts.append(f"tier {self.tier}")
        if self.delivery_manager:
            parts.append(f"delivery manager {self.delivery_manager}")
        if self.account_owner:
            parts.append(f"account owner {self.account_owner}")
        if self.sla_priority:
            parts.append(f"SLA class {self.sla_priority}")
        if self.renewal is not None:
            when = (
                f" closing {self.renewal.close_date.isoformat()}" if self.renewal.close_date else ""
            )
            parts.append(f"renewal {self.renewal.stage or 'open'}{when}")
        if self.project is not None:
            text = f"project {self.project.name or self.project.id}"
            if self.project.phase:
                text += f" in {self.project.phase}"
            if self.project.go_live_date:
                text += f", go-live {self.project.go_live_date.isoformat()}"
            if self.project.next_milestone:
                text += f", next milestone {self.project.next_milestone}"
            parts.append(text)
        if self.overdue_invoices:
            parts.append(f"{self.overdue_invoices} overdue invoice(s)")
        if self.disputed_invoices:
            parts.append(f"{self.disputed_invoices} disputed invoice(s)")
        if self.billing_hold:
            parts.append("billing hold")
        if self.provisioning_hold:
            parts.append("provisioning hold")
        if self.failures:
            parts.append("unavailable: " + ", ".join(item["source"] for item in self.failures))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict: dates as ISO strings, nested records as dicts."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountContext:
        """Rebuild a context from :meth:`to_dict` output (dates given as ISO strings)."""
        data = dict(data)
        for name in ("oldest_overdue_date",):
            data[name] = _date_or_none(data.get(name))
        data["entitlements"] = [_record(Entitlement, item) for item in data.get("entitlements", [])]
        data["service_contracts"] = [
            _record(Contract, item) for item in data.get("service_contracts", [])
        ]
        data["erp_contracts"] = [_record(Contract, item) for item in data.get("erp_contracts", [])]
        data["projects"] = [_record(Project, item) for item in data.get("projects", [])]
        data["project"] = _record(Project, data["project"]) if data.get("project") else None
        data["renewal"] = _record(Renewal, data["renewal"]) if data.get("renewal") else None
        data["sources"] = {
            name: FieldSource(**value) for name, value in (data.get("sources") or {}).items()
        }
        return cls(**data)


def _is_active(status: str | None) -> bool:
    return status is None or status.lower() == "active"


def _main_project(projects: list[Project], today: date) -> Project:
    def next_date(project: Project) -> date:
        dates = [
            value
            for value in (project.go_live_date, project.next_milestone_date)
            if value is not None and value >= today
        ]
        return min(dates) if dates else date.max

    return min(projects, key=next_date)


def _jsonable(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return value


def _date_or_none(value: Any) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _record(cls, data: dict[str, Any]):
    values = dict(data)
    for item in fields(cls):
        if item.name.endswith("_date") and item.name in values:
            values[item.name] = _date_or_none(values[item.name])
    return cls(**values)


@dataclass
class AccountHints:
    """The account details a ticket carries, used to find it in Salesforce and the ERP."""

    organization_external_id: str | None = None
    organization_name: str | None = None
    email: str | None = None
    domain: str | None = None
    # Filled from Salesforce when an Account field contains the ERP customer id.
    erp_customer_id: str | None = None
    account_name: str | None = None

    @classmethod
    def from_ticket(cls, ticket) -> AccountHints:
        organization = getattr(ticket, "organization", None)
        requester = getattr(ticket, "requester", None)
        email = (getattr(requester, "email", None) or "").strip().lower() or None
        domain = (getattr(organization, "domain", None) or "").strip().lower() or None
        if domain is None and email and "@" in email:
            domain = email.rsplit("@", 1)[1]
        return cls(
            organization_external_id=getattr(organization, "external_id", None) or None,
            organization_name=getattr(organization, "name", None) or None,
            email=email,
            domain=domain,
        )

    def cache_key(self) -> tuple:
        return (self.organization_external_id, self.domain, self.email, self.erp_customer_id)


class TTLCache:
    """A small thread-safe cache whose entries expire ``ttl`` seconds after they are stored."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic, max_size=10_000):
        self.ttl = ttl
        self.clock = clock
        self.max_size = max_size
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        """Return ``(True, value)`` for a live entry, ``(False, None)`` otherwise."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return False, None
            stored_at, value = item
            if self.clock() - stored_at >= self.ttl:
                del self._items[key]
                return False, None
            return True, value

    def put(self, key: Any, value: Any) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._items) >= self.max_size:
                # Drop the oldest entry; dicts keep insertion order.
                self._items.pop(next(iter(self._items)))
            self._items[key] = (self.clock(), value)


class CircuitBreaker:
    """Stops calling a source after ``failure_threshold`` failures in a row.

    Open, it rejects calls for ``reset_seconds``; then one trial call is let through
    (half-open). A success closes the breaker, a failure opens it again.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self,
        name: str,
        failure_threshold: int = DEFAULT_BREAKER_FAILURES,
        reset_seconds: float = DEFAULT_BREAKER_RESET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_running = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return self.CLOSED
        if self.clock() - self.opened_at >= self.reset_seconds:
            return self.HALF_OPEN
        return self.OPEN

    def allow(self) -> bool:
        """Return whether a call may go out now; in half-open state only one may."""
        with self._lock:
            state = self.state
            if state == self.CLOSED:
                return True
            if state == self.HALF_OPEN and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def record_success(self) -> None:
        with self._lock:
            if self.opened_at is not None:
                log.info("%s circuit breaker closed after a successful trial call", self.name)
            self.failures = 0
            self.opened_at = None
            self._trial_running = False

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            trial = self._trial_running
            self._trial_running = False
            if trial or self.failures >= self.failure_threshold:
                if self.opened_at is None or trial:
                    log.warning(
                        "%s circuit breaker opened after %d failure(s) in a row, for %.0f s",
                        self.name,
                        self.failures,
                        self.reset_seconds,
                    )
                self.opened_at = self.clock()

    def retry_in(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_seconds - (self.clock() - self.opened_at))


ENRICHMENT_OPTIONS = {
    "breaker_failures": int,
    "breaker_reset_seconds": float,
    "deadline_seconds": float,
}


def check_enrichment_options(policy_options: dict[str, Any]) -> None:
    """Validate the policy tables ``[salesforce]``, ``[netsuite]``, ``[businesscentral]``
    and ``[enrichment]`` without contacting anything; raise ``ValueError`` naming the
    table and option. Tables of sources that have no credentials are checked too.
    """
    from connectors.erp.businesscentral import BusinessCentralOptions
    from connectors.erp.netsuite import NetSuiteOptions
    from connectors.salesforce import SalesforceOptions

    parsers = {
        "salesforce": SalesforceOptions.from_dict,
        "netsuite": NetSuiteOptions.from_dict,
        "businesscentral": BusinessCentralOptions.from_dict,
    }
    for table, parse in parsers.items():
        value = policy_options.get(table)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ValueError(f"[{table}] must be a table")
        parse(value)
    tuning = policy_options.get("enrichment", {})
    if not isinstance(tuning, dict):
        raise ValueError("[enrichment] must be a table")
    for name, value in tuning.items():
        kind = ENRICHMENT_OPTIONS.get(name)
        if kind is None:
            raise ValueError(
                f"enrichment: unknown option {name!r}, expected one of "
                + ", ".join(ENRICHMENT_OPTIONS)
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"enrichment.{name}: expected a positive number, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ValueError(f"enrichment.{name}: expected a whole number, got {value!r}")


class LookupFailed(Exception):
    """One source's lookup failed; ``message`` is safe to show (no secrets, no bodies)."""

    def __init__(self, source: str, message: str):
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


class Enricher:
    """Builds the :class:`AccountContext` for a ticket from Salesforce and the ERP.

    Built by the app factory through :meth:`from_settings`; :meth:`enrich` is called by
    the pipeline for each new ticket, possibly from several worker threads at once.
    """

    def __init__(
        self,
        *,
        salesforce=None,
        erp=None,
        timeout: float = 2.0,
        cache_seconds: float = 300.0,
        breaker_failures: int = DEFAULT_BREAKER_FAILURES,
        breaker_reset_seconds: float = DEFAULT_BREAKER_RESET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        deadline_seconds: float | None = None,
    ):
        self.salesforce = salesforce
        self.erp = erp
        self.timeout = timeout
        # A source makes several requests per lookup, each with ``timeout``; the deadline
        # bounds the whole lookup so a slow source cannot hold the delivery.
        self.deadline_seconds = deadline_seconds if deadline_seconds is not None else 3 * timeout
        self.cache = TTLCache(cache_seconds, clock=clock)
        self.now = now
        self.breakers = {
            source.name: CircuitBreaker(
                source.name, breaker_failures, breaker_reset_seconds, clock=clock
            )
            for source in (salesforce, erp)
            if source is not None
        }
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="deskroute-enrich")

    @classmethod
    def from_settings(cls, settings, policy_options: dict | None = None) -> Enricher | None:
        """Build the enricher from settings and the parsed policy file; ``None`` when neither
        Salesforce nor an ERP is configured.

        The policy tables ``[salesforce]``, ``[netsuite]``, ``[businesscentral]`` and
        ``[enrichment]`` hold options that are not secrets (field names, breaker limits).
        """
        from connectors.erp import build_erp
        from connectors.salesforce import SalesforceConnector

        options = policy_options or {}
        check_enrichment_options(options)
        timeout = settings.enrichment_timeout_seconds
        salesforce = SalesforceConnector.from_settings(
            settings, options.get("salesforce", {}), timeout=timeout
        )
        erp = build_erp(settings, options, timeout=timeout)
        if salesforce is None and erp is None:
            return None
        tuning = options.get("enrichment", {})
        return cls(
            salesforce=salesforce,
            erp=erp,
            timeout=timeout,
            cache_seconds=settings.enrichment_cache_seconds,
            breaker_failures=tuning.get("breaker_failures", DEFAULT_BREAKER_FAILURES),
            breaker_reset_seconds=tuning.get(
                "breaker_reset_seconds", DEFAULT_BREAKER_RESET_SECONDS
            ),
            deadline_seconds=tuning.get("deadline_seconds"),
        )

    def enrich(self, ticket) -> AccountContext:
        """Return the account context for ``ticket``; failures are listed, never raised."""
        context = AccountContext()
        ticket_id = getattr(ticket, "id", None)
        try:
            hints = AccountHints.from_ticket(ticket)
            if self.salesforce is not None:
                self._from_salesforce(hints, context, ticket_id)
            if self.erp is not None:
                self._from_erp(hints, context, ticket_id)
            context.derive(self.now().date())
        except Exception as exc:
            # A bug in mapping code must not lose the delivery: record it and go on.
            log.exception("ticket %s: account enrichment failed unexpectedly", ticket_id)
            context.add_failure("enrichment", f"unexpected {type(exc).__name__}")
        return context

    def _from_salesforce(self, hints: AccountHints, context: AccountContext, ticket_id) -> None:
        source = self.salesforce
        today = self.now().date()
        try:
            match = self._lookup(
                source.name,
                ("match", hints.cache_key()),
                lambda: source.find_account(hints),
            )
            if match is None:
                log.info("ticket %s: no Salesforce account matches the requester", ticket_id)
                return
            details, at = self._lookup(
                source.name,
                ("account", match.account_id),
                lambda: (source.account_details(match, today), self._stamp()),
            )
        except LookupFailed as exc:
            log.warning("ticket %s: Salesforce lookup failed: %s", ticket_id, exc.message)
            context.add_failure(exc.source, exc.message)
            return
        context.apply(source.name, details, at)
        hints.erp_customer_id = details.get("erp_customer_id")
        hints.account_name = details.get("account_name")

    def _from_erp(self, hints: AccountHints, context: AccountContext, ticket_id) -> None:
        source = self.erp
        today = self.now().date()
        try:
            customer_id = self._lookup(
                source.name,
                ("match", hints.cache_key(), hints.account_name),
                lambda: source.find_customer(hints),
            )
            if customer_id is None:
                log.info("ticket %s: no %s customer matches the account", ticket_id, source.name)
                return
            facts, at = self._lookup(
                source.name,
                ("customer", customer_id),
                lambda: (source.account_facts(customer_id, today), self._stamp()),
            )
        except LookupFailed as exc:
            log.warning("ticket %s: %s lookup failed: %s", ticket_id, source.name, exc.message)
            context.add_failure(exc.source, exc.message)
            return
        context.apply(source.name, facts, at)

    def _stamp(self) -> str:
        return self.now().isoformat(timespec="seconds")

    def _lookup(self, source: str, key: tuple, call: Callable[[], Any]) -> Any:
        """Run ``call`` for ``source`` through the cache, the breaker and the deadline."""
        hit, value = self.cache.get((source, key))
        if hit:
            return value
        breaker = self.breakers[source]
        if not breaker.allow():
            raise LookupFailed(
                source,
                f"circuit breaker open after {breaker.failures} failures in a row, "
                f"next try in {breaker.retry_in():.0f} s",
            )
        future = self._pool.submit(call)
        try:
            value = future.result(timeout=self.deadline_seconds)
        except FutureTimeout:
            breaker.record_failure()
            raise LookupFailed(source, f"timed out after {self.deadline_seconds:g} s") from None
        except ConnectorError as exc:
            breaker.record_failure()
            raise LookupFailed(source, f"{type(exc).__name__}: {exc.message}") from exc
        except Exception as exc:
            breaker.record_failure()
            log.exception("%s lookup raised an unexpected error", source)
            raise LookupFailed(source, f"unexpected {type(exc).__name__}") from exc
        breaker.record_success()
        self.cache.put((source, key), value)
        return value

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
