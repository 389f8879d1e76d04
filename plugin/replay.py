"""Replay a ticket file through the Zendesk webhook and report on what deskroute decided.

Each row becomes a signed ``zen:event-type:ticket.created`` event, sent to a running server
or to an in-process app. The report compares decisions with the file's labels.
"""

from __future__ import annotations

import csv
import json
import secrets
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import requests
from tqdm import tqdm

from plugin.webhooks.zendesk import sign

PAGE_SIZE = 1000


class ReplayError(Exception):
    pass


@dataclass
class ReplayReport:
    sent: int = 0
    accepted: int = 0
    rejected: dict[int, int] = field(default_factory=dict)
    processed: int = 0
    missing: int = 0
    labelled: int = 0
    correct: int = 0
    auto_routed: int = 0
    auto_correct: int = 0
    accept_ms: list[float] = field(default_factory=list)
    decision_ms: list[float] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"sent {self.sent}, accepted {self.accepted}, processed {self.processed}, "
            f"without a decision {self.missing}",
        ]
        if self.rejected:
            lines.append("rejected: " + ", ".join(f"{k}: {v}" for k, v in self.rejected.items()))
        if self.labelled:
            lines.append(f"accuracy {self.correct / self.labelled:.3f} on {self.labelled} rows")
            coverage = self.auto_routed / self.labelled
            precision = self.auto_correct / self.auto_routed if self.auto_routed else 0.0
            lines.append(
                f"auto-route coverage {coverage:.3f}, precision {precision:.3f} "
                f"({self.auto_routed} tickets)"
            )
        lines.append("webhook acceptance " + _percentiles(self.accept_ms))
        lines.append("delivery to decision " + _percentiles(self.decision_ms))
        return "\n".join(lines)


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    if len(ordered) == 1:
        return f"p50 {ordered[0]:.1f} ms"
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return f"p50 {cuts[49]:.1f} ms, p90 {cuts[89]:.1f} ms, p99 {cuts[98]:.1f} ms"


def read_rows(path: str, text_columns: list[str], label_column: str | None, limit: int | None):
    try:
        yield from _read_rows(path, text_columns, label_column, limit)
    except UnicodeDecodeError as exc:
        raise ReplayError(f"{path} is not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise ReplayError(f"{path} is not a valid CSV file: {exc}") from None


def _read_rows(path: str, text_columns: list[str], label_column: str | None, limit: int | None):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in [*text_columns, *([label_column] if label_column else [])]:
            if column not in columns:
                raise ReplayError(f"column {column!r} not found in {path}; it has {columns}")
        for index, row in enumerate(reader):
            if limit is not None and index >= limit:
                break
            texts = [row[column] or "" for column in text_columns]
            yield texts, (row[label_column] if label_column else None)


def event_body(ticket_id: str, texts: list[str]) -> dict:
    subject, description = (texts[0], "\n".join(texts[1:])) if len(texts) > 1 else ("", texts[0])
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return {
        "type": "zen:event-type:ticket.created",
        "account_id": 1,
        "id": str(uuid.uuid4()),
        "time": now,
        "zendesk_event_version": "2022-11-06",
        "subject": f"zen:ticket:{ticket_id}",
        "detail": {
            "id": ticket_id,
            "subject": subject,
            "description": description,
            "status": "NEW",
            "priority": None,
            "tags": [],
            "via": {"channel": "web_service"},
            "created_at": now,
            "updated_at": now,
        },
        "event": {},
    }


class _HTTPTarget:
    def __init__(self, url: str, api_token: str):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.api_token = api_token

    def post(self, body: bytes, headers: dict) -> int:
        try:
            return self.session.post(
                f"{self.url}/webhooks/zendesk", data=body, headers=headers, timeout=10
            ).status_code
        except requests.RequestException as exc:
            raise ReplayError(f"sending to {self.url} failed: {exc}") from None

    def decisions_page(self, after: int) -> dict:
        try:
            response = self.session.get(
                f"{self.url}/api/decisions",
                params={"helpdesk": "zendesk", "after": after, "limit": PAGE_SIZE},
                headers={"Authorization": f"Bearer {self.api_token}"},
                timeout=10,
            )
        except requests.RequestException as exc:
            raise ReplayError(f"reading decisions from {self.url} failed: {exc}") from None
        if response.status_code == 401:
            raise ReplayError(
                f"{self.url} rejected the API token: run replay with the server's config or "
                "DESKROUTE_DATA_DIR, or set DESKROUTE_API_TOKEN and "
                "DESKROUTE_ZENDESK_WEBHOOK_SECRET to the server's values"
            )
        if response.status_code != 200:
            raise ReplayError(f"decisions API returned {response.status_code}: {response.text}")
        return response.json()


class _AppTarget:
    def __init__(self, app):
        self.client = app.test_client()
        self.api_token = app.extensions["deskroute"].settings.api_token.get()

    def post(self, body: bytes, headers: dict) -> int:
        return self.client.post("/webhooks/zendesk", data=body, headers=headers).status_code

    def decisions_page(self, after: int) -> dict:
        response = self.client.get(
            "/api/decisions",
            query_string={"helpdesk": "zendesk", "after": after, "limit": PAGE_SIZE},
            headers={"Authorization": f"Bearer {self.api_token}"},
        )
        return response.get_json()


def run_replay(
    path: str,
    *,
    text_columns: list[str],
    label_column: str | None,
    url: str | None,
    settings,
    limit: int | None = None,
    timeout: float = 120.0,
) -> ReplayReport:
    """Send the rows, wait for their decisions, and return the report."""
    if url:
        from plugin.state import local_secret

        secret = settings.zendesk_webhook_secret or local_secret(settings, "zendesk-webhook-secret")
        token = settings.api_token or local_secret(settings, "api-token")
        target = _HTTPTarget(url, token.get())
        keep = None
    else:
        from plugin import create_app
        from plugin.config import load_settings

        keep = tempfile.TemporaryDirectory(prefix="deskroute-replay-")
        local = load_settings(
            environ={},
            data_dir=keep.name,
            api_token=secrets.token_urlsafe(24),
            zendesk_webhook_secret=secrets.token_urlsafe(24),
            policy_file=settings.policy_file,
            model_dir=settings.model_dir,
        )
        app = create_app(local)
        secret = local.zendesk_webhook_secret
        target = _AppTarget(app)

    report = ReplayReport()
    start_after = target.decisions_page(0)["last"]
    run = uuid.uuid4().int % 10**8
    sent: list[tuple[str, str | None, float]] = []
    rows = list(read_rows(path, text_columns, label_column, limit))
    for index, (texts, label) in enumerate(tqdm(rows, desc="sending", unit="ticket")):
        ticket_id = f"{run}{index:07d}"
        body = json.dumps(event_body(ticket_id, texts)).encode()
        timestamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        headers = {
            "Content-Type": "application/json",
            "X-Zendesk-Webhook-Signature": sign(secret.get(), timestamp, body),
            "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
            "X-Zendesk-Webhook-Invocation-Id": f"replay-{run}-{index}",
        }
        started = time.perf_counter()
        sent_at = time.time()
        status = target.post(body, headers)
        report.accept_ms.append((time.perf_counter() - started) * 1000)
        report.sent += 1
        if status == 202:
            report.accepted += 1
            sent.append((ticket_id, label, sent_at))
        else:
            report.rejected[status] = report.rejected.get(status, 0) + 1

    # Decisions are read in pages, starting after the last one that existed before sending,
    # and matched to this run's tickets. The wait ends after ``timeout`` s without a new one.
    pending = {ticket_id: (label, sent_at) for ticket_id, label, sent_at in sent}
    after = start_after
    idle_since = time.monotonic()
    with tqdm(total=len(pending), desc="decisions", unit="ticket") as progress:
        while pending and time.monotonic() - idle_since < timeout:
            page = target.decisions_page(after)
            for decision in page["decisions"]:
                entry = pending.pop(decision["ticket_id"], None)
                if entry is not None:
                    _count(report, decision, entry[0], entry[1])
                    progress.update(1)
            if page["decisions"]:
                after = page["next"]
                idle_since = time.monotonic()
            if len(page["decisions"]) < PAGE_SIZE:
                # Caught up with the worker: polling at once again would only slow it down.
                time.sleep(0.2)
    report.missing = len(pending)
    if keep is not None:
        app.extensions["deskroute"].worker.stop()
        app.extensions["deskroute"].store.dispose()
        keep.cleanup()
    return report


def _count(report: ReplayReport, decision: dict, label: str | None, sent_at: float) -> None:
    report.processed += 1
    report.decision_ms.append(max(0.0, (decision["created_at"] - sent_at) * 1000))
    if label is None:
        return
    report.labelled += 1
    correct = decision["queue"] == label
    report.correct += int(correct)
    if decision["action"] == "auto_route":
        report.auto_routed += 1
        report.auto_correct += int(correct)


__all__ = ["ReplayError", "ReplayReport", "run_replay"]
