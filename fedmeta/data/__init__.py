"""Hospitals: loading, per-site preprocessing and episode sampling."""
