"""Business Central connector against ``responses`` mocks of the Microsoft Entra token
endpoint and the API v2.0 OData endpoints, in the formats Microsoft documents."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests
import responses
from responses import matchers

from connectors.base import (
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnauthorized,
    ConnectorUnavailable,
)
from connectors.erp import build_erp
from connectors.erp.businesscentral import BusinessCentralOptions
from plugin.config import Secret, Settings
from plugin.context import AccountHints, Project

FIXTURES = Path(__file__).parent / "fixtures" / "businesscentral"
TENANT = "contoso.onmicrosoft.com"
COMPANY = "9c4f2ddc-9e75-ea11-bbf0-000d3a38a583"
CUSTOMER = "f3a5738a-44e3-ea11-bb43-000d3a2feca1"
TOKEN_URL = f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
API = f"https://api.businesscentral.dynamics.com/v2.0/{TENANT}/production"
COMPANY_URL = f"{API}/api/v2.0/companies({COMPANY})"
PROJECTS_URL = f"{API}/api/contoso/projects/v1.0/companies({COMPANY})/customerProjects"
TODAY = date(2026, 12, 4)
PROJECT_OPTIONS = {
    "projects_path": "api/contoso/projects/v1.0/companies({company})/customerProjects",
    "project_customer_field": "billToCustomerNumber",
    "project_phase_field": "phase",
    "project_go_live_field": "goLiveDate",
    "project_business_critical_field": "businessCritical",
    "project_milestone_field": "nextMilestone",
    "project_milestone_date_field": "nextMilestoneDate",
    "project_manager_field": "projectManager",
}


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text())


def settings(**overrides) -> Settings:
    values = {
        "erp": "businesscentral",
        "businesscentral_tenant_id": TENANT,
        "businesscentral_company_id": COMPANY,
        "businesscentral_client_id": "00000000-aaaa-4bbb-8ccc-000000000001",
        "businesscentral_client_secret": Secret("bc-client-secret-value"),
    }
    values.update(overrides)
    return Settings(**values)


def connector(options=None):
    return build_erp(settings(), {"businesscentral": options or {}}, timeout=2.0)


def add_token(rsps, status=200, body="token.json"):
    return rsps.add(responses.POST, TOKEN_URL, json=fixture(body), status=status)


def test_missing_settings_are_named():
    with pytest.raises(ValueError, match="DESKROUTE_BUSINESSCENTRAL_CLIENT_SECRET"):
        build_erp(settings(businesscentral_client_secret=None), {}, timeout=2.0)


def test_company_id_must_be_guid():
    with pytest.raises(ValueError, match="not a GUID"):
        build_erp(settings(businesscentral_company_id="CRONUS"), {}, timeout=2.0)


def test_token_request_and_customer_match_by_number():
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        token = add_token(rsps)
        rsps.add(
            responses.GET,
            f"{COMPANY_URL}/customers",
            json=fixture("customers__by_number.json"),
            match=[
                matchers.query_param_matcher(
                    {"$filter": "number eq 'CUST-1001'", "$select": "id,number", "$top": "2"}
                ),
                matchers.header_matcher(
                    {"Authorization": f"Bearer {fixture('token.json')['access_token']}"}
                ),
            ],
        )
        customer = bc.find_customer(AccountHints(erp_customer_id="CUST-1001"))
        form = parse_qs(token.calls[0].request.body)

    assert customer == CUSTOMER
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": ["00000000-aaaa-4bbb-8ccc-000000000001"],
        "client_secret": ["bc-client-secret-value"],
        "scope": ["https://api.businesscentral.dynamics.com/.default"],
    }


def test_customer_match_falls_back_to_domain_then_email():
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.GET,
            f"{COMPANY_URL}/customers",
            json=fixture("customers__empty.json"),
            match=[
                matchers.query_param_matcher(
                    {
                        "$filter": "endswith(email,'@northwind.example')",
                        "$select": "id,number",
                        "$top": "2",
                    }
                )
            ],
        )
        rsps.add(
            responses.GET,
            f"{COMPANY_URL}/customers",
            json=fixture("customers__by_number.json"),
            match=[
                matchers.query_param_matcher(
                    {
                        "$filter": "email eq 'o''hara@northwind.example'",
                        "$select": "id,number",
                        "$top": "2",
                    }
                )
            ],
        )
        customer = bc.find_customer(
            AccountHints(email="o'hara@northwind.example", domain="northwind.example")
        )
    assert customer == CUSTOMER


def test_account_facts_mapping():
    bc = connector(PROJECT_OPTIONS)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.GET, f"{COMPANY_URL}/customers({CUSTOMER})", json=fixture("customer.json")
        )
        rsps.add(
            responses.GET,
            f"{COMPANY_URL}/salesInvoices",
            json=fixture("sales_invoices__open.json"),
            match=[
                matchers.query_param_matcher(
                    {
                        "$filter": f"customerId eq {CUSTOMER} and status eq 'Open'",
                        "$select": "id,number,dueDate,remainingAmount,currencyCode,status",
                    }
                )
            ],
        )
        rsps.add(
            responses.GET,
            PROJECTS_URL,
            json=fixture("projects__custom_api.json"),
            match=[
                matchers.query_param_matcher({"$filter": "billToCustomerNumber eq 'CUST-1001'"})
            ],
        )
        facts = bc.account_facts(CUSTOMER, TODAY)

    assert facts["erp_customer_id"] == "CUST-1001"
    assert facts["billing_hold"] is True
    assert facts["provisioning_hold"] is False
    assert facts["overdue_invoices"] == 2
    assert facts["overdue_amount"] == 15700.5
    assert facts["oldest_overdue_date"] == date(2026, 10, 15)
    assert "disputed_invoices" not in facts
    assert facts["projects"] == [
        Project(
            id="22d7a1c5-bde4-ea11-bbf2-00155df3a615",
            name="Plant Lyon cutover",
            phase="Cutover",
            status="Open",
            business_critical=True,
            go_live_date=date(2026, 12, 5),
            next_milestone="Go-live weekend",
            next_milestone_date=date(2026, 12, 5),
            manager="Dana Delivery",
        )
    ]


def test_projects_skipped_without_custom_api():
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.GET, f"{COMPANY_URL}/customers({CUSTOMER})", json=fixture("customer.json")
        )
        rsps.add(responses.GET, f"{COMPANY_URL}/salesInvoices", json={"value": []})
        facts = bc.account_facts(CUSTOMER, TODAY)
    assert "projects" not in facts
    assert facts["overdue_invoices"] == 0


def test_wrong_secret_is_unauthorized_without_the_secret():
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps, status=401, body="token__invalid_client.json")
        with pytest.raises(ConnectorUnauthorized) as caught:
            bc.find_customer(AccountHints(erp_customer_id="CUST-1001"))
    assert "AADSTS7000215" in caught.value.message
    assert "Trace ID" not in caught.value.message
    assert "bc-client-secret-value" not in caught.value.message


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, "error__not_found.json", ConnectorUnauthorized),
        (404, "error__not_found.json", ConnectorNotFound),
        (500, "error__server.json", ConnectorUnavailable),
        (503, "error__server.json", ConnectorUnavailable),
    ],
)
def test_api_errors_are_typed(status, body, error):
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.GET, f"{COMPANY_URL}/customers({CUSTOMER})", json=fixture(body), status=status
        )
        with pytest.raises(error) as caught:
            bc.account_facts(CUSTOMER, TODAY)
    assert caught.value.source == "businesscentral"
    assert caught.value.status == status


def test_throttling_is_rate_limited():
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.GET,
            f"{COMPANY_URL}/customers({CUSTOMER})",
            json=fixture("error__throttled.json"),
            status=429,
            headers={"Retry-After": "30"},
        )
        with pytest.raises(ConnectorRateLimited) as caught:
            bc.account_facts(CUSTOMER, TODAY)
    assert caught.value.retry_after == 30.0


def test_api_timeout_is_connector_timeout():
    bc = connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_token(rsps)
        rsps.add(
            responses.GET,
            f"{COMPANY_URL}/customers({CUSTOMER})",
            body=requests.exceptions.ReadTimeout("read timed out"),
        )
        with pytest.raises(ConnectorTimeout):
            bc.account_facts(CUSTOMER, TODAY)


def test_non_guid_customer_id_is_rejected():
    with pytest.raises(Exception, match="not a GUID"):
        connector().account_facts("10000') or (1 eq 1", TODAY)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"projects_path": "api/x/y/v1.0/projects"}, "project_customer_field"),
        ({"projects_path": "https://evil.example/x", "project_customer_field": "c"}, "API path"),
        ({"match_field": "number eq 1"}, "businesscentral.match_field"),
        ({"other": True}, "unknown option"),
    ],
)
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        BusinessCentralOptions.from_dict(options)
