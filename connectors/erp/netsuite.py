"""NetSuite through SuiteQL on the REST query endpoint, with OAuth 2.0 client credentials.

The access token comes from ``POST https://{account}.suitetalk.api.netsuite.com/services/
rest/auth/oauth2/v1/token`` with ``grant_type=client_credentials`` and a JWT client
assertion signed with the private key of the certificate mapped to the integration
record: header ``kid`` is the certificate id, ``alg`` PS256; claims ``iss`` (client id),
``scope``, ``aud`` (the token URL), ``iat`` and ``exp`` (at most an hour later).

Queries go to ``POST /services/rest/query/v1/suiteql`` with ``Prefer: transient`` and a
body ``{"q": "..."}``; rows come back in ``items``. Dates are selected with ``TO_CHAR`` so
that the result does not depend on the integration user's date format preference.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import jwt
import requests

from connectors.base import (
    ConnectorBadRequest,
    ConnectorUnauthorized,
    error_for_status,
    map_requests_error,
)
from connectors.erp.base import (
    FREE_MAIL_DOMAINS,
    ErpConnector,
    OAuthClient,
    field_option,
    oauth_error,
    parse_date,
    string_literal,
    to_float,
    token_from_response,
)
from plugin.context import Contract, Project

log = logging.getLogger(__name__)

SOURCE = "netsuite"
# Rows per SuiteQL page; 1000 is the largest page the REST query service returns.
PAGE_SIZE = 1000
ASSERTION_LIFETIME_SECONDS = 300
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A SuiteQL column name: letters, digits and underscores (custom fields are custentity_x).


def account_host(account_id: str) -> str:
    """Return the account's host label: ``1234567_SB1`` becomes ``1234567-sb1``."""
    return account_id.strip().lower().replace("_", "-")


def _column(options: dict, name: str, default: str | None = None) -> str | None:
    return field_option(options, "netsuite", name, default, "SuiteQL column name")


@dataclass
class NetSuiteOptions:
    """Options from the policy file's ``[netsuite]`` table.

    ``match_field`` is the customer column compared with the ERP customer id that
    Salesforce stores (or the help desk organization's external id). The ``*_field``
    options name custom fields (``custbody_...``, ``custentity_...``); left unset, the
    fact they carry stays empty. ``contracts_table`` names the record that holds
    contracts, for example ``subscription`` with SuiteBilling.
    """

    scope: str = "rest_webservices"
    algorithm: str = "PS256"
    match_field: str = "entityid"
    disputed_field: str | None = None
    provisioning_hold_field: str | None = None
    phase_field: str | None = None
    go_live_field: str | None = None
    business_critical_field: str | None = None
    contracts_table: str | None = None
    ignored_domains: tuple[str, ...] = FREE_MAIL_DOMAINS

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> NetSuiteOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"netsuite: unknown option(s) {', '.join(unknown)}")
        algorithm = options.get("algorithm", "PS256")
        if algorithm not in ("PS256", "PS384", "PS512", "ES256", "ES384", "ES512"):
            raise ValueError(f"netsuite.algorithm: {algorithm!r} is not accepted by NetSuite")
        return cls(
            scope=str(options.get("scope", "rest_webservices")),
            algorithm=algorithm,
            match_field=_column(options, "match_field", "entityid"),
            disputed_field=_column(options, "disputed_field"),
            provisioning_hold_field=_column(options, "provisioning_hold_field"),
            phase_field=_column(options, "phase_field"),
            go_live_field=_column(options, "go_live_field"),
            business_critical_field=_column(options, "business_critical_field"),
            contracts_table=_column(options, "contracts_table"),
            ignored_domains=tuple(options.get("ignored_domains", FREE_MAIL_DOMAINS)),
        )


class NetSuiteConnector(ErpConnector):
    """Reads customers, invoices, contracts and projects from NetSuite; read-only."""

    name = SOURCE

    def __init__(
        self,
        *,
        account_id: str,
        client_id: str,
        certificate_id: str,
        private_key_file: str,
        options: NetSuiteOptions,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ):
        self.account_id = account_id
        self.client_id = client_id
        self.certificate_id = certificate_id
        self.private_key_file = private_key_file
        self.options = options
        self.clock = clock
        host = f"https://{account_host(account_id)}.suitetalk.api.netsuite.com"
        self.token_url = f"{host}/services/rest/auth/oauth2/v1/token"
        self.http = OAuthClient(host, self._fetch_token, timeout=timeout)
        self.http.source = SOURCE

    @classmethod
    def from_settings(cls, settings, options: dict, *, timeout: float) -> NetSuiteConnector:
        missing = [
            name
            for name in (
                "netsuite_account_id",
                "netsuite_client_id",
                "netsuite_certificate_id",
                "netsuite_private_key_file",
            )
            if not getattr(settings, name)
        ]
        if missing:
            raise ValueError(
                "erp is netsuite but these settings are unset: "
                + ", ".join("DESKROUTE_" + name.upper() for name in missing)
            )
        return cls(
            account_id=settings.netsuite_account_id,
            client_id=settings.netsuite_client_id,
            certificate_id=settings.netsuite_certificate_id,
            private_key_file=settings.netsuite_private_key_file,
            options=NetSuiteOptions.from_dict(options or {}),
            timeout=timeout,
        )

    # Token

    def client_assertion(self) -> str:
        """Sign the JWT that authenticates deskroute at the token endpoint."""
        try:
            key = Path(self.private_key_file).read_bytes()
        except OSError as exc:
            raise ConnectorUnauthorized(
                f"netsuite private key file cannot be read: {exc.strerror}", source=SOURCE
            ) from exc
        issued = int(self.clock())
        claims = {
            "iss": self.client_id,
            "scope": self.options.scope,
            "aud": self.token_url,
            "iat": issued,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        headers = {"typ": "JWT", "kid": self.certificate_id}
        try:
            return jwt.encode(claims, key, algorithm=self.options.algorithm, headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise ConnectorUnauthorized(
                f"netsuite private key cannot sign {self.options.algorithm}: {type(exc).__name__}",
                source=SOURCE,
            ) from exc

    def _fetch_token(self) -> tuple[str, float]:
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        try:
            response = self.http.session.post(self.token_url, data=data, timeout=self.http.timeout)
        except requests.RequestException as exc:
            raise map_requests_error(SOURCE, exc) from exc
        if response.status_code != 200:
            raise error_for_status(
                SOURCE,
                response.status_code,
                f"netsuite token request failed: {oauth_error(SOURCE, response)}",
                response.headers,
            )
        return token_from_response(SOURCE, response)

    # SuiteQL

    def suiteql(self, query: str) -> list[dict[str, Any]]:
        """Run one SuiteQL query and return its rows (the first 1000)."""
        response = self.http.authorized(
            "POST",
            "/services/rest/query/v1/suiteql",
            params={"limit": PAGE_SIZE, "offset": 0},
            headers={"Prefer": "transient"},
            json={"q": query},
        )
        try:
            body = response.json()
        except ValueError:
            raise ConnectorBadRequest(
                "netsuite returned a SuiteQL result that is not JSON", source=SOURCE
            ) from None
        if body.get("hasMore"):
            # NOTE: one page is read, because one customer rarely has more than 1000 open
            # invoices or projects. Such a customer is summarised from the first 1000.
            log.warning(
                "netsuite: SuiteQL result has more than %d rows, first page used", PAGE_SIZE
            )
        return [_strip_links(item) for item in body.get("items", [])]

    # ErpConnector

    def find_customer(self, hints) -> str | None:
        reference = hints.erp_customer_id or hints.organization_external_id
        if reference:
            match_field = self.options.match_field
            rows = self.suiteql(
                f"SELECT id FROM customer WHERE {match_field} = {string_literal(reference)}"
            )
            if len(rows) == 1:
                return str(rows[0]["id"])
        if hints.domain and hints.domain not in self.options.ignored_domains:
            rows = self.suiteql(
                "SELECT id FROM customer WHERE isinactive = 'F' AND "
                f"LOWER(email) LIKE {string_literal('%@' + hints.domain.lower())}"
            )
            if len(rows) == 1:
                return str(rows[0]["id"])
        if hints.email:
            rows = self.suiteql(
                "SELECT id FROM customer WHERE isinactive = 'F' AND "
                f"LOWER(email) = {string_literal(hints.email.lower())}"
            )
            if len(rows) == 1:
                return str(rows[0]["id"])
        return None

    def account_facts(self, customer_id: str, today: date) -> dict[str, Any]:
        if not str(customer_id).isdigit():
            raise ConnectorBadRequest(
                f"netsuite customer id {customer_id!r} is not an internal id", source=SOURCE
            )
        facts: dict[str, Any] = {"erp_customer_id": str(customer_id)}
        facts.update(self._holds(customer_id))
        facts.update(self._invoices(customer_id, today))
        facts["projects"] = self._projects(customer_id, today)
        if self.options.contracts_table:
            facts["erp_contracts"] = self._contracts(customer_id)
        return facts

    def _holds(self, customer_id: str) -> dict[str, Any]:
        columns = ["id", "creditholdoverride"]
        if self.options.provisioning_hold_field:
            columns.append(self.options.provisioning_hold_field)
        rows = self.suiteql(f"SELECT {', '.join(columns)} FROM customer WHERE id = {customer_id}")
        if not rows:
            return {}
        row = rows[0]
        values: dict[str, Any] = {}
        # creditholdoverride is ON (hold), OFF (no hold) or AUTO (NetSuite decides from
        # the credit limit, which this field alone cannot tell).
        override = str(row.get("creditholdoverride") or "").upper()
        if override in ("ON", "OFF"):
            values["billing_hold"] = override == "ON"
        if self.options.provisioning_hold_field:
            values["provisioning_hold"] = _flag(
                row.get(self.options.provisioning_hold_field.lower())
            )
        return values

    def _invoices(self, customer_id: str, today: date) -> dict[str, Any]:
        disputed = self.options.disputed_field
        columns = [
            "id",
            "tranid",
            "TO_CHAR(duedate, 'YYYY-MM-DD') AS duedate",
            "foreignamountunpaid",
        ]
        if disputed:
            columns.append(disputed)
        rows = self.suiteql(
            f"SELECT {', '.join(columns)} FROM transaction "
            f"WHERE type = 'CustInvc' AND entity = {customer_id} AND foreignamountunpaid > 0"
        )
        overdue = [row for row in rows if (due := parse_date(row.get("duedate"))) and due < today]
        values: dict[str, Any] = {
            "overdue_invoices": len(overdue),
            "overdue_amount": round(
                sum(to_float(row["foreignamountunpaid"]) or 0 for row in overdue), 2
            ),
        }
        if overdue:
            values["oldest_overdue_date"] = min(parse_date(row["duedate"]) for row in overdue)
        if disputed:
            flagged = [row for row in rows if _flag(row.get(disputed.lower()))]
            values["disputed_invoices"] = len(flagged)
            values["disputed_amount"] = round(
                sum(to_float(row["foreignamountunpaid"]) or 0 for row in flagged), 2
            )
        return values

    def _projects(self, customer_id: str, today: date) -> list[Project]:
        options = self.options
        columns = [
            "id",
            "entityid",
            "companyname",
            "BUILTIN.DF(entitystatus) AS status",
            "BUILTIN.DF(projectmanager) AS manager",
        ]
        if options.phase_field:
            columns.append(f"BUILTIN.DF({options.phase_field}) AS phase")
        if options.go_live_field:
            columns.append(f"TO_CHAR({options.go_live_field}, 'YYYY-MM-DD') AS golive")
        if options.business_critical_field:
            columns.append(f"{options.business_critical_field} AS critical")
        rows = self.suiteql(
            f"SELECT {', '.join(columns)} FROM job "
            f"WHERE customer = {customer_id} AND isinactive = 'F'"
        )
        if not rows:
            return []
        milestones = self._milestones([str(row["id"]) for row in rows], today)
        projects = []
        for row in rows:
            project_id = str(row["id"])
            milestone = milestones.get(project_id)
            projects.append(
                Project(
                    id=project_id,
                    name=row.get("companyname") or row.get("entityid"),
                    phase=row.get("phase") or None,
                    status=row.get("status") or None,
                    business_critical=(
                        _flag(row.get("critical")) if options.business_critical_field else None
                    ),
                    go_live_date=parse_date(row.get("golive")),
                    next_milestone=milestone[0] if milestone else None,
                    next_milestone_date=milestone[1] if milestone else None,
                    manager=row.get("manager") or None,
                )
            )
        return projects

    def _milestones(self, project_ids: list[str], today: date) -> dict[str, tuple[str, date]]:
        ids = ", ".join(pid for pid in project_ids if pid.isdigit())
        if not ids:
            return {}
        rows = self.suiteql(
            "SELECT project, title, TO_CHAR(enddate, 'YYYY-MM-DD') AS enddate FROM projecttask "
            f"WHERE project IN ({ids}) AND ismilestone = 'T' AND status <> 'COMPLETE' "
            "ORDER BY enddate"
        )
        first: dict[str, tuple[str, date]] = {}
        for row in rows:
            due = parse_date(row.get("enddate"))
            project_id = str(row.get("project"))
            if due is None or due < today or project_id in first:
                continue
            first[project_id] = (row.get("title"), due)
        return first

    def _contracts(self, customer_id: str) -> list[Contract]:
        rows = self.suiteql(
            "SELECT id, name, BUILTIN.DF(status) AS status, "
            "TO_CHAR(startdate, 'YYYY-MM-DD') AS startdate, "
            "TO_CHAR(enddate, 'YYYY-MM-DD') AS enddate "
            f"FROM {self.options.contracts_table} WHERE customer = {customer_id}"
        )
        return [
            Contract(
                id=str(row["id"]),
                name=row.get("name"),
                status=row.get("status"),
                start_date=parse_date(row.get("startdate")),
                end_date=parse_date(row.get("enddate")),
            )
            for row in rows
        ]


def _strip_links(item: dict[str, Any]) -> dict[str, Any]:
    # Every SuiteQL row carries a "links" list; the columns are the rest.
    return {key.lower(): value for key, value in item.items() if key != "links"}


def _flag(value: Any) -> bool:
    # SuiteQL returns check boxes as "T" or "F".
    return str(value).upper() in ("T", "TRUE", "Y", "YES", "1")
