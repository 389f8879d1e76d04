"""JiraConnector against Jira's documented REST v2 and JSM endpoints, mocked with responses."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
import requests
import responses
from responses import matchers

from connectors.base import (
    ConnectorBadRequest,
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnauthorized,
    ConnectorUnavailable,
    WriteBack,
)
from connectors.jira import (
    JiraConnector,
    JiraOptions,
    RoutingTarget,
    parse_routing,
    project_of,
    routing_fields,
    ticket_from_issue,
    validate_routing,
)
from plugin.config import load_settings

FIXTURES = Path(__file__).parent / "fixtures" / "jira"
SITE = "https://example.atlassian.net"
ISSUE_URL = f"{SITE}/rest/api/2/issue/ITSD-42"
# The issue's own "self" URL, which the jira package reloads after an edit.
ISSUE_SELF = f"{SITE}/rest/api/2/issue/10042"
COMMENT_URL = f"{ISSUE_URL}/comment"
REQUEST_TYPES_URL = f"{SITE}/rest/servicedeskapi/servicedesk/ITSD/requesttype"
EMAIL = "deskroute@example.com"
TOKEN = "jira-api-test-token"
INTERNAL = [{"key": "sd.public.comment", "value": {"internal": True}}]


def load(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


def make_connector(sleeps, **options) -> JiraConnector:
    settings = load_settings(
        environ={}, jira_url=SITE, jira_email=EMAIL, jira_token=TOKEN, jira_timeout_seconds=3
    )
    table = {"organization_field": "customfield_10002", **options}
    return JiraConnector.from_settings(settings, table, sleep=sleeps)


@pytest.fixture
def connector(sleeps):
    return make_connector(sleeps)


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def add_read(mocked, issue=None, status=200, **kwargs):
    mocked.get(
        ISSUE_URL,
        json=issue if issue is not None else load("issue.json"),
        status=status,
        match=[matchers.query_param_matcher({"fields": "project,priority,labels,comment"})],
        **kwargs,
    )


def add_reload(mocked):
    mocked.get(ISSUE_SELF, json=load("issue.json"), match=[matchers.query_param_matcher({})])


def add_request_types(mocked):
    mocked.get(
        REQUEST_TYPES_URL,
        json={
            "size": 2,
            "start": 0,
            "limit": 50,
            "isLastPage": True,
            "values": [
                {"id": "10", "name": "Get IT help", "serviceDeskId": "1", "issueTypeId": "10003"},
                {
                    "id": "12",
                    "name": "Request access",
                    "serviceDeskId": "1",
                    "issueTypeId": "10003",
                },
            ],
        },
        match=[matchers.header_matcher({"X-ExperimentalApi": "opt-in"})],
    )


def add_comment(mocked, note, status=201, **kwargs):
    mocked.post(
        COMMENT_URL,
        json={"id": "10301", "body": note, "properties": INTERNAL} if status == 201 else {},
        status=status,
        match=[matchers.json_params_matcher({"body": note, "properties": INTERNAL})],
        **kwargs,
    )


# Reading


def test_fetch_ticket_maps_issue(connector, mocked):
    mocked.get(ISSUE_URL, json=load("issue.json"))

    ticket = connector.fetch_ticket("ITSD-42")

    assert ticket.helpdesk == "jira"
    assert ticket.id == "ITSD-42"
    assert ticket.subject == "transfer license from one user to another"
    # Wiki markup is gone: the bold markers and the \\ line break.
    assert ticket.description == (
        "transfer license user hello left going please transfer his license replaced role\n"
        "best regards senior engineer"
    )
    assert ticket.requester.id == "qm:0f1c8e2a-7d3b-4c55-9a61-2b7e4d9c0a11"
    assert ticket.requester.email == "sam.requester@example.com"
    assert ticket.requester.domain == "example.com"
    assert ticket.organization.id == "7"
    assert ticket.organization.name == "Example Industries"
    assert ticket.priority == "normal"
    assert ticket.group == "Get IT help"
    assert ticket.tags == ["license"]
    assert ticket.status == "Waiting for support"
    assert ticket.updated_stamp == "2026-12-04T09:12:31.000+0000"
    assert ticket.complete is True
    assert ticket.extra["project"] == "ITSD"
    assert ticket.extra["request_type_id"] == "10"


def test_fetch_ticket_sends_basic_auth(connector, mocked):
    mocked.get(ISSUE_URL, json=load("issue.json"))

    connector.fetch_ticket("ITSD-42")

    expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    assert mocked.calls[0].request.headers["Authorization"] == expected


def test_fetch_ticket_not_found(connector, mocked, sleeps):
    mocked.get(
        ISSUE_URL,
        status=404,
        json={"errorMessages": ["Issue does not exist or you do not have permission to see it."]},
    )

    with pytest.raises(ConnectorNotFound) as caught:
        connector.fetch_ticket("ITSD-42")

    assert caught.value.status == 404
    assert "Issue does not exist" in caught.value.message
    assert sleeps == []
    assert len(mocked.calls) == 1


def test_fetch_ticket_retries_read_timeout(connector, mocked, sleeps):
    mocked.get(ISSUE_URL, body=requests.ReadTimeout("read timed out"))
    mocked.get(ISSUE_URL, json=load("issue.json"))

    ticket = connector.fetch_ticket("ITSD-42")

    assert ticket.id == "ITSD-42"
    assert sleeps == [1.0]


def test_fetch_ticket_of_unexpected_shape(connector, mocked, sleeps):
    for _ in range(4):
        mocked.get(ISSUE_URL, json=[1, 2, 3])

    with pytest.raises(ConnectorUnavailable, match="unexpected response"):
        connector.fetch_ticket("ITSD-42")

    assert sleeps == [1.0, 2.0, 4.0]


def test_fetch_ticket_connection_refused(connector, mocked, sleeps):
    for _ in range(4):
        mocked.get(ISSUE_URL, body=requests.ConnectionError("connection refused"))

    with pytest.raises(ConnectorUnavailable):
        connector.fetch_ticket("ITSD-42")

    assert sleeps == [1.0, 2.0, 4.0]


# Writing


def test_apply_sends_edit_and_internal_comment(connector, mocked):
    note = "deskroute suggests Access (confidence 0.91)."
    add_read(mocked)
    add_request_types(mocked)
    mocked.put(
        ISSUE_SELF,
        status=204,
        match=[
            matchers.json_params_matcher(
                {
                    "fields": {"priority": {"name": "High"}, "customfield_10010": "12"},
                    "update": {"labels": [{"add": "deskroute"}, {"add": "deskroute-access"}]},
                }
            ),
            matchers.query_param_matcher({}),
        ],
    )
    add_reload(mocked)
    add_comment(mocked, note)

    result = connector.apply(
        WriteBack(
            ticket_id="ITSD-42",
            group={"request_type": "Request access"},
            priority="high",
            add_tags=["deskroute", "deskroute-access", "license"],
            note=note,
        )
    )

    assert result.ok is True
    # The read, the edit and the comment; the request type lookup is not a write attempt.
    assert result.attempts == 3
    assert [(item["method"], item["path"]) for item in result.requests] == [
        ("PUT", "/rest/api/2/issue/10042"),
        ("POST", "/rest/api/2/issue/ITSD-42/comment"),
    ]
    assert result.requests[1]["body"]["properties"] == INTERNAL
    assert result.requests[1]["comment_id"] == "10301"


def test_apply_skips_unchanged_fields(connector, mocked):
    note = "deskroute suggests Hardware."
    issue = load("issue.json")
    issue["fields"]["labels"] = ["deskroute", "license"]
    add_read(mocked, issue)
    add_comment(mocked, note)

    result = connector.apply(
        WriteBack(ticket_id="ITSD-42", priority="normal", add_tags=["deskroute"], note=note)
    )

    assert [item["method"] for item in result.requests] == ["POST"]


def test_apply_note_already_posted(connector, mocked):
    note = "deskroute suggests Access.\n(deskroute decision 7; accept or override it)"
    issue = load("issue.json")
    issue["fields"]["comment"] = {
        "comments": [{"id": "10301", "body": note + "\n", "properties": INTERNAL}],
        "maxResults": 1,
        "total": 1,
        "startAt": 0,
    }
    add_read(mocked, issue)

    result = connector.apply(WriteBack(ticket_id="ITSD-42", note=note))

    assert result.requests == []
    assert result.skipped == "note already on the issue"


def test_apply_nothing_to_change(connector, mocked):
    add_read(mocked)

    result = connector.apply(WriteBack(ticket_id="ITSD-42", add_tags=["license"]))

    assert result.ok is True
    assert result.requests == []
    assert result.skipped == "nothing to change"


def test_apply_select_field_per_project(connector, mocked):
    add_read(mocked)
    mocked.put(
        ISSUE_SELF,
        status=204,
        match=[
            matchers.json_params_matcher(
                {"fields": {"customfield_10050": {"value": "IT Access"}}, "update": {}}
            )
        ],
    )
    add_reload(mocked)

    group = {
        "request_type_id": "12",
        "projects": {"ITSD": {"field": "customfield_10050", "option": "IT Access"}},
    }
    result = connector.apply(WriteBack(ticket_id="ITSD-42", group=group))

    assert result.requests[0]["body"]["fields"] == {"customfield_10050": {"value": "IT Access"}}


def test_apply_team_field_and_no_notify(sleeps, mocked):
    connector = make_connector(sleeps, notify_users=False)
    team = "36885b3c-1bf0-4f85-a357-c5b858c31de4"
    add_read(mocked)
    mocked.put(
        ISSUE_SELF,
        status=204,
        match=[
            matchers.json_params_matcher({"fields": {"customfield_10001": team}, "update": {}}),
            matchers.query_param_matcher({"notifyUsers": "false"}),
        ],
    )
    add_reload(mocked)

    connector.apply(
        WriteBack(ticket_id="ITSD-42", group={"field": "customfield_10001", "team": team})
    )


def test_apply_custom_priority_names(sleeps, mocked):
    connector = make_connector(sleeps, priorities={"urgent": "P1 - Critical"})
    add_read(mocked)
    mocked.put(
        ISSUE_SELF,
        status=204,
        match=[
            matchers.json_params_matcher(
                {"fields": {"priority": {"name": "P1 - Critical"}}, "update": {}}
            )
        ],
    )
    add_reload(mocked)

    connector.apply(WriteBack(ticket_id="ITSD-42", priority="urgent"))


def test_apply_rate_limited_waits_retry_after(connector, mocked, sleeps):
    note = "deskroute suggests Access."
    add_read(mocked)
    mocked.post(
        COMMENT_URL,
        status=429,
        headers={"Retry-After": "7"},
        json={"errorMessages": ["Rate limit exceeded."]},
    )
    add_comment(mocked, note)

    result = connector.apply(WriteBack(ticket_id="ITSD-42", note=note))

    assert sleeps == [7.0]
    assert result.attempts == 3


def test_apply_rate_limit_beyond_maximum_raises(connector, mocked, sleeps):
    add_read(mocked)
    mocked.post(COMMENT_URL, status=429, headers={"Retry-After": "600"}, json={})

    with pytest.raises(ConnectorRateLimited) as caught:
        connector.apply(WriteBack(ticket_id="ITSD-42", note="note"))

    assert caught.value.retry_after == 600.0
    assert sleeps == []


def test_apply_server_error_backs_off(connector, mocked, sleeps):
    add_read(mocked)
    mocked.put(ISSUE_SELF, status=503, json={"errorMessages": ["Service unavailable"]})
    mocked.put(ISSUE_SELF, status=500, json={})
    mocked.put(
        ISSUE_SELF,
        status=204,
        match=[matchers.json_params_matcher({"fields": {}, "update": {"labels": [{"add": "a"}]}})],
    )
    add_reload(mocked)

    result = connector.apply(WriteBack(ticket_id="ITSD-42", add_tags=["a"]))

    assert sleeps == [1.0, 2.0]
    assert result.attempts == 4


def test_apply_conflict_retried(connector, mocked, sleeps):
    add_read(mocked)
    mocked.put(ISSUE_SELF, status=409, json={"errorMessages": ["The issue was updated."]})
    mocked.put(ISSUE_SELF, status=204)
    add_reload(mocked)

    result = connector.apply(WriteBack(ticket_id="ITSD-42", add_tags=["a"]))

    assert sleeps == [1.0]
    assert result.attempts == 3


def test_own_user_id_reads_myself(connector, mocked):
    mocked.get(
        f"{SITE}/rest/api/2/myself",
        json={"accountId": "712020:deadbeef-0000-4000-8000-00000000d5e7", "displayName": "x"},
    )

    assert connector.own_user_id() == "712020:deadbeef-0000-4000-8000-00000000d5e7"


def test_apply_server_error_gives_up(connector, mocked, sleeps):
    add_read(mocked)
    for _ in range(4):
        mocked.put(ISSUE_SELF, status=502, body="<html>Bad gateway</html>")

    with pytest.raises(ConnectorUnavailable) as caught:
        connector.apply(WriteBack(ticket_id="ITSD-42", add_tags=["a"]))

    assert caught.value.status == 502
    assert sleeps == [1.0, 2.0, 4.0]


@pytest.mark.parametrize("status", [401, 403])
def test_apply_unauthorized_not_retried(connector, mocked, sleeps, status):
    add_read(mocked)
    mocked.put(
        ISSUE_SELF,
        status=status,
        json={"errorMessages": ["You do not have permission to edit issues in this project."]},
        headers={"Set-Cookie": "atlassian.xsrf.token=secret-cookie-value; Path=/"},
    )

    with pytest.raises(ConnectorUnauthorized) as caught:
        connector.apply(WriteBack(ticket_id="ITSD-42", add_tags=["a"]))

    assert caught.value.status == status
    assert sleeps == []
    assert len(mocked.calls) == 2
    # The chained JIRAError no longer prints the response headers.
    assert "secret-cookie-value" not in str(caught.value.__cause__)
    assert TOKEN not in str(caught.value.__cause__)


def test_apply_issue_not_found(connector, mocked, sleeps):
    add_read(mocked, {"errorMessages": ["Issue does not exist"]}, status=404)

    with pytest.raises(ConnectorNotFound):
        connector.apply(WriteBack(ticket_id="ITSD-42", note="note"))

    assert sleeps == []


def test_apply_bad_request_names_field(connector, mocked):
    add_read(mocked)
    mocked.put(
        ISSUE_SELF,
        status=400,
        json={
            "errorMessages": [],
            "errors": {"customfield_10050": "Option value 'Nope' is not valid"},
        },
    )

    with pytest.raises(ConnectorBadRequest) as caught:
        connector.apply(
            WriteBack(ticket_id="ITSD-42", group={"field": "customfield_10050", "option": "Nope"})
        )

    assert "Option value 'Nope' is not valid" in caught.value.message


def test_apply_comment_timeout_not_retried(connector, mocked, sleeps):
    add_read(mocked)
    mocked.post(COMMENT_URL, body=requests.ReadTimeout("read timed out"))

    with pytest.raises(ConnectorTimeout):
        connector.apply(WriteBack(ticket_id="ITSD-42", note="note"))

    assert sleeps == []


def test_apply_unknown_request_type(connector, mocked):
    add_read(mocked)
    add_request_types(mocked)

    with pytest.raises(ConnectorNotFound) as caught:
        connector.apply(WriteBack(ticket_id="ITSD-42", group={"request_type": "Order pizza"}))

    assert "Order pizza" in caught.value.message


def test_request_types_read_once(connector, mocked):
    add_request_types(mocked)

    assert connector.request_type_id("ITSD", "Request access") == "12"
    assert connector.request_type_id("ITSD", "get it help") == "10"
    assert len(mocked.calls) == 1


def test_apply_invalid_routing_table(connector, mocked):
    add_read(mocked)

    with pytest.raises(ConnectorBadRequest) as caught:
        connector.apply(WriteBack(ticket_id="ITSD-42", group={"option": "Access"}))

    assert "needs field" in caught.value.message


# Routing tables and options


def test_parse_routing_shapes():
    assert parse_routing(None, "ITSD") is None
    assert parse_routing({"request_type_id": 12}, "ITSD") == RoutingTarget(
        field="customfield_10010", value="12"
    )
    assert parse_routing({"request_type": "Request access"}, "ITSD") == RoutingTarget(
        field="customfield_10010", request_type_name="Request access"
    )
    assert parse_routing({"field": "customfield_10050", "option_id": 10021}, "X") == (
        RoutingTarget(field="customfield_10050", value={"id": "10021"})
    )
    assert parse_routing({"field": "customfield_10060", "value": ["a"]}, "X") == (
        RoutingTarget(field="customfield_10060", value=["a"])
    )


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ("Access", "must be a table"),
        ({"team": "t"}, "needs field"),
        ({"field": "customfield_1", "option": "a", "team": "t"}, "exactly one"),
        ({"request_typ": "x"}, "unknown key 'request_typ'"),
        ({}, None),
    ],
)
def test_validate_routing_rejects(group, message):
    if message is None:
        validate_routing(group)
        return
    with pytest.raises(ValueError, match=message):
        validate_routing(group)


def test_validate_routing_checks_projects():
    with pytest.raises(ValueError, match="needs field"):
        validate_routing({"request_type": "x", "projects": {"HR": {"option": "People"}}})


def test_options_reject_unknown_key():
    with pytest.raises(ValueError, match="unknown option 'priority'"):
        JiraOptions.from_table({"priority": {}})


def test_options_reject_unknown_priority():
    with pytest.raises(ValueError, match="unknown priority 'critical'"):
        JiraOptions.from_table({"priorities": {"critical": "Highest"}})


def test_options_merge_priorities():
    options = JiraOptions.from_table({"priorities": {"urgent": "Blocker"}})

    assert options.priorities == {
        "low": "Low",
        "normal": "Medium",
        "high": "High",
        "urgent": "Blocker",
    }


def test_from_settings_needs_credentials():
    settings = load_settings(environ={}, jira_url=SITE)

    with pytest.raises(ValueError, match="DESKROUTE_JIRA_EMAIL"):
        JiraConnector.from_settings(settings, {})


def test_routing_value_matches_changelog_values(connector):
    ticket = ticket_from_issue(load("issue.json"))
    group = {
        "request_type": "Request access",
        "projects": {"HR": {"field": "customfield_10001", "team": "36885b3c"}},
    }

    assert connector.routing_value(group, ticket) == "Request access"
    ticket.extra["project"] = "HR"
    assert connector.routing_value(group, ticket) == "36885b3c"
    assert connector.routing_value(None, ticket) is None


def test_routing_fields_kinds():
    groups = [
        {"request_type": "Request access"},
        {"field": "customfield_10050", "option": "Hardware"},
        {"request_type_id": "12", "projects": {"HR": {"field": "customfield_10001", "team": "t"}}},
    ]

    assert routing_fields(groups) == {
        "customfield_10010": "name",
        "customfield_10050": "name",
        "customfield_10001": "id",
    }


def test_routing_fields_default_request_type():
    assert routing_fields([]) == {"customfield_10010": "name"}
    assert routing_fields([{"request_type_id": "12"}]) == {"customfield_10010": "id"}


def test_project_of():
    assert project_of("ITSD-42") == "ITSD"
    assert project_of("MY-TEAM-7") == "MY-TEAM"
    assert project_of("10042") is None


def test_ticket_from_webhook_issue_priority_name():
    issue = copy.deepcopy(load("issue.json"))
    issue["fields"]["priority"] = {"name": "Highest"}
    issue["fields"]["description"] = None

    ticket = ticket_from_issue(issue)

    assert ticket.priority == "urgent"
    assert ticket.description == ""
    assert ticket.organization.id is None
