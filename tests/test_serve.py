"""``deskroute serve`` as a user runs it: gunicorn, the embedded defaults, a killed process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import zendesk_headers

DESKROUTE = str(Path(sys.executable).with_name("deskroute"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, **env):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DESKROUTE_")}
        environment.update({"DESKROUTE_DATA_DIR": str(data_dir), **env})
        self.log = open(data_dir.parent / f"serve-{self.port}.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [DESKROUTE, "serve", "--port", str(self.port)],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"deskroute serve exited: {self.output()}")
            try:
                requests.get(f"{self.url}/healthz", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError(f"deskroute serve did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def secret(self, name: str) -> str:
        return (self.data_dir / name).read_text().strip()

    def post(self, payload: dict, **kwargs) -> requests.Response:
        body = json.dumps(payload).encode()
        headers = zendesk_headers(body, secret=self.secret("zendesk-webhook-secret"), **kwargs)
        return requests.post(f"{self.url}/webhooks/zendesk", data=body, headers=headers, timeout=30)

    def decisions(self, ticket_id: str) -> list[dict]:
        response = requests.get(
            f"{self.url}/api/decisions",
            params={"helpdesk": "zendesk", "ticket_id": ticket_id},
            headers={"Authorization": f"Bearer {self.secret('api-token')}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()["decisions"]

    def wait_for_decision(self, ticket_id: str, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.decisions(ticket_id)
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no decision for ticket {ticket_id}: {self.output()}")

    def wait_for_decision_after(self, payload: dict) -> list[dict]:
        response = self.post(payload)
        assert response.status_code == 202, response.text
        return self.wait_for_decision(payload["detail"]["id"])

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        self.log.close()


def ticket_event(ticket_id: str) -> dict:
    # A real ticket of the CC0 it-service-tickets set.
    return {
        "type": "zen:event-type:ticket.created",
        "account_id": 1,
        "id": f"event-{ticket_id}",
        "time": "2026-12-04T10:00:00Z",
        "zendesk_event_version": "2022-11-06",
        "subject": f"zen:ticket:{ticket_id}",
        "detail": {
            "id": ticket_id,
            "subject": "new purchase po",
            "description": "purchase po dear purchased matte display please log allocation "
            "after receive item please take consideration mandatory receipts section order",
            "status": "NEW",
            "tags": [],
            "via": {"channel": "mail"},
            "updated_at": "2026-12-04T10:00:00Z",
        },
        "event": {},
    }


@pytest.fixture
def data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return path


def test_serve_routes_a_signed_webhook(data_dir):
    server = Server(data_dir)
    try:
        response = server.post(ticket_event("1001"))
        assert response.status_code == 202, response.text

        decision = server.wait_for_decision("1001")[0]
        health = requests.get(f"{server.url}/healthz", timeout=30).json()
        assert health["status"] == "ok"
        assert health["worker"]["mode"] == "process"
        assert len(health["worker"]["processes"]) == 1
        assert decision["mode"] == "shadow"
        assert decision["queue"] == "Purchase"
        assert (data_dir / "deskroute.sqlite3").exists()
        assert "Listening at" in server.output()
    finally:
        server.stop()


def test_request_values_cannot_forge_log_lines(data_dir):
    server = Server(data_dir)
    try:
        requests.get(f"{server.url}/x%0aFORGED-PATH%0d", timeout=5)
        event = ticket_event("1003")
        event["type"] = "zen:event-type:ticket.unknown\nFORGED-TYPE"
        response = server.post(event)
        assert response.status_code == 200, response.text
        output = server.output()
    finally:
        server.stop()

    lines = output.splitlines()
    assert not [line for line in lines if line.startswith("FORGED")]
    assert any("/x\\nFORGED-PATH\\r" in line for line in lines)
    assert any("ticket.unknown\\nFORGED-TYPE" in line for line in lines)


def test_serve_rejects_unsigned_webhook(data_dir):
    server = Server(data_dir)
    try:
        response = requests.post(
            f"{server.url}/webhooks/zendesk", json=ticket_event("1002"), timeout=5
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "missing_signature"
    finally:
        server.stop()


def test_killed_server_loses_no_accepted_delivery(data_dir):
    # The first server accepts but runs no worker, then dies without a chance to clean up.
    first = Server(data_dir, DESKROUTE_RUN_WORKER="false")
    assert first.post(ticket_event("1003")).status_code == 202
    first.kill()

    second = Server(data_dir)
    try:
        assert len(second.wait_for_decision("1003")) == 1
    finally:
        second.stop()


def test_worker_command_processes_stored_deliveries(data_dir):
    web = Server(data_dir, DESKROUTE_RUN_WORKER="false")
    try:
        assert web.post(ticket_event("1004")).status_code == 202
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DESKROUTE_")}
        environment["DESKROUTE_DATA_DIR"] = str(data_dir)
        worker = subprocess.Popen(
            [DESKROUTE, "worker"],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert len(web.wait_for_decision("1004")) == 1
        finally:
            worker.send_signal(signal.SIGTERM)
            _, errors = worker.communicate(timeout=20)
        assert worker.returncode == 0, errors
        assert "worker stopped" in errors
    finally:
        web.stop()


def worker_processes(server: Server) -> list[int]:
    """Return the pids of the worker processes the gunicorn arbiter started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid"))
        if int(parent) == server.process.pid and "--parent-pid" in command:
            found.append(int(entry.name))
    return found


def test_killed_worker_process_is_restarted(data_dir):
    server = Server(data_dir)
    try:
        assert len(server.wait_for_decision_after(ticket_event("1005"))) == 1
        [worker] = worker_processes(server)

        os.kill(worker, signal.SIGKILL)
        assert server.post(ticket_event("1006")).status_code == 202

        assert len(server.wait_for_decision("1006")) == 1
        assert worker_processes(server) != [worker]
        assert "worker process" in server.output()
    finally:
        server.stop()


def process_running(pid: int) -> bool:
    """Return whether ``pid`` runs; a zombie that no parent reaped yet has stopped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next(line.split()[1] for line in status.splitlines() if line.startswith("State"))
    return state != "Z"


def test_worker_process_stops_when_arbiter_is_killed(data_dir):
    server = Server(data_dir)
    try:
        deadline = time.monotonic() + 30
        while not worker_processes(server) and time.monotonic() < deadline:
            time.sleep(0.2)
        [worker] = worker_processes(server)

        # Only the arbiter dies; its worker process must notice and stop by itself.
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 10
        while process_running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)

        assert not process_running(worker)
    finally:
        server.kill()
