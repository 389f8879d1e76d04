"""``deskroute install jira``: register the Jira admin webhook, or print the automation rule.

Jira Cloud admin webhooks are managed through ``/rest/webhooks/1.0/webhook``, which only
Jira administrators may call. The command lists the existing webhooks first and keeps one
per deskroute URL. It creates the webhook when none points at the server, and updates it
(events, JQL filter, secret) when one does. Extra copies are deleted, so running the command
twice leaves one webhook. For a user who is not an admin, Jira returns 403, and the command
prints instead the automation rule that sends the same events with the shared-secret header.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from connectors.base import (
    ConnectorError,
    ConnectorUnauthorized,
    HTTPClient,
)
from plugin.config import ConfigError, load_settings

log = logging.getLogger(__name__)

WEBHOOKS_PATH = "/rest/webhooks/1.0/webhook"
EVENTS = ["jira:issue_created", "jira:issue_updated"]
WEBHOOK_ROUTE = "/webhooks/jira"


class JiraAdminClient(HTTPClient):
    """Plain REST calls to the admin webhook API, with the connector error types."""

    source = "jira"

    def __init__(self, base_url: str, email: str, token: str, *, timeout: float = 10.0):
        super().__init__(base_url, timeout=timeout)
        self.session.auth = (email, token)
        self.session.headers.update({"Accept": "application/json"})

    def list_webhooks(self) -> list[dict[str, Any]]:
        return self.request("GET", WEBHOOKS_PATH).json()

    def create_webhook(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", WEBHOOKS_PATH, json=body).json()

    def update_webhook(self, webhook_id: str, body: dict[str, Any]) -> None:
        self.request("PUT", f"{WEBHOOKS_PATH}/{webhook_id}", json=body)

    def delete_webhook(self, webhook_id: str) -> None:
        self.request("DELETE", f"{WEBHOOKS_PATH}/{webhook_id}")


def webhook_id(webhook: dict[str, Any]) -> str:
    """Return a webhook's id, the last segment of its ``self`` URL."""
    return str(webhook.get("self", "")).rstrip("/").rsplit("/", 1)[-1]


def webhook_body(name: str, url: str, jql: str | None, secret: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "url": url,
        "events": list(EVENTS),
        "excludeBody": False,
        "secret": secret,
    }
    if jql:
        body["filters"] = {"issue-related-events-section": jql}
    return body


def ensure_webhook(client: JiraAdminClient, body: dict[str, Any]) -> tuple[str, str]:
    """Create or update the one webhook for ``body["url"]``; return (action, webhook id)."""
    existing = [hook for hook in client.list_webhooks() if hook.get("url") == body["url"]]
    if not existing:
        created = client.create_webhook(body)
        return "created", webhook_id(created)

    keep, *extra = existing
    for hook in extra:
        client.delete_webhook(webhook_id(hook))
        log.info("deleted duplicate Jira webhook %s for %s", webhook_id(hook), body["url"])
    client.update_webhook(webhook_id(keep), body)
    return "updated", webhook_id(keep)


def automation_rule(url: str, header: str, jql: str | None) -> str:
    """Return the steps for the JSM automation rule that replaces the admin webhook."""
    issue_body = {
        "webhookEvent": "jira:issue_created",
        "user": {"accountId": "{{initiator.accountId}}"},
        "issue": {
            "id": "{{issue.id}}",
            "key": "{{issue.key}}",
            "fields": {
                "summary": "@@{{issue.summary.asJsonString}}@@",
                "description": "@@{{issue.description.asJsonString}}@@",
                "labels": "@@{{issue.labels.asJsonStringArray}}@@",
                "priority": {"name": "{{issue.priority.name}}"},
                "project": {"key": "{{issue.project.key}}"},
                "reporter": {
                    "accountId": "{{issue.reporter.accountId}}",
                    "displayName": "@@{{issue.reporter.displayName.asJsonString}}@@",
                },
            },
        },
    }
    # The smart values ending in asJsonString render JSON themselves, so they go unquoted.
    rendered = json.dumps(issue_body, indent=2).replace('"@@', "").replace('@@"', "")
    scope = f"\n   Add the condition: JQL {jql}" if jql else ""
    return f"""\
You are not a Jira administrator, so no admin webhook can be registered.
Create this automation rule instead (Project settings > Automation > Create rule):

1. Trigger: Work item created.{scope}
2. Action: Send web request
   Web request URL: {url}
   HTTP method: POST
   Web request body: Custom data
   Headers: Content-Type = application/json
            {header} = the value of DESKROUTE_JIRA_AUTOMATION_SECRET
3. Custom data:
{rendered}

deskroute accepts such requests only when DESKROUTE_JIRA_AUTOMATION_SECRET is set on the
server and the header carries the same value. Mark the header value as hidden in the rule.
"""


@click.command("jira")
@click.option(
    "--url",
    "server_url",
    required=True,
    help="Public HTTPS base URL of the deskroute server, e.g. https://deskroute.example.com.",
)
@click.option("--jql", help="Only send events for issues matching this JQL, e.g. 'project = ITSD'.")
@click.option("--name", default="deskroute", show_default=True, help="Name of the webhook in Jira.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option(
    "--automation",
    is_flag=True,
    help="Print the automation rule instead of registering the admin webhook.",
)
def install_jira_command(server_url, jql, name, config_file, automation) -> None:
    """Register deskroute's Jira webhook (idempotent), or print the automation rule."""
    try:
        settings = load_settings(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not server_url.startswith("https://"):
        raise click.ClickException(
            f"--url {server_url!r} must start with https://: Jira Cloud only calls HTTPS URLs"
        )
    url = server_url.rstrip("/") + WEBHOOK_ROUTE
    if automation:
        click.echo(automation_rule(url, settings.jira_automation_header, jql))
        return
    if not settings.jira_configured:
        raise click.ClickException(
            "set DESKROUTE_JIRA_URL, DESKROUTE_JIRA_EMAIL and DESKROUTE_JIRA_TOKEN "
            "(an API token of a Jira administrator)"
        )
    secret = settings.jira_webhook_secret
    secret_file = None
    if not secret:
        from plugin.state import local_secret

        secret = local_secret(settings, "jira-webhook-secret")
        secret_file = Path(settings.data_dir) / "jira-webhook-secret"

    client = JiraAdminClient(
        settings.jira_url,
        settings.jira_email,
        settings.jira_token.get(),
        timeout=settings.jira_timeout_seconds,
    )
    body = webhook_body(name, url, jql, secret.get())
    try:
        action, hook_id = ensure_webhook(client, body)
    except ConnectorUnauthorized as exc:
        if exc.status == 403:
            click.echo(automation_rule(url, settings.jira_automation_header, jql))
            return
        raise click.ClickException(
            f"Jira rejected the credentials of {settings.jira_email} (HTTP {exc.status}): "
            "check DESKROUTE_JIRA_EMAIL and DESKROUTE_JIRA_TOKEN"
        ) from None
    except ConnectorError as exc:
        raise click.ClickException(f"registering the Jira webhook failed: {exc.message}") from None
    click.echo(f"{action} Jira webhook {hook_id}: {', '.join(EVENTS)} to {url}")
    if secret_file is not None:
        click.echo(
            f"The webhook secret is in {secret_file}: set DESKROUTE_JIRA_WEBHOOK_SECRET on the "
            "server to its contents, or the server rejects the deliveries with 401."
        )
