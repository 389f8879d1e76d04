"""deskroute: the Flask app that routes help desk tickets."""

from __future__ import annotations

import logging

from flask import Flask

log = logging.getLogger(__name__)


def create_app(settings=None, **state_parts) -> Flask:
    """Build the app. ``settings`` defaults to :func:`plugin.config.load_settings`.

    ``state_parts`` replace parts of the app state (store, classifier, connectors,
    enricher, policy); tests use them to inject mocks at the connectors' HTTP layer.
    """
    from plugin.config import load_settings
    from plugin.errors import register_error_handlers
    from plugin.state import AppState, fill_local_secrets

    settings = settings or load_settings()
    fill_local_secrets(settings)

    app = Flask(__name__)
    # Intake reads the body itself and enforces the limit with a JSON 413.
    app.config["MAX_CONTENT_LENGTH"] = None
    state = AppState(settings, **state_parts)
    app.extensions["deskroute"] = state

    from plugin import api, forge, panel_api
    from plugin.webhooks import jira, zendesk

    app.register_blueprint(zendesk.bp, url_prefix="/webhooks/zendesk")
    app.register_blueprint(jira.bp, url_prefix="/webhooks/jira")
    app.register_blueprint(forge.bp, url_prefix="/forge")
    app.register_blueprint(api.bp, url_prefix="/api")
    app.register_blueprint(panel_api.bp, url_prefix="/api")
    app.add_url_rule("/healthz", "healthz", api.healthz)
    register_error_handlers(app)

    if settings.run_worker:
        state.worker.start()
    return app
