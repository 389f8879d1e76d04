"""The three account-context scenarios end to end: a Zendesk webhook in, Salesforce and the
ERP asked, rules applied, the write-back and the decision log checked.

Zendesk, Salesforce, NetSuite and Business Central are mocked with ``responses`` in their
documented wire formats. Dates in the fixtures are moved relative to today, because the
enricher compares them with the current date.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from responses import matchers

from connectors.zendesk import ZendeskConnector
from plugin import create_app
from plugin.store import DONE

from conftest import FIXTURES, bearer, load_fixture, make_settings, post_zendesk

SUBDOMAIN = "example"
TOKEN = "zendesk-api-token-value"
ZENDESK = f"https://{SUBDOMAIN}.zendesk.com/api/v2"
SOQL_URL = "https://acme.my.salesforce.com/services/data/v59.0/query/"
NETSUITE = "https://1234567.suitetalk.api.netsuite.com"
TENANT = "contoso.onmicrosoft.com"
COMPANY = "9c4f2ddc-9e75-ea11-bbf0-000d3a38a583"
BC_CUSTOMER = "f3a5738a-44e3-ea11-bb43-000d3a2feca1"
BC_API = f"https://api.businesscentral.dynamics.com/v2.0/{TENANT}/production"
BC_COMPANY = f"{BC_API}/api/v2.0/companies({COMPANY})"
GROUPS = {
    "Access": 360000000101,
    "Administrative rights": 360000000102,
    "Hardware": 360000000103,
    "HR Support": 360000000104,
    "Internal Project": 360000000105,
    "Miscellaneous": 360000000106,
    "Purchase": 360000000107,
    "Storage": 360000000108,
    "Identity Engineering": 360000000201,
    "Integration Engineering": 360000000202,
    "Billing Operations": 360000000203,
}
SALESFORCE_TABLE = """
[salesforce]
external_id_field = "Zendesk_Org_Id__c"
tier_field = "Tier__c"
delivery_manager_field = "Delivery_Manager__r.Name"
erp_id_field = "ERP_Customer_Id__c"

[salesforce.sla."Premium Support"]
first_response_minutes = 30
priority = "high"
"""
RULES = r'''
[[rules]]
name = "go-live weekend"
condition = """prediction.queue == 'Access' and account.tier == 'Premium'
  and (account.project&.business_critical ?? false)
  and (account.days_to_go_live ?? 99) <= 3"""
force_queue = "Identity Engineering"
priority = "urgent"
escalate = true
note = "Go-live of {account.project.name}: delivery manager {account.delivery_manager}."

[[rules]]
name = "payroll connector update"
condition = """ticket.text =~~ '(?i)payroll' and ticket.text =~~ '(?i)export'
  and account.tier == 'Mid-Market'"""
force_queue = "Integration Engineering"
tags = ["payroll_connector"]
note = "Likely common cause: the payroll connector update of 1 December."

[[rules]]
name = "billing during renewal"
condition = """ticket.text =~~ '(?i)invoice|billing'
  and (account.renewal&.stage ?? '') =~ 'Negotiation'
  and account.project&.next_milestone != null"""
force_queue = "Billing Operations"
priority = "high"
[rules.follow_up]
team = "customer-success"
note = """Renewal {account.renewal.name} is in negotiation; \
  next milestone {account.project.next_milestone}."""
'''


def today():
    return datetime.now(UTC).date()


def days(offset: int) -> str:
    return (today() + timedelta(days=offset)).isoformat()


def fixture(source: str, name: str):
    return json.loads((FIXTURES / source / name).read_text())


def write_policy(path, erp_table: str = "") -> str:
    lines = ['mode = "auto"', "[defaults]", 'priority = "normal"', "tags = []"]
    for queue, group in GROUPS.items():
        lines += [f'[queues."{queue}"]', f'[queues."{queue}".zendesk]', f"group_id = {group}"]
    path.write_text("\n".join(lines) + "\n" + SALESFORCE_TABLE + erp_table + RULES)
    return str(path)


@pytest.fixture(scope="module")
def netsuite_key(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("netsuite") / "netsuite.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


@pytest.fixture
def make_app(tmp_path, classifier, netsuite_key):
    apps = []

    def build(erp: str | None = None):
        erp_settings = {}
        erp_table = ""
        if erp == "netsuite":
            erp_settings = {
                "erp": "netsuite",
                "netsuite_account_id": "1234567",
                "netsuite_client_id": "ns-client-id-example",
                "netsuite_certificate_id": "cert-id-example",
                "netsuite_private_key_file": netsuite_key,
            }
            erp_table = """
[netsuite]
phase_field = "custentity_phase"
go_live_field = "custentity_go_live"
business_critical_field = "custentity_business_critical"
"""
        elif erp == "businesscentral":
            erp_settings = {
                "erp": "businesscentral",
                "businesscentral_tenant_id": TENANT,
                "businesscentral_company_id": COMPANY,
                "businesscentral_client_id": "00000000-aaaa-4bbb-8ccc-000000000001",
                "businesscentral_client_secret": "bc-client-secret-value",
            }
            erp_table = """
[businesscentral]
projects_path = "api/contoso/projects/v1.0/companies({company})/customerProjects"
project_customer_field = "billToCustomerNumber"
project_phase_field = "phase"
project_go_live_field = "goLiveDate"
project_business_critical_field = "businessCritical"
project_milestone_field = "nextMilestone"
project_milestone_date_field = "nextMilestoneDate"
project_manager_field = "projectManager"
"""
        settings = make_settings(
            tmp_path,
            policy_file=write_policy(tmp_path / f"policy-{erp}.toml", erp_table),
            zendesk_subdomain=SUBDOMAIN,
            zendesk_email="deskroute@example.com",
            zendesk_token=TOKEN,
            salesforce_session_id="00D5g000004Example!Session",
            salesforce_instance_url="https://acme.my.salesforce.com",
            **erp_settings,
        )
        connector = ZendeskConnector(SUBDOMAIN, "deskroute@example.com", TOKEN, max_attempts=3)
        app = create_app(settings, classifier=classifier, connectors={"zendesk": connector})
        apps.append(app)
        return app

    yield build
    for app in apps:
        state = app.extensions["deskroute"]
        if state.enricher is not None:
            state.enricher.close()
        state.store.dispose()


@pytest.fixture
def http():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.get(f"{ZENDESK}/users/me.json", json=load_fixture("zendesk/api/users_me.json"))
        yield mock


def zendesk_ticket(http, ticket_id, subject, description, email, org_external_id, domains):
    """Register the ticket read and a capturing PUT; return the list of PUT bodies."""
    show = copy.deepcopy(load_fixture("zendesk/api/ticket_show__sideloads.json"))
    show["ticket"].update(
        id=int(ticket_id),
        url=f"{ZENDESK}/tickets/{ticket_id}.json",
        subject=subject,
        raw_subject=subject,
        description=description,
        tags=[],
    )
    show["users"][0]["email"] = email
    show["organizations"][0].update(external_id=org_external_id, domain_names=domains)
    http.get(
        f"{ZENDESK}/tickets/{ticket_id}.json",
        json=show,
        match=[matchers.query_param_matcher({"include": "users,organizations"})],
    )
    bodies = []

    def update(request):
        bodies.append(json.loads(request.body))
        return 200, {}, json.dumps(load_fixture("zendesk/api/ticket_update.json"))

    http.add_callback(responses.PUT, f"{ZENDESK}/tickets/{ticket_id}.json", callback=update)
    return bodies


def deliver(app, ticket_id):
    payload = load_fixture("zendesk/event_ticket_created.json")
    payload["detail"]["id"] = str(ticket_id)
    payload["id"] = f"delivery-{ticket_id}"
    response = post_zendesk(app.test_client(), payload)
    assert response.status_code == 202, response.get_json()
    app.extensions["deskroute"].worker.drain()


def decision_for(app, ticket_id):
    rows = app.extensions["deskroute"].store.decisions_for_ticket("zendesk", str(ticket_id))
    assert len(rows) == 1
    return rows[0]


def soql(*fragments):
    def match(request):
        query = parse_qs(urlparse(request.url).query).get("q", [""])[0]
        return all(fragment in query for fragment in fragments), f"SOQL {query!r}"

    return [match]


def salesforce_account(http, *, match_fragment, account_id, name, tier, erp_id, renewal=None):
    """Register the Account match and detail queries of one Salesforce account."""
    found = fixture("salesforce", "query_account__external_id.json")
    found["records"][0].update(Id=account_id, Name=name)
    if "Website" in match_fragment:
        found["records"][0]["Website"] = match_fragment.split("'%")[1].rstrip("%'")
    http.get(SOQL_URL, json=found, match=soql(match_fragment))

    details = fixture("salesforce", "query_account_details.json")
    details["records"][0].update(Id=account_id, Name=name, Tier__c=tier, ERP_Customer_Id__c=erp_id)
    http.get(SOQL_URL, json=details, match=soql(f"FROM Account WHERE Id = '{account_id}'"))
    http.get(
        SOQL_URL,
        json=fixture("salesforce", "query_entitlements.json"),
        match=soql("FROM Entitlement", account_id),
    )
    http.get(
        SOQL_URL,
        json=fixture("salesforce", "query_service_contracts.json"),
        match=soql("FROM ServiceContract", account_id),
    )
    opportunities = fixture("salesforce", "query__empty.json")
    if renewal is not None:
        opportunities = fixture("salesforce", "query_opportunities__renewal.json")
        opportunities["records"][0].update(renewal)
    http.get(SOQL_URL, json=opportunities, match=soql("FROM Opportunity", account_id))
    http.get(
        SOQL_URL,
        json=fixture("salesforce", "query_cases__count.json"),
        match=soql("COUNT() FROM Case", account_id),
    )


def suiteql(http, body, fragment):
    def match(request):
        query = json.loads(request.body)["q"]
        return fragment in query, f"SuiteQL {query!r}"

    http.post(f"{NETSUITE}/services/rest/query/v1/suiteql", json=body, match=[match])


def netsuite_customer(http):
    http.post(
        f"{NETSUITE}/services/rest/auth/oauth2/v1/token", json=fixture("netsuite", "token.json")
    )
    suiteql(http, fixture("netsuite", "suiteql_customer.json"), "entityid = 'CUST-1001'")
    credit_hold = fixture("netsuite", "suiteql_holds.json")
    credit_hold["items"][0]["creditholdoverride"] = "OFF"
    suiteql(http, credit_hold, "creditholdoverride")
    suiteql(http, fixture("netsuite", "suiteql__empty.json"), "FROM transaction")
    projects = fixture("netsuite", "suiteql_projects.json")
    projects["items"][0]["golive"] = days(1)
    projects["items"][1]["golive"] = days(90)
    suiteql(http, projects, "FROM job")
    milestones = fixture("netsuite", "suiteql_milestones.json")
    for item, offset in zip(milestones["items"], (-5, 1, 40), strict=True):
        item["enddate"] = days(offset)
    suiteql(http, milestones, "FROM projecttask")


def test_go_live_access_ticket_escalated(make_app, http):
    app = make_app("netsuite")
    show = load_fixture("zendesk/api/ticket_show__sideloads.json")["ticket"]
    bodies = zendesk_ticket(
        http,
        35436,
        show["subject"],
        show["description"],
        "camila.reyes@northwind.example.com",
        "ZD-ORG-509974",
        ["northwind.example.com"],
    )
    salesforce_account(
        http,
        match_fragment="Zendesk_Org_Id__c = 'ZD-ORG-509974'",
        account_id="0015g00000NorthAAA",
        name="Northwind Foods",
        tier="Premium",
        erp_id="CUST-1001",
    )
    netsuite_customer(http)

    deliver(app, 35436)

    decision = decision_for(app, 35436)
    assert decision["queue"] == "Identity Engineering"
    assert decision["priority"] == "urgent"
    assert decision["action"] == "escalate"
    assert decision["status"] == "applied"
    reasons = {reason["rule"]: reason["detail"] for reason in decision["decision"]["reasons"]}
    assert "rule:go-live weekend" in reasons
    account = decision["account"]
    assert account["tier"] == "Premium"
    assert account["project"]["name"] == "Plant Lyon cutover"
    assert account["days_to_go_live"] == 1
    assert account["sources"]["project"]["source"] == "netsuite"
    assert account["failures"] == []

    ticket = bodies[0]["ticket"]
    assert ticket["group_id"] == GROUPS["Identity Engineering"]
    assert ticket["priority"] == "urgent"
    note = ticket["comment"]["body"]
    assert "Go-live of Plant Lyon cutover: delivery manager Dana Delivery." in note
    assert "delivery manager Dana Delivery" in note.split("Reasons:")[0]

    # The side panel reads the same account context and reasons.
    response = app.test_client().get(
        "/api/decisions",
        query_string={"helpdesk": "zendesk", "ticket_id": "35436"},
        headers=bearer(),
    )
    panel = response.get_json()["decisions"][0]
    assert panel["account"]["delivery_manager"] == "Dana Delivery"
    assert "rule:go-live weekend" in [r["rule"] for r in panel["decision"]["reasons"]]


def test_payroll_failures_to_integration_engineering(make_app, http):
    app = make_app()
    tickets = {
        36001: ("ORG-FABRIKAM", "0015g00000FabriAAA", "Fabrikam"),
        36002: ("ORG-LITWARE", "0015g00000LitwaAAA", "Litware"),
        36003: ("ORG-TAILSPIN", "0015g00000TailsAAA", "Tailspin Toys"),
    }
    bodies = {}
    for ticket_id, (org, account_id, name) in tickets.items():
        bodies[ticket_id] = zendesk_ticket(
            http,
            ticket_id,
            "Payroll export failed again",
            "Since the payroll connector update last night the export to the bank fails with "
            f"an error for all employees of {name}.",
            f"payroll@{name.split()[0].lower()}.example",
            org,
            [],
        )
        salesforce_account(
            http,
            match_fragment=f"Zendesk_Org_Id__c = '{org}'",
            account_id=account_id,
            name=name,
            tier="Mid-Market",
            erp_id=None,
        )

    for ticket_id in tickets:
        deliver(app, ticket_id)

    for ticket_id, (_, account_id, _) in tickets.items():
        decision = decision_for(app, ticket_id)
        assert decision["queue"] == "Integration Engineering"
        assert decision["account"]["account_id"] == account_id
        assert "rule:payroll connector update" in [
            reason["rule"] for reason in decision["decision"]["reasons"]
        ]
        ticket = bodies[ticket_id][0]["ticket"]
        assert ticket["group_id"] == GROUPS["Integration Engineering"]
        assert "payroll_connector" in ticket["additional_tags"]
        assert (
            "Likely common cause: the payroll connector update of 1 December."
            in ticket["comment"]["body"]
        )


def businesscentral_customer(http):
    http.post(
        f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token",
        json=fixture("businesscentral", "token.json"),
    )
    found = fixture("businesscentral", "customers__by_number.json")
    found["value"][0]["number"] = "CUST-2002"
    http.get(
        f"{BC_COMPANY}/customers",
        json=found,
        match=[
            matchers.query_param_matcher(
                {"$filter": "number eq 'CUST-2002'", "$select": "id,number", "$top": "2"}
            )
        ],
    )
    customer = fixture("businesscentral", "customer.json")
    customer.update(number="CUST-2002", displayName="Contoso Retail", blocked=" ")
    http.get(f"{BC_COMPANY}/customers({BC_CUSTOMER})", json=customer)
    invoices = fixture("businesscentral", "sales_invoices__open.json")
    for item in invoices["value"]:
        item["dueDate"] = days(20)
    http.get(f"{BC_COMPANY}/salesInvoices", json=invoices)
    projects = fixture("businesscentral", "projects__custom_api.json")
    projects["value"][0].update(
        displayName="Store systems services",
        billToCustomerNumber="CUST-2002",
        phase="Services delivery",
        goLiveDate=days(60),
        businessCritical=False,
        nextMilestone="POS rollout wave 2",
        nextMilestoneDate=days(10),
    )
    http.get(
        f"{BC_API}/api/contoso/projects/v1.0/companies({COMPANY})/customerProjects",
        json=projects,
        match=[matchers.query_param_matcher({"$filter": "billToCustomerNumber eq 'CUST-2002'"})],
    )


def test_renewal_billing_question_follow_up(make_app, http):
    app = make_app("businesscentral")
    bodies = zendesk_ticket(
        http,
        37001,
        "Question about our last invoice",
        "Hi, no rush at all, low priority: could you explain the billing line for the "
        "implementation services on invoice PS-INV103044?",
        "ap@contoso-retail.example",
        None,
        ["contoso-retail.example"],
    )
    salesforce_account(
        http,
        match_fragment="Website LIKE '%contoso-retail.example%'",
        account_id="0015g00000ContoAAA",
        name="Contoso Retail",
        tier="Enterprise",
        erp_id="CUST-2002",
        renewal={"Name": "Contoso Retail renewal 2027", "CloseDate": days(20)},
    )
    businesscentral_customer(http)

    deliver(app, 37001)

    decision = decision_for(app, 37001)
    assert decision["queue"] == "Billing Operations"
    assert decision["priority"] == "high"
    assert decision["account"]["matched_by"] == "domain"
    assert decision["account"]["renewal"]["stage"] == "Negotiation/Review"
    assert decision["account"]["project"]["next_milestone"] == "POS rollout wave 2"
    assert decision["account"]["overdue_invoices"] == 0
    follow_up = {
        "rule": "billing during renewal",
        "team": "customer-success",
        "note": "Renewal Contoso Retail renewal 2027 is in negotiation; "
        "next milestone POS rollout wave 2.",
    }
    assert decision["decision"]["follow_ups"] == [follow_up]

    ticket = bodies[0]["ticket"]
    assert ticket["group_id"] == GROUPS["Billing Operations"]
    assert ticket["priority"] == "high"
    assert f"Follow-up for customer-success: {follow_up['note']}" in ticket["comment"]["body"]


def test_salesforce_outage_needs_confirmation(make_app, http):
    app = make_app()
    show = load_fixture("zendesk/api/ticket_show__sideloads.json")["ticket"]
    bodies = zendesk_ticket(
        http,
        35436,
        show["subject"],
        show["description"],
        "camila.reyes@northwind.example.com",
        "ZD-ORG-509974",
        [],
    )
    http.get(SOQL_URL, json=fixture("salesforce", "error__server.json"), status=503)

    deliver(app, 35436)

    store = app.extensions["deskroute"].store
    assert store.list_deliveries()[0]["status"] == DONE
    decision = decision_for(app, 35436)
    assert decision["action"] == "needs_confirmation"
    enrichment = [r for r in decision["decision"]["reasons"] if r["rule"] == "enrichment"]
    assert enrichment == [
        {
            "rule": "enrichment",
            "detail": "salesforce lookup failed: ConnectorUnavailable: salesforce returned "
            "503 for query: SERVER_UNAVAILABLE Server temporarily unavailable",
        }
    ]
    ticket = bodies[0]["ticket"]
    assert "group_id" not in ticket
    assert "priority" not in ticket
    assert "unavailable: salesforce" in ticket["comment"]["body"]
