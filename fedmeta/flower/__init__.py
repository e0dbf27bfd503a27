"""Flower wiring: record conversion, the FedMeta strategy, and the client/server app builders."""
