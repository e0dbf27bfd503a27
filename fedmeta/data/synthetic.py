"""A deterministic multi-hospital generator built on one shared latent disease model.

Every hospital sees the same disease, but not the same way:

* **Shared latent model.** A patient has latent physiology ``z ~ N(mu_h, I_d)``. Disease risk is
  ``logit = z @ (w + delta_h) + 0.5 * (z_0 * z_1 - z_2**2 + 1) + b_h`` with a global rule ``w``
  (``||w|| = 3``) and a small nonlinear term shared by all sites.
* **Covariate shift.** Populations differ (``mu_h ~ N(0, 0.5 * covariate_shift)`` per feature) and
  so do devices: a site measures ``x = z * s_h + o_h + noise`` with a per-site, per-feature affine
  calibration (``log s_h ~ N(0, 0.3 * covariate_shift)``, ``o_h ~ N(0, covariate_shift)``).
* **Concept shift.** ``delta_h = concept_shift * B @ a_h`` with ``a_h ~ N(0, I_2)`` and a fixed
  ``d x 2`` matrix ``B`` with ``||B[:, j]|| = 2``: every site perturbs the decision rule, along
  directions that are shared across sites (site-specific weight given to two risk axes). A single
  averaged model cannot fit every site; an initialisation that moves quickly along ``B`` can.
* **Label shift.** ``b_h`` is solved for so that the site's prevalence is
  ``pi_h ~ U(prevalence_min, prevalence_max)``.
* **Quantity skew.** ``n_h`` is log-uniform in ``[min_patients, max_patients]``.

The same ``(config, seed)`` always gives the same hospitals, bit for bit.
"""

from __future__ import annotations

import numpy as np

from fedmeta.config import SyntheticConfig
from fedmeta.data.hospital import RawSite

__all__ = ["generate_synthetic", "hospital_names"]


def hospital_names(n: int) -> list[str]:
    return [f"hospital-{i + 1:02d}" for i in range(n)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=0, keepdims=True)


def _intercept_for_prevalence(logit: np.ndarray, prevalence: float) -> float:
    """Bisection for b with mean(sigmoid(logit + b)) = prevalence."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def generate_synthetic(cfg: SyntheticConfig, seed: int) -> list[RawSite]:
    """Draw ``cfg.hospitals`` hospitals from the shared latent disease model."""
    rng = np.random.default_rng([seed, 20_261_122])
    d = cfg.features
    w = 3.0 * _unit(rng.normal(size=d))
    basis = 2.0 * _unit(rng.normal(size=(d, 2)))
    sites: list[RawSite] = []
    for name in hospital_names(cfg.hospitals):
        n = int(round(np.exp(rng.uniform(np.log(cfg.min_patients), np.log(cfg.max_patients)))))
        mu = rng.normal(0.0, 0.5 * cfg.covariate_shift, size=d)
        z = rng.normal(mu, 1.0, size=(n, d))
        delta = cfg.concept_shift * basis @ rng.normal(size=2)
        logit = z @ (w + delta) + 0.5 * (z[:, 0] * z[:, 1] - z[:, 2] ** 2 + 1.0)
        prevalence = rng.uniform(cfg.prevalence_min, cfg.prevalence_max)
        logit = logit + _intercept_for_prevalence(logit, prevalence)
        y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        scale = np.exp(rng.normal(0.0, 0.3 * cfg.covariate_shift, size=d))
        offset = rng.normal(0.0, cfg.covariate_shift, size=d)
        x = z * scale + offset + rng.normal(0.0, 0.1, size=(n, d))
        sites.append(RawSite(name=name, x=x.astype(np.float64), y=y, origin="synthetic generator"))
    return sites
