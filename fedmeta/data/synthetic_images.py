"""A deterministic imaging federation: small grey-scale scans with one lesion each, so that the
imaging path (conv nets, image normalisation, episodes of images) runs with no data on disk.

* **Lesion.** Every scan holds a Gaussian lesion at a random place, of radius ``r`` and contrast
  ``c`` (both standardised to mean 0, sd 1 over the generator's range), on a smooth textured background.
* **Label rule with concept shift.** Disease risk is ``logit = 2.5 * (u_h . (r, c)) + b_h``: every site
  weighs size against contrast along its own direction ``u_h``, an angle ``concept_shift * N(0, 0.6)``
  radians away from a global one. One averaged model fits no site exactly; a few labelled scans
  tell a site its angle.
* **Label shift.** ``b_h`` gives the site prevalence ``pi_h ~ U(prevalence_min, prevalence_max)``.
* **Scanner shift.** Each site's device applies its own gamma, gain, offset, blur and noise
  (``acquisition_shift`` scales how far they are from the identity), the shift a site's own
  intensity normalisation partly removes.
* **Quantity skew.** ``n_h`` is log-uniform in ``[min_images, max_images]``.

The same ``(config, seed)`` always gives the same hospitals, bit for bit.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from fedmeta.config import SyntheticImagesConfig
from fedmeta.data.hospital import RawSite
from fedmeta.data.synthetic import hospital_names

__all__ = ["generate_synthetic_images"]


def _scans(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clean scans in [0, 1] and their standardised lesion (radius, contrast)."""
    grid = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    radius, contrast = rng.uniform(0.06, 0.18, n), rng.uniform(0.25, 0.75, n)
    cy, cx = rng.uniform(0.25, 0.75, (2, n))
    d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    lesion = contrast[:, None, None] * np.exp(-d2 / (2 * radius[:, None, None] ** 2))
    freq, phase = rng.uniform(1.0, 3.0, (n, 2, 2)), rng.uniform(0, 2 * np.pi, (n, 2))
    texture = sum(np.cos(2 * np.pi * (freq[:, k, 0, None, None] * yy + freq[:, k, 1, None, None] * xx)
                         + phase[:, k, None, None]) for k in range(2))
    scans = np.clip(0.3 + 0.05 * texture + lesion, 0.0, 1.0)
    standard = np.stack([(radius - 0.12) / 0.0346, (contrast - 0.5) / 0.144], axis=1)  # U(a, b) sd = (b-a)/sqrt(12)
    return scans, standard


def _prevalence_intercept(score: np.ndarray, prevalence: float) -> float:
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(score + mid)))) < prevalence else (lo, mid)
    return 0.5 * (lo + hi)


def _scanner(rng: np.random.Generator, scans: np.ndarray, shift: float) -> np.ndarray:
    """The site's device: gamma, gain, offset, blur and noise, ``shift`` = 0 being a perfect scanner."""
    gamma = np.exp(shift * rng.normal(0, 0.25))
    gain, offset = np.exp(shift * rng.normal(0, 0.25)), shift * rng.normal(0, 0.1)
    blur, noise = shift * rng.uniform(0.0, 0.8), shift * rng.uniform(0.01, 0.06)
    out = gain * scans ** gamma + offset
    if blur > 0:
        out = gaussian_filter(out, sigma=(0, blur, blur))
    return out + noise * rng.normal(size=out.shape)


def generate_synthetic_images(cfg: SyntheticImagesConfig, seed: int) -> list[RawSite]:
    """``cfg.hospitals`` sites of ``(n, 1, size, size)`` scans with binary labels."""
    rng = np.random.default_rng([seed, 20_261_130])
    angle0 = rng.uniform(0, 2 * np.pi)
    sites = []
    for name in hospital_names(cfg.hospitals):
        n = int(round(np.exp(rng.uniform(np.log(cfg.min_images), np.log(cfg.max_images)))))
        angle = angle0 + cfg.concept_shift * rng.normal(0, 0.6)
        scans, lesion = _scans(rng, n, cfg.size)
        score = 2.5 * lesion @ np.array([np.cos(angle), np.sin(angle)])
        b = _prevalence_intercept(score, rng.uniform(cfg.prevalence_min, cfg.prevalence_max))
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(score + b)))).astype(np.int64)
        x = _scanner(rng, scans, cfg.acquisition_shift)[:, None].astype(np.float32)
        sites.append(RawSite(name=name, x=x, y=y, origin=f"synthetic-images (seed {seed})"))
    return sites
