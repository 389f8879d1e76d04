"""The read-only interface every ERP connector implements, and the OAuth token cache they share.

An ERP connector answers two questions for :class:`plugin.context.Enricher`: which customer
a ticket's account is (:meth:`ErpConnector.find_customer`), and what the ERP records about
that customer (:meth:`ErpConnector.account_facts`): overdue and disputed invoices, billing
and provisioning holds, contracts and projects. Nothing here writes to the ERP.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import date
from typing import Any

from connectors.base import ConnectorBadRequest, ConnectorUnauthorized, HTTPClient

log = logging.getLogger(__name__)

# A token is renewed this many seconds before the expiry the token endpoint gave.
TOKEN_EXPIRY_MARGIN = 60.0


class ErpConnector(ABC):
    """One ERP, read-only. Subclasses set ``name`` and implement the two lookups."""

    name: str = "erp"

    @abstractmethod
    def find_customer(self, hints) -> str | None:
        """Return the ERP's id of the customer for :class:`plugin.context.AccountHints`,
        or ``None`` when no customer matches. Raises :class:`connectors.base.ConnectorError`."""

    @abstractmethod
    def account_facts(self, customer_id: str, today: date) -> dict[str, Any]:
        """Return :class:`plugin.context.AccountContext` fields for one customer.

        Keys are field names (``overdue_invoices``, ``billing_hold``, ``projects``, ...);
        a field the ERP cannot tell is left out, never guessed.
        """


class OAuthClient(HTTPClient):
    """An :class:`HTTPClient` that sends a bearer token from ``fetch_token`` and renews it.

    ``fetch_token`` posts to the vendor's token endpoint and returns ``(token, expires_in)``.
    A 401 from the API drops the cached token and retries the request once with a new one.
    """

    def __init__(
        self,
        base_url: str,
        fetch_token: Callable[[], tuple[str, float]],
        *,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        session=None,
    ):
        super().__init__(base_url, timeout=timeout, session=session)
        self._fetch_token = fetch_token
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0

    def token(self) -> str:
        if self._token is None or self._clock() >= self._expires_at:
            token, expires_in = self._fetch_token()
            self._token = token
            self._expires_at = self._clock() + max(0.0, expires_in - TOKEN_EXPIRY_MARGIN)
        return self._token

    def authorized(self, method: str, path: str, **kwargs: Any):
        headers = dict(kwargs.pop("headers", {}) or {})
        for attempt in (1, 2):
            headers["Authorization"] = f"Bearer {self.token()}"
            try:
                return self.request(method, path, headers=headers, **kwargs)
            except ConnectorUnauthorized:
                if attempt == 2:
                    raise
                log.info("%s rejected the access token, requesting a new one", self.source)
                self._token = None
        raise AssertionError("unreachable")


def token_from_response(source: str, response) -> tuple[str, float]:
    """Read ``access_token`` and ``expires_in`` from an OAuth 2.0 token response (RFC 6749)."""
    try:
        body = response.json()
    except ValueError:
        raise ConnectorBadRequest(
            f"{source} token endpoint returned a body that is not JSON", source=source
        ) from None
    token = body.get("access_token")
    if not token:
        raise ConnectorUnauthorized(
            f"{source} token endpoint returned no access_token", source=source
        )
    try:
        expires_in = float(body.get("expires_in", 3600))
    except (TypeError, ValueError):
        expires_in = 3600.0
    return token, expires_in


def oauth_error(source: str, response) -> str:
    """Return ``error: error_description`` from an OAuth error body, for messages."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    error = body.get("error") or f"HTTP {response.status_code}"
    description = body.get("error_description")
    # Entra appends trace and correlation ids on new lines; the first line is the reason.
    if description:
        return f"{error}: {str(description).splitlines()[0]}"
    return str(error)


def parse_date(value: Any) -> date | None:
    """Read ``YYYY-MM-DD`` (optionally followed by a time); empty and invalid give ``None``."""
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = date.fromisoformat(value[:10])
    except ValueError:
        return None
    # Business Central writes 0001-01-01 for an empty date.
    return None if parsed.year <= 1 else parsed


def to_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# Mail providers whose domain says nothing about the requester's company.
FREE_MAIL_DOMAINS = ("gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "icloud.com")

# A field or column name that is safe to put into a query: letters, digits, underscores.
FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def string_literal(value: str) -> str:
    """Quote a SuiteQL or OData string literal: both double a single quote inside."""
    return "'" + str(value).replace("'", "''") + "'"


def field_option(
    options: dict, table: str, key: str, default: str | None = None, kind: str = "field name"
) -> str | None:
    """Read a field name from a policy table; raise ValueError unless it is a plain name."""
    value = options.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not FIELD_NAME.match(value):
        raise ValueError(f"{table}.{key}: {value!r} is not a {kind}")
    return value
