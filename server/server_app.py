"""Flower ServerApp of the coordinator (``flwr run .`` loads ``server.server_app:app``)."""

from fedmeta.flower.server import build_server_app

app = build_server_app()
