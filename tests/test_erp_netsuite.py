"""NetSuite connector against ``responses`` mocks of the OAuth 2.0 token endpoint and the
SuiteQL REST query service, in the formats NetSuite documents."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from responses import matchers

from connectors.base import (
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnauthorized,
    ConnectorUnavailable,
)
from connectors.erp import build_erp
from connectors.erp.base import string_literal
from connectors.erp.netsuite import NetSuiteConnector, NetSuiteOptions, account_host
from plugin.config import Settings
from plugin.context import AccountHints, Project

FIXTURES = Path(__file__).parent / "fixtures" / "netsuite"
HOST = "https://1234567-sb1.suitetalk.api.netsuite.com"
TOKEN_URL = f"{HOST}/services/rest/auth/oauth2/v1/token"
SUITEQL_URL = f"{HOST}/services/rest/query/v1/suiteql"
TODAY = date(2026, 12, 4)
OPTIONS = {
    "disputed_field": "custbody_disputed",
    "provisioning_hold_field": "custentity_provisioning_hold",
    "phase_field": "custentity_phase",
    "go_live_field": "custentity_go_live",
    "business_critical_field": "custentity_business_critical",
}


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("netsuite") / "netsuite.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key.public_key()


@pytest.fixture
def settings(key_pair):
    path, _ = key_pair
    return Settings(
        erp="netsuite",
        netsuite_account_id="1234567_SB1",
        netsuite_client_id="ns-client-id-example",
        netsuite_certificate_id="cert-id-example",
        netsuite_private_key_file=str(path),
    )


@pytest.fixture
def connector(settings) -> NetSuiteConnector:
    return build_erp(settings, {"netsuite": OPTIONS}, timeout=2.0)


def suiteql(rsps, body, query: str | None = None, status=200, contains: str | None = None):
    match = [
        matchers.header_matcher({"Prefer": "transient"}, strict_match=False),
        matchers.query_param_matcher({"limit": "1000", "offset": "0"}),
    ]
    if query is not None:
        match.append(matchers.json_params_matcher({"q": query}))
    if contains is not None:

        def body_contains(request):
            text = json.loads(request.body)["q"]
            return contains in text, f"SuiteQL {text!r} lacks {contains!r}"

        match.append(body_contains)
    rsps.add(responses.POST, SUITEQL_URL, json=body, status=status, match=match)


def add_token(rsps, status=200, body="token.json"):
    return rsps.add(responses.POST, TOKEN_URL, json=fixture(body), status=status)


def test_account_host_lowercases_sandbox_suffix():
    assert account_host("1234567_SB1") == "1234567-sb1"


def test_string_literal_doubles_single_quotes():
    assert string_literal("O'Hara") == "'O''Hara'"


def test_missing_settings_are_named():
    with pytest.raises(ValueError, match="DESKROUTE_NETSUITE_CLIENT_ID"):
        build_erp(Settings(erp="netsuite", netsuite_account_id="1"), {}, timeout=2.0)


def test_token_request_carries_signed_assertion(connector, key_pair):
    _, public_key = key_pair
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        token = add_token(rsps)
        suiteql(
            rsps,
            fixture("suiteql_customer.json"),
            "SELECT id FROM customer WHERE entityid = 'CUST-1001'",
        )
        customer = connector.find_customer(AccountHints(erp_customer_id="CUST-1001"))
        api_call = rsps.calls[1].request
        assert (
            api_call.headers["Authorization"] == f"Bearer {fixture('token.json')['access_token']}"
        )

    assert customer == "4711"
    form = parse_qs(token.calls[0].request.body)
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ]
    assertion = form["client_assertion"][0]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "PS256"
    assert header["kid"] == "cert-id-example"
    assert header["typ"] == "JWT"
    claims = jwt.decode(assertion, public_key, algorithms=["PS256"], audience=TOKEN_URL)
    assert claims["iss"] == "ns-client-id-example"
    assert claims["scope"] == "rest_webservices"
    assert 0 < claims["exp"] - claims["iat"] <= 3600


def test_token_is_reused_between_queries(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        token = add_token(rsps)
        suiteql(rsps, fixture("suiteql__empty.json"))
        connector.suiteql("SELECT id FROM customer WHERE id = 1")
        connector.suiteql("SELECT id FROM customer WHERE id = 2")
        assert len(token.calls) == 1


def test_rejected_token_is_renewed_once(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        token = add_token(rsps)
        rsps.add(responses.POST, SUITEQL_URL, json=fixture("error__invalid_login.json"), status=401)
        suiteql(rsps, fixture("suiteql__empty.json"))
        assert connector.suiteql("SELECT id FROM customer WHERE id = 1") == []
        assert len(token.calls) == 2


def test_token_refused_is_unauthorized(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps, status=401, body="token__invalid_client.json")
        with pytest.raises(ConnectorUnauthorized, match="invalid_client") as caught:
            connector.find_customer(AccountHints(erp_customer_id="CUST-1001"))
    assert caught.value.source == "netsuite"


def test_find_customer_by_domain_then_email(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        suiteql(
            rsps,
            fixture("suiteql__empty.json"),
            "SELECT id FROM customer WHERE isinactive = 'F' AND "
            "LOWER(email) LIKE '%@northwind.example'",
        )
        suiteql(
            rsps,
            fixture("suiteql_customer.json"),
            "SELECT id FROM customer WHERE isinactive = 'F' AND "
            "LOWER(email) = 'jane@northwind.example'",
        )
        customer = connector.find_customer(
            AccountHints(email="jane@northwind.example", domain="northwind.example")
        )
    assert customer == "4711"


def test_find_customer_skips_free_mail_domain(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        suiteql(rsps, fixture("suiteql__empty.json"), contains="LOWER(email) = 'jane@gmail.com'")
        assert (
            connector.find_customer(AccountHints(email="jane@gmail.com", domain="gmail.com"))
            is None
        )
        assert len(rsps.calls) == 2


def test_account_facts_mapping(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        suiteql(
            rsps,
            fixture("suiteql_holds.json"),
            "SELECT id, creditholdoverride, custentity_provisioning_hold "
            "FROM customer WHERE id = 4711",
        )
        suiteql(
            rsps,
            fixture("suiteql_invoices.json"),
            "SELECT id, tranid, TO_CHAR(duedate, 'YYYY-MM-DD') AS duedate, "
            "foreignamountunpaid, custbody_disputed FROM transaction "
            "WHERE type = 'CustInvc' AND entity = 4711 AND foreignamountunpaid > 0",
        )
        suiteql(rsps, fixture("suiteql_projects.json"), contains="FROM job WHERE customer = 4711")
        suiteql(
            rsps,
            fixture("suiteql_milestones.json"),
            "SELECT project, title, TO_CHAR(enddate, 'YYYY-MM-DD') AS enddate FROM projecttask "
            "WHERE project IN (801, 802) AND ismilestone = 'T' AND status <> 'COMPLETE' "
            "ORDER BY enddate",
        )
        facts = connector.account_facts("4711", TODAY)

    assert facts["erp_customer_id"] == "4711"
    assert facts["billing_hold"] is True
    assert facts["provisioning_hold"] is False
    assert facts["overdue_invoices"] == 2
    assert facts["overdue_amount"] == 15700.5
    assert facts["oldest_overdue_date"] == date(2026, 10, 15)
    assert facts["disputed_invoices"] == 1
    assert facts["disputed_amount"] == 12500.0
    assert "erp_contracts" not in facts
    assert facts["projects"] == [
        Project(
            id="801",
            name="Plant Lyon cutover",
            phase="Cutover",
            status="In Progress",
            business_critical=True,
            go_live_date=date(2026, 12, 5),
            next_milestone="Go-live weekend",
            next_milestone_date=date(2026, 12, 5),
            manager="Dana Delivery",
        ),
        Project(
            id="802",
            name="Payroll rollout phase 2",
            phase="Build",
            status="In Progress",
            business_critical=False,
            go_live_date=date(2027, 3, 1),
            next_milestone="Integration test",
            next_milestone_date=date(2027, 1, 15),
            manager="Lee Projects",
        ),
    ]


def test_contracts_read_from_configured_table(settings):
    connector = build_erp(settings, {"netsuite": {"contracts_table": "subscription"}}, timeout=2.0)
    body = fixture("suiteql__empty.json")
    body["items"] = [
        {
            "links": [],
            "id": "31",
            "name": "Premium 2026",
            "status": "Active",
            "startdate": "2026-01-01",
            "enddate": "2026-12-31",
        }
    ]
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        suiteql(rsps, body, contains="FROM subscription WHERE customer = 4711")
        contracts = connector._contracts("4711")
    assert contracts[0].id == "31"
    assert contracts[0].end_date == date(2026, 12, 31)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, "error__invalid_login.json", ConnectorUnauthorized),
        (404, "suiteql__empty.json", ConnectorNotFound),
        (500, "error__server.json", ConnectorUnavailable),
    ],
)
def test_suiteql_errors_are_typed(connector, status, body, error):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        add_token(rsps)
        rsps.add(responses.POST, SUITEQL_URL, json=fixture(body), status=status)
        with pytest.raises(error) as caught:
            connector.suiteql("SELECT id FROM customer WHERE id = 1")
    assert caught.value.source == "netsuite"
    assert caught.value.status == status


def test_concurrency_limit_is_rate_limited(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.POST,
            SUITEQL_URL,
            json=fixture("error__concurrency.json"),
            status=429,
            headers={"Retry-After": "5"},
        )
        with pytest.raises(ConnectorRateLimited) as caught:
            connector.suiteql("SELECT id FROM customer WHERE id = 1")
    assert caught.value.retry_after == 5.0


def test_suiteql_timeout_is_connector_timeout(connector):
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(responses.POST, SUITEQL_URL, body=requests.exceptions.ConnectTimeout("timed out"))
        with pytest.raises(ConnectorTimeout):
            connector.suiteql("SELECT id FROM customer WHERE id = 1")


def test_non_numeric_customer_id_is_rejected(connector):
    with pytest.raises(Exception, match="not an internal id"):
        connector.account_facts("1 OR 1=1", TODAY)


def test_invalid_column_option_is_rejected():
    with pytest.raises(ValueError, match="netsuite.disputed_field"):
        NetSuiteOptions.from_dict({"disputed_field": "x; DROP"})
