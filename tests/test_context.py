"""Enricher: Salesforce and ERP merged into one AccountContext, with the cache, the circuit
breakers, the deadline and degraded results when a source fails."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses

from connectors.base import ConnectorUnavailable
from connectors.erp import build_erp
from connectors.salesforce import SalesforceConnector
from plugin.config import Secret, Settings
from plugin.context import (
    AccountContext,
    CircuitBreaker,
    Enricher,
    Entitlement,
    FieldSource,
    Project,
    Renewal,
    TTLCache,
    check_enrichment_options,
)
from plugin.tickets import Party, Ticket

FIXTURES = Path(__file__).parent / "fixtures"
QUERY_URL = "https://acme.my.salesforce.com/services/data/v59.0/query/"
TENANT = "contoso.onmicrosoft.com"
COMPANY = "9c4f2ddc-9e75-ea11-bbf0-000d3a38a583"
CUSTOMER = "f3a5738a-44e3-ea11-bb43-000d3a2feca1"
BC_TOKEN_URL = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
BC_COMPANY = (
    f"https://api.businesscentral.dynamics.com/v2.0/{TENANT}/production/api/v2.0/"
    f"companies({COMPANY})"
)
NOW = datetime(2026, 12, 4, 9, 30, tzinfo=UTC)
SALESFORCE_OPTIONS = {
    "external_id_field": "Zendesk_Org_Id__c",
    "tier_field": "Tier__c",
    "delivery_manager_field": "Delivery_Manager__r.Name",
    "erp_id_field": "ERP_Customer_Id__c",
    "account_fields": ["Industry"],
    "sla": {"Premium Support": {"first_response_minutes": 30, "priority": "urgent"}},
}


def fixture(source: str, name: str):
    return json.loads((FIXTURES / source / name).read_text())


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings() -> Settings:
    return Settings(
        salesforce_session_id=Secret("00D5g000004Example!Session"),
        salesforce_instance_url="https://acme.my.salesforce.com",
        erp="businesscentral",
        businesscentral_tenant_id=TENANT,
        businesscentral_company_id=COMPANY,
        businesscentral_client_id="00000000-aaaa-4bbb-8ccc-000000000001",
        businesscentral_client_secret=Secret("bc-client-secret-value"),
    )


def enricher(clock=None, **kwargs) -> Enricher:
    config = settings()
    return Enricher(
        salesforce=SalesforceConnector.from_settings(config, SALESFORCE_OPTIONS, timeout=2.0),
        erp=build_erp(config, {}, timeout=2.0),
        clock=clock or Clock(),
        now=lambda: NOW,
        **kwargs,
    )


def ticket(**organization) -> Ticket:
    return Ticket(
        helpdesk="zendesk",
        id="4242",
        subject="Cannot sign in at the Lyon plant",
        requester=Party(id="1", email="jane@northwind.example"),
        organization=Party(id="9", **organization),
    )


def soql(*fragments):
    def match(request):
        query = parse_qs(urlparse(request.url).query).get("q", [""])[0]
        return all(f in query for f in fragments), f"SOQL {query!r}"

    return [match]


def add_salesforce(rsps):
    """Register the queries of one successful Salesforce lookup (match by external id)."""
    rsps.add(
        responses.GET,
        QUERY_URL,
        json=fixture("salesforce", "query_account__external_id.json"),
        match=soql("Zendesk_Org_Id__c = '360001'"),
    )
    for fragment, name in (
        ("FROM Account WHERE Id", "query_account_details.json"),
        ("FROM Entitlement", "query_entitlements.json"),
        ("FROM ServiceContract", "query_service_contracts.json"),
        ("FROM Opportunity", "query_opportunities__renewal.json"),
        ("COUNT() FROM Case", "query_cases__count.json"),
    ):
        rsps.add(responses.GET, QUERY_URL, json=fixture("salesforce", name), match=soql(fragment))


def add_businesscentral(rsps, customer_filter="number eq 'CUST-1001'"):
    rsps.add(responses.POST, BC_TOKEN_URL, json=fixture("businesscentral", "token.json"))

    def filter_is(request):
        value = parse_qs(urlparse(request.url).query).get("$filter", [""])[0]
        return value == customer_filter, f"$filter {value!r}"

    rsps.add(
        responses.GET,
        f"{BC_COMPANY}/customers",
        json=fixture("businesscentral", "customers__by_number.json"),
        match=[filter_is],
    )
    rsps.add(
        responses.GET,
        f"{BC_COMPANY}/customers({CUSTOMER})",
        json=fixture("businesscentral", "customer.json"),
    )
    rsps.add(
        responses.GET,
        f"{BC_COMPANY}/salesInvoices",
        json=fixture("businesscentral", "sales_invoices__open.json"),
    )


def test_enrich_merges_salesforce_and_erp():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_salesforce(rsps)
        add_businesscentral(rsps)
        context = enricher().enrich(ticket(external_id="360001"))

    assert context.failures == []
    assert context.account_id == "0015g00000NorthAAA"
    assert context.matched_by == "external_id"
    assert context.tier == "Premium"
    assert context.delivery_manager == "Dana Delivery"
    assert context.sla_priority == "urgent"
    assert context.first_response_minutes == 30.0
    assert context.renewal.stage == "Negotiation/Review"
    assert context.days_to_renewal == 14
    assert context.open_cases == 3
    assert context.erp_customer_id == "CUST-1001"
    assert context.billing_hold is True
    assert context.overdue_invoices == 2
    assert context.overdue_amount == 15700.5
    stamp = NOW.isoformat(timespec="seconds")
    assert context.sources["tier"] == FieldSource("salesforce", stamp)
    assert context.sources["sla_priority"] == FieldSource("salesforce", stamp)
    assert context.sources["overdue_invoices"] == FieldSource("businesscentral", stamp)
    assert "disputed_invoices" not in context.sources
    assert context.disputed_invoices is None
    summary = context.summary()
    assert "Northwind Foods (Premium)" in summary
    assert "delivery manager Dana Delivery" in summary
    assert "2 overdue invoice(s)" in summary


def test_second_ticket_is_served_from_cache():
    clock = Clock()
    enrich = enricher(clock, cache_seconds=300)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_salesforce(rsps)
        add_businesscentral(rsps)
        first = enrich.enrich(ticket(external_id="360001"))
        calls = len(rsps.calls)
        clock.now += 299
        second = enrich.enrich(ticket(external_id="360001"))
        assert len(rsps.calls) == calls
    assert second.failures == []
    assert second.to_dict() == first.to_dict()


def test_cache_expires_after_ttl():
    clock = Clock()
    enrich = enricher(clock, cache_seconds=300)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_salesforce(rsps)
        add_businesscentral(rsps)
        enrich.enrich(ticket(external_id="360001"))
        calls = len(rsps.calls)
        clock.now += 301
        enrich.enrich(ticket(external_id="360001"))
        # The BC token is still valid; every other lookup is sent again.
        assert len(rsps.calls) == 2 * calls - 1


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, "error__invalid_session.json", "ConnectorUnauthorized"),
        (404, "error__not_found.json", "ConnectorNotFound"),
        (500, "error__server.json", "ConnectorUnavailable"),
        (None, None, "ConnectorTimeout"),
    ],
)
def test_salesforce_failure_degrades_and_erp_still_answers(status, body, expected):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        if status is None:
            rsps.add(responses.GET, QUERY_URL, body=requests.exceptions.ReadTimeout("slow"))
        else:
            rsps.add(responses.GET, QUERY_URL, json=fixture("salesforce", body), status=status)
        # Without Salesforce's ERP id the ERP is matched by the requester's domain.
        add_businesscentral(rsps, customer_filter="endswith(email,'@northwind.example')")
        context = enricher().enrich(ticket())

    assert len(context.failures) == 1
    assert context.failures[0]["source"] == "salesforce"
    assert context.failures[0]["error"].startswith(expected)
    assert "00D5g000004Example" not in context.failures[0]["error"]
    assert context.tier is None
    assert context.account_id is None
    assert context.overdue_invoices == 2
    assert "unavailable: salesforce" in context.summary()


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "ConnectorUnauthorized"), (404, "ConnectorNotFound"), (503, "ConnectorUnavailable")],
)
def test_erp_failure_degrades_and_keeps_salesforce(status, expected):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_salesforce(rsps)
        rsps.add(responses.POST, BC_TOKEN_URL, json=fixture("businesscentral", "token.json"))
        rsps.add(
            responses.GET,
            f"{BC_COMPANY}/customers",
            json=fixture("businesscentral", "error__not_found.json"),
            status=status,
        )
        context = enricher().enrich(ticket(external_id="360001"))

    assert [failure["source"] for failure in context.failures] == ["businesscentral"]
    assert context.failures[0]["error"].startswith(expected)
    assert context.tier == "Premium"
    assert context.overdue_invoices is None
    assert "overdue_invoices" not in context.sources


def test_erp_timeout_degrades():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_salesforce(rsps)
        rsps.add(responses.POST, BC_TOKEN_URL, body=requests.exceptions.ConnectTimeout("no answer"))
        context = enricher().enrich(ticket(external_id="360001"))
    assert context.failures == [
        {
            "source": "businesscentral",
            "error": "ConnectorTimeout: businesscentral did not respond in time: no answer",
        }
    ]


def test_no_account_match_is_not_a_failure():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(responses.GET, QUERY_URL, json=fixture("salesforce", "query__empty.json"))
        rsps.add(responses.POST, BC_TOKEN_URL, json=fixture("businesscentral", "token.json"))
        rsps.add(
            responses.GET,
            f"{BC_COMPANY}/customers",
            json=fixture("businesscentral", "customers__empty.json"),
        )
        context = enricher().enrich(ticket())
    assert context.failures == []
    assert context.found is False
    assert context.summary() == ""


class SlowSource:
    name = "salesforce"

    def __init__(self):
        self.release = threading.Event()

    def find_account(self, hints):
        self.release.wait(5)


def test_deadline_bounds_a_hanging_source():
    source = SlowSource()
    enrich = Enricher(salesforce=source, deadline_seconds=0.05, now=lambda: NOW)
    started = time.monotonic()
    context = enrich.enrich(ticket())
    elapsed = time.monotonic() - started
    source.release.set()
    assert elapsed < 1.0
    assert context.failures == [{"source": "salesforce", "error": "timed out after 0.05 s"}]


class BrokenSource:
    name = "salesforce"

    def find_account(self, hints):
        raise KeyError("Id")


def test_unexpected_error_is_listed_not_raised():
    context = Enricher(salesforce=BrokenSource(), now=lambda: NOW).enrich(ticket())
    assert context.failures == [{"source": "salesforce", "error": "unexpected KeyError"}]


class FlakySource:
    name = "salesforce"

    def __init__(self):
        self.calls = 0
        self.fail = True

    def find_account(self, hints):
        self.calls += 1
        if self.fail:
            raise ConnectorUnavailable("salesforce returned 503", source="salesforce")
        return None


def test_breaker_opens_and_closes():
    clock = Clock()
    source = FlakySource()
    enrich = Enricher(
        salesforce=source,
        breaker_failures=3,
        breaker_reset_seconds=60,
        cache_seconds=0,
        clock=clock,
        now=lambda: NOW,
    )
    for _ in range(3):
        assert enrich.enrich(ticket()).failures[0]["error"].startswith("ConnectorUnavailable")
    assert source.calls == 3

    # Open: no call goes out and the reason gives the time of the next try.
    context = enrich.enrich(ticket())
    assert source.calls == 3
    assert context.failures == [
        {
            "source": "salesforce",
            "error": "circuit breaker open after 3 failures in a row, next try in 60 s",
        }
    ]

    # Half-open after the reset time: one trial; a failure opens the breaker again.
    clock.now += 60
    enrich.enrich(ticket())
    assert source.calls == 4
    enrich.enrich(ticket())
    assert source.calls == 4

    # The next trial succeeds and closes the breaker.
    clock.now += 60
    source.fail = False
    assert enrich.enrich(ticket()).failures == []
    assert enrich.enrich(ticket()).failures == []
    assert source.calls == 6
    assert enrich.breakers["salesforce"].state == CircuitBreaker.CLOSED


def test_breaker_real_http_stops_requests():
    clock = Clock()
    config = settings()
    enrich = Enricher(
        salesforce=SalesforceConnector.from_settings(config, SALESFORCE_OPTIONS, timeout=2.0),
        breaker_failures=2,
        breaker_reset_seconds=30,
        clock=clock,
        now=lambda: NOW,
    )
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(
            responses.GET, QUERY_URL, json=fixture("salesforce", "error__server.json"), status=503
        )
        for _ in range(4):
            enrich.enrich(ticket(external_id="360001"))
        assert len(rsps.calls) == 2


def test_half_open_lets_one_trial_through():
    clock = Clock()
    breaker = CircuitBreaker("erp", failure_threshold=1, reset_seconds=10, clock=clock)
    breaker.record_failure()
    assert breaker.state == CircuitBreaker.OPEN
    assert breaker.allow() is False
    clock.now += 10
    assert breaker.state == CircuitBreaker.HALF_OPEN
    assert breaker.allow() is True
    assert breaker.allow() is False
    breaker.record_success()
    assert breaker.allow() is True


def test_ttl_cache_evicts_oldest_at_max_size():
    cache = TTLCache(60, clock=Clock(), max_size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert cache.get("a") == (False, None)
    assert cache.get("c") == (True, 3)


def test_from_settings_without_sources_is_none():
    assert Enricher.from_settings(Settings(), {}) is None


def test_from_settings_reads_policy_tables():
    enrich = Enricher.from_settings(
        settings(),
        {
            "salesforce": {"tier_field": "Tier__c"},
            "businesscentral": {"match_field": "number"},
            "enrichment": {"breaker_failures": 2, "deadline_seconds": 4},
        },
    )
    assert enrich.salesforce.options.tier_field == "Tier__c"
    assert enrich.erp.name == "businesscentral"
    assert enrich.breakers["salesforce"].failure_threshold == 2
    assert enrich.deadline_seconds == 4
    assert enrich.timeout == 2.0


def test_context_round_trips_through_dict():
    context = AccountContext(
        account_id="001",
        tier="Premium",
        entitlements=[Entitlement(id="550", start_date=date(2026, 1, 1), sla_priority="high")],
        renewal=Renewal(id="006", close_date=date(2026, 12, 18)),
        projects=[Project(id="801", go_live_date=date(2026, 12, 5))],
        oldest_overdue_date=date(2026, 10, 15),
        sources={"tier": FieldSource("salesforce", "2026-12-04T09:30:00+00:00")},
        failures=[{"source": "netsuite", "error": "timed out after 6 s"}],
    )
    context.derive(date(2026, 12, 4))
    data = context.to_dict()
    assert data["renewal"]["close_date"] == "2026-12-18"
    assert data["project"]["go_live_date"] == "2026-12-05"
    assert json.loads(json.dumps(data)) == data
    assert AccountContext.from_dict(data) == context


def test_apply_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown account field"):
        AccountContext().apply("salesforce", {"tierr": "x"}, "now")


def test_main_project_is_the_next_date():
    context = AccountContext(
        projects=[
            Project(id="late", go_live_date=date(2027, 3, 1)),
            Project(id="past", go_live_date=date(2026, 1, 1)),
            Project(id="soon", next_milestone_date=date(2026, 12, 10)),
        ]
    )
    context.derive(date(2026, 12, 4))
    assert context.project.id == "soon"
    assert context.days_to_go_live is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"salesforce": {"tier_field": "Tier c"}}, "salesforce.tier_field"),
        ({"netsuite": {"go_live_field": "x y"}}, "netsuite.go_live_field"),
        ({"businesscentral": {"nope": 1}}, "businesscentral: unknown option"),
        ({"salesforce": "Tier__c"}, r"\[salesforce\] must be a table"),
        ({"enrichment": {"breaker_failures": 0}}, "enrichment.breaker_failures"),
        ({"enrichment": {"breaker_failures": 2.5}}, "whole number"),
        ({"enrichment": {"timeout": 1}}, "enrichment: unknown option 'timeout'"),
    ],
)
def test_invalid_policy_tables_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        check_enrichment_options(options)


def test_valid_policy_tables_pass():
    check_enrichment_options(
        {
            "salesforce": {"tier_field": "Tier__c"},
            "netsuite": {"go_live_field": "custentity_go_live"},
            "enrichment": {"breaker_failures": 3, "deadline_seconds": 2.5},
        }
    )
