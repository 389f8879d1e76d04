"""Webhook blueprints, one module per help desk."""
