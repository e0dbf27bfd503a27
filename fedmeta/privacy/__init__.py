"""Differential privacy of what a hospital sends: record-level (per-episode clipping) and
hospital-level (clipped, noised meta-update), accounted with Opacus."""
