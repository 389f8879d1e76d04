"""Zendesk connector: reads tickets and writes routing decisions back, through zenpy.

Every call goes through zenpy (2.0.57 when this was written) on a ``requests`` session that
this module builds, so retries, rate limits and errors follow one policy:

- zenpy's default session mounts a urllib3 ``Retry`` that repeats some requests on its own.
  The session built here has no such adapter, so each attempt is one HTTP request and the
  attempts are counted against ``max_attempts``.
- zenpy handles a 429 by calling ``time.sleep`` in one-second steps for as long as
  ``Retry-After`` specifies, without a bound. A response hook on the session raises on a 429
  before zenpy handles it, so the wait goes through the injected ``sleep`` and is bounded by
  ``max_retry_after``.
- zenpy's object cache would return a ticket read up to 30 seconds earlier, with a stale
  ``updated_at``. The ticket cache is removed, and the user and organization caches, which
  zenpy fills from sideloads, are emptied before each read.

What zenpy raises is mapped onto the errors of :mod:`connectors.base` by
:func:`map_zenpy_error`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from zenpy import Zenpy
from zenpy.lib.api_objects import Comment as ZenpyComment
from zenpy.lib.api_objects import Ticket as ZenpyTicket
from zenpy.lib.exception import (
    APIException,
    RatelimitBudgetExceeded,
    RecordNotFoundException,
    ZenpyException,
)
from zenpy.lib.util import dict_clean, json_encode_for_zendesk

from connectors.base import (
    DEFAULT_TIMEOUT,
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
from plugin.config import Secret
from plugin.tickets import Party, Ticket

log = logging.getLogger(__name__)

SOURCE = "zendesk"

# Every exception a zenpy call can raise on its own: its two exception roots and the
# transport errors of requests, which zenpy lets through unchanged.
ZENPY_ERRORS = (requests.RequestException, APIException, ZenpyException)

PRIORITIES = ("low", "normal", "high", "urgent")
SIDELOADS = ("users", "organizations")
MAX_BACKOFF_SECONDS = 30.0

# Zendesk subdomains are DNS labels. Checking them keeps the API host under zendesk.com.
_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_WHITESPACE = re.compile(r"\s+")

T = TypeVar("T")


def map_zenpy_error(exc: Exception) -> ConnectorError:
    """Return the connector error for an exception raised by a zenpy call.

    Raises ``TypeError`` for an exception that is not in :data:`ZENPY_ERRORS`, so a new
    kind of failure is noticed instead of being mapped to a guess.
    """
    if isinstance(exc, requests.RequestException):
        return map_requests_error(SOURCE, exc)

    if isinstance(exc, APIException):
        response = exc.response
        if response is not None:
            return error_for_status(
                SOURCE, response.status_code, _describe_response(response), response.headers
            )
        if isinstance(exc, RecordNotFoundException):
            return ConnectorNotFound("zendesk record not found", source=SOURCE, status=404)
        return ConnectorBadRequest(
            f"zendesk rejected the request: {type(exc).__name__}", source=SOURCE
        )

    if isinstance(exc, RatelimitBudgetExceeded):
        return ConnectorRateLimited("zendesk rate limit budget exhausted", source=SOURCE)

    if isinstance(exc, ZenpyException):
        # zenpy raises its base exception when it cannot read a response (an HTML error
        # page, an unknown body). The message can quote the body, so only the type is kept.
        return ConnectorUnavailable(
            f"zendesk returned a response zenpy could not read: {type(exc).__name__}",
            source=SOURCE,
        )

    raise TypeError(f"not a zenpy or requests error: {type(exc).__name__}")


def _describe_response(response: requests.Response) -> str:
    """Summarise an error response: status, method, path and Zendesk's error code."""
    method = response.request.method if response.request is not None else "?"
    path = requests.utils.urlparse(response.url or "").path
    message = f"zendesk returned HTTP {response.status_code} for {method} {path}"
    try:
        body = response.json()
    except ValueError:
        return message
    if not isinstance(body, dict):
        return message

    # Zendesk error bodies carry "error" (a code, or a sentence for 401) and often a
    # "description". Both are short and name no user data.
    parts = [
        str(body[key])[:200] for key in ("error", "description") if isinstance(body.get(key), str)
    ]
    return f"{message}: {': '.join(parts)}" if parts else message


def _reject_rate_limited(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    """Raise on a 429 inside requests, before zenpy's own unbounded wait loop runs."""
    if response.status_code == 429:
        path = requests.utils.urlparse(response.url or "").path
        raise requests.HTTPError(f"429 Too Many Requests for {path}", response=response)


def _build_session() -> requests.Session:
    # A plain Session mounts adapters without urllib3 retries, unlike the one zenpy builds.
    session = requests.Session()
    session.hooks["response"].append(_reject_rate_limited)
    return session


def _wire_body(zticket: ZenpyTicket) -> dict[str, Any]:
    """Return the JSON body zenpy sends for an update, encoded the way zenpy 2.0.57 does."""
    encoded = json.dumps(zticket, default=json_encode_for_zendesk)
    return {"ticket": json.loads(encoded, object_pairs_hook=dict_clean)}


def _ticket_number(ticket_id: str) -> int:
    text = str(ticket_id).strip()
    if not text.isdigit():
        raise ConnectorBadRequest(
            f"invalid Zendesk ticket id {ticket_id!r}: expected a positive integer", source=SOURCE
        )
    return int(text)


def _id_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _normalise_text(text: str | None) -> str:
    return _WHITESPACE.sub(" ", text or "").strip()


class ZendeskConnector:
    """Help desk connector for one Zendesk account, authenticated with an API token.

    The pipeline calls :meth:`fetch_ticket` when a delivery carries a thin snapshot and
    :meth:`apply` to write a decision back. Reads and writes retry rate limits (waiting
    ``Retry-After``), timeouts and 5xx responses (with exponential backoff) up to
    ``max_attempts`` requests each. One instance serves one thread at a time, because zenpy
    keeps per-request state on its API objects.
    """

    name = "zendesk"

    def __init__(
        self,
        subdomain: str,
        email: str,
        token: str | Secret,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        own_tag: str = "deskroute",
        backoff_seconds: float = 1.0,
        max_retry_after: float = 60.0,
    ):
        secret = token.get() if isinstance(token, Secret) else token
        if not subdomain or not _SUBDOMAIN.match(subdomain):
            raise ValueError(f"invalid Zendesk subdomain {subdomain!r}: expected a DNS label")
        if not email:
            raise ValueError("missing Zendesk email: the API token belongs to an agent's email")
        if not secret:
            raise ValueError("missing Zendesk API token")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if not own_tag or _WHITESPACE.search(own_tag):
            raise ValueError(f"invalid own tag {own_tag!r}: Zendesk tags contain no spaces")

        self.subdomain = subdomain
        self.base_url = f"https://{subdomain}.zendesk.com/api/v2"
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.own_tag = own_tag
        self.backoff_seconds = backoff_seconds
        # A longer wait is left to the caller: the error carries retry_after, and the worker
        # can re-queue the delivery instead of holding a thread.
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        self._own_user_id: str | None = None

        self._client = Zenpy(
            subdomain=subdomain,
            email=email,
            token=secret,
            session=_build_session(),
            timeout=timeout,
        )
        self._client.delete_cache("ticket")

    def __repr__(self) -> str:
        return f"ZendeskConnector(subdomain={self.subdomain!r})"

    # Reads

    def fetch_ticket(self, ticket_id: str) -> Ticket:
        """Read a ticket with its requester and organization (one GET with sideloads)."""
        number = _ticket_number(ticket_id)

        # The sideloaded users and organizations reach the caller only through zenpy's
        # cache, so the cache is emptied first to hold exactly what this response carried.
        self._client.purge_cache("user")
        self._client.purge_cache("organization")
        zticket = self._call(
            "read ticket", number, lambda: self._client.tickets(id=number, include=SIDELOADS)
        )
        return self._to_ticket(zticket)

    def own_user_id(self) -> str:
        """Return the Zendesk user id of the API user (GET /users/me, read once)."""
        if self._own_user_id is None:
            user = self._call("read own user", None, self._client.users.me)
            self._own_user_id = str(user.id)
        return self._own_user_id

    def _to_ticket(self, zticket: ZenpyTicket) -> Ticket:
        cache = self._client.cache
        requester = (
            cache.get("user", zticket.requester_id) if zticket.requester_id is not None else None
        )
        organization = (
            cache.get("organization", zticket.organization_id)
            if zticket.organization_id is not None
            else None
        )
        via = getattr(zticket, "via", None)

        return Ticket(
            helpdesk=self.name,
            id=str(zticket.id),
            subject=zticket.subject or "",
            description=zticket.description or "",
            requester=self._requester_party(zticket.requester_id, requester),
            organization=self._organization_party(zticket.organization_id, organization),
            tags=list(zticket.tags or []),
            channel=getattr(via, "channel", None),
            language=getattr(requester, "locale", None),
            status=zticket.status,
            priority=zticket.priority,
            group=_id_text(zticket.group_id),
            # updated_at stays the string Zendesk sent, since safe_update compares it as given.
            updated_stamp=zticket.updated_at,
            complete=True,
            extra={
                "type": zticket.type,
                "assignee_id": _id_text(zticket.assignee_id),
                "brand_id": _id_text(zticket.brand_id),
                "problem_id": _id_text(zticket.problem_id),
                "external_id": zticket.external_id,
                "created_at": zticket.created_at,
            },
        )

    @staticmethod
    def _requester_party(requester_id: Any, user: Any) -> Party:
        if user is None:
            return Party(id=_id_text(requester_id))
        email = getattr(user, "email", None)
        domain = email.rsplit("@", 1)[1].lower() if email and "@" in email else None
        return Party(
            id=str(user.id),
            name=getattr(user, "name", None),
            email=email,
            external_id=getattr(user, "external_id", None),
            domain=domain,
        )

    @staticmethod
    def _organization_party(organization_id: Any, organization: Any) -> Party:
        if organization is None:
            return Party(id=_id_text(organization_id))
        domains = list(getattr(organization, "domain_names", None) or [])
        return Party(
            id=str(organization.id),
            name=getattr(organization, "name", None),
            external_id=getattr(organization, "external_id", None),
            domain=domains[0] if domains else None,
        )

    # Write-back

    def apply(self, writeback: WriteBack) -> WriteBackResult:
        """Write group, priority, tags and an internal note to a ticket in one safe update.

        The PUT carries ``safe_update`` with the ``updated_stamp`` that was read, so Zendesk
        responds 409 when the ticket changed since. A 409 re-reads the ticket. When the note
        is already on it, an earlier attempt landed (a timeout or 5xx can hide that), so the
        write-back stops as done. Otherwise the PUT is sent again with the new stamp. Tags
        go in ``additional_tags``, with the own tag, so existing tags stay.

        Returns the result with one entry in ``requests`` per PUT attempt. Raises the
        connector error of the last attempt when the write cannot be done.
        """
        number = _ticket_number(writeback.ticket_id)
        fields = self._update_fields(writeback)
        if not fields:
            log.info("zendesk ticket %s: nothing to write back", number)
            return WriteBackResult(ok=True, skipped="nothing to write")

        # safe_update needs the stamp of the ticket as read, so a write-back without one reads it.
        stamp = writeback.updated_stamp or self.fetch_ticket(str(number)).updated_stamp
        url = f"{self.base_url}/tickets/{number}.json"
        result = WriteBackResult(ok=False)

        while True:
            result.attempts += 1
            zticket = self._update_ticket(number, fields, stamp)
            result.requests.append({"method": "PUT", "url": url, "body": _wire_body(zticket)})
            try:
                self._client.tickets.update(zticket)
            except ZENPY_ERRORS as exc:
                error = map_zenpy_error(exc)
                if isinstance(error, ConnectorConflict):
                    landed, stamp, current = self._reread_after_conflict(number, writeback)
                    self._drop_changed_fields(number, fields, writeback, current)
                    if landed:
                        log.info(
                            "zendesk ticket %s: 409 on attempt %d, note already on the ticket",
                            number,
                            result.attempts,
                        )
                        result.ok = True
                        result.skipped = "note already on the ticket"
                        return result
                    if result.attempts < self.max_attempts:
                        log.info(
                            "zendesk ticket %s: 409 on attempt %d of %d, retrying with stamp %s",
                            number,
                            result.attempts,
                            self.max_attempts,
                            stamp,
                        )
                        continue
                    raise error from exc

                delay = self._retry_delay(error, result.attempts)
                if delay is None:
                    log.warning(
                        "zendesk ticket %s: write-back failed on attempt %d: %s",
                        number,
                        result.attempts,
                        error.message,
                    )
                    raise error from exc
                self._log_retry("write back", number, result.attempts, error, delay)
                self._sleep(delay)
                continue

            log.info("zendesk ticket %s: written back on attempt %d", number, result.attempts)
            result.ok = True
            return result

    def _update_fields(self, writeback: WriteBack) -> dict[str, Any]:
        """Check the write-back and return the ticket fields it sets, without stamp."""
        fields: dict[str, Any] = {}
        if writeback.group is not None:
            # The policy's [queues.<name>.zendesk] table arrives as it is: {"group_id": N}.
            target = writeback.group
            group = str(target.get("group_id") if isinstance(target, dict) else target).strip()
            if not group.isdigit():
                raise ConnectorBadRequest(
                    f"invalid Zendesk group id {writeback.group!r}: expected a positive integer",
                    source=SOURCE,
                )
            fields["group_id"] = int(group)
        if writeback.priority is not None:
            if writeback.priority not in PRIORITIES:
                raise ConnectorBadRequest(
                    f"invalid Zendesk priority {writeback.priority!r}: expected one of "
                    f"{', '.join(PRIORITIES)}",
                    source=SOURCE,
                )
            fields["priority"] = writeback.priority
        for tag in writeback.add_tags:
            # Zendesk splits a tag at spaces, which would add tags that were not requested.
            if not tag or _WHITESPACE.search(tag):
                raise ConnectorBadRequest(
                    f"invalid Zendesk tag {tag!r}: tags are non-empty and contain no spaces",
                    source=SOURCE,
                )
        if writeback.note is not None and not writeback.note.strip():
            raise ConnectorBadRequest("invalid note: the internal note is empty", source=SOURCE)

        if not (fields or writeback.add_tags or writeback.note):
            return {}
        fields["additional_tags"] = list(dict.fromkeys([*writeback.add_tags, self.own_tag]))
        if writeback.note:
            fields["comment"] = {"body": writeback.note, "public": False}
        return fields

    @staticmethod
    def _update_ticket(number: int, fields: dict[str, Any], stamp: str | None) -> ZenpyTicket:
        # zenpy sends the attributes set after construction, with the id, and passes names
        # it has no field for (additional_tags, safe_update, updated_stamp) through as given.
        # NOTE: Zendesk documents additional_tags for Update Many Tickets, and the Tags API
        # for adding tags. Its Update Ticket reference lists only tags, which replace. A
        # single-ticket PUT that ignored additional_tags would leave the tags unchanged.
        zticket = ZenpyTicket(id=number)
        for key, value in fields.items():
            if key == "comment":
                value = ZenpyComment(body=value["body"], public=value["public"])
            setattr(zticket, key, value)
        zticket.safe_update = True
        if stamp is not None:
            zticket.updated_stamp = stamp
        return zticket

    def _reread_after_conflict(
        self, number: int, writeback: WriteBack
    ) -> tuple[bool, str | None, Ticket]:
        """Re-read the ticket after a 409; return whether the note landed, the new stamp and
        the ticket as it is now.

        Without a note the check is skipped: if an earlier attempt landed, sending the same
        group, priority and additional tags again changes nothing.
        """
        current = self.fetch_ticket(str(number))
        landed = bool(writeback.note) and self._note_on_ticket(number, writeback.note)
        return landed, current.updated_stamp, current

    @staticmethod
    def _drop_changed_fields(
        number: int, fields: dict[str, Any], writeback: WriteBack, current: Ticket
    ) -> None:
        """Leave out group and priority when someone changed them since the first read.

        A conflict caused by an agent who routed the ticket meanwhile must not be
        overwritten by the retry; the note and tags still go out.
        """
        changed = {
            "group_id": writeback.read_group is not None and current.group != writeback.read_group,
            "priority": writeback.read_priority is not None
            and current.priority != writeback.read_priority,
        }
        for key, was_changed in changed.items():
            if was_changed and key in fields:
                del fields[key]
                log.info("zendesk ticket %s: %s changed since read, not overwritten", number, key)

    def _note_on_ticket(self, number: int, note: str) -> bool:
        """Return whether the API user already posted this note as a private comment.

        The comments are checked rather than the own tag, because the tag stays on the
        ticket after the first write-back and cannot tell this note from an earlier one.
        """
        own_id = self.own_user_id()
        expected = _normalise_text(note)
        comments = self._call(
            "read comments", number, lambda: list(self._client.tickets.comments(ticket=number))
        )
        for comment in comments:
            if str(comment.author_id) != own_id or getattr(comment, "public", True):
                continue
            bodies = (getattr(comment, "body", None), getattr(comment, "plain_body", None))
            if any(_normalise_text(body) == expected for body in bodies):
                return True
        return False

    # Retries

    def _call(self, action: str, ticket_id: int | None, call: Callable[[], T]) -> T:
        """Run one zenpy read, retrying rate limits, timeouts and 5xx up to max_attempts."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except ZENPY_ERRORS as exc:
                error = map_zenpy_error(exc)
                delay = self._retry_delay(error, attempt)
                if delay is None:
                    raise error from exc
                self._log_retry(action, ticket_id, attempt, error, delay)
                self._sleep(delay)

    def _retry_delay(self, error: ConnectorError, attempt: int) -> float | None:
        """Return the seconds to wait before the next attempt, or None to stop."""
        if attempt >= self.max_attempts:
            return None
        if isinstance(error, ConnectorRateLimited):
            if error.retry_after > self.max_retry_after:
                return None
            return error.retry_after
        if isinstance(error, ConnectorTimeout | ConnectorUnavailable):
            return min(self.backoff_seconds * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
        return None

    def _log_retry(
        self, action: str, ticket_id: int | None, attempt: int, error: ConnectorError, delay: float
    ) -> None:
        log.warning(
            "zendesk ticket %s: %s failed on attempt %d of %d (%s), retrying in %.1f s",
            ticket_id if ticket_id is not None else "-",
            action,
            attempt,
            self.max_attempts,
            error.message,
            delay,
        )
