"""Salesforce account context through simple-salesforce: account matching, entitlements,
service contracts, renewal opportunities and open cases, all read with SOQL.

Authentication, first match wins:

1. OAuth 2.0 JWT bearer flow: ``salesforce_username``, ``salesforce_consumer_key`` and
   ``salesforce_private_key_file`` (the connected app's certificate key). The token comes
   from ``https://{salesforce_domain}.salesforce.com/services/oauth2/token``.
2. Username, password and security token, through the SOAP ``login()`` call.
3. An existing session id with ``salesforce_instance_url``.

Salesforce has no standard tier field, so the field names are options of the policy
file's ``[salesforce]`` table; see :class:`SalesforceOptions`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)
from simple_salesforce.format import format_soql

from connectors.base import (
    ConnectorBadRequest,
    ConnectorError,
    ConnectorNotFound,
    ConnectorRateLimited,
    ConnectorTimeout,
    ConnectorUnauthorized,
    ConnectorUnavailable,
)
from connectors.erp.base import parse_date, to_float
from plugin.context import PRIORITIES, Contract, Entitlement, Renewal

log = logging.getLogger(__name__)

SOURCE = "salesforce"
# The REST API version simple-salesforce 1.12 uses by default.
DEFAULT_API_VERSION = "59.0"
# Mail providers whose domain does not identify the requester's company.
FREE_MAIL_DOMAINS = (
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "yahoo.com",
    "icloud.com",
    "me.com",
    "aol.com",
    "proton.me",
    "protonmail.com",
    "gmx.de",
    "web.de",
)
# A field name or relationship path, e.g. Tier__c or Delivery_Manager__r.Name.
FIELD_PATH = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*$")


def _field_option(options: dict, name: str, default: str | None = None) -> str | None:
    value = options.get(name, default)
    if value is None:
        return None
    if not isinstance(value, str) or not FIELD_PATH.match(value):
        raise ValueError(f"salesforce.{name}: {value!r} is not a Salesforce field name")
    return value


@dataclass
class SlaTarget:
    """The SLA an entitlement process stands for; SOQL cannot read milestone times."""

    first_response_minutes: float | None = None
    resolution_minutes: float | None = None
    priority: str | None = None


@dataclass
class SalesforceOptions:
    """Options from the policy file's ``[salesforce]`` table.

    ``external_id_field`` is the Account field that contains the help desk
    organization's external id. ``sla`` maps an entitlement process name to its targets
    and priority class, for orgs that keep no target fields on Entitlement.
    """

    api_version: str = DEFAULT_API_VERSION
    external_id_field: str | None = None
    domain_field: str = "Website"
    ignored_domains: tuple[str, ...] = FREE_MAIL_DOMAINS
    tier_field: str | None = None
    delivery_manager_field: str | None = None
    erp_id_field: str | None = None
    account_fields: tuple[str, ...] = ()
    renewal_types: tuple[str, ...] = ("Renewal",)
    first_response_field: str | None = None
    resolution_field: str | None = None
    sla: dict[str, SlaTarget] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> SalesforceOptions:
        known = {
            "api_version",
            "external_id_field",
            "domain_field",
            "ignored_domains",
            "tier_field",
            "delivery_manager_field",
            "erp_id_field",
            "account_fields",
            "renewal_types",
            "first_response_field",
            "resolution_field",
            "sla",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"salesforce: unknown option(s) {', '.join(unknown)}")
        account_fields = tuple(options.get("account_fields", ()))
        for name in account_fields:
            if not isinstance(name, str) or not FIELD_PATH.match(name):
                raise ValueError(f"salesforce.account_fields: {name!r} is not a field name")
        sla: dict[str, SlaTarget] = {}
        for process, target in (options.get("sla") or {}).items():
            priority = target.get("priority")
            if priority is not None and priority not in PRIORITIES:
                raise ValueError(
                    f"salesforce.sla.{process}.priority: {priority!r} is not one of {PRIORITIES}"
                )
            sla[process] = SlaTarget(
                first_response_minutes=to_float(target.get("first_response_minutes")),
                resolution_minutes=to_float(target.get("resolution_minutes")),
                priority=priority,
            )
        return cls(
            api_version=str(options.get("api_version", DEFAULT_API_VERSION)).lstrip("v"),
            external_id_field=_field_option(options, "external_id_field"),
            domain_field=_field_option(options, "domain_field", "Website"),
            ignored_domains=tuple(
                item.lower() for item in options.get("ignored_domains", FREE_MAIL_DOMAINS)
            ),
            tier_field=_field_option(options, "tier_field"),
            delivery_manager_field=_field_option(options, "delivery_manager_field"),
            erp_id_field=_field_option(options, "erp_id_field"),
            account_fields=account_fields,
            renewal_types=tuple(options.get("renewal_types", ("Renewal",))),
            first_response_field=_field_option(options, "first_response_field"),
            resolution_field=_field_option(options, "resolution_field"),
            sla=sla,
        )


@dataclass
class AccountMatch:
    account_id: str
    name: str | None
    # external_id, domain or contact_email
    matched_by: str


class _TimeoutSession(requests.Session):
    """A session whose requests time out after ``timeout`` seconds unless the caller sets one.

    simple-salesforce sends its login and token calls without a timeout; this session is
    how they get one.
    """

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def map_salesforce_error(exc: Exception) -> ConnectorError:
    """Map a simple-salesforce or ``requests`` error onto the connector error tree."""
    if isinstance(exc, requests.Timeout):
        return ConnectorTimeout("salesforce did not respond in time", source=SOURCE)
    if isinstance(exc, requests.RequestException):
        return ConnectorUnavailable(
            f"salesforce could not be reached: {type(exc).__name__}", source=SOURCE
        )
    if isinstance(exc, SalesforceAuthenticationFailed):
        return ConnectorUnauthorized(f"salesforce login failed: {exc.code}", source=SOURCE)
    if not isinstance(exc, SalesforceError):
        return ConnectorError(f"salesforce: {type(exc).__name__}", source=SOURCE)
    status = exc.status
    detail = _error_code(exc.content)
    message = f"salesforce returned {status} for {exc.resource_name}: {detail}"
    if isinstance(exc, SalesforceExpiredSession | SalesforceRefusedRequest):
        if detail.startswith("REQUEST_LIMIT_EXCEEDED"):
            # The org's rolling 24-hour API limit; Salesforce sends no Retry-After, so the
            # 60 s here is a guess at when to look again.
            return ConnectorRateLimited(message, source=SOURCE, status=status, retry_after=60.0)
        return ConnectorUnauthorized(message, source=SOURCE, status=status)
    if isinstance(exc, SalesforceResourceNotFound):
        return ConnectorNotFound(message, source=SOURCE, status=status)
    if isinstance(exc, SalesforceMalformedRequest):
        return ConnectorBadRequest(message, source=SOURCE, status=status)
    if status == 429:
        return ConnectorRateLimited(message, source=SOURCE, status=status)
    if status is not None and status >= 500:
        return ConnectorUnavailable(message, source=SOURCE, status=status)
    return ConnectorBadRequest(message, source=SOURCE, status=status)


def _error_code(content: Any) -> str:
    # REST errors are a list of {"message", "errorCode"}; the code names the cause.
    if isinstance(content, list) and content and isinstance(content[0], dict):
        first = content[0]
        code = first.get("errorCode", "error")
        return f"{code} {first.get('message', '')}".strip()
    return "no error code in the body"


def _read(record: dict | None, path: str) -> Any:
    """Read ``Owner.Name`` style paths from a SOQL record; a missing link gives ``None``."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _host(website: str | None) -> str | None:
    if not website:
        return None
    text = website.strip().lower()
    if "://" not in text:
        text = "//" + text
    host = requests.utils.urlparse(text).hostname or ""
    return host.removeprefix("www.") or None


class SalesforceConnector:
    """Reads account context from Salesforce; called by :class:`plugin.context.Enricher`."""

    name = SOURCE

    def __init__(
        self,
        credentials: dict[str, Any],
        options: SalesforceOptions,
        *,
        timeout: float,
    ):
        self.credentials = credentials
        self.options = options
        self.timeout = timeout
        self._sf: Salesforce | None = None

    @classmethod
    def from_settings(
        cls, settings, options: dict[str, Any], *, timeout: float
    ) -> SalesforceConnector | None:
        """Return a connector for the credentials in ``settings``, or ``None`` when unset."""
        credentials = cls.credentials_from(settings)
        if credentials is None:
            return None
        return cls(credentials, SalesforceOptions.from_dict(options or {}), timeout=timeout)

    @staticmethod
    def credentials_from(settings) -> dict[str, Any] | None:
        domain = settings.salesforce_domain or "login"
        if (
            settings.salesforce_username
            and settings.salesforce_consumer_key
            and settings.salesforce_private_key_file
        ):
            return {
                "auth": "jwt",
                "username": settings.salesforce_username,
                "consumer_key": settings.salesforce_consumer_key,
                "privatekey_file": settings.salesforce_private_key_file,
                "domain": domain,
            }
        if (
            settings.salesforce_username
            and settings.salesforce_password
            and settings.salesforce_security_token
        ):
            return {
                "auth": "password",
                "username": settings.salesforce_username,
                "password": settings.salesforce_password,
                "security_token": settings.salesforce_security_token,
                "domain": domain,
            }
        if settings.salesforce_session_id and settings.salesforce_instance_url:
            return {
                "auth": "session",
                "session_id": settings.salesforce_session_id,
                "instance_url": settings.salesforce_instance_url,
            }
        return None

    # Connection

    def client(self) -> Salesforce:
        """Return the logged-in client, logging in on first use or after a failed login."""
        if self._sf is not None:
            return self._sf
        creds = self.credentials
        common = {
            "version": self.options.api_version,
            "session": _TimeoutSession(self.timeout),
            "object_pairs_hook": dict,
        }
        try:
            if creds["auth"] == "jwt":
                sf = Salesforce(
                    username=creds["username"],
                    consumer_key=creds["consumer_key"],
                    privatekey_file=creds["privatekey_file"],
                    domain=creds["domain"],
                    **common,
                )
            elif creds["auth"] == "password":
                sf = Salesforce(
                    username=creds["username"],
                    password=creds["password"].get(),
                    security_token=creds["security_token"].get(),
                    domain=creds["domain"],
                    **common,
                )
            else:
                sf = Salesforce(
                    session_id=creds["session_id"].get(),
                    instance_url=creds["instance_url"],
                    **common,
                )
        except (SalesforceError, requests.RequestException) as exc:
            raise map_salesforce_error(exc) from exc
        except OSError as exc:
            # The JWT private key file could not be read.
            raise ConnectorUnauthorized(
                f"salesforce private key file cannot be read: {exc.strerror}", source=SOURCE
            ) from exc
        log.info("salesforce: logged in with %s auth, instance %s", creds["auth"], sf.sf_instance)
        self._sf = sf
        return sf

    def query(self, soql: str, *, all_pages: bool = True) -> dict[str, Any]:
        """Run one SOQL query and return the result; ``all_pages`` follows
        ``nextRecordsUrl`` and sets ``totalSize`` to the number of records read."""
        try:
            if not all_pages:
                return self.client().query(soql, timeout=self.timeout)
            return self.client().query_all(soql, timeout=self.timeout)
        except (SalesforceError, requests.RequestException) as exc:
            error = map_salesforce_error(exc)
            if isinstance(error, ConnectorUnauthorized):
                # Log in again next time: the session may have been revoked.
                self._sf = None
            raise error from exc

    def records(self, soql: str) -> list[dict[str, Any]]:
        return self.query(soql)["records"]

    # Matching

    def find_account(self, hints) -> AccountMatch | None:
        """Find the Account: by external id, then e-mail domain, then contact e-mail."""
        options = self.options
        if options.external_id_field and hints.organization_external_id:
            found = self.records(
                format_soql(
                    f"SELECT Id, Name FROM Account WHERE {options.external_id_field} = {{}} "
                    "LIMIT 2",
                    hints.organization_external_id,
                )
            )
            if len(found) == 1:
                return AccountMatch(found[0]["Id"], found[0].get("Name"), "external_id")
            if len(found) > 1:
                log.warning(
                    "salesforce: %d accounts share %s %s; trying the e-mail domain",
                    len(found),
                    options.external_id_field,
                    hints.organization_external_id,
                )

        domain = hints.domain
        if domain and domain not in options.ignored_domains:
            match = self._match_domain(domain)
            if match is not None:
                return match

        if hints.email:
            found = self.records(
                format_soql(
                    "SELECT AccountId, Account.Name FROM Contact "
                    "WHERE Email = {} AND AccountId != null LIMIT 5",
                    hints.email,
                )
            )
            account_ids = {item["AccountId"] for item in found}
            if len(account_ids) == 1:
                record = found[0]
                return AccountMatch(
                    record["AccountId"], _read(record, "Account.Name"), "contact_email"
                )
            if len(account_ids) > 1:
                log.warning(
                    "salesforce: contacts with the requester's e-mail belong to %d accounts; "
                    "no account chosen",
                    len(account_ids),
                )
        return None

    def _match_domain(self, domain: str) -> AccountMatch | None:
        field_name = self.options.domain_field
        found = self.records(
            format_soql(
                f"SELECT Id, Name, {field_name} FROM Account "
                f"WHERE {field_name} LIKE '%{{:like}}%' LIMIT 20",
                domain,
            )
        )
        # LIKE also finds notacme.com for acme.com; keep accounts whose host is the
        # domain or a parent of it (mail.acme.com belongs to acme.com).
        matches = []
        for record in found:
            host = _host(_read(record, field_name))
            if host and (domain == host or domain.endswith("." + host)):
                matches.append(record)
        if len(matches) == 1:
            return AccountMatch(matches[0]["Id"], matches[0].get("Name"), "domain")
        if len(matches) > 1:
            log.warning(
                "salesforce: %d accounts match domain %s; trying the contact e-mail",
                len(matches),
                domain,
            )
        return None

    # Account details

    def account_details(self, match: AccountMatch, today: date) -> dict[str, Any]:
        """Return :class:`plugin.context.AccountContext` fields for one matched Account."""
        values = self._account(match)
        values["entitlements"] = self._entitlements(match.account_id)
        values["service_contracts"] = self._service_contracts(match.account_id)
        values["renewal"] = self._renewal(match.account_id)
        # A COUNT() query returns no records; its totalSize is the count.
        values["open_cases"] = self.query(
            format_soql(
                "SELECT COUNT() FROM Case WHERE AccountId = {} AND IsClosed = false",
                match.account_id,
            ),
            all_pages=False,
        )["totalSize"]
        return values

    def _account(self, match: AccountMatch) -> dict[str, Any]:
        options = self.options
        selected = ["Id", "Name", "Owner.Name"]
        for name in (options.tier_field, options.delivery_manager_field, options.erp_id_field):
            if name:
                selected.append(name)
        selected.extend(options.account_fields)
        columns = ", ".join(dict.fromkeys(selected))
        found = self.records(
            format_soql(f"SELECT {columns} FROM Account WHERE Id = {{}}", match.account_id)
        )
        if not found:
            raise ConnectorNotFound(
                f"salesforce account {match.account_id} no longer exists", source=SOURCE
            )
        record = found[0]
        erp_id = _read(record, options.erp_id_field) if options.erp_id_field else None
        return {
            "account_id": record["Id"],
            "account_name": record.get("Name"),
            "matched_by": match.matched_by,
            "tier": _text(_read(record, options.tier_field)) if options.tier_field else None,
            "account_owner": _text(_read(record, "Owner.Name")),
            "delivery_manager": (
                _text(_read(record, options.delivery_manager_field))
                if options.delivery_manager_field
                else None
            ),
            "erp_customer_id": _text(erp_id),
            "fields": {name: _read(record, name) for name in options.account_fields},
        }

    def _entitlements(self, account_id: str) -> list[Entitlement]:
        options = self.options
        columns = ["Id", "Name", "Status", "StartDate", "EndDate", "SlaProcess.Name"]
        for name in (options.first_response_field, options.resolution_field):
            if name:
                columns.append(name)
        found = self.records(
            format_soql(
                f"SELECT {', '.join(dict.fromkeys(columns))} FROM Entitlement "
                "WHERE AccountId = {} AND Status = 'Active'",
                account_id,
            )
        )
        entitlements = []
        for record in found:
            process = _read(record, "SlaProcess.Name")
            target = options.sla.get(process or "", SlaTarget())
            first = (
                to_float(_read(record, options.first_response_field))
                if options.first_response_field
                else None
            )
            resolution = (
                to_float(_read(record, options.resolution_field))
                if options.resolution_field
                else None
            )
            entitlements.append(
                Entitlement(
                    id=record["Id"],
                    name=record.get("Name"),
                    status=record.get("Status"),
                    process=process,
                    start_date=parse_date(record.get("StartDate")),
                    end_date=parse_date(record.get("EndDate")),
                    first_response_minutes=first or target.first_response_minutes,
                    resolution_minutes=resolution or target.resolution_minutes,
                    sla_priority=target.priority,
                )
            )
        return entitlements

    def _service_contracts(self, account_id: str) -> list[Contract]:
        found = self.records(
            format_soql(
                "SELECT Id, Name, Status, StartDate, EndDate FROM ServiceContract "
                "WHERE AccountId = {} AND Status = 'Active' ORDER BY EndDate ASC",
                account_id,
            )
        )
        return [
            Contract(
                id=record["Id"],
                name=record.get("Name"),
                status=record.get("Status"),
                start_date=parse_date(record.get("StartDate")),
                end_date=parse_date(record.get("EndDate")),
            )
            for record in found
        ]

    def _renewal(self, account_id: str) -> Renewal | None:
        if not self.options.renewal_types:
            return None
        found = self.records(
            format_soql(
                "SELECT Id, Name, StageName, CloseDate, Amount FROM Opportunity "
                "WHERE AccountId = {} AND IsClosed = false AND Type IN {} "
                "ORDER BY CloseDate ASC LIMIT 1",
                account_id,
                list(self.options.renewal_types),
            )
        )
        if not found:
            return None
        record = found[0]
        return Renewal(
            id=record["Id"],
            name=record.get("Name"),
            stage=record.get("StageName"),
            close_date=parse_date(record.get("CloseDate")),
            amount=to_float(record.get("Amount")),
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None
