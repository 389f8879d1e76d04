"""WSGI entry point for running under gunicorn or another WSGI server directly."""

import logging
import os

from plugin import create_app

# This module is the entry point, the one place that configures logging, as
# ``deskroute serve`` does for its own processes. DESKROUTE_LOG_LEVEL sets the level.
logging.basicConfig(
    level=getattr(logging, os.environ.get("DESKROUTE_LOG_LEVEL", "INFO").upper(), logging.INFO),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

app = create_app()
