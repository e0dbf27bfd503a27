"""Opacus accountants over a recorded mechanism history.

A hospital's privacy loss is the composition of every Poisson-subsampled Gaussian mechanism it
ran: the history ``[(sigma, q, steps), ...]``. It is kept in the hospital's ledger, so an
accountant can always be rebuilt from it (after a restart, or by an auditor).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

# Opacus is imported where it is used: a hospital that trains without DP never loads it.

# Opacus' RDP warns when the best order is its largest alpha: the bound is still valid (only looser),
# and the warning would break the one-line contract of the CLI.
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
# PRV takes log(1 - q) = log(0) for a hospital sampled whole (q = 1) and handles the -inf itself.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"opacus\.accountants\.analysis\.prv")

__all__ = ["Mechanism", "make_accountant", "epsilon_of", "default_delta", "calibrate_noise_multiplier"]


@dataclass(frozen=True)
class Mechanism:
    """``steps`` releases of a Gaussian mechanism with noise multiplier ``sigma`` (noise std =
    sigma x sensitivity) on a Poisson sample of rate ``sample_rate``."""

    sigma: float
    sample_rate: float
    steps: int


def make_accountant(name: str, history: Iterable[Mechanism] = ()) -> IAccountant:
    """An Opacus accountant (``prv`` or ``rdp``) that has seen ``history``."""
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=name)
    # Composition does not depend on the order of the releases, so every release with the same
    # (sigma, q) is one entry with the steps summed (Opacus merges only consecutive ones). PRV's cost
    # grows with the number of entries: a round of two alternating release kinds would otherwise
    # add two entries a round.
    steps: dict[tuple[float, float], int] = {}
    for m in history:
        if m.steps > 0:
            key = (m.sigma, m.sample_rate)
            steps[key] = steps.get(key, 0) + m.steps
    accountant.history = [(sigma, q, n) for (sigma, q), n in steps.items()]
    return accountant


def epsilon_of(history: Iterable[Mechanism], *, delta: float, accountant: str) -> float:
    """Epsilon at ``delta`` of the composed history (0 for an empty one)."""
    history = [m for m in history if m.steps > 0]
    if not history:
        return 0.0
    return float(make_accountant(accountant, history).get_epsilon(delta=delta))


def default_delta(n_records: int) -> float:
    """A delta well below 1/n: at most 1e-5, and at most 1/(10 n) for large hospitals."""
    return min(1e-5, 0.1 / max(n_records, 1))


@lru_cache(maxsize=64)
def calibrate_noise_multiplier(*, target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               accountant: str) -> float:
    """The sigma that reaches ``target_epsilon`` after ``steps`` releases (Opacus' bisection)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps, accountant=accountant))
