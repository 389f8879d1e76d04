"""Shared fixtures: settings on a fresh database, the app, signed Zendesk requests."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from plugin import create_app
from plugin.config import load_settings
from plugin.webhooks.zendesk import sign

FIXTURES = Path(__file__).parent / "fixtures"
WEBHOOK_SECRET = "zendesk-webhook-test-secret"
API_TOKEN = "api-test-token"
# .ci/run starts a PostgreSQL server when none accepts connections here. The URL can be
# overridden.
POSTGRES_URL = os.environ.get(
    "DESKROUTE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="session")
def classifier():
    from model.inference import Classifier

    return Classifier.load()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh database per test: a SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'deskroute.sqlite3'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001 - the message says what to fix
        pytest.fail(
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({type(exc).__name__}); "
            "start one or set DESKROUTE_TEST_POSTGRES_URL"
        )
    separator = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'deskroute.sqlite3'}"


def make_settings(tmp_path, database_url=None, **overrides):
    values = {
        "data_dir": str(tmp_path / "data"),
        "database_url": database_url or f"sqlite:///{tmp_path / 'deskroute.sqlite3'}",
        "run_worker": False,
        "zendesk_webhook_secret": WEBHOOK_SECRET,
        "api_token": API_TOKEN,
        "retry_base_seconds": 0.0,
    }
    values.update(overrides)
    return load_settings(environ={}, **values)


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path)


@pytest.fixture
def app(settings, classifier):
    app = create_app(settings, classifier=classifier)
    yield app
    state = app.extensions["deskroute"]
    state.worker.stop()
    state.store.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


def now_stamp(offset_seconds: float = 0.0) -> str:
    moment = datetime.now(UTC).timestamp() + offset_seconds
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def zendesk_headers(body: bytes, *, secret=WEBHOOK_SECRET, timestamp=None, invocation_id=None):
    timestamp = timestamp or now_stamp()
    headers = {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": sign(secret, timestamp, body),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }
    if invocation_id is not False:
        headers["X-Zendesk-Webhook-Invocation-Id"] = invocation_id or str(uuid.uuid4())
    return headers


def post_zendesk(client, payload, **kwargs):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post("/webhooks/zendesk", data=body, headers=zendesk_headers(body, **kwargs))


def bearer(token=API_TOKEN):
    return {"Authorization": f"Bearer {token}"}
