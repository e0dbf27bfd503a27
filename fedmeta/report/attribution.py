"""Which inputs a model's prediction rests on (Captum): integrated gradients for a table's features
(Sundararajan et al. 2017), saliency for an image's pixels (Simonyan et al. 2014).

The attributed output is the logit (binary), the risk score (survival) or the logit of the
patient's own class (multi-class), so that the global and the adapted model are asked the same
question about the same patients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["ATTRIBUTIONS", "attribute", "MAX_ATTRIBUTED"]

MAX_ATTRIBUTED = 200  # patients attributed (the first of a seeded order): IG runs 50 forward passes each


def _target(outputs_dim: int, y: np.ndarray) -> torch.Tensor | None:
    return torch.as_tensor(np.asarray(y).astype(np.int64)) if outputs_dim == 2 else None


def _integrated_gradients(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          target: torch.Tensor | None) -> torch.Tensor:
    from captum.attr import IntegratedGradients

    # Baseline 0: the hospital's mean patient (features are standardised with its own statistics).
    return IntegratedGradients(forward).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=50)


def _saliency(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              target: torch.Tensor | None) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(forward).attribute(x, target=target, abs=True)


# input rank (a table's (n, features), images' (n, C, H, W)) -> (method name, attribution)
ATTRIBUTIONS = {2: ("integrated gradients", _integrated_gradients), 4: ("saliency", _saliency)}


def attribute(forward: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, y: np.ndarray) -> tuple[str, np.ndarray]:
    """The method's name and the mean absolute attribution over the patients: one value per feature
    ``(features,)``, or a map ``(H, W)`` (mean over channels) for images."""
    name, method = ATTRIBUTIONS[x.ndim]
    inputs = torch.as_tensor(x, dtype=torch.float32)
    with torch.no_grad():
        outputs_dim = forward(inputs[:1]).dim()
    attributions = method(forward, inputs.requires_grad_(True), _target(outputs_dim, y)).detach().abs()
    mean = attributions.mean(0).numpy().astype(np.float64)
    return name, (mean.mean(0) if x.ndim == 4 else mean)
