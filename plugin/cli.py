"""The ``deskroute`` command: serve, check-config, replay, and the model and install commands."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import click

from plugin.config import ConfigError, load_settings
from plugin.logs import OneLineMessages
from plugin.rules import PolicyError

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(item, OneLineMessages) for item in handler.filters):
            handler.addFilter(OneLineMessages())


def _settings_or_exit(config_file, **overrides):
    try:
        return load_settings(config_file, **overrides)
    except (ConfigError, PolicyError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option("--log-level", default="info", show_default=True, help="Logging level.")
def main(log_level: str) -> None:
    """deskroute: classify, enrich and route help desk tickets."""
    configure_logging(log_level)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port."
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="gunicorn processes for webhooks and the API (the pipeline worker is one more).",
)
@click.option(
    "--threads", default=8, show_default=True, type=click.IntRange(1), help="Threads per process."
)
@click.option(
    "--worker",
    "worker_mode",
    type=click.Choice(["process", "thread", "off"]),
    default="process",
    show_default=True,
    help="Where the pipeline runs: a worker process beside gunicorn, a thread in each web "
    "process, or nowhere (another host runs `deskroute worker`). DESKROUTE_RUN_WORKER=false "
    "means off.",
)
def serve(
    host: str, port: int, config_file: str | None, workers: int, threads: int, worker_mode: str
) -> None:
    """Run the webhook server behind gunicorn, with the pipeline worker."""
    from plugin.server import run_gunicorn

    settings = _settings_or_exit(config_file)
    if not settings.run_worker:
        worker_mode = "off"
    _check_startup(config_file)
    _prepare_shared_state(settings)
    run_gunicorn(
        settings,
        host=host,
        port=port,
        workers=workers,
        threads=threads,
        worker_mode=worker_mode,
        config_file=config_file,
        log_level=logging.getLevelName(logging.getLogger().level).lower(),
    )


def _prepare_shared_state(settings) -> None:
    """Create the schema and the generated secrets once, before gunicorn forks.

    Processes that started together would otherwise race on ``CREATE TABLE`` and on
    writing the secret files.
    """
    from sqlalchemy.exc import OperationalError

    from plugin.state import fill_local_secrets
    from plugin.store import Store

    store = Store(settings.resolved_database_url())
    try:
        store.create_schema()
    except OperationalError as exc:
        # The driver's first line gives the reason (refused, unknown host, bad password).
        # The rest is SQLAlchemy's context, which can repeat the URL.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise click.ClickException(
            f"cannot open the database {settings.database_description()}: {reason}"
        ) from None
    finally:
        store.dispose()
    try:
        fill_local_secrets(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _check_startup(config_file: str | None) -> None:
    """Run ``deskroute check-config`` in a child process before gunicorn forks, so that a bad
    setting stops the command with its message instead of failing every process that boots.

    A child process, because onnxruntime loaded in the gunicorn arbiter leaves its forked
    workers hanging at exit.
    """
    command = [sys.executable, "-m", "plugin.cli", "--log-level", "error", "check-config"]
    if config_file:
        command += ["--config", config_file]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        message = lines[-1].removeprefix("Error: ") if lines else "check-config failed"
        raise click.ClickException(message)
    report = json.loads(result.stdout)
    for warning in report["warnings"]:
        log.warning("policy: %s", warning)
    if report["policy"]["effective_mode"] != (
        report["settings"]["mode"] or report["policy"]["mode"]
    ):
        log.warning("no help desk credentials are set: shadow mode")
    log.info(
        "model %s with %s queues, policy %s, database %s",
        report["model"]["version"],
        len(report["model"]["queues"]),
        report["policy"]["source"],
        report["database"],
    )


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
# Set by `deskroute serve` for the worker it starts: the worker stops when that pid dies,
# and the checks serve ran already are skipped.
@click.option("--parent-pid", type=int, hidden=True)
def worker(config_file: str | None, parent_pid: int | None) -> None:
    """Run only the pipeline worker, for machines that serve no webhooks.

    Web processes can then run with DESKROUTE_RUN_WORKER=false; all of them share the
    deliveries through the database (PostgreSQL when they are on several machines).
    """
    from plugin.worker_process import run_worker_process

    settings = _settings_or_exit(config_file)
    if parent_pid is None:
        _check_startup(config_file)
        _prepare_shared_state(settings)
    run_worker_process(
        settings, logging.getLevelName(logging.getLogger().level).lower(), parent=parent_pid
    )


@main.command("check-config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
def check_config(config_file: str | None) -> None:
    """Validate settings, policy and model; print them with secrets shown as [secure]."""
    from model.inference import Classifier, ModelError
    from plugin.policy import Policy
    from plugin.state import build_connectors, check_local_secrets

    settings = _settings_or_exit(config_file)
    try:
        check_local_secrets(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        policy = Policy.load(settings.policy_file)
    except PolicyError as exc:
        raise click.ClickException(f"policy: {exc}") from None
    try:
        classifier = Classifier.load(settings.model_dir)
    except ModelError as exc:
        raise click.ClickException(f"model: {exc}") from None
    try:
        build_connectors(settings, policy)
        check_database_driver(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    report = {
        "settings": settings.redacted(),
        "database": settings.database_description(),
        "policy": {
            "source": policy.source,
            "mode": policy.mode,
            "effective_mode": _effective_mode(settings, policy),
            "queues": sorted(policy.queues),
            "rules": [rule.name for rule in policy.rules.rules],
        },
        "model": {"version": classifier.version, "queues": classifier.labels},
        "warnings": policy.check_labels(classifier.labels),
    }
    click.echo(json.dumps(report, indent=2, default=str))


def check_database_driver(settings) -> None:
    """Raise ValueError when the database URL names a driver that is not installed."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.resolved_database_url())
    try:
        url.get_dialect().import_dbapi()
    except ImportError as exc:
        hint = " (pip install -e '.[postgres]')" if url.get_backend_name() == "postgresql" else ""
        raise ValueError(
            f"database_url: the driver of {url.drivername} is not installed{hint}: {exc.name}"
        ) from None


def _effective_mode(settings, policy) -> str:
    if not settings.zendesk_configured and not settings.jira_configured:
        return "shadow"
    return settings.mode or policy.mode


@main.command()
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--text", "text_columns", required=True, help="Text column(s), comma-separated.")
@click.option("--label", "label_column", help="Column with the expected queue.")
@click.option("--url", help="Base URL of a running server; without it an in-process app is used.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--limit", type=click.IntRange(1), help="Send at most this many rows.")
@click.option(
    "--timeout",
    default=60.0,
    type=click.FloatRange(0, min_open=True),
    show_default=True,
    help="Seconds to wait for the next decision before reporting the rest as missing.",
)
def replay(csv_file, text_columns, label_column, url, config_file, limit, timeout) -> None:
    """Send each CSV row as a signed Zendesk webhook and report on the decisions."""
    from plugin.replay import ReplayError, run_replay

    settings = _settings_or_exit(config_file)
    try:
        report = run_replay(
            csv_file,
            text_columns=[column.strip() for column in text_columns.split(",")],
            label_column=label_column,
            url=url,
            settings=settings,
            limit=limit,
            timeout=timeout,
        )
    except ReplayError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.render())
    if report.missing:
        sys.exit(1)


@main.group()
def install() -> None:
    """Register deskroute with a help desk."""


def _register_commands() -> None:
    from model.cli import evaluate_command, train_command
    from plugin.install_jira import install_jira_command

    main.add_command(train_command, "train")
    main.add_command(evaluate_command, "evaluate")
    install.add_command(install_jira_command, "jira")


_register_commands()


if __name__ == "__main__":
    main()
