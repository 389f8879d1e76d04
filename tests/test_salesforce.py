"""Salesforce connector against ``responses`` mocks of the REST query resource, the OAuth
token endpoint and the SOAP login call, in the formats Salesforce documents."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from responses import matchers

from connectors.base import (
    ConnectorBadRequest,
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnauthorized,
    ConnectorUnavailable,
)
from connectors.salesforce import AccountMatch, SalesforceConnector, SalesforceOptions
from plugin.config import Secret, Settings
from plugin.context import AccountHints, Contract, Entitlement, Renewal

FIXTURES = Path(__file__).parent / "fixtures" / "salesforce"
INSTANCE = "https://acme.my.salesforce.com"
QUERY_URL = f"{INSTANCE}/services/data/v59.0/query/"
TOKEN_URL = "https://login.salesforce.com/services/oauth2/token"
SOAP_URL = "https://login.salesforce.com/services/Soap/u/59.0"
ACCOUNT_ID = "0015g00000NorthAAA"

OPTIONS = {
    "external_id_field": "Zendesk_Org_Id__c",
    "tier_field": "Tier__c",
    "delivery_manager_field": "Delivery_Manager__r.Name",
    "erp_id_field": "ERP_Customer_Id__c",
    "account_fields": ["Industry"],
    "sla": {
        "Premium Support": {
            "first_response_minutes": 30,
            "resolution_minutes": 240,
            "priority": "urgent",
        }
    },
}


def fixture(name: str):
    text = (FIXTURES / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def soql_is(query: str):
    return matchers.query_param_matcher({"q": query})


def soql_contains(*fragments: str):
    def match(request):
        query = parse_qs(urlparse(request.url).query).get("q", [""])[0]
        missing = [fragment for fragment in fragments if fragment not in query]
        return not missing, f"SOQL {query!r} lacks {missing}"

    return match


@pytest.fixture(scope="module")
def private_key_file(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("salesforce") / "server.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path, key.public_key()


def session_connector(options=OPTIONS, timeout=2.0) -> SalesforceConnector:
    settings = Settings(
        salesforce_session_id=Secret("00D5g000004Example!SessionFromSettings"),
        salesforce_instance_url=INSTANCE,
    )
    return SalesforceConnector.from_settings(settings, options, timeout=timeout)


def add_query(rsps, body, *match, status=200):
    rsps.add(responses.GET, QUERY_URL, json=body, status=status, match=list(match))


def hints(**values) -> AccountHints:
    return AccountHints(**values)


# Credentials and login


def test_from_settings_without_credentials_is_none():
    assert SalesforceConnector.from_settings(Settings(), {}, timeout=2.0) is None


def test_jwt_bearer_login_posts_signed_assertion(private_key_file):
    path, public_key = private_key_file
    settings = Settings(
        salesforce_username="integration@northwind.example",
        salesforce_consumer_key="3MVG9ExampleConsumerKey",
        salesforce_private_key_file=str(path),
    )
    connector = SalesforceConnector.from_settings(settings, OPTIONS, timeout=2.0)
    assert connector.credentials["auth"] == "jwt"

    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        token = rsps.add(responses.POST, TOKEN_URL, json=fixture("oauth_token.json"))
        add_query(
            rsps,
            fixture("query_account__external_id.json"),
            soql_is("SELECT Id, Name FROM Account WHERE Zendesk_Org_Id__c = '360001' LIMIT 2"),
            matchers.header_matcher(
                {"Authorization": "Bearer 00D5g000004Example!AQ8AQExampleAccessTokenValue"}
            ),
        )
        match = connector.find_account(hints(organization_external_id="360001"))

    form = parse_qs(token.calls[0].request.body)
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    claims = jwt.decode(
        form["assertion"][0],
        public_key,
        algorithms=["RS256"],
        audience="https://login.salesforce.com",
    )
    assert claims["iss"] == "3MVG9ExampleConsumerKey"
    assert claims["sub"] == "integration@northwind.example"
    assert match == AccountMatch(ACCOUNT_ID, "Northwind Foods", "external_id")


def test_password_login_uses_soap_login_call():
    settings = Settings(
        salesforce_username="integration@northwind.example",
        salesforce_password=Secret("correct horse"),
        salesforce_security_token=Secret("TOKEN123"),
    )
    connector = SalesforceConnector.from_settings(settings, OPTIONS, timeout=2.0)

    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        login = rsps.add(
            responses.POST,
            SOAP_URL,
            body=fixture("soap_login.xml"),
            content_type="text/xml",
            match=[matchers.header_matcher({"SOAPAction": "login"}, strict_match=False)],
        )
        add_query(
            rsps,
            fixture("query__empty.json"),
            matchers.header_matcher(
                {"Authorization": "Bearer 00D5g000004Example!AQ8AQExampleSessionIdValue"}
            ),
        )
        connector.records("SELECT Id FROM Account LIMIT 1")

    body = login.calls[0].request.body
    body = body.decode() if isinstance(body, bytes) else body
    assert "<n1:username>integration@northwind.example</n1:username>" in body
    assert "<n1:password>correct horseTOKEN123</n1:password>" in body


def test_password_login_failure_is_unauthorized():
    settings = Settings(
        salesforce_username="integration@northwind.example",
        salesforce_password=Secret("wrong"),
        salesforce_security_token=Secret("TOKEN123"),
    )
    connector = SalesforceConnector.from_settings(settings, {}, timeout=2.0)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(
            responses.POST,
            SOAP_URL,
            body=fixture("soap_login__invalid_login.xml"),
            status=500,
            content_type="text/xml",
        )
        with pytest.raises(ConnectorUnauthorized) as caught:
            connector.records("SELECT Id FROM Account LIMIT 1")
    assert "INVALID_LOGIN" in caught.value.message
    assert "wrong" not in caught.value.message


def test_jwt_not_approved_is_unauthorized(private_key_file):
    path, _ = private_key_file
    settings = Settings(
        salesforce_username="integration@northwind.example",
        salesforce_consumer_key="3MVG9ExampleConsumerKey",
        salesforce_private_key_file=str(path),
    )
    connector = SalesforceConnector.from_settings(settings, {}, timeout=2.0)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(
            responses.POST, TOKEN_URL, json=fixture("oauth_token__invalid_grant.json"), status=400
        )
        with (
            pytest.warns(UserWarning),
            pytest.raises(ConnectorUnauthorized, match="invalid_grant"),
        ):
            connector.records("SELECT Id FROM Account LIMIT 1")


def test_missing_private_key_file_is_unauthorized(tmp_path):
    settings = Settings(
        salesforce_username="integration@northwind.example",
        salesforce_consumer_key="3MVG9ExampleConsumerKey",
        salesforce_private_key_file=str(tmp_path / "missing.key"),
    )
    connector = SalesforceConnector.from_settings(settings, {}, timeout=2.0)
    with pytest.raises(ConnectorUnauthorized, match="private key file"):
        connector.records("SELECT Id FROM Account LIMIT 1")


def test_session_id_auth_sends_no_login_call():
    connector = session_connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(
            rsps,
            fixture("query__empty.json"),
            matchers.header_matcher(
                {"Authorization": "Bearer 00D5g000004Example!SessionFromSettings"}
            ),
        )
        assert connector.records("SELECT Id FROM Account LIMIT 1") == []
        assert len(rsps.calls) == 1


def test_expired_session_relogin_retries_once():
    settings = Settings(
        salesforce_username="integration@northwind.example",
        salesforce_password=Secret("correct horse"),
        salesforce_security_token=Secret("TOKEN123"),
    )
    connector = SalesforceConnector.from_settings(settings, {}, timeout=2.0)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(responses.POST, SOAP_URL, body=fixture("soap_login.xml"), content_type="text/xml")
        rsps.add(responses.GET, QUERY_URL, json=fixture("error__invalid_session.json"), status=401)
        rsps.add(responses.GET, QUERY_URL, json=fixture("query__empty.json"))
        assert connector.records("SELECT Id FROM Account LIMIT 1") == []
        soap_calls = [call for call in rsps.calls if call.request.url == SOAP_URL]
        assert len(soap_calls) == 2


# Account matching


def test_match_by_external_id():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(
            rsps,
            fixture("query_account__external_id.json"),
            soql_is("SELECT Id, Name FROM Account WHERE Zendesk_Org_Id__c = '360001' LIMIT 2"),
        )
        match = session_connector().find_account(
            hints(organization_external_id="360001", domain="northwind.example")
        )
    assert match == AccountMatch(ACCOUNT_ID, "Northwind Foods", "external_id")


def test_match_by_domain_ignores_lookalike_hosts():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(
            rsps,
            fixture("query__empty.json"),
            soql_is("SELECT Id, Name FROM Account WHERE Zendesk_Org_Id__c = '999' LIMIT 2"),
        )
        add_query(
            rsps,
            fixture("query_account__domain.json"),
            soql_is(
                "SELECT Id, Name, Website FROM Account "
                "WHERE Website LIKE '%northwind.example%' LIMIT 20"
            ),
        )
        match = session_connector().find_account(
            hints(
                organization_external_id="999",
                email="jane@mail.northwind.example",
                domain="mail.northwind.example".removeprefix("mail."),
            )
        )
    assert match == AccountMatch(ACCOUNT_ID, "Northwind Foods", "domain")


def test_match_by_subdomain_of_website():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, fixture("query_account__domain.json"), soql_contains("LIKE"))
        match = session_connector().find_account(hints(domain="mail.northwind.example"))
    assert match is not None
    assert match.matched_by == "domain"


def test_match_by_contact_email_after_free_mail_domain():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(
            rsps,
            fixture("query_contact.json"),
            soql_is(
                "SELECT AccountId, Account.Name FROM Contact "
                "WHERE Email = 'jane.o\\'hara@gmail.com' AND AccountId != null LIMIT 5"
            ),
        )
        match = session_connector().find_account(
            hints(email="jane.o'hara@gmail.com", domain="gmail.com")
        )
        # gmail.com is a free mail domain, so no Account query by domain is sent.
        assert len(rsps.calls) == 1
    assert match == AccountMatch(ACCOUNT_ID, "Northwind Foods", "contact_email")


def test_no_match_returns_none():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, fixture("query__empty.json"), soql_contains("FROM Account"))
        add_query(rsps, fixture("query__empty.json"), soql_contains("FROM Contact"))
        match = session_connector().find_account(
            hints(email="someone@unknown.example", domain="unknown.example")
        )
    assert match is None


# Account details


def test_account_details_mapping():
    match = AccountMatch(ACCOUNT_ID, "Northwind Foods", "domain")
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(
            rsps,
            fixture("query_account_details.json"),
            soql_is(
                "SELECT Id, Name, Owner.Name, Tier__c, Delivery_Manager__r.Name, "
                f"ERP_Customer_Id__c, Industry FROM Account WHERE Id = '{ACCOUNT_ID}'"
            ),
        )
        add_query(
            rsps,
            fixture("query_entitlements.json"),
            soql_is(
                "SELECT Id, Name, Status, StartDate, EndDate, SlaProcess.Name FROM Entitlement "
                f"WHERE AccountId = '{ACCOUNT_ID}' AND Status = 'Active'"
            ),
        )
        add_query(
            rsps,
            fixture("query_service_contracts.json"),
            soql_contains("FROM ServiceContract", f"AccountId = '{ACCOUNT_ID}'"),
        )
        add_query(
            rsps,
            fixture("query_opportunities__renewal.json"),
            soql_is(
                "SELECT Id, Name, StageName, CloseDate, Amount FROM Opportunity "
                f"WHERE AccountId = '{ACCOUNT_ID}' AND IsClosed = false AND Type IN ('Renewal') "
                "ORDER BY CloseDate ASC LIMIT 1"
            ),
        )
        add_query(
            rsps,
            fixture("query_cases__count.json"),
            soql_is(
                f"SELECT COUNT() FROM Case WHERE AccountId = '{ACCOUNT_ID}' AND IsClosed = false"
            ),
        )
        details = session_connector().account_details(match, date(2026, 12, 4))

    assert details["account_id"] == ACCOUNT_ID
    assert details["account_name"] == "Northwind Foods"
    assert details["matched_by"] == "domain"
    assert details["tier"] == "Premium"
    assert details["account_owner"] == "Sam Owner"
    assert details["delivery_manager"] == "Dana Delivery"
    assert details["erp_customer_id"] == "CUST-1001"
    assert details["fields"] == {"Industry": "Food & Beverage"}
    assert details["entitlements"] == [
        Entitlement(
            id="5505g00000PremAAA",
            name="Premium Support 2026",
            status="Active",
            process="Premium Support",
            start_date=date(2026, 1, 1),
            end_date=date(2026, 12, 31),
            first_response_minutes=30.0,
            resolution_minutes=240.0,
            sla_priority="urgent",
        ),
        Entitlement(
            id="5505g00000StdAAA",
            name="Standard Phone Support",
            status="Active",
            start_date=date(2025, 6, 1),
        ),
    ]
    assert details["service_contracts"] == [
        Contract(
            id="8105g00000PremAAA",
            name="Premium Services Agreement",
            status="Active",
            start_date=date(2026, 1, 1),
            end_date=date(2026, 12, 31),
        )
    ]
    assert details["renewal"] == Renewal(
        id="0065g00000RenewAAA",
        name="Northwind Foods renewal 2027",
        stage="Negotiation/Review",
        close_date=date(2026, 12, 18),
        amount=184000.0,
    )
    assert details["open_cases"] == 3


def test_entitlement_target_fields_win_over_sla_table():
    options = dict(OPTIONS, first_response_field="First_Response_Minutes__c")
    body = fixture("query_entitlements.json")
    body["records"][0]["First_Response_Minutes__c"] = 15
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, body, soql_contains("SlaProcess.Name, First_Response_Minutes__c"))
        entitlements = session_connector(options)._entitlements(ACCOUNT_ID)
    assert entitlements[0].first_response_minutes == 15.0
    assert entitlements[0].resolution_minutes == 240.0


def test_no_renewal_gives_none():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, fixture("query__empty.json"), soql_contains("FROM Opportunity"))
        assert session_connector()._renewal(ACCOUNT_ID) is None


# Errors


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, "error__invalid_session.json", ConnectorUnauthorized),
        (404, "error__not_found.json", ConnectorNotFound),
        (400, "error__invalid_field.json", ConnectorBadRequest),
        (500, "error__server.json", ConnectorUnavailable),
        (503, "error__server.json", ConnectorUnavailable),
    ],
)
def test_query_errors_are_typed(status, body, error):
    connector = session_connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, fixture(body), status=status)
        with pytest.raises(error) as caught:
            connector.records("SELECT Id FROM Account WHERE Zendesk_Org__c = '1'")
    assert caught.value.source == "salesforce"
    assert caught.value.status == status
    assert fixture(body)[0]["errorCode"] in caught.value.message
    assert "SessionFromSettings" not in caught.value.message


def test_request_limit_is_rate_limited():
    connector = session_connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, fixture("error__request_limit.json"), status=403)
        with pytest.raises(ConnectorRateLimited) as caught:
            connector.records("SELECT Id FROM Account LIMIT 1")
    assert caught.value.retry_after == 60.0
    assert "REQUEST_LIMIT_EXCEEDED" in caught.value.message


def test_query_timeout_is_connector_timeout():
    connector = session_connector()
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(responses.GET, QUERY_URL, body=requests.exceptions.ReadTimeout("read timed out"))
        with pytest.raises(ConnectorTimeout):
            connector.records("SELECT Id FROM Account LIMIT 1")


def test_query_sends_configured_timeout():
    connector = session_connector(timeout=1.5)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_query(rsps, fixture("query__empty.json"))
        connector.records("SELECT Id FROM Account LIMIT 1")
        assert rsps.calls[0].request.req_kwargs["timeout"] == 1.5


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tier_field": "Tier__c; DELETE"}, "salesforce.tier_field"),
        ({"unknown": 1}, "unknown option"),
        ({"account_fields": ["Bad Field"]}, "salesforce.account_fields"),
        ({"sla": {"Gold": {"priority": "critical"}}}, "salesforce.sla.Gold.priority"),
    ],
)
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        SalesforceOptions.from_dict(options)
