"""API errors and the one JSON shape every error body has.

Views raise :class:`APIError`; the handler registered by the app factory renders
``{"error": {"status": 401, "code": "invalid_signature", "message": "..."}}``.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, code: str, message: str, **details):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self) -> dict:
        body = {"status": self.status, "code": self.code, "message": self.message}
        body.update(self.details)
        return body


def error_response(status: int, code: str, message: str, **details):
    response = jsonify({"error": APIError(status, code, message, **details).to_dict()})
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(exc: APIError):
        return error_response(exc.status, exc.code, exc.message, **exc.details)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def _unexpected_error(exc: Exception):
        # A 500 makes the help desk retry the delivery later, so nothing accepted is lost.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal error, the request can be retried")
