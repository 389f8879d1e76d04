"""WSGI entry point for running under gunicorn or another WSGI server directly."""

from plugin import create_app

app = create_app()
