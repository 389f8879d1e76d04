"""Microsoft Dynamics 365 Business Central through its OData v4 API v2.0, with Microsoft
Entra client credentials.

The token comes from ``POST https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token``
with ``grant_type=client_credentials``, the app registration's client id and secret and
the scope ``https://api.businesscentral.dynamics.com/.default``. API calls go to
``https://api.businesscentral.dynamics.com/v2.0/{tenant}/{environment}/api/v2.0/
companies({company id})/...`` and list results come back in ``value``.

Read: ``customers`` (``blocked`` gives the holds), ``salesInvoices`` (open ones, for
overdue amounts) and projects. The standard ``projects`` entity has only id, number and
name, with no link to a customer, so project facts need a custom API page; the options
``projects_path`` and ``project_*_field`` name it and its fields.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import requests

from connectors.base import (
    ConnectorBadRequest,
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
from plugin.context import Project

log = logging.getLogger(__name__)

SOURCE = "businesscentral"
LOGIN_URL = "https://login.microsoftonline.com"
API_URL = "https://api.businesscentral.dynamics.com"
SCOPE = "https://api.businesscentral.dynamics.com/.default"
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A relative API path such as "api/contoso/projects/v1.0/companies({company})/projects".
API_PATH = re.compile(r"^[A-Za-z0-9_./(){}-]+$")
# Values of the customer's "blocked" field that mean a billing or a provisioning hold.
BILLING_BLOCKS = ("Invoice", "All")
PROVISIONING_BLOCKS = ("Ship", "All")


def _name(options: dict, key: str, default: str | None = None) -> str | None:
    return field_option(options, "businesscentral", key, default, "API field name")


@dataclass
class BusinessCentralOptions:
    """Options from the policy file's ``[businesscentral]`` table.

    ``match_field`` is the customer field compared with the ERP customer id from
    Salesforce. ``projects_path`` is a custom API page relative to the API base URL,
    with ``{company}`` standing for the company id; ``project_customer_field`` is its
    field holding the customer number. Without them no project facts are read.
    """

    match_field: str = "number"
    projects_path: str | None = None
    project_customer_field: str | None = None
    project_phase_field: str | None = None
    project_go_live_field: str | None = None
    project_business_critical_field: str | None = None
    project_milestone_field: str | None = None
    project_milestone_date_field: str | None = None
    project_manager_field: str | None = None
    ignored_domains: tuple[str, ...] = FREE_MAIL_DOMAINS

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> BusinessCentralOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"businesscentral: unknown option(s) {', '.join(unknown)}")
        path = options.get("projects_path")
        if path is not None and (not isinstance(path, str) or not API_PATH.match(path)):
            raise ValueError(f"businesscentral.projects_path: {path!r} is not an API path")
        if path and not options.get("project_customer_field"):
            raise ValueError(
                "businesscentral.projects_path needs project_customer_field, the field "
                "that links a project to its customer"
            )
        return cls(
            match_field=_name(options, "match_field", "number"),
            projects_path=path,
            project_customer_field=_name(options, "project_customer_field"),
            project_phase_field=_name(options, "project_phase_field"),
            project_go_live_field=_name(options, "project_go_live_field"),
            project_business_critical_field=_name(options, "project_business_critical_field"),
            project_milestone_field=_name(options, "project_milestone_field"),
            project_milestone_date_field=_name(options, "project_milestone_date_field"),
            project_manager_field=_name(options, "project_manager_field"),
            ignored_domains=tuple(options.get("ignored_domains", FREE_MAIL_DOMAINS)),
        )


class BusinessCentralConnector(ErpConnector):
    """Reads customers, sales invoices and projects from Business Central; read-only."""

    name = SOURCE

    def __init__(
        self,
        *,
        tenant_id: str,
        environment: str,
        company_id: str,
        client_id: str,
        client_secret,
        options: BusinessCentralOptions,
        timeout: float,
    ):
        if not GUID.match(company_id):
            raise ValueError(f"businesscentral_company_id: {company_id!r} is not a GUID")
        self.tenant_id = tenant_id
        self.environment = environment
        self.company_id = company_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.options = options
        self.token_url = f"{LOGIN_URL}/{tenant_id}/oauth2/v2.0/token"
        self.api_root = f"{API_URL}/v2.0/{tenant_id}/{environment}"
        self.http = OAuthClient(
            f"{self.api_root}/api/v2.0/companies({company_id})", self._fetch_token, timeout=timeout
        )
        self.http.source = SOURCE

    @classmethod
    def from_settings(cls, settings, options: dict, *, timeout: float) -> BusinessCentralConnector:
        names = (
            "businesscentral_tenant_id",
            "businesscentral_company_id",
            "businesscentral_client_id",
            "businesscentral_client_secret",
        )
        missing = [name for name in names if not getattr(settings, name)]
        if missing:
            raise ValueError(
                "erp is businesscentral but these settings are unset: "
                + ", ".join("DESKROUTE_" + name.upper() for name in missing)
            )
        return cls(
            tenant_id=settings.businesscentral_tenant_id,
            environment=settings.businesscentral_environment or "production",
            company_id=settings.businesscentral_company_id,
            client_id=settings.businesscentral_client_id,
            client_secret=settings.businesscentral_client_secret,
            options=BusinessCentralOptions.from_dict(options or {}),
            timeout=timeout,
        )

    def _fetch_token(self) -> tuple[str, float]:
        data = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret.get(),
            "scope": SCOPE,
        }
        try:
            response = self.http.session.post(self.token_url, data=data, timeout=self.http.timeout)
        except requests.RequestException as exc:
            raise map_requests_error(SOURCE, exc) from exc
        if response.status_code != 200:
            # Entra returns 401 invalid_client for a wrong secret and 400 (AADSTS90002)
            # for an unknown tenant. Both are credential errors of this configuration.
            status = 401 if response.status_code == 400 else response.status_code
            raise error_for_status(
                SOURCE,
                status,
                f"entra token request failed: {oauth_error(SOURCE, response)}",
                response.headers,
            )
        return token_from_response(SOURCE, response)

    def get_values(self, path: str, params: dict[str, str] | None = None) -> list[dict[str, Any]]:
        response = self.http.authorized("GET", path, params=params or {})
        try:
            body = response.json()
        except ValueError:
            raise ConnectorBadRequest(
                f"businesscentral returned a body that is not JSON for {path}", source=SOURCE
            ) from None
        if "value" in body:
            return list(body["value"])
        return [body]

    # ErpConnector

    def find_customer(self, hints) -> str | None:
        reference = hints.erp_customer_id or hints.organization_external_id
        filters = []
        if reference:
            filters.append(f"{self.options.match_field} eq {string_literal(reference)}")
        if hints.domain and hints.domain not in self.options.ignored_domains:
            filters.append(f"endswith(email,{string_literal('@' + hints.domain)})")
        if hints.email:
            filters.append(f"email eq {string_literal(hints.email)}")
        for expression in filters:
            found = self.get_values(
                "customers", {"$filter": expression, "$select": "id,number", "$top": "2"}
            )
            if len(found) == 1:
                return found[0]["id"]
        return None

    def account_facts(self, customer_id: str, today: date) -> dict[str, Any]:
        if not GUID.match(customer_id):
            raise ConnectorBadRequest(
                f"businesscentral customer id {customer_id!r} is not a GUID", source=SOURCE
            )
        customer = self.get_values(f"customers({customer_id})")[0]
        facts: dict[str, Any] = {"erp_customer_id": customer.get("number") or customer_id}
        blocked = (customer.get("blocked") or "").strip()
        facts["billing_hold"] = blocked in BILLING_BLOCKS
        facts["provisioning_hold"] = blocked in PROVISIONING_BLOCKS
        facts.update(self._invoices(customer_id, today))
        if self.options.projects_path and customer.get("number"):
            facts["projects"] = self._projects(customer["number"])
        # NOTE: API v2.0 has no dispute flag on sales invoices and no contract entity, so
        # disputed_invoices and erp_contracts stay empty for Business Central.
        return facts

    def _invoices(self, customer_id: str, today: date) -> dict[str, Any]:
        invoices = self.get_values(
            "salesInvoices",
            {
                "$filter": f"customerId eq {customer_id} and status eq 'Open'",
                "$select": "id,number,dueDate,remainingAmount,currencyCode,status",
            },
        )
        overdue = [
            item
            for item in invoices
            if (due := parse_date(item.get("dueDate")))
            and due < today
            and (to_float(item.get("remainingAmount")) or 0) > 0
        ]
        values: dict[str, Any] = {
            "overdue_invoices": len(overdue),
            "overdue_amount": round(sum(to_float(i["remainingAmount"]) for i in overdue), 2),
        }
        if overdue:
            values["oldest_overdue_date"] = min(parse_date(i["dueDate"]) for i in overdue)
        return values

    def _projects(self, customer_number: str) -> list[Project]:
        options = self.options
        path = options.projects_path.replace("{company}", self.company_id)
        found = self.get_values(
            f"{self.api_root}/{path.lstrip('/')}",
            {"$filter": f"{options.project_customer_field} eq {string_literal(customer_number)}"},
        )
        projects = []
        for item in found:
            critical = (
                item.get(options.project_business_critical_field)
                if options.project_business_critical_field
                else None
            )
            projects.append(
                Project(
                    id=str(item.get("id") or item.get("number")),
                    name=item.get("displayName") or item.get("number"),
                    phase=_get(item, options.project_phase_field),
                    status=item.get("status"),
                    business_critical=bool(critical) if critical is not None else None,
                    go_live_date=parse_date(_get(item, options.project_go_live_field)),
                    next_milestone=_get(item, options.project_milestone_field),
                    next_milestone_date=parse_date(
                        _get(item, options.project_milestone_date_field)
                    ),
                    manager=_get(item, options.project_manager_field),
                )
            )
        return projects


def _get(item: dict[str, Any], name: str | None) -> Any:
    if not name:
        return None
    value = item.get(name)
    return value if value not in ("", None) else None
