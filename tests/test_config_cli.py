"""Settings precedence, secret redaction, check-config and replay from the command line."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
from click.testing import CliRunner

from plugin.cli import main
from plugin.config import ConfigError, Secret, load_settings, redact_http_url

SAMPLE = "tests/fixtures/data/it-service-tickets-sample.csv"


def test_file_then_environment_then_overrides(tmp_path):
    config = tmp_path / "deskroute.toml"
    config.write_text('[deskroute]\nmode = "suggest"\nmax_attempts = 3\nown_tag = "from_file"\n')

    settings = load_settings(
        config, environ={"DESKROUTE_MODE": "auto", "DESKROUTE_MAX_ATTEMPTS": "7"}, max_attempts=9
    )

    assert settings.own_tag == "from_file"
    assert settings.mode == "auto"
    assert settings.max_attempts == 9


def test_config_file_from_environment(tmp_path):
    config = tmp_path / "deskroute.toml"
    config.write_text('mode = "suggest"\n')

    settings = load_settings(environ={"DESKROUTE_CONFIG": str(config)})

    assert settings.mode == "suggest"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DESKROUTE_MODE": "yolo"}, "mode: invalid value 'yolo'"),
        ({"DESKROUTE_MAX_ATTEMPTS": "many"}, "DESKROUTE_MAX_ATTEMPTS"),
        ({"DESKROUTE_RUN_WORKER": "perhaps"}, "run_worker"),
        ({"DESKROUTE_ZENDESK_SUBDOMAIN": "acme"}, "DESKROUTE_ZENDESK_EMAIL"),
        ({"DESKROUTE_ERP": "sap"}, "erp: invalid value 'sap'"),
    ],
)
def test_invalid_setting_names_it(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_unknown_key_in_file_is_an_error(tmp_path):
    config = tmp_path / "deskroute.toml"
    config.write_text("zendesk_tokn = 'x'\n")

    with pytest.raises(ConfigError, match="unknown setting 'zendesk_tokn'"):
        load_settings(config, environ={})


def test_missing_and_invalid_config_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("mode = \n")

    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(bad, environ={})


def test_secret_hides_its_value():
    secret = Secret("s3cr3t-value")

    assert str(secret) == "[secure]"
    assert "s3cr3t" not in repr(secret)
    assert "s3cr3t" not in f"{secret}"
    assert secret.get() == "s3cr3t-value"


def test_check_config_prints_secrets_as_secure(tmp_path, monkeypatch):
    values = {
        "DESKROUTE_DATA_DIR": str(tmp_path),
        "DESKROUTE_ZENDESK_SUBDOMAIN": "acme",
        "DESKROUTE_ZENDESK_EMAIL": "deskroute@example.com",
        "DESKROUTE_ZENDESK_TOKEN": "zd-token-value-123",
        "DESKROUTE_ZENDESK_WEBHOOK_SECRET": "webhook-secret-456",
        "DESKROUTE_API_TOKEN": "api-token-789",
        "DESKROUTE_MODE": "auto",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)

    result = CliRunner().invoke(main, ["check-config"])

    assert result.exit_code == 0, result.output
    for secret in ("zd-token-value-123", "webhook-secret-456", "api-token-789"):
        assert secret not in result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["settings"]["zendesk_token"] == "[secure]"
    assert report["settings"]["api_token"] == "[secure]"
    assert report["policy"]["effective_mode"] == "auto"
    assert "Hardware" in report["model"]["queues"]


def test_check_config_rejects_bad_policy(tmp_path, monkeypatch):
    policy = tmp_path / "policy.toml"
    policy.write_text('mode = "auto"\n[queues.Hardware]\npriority = "asap"\n')
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DESKROUTE_POLICY_FILE", str(policy))

    result = CliRunner().invoke(main, ["check-config"])

    assert result.exit_code == 1
    assert "queues.Hardware.priority 'asap'" in result.output


def test_check_config_hides_password_in_service_url(tmp_path, monkeypatch):
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DESKROUTE_JIRA_URL", "https://bot:url-password@example.atlassian.net")

    result = CliRunner().invoke(main, ["check-config"])

    assert result.exit_code == 0, result.output
    assert "url-password" not in result.output
    jira_url = json.loads(result.output)["settings"]["jira_url"]
    assert jira_url == "https://bot:[secure]@example.atlassian.net"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("admin:url-password@example.atlassian.net", "admin:[secure]@example.atlassian.net"),
        ("https://example.net/?password=url-password", "https://example.net/?password=[secure]"),
        ("https://admin%3Aurl-password@example.net", "https://admin:[secure]@example.net"),
    ],
)
def test_redact_http_url_forms(url, expected):
    assert redact_http_url(url) == expected


def test_serve_reports_unreachable_database(tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    url = f"postgresql+psycopg://deskroute:db-password-value@127.0.0.1:{closed_port}/deskroute"
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DESKROUTE_DATABASE_URL", url)

    result = CliRunner().invoke(main, ["serve", "--port", "1"])

    assert result.exit_code == 1
    assert "cannot open the database" in result.output
    assert "Connection refused" in result.output
    assert "db-password-value" not in result.output
    assert "Traceback" not in result.output


def make_directory(path):
    path.mkdir()


def make_fifo(path):
    os.mkfifo(path)


def make_dangling_link(path):
    path.symlink_to(path.with_name("nothing"))


def make_binary(path):
    path.write_bytes(b"\xff\xfe\x00abc")


def make_empty(path):
    path.write_text("\n")


def make_two_lines(path):
    path.write_text("abc\ndef\n")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (make_directory, "is not a regular file"),
        (make_fifo, "is not a regular file"),
        (make_dangling_link, "is not a regular file"),
        (make_binary, "cannot be read as UTF-8 text"),
        (make_empty, "is empty: delete it"),
        (make_two_lines, "contains spaces or line breaks"),
    ],
)
@pytest.mark.parametrize("name", ["api-token", "zendesk-webhook-secret"])
def test_check_config_rejects_odd_secret_file(tmp_path, monkeypatch, make, message, name):
    make(tmp_path / name)
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))

    result = CliRunner().invoke(main, ["check-config"])

    assert result.exit_code == 1
    assert f"{name} {message}" in result.output


def test_check_config_rejects_missing_model(tmp_path, monkeypatch):
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DESKROUTE_MODEL_DIR", str(tmp_path / "nowhere"))

    result = CliRunner().invoke(main, ["check-config"])

    assert result.exit_code == 1
    assert "model" in result.output


def test_replay_in_process_reports_accuracy(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))

    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(
            main, ["replay", SAMPLE, "--text", "text", "--label", "queue", "--limit", "40"]
        )

    assert result.exit_code == 0, result.output
    assert "sent 40, accepted 40, processed 40, without a decision 0" in result.output
    assert "accuracy" in result.output
    assert "auto-route coverage" in result.output
    assert "webhook acceptance p50" in result.output


def test_replay_rejects_unknown_column(tmp_path, monkeypatch):
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))

    result = CliRunner().invoke(main, ["replay", SAMPLE, "--text", "body", "--label", "queue"])

    assert result.exit_code == 1
    assert "column 'body' not found" in result.output


def test_database_password_is_redacted():
    settings = load_settings(
        environ={"DESKROUTE_DATABASE_URL": "postgresql+psycopg://deskroute:pa55word@db/deskroute"}
    )

    shown = settings.redacted()["database_url"]

    assert "pa55word" not in shown
    assert shown == "postgresql+psycopg://deskroute:[secure]@db/deskroute"


@pytest.mark.parametrize("subdomain", ["acme.zendesk.com", "Acme", "-acme", "acme_support"])
def test_invalid_zendesk_subdomain_is_rejected(subdomain):
    environ = {
        "DESKROUTE_ZENDESK_SUBDOMAIN": subdomain,
        "DESKROUTE_ZENDESK_EMAIL": "deskroute@example.com",
        "DESKROUTE_ZENDESK_TOKEN": "t",
    }

    with pytest.raises(ConfigError, match="zendesk_subdomain"):
        load_settings(environ=environ)


@pytest.mark.parametrize(
    ("name", "value"),
    [("lease_seconds", "-5"), ("worker_poll_seconds", "0"), ("retry_base_seconds", "-1")],
)
def test_out_of_range_durations_are_rejected(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings(environ={f"DESKROUTE_{name.upper()}": value})


def test_top_level_keys_beside_deskroute_table_are_rejected(tmp_path):
    config = tmp_path / "deskroute.toml"
    config.write_text('mode = "yolo"\n[deskroute]\nmax_attempts = 3\n')

    with pytest.raises(ConfigError, match="move mode"):
        load_settings(config, environ={})


def test_serve_stops_before_forking_on_bad_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("DESKROUTE_DATA_DIR", str(tmp_path))
    policy = tmp_path / "policy.toml"
    policy.write_text('[queues.Hardware]\npriority = "asap"\n')
    monkeypatch.setenv("DESKROUTE_POLICY_FILE", str(policy))

    result = CliRunner().invoke(main, ["serve", "--port", "1"])

    assert result.exit_code == 1
    assert "queues.Hardware.priority 'asap'" in result.output
