"""Jira Service Management connector: reads issues and writes routing back through ``jira``.

Reads and writes use Jira's REST API v2, whose issues carry descriptions as wiki markup,
the same shape the admin webhooks send. A write-back is one edit request and one comment:

- ``PUT /rest/api/2/issue/{key}`` with the priority by name and the routing field in
  ``fields``, and the labels under ``update`` as ``add`` operations, so the labels already
  on the issue stay.
- ``POST /rest/api/2/issue/{key}/comment`` with the property ``sd.public.comment`` set to
  ``{"internal": true}``, which JSM shows to agents only.

JSM queues are saved JQL filters, so a queue cannot be set directly. Routing sets the field
the queue filters on, described per queue in the policy file and handed over as
``WriteBack.group`` (see :func:`parse_routing`).

The ``jira`` package's own retries are switched off (``max_retries=0``): this module retries
429 after ``Retry-After`` and 5xx with exponential backoff, through an injected ``sleep``,
and raises 401, 403 and 404 at once as typed errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlparse

import requests
from jira import JIRA
from jira.exceptions import JIRAError

from connectors.base import (
    ConnectorBadRequest,
    ConnectorConflict,
    ConnectorError,
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnavailable,
    WriteBack,
    WriteBackResult,
    error_for_status,
    map_requests_error,
)
from plugin.markup import description_to_text
from plugin.tickets import Party, Ticket

log = logging.getLogger(__name__)

SOURCE = "jira"
INTERNAL_COMMENT_PROPERTY = "sd.public.comment"
# Jira Cloud's default priority scheme names, keyed by deskroute's priorities.
DEFAULT_PRIORITIES = {"low": "Low", "normal": "Medium", "high": "High", "urgent": "Highest"}
# The JSM "Request Type" field on most Cloud sites; the id differs per site, so it is an option.
DEFAULT_REQUEST_TYPE_FIELD = "customfield_10010"

# The fields apply() reads before writing, so that unchanged fields are not sent again and a
# note that an earlier attempt posted is not posted twice.
READ_FIELDS = "project,priority,labels,comment"

T = TypeVar("T")


@dataclass
class JiraOptions:
    """Site-wide options from the policy file's ``[jira]`` table."""

    # deskroute priority (low, normal, high, urgent) to the site's priority name.
    priorities: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    request_type_field: str = DEFAULT_REQUEST_TYPE_FIELD
    # The JSM "Organizations" field, read into Ticket.organization when set.
    organization_field: str | None = None
    # Project key to JSM service desk id for request type lookups. Unlisted projects use the key.
    service_desks: dict[str, str] = field(default_factory=dict)
    # Jira only accepts notifyUsers=false from project admins, so the default notifies.
    notify_users: bool = True
    max_attempts: int = 4
    backoff_seconds: float = 1.0
    # A Retry-After longer than this is not waited for: the error goes back to the worker.
    max_retry_after_seconds: float = 60.0

    @classmethod
    def from_table(cls, table: dict[str, Any] | None) -> JiraOptions:
        """Build options from the ``[jira]`` table; an unknown key or value raises ValueError."""
        table = dict(table or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(
                f"[jira]: unknown option {unknown[0]!r}, expected one of {sorted(known)}"
            )
        options = cls(**table)
        priorities = dict(DEFAULT_PRIORITIES)
        priorities.update(options.priorities)
        bad = sorted(set(priorities) - set(DEFAULT_PRIORITIES))
        if bad:
            raise ValueError(
                f"[jira].priorities: unknown priority {bad[0]!r}, "
                f"expected keys among {sorted(DEFAULT_PRIORITIES)}"
            )
        options.priorities = priorities
        if options.max_attempts < 1:
            raise ValueError("[jira].max_attempts: must be at least 1")
        return options


@dataclass(frozen=True)
class RoutingTarget:
    """The field to set so that the issue lands in a queue, and its JSON value."""

    field: str
    value: Any = None
    # A request type given by name; resolved to its id through the JSM API before writing.
    request_type_name: str | None = None


_TARGET_KEYS = ("request_type", "request_type_id", "option", "option_id", "team", "value")


def parse_routing(
    group: Any, project: str | None, options: JiraOptions | None = None
) -> RoutingTarget | None:
    """Read a ``[queues.<Queue>.jira]`` table into the field and value to set.

    The table contains exactly one of these, with ``field`` naming the custom field (optional
    for request types, whose field defaults to ``[jira].request_type_field``)::

        request_type = "Request access"      # a JSM request type by name
        request_type_id = "12"               # or by id
        field = "customfield_10050"
        option = "Access"                    # a single select option by value
        option_id = "10021"                  # or by id
        team = "36885b3c-1bf0-4f85-a357-c5b858c31de4"   # an Atlassian team field
        value = ...                          # any other field: the JSON value as is

    A ``projects`` subtable contains the same keys per project key and wins for that project,
    because each JSM project has its own request types and queues. A ValueError names the
    key that is wrong.
    """
    if group is None:
        return None
    options = options or JiraOptions()
    if not isinstance(group, dict):
        raise ValueError(f"jira routing target must be a table, got {type(group).__name__}")
    table = dict(group)
    projects = table.pop("projects", None) or {}
    if not isinstance(projects, dict):
        raise ValueError("jira routing target: projects must be a table of project keys")
    if project and project in projects:
        table = dict(projects[project])
    if not table:
        return None

    unknown = sorted(set(table) - set(_TARGET_KEYS) - {"field"})
    if unknown:
        raise ValueError(
            f"jira routing target: unknown key {unknown[0]!r}, "
            f"expected field and one of {list(_TARGET_KEYS)}"
        )
    present = [key for key in _TARGET_KEYS if key in table]
    if len(present) != 1:
        raise ValueError(
            f"jira routing target: set exactly one of {list(_TARGET_KEYS)}, got {present or 'none'}"
        )
    kind = present[0]
    raw = table[kind]
    field_id = table.get("field")

    if kind in ("request_type", "request_type_id"):
        field_id = field_id or options.request_type_field
        if kind == "request_type":
            return RoutingTarget(field=field_id, request_type_name=str(raw))
        # The Request Type field takes the request type id as a string.
        return RoutingTarget(field=field_id, value=str(raw))
    if not field_id:
        raise ValueError(f'jira routing target: {kind} needs field = "customfield_..."')
    if kind == "option":
        return RoutingTarget(field=field_id, value={"value": str(raw)})
    if kind == "option_id":
        return RoutingTarget(field=field_id, value={"id": str(raw)})
    if kind == "team":
        # The Atlassian team field takes the team id as a plain string.
        return RoutingTarget(field=field_id, value=str(raw))
    return RoutingTarget(field=field_id, value=raw)


def validate_routing(group: Any, options: JiraOptions | None = None) -> None:
    """Check a queue's jira table and every project override in it; raise ValueError."""
    parse_routing(group, None, options)
    for project in (group or {}).get("projects", {}) if isinstance(group, dict) else {}:
        parse_routing(group, project, options)


def _target_tables(group: Any) -> list[dict[str, Any]]:
    if not isinstance(group, dict):
        return []
    tables = [{key: value for key, value in group.items() if key != "projects"}]
    tables.extend(table for table in (group.get("projects") or {}).values() if table)
    return [table for table in tables if table]


def routing_value(group: Any, project: str | None) -> Any:
    """Return the value a changelog shows once ``group`` is applied to an issue of ``project``.

    Names for request types and options given by name (the changelog's ``toString``), ids
    for those given by id and for teams (its ``to``), so that a human change read from a
    webhook can be compared with what deskroute suggested.
    """
    table = group
    if isinstance(group, dict) and project and project in (group.get("projects") or {}):
        table = group["projects"][project]
    if not isinstance(table, dict):
        return None
    for key in _TARGET_KEYS:
        if key in table:
            value = table[key]
            return value if isinstance(value, dict | list) else str(value)
    return None


def routing_fields(groups: list[Any], options: JiraOptions | None = None) -> dict[str, str]:
    """Map each field the policy routes by to ``"name"`` or ``"id"``: which changelog value
    (``toString`` or ``to``) :func:`routing_value` returns for it.

    A field should be given the same way (by name or by id) in every queue. When tables
    mix both, the first one read decides, and changes through the other kind compare as
    overrides.
    """
    options = options or JiraOptions()
    found: dict[str, str] = {}
    for group in groups:
        for table in _target_tables(group):
            kind = next((key for key in _TARGET_KEYS if key in table), None)
            if kind is None:
                continue
            field_id = table.get("field")
            if kind in ("request_type", "request_type_id"):
                field_id = field_id or options.request_type_field
            if field_id:
                by_id = kind in ("request_type_id", "option_id", "team")
                found.setdefault(field_id, "id" if by_id else "name")
    found.setdefault(options.request_type_field, "name")
    return found


def project_of(issue_key: str) -> str | None:
    """Return the project key of an issue key such as ``ITSD-42``, or None for a numeric id."""
    project, sep, number = str(issue_key).rpartition("-")
    return project if sep and number.isdigit() else None


def ticket_from_issue(raw: dict[str, Any], options: JiraOptions | None = None) -> Ticket:
    """Map a REST v2 issue (from the API or a webhook) to the canonical ticket."""
    options = options or JiraOptions()
    fields = raw.get("fields") or {}
    reporter = fields.get("reporter") or {}
    email = reporter.get("emailAddress")
    requester = Party(
        id=reporter.get("accountId"),
        name=reporter.get("displayName"),
        email=email,
        domain=email.rsplit("@", 1)[-1].lower() if email and "@" in email else None,
    )
    organization = Party()
    if options.organization_field:
        organizations = fields.get(options.organization_field) or []
        if organizations and isinstance(organizations, list):
            first = organizations[0] or {}
            organization = Party(id=_text(first.get("id")), name=first.get("name"))

    request_type = fields.get(options.request_type_field)
    request_type_name = None
    request_type_id = None
    if isinstance(request_type, dict):
        detail = request_type.get("requestType") or {}
        request_type_name = detail.get("name")
        request_type_id = _text(detail.get("id"))

    project = (fields.get("project") or {}).get("key") or project_of(raw.get("key", ""))
    return Ticket(
        helpdesk=SOURCE,
        id=str(raw.get("key") or raw.get("id")),
        subject=fields.get("summary") or "",
        description=description_to_text(fields.get("description")),
        requester=requester,
        organization=organization,
        tags=list(fields.get("labels") or []),
        channel="jira",
        status=(fields.get("status") or {}).get("name"),
        priority=deskroute_priority((fields.get("priority") or {}).get("name"), options),
        group=request_type_name,
        updated_stamp=fields.get("updated"),
        complete=bool(fields.get("summary")),
        extra={
            "issue_id": _text(raw.get("id")),
            "project": project,
            "issue_type": (fields.get("issuetype") or {}).get("name"),
            "request_type_id": request_type_id,
        },
    )


def deskroute_priority(name: str | None, options: JiraOptions) -> str | None:
    """Return deskroute's priority for a site's priority name; unmapped names are lowercased."""
    if not name:
        return None
    for ours, theirs in options.priorities.items():
        if theirs.lower() == name.lower():
            return ours
    return name.lower()


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


class JiraConnector:
    """The help desk connector for JSM; the pipeline calls it for ``helpdesk == "jira"``.

    ``sleep`` is injected so tests can check the waits without waiting.
    """

    name = SOURCE

    def __init__(
        self,
        client: JIRA,
        options: JiraOptions | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.client = client
        self.options = options or JiraOptions()
        self.sleep = sleep
        self._request_type_ids: dict[tuple[str, str], str] = {}

    @classmethod
    def from_settings(
        cls, settings, options: dict[str, Any] | JiraOptions | None = None, **kwargs: Any
    ) -> JiraConnector:
        """Build the connector from ``DESKROUTE_JIRA_*`` settings and the ``[jira]`` table."""
        if not settings.jira_configured:
            raise ValueError(
                "Jira credentials are incomplete: set DESKROUTE_JIRA_URL, "
                "DESKROUTE_JIRA_EMAIL and DESKROUTE_JIRA_TOKEN"
            )
        if not isinstance(options, JiraOptions):
            options = JiraOptions.from_table(options)
        client = JIRA(
            server=settings.jira_url,
            basic_auth=(settings.jira_email, settings.jira_token.get()),
            get_server_info=False,
            max_retries=0,
            timeout=settings.jira_timeout_seconds,
            options={"rest_api_version": "2"},
        )
        return cls(client, options, **kwargs)

    # Reading

    def fetch_ticket(self, ticket_id: str) -> Ticket:
        issue, _ = self._call(
            f"read issue {ticket_id}", lambda: self.client.issue(ticket_id), idempotent=True
        )
        return ticket_from_issue(issue.raw, self.options)

    def routing_value(self, group: Any, ticket: Ticket) -> Any:
        """Return what the ticket's routing field shows once ``group`` is applied; see
        :func:`routing_value`. The pipeline records it to compare with human changes."""
        project = (ticket.extra or {}).get("project") or project_of(ticket.id)
        return routing_value(group, project)

    def own_user_id(self) -> str | None:
        """Return the account id deskroute's API user writes as, from ``GET /myself``."""
        me, _ = self._call("read own user", self.client.myself, idempotent=True)
        return me.get("accountId")

    # Writing

    def apply(self, writeback: WriteBack) -> WriteBackResult:
        """Set priority, routing field and labels in one edit, then post the internal comment."""
        key = writeback.ticket_id
        sent: list[dict[str, Any]] = []
        attempts = 0

        issue, used = self._call(
            f"read issue {key}",
            lambda: self.client.issue(key, fields=READ_FIELDS),
            idempotent=True,
        )
        attempts += used
        current = issue.raw.get("fields") or {}
        project = (current.get("project") or {}).get("key") or project_of(key)
        edit = self._edit_body(writeback, current, project)

        if edit:
            _, used = self._call(
                f"edit issue {key}",
                lambda: issue.update(
                    fields=edit["fields"],
                    update=edit["update"],
                    notify=self.options.notify_users,
                ),
                idempotent=True,
            )
            attempts += used
            # The jira package edits through the issue's "self" URL, which names the issue id.
            path = urlparse(issue.self).path if getattr(issue, "self", None) else key
            sent.append({"method": "PUT", "path": path, "body": edit})

        skipped = None
        if writeback.note and _comment_posted(current, writeback.note):
            # An earlier attempt posted it and failed afterwards, so it is not posted twice.
            skipped = "note already on the issue"
            log.info("jira issue %s: note already posted, not sent again", key)
        elif writeback.note:
            # A timed-out POST may have created the comment, so a timeout is not retried.
            comment, used = self._call(
                f"comment on issue {key}",
                lambda: self.client.add_comment(key, writeback.note, is_internal=True),
                idempotent=False,
            )
            attempts += used
            sent.append(
                {
                    "method": "POST",
                    "path": f"/rest/api/2/issue/{key}/comment",
                    "body": {
                        "body": writeback.note,
                        "properties": [
                            {"key": INTERNAL_COMMENT_PROPERTY, "value": {"internal": True}}
                        ],
                    },
                    "comment_id": getattr(comment, "id", None),
                }
            )

        log.info("jira write-back for ticket %s: %d requests sent", key, len(sent))
        return WriteBackResult(
            ok=True,
            requests=sent,
            attempts=attempts,
            skipped=skipped or (None if sent else "nothing to change"),
        )

    def _edit_body(
        self, writeback: WriteBack, current: dict[str, Any], project: str | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if writeback.priority:
            name = self.priority_name(writeback.priority)
            if ((current.get("priority") or {}).get("name") or "").lower() != name.lower():
                fields["priority"] = {"name": name}

        try:
            target = parse_routing(writeback.group, project, self.options)
        except ValueError as exc:
            raise ConnectorBadRequest(str(exc), source=SOURCE) from exc
        if target is not None:
            value = target.value
            if target.request_type_name is not None:
                value = self.request_type_id(project, target.request_type_name)
            fields[target.field] = value

        present = set(current.get("labels") or [])
        labels = []
        for tag in writeback.add_tags:
            label = _label(tag)
            if label not in present and label not in labels:
                labels.append(label)

        if not fields and not labels:
            return {}
        # Both keys are always sent, because the jira package's Issue.update sends both.
        update = {"labels": [{"add": label} for label in labels]} if labels else {}
        return {"fields": fields, "update": update}

    def priority_name(self, priority: str) -> str:
        try:
            return self.options.priorities[priority]
        except KeyError:
            raise ConnectorBadRequest(
                f"no Jira priority mapped for deskroute priority {priority!r}; "
                f"set [jira].priorities.{priority} in the policy file",
                source=SOURCE,
            ) from None

    def request_type_id(self, project: str | None, name: str) -> str:
        """Return the id of a request type by name, read once per project from the JSM API."""
        if not project:
            raise ConnectorBadRequest(
                f"request type {name!r} needs the issue's project to be looked up", source=SOURCE
            )
        cache_key = (project, name.lower())
        if cache_key not in self._request_type_ids:
            service_desk = self.options.service_desks.get(project, project)
            found, _ = self._call(
                f"list request types of service desk {service_desk}",
                lambda: self.client.request_types(service_desk),
                idempotent=True,
            )
            for request_type in found:
                self._request_type_ids[(project, str(request_type.name).lower())] = str(
                    request_type.id
                )
        try:
            return self._request_type_ids[cache_key]
        except KeyError:
            raise ConnectorNotFound(
                f"request type {name!r} not found in service desk of project {project}",
                source=SOURCE,
                status=404,
            ) from None

    # Transport

    def _call(self, operation: str, func: Callable[[], T], *, idempotent: bool) -> tuple[T, int]:
        """Run one request with the retry rules; return its result and the attempts used."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return _mapped(operation, func), attempt
            except ConnectorError as exc:
                delay = self._retry_delay(exc, attempt, idempotent)
                if delay is None:
                    raise
                log.warning(
                    "jira %s failed (%s), retry %d of %d in %.1f s",
                    operation,
                    type(exc).__name__,
                    attempt,
                    self.options.max_attempts - 1,
                    delay,
                )
                self.sleep(delay)

    def _retry_delay(self, exc: ConnectorError, attempt: int, idempotent: bool) -> float | None:
        if attempt >= self.options.max_attempts:
            return None
        if isinstance(exc, ConnectorRateLimited):
            if exc.retry_after > self.options.max_retry_after_seconds:
                return None
            return exc.retry_after
        if isinstance(exc, ConnectorTimeout) and not idempotent:
            return None
        # A 409 means a concurrent change on Jira's side; the edit is safe to send again.
        if isinstance(exc, ConnectorTimeout | ConnectorUnavailable | ConnectorConflict):
            return self.options.backoff_seconds * 2 ** (attempt - 1)
        return None


def _comment_posted(fields: dict[str, Any], note: str) -> bool:
    comments = (fields.get("comment") or {}).get("comments") or []
    expected = note.strip()
    return any(str(comment.get("body", "")).strip() == expected for comment in comments)


def _label(tag: str) -> str:
    # Jira labels cannot contain spaces.
    return "_".join(str(tag).split())


def _mapped(operation: str, func: Callable[[], T]) -> T:
    try:
        return func()
    except JIRAError as exc:
        status = exc.status_code
        headers = exc.response.headers if exc.response is not None else {}
        detail = exc.text or ""
        # JIRAError's str() prints the response headers, which can carry session cookies;
        # drop them so a logged traceback of the chained error cannot show them.
        exc.response = None
        exc.request = None
        exc.headers = None
        if status is None:
            raise ConnectorUnavailable(f"jira {operation}: no response", source=SOURCE) from exc
        message = f"jira {operation}: HTTP {status}"
        if detail:
            message += f": {detail}"
        raise error_for_status(SOURCE, status, message, headers) from exc
    except requests.RequestException as exc:
        raise map_requests_error(SOURCE, exc) from exc
    except (AttributeError, TypeError, KeyError) as exc:
        # The jira package parses the JSON into resources and fails this way on a body of
        # another shape, such as a list from a proxy in front of Jira.
        raise ConnectorUnavailable(
            f"jira {operation}: unexpected response ({type(exc).__name__})", source=SOURCE
        ) from exc
