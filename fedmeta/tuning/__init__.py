"""Hyper-parameter tuning on validation data only (``fedmeta tune``, ``fedmeta compare --tune``)."""
