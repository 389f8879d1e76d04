"""The objects one app process shares: settings, store, policy, model, connectors, worker."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from pathlib import Path

from plugin.config import ConfigError, Secret, Settings
from plugin.policy import Policy
from plugin.store import Store

log = logging.getLogger(__name__)

# Wait after a failed look-up of deskroute's own help desk user, in seconds.
OWN_USER_RETRY_SECONDS = 300


# Secret files in the data folder, and the setting each one replaces when it is unset.
LOCAL_SECRET_FILES = {
    "api-token": "api_token",
    "zendesk-webhook-secret": "zendesk_webhook_secret",
    "jira-webhook-secret": "jira_webhook_secret",
}


def local_secret(settings: Settings, name: str) -> Secret:
    """Read or create a random secret kept in the data folder, readable by the owner only.

    Used when no API token or webhook secret is configured, so that a fresh
    ``deskroute serve`` is protected from its first request. The value is never logged.
    """
    path = Path(settings.data_dir) / name
    if path.exists() or path.is_symlink():
        return Secret(_read_local_secret(path, name))
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    log.warning("no %s configured: generated one in %s", name.replace("-", " "), path)
    return Secret(value)


def _read_local_secret(path: Path, name: str) -> str:
    # A symlink, directory or FIFO here is not what deskroute wrote. Reading a FIFO would
    # block start-up, and following a link could read a file the admin did not mean.
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"{path} is not a regular file: remove it, or write the secret into it")
    try:
        value = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read as UTF-8 text: {exc}") from None
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users: run chmod 600 on it", path)
    if any(character.isspace() for character in value):
        raise ConfigError(
            f"{path} contains spaces or line breaks, which no request header can carry: "
            "write the secret on one line"
        )
    if not value:
        # An empty secret would reject every request, and generating a new one could
        # silently change a value that is already configured in the help desk.
        raise ConfigError(
            f"{path} is empty: delete it to have a new {name.replace('-', ' ')} generated, "
            "or write the secret into it"
        )
    return value


def check_local_secrets(settings: Settings) -> None:
    """Raise ConfigError for a generated secret file that exists but cannot be used."""
    for name, attribute in LOCAL_SECRET_FILES.items():
        path = Path(settings.data_dir) / name
        if not getattr(settings, attribute) and (path.exists() or path.is_symlink()):
            _read_local_secret(path, name)


def fill_local_secrets(settings: Settings) -> None:
    """Give each unset API token and webhook secret its generated value from the data folder.

    `deskroute install jira` registers the Jira webhook with the same generated secret.
    """
    for name, attribute in LOCAL_SECRET_FILES.items():
        if not getattr(settings, attribute):
            setattr(settings, attribute, local_secret(settings, name))


def build_connectors(settings: Settings, policy: Policy) -> dict:
    connectors = {}
    if settings.zendesk_configured:
        from connectors.zendesk import ZendeskConnector

        connectors["zendesk"] = ZendeskConnector(
            settings.zendesk_subdomain,
            settings.zendesk_email,
            settings.zendesk_token.get(),
            timeout=settings.zendesk_timeout_seconds,
            own_tag=settings.own_tag,
        )
    if settings.jira_configured:
        from connectors.jira import JiraConnector

        connectors["jira"] = JiraConnector.from_settings(settings, policy.helpdesk_options["jira"])
    return connectors


class AppState:
    """Stored in ``app.extensions["deskroute"]``; views and the worker reach everything here."""

    def __init__(
        self,
        settings: Settings,
        *,
        store=None,
        policy=None,
        classifier=None,
        connectors=None,
        enricher=None,
    ):
        self.settings = settings
        self.policy = policy or Policy.load(settings.policy_file)
        self.store = store or Store(
            settings.resolved_database_url(), lease_seconds=settings.lease_seconds
        )
        self.store.create_schema()
        if classifier is None:
            from model.inference import Classifier

            classifier = Classifier.load(settings.model_dir)
        self.classifier = classifier
        for warning in self.policy.check_labels(classifier.labels):
            log.warning("policy %s: %s", self.policy.source, warning)
        self.connectors = (
            build_connectors(settings, self.policy) if connectors is None else connectors
        )
        if enricher is None:
            from plugin.context import Enricher

            enricher = Enricher.from_settings(settings, self.policy.document)
        self.enricher = enricher
        self._own_users: dict[str, str | None] = {
            "zendesk": settings.zendesk_user_id,
            "jira": settings.jira_account_id,
        }
        self._own_users_lock = threading.Lock()
        self._own_user_retry_at: dict[str, float] = {}
        self._wake_sender = None
        from plugin.worker import Worker

        self.worker = Worker(self)

    def own_user_id(self, helpdesk: str, *, fetch: bool = False) -> str | None:
        """Return the help desk user id deskroute writes as.

        Intake passes ``fetch=False`` so that no request waits on the help desk; the
        worker fetches it once through the connector and caches it.
        """
        known = self._own_users.get(helpdesk)
        if known or not fetch:
            return known
        connector = self.connectors.get(helpdesk)
        if connector is None or not hasattr(connector, "own_user_id"):
            return None
        with self._own_users_lock:
            if self._own_users.get(helpdesk):
                return self._own_users[helpdesk]
            # After a failure the next attempt waits, so a help desk that keeps failing the
            # look-up does not add its retries to every delivery.
            if time.monotonic() < self._own_user_retry_at.get(helpdesk, 0.0):
                return None
            try:
                self._own_users[helpdesk] = connector.own_user_id()
            except Exception as exc:  # noqa: BLE001 - any failure only delays recognition
                self._own_user_retry_at[helpdesk] = time.monotonic() + OWN_USER_RETRY_SECONDS
                log.warning(
                    "%s: could not read deskroute's own user id, next try in %s s: %s",
                    helpdesk,
                    OWN_USER_RETRY_SECONDS,
                    exc,
                )
                return None
        return self._own_users[helpdesk]

    def notify_worker(self) -> None:
        """Wake the worker thread of this process, or the worker process on this host."""
        if self.settings.run_worker:
            self.worker.notify()
            return
        if self._wake_sender is None:
            from plugin.wakeup import WakeSender, socket_path

            self._wake_sender = WakeSender(socket_path(self.settings.data_dir))
        self._wake_sender.notify()
