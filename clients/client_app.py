"""Flower ClientApp of a hospital (``flwr run .`` and SuperNodes load ``clients.client_app:app``)."""

from fedmeta.flower.client import build_client_app

app = build_client_app()
