"""Zendesk connector over mocked HTTP: ticket reads, safe write-back, retries, error mapping."""

from __future__ import annotations

import base64
import inspect
import json
import logging

import pytest
import requests
import responses
import zenpy.lib.api
import zenpy.lib.exception
from responses import matchers
from responses.registries import OrderedRegistry

from connectors.base import (
    ConnectorBadRequest,
    ConnectorConflict,
    ConnectorError,
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnauthorized,
    ConnectorUnavailable,
    WriteBack,
)
from connectors.zendesk import ZENPY_ERRORS, ZendeskConnector, map_zenpy_error
from plugin.config import Secret
from plugin.tickets import Party, Ticket

from conftest import load_fixture

EMAIL = "deskroute-bot@example.com"
TOKEN = "zd-test-token-8f3a2c61d94e"
BASIC_AUTH = base64.b64encode(f"{EMAIL}/token:{TOKEN}".encode()).decode()
BASE = "https://example.zendesk.com/api/v2"
TICKET_URL = f"{BASE}/tickets/35436.json"
COMMENTS_URL = f"{BASE}/tickets/35436/comments.json"
ME_URL = f"{BASE}/users/me.json"
STAMP = "2026-12-04T09:14:02Z"
AGENT_STAMP = "2026-12-04T09:15:37Z"
NOTE = (
    "deskroute suggests queue Access (confidence 0.91, rule auto_route_access). "
    "Confirm or override in the deskroute panel."
)
RATE_LIMIT_BODY = (
    "Rate limit for ticket updates exceeded, please wait before updating this ticket again"
)


def api(name: str) -> dict:
    return load_fixture(f"zendesk/api/{name}.json")


def writeback(**overrides) -> WriteBack:
    values = {
        "ticket_id": "35436",
        "group": "360007654321",
        "priority": "high",
        "add_tags": ["access"],
        "note": NOTE,
        "updated_stamp": STAMP,
    }
    values.update(overrides)
    return WriteBack(**values)


def put_body(stamp: str = STAMP) -> dict:
    # zenpy sends the ticket id inside the ticket object as well as in the URL.
    return {
        "ticket": {
            "id": 35436,
            "group_id": 360007654321,
            "priority": "high",
            "additional_tags": ["access", "deskroute"],
            "comment": {"body": NOTE, "public": False},
            "safe_update": True,
            "updated_stamp": stamp,
        }
    }


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def connector(sleeps):
    return ZendeskConnector("example", EMAIL, TOKEN, sleep=sleeps.append)


@pytest.fixture
def http():
    # The ordered registry matches requests strictly in the order they are registered.
    with responses.RequestsMock(
        assert_all_requests_are_fired=True, registry=OrderedRegistry
    ) as mock:
        yield mock


@pytest.fixture(autouse=True)
def no_zenpy_sleep(monkeypatch):
    """Fail any test in which zenpy's own rate-limit loop calls time.sleep."""

    def forbidden(seconds):
        raise AssertionError(f"zenpy slept {seconds} s by itself")

    monkeypatch.setattr(zenpy.lib.api, "sleep", forbidden)


def expect_show(http, fixture="ticket_show__sideloads", status=200, **kwargs):
    if "json" not in kwargs and "body" not in kwargs:
        kwargs["json"] = api(fixture)
    http.get(
        TICKET_URL,
        status=status,
        match=[matchers.query_param_matcher({"include": "users,organizations"})],
        **kwargs,
    )


def expect_put(http, expected, status=200, **kwargs):
    """Register a PUT that matches only the whole expected JSON body."""
    if "json" not in kwargs and "body" not in kwargs:
        kwargs["json"] = api("ticket_update")
    http.put(TICKET_URL, status=status, match=[matchers.json_params_matcher(expected)], **kwargs)


def expect_comments(http, fixture):
    http.get(
        COMMENTS_URL,
        json=api(fixture),
        match=[
            matchers.query_param_matcher({"page[size]": "100", "include_inline_images": "false"})
        ],
    )


# Reads


def test_fetch_ticket_maps_sideloads(connector, http):
    fixture = api("ticket_show__sideloads")
    expect_show(http)

    ticket = connector.fetch_ticket("35436")

    assert ticket == Ticket(
        helpdesk="zendesk",
        id="35436",
        subject="reset passwords for external accounts",
        description=fixture["ticket"]["description"],
        requester=Party(
            id="20978392",
            name="Camila Reyes",
            email="camila.reyes@northwind.example.com",
            external_id="crm-contact-0042",
            domain="northwind.example.com",
        ),
        organization=Party(
            id="509974",
            name="Northwind Logistics",
            external_id="0015g00000XyZaAAB",
            domain="northwind.example.com",
        ),
        tags=["enterprise", "password"],
        channel="email",
        language="de",
        status="new",
        priority="normal",
        group="360001234567",
        updated_stamp=STAMP,
        complete=True,
        extra={
            "type": "incident",
            "assignee_id": None,
            "brand_id": "360000555666",
            "problem_id": None,
            "external_id": None,
            "created_at": "2026-12-04T09:12:41Z",
        },
    )
    assert len(http.calls) == 1
    assert http.calls[0].request.headers["Authorization"] == f"Basic {BASIC_AUTH}"


def test_fetch_ticket_reads_fresh_each_time(connector, http):
    expect_show(http)
    expect_show(http, "ticket_show__changed_by_agent")

    first = connector.fetch_ticket("35436")
    second = connector.fetch_ticket("35436")

    assert first.updated_stamp == STAMP
    assert second.updated_stamp == AGENT_STAMP
    assert second.tags == ["enterprise", "password", "vip"]


def test_fetch_ticket_without_sideloaded_requester(connector, http):
    fixture = api("ticket_show__sideloads")
    fixture["users"] = []
    fixture["organizations"] = []
    expect_show(http, json=fixture)

    ticket = connector.fetch_ticket("35436")

    assert ticket.requester == Party(id="20978392")
    assert ticket.organization == Party(id="509974")
    assert ticket.language is None
    assert len(http.calls) == 1


def test_fetch_ticket_not_found(connector, http, sleeps):
    expect_show(http, json=api("ticket_show__not_found"), status=404)

    with pytest.raises(ConnectorNotFound) as raised:
        connector.fetch_ticket("35436")

    assert raised.value.status == 404
    assert "RecordNotFound" in raised.value.message
    assert sleeps == []


def test_fetch_ticket_timeout(http, sleeps):
    connector = ZendeskConnector("example", EMAIL, TOKEN, sleep=sleeps.append, max_attempts=2)
    for _ in range(2):
        expect_show(http, body=requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)"))

    with pytest.raises(ConnectorTimeout) as raised:
        connector.fetch_ticket("35436")

    assert raised.value.source == "zendesk"
    assert isinstance(raised.value.__cause__, requests.exceptions.ReadTimeout)
    assert sleeps == [1.0]


def test_fetch_ticket_rate_limited_waits(connector, http, sleeps):
    expect_show(http, status=429, body=RATE_LIMIT_BODY, headers={"Retry-After": "3"})
    expect_show(http)

    ticket = connector.fetch_ticket("35436")

    assert ticket.updated_stamp == STAMP
    assert sleeps == [3.0]


def test_fetch_ticket_rejects_non_numeric_id(connector, http):
    with pytest.raises(ConnectorBadRequest) as raised:
        connector.fetch_ticket("35436/../users")

    assert "35436/../users" in raised.value.message


def test_own_user_id_is_read_once(connector, http):
    http.get(ME_URL, json=api("users_me"))

    assert connector.own_user_id() == "900001"
    assert connector.own_user_id() == "900001"
    assert len(http.calls) == 1


# Write-back


def test_apply_sends_one_safe_update(connector, http, sleeps):
    expect_put(http, put_body())

    result = connector.apply(writeback())

    assert result.ok is True
    assert result.attempts == 1
    assert result.skipped is None
    assert result.requests == [{"method": "PUT", "url": TICKET_URL, "body": put_body()}]
    assert json.loads(http.calls[0].request.body) == result.requests[0]["body"]
    assert sleeps == []


def test_apply_only_sends_fields_that_are_set(connector, http):
    body = {
        "ticket": {
            "id": 35436,
            "additional_tags": ["deskroute"],
            "comment": {"body": NOTE, "public": False},
            "safe_update": True,
            "updated_stamp": STAMP,
        }
    }
    expect_put(http, body)

    result = connector.apply(writeback(group=None, priority=None, add_tags=[]))

    assert result.ok is True
    assert result.requests[0]["body"] == body


def test_apply_without_stamp_reads_ticket_first(connector, http):
    expect_show(http)
    expect_put(http, put_body(STAMP))

    result = connector.apply(writeback(updated_stamp=None))

    assert result.ok is True
    assert result.attempts == 1


def test_apply_conflict_rereads_and_retries(connector, http, sleeps):
    expect_put(http, put_body(), status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__changed_by_agent")
    http.get(ME_URL, json=api("users_me"))
    expect_comments(http, "ticket_comments")
    expect_put(http, put_body(AGENT_STAMP))

    result = connector.apply(writeback())

    assert result.ok is True
    assert result.attempts == 2
    assert result.skipped is None
    assert [entry["body"] for entry in result.requests] == [put_body(), put_body(AGENT_STAMP)]
    assert sleeps == []


def test_apply_stops_when_landed_note_causes_conflict(connector, http, sleeps):
    # The first PUT landed but its response timed out. The retry with the old stamp is
    # rejected, and the re-read shows the note, so no second note is posted.
    timeout = requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)")
    expect_put(http, put_body(), body=timeout)
    expect_put(http, put_body(), status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__note_landed")
    http.get(ME_URL, json=api("users_me"))
    expect_comments(http, "ticket_comments__note_landed")

    result = connector.apply(writeback())

    assert result.ok is True
    assert result.skipped == "note already on the ticket"
    assert result.attempts == 2
    assert len(result.requests) == 2
    assert sleeps == [1.0]


def test_apply_conflict_without_note_skips_comment_check(connector, http):
    body = put_body()
    del body["ticket"]["comment"]
    retried = put_body(AGENT_STAMP)
    del retried["ticket"]["comment"]
    expect_put(http, body, status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__changed_by_agent")
    expect_put(http, retried)

    result = connector.apply(writeback(note=None))

    assert result.ok is True
    assert result.attempts == 2


def test_apply_conflict_until_max_attempts(http, sleeps):
    connector = ZendeskConnector("example", EMAIL, TOKEN, sleep=sleeps.append, max_attempts=2)
    expect_put(http, put_body(), status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__changed_by_agent")
    http.get(ME_URL, json=api("users_me"))
    expect_comments(http, "ticket_comments")
    expect_put(http, put_body(AGENT_STAMP), status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__changed_by_agent")
    expect_comments(http, "ticket_comments")

    with pytest.raises(ConnectorConflict) as raised:
        connector.apply(writeback())

    assert raised.value.status == 409
    assert "UpdateConflict" in raised.value.message
    assert sleeps == []


def test_apply_rate_limited_waits_retry_after(connector, http, sleeps):
    expect_put(
        http,
        put_body(),
        status=429,
        body=RATE_LIMIT_BODY,
        headers={"Retry-After": "7"},
        content_type="text/html",
    )
    expect_put(http, put_body())

    result = connector.apply(writeback())

    assert result.ok is True
    assert result.attempts == 2
    assert sleeps == [7.0]


def test_apply_rate_limit_beyond_bound_is_raised(connector, http, sleeps):
    expect_put(
        http,
        put_body(),
        status=429,
        body=RATE_LIMIT_BODY,
        headers={"Retry-After": "93"},
        content_type="text/html",
    )

    with pytest.raises(ConnectorRateLimited) as raised:
        connector.apply(writeback())

    assert raised.value.retry_after == 93.0
    assert raised.value.status == 429
    assert sleeps == []


def test_apply_server_error_is_retried(connector, http, sleeps):
    expect_put(
        http, put_body(), status=500, body="Internal Server Error", content_type="text/plain"
    )
    expect_put(http, put_body())

    result = connector.apply(writeback())

    assert result.ok is True
    assert result.attempts == 2
    assert sleeps == [1.0]


def test_apply_server_errors_until_max_attempts(http, sleeps):
    connector = ZendeskConnector("example", EMAIL, TOKEN, sleep=sleeps.append, max_attempts=3)
    expect_put(
        http, put_body(), status=500, body="Internal Server Error", content_type="text/plain"
    )
    # zenpy's default session would repeat a 503 by itself. Here each 503 is one attempt.
    expect_put(http, put_body(), status=503, json={"error": "ServiceUnavailable"})
    expect_put(
        http, put_body(), status=500, body="Internal Server Error", content_type="text/plain"
    )

    with pytest.raises(ConnectorUnavailable) as raised:
        connector.apply(writeback())

    assert raised.value.status == 500
    assert len(http.calls) == 3
    assert sleeps == [1.0, 2.0]


def test_apply_timeouts_until_max_attempts(http, sleeps):
    connector = ZendeskConnector("example", EMAIL, TOKEN, sleep=sleeps.append, max_attempts=2)
    for _ in range(2):
        expect_put(http, put_body(), body=requests.exceptions.ConnectTimeout("connect timed out"))

    with pytest.raises(ConnectorTimeout):
        connector.apply(writeback())

    assert sleeps == [1.0]


@pytest.mark.parametrize(
    ("status", "body", "error_type"),
    [
        (401, api("ticket_update__unauthorized"), ConnectorUnauthorized),
        (
            403,
            {"error": "Forbidden", "description": "You do not have access to this page."},
            ConnectorUnauthorized,
        ),
        (404, api("ticket_show__not_found"), ConnectorNotFound),
        (422, api("ticket_update__invalid"), ConnectorBadRequest),
    ],
)
def test_apply_client_errors_are_not_retried(connector, http, sleeps, status, body, error_type):
    expect_put(http, put_body(), status=status, json=body)

    with pytest.raises(error_type) as raised:
        connector.apply(writeback())

    assert raised.value.status == status
    assert "PUT /api/v2/tickets/35436.json" in raised.value.message
    assert len(http.calls) == 1
    assert sleeps == []


def test_apply_nothing_to_write_sends_nothing(connector, http):
    result = connector.apply(writeback(group=None, priority=None, add_tags=[], note=None))

    assert result.ok is True
    assert result.skipped == "nothing to write"
    assert result.requests == []
    assert len(http.calls) == 0


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"priority": "critical"}, "'critical'"),
        ({"group": "tier two"}, "'tier two'"),
        ({"add_tags": ["needs review"]}, "'needs review'"),
        ({"ticket_id": "abc"}, "'abc'"),
        ({"note": "   "}, "note"),
    ],
)
def test_apply_rejects_invalid_writeback(connector, http, overrides, named):
    with pytest.raises(ConnectorBadRequest) as raised:
        connector.apply(writeback(**overrides))

    assert named in raised.value.message
    assert len(http.calls) == 0


# Secrets


def test_token_absent_from_results_and_logs(http, sleeps, caplog):
    caplog.set_level(logging.DEBUG)
    connector = ZendeskConnector("example", EMAIL, Secret(TOKEN), sleep=sleeps.append)
    expect_show(http)
    expect_put(
        http, put_body(), status=500, body="Internal Server Error", content_type="text/plain"
    )
    expect_put(http, put_body(), status=409, json=api("ticket_update__conflict"))
    expect_show(http, "ticket_show__changed_by_agent")
    http.get(ME_URL, json=api("users_me"))
    expect_comments(http, "ticket_comments")
    expect_put(http, put_body(AGENT_STAMP), status=401, json=api("ticket_update__unauthorized"))

    ticket = connector.fetch_ticket("35436")
    with pytest.raises(ConnectorUnauthorized) as raised:
        connector.apply(writeback())

    outputs = [
        repr(connector),
        repr(ticket),
        str(raised.value),
        json.dumps(raised.value.to_dict()),
        *(record.getMessage() for record in caplog.records),
    ]
    assert http.calls[0].request.headers["Authorization"] == f"Basic {BASIC_AUTH}"
    for text in outputs:
        assert TOKEN not in text
        assert BASIC_AUTH not in text
    retries = [r.getMessage() for r in caplog.records if r.name == "connectors.zendesk"]
    assert any("zendesk ticket 35436" in message and "retrying" in message for message in retries)


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="subdomain"):
        ZendeskConnector("evil.example.org/x", EMAIL, TOKEN)
    with pytest.raises(ValueError, match="token"):
        ZendeskConnector("example", EMAIL, "")
    with pytest.raises(ValueError, match="max_attempts"):
        ZendeskConnector("example", EMAIL, TOKEN, max_attempts=0)


# Error mapping


def _exception_classes(module, root):
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, root) and obj.__module__ == module.__name__
    ]


def _instantiate(cls):
    try:
        return cls("boom")
    except TypeError:
        # json.JSONDecodeError and its requests subclass take (msg, doc, pos).
        return cls("boom", "", 0)


ZENPY_CLASSES = _exception_classes(zenpy.lib.exception, BaseException)
REQUESTS_CLASSES = _exception_classes(requests.exceptions, requests.RequestException)

EXPECTED_WITHOUT_RESPONSE = {
    "ZenpyException": ConnectorUnavailable,
    "ZenpyCacheException": ConnectorUnavailable,
    "RatelimitBudgetExceeded": ConnectorRateLimited,
    "APIException": ConnectorBadRequest,
    "RecordNotFoundException": ConnectorNotFound,
    "TooManyValuesException": ConnectorBadRequest,
    "SearchResponseLimitExceeded": ConnectorBadRequest,
}


def test_every_zenpy_exception_is_listed_and_mapped():
    names = {cls.__name__ for cls in ZENPY_CLASSES}

    assert names == set(EXPECTED_WITHOUT_RESPONSE)
    for cls in ZENPY_CLASSES:
        assert issubclass(cls, ZENPY_ERRORS), cls.__name__
        error = map_zenpy_error(_instantiate(cls))
        assert type(error) is EXPECTED_WITHOUT_RESPONSE[cls.__name__], cls.__name__
        assert error.source == "zendesk"


@pytest.mark.parametrize("cls", REQUESTS_CLASSES, ids=lambda cls: cls.__name__)
def test_every_requests_exception_is_mapped(cls):
    error = map_zenpy_error(_instantiate(cls))

    assert issubclass(cls, ZENPY_ERRORS)
    assert isinstance(error, ConnectorError)
    assert type(error) is not ConnectorError
    expected = ConnectorTimeout if issubclass(cls, requests.Timeout) else ConnectorUnavailable
    assert type(error) is expected


def _response(status: int, body: dict | None = None, headers: dict | None = None):
    response = requests.Response()
    response.status_code = status
    response.url = TICKET_URL
    response.headers.update(headers or {})
    response._content = json.dumps(body or {}).encode()
    response.request = requests.Request("PUT", TICKET_URL).prepare()
    return response


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, ConnectorBadRequest),
        (401, ConnectorUnauthorized),
        (403, ConnectorUnauthorized),
        (404, ConnectorNotFound),
        (409, ConnectorConflict),
        (422, ConnectorBadRequest),
        (429, ConnectorRateLimited),
        (500, ConnectorUnavailable),
        (503, ConnectorUnavailable),
    ],
)
def test_api_exception_maps_by_status(status, expected):
    exc = zenpy.lib.exception.APIException(
        json.dumps({"error": "X"}), response=_response(status, {"error": "X"})
    )
    http_error = requests.HTTPError("failed", response=_response(status))

    assert type(map_zenpy_error(exc)) is expected
    assert type(map_zenpy_error(http_error)) is expected


def test_rate_limit_mapping_reads_retry_after():
    error = map_zenpy_error(
        requests.HTTPError("429", response=_response(429, headers={"Retry-After": "12"}))
    )

    assert isinstance(error, ConnectorRateLimited)
    assert error.retry_after == 12.0


def test_unknown_exception_is_not_mapped():
    with pytest.raises(TypeError):
        map_zenpy_error(KeyError("ticket"))
