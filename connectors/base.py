"""Shared connector types: the typed errors, the HTTP base client and the help desk interface.

Every connector maps what its transport raises onto this tree, with ``raise ... from`` so
the original error stays attached::

    ConnectorError
    ├── ConnectorTimeout        the outside system did not respond in time
    ├── ConnectorUnavailable    connection refused, DNS failure or a 5xx response
    ├── ConnectorUnauthorized   401 or 403: credentials missing, wrong or lacking a scope
    ├── ConnectorNotFound       404: the ticket, account or record does not exist
    ├── ConnectorRateLimited    429: carries ``retry_after`` in seconds
    ├── ConnectorConflict       409: the record changed since it was read
    └── ConnectorBadRequest     another 4xx: the request itself is wrong

``transient`` says whether retrying the same request later can succeed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0


class ConnectorError(Exception):
    """Base of every error a connector raises."""

    transient = False

    def __init__(self, message: str, *, source: str = "", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.source = source
        self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "source": self.source,
            "status": self.status,
            "message": self.message,
        }


class ConnectorTimeout(ConnectorError):
    transient = True


class ConnectorUnavailable(ConnectorError):
    transient = True


class ConnectorUnauthorized(ConnectorError):
    pass


class ConnectorNotFound(ConnectorError):
    pass


class ConnectorBadRequest(ConnectorError):
    pass


class ConnectorConflict(ConnectorError):
    transient = True


class ConnectorRateLimited(ConnectorError):
    transient = True

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, default: float = 1.0) -> float:
    """Read a ``Retry-After`` header given in seconds; fall back to ``default``."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        return default


def error_for_status(source: str, status: int, message: str, headers: Any = None) -> ConnectorError:
    """Build the typed error for an HTTP status code that is not a success."""
    headers = headers or {}
    if status in (401, 403):
        return ConnectorUnauthorized(message, source=source, status=status)
    if status == 404:
        return ConnectorNotFound(message, source=source, status=status)
    if status == 409:
        return ConnectorConflict(message, source=source, status=status)
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return ConnectorRateLimited(message, source=source, status=status, retry_after=retry_after)
    if status >= 500:
        return ConnectorUnavailable(message, source=source, status=status)
    return ConnectorBadRequest(message, source=source, status=status)


def map_requests_error(source: str, exc: requests.RequestException) -> ConnectorError:
    """Map a ``requests`` transport error onto the connector error tree."""
    if isinstance(exc, requests.Timeout):
        return ConnectorTimeout(f"{source} did not respond in time: {exc}", source=source)
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        return error_for_status(
            source,
            response.status_code,
            f"{source} returned {response.status_code} for {response.request.method} "
            f"{_path(response.url)}",
            response.headers,
        )
    return ConnectorUnavailable(
        f"{source} could not be reached: {type(exc).__name__}", source=source
    )


def _path(url: str | None) -> str:
    # Only the path goes into messages, so query strings that may carry tokens stay out of logs.
    if not url:
        return ""
    return requests.utils.urlparse(url).path


class HTTPClient:
    """Base for connectors that speak plain REST: one session, a default timeout, typed errors.

    Subclasses call :meth:`request` with a path relative to ``base_url``. Any transport
    error or non-2xx response is raised as a :class:`ConnectorError`.
    """

    source = "http"

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT, session=None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = path if path.startswith("http") else f"{self.base_url}/{path.lstrip('/')}"
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, url, **kwargs)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise map_requests_error(self.source, exc) from exc
        return response


@dataclass
class WriteBack:
    """The changes the pipeline requests on one help desk ticket.

    ``group`` is the help desk's routing target for the queue (a Zendesk group id, a Jira
    field value); ``None`` leaves routing alone. ``note`` is posted as an internal note,
    never visible to the requester. Tags are only ever added.
    """

    ticket_id: str
    group: Any = None
    priority: str | None = None
    add_tags: list[str] = field(default_factory=list)
    note: str | None = None
    # The help desk's own version marker of the ticket as read (Zendesk ``updated_stamp``).
    updated_stamp: str | None = None
    # Group and priority as read. After a conflict the connector re-reads the ticket and
    # leaves out a field whose value changed since, because a person changed it meanwhile.
    read_group: str | None = None
    read_priority: str | None = None


@dataclass
class WriteBackResult:
    """The requests sent and their outcome, for the decision log."""

    ok: bool
    requests: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    skipped: str | None = None
    error: dict[str, Any] | None = None


class HelpdeskConnector(Protocol):
    """The interface the pipeline needs from a help desk; Zendesk and Jira implement it."""

    name: str

    def fetch_ticket(self, ticket_id: str):
        """Read the full ticket and return a :class:`plugin.tickets.Ticket`."""

    def apply(self, writeback: WriteBack) -> WriteBackResult:
        """Send the write-back. A conflict re-reads the ticket and retries, a rate limit
        waits for ``Retry-After``; what cannot be done raises a :class:`ConnectorError`."""
