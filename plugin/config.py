"""Settings: built-in defaults, then an optional TOML file, then ``DESKROUTE_*`` variables.

Nothing here runs at import time. :func:`load_settings` is called by the app factory and
the CLI; tests pass overrides instead of touching the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DESKROUTE_"
# A DNS label, as Zendesk subdomains are.
ZENDESK_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MODES = ("shadow", "suggest", "auto")


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and the value's source."""


class Secret:
    """A secret value that prints as ``[secure]`` in reprs, logs and ``check-config``."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('[secure]')"

    def __str__(self) -> str:
        return "[secure]"


def _secret(metadata: dict | None = None) -> Any:
    return field(default=None, metadata={"secret": True, **(metadata or {})})


@dataclass
class Settings:
    """Every setting of a deskroute instance. Field ``x`` is read from ``DESKROUTE_X``."""

    # Where the SQLite database and other local state live by default.
    data_dir: str = "data"
    database_url: str | None = None
    mode: str | None = None
    policy_file: str | None = None
    model_dir: str | None = None
    api_token: Secret | None = _secret()
    # Largest webhook body accepted, in bytes; larger bodies get 413.
    max_body_bytes: int = 1_000_000
    # Accepted age of a signed Zendesk delivery, in seconds, either side of now.
    signature_tolerance_seconds: int = 300
    # Starts the in-process worker that runs the pipeline on stored deliveries.
    run_worker: bool = True
    worker_poll_seconds: float = 0.2
    # Attempts before a delivery is marked failed; retries back off exponentially.
    # With retry_base_seconds = 2 the waits are 2, 4, ... 256 and 300 s, so a delivery
    # outlasts an outage of about 13 minutes before it is marked failed.
    max_attempts: int = 10
    retry_base_seconds: float = 2.0
    # A claimed delivery whose worker did not finish within this time is claimed again.
    lease_seconds: float = 120.0
    # The tag deskroute puts on every ticket it writes to; its own updates carry it.
    own_tag: str = "deskroute"

    zendesk_subdomain: str | None = None
    zendesk_email: str | None = None
    zendesk_token: Secret | None = _secret()
    zendesk_webhook_secret: Secret | None = _secret()
    # The Zendesk user id of the API user, to recognise deskroute's own updates. Read
    # from /api/v2/users/me at start-up when unset and credentials are present.
    zendesk_user_id: str | None = None
    zendesk_timeout_seconds: float = 10.0

    jira_url: str | None = None
    jira_email: str | None = None
    jira_token: Secret | None = _secret()
    jira_webhook_secret: Secret | None = _secret()
    # JSM automation "Send web request" calls carry this header with the shared secret.
    jira_automation_header: str = "X-Deskroute-Secret"
    jira_automation_secret: Secret | None = _secret()
    jira_account_id: str | None = None
    jira_timeout_seconds: float = 10.0
    forge_app_id: str | None = None
    forge_jwks_url: str = "https://forge.cdn.prod.atlassian-dev.net/.well-known/jwks.json"

    salesforce_instance_url: str | None = None
    salesforce_username: str | None = None
    salesforce_password: Secret | None = _secret()
    salesforce_security_token: Secret | None = _secret()
    salesforce_session_id: Secret | None = _secret()
    salesforce_consumer_key: str | None = None
    salesforce_private_key_file: str | None = None
    salesforce_domain: str = "login"

    erp: str | None = None
    netsuite_account_id: str | None = None
    netsuite_client_id: str | None = None
    netsuite_certificate_id: str | None = None
    netsuite_private_key_file: str | None = None
    businesscentral_tenant_id: str | None = None
    businesscentral_environment: str = "production"
    businesscentral_company_id: str | None = None
    businesscentral_client_id: str | None = None
    businesscentral_client_secret: Secret | None = _secret()
    enrichment_timeout_seconds: float = 2.0
    enrichment_cache_seconds: float = 300.0

    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def zendesk_configured(self) -> bool:
        return bool(self.zendesk_subdomain and self.zendesk_email and self.zendesk_token)

    @property
    def jira_configured(self) -> bool:
        return bool(self.jira_url and self.jira_email and self.jira_token)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = Path(self.data_dir).resolve() / "deskroute.sqlite3"
        return f"sqlite:///{path}"

    def redacted(self) -> dict[str, Any]:
        """Return the settings as a dict with every secret shown as ``[secure]``."""
        shown: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Secret):
                value = "[secure]"
            shown[item.name] = value
        if self.database_url:
            shown["database_url"] = redact_url(self.database_url)
        for name, value in shown.items():
            if name != "database_url" and name.endswith("_url") and isinstance(value, str):
                shown[name] = redact_http_url(value)
        return shown

    def database_description(self) -> str:
        """Return the database URL for logs and reports, with any password redacted."""
        return redact_url(self.resolved_database_url())


# Query parameter names that carry credentials in service URLs.
SECRET_QUERY_KEYS = re.compile(r"pass|secret|token|key|auth|signature|sig$", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return a database URL with its password shown as ``[secure]``."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return "[secure]"
    # Drivers also take the password, or a DSN that contains it, as a query parameter.
    query = {
        key: ("[secure]" if key.lower() in ("password", "passwd", "dsn") else value)
        for key, value in parsed.query.items()
    }
    parsed = parsed.set(query=query)
    if parsed.password is None:
        shown = parsed.render_as_string(hide_password=False)
    else:
        shown = parsed.set(password="secure").render_as_string(hide_password=False)
        shown = shown.replace(":secure@", ":[secure]@", 1)
    return shown.replace("%5Bsecure%5D", "[secure]")


def redact_http_url(url: str) -> str:
    """Return a service URL with any password, in its user part or query, as ``[secure]``."""
    from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url if "//" in url else f"//{url}")
    except ValueError:
        return "[secure]"
    netloc = parts.netloc
    if "@" in netloc:
        # Decoded first, so that a password behind an encoded colon (%3A) is hidden too.
        user = quote(unquote(netloc.rsplit("@", 1)[0]).split(":", 1)[0], safe="")
        netloc = f"{user}:[secure]@{netloc.rsplit('@', 1)[1]}"
    query = urlencode(
        [
            (key, "[secure]" if SECRET_QUERY_KEYS.search(key) else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="[]",
    )
    redacted = urlunsplit(parts._replace(netloc=netloc, query=query))
    return redacted if "//" in url else redacted.removeprefix("//")


def _is_secret_field(item: dataclasses.Field) -> bool:
    return bool(item.metadata.get("secret"))


def _coerce(item: dataclasses.Field, raw: Any, source: str) -> Any:
    """Convert ``raw`` to the field's type; the error names the setting and its source."""
    if raw is None:
        return None
    if _is_secret_field(item):
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str):
            raise ConfigError(f"{item.name}: expected a string in {source}")
        return Secret(raw) if raw else None
    kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
    try:
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind.startswith("float"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            number = float(raw)
            if not math.isfinite(number):
                raise ValueError(raw)
            return number
        if kind.startswith("dict"):
            if not isinstance(raw, dict):
                raise ValueError(raw)
            return raw
    except (TypeError, ValueError):
        raise ConfigError(
            f"{item.name}: invalid value {raw!r} in {source}, expected {kind.split(' ')[0]}"
        ) from None
    if isinstance(raw, str | int | float):
        return str(raw) if raw != "" else None
    raise ConfigError(f"{item.name}: expected a string in {source}, got {type(raw).__name__}")


def load_settings(
    config_file: str | os.PathLike | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build settings from defaults, then ``config_file``, then the environment, then overrides.

    The TOML file uses the same names as the fields, at the top level or under a
    ``[deskroute]`` table. Unknown names are errors, so a typo does not pass silently.
    """
    environ = os.environ if environ is None else environ
    by_name = {item.name: item for item in fields(Settings) if item.name != "extra"}
    values: dict[str, Any] = {}

    if config_file is None and environ.get(ENV_PREFIX + "CONFIG"):
        config_file = environ[ENV_PREFIX + "CONFIG"]
    if config_file is not None:
        path = Path(config_file)
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        if "deskroute" in document:
            others = sorted(key for key in document if key != "deskroute")
            if others:
                raise ConfigError(
                    f"{path}: settings belong under [deskroute] or at the top level, not both: "
                    f"move {', '.join(others)}"
                )
            document = document["deskroute"]
        for name, raw in document.items():
            if name not in by_name:
                raise ConfigError(f"unknown setting {name!r} in {path}")
            values[name] = _coerce(by_name[name], raw, str(path))

    for name, item in by_name.items():
        key = ENV_PREFIX + name.upper()
        if key in environ:
            values[name] = _coerce(item, environ[key], f"environment variable {key}")

    for name, raw in overrides.items():
        if name not in by_name:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(by_name[name], raw, "overrides")

    settings = Settings(**values)
    validate_settings(settings)
    return settings


def validate_settings(settings: Settings) -> None:
    if settings.mode is not None and settings.mode not in MODES:
        raise ConfigError(f"mode: invalid value {settings.mode!r}, expected one of {MODES}")
    if settings.database_url is not None:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(settings.database_url)
        except (ArgumentError, ValueError) as exc:
            # The message of a URL error can quote the URL, password included.
            raise ConfigError(
                f"database_url: invalid SQLAlchemy URL ({type(exc).__name__}), expected "
                "dialect+driver://user:password@host:port/database"
            ) from None
    if settings.max_body_bytes <= 0:
        raise ConfigError("max_body_bytes: must be positive")
    if settings.signature_tolerance_seconds <= 0:
        raise ConfigError("signature_tolerance_seconds: must be positive")
    if settings.max_attempts < 1:
        raise ConfigError("max_attempts: must be at least 1")
    for name in (
        "lease_seconds",
        "worker_poll_seconds",
        "zendesk_timeout_seconds",
        "jira_timeout_seconds",
        "enrichment_timeout_seconds",
    ):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(settings, name)}")
    for name in ("retry_base_seconds", "enrichment_cache_seconds"):
        if getattr(settings, name) < 0:
            raise ConfigError(f"{name}: must not be negative, got {getattr(settings, name)}")
    if settings.zendesk_subdomain is not None and not ZENDESK_SUBDOMAIN.match(
        settings.zendesk_subdomain
    ):
        raise ConfigError(
            f"zendesk_subdomain: invalid value {settings.zendesk_subdomain!r}, expected the "
            "lower-case first label of YOUR-SUBDOMAIN.zendesk.com"
        )
    if not settings.own_tag or re.search(r"\s", settings.own_tag):
        raise ConfigError(f"own_tag: invalid value {settings.own_tag!r}, a tag has no spaces")
    partial = [
        name
        for name in ("zendesk_subdomain", "zendesk_email", "zendesk_token")
        if getattr(settings, name)
    ]
    if partial and not settings.zendesk_configured:
        missing = sorted({"zendesk_subdomain", "zendesk_email", "zendesk_token"} - set(partial))
        raise ConfigError(
            "Zendesk credentials are incomplete: set "
            + ", ".join(ENV_PREFIX + name.upper() for name in missing)
        )
    if settings.erp is not None and settings.erp not in ("netsuite", "businesscentral"):
        raise ConfigError(
            f"erp: invalid value {settings.erp!r}, expected 'netsuite' or 'businesscentral'"
        )
