"""Benchmark webhook intake and ticket-to-write-back latency on this machine, in one run.

Part 1 starts ``deskroute serve`` (gunicorn, embedded SQLite, worker process) on a free
loopback port. An open-loop load generator sends it pre-built, signed
``zen:event-type:ticket.created`` deliveries. Each request has a due time at the target rate,
and several client processes with keep-alive connections send them. It prints acceptance latency
percentiles, the achieved rate and the errors, for each gunicorn configuration given.

Part 2 runs the app in auto mode behind gunicorn, with a Zendesk connector whose HTTP session
is redirected to a local mock of the Zendesk API. It sends one ticket at a time and measures
the time from the start of the webhook POST to the arrival of the ticket update (PUT) at the
mock.

Only loopback traffic is sent. Usage::

    .venv/bin/python scripts/bench_intake.py [--rate 500] [--count 5000] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import multiprocessing
import os
import platform
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT / "tests" / "fixtures" / "data" / "it-service-tickets-sample.csv"
ZENDESK_API_FIXTURES = ROOT / "tests" / "fixtures" / "zendesk" / "api"
DESKROUTE = Path(sys.executable).with_name("deskroute")
WEBHOOK_PATH = "/webhooks/zendesk"
# The connector is built for this subdomain, and its session sends the API calls to the mock.
MOCK_SUBDOMAIN = "bench"
MOCK_EMAIL = "deskroute-bot@example.com"
# Zendesk rejects a signature older than the server's tolerance (300 s by default), and the
# bodies are signed before the run starts, so one run of part 1 must stay below it.
MAX_RUN_SECONDS = 240.0


# Machine and statistics


def machine_summary() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, load average {load}"
    )


def percentile(ordered: list[float], fraction: float) -> float:
    """Return the value at ``fraction`` of a sorted list, by linear interpolation."""
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * fraction
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "p50": percentile(ordered, 0.50),
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
    }


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    print("  ".join(str(cell).rjust(width) for cell, width in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


# Request bodies


def read_texts(path: Path, column: str) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise SystemExit(f"column {column!r} not found in {path}; it has {reader.fieldnames}")
        texts = [row[column].strip() for row in reader if (row[column] or "").strip()]
    if not texts:
        raise SystemExit(f"no ticket text in column {column!r} of {path}")
    return texts


def now_stamp() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def signed_delivery(secret: str, ticket_id: str, text: str) -> tuple[bytes, dict[str, str]]:
    """Build one signed event-subscribed ticket.created delivery with a unique invocation id."""
    from plugin.replay import event_body
    from plugin.webhooks.zendesk import sign

    # The sample texts have no separate subject, so the first six words stand in for one.
    words = text.split()
    body = json.dumps(event_body(ticket_id, [" ".join(words[:6]), text])).encode()
    timestamp = now_stamp()
    headers = {
        "Content-Type": "application/json",
        "X-Zendesk-Webhook-Signature": sign(secret, timestamp, body),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
        "X-Zendesk-Webhook-Invocation-Id": str(uuid.uuid4()),
    }
    return body, headers


def build_deliveries(secret: str, texts: list[str], count: int, first_id: int) -> list[tuple]:
    return [
        signed_delivery(secret, str(first_id + index), texts[index % len(texts)])
        for index in range(count)
    ]


# Open-loop load generator


def _send_on_connection(port, schedule, results, deadline) -> None:
    """Send ``schedule`` ((index, due time, body, headers), in time order) on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for index, scheduled, body, headers in schedule:
        wait = scheduled - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if time.monotonic() > deadline:
            results.append((index, scheduled, None, None, "not sent: duration limit"))
            continue
        started = time.monotonic()
        try:
            connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            outcome = response.status
        except (OSError, http.client.HTTPException) as exc:
            outcome = type(exc).__name__
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        results.append((index, scheduled, started, time.monotonic(), outcome))
    connection.close()


def run_client_process(port: int, schedules: list[list[tuple]], deadline: float) -> list[tuple]:
    """Run one client process: a thread per keep-alive connection, each with its schedule.

    CLOCK_MONOTONIC is shared by all processes on Linux, so the due times computed by the
    parent are valid here.
    """
    results: list[tuple] = []
    threads = [
        threading.Thread(target=_send_on_connection, args=(port, schedule, results, deadline))
        for schedule in schedules
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _ready() -> bool:
    return True


@dataclass
class LoadResult:
    label: str
    target_rate: float
    sent: int = 0
    accepted: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    service_ms: list[float] = field(default_factory=list)
    schedule_ms: list[float] = field(default_factory=list)
    achieved_rate: float = 0.0
    stored: int | None = None
    processed: int | None = None
    log_problems: dict[str, int] = field(default_factory=dict)
    # CPU time the server's processes used during the measured run.
    cpu_seconds: float = 0.0


def run_load(
    port: int,
    deliveries: list[tuple],
    *,
    rate: float,
    connections: int,
    processes: int,
    max_seconds: float,
    label: str,
) -> LoadResult:
    """Send ``deliveries`` at ``rate`` per second. Request i is due at start + i / rate."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        # Start the processes before the clock starts, so their start-up is not measured.
        pool.starmap(_ready, [()] * processes)
        start = time.monotonic() + 0.5
        deadline = start + max_seconds
        schedules: list[list[list[tuple]]] = [
            [[] for _ in range(-(-connections // processes))] for _ in range(processes)
        ]
        for index, (body, headers) in enumerate(deliveries):
            slot = index % connections
            schedules[slot % processes][slot // processes].append(
                (index, start + index / rate, body, headers)
            )
        outputs = pool.starmap(
            run_client_process, [(port, schedule, deadline) for schedule in schedules]
        )

    result = LoadResult(label=label, target_rate=rate)
    first_sent = None
    last_done = None
    for output in outputs:
        for _index, scheduled, started, done, outcome in output:
            if started is None:
                result.errors[outcome] = result.errors.get(outcome, 0) + 1
                continue
            result.sent += 1
            first_sent = started if first_sent is None else min(first_sent, started)
            last_done = done if last_done is None else max(last_done, done)
            if outcome == 202:
                result.accepted += 1
                result.service_ms.append((done - started) * 1000)
                result.schedule_ms.append((done - scheduled) * 1000)
            else:
                key = f"HTTP {outcome}" if isinstance(outcome, int) else outcome
                result.errors[key] = result.errors.get(key, 0) + 1
    if first_sent is not None and last_done > first_sent:
        result.achieved_rate = result.accepted / (last_done - first_sent)
    return result


# deskroute serve as a subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(port: int, process, log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"deskroute serve exited:\n{log_path.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not start:\n{log_path.read_text()[-3000:]}")


class ServeProcess:
    """``deskroute serve`` with its own data folder, secrets and log file."""

    def __init__(self, data_dir: Path, *, workers: int, threads: int, run_worker: bool = True):
        self.data_dir = data_dir
        self.port = free_port()
        self.secret = secrets.token_urlsafe(32)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("DESKROUTE_")}
        # The secrets are set in the environment, so the benchmark signs with them without
        # reading the files deskroute would generate in the data folder.
        environment.update(
            {
                "DESKROUTE_DATA_DIR": str(data_dir),
                "DESKROUTE_ZENDESK_WEBHOOK_SECRET": self.secret,
                "DESKROUTE_API_TOKEN": secrets.token_urlsafe(32),
                "DESKROUTE_RUN_WORKER": "true" if run_worker else "false",
            }
        )
        self.log_path = data_dir / "serve.log"
        self.log = self.log_path.open("w")
        command = [str(DESKROUTE), "serve", "--port", str(self.port)]
        command += ["--workers", str(workers), "--threads", str(threads)]
        self.process = subprocess.Popen(
            command,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_health(self.port, self.process, self.log_path)
        self._check_workers(workers)

    def _check_workers(self, expected: int, timeout: float = 30.0) -> None:
        """Wait until gunicorn runs ``expected`` worker processes, or exit with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self._children()) == expected:
                return
            time.sleep(0.2)
        raise SystemExit(
            f"gunicorn runs {len(self._children())} worker processes, expected {expected}:\n"
            f"{self.log_path.read_text()[-3000:]}"
        )

    def _children(self) -> list[int]:
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) != self.process.pid:
                continue
            # The pipeline's worker process is a child of the arbiter too, but no gunicorn
            # worker.
            command = (entry / "cmdline").read_bytes()
            if b"--parent-pid" not in command:
                children.append(int(entry.name))
        return children

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) used so far by the server's processes."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name is in brackets and may contain spaces, so split after it.
            fields = stat.rpartition(")")[2].split()
            if int(fields[2]) == self.process.pid:
                total += int(fields[11]) + int(fields[12])
        return total / ticks

    def log_problems(self) -> dict[str, int]:
        """Count the server's error and warning lines, and SQLite lock errors among them."""
        text = self.log_path.read_text(errors="replace")
        return {
            "ERROR lines": len(re.findall(r" ERROR ", text)),
            "WARNING lines": len(re.findall(r" WARNING ", text)),
            "database is locked": text.count("database is locked"),
        }

    def counts(self) -> tuple[int, int]:
        """Return the stored deliveries and those the worker finished, from the database."""
        with sqlite3.connect(self.data_dir / "deskroute.sqlite3") as conn:
            stored = conn.execute("SELECT count(*) FROM deliveries").fetchone()[0]
            processed = conn.execute(
                "SELECT count(*) FROM deliveries WHERE status IN ('done', 'ignored')"
            ).fetchone()[0]
        return stored, processed


def bench_acceptance(args, texts: list[str], workers: int, run_worker: bool = True) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="deskroute-bench-") as folder:
        server = ServeProcess(
            Path(folder), workers=workers, threads=args.threads, run_worker=run_worker
        )
        try:
            # Warm-up: imports, connections and the first SQLite pages, not measured.
            warmup = build_deliveries(server.secret, texts, args.warmup, 1_000_000)
            run_load(
                server.port,
                warmup,
                rate=min(args.rate, 200.0),
                connections=args.connections,
                processes=args.clients,
                max_seconds=30.0,
                label="warm-up",
            )
            deliveries = build_deliveries(server.secret, texts, args.count, 2_000_000)
            cpu_before = server.cpu_seconds()
            result = run_load(
                server.port,
                deliveries,
                rate=args.rate,
                connections=args.connections,
                processes=args.clients,
                max_seconds=args.max_seconds,
                label=f"{workers} x {args.threads} threads"
                + ("" if run_worker else ", worker off"),
            )
            result.cpu_seconds = server.cpu_seconds() - cpu_before
            stored, processed = server.counts()
            result.log_problems = server.log_problems()
            result.stored = stored - args.warmup
            result.processed = max(0, processed - args.warmup)
        finally:
            server.stop()
    return result


# Mock Zendesk API


def _fixture(name: str) -> dict:
    return json.loads((ZENDESK_API_FIXTURES / f"{name}.json").read_text())


class MockZendesk(ThreadingHTTPServer):
    """The three Zendesk endpoints the pipeline calls, returning the API fixtures."""

    daemon_threads = True

    def __init__(self, email: str, token: str):
        super().__init__(("127.0.0.1", 0), MockZendeskHandler)
        import base64

        credentials = f"{email}/token:{token}".encode()
        self.expected_auth = "Basic " + base64.b64encode(credentials).decode()
        self.me = json.dumps(_fixture("users_me")).encode()
        self.show = _fixture("ticket_show__sideloads")
        self.update = _fixture("ticket_update")
        self.lock = threading.Lock()
        self.updates: dict[str, float] = {}
        self.update_bodies: dict[str, dict] = {}
        self.arrived = threading.Condition(self.lock)
        self.unexpected: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def ticket_body(self, template: dict, ticket_id: str) -> bytes:
        payload = json.loads(json.dumps(template))
        payload["ticket"]["id"] = int(ticket_id)
        payload["ticket"]["url"] = (
            f"https://{MOCK_SUBDOMAIN}.zendesk.com/api/v2/tickets/{ticket_id}.json"
        )
        return json.dumps(payload).encode()

    def record_update(self, ticket_id: str, arrived_at: float, body: dict) -> None:
        with self.arrived:
            self.updates[ticket_id] = arrived_at
            self.update_bodies[ticket_id] = body
            self.arrived.notify_all()

    def wait_for_update(self, ticket_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while ticket_id not in self.updates:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.arrived.wait(remaining)
            return self.updates[ticket_id]


_TICKET_PATH = re.compile(r"^/api/v2/tickets/(\d+)\.json$")


class MockZendeskHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes. With Nagle's algorithm on, the body waits for
    # the client's delayed ACK (about 40 ms on Linux), which would be counted as deskroute's.
    disable_nagle_algorithm = True
    server: MockZendesk

    def log_message(self, format, *args):  # noqa: A002 - the signature is the base class's
        pass

    def _respond(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reject(self, status: int, message: str) -> None:
        with self.server.lock:
            self.server.unexpected.append(f"{self.command} {self.path}: {status} {message}")
        self._respond(status, json.dumps({"error": message}).encode())

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == self.server.expected_auth:
            return True
        self._reject(401, "Couldn't authenticate you")
        return False

    def do_GET(self):  # noqa: N802 - the name is fixed by BaseHTTPRequestHandler
        if not self._authorised():
            return
        path, _, query = self.path.partition("?")
        if path == "/api/v2/users/me.json":
            self._respond(200, self.server.me)
            return
        match = _TICKET_PATH.match(path)
        if match is None:
            self._reject(404, "RecordNotFound")
            return
        if query not in ("include=users,organizations", "include=users%2Corganizations"):
            self._reject(400, f"unexpected query {query!r}")
            return
        self._respond(200, self.server.ticket_body(self.server.show, match.group(1)))

    def do_PUT(self):  # noqa: N802 - the name is fixed by BaseHTTPRequestHandler
        arrived_at = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if not self._authorised():
            return
        match = _TICKET_PATH.match(self.path)
        if match is None:
            self._reject(404, "RecordNotFound")
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._reject(400, "invalid JSON")
            return
        self.server.record_update(match.group(1), arrived_at, body)
        self._respond(200, self.server.ticket_body(self.server.update, match.group(1)))


# The app in auto mode behind gunicorn, with the connector redirected to the mock


def redirect_session(session, mock_url: str) -> None:
    """Mount an adapter that sends ``https://bench.zendesk.com`` requests to the mock."""
    from requests.adapters import HTTPAdapter

    origin = f"https://{MOCK_SUBDOMAIN}.zendesk.com"

    class RedirectAdapter(HTTPAdapter):
        def send(self, request, **kwargs):
            original = request.url
            request.url = mock_url + original[len(origin) :]
            response = super().send(request, **kwargs)
            # zenpy picks its response handler by the API's base URL in the request URL.
            request.url = response.url = original
            return response

    session.mount(origin, RedirectAdapter())
    # No proxy from the environment may see loopback traffic meant for the mock.
    session.trust_env = False


def write_policy(path: Path, labels: list[str]) -> None:
    lines = ['mode = "auto"', "[defaults]", 'priority = "normal"', 'tags = ["triaged"]']
    for number, label in enumerate(labels, start=1):
        lines += [
            f"[queues.{json.dumps(label)}]",
            'priority = "normal"',
            f"[queues.{json.dumps(label)}.zendesk]",
            f"group_id = {360000000100 + number}",
        ]
    path.write_text("\n".join(lines) + "\n")


def serve_auto_mode(data_dir: str, port: int, mock_url: str, token: str, secret: str) -> None:
    """Run gunicorn in this (spawned) process with an app whose connector uses the mock."""
    import logging

    from connectors.zendesk import ZendeskConnector
    from model.inference import Classifier
    from plugin import create_app
    from plugin.config import load_settings
    from plugin.server import DeskrouteServer

    log_file = open(Path(data_dir) / "serve.log", "w")  # noqa: SIM115 - kept for the process
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    classifier = Classifier.load()
    policy = Path(data_dir) / "policy.toml"
    write_policy(policy, classifier.labels)
    settings = load_settings(
        environ={},
        data_dir=data_dir,
        policy_file=str(policy),
        zendesk_webhook_secret=secret,
        api_token=secrets.token_urlsafe(32),
        run_worker=True,
    )

    class AutoModeServer(DeskrouteServer):
        def load(self):
            # Built after gunicorn forks, so the connector's session belongs to this process.
            connector = ZendeskConnector(MOCK_SUBDOMAIN, MOCK_EMAIL, token, max_attempts=1)
            redirect_session(connector._client.tickets.session, mock_url)
            return create_app(
                self.settings, classifier=classifier, connectors={"zendesk": connector}
            )

    options = {
        "bind": f"127.0.0.1:{port}",
        "workers": 1,
        "threads": 8,
        "worker_class": "gthread",
        "accesslog": "-",
        "access_log_format": '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms',
    }
    AutoModeServer(settings, options).run()


@dataclass
class WritebackResult:
    sent: int = 0
    written: int = 0
    missing: int = 0
    accept_ms: list[float] = field(default_factory=list)
    writeback_ms: list[float] = field(default_factory=list)
    steps_ms: dict[str, list[float]] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)


def bench_writeback(args, texts: list[str]) -> WritebackResult:
    token = secrets.token_urlsafe(24)
    secret = secrets.token_urlsafe(32)
    mock = MockZendesk(MOCK_EMAIL, token)
    mock_thread = threading.Thread(target=mock.serve_forever, name="mock-zendesk", daemon=True)
    mock_thread.start()
    result = WritebackResult()
    context = multiprocessing.get_context("spawn")

    with tempfile.TemporaryDirectory(prefix="deskroute-bench-auto-") as folder:
        port = free_port()
        server = context.Process(
            target=serve_auto_mode, args=(folder, port, mock.url, token, secret), daemon=False
        )
        server.start()
        log_path = Path(folder) / "serve.log"
        try:
            wait_for_health(port, None, log_path)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            total = args.writeback_warmup + args.writeback_count
            for index in range(total):
                ticket_id = str(3_000_000 + index)
                body, headers = signed_delivery(secret, ticket_id, texts[index % len(texts)])
                started = time.monotonic()
                status = _post(connection, body, headers)
                accepted = time.monotonic()
                if status != 202:
                    raise SystemExit(f"webhook returned HTTP {status} for ticket {ticket_id}")
                arrived = mock.wait_for_update(ticket_id, timeout=10.0)
                if arrived is None and index == 0:
                    raise SystemExit(
                        f"no write-back for the first ticket:\n{log_path.read_text()[-3000:]}"
                    )
                if index < args.writeback_warmup:
                    continue
                result.sent += 1
                result.accept_ms.append((accepted - started) * 1000)
                if arrived is None:
                    result.missing += 1
                    continue
                result.written += 1
                result.writeback_ms.append((arrived - started) * 1000)
                # A pause between tickets, so each one meets an idle worker.
                time.sleep(args.writeback_gap)
            connection.close()
            time.sleep(0.5)
            _read_pipeline_timings(Path(folder) / "deskroute.sqlite3", args, result)
        finally:
            if server.is_alive():
                os.kill(server.pid, signal.SIGTERM)
                server.join(30)
            if server.is_alive():
                os.kill(server.pid, signal.SIGKILL)
                server.join(10)
            mock.shutdown()
            mock.server_close()
        result.unexpected = list(mock.unexpected)
    return result


def _post(connection: http.client.HTTPConnection, body: bytes, headers: dict) -> int:
    """POST one delivery; reconnect once when the server closed the idle connection."""
    for attempt in (1, 2):
        try:
            connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        except (ConnectionError, http.client.RemoteDisconnected):
            connection.close()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _read_pipeline_timings(database: Path, args, result: WritebackResult) -> None:
    """Collect the per-step timings and actions the pipeline stored with each decision."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT action, timings FROM decisions WHERE CAST(ticket_id AS INTEGER) >= ?",
            (3_000_000 + args.writeback_warmup,),
        ).fetchall()
    for action, timings in rows:
        result.actions[action] = result.actions.get(action, 0) + 1
        for step, value in json.loads(timings or "{}").items():
            result.steps_ms.setdefault(step, []).append(float(value))


# Output


def fmt(value: float) -> str:
    return f"{value:.1f}" if value == value else "n/a"


def report_acceptance(results: list[LoadResult], args) -> None:
    print()
    print(
        f"Webhook acceptance through deskroute serve (gunicorn gthread, SQLite), "
        f"{args.count} deliveries at {args.rate:g}/s target, {args.connections} keep-alive "
        f"connections from {args.clients} client processes; latency in ms"
    )
    headers = ["workers x threads", "accepted", "errors", "deliveries/s"]
    headers += ["p50", "p90", "p99", "max", "p99 from schedule", "stored", "processed"]
    headers += ["server CPU ms/delivery"]
    rows = []
    for result in results:
        service = summarise(result.service_ms)
        scheduled = summarise(result.schedule_ms)
        errors = sum(result.errors.values())
        rows.append(
            [
                result.label,
                str(result.accepted),
                str(errors),
                f"{result.achieved_rate:.0f}",
                fmt(service["p50"]),
                fmt(service["p90"]),
                fmt(service["p99"]),
                fmt(service["max"]),
                fmt(scheduled["p99"]),
                str(result.stored),
                str(result.processed),
                f"{result.cpu_seconds * 1000 / result.accepted:.2f}" if result.accepted else "n/a",
            ]
        )
    print_table(headers, rows)
    for result in results:
        if result.errors:
            detail = ", ".join(f"{key}: {value}" for key, value in sorted(result.errors.items()))
            print(f"errors with {result.label}: {detail}")
        problems = {key: value for key, value in result.log_problems.items() if value}
        if problems:
            detail = ", ".join(f"{key}: {value}" for key, value in problems.items())
            print(f"server log with {result.label}: {detail}")
    base = results[0]
    for other in results[1:]:
        if not (base.service_ms and other.service_ms):
            continue
        first, second = summarise(base.service_ms), summarise(other.service_ms)
        print(
            f"ratio {other.label} / {base.label}: p50 {second['p50'] / first['p50']:.2f}, "
            f"p99 {second['p99'] / first['p99']:.2f}"
        )


def report_writeback(result: WritebackResult, args) -> None:
    print()
    print(
        f"Ticket in to write-back sent (auto mode, gunicorn 1 x 8 threads, mock Zendesk API on "
        f"loopback), {result.sent} tickets one at a time; latency in ms"
    )
    rows = []
    for name, values in (
        ("webhook POST to 202", result.accept_ms),
        ("webhook POST to PUT at mock", result.writeback_ms),
    ):
        stats = summarise(values)
        rows.append(
            [name, fmt(stats["p50"]), fmt(stats["p90"]), fmt(stats["p99"]), fmt(stats["max"])]
        )
    for step in ("ticket_ms", "enrich_ms", "classify_ms", "policy_ms", "writeback_ms", "total_ms"):
        if step in result.steps_ms:
            stats = summarise(result.steps_ms[step])
            rows.append(
                [
                    f"pipeline {step[:-3]}",
                    fmt(stats["p50"]),
                    fmt(stats["p90"]),
                    fmt(stats["p99"]),
                    fmt(stats["max"]),
                ]
            )
    print_table(["measure", "p50", "p90", "p99", "max"], rows)
    actions = ", ".join(f"{key} {value}" for key, value in sorted(result.actions.items()))
    print(f"written back {result.written} of {result.sent}, no PUT within 10 s: {result.missing}")
    print(f"decisions: {actions or 'none'}")
    if result.unexpected:
        print(f"mock rejected {len(result.unexpected)} request(s), first: {result.unexpected[0]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "csv",
        nargs="?",
        type=Path,
        default=DEFAULT_CSV,
        help="CSV file of ticket texts (default: %(default)s)",
    )
    parser.add_argument("--text-column", default="text", help="CSV column with ticket text")
    parser.add_argument("--rate", type=float, default=500.0, help="target deliveries per second")
    parser.add_argument(
        "--count", type=int, default=5000, help="measured deliveries per configuration"
    )
    parser.add_argument(
        "--warmup", type=int, default=300, help="deliveries sent before each measured run"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="stop sending after this many seconds"
    )
    parser.add_argument(
        "--connections", type=int, default=32, help="keep-alive connections in total"
    )
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--workers", default="1,2", help="gunicorn process counts to measure, comma-separated"
    )
    parser.add_argument("--threads", type=int, default=8, help="threads per gunicorn process")
    parser.add_argument(
        "--writeback-count", type=int, default=200, help="tickets for the write-back latency"
    )
    parser.add_argument(
        "--writeback-warmup", type=int, default=10, help="tickets sent before the measured ones"
    )
    parser.add_argument(
        "--writeback-gap", type=float, default=0.02, help="seconds between write-back tickets"
    )
    parser.add_argument(
        "--worker-off-run",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the first configuration with the pipeline worker turned off",
    )
    parser.add_argument("--skip-acceptance", action="store_true", help="skip part 1")
    parser.add_argument("--skip-writeback", action="store_true", help="skip part 2")
    args = parser.parse_args(argv)

    if args.rate <= 0:
        parser.error("--rate must be positive")
    if args.count < 1 or args.warmup < 0:
        parser.error("--count must be at least 1 and --warmup at least 0")
    if args.clients < 1 or args.connections < args.clients:
        parser.error("--connections must be at least --clients, and --clients at least 1")
    if not 0 < args.max_seconds <= MAX_RUN_SECONDS:
        parser.error(f"--max-seconds must be between 0 and {MAX_RUN_SECONDS:g}")
    if args.count / args.rate > args.max_seconds:
        parser.error(
            f"{args.count} deliveries at {args.rate:g}/s take {args.count / args.rate:.0f} s, "
            f"more than --max-seconds {args.max_seconds:g}"
        )
    try:
        args.worker_counts = [int(item) for item in args.workers.split(",") if item.strip()]
    except ValueError:
        parser.error(f"--workers: expected comma-separated integers, got {args.workers!r}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        parser.error("--workers: each count must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    texts = read_texts(args.csv, args.text_column)
    print(f"machine: {machine_summary()}")
    print(f"tickets: {len(texts)} texts from {args.csv}")

    if not args.skip_acceptance:
        results = [bench_acceptance(args, texts, workers) for workers in args.worker_counts]
        if args.worker_off_run:
            results.append(bench_acceptance(args, texts, args.worker_counts[0], run_worker=False))
        report_acceptance(results, args)
    if not args.skip_writeback:
        report_writeback(bench_writeback(args, texts), args)
    print()
    print(f"load average at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
