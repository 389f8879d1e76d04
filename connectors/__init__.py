"""Clients for the systems deskroute reads from and writes to."""
