"""A hospital's own privacy policy, and the plan it trains: always the stricter of policy and run.

The run config comes from whoever submits the run (the coordinator). A hospital's policy comes from
its own side: its node config in a deployment, ``privacy.hospitals.NAME`` in a simulation (where one
person plays every role). A run that asks for less than the policy — another privacy mode, no DP at
all, a larger delta, less noise — is refused; the cap is the smaller of the two, the accountant the
hospital's. A deployed node without a policy requires record-level DP, the default delta bound and a
cap of ``DEFAULT_NODE_MAX_EPSILON``; a deployed node always draws its sampling and noise from OS
entropy, whatever ``privacy.secure_mode`` and the seed say.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from fedmeta.config import ExperimentConfig
from fedmeta.errors import FedMetaError
from fedmeta.privacy.accounting import default_delta
from fedmeta.privacy.client_dp import CLIENT_DELTA
from fedmeta.privacy.plan import PrivacyPlan, plan_privacy

__all__ = ["HospitalPolicy", "PolicyRefusal", "NODE_POLICY_KEYS", "DEFAULT_NODE_MAX_EPSILON",
           "policy_from_config", "policy_from_node_config", "node_policy_from_items", "negotiate"]

MODES = ("record", "client", "none")
DEFAULT_NODE_MAX_EPSILON = 10.0
NODE_POLICY_KEYS = ("privacy-mode", "max-epsilon", "delta", "accountant", "min-noise-multiplier")


class PolicyRefusal(Exception):
    """The run asks for less privacy than the hospital's policy allows: it does not train."""


@dataclass(frozen=True)
class HospitalPolicy:
    """``mode``: the privacy required (``none``: non-private runs accepted too; ``None``: the run's).
    ``max_delta``: the largest delta accepted (``None``: the default bound of the run's mode, when
    ``default_delta_bound``, else only the 1/n bound)."""

    mode: str | None = None
    max_epsilon: float = math.inf
    max_delta: float | None = None
    default_delta_bound: bool = False
    accountant: str | None = None
    min_noise_multiplier: float = 0.0
    secure_randomness: bool = False  # a deployed node always: the run seed is the coordinator's
    source: str = "the run config"


def policy_from_config(cfg: ExperimentConfig, hospital: str) -> HospitalPolicy:
    """A simulated hospital's policy: its ``privacy.hospitals`` entry, else the run's own settings."""
    own = cfg.privacy.hospitals.get(hospital)
    if own is None:
        return HospitalPolicy()
    return HospitalPolicy(mode=own.mode, max_epsilon=own.max_epsilon, max_delta=own.delta, accountant=own.accountant,
                          min_noise_multiplier=own.min_noise_multiplier, source=f"privacy.hospitals.{hospital}")


def _number(node_config: Mapping[str, object], key: str, default: float, *, positive: bool) -> float:
    value = node_config.get(key)
    if value is None or value == "":
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise FedMetaError(f"node config {key}: expected a number, got {value!r}") from None
    if math.isnan(number) or number < 0 or (positive and number == 0):
        raise FedMetaError(f"node config {key}: must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


def policy_from_node_config(node_config: Mapping[str, object]) -> HospitalPolicy:
    """A deployed hospital's policy from its node config; safe where a key is absent."""
    mode = str(node_config.get("privacy-mode", "") or "record")
    if mode not in MODES:
        raise FedMetaError(f"node config privacy-mode: expected one of {', '.join(MODES)}, got {mode!r}")
    accountant = str(node_config.get("accountant", "") or "") or None
    if accountant not in (None, "prv", "rdp"):
        raise FedMetaError(f"node config accountant: expected prv or rdp, got {accountant!r}")
    delta = _number(node_config, "delta", 0.0, positive=False) or None
    if delta is not None and delta >= 1:
        raise FedMetaError(f"node config delta: must be < 1, got {delta!r}")
    return HospitalPolicy(
        mode=mode, max_epsilon=_number(node_config, "max-epsilon", DEFAULT_NODE_MAX_EPSILON, positive=True),
        max_delta=delta, default_delta_bound=delta is None, accountant=accountant,
        min_noise_multiplier=_number(node_config, "min-noise-multiplier", 0.0, positive=False),
        secure_randomness=True, source="node config")


def node_policy_from_items(items: list[str], max_epsilon: float | None = None) -> dict[str, str | float]:
    """Node config keys from ``KEY=VALUE`` items (``deploy-local --node-policy``), checked."""
    policy: dict[str, str | float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in NODE_POLICY_KEYS:
            raise FedMetaError(f"--node-policy {item!r}: expected KEY=VALUE with KEY one of {', '.join(NODE_POLICY_KEYS)}")
        policy[key] = value
    if max_epsilon is not None:
        policy["max-epsilon"] = max_epsilon
    try:
        policy_from_node_config(policy)
    except FedMetaError as err:
        raise FedMetaError(f"--node-policy: {err}") from None
    numeric = ("max-epsilon", "delta", "min-noise-multiplier")
    return {k: float(v) if k in numeric else v for k, v in policy.items()}


def negotiate(policy: HospitalPolicy, cfg: ExperimentConfig, *, hospital: str, n_train: int) -> PrivacyPlan | None:
    """The plan ``hospital`` trains this run with (``None``: non-private), or ``PolicyRefusal``.

    Raises ``FedMetaError`` for a run config no hospital could train (delta above 1/n, an
    unreachable target epsilon).
    """
    run = cfg.privacy.mode
    required = policy.mode
    if run == "none":
        if required in (None, "none"):
            return None
        raise PolicyRefusal(f"hospital {hospital} requires {required}-level DP ({policy.source}) and the run "
                            "asks for none")
    if required not in (None, "none", run):
        raise PolicyRefusal(f"hospital {hospital} requires {required}-level DP ({policy.source}) and the run "
                            f"asks for {run}-level")
    plan = plan_privacy(cfg, hospital=hospital, n_train=n_train)
    bound = policy.max_delta
    if bound is None and policy.default_delta_bound:
        bound = default_delta(n_train) if run == "record" else CLIENT_DELTA
    if bound is not None and plan.delta > bound:
        raise PolicyRefusal(f"hospital {hospital} accepts delta <= {bound:.3g} ({policy.source}) and the run "
                            f"asks for {plan.delta:.3g}")
    if plan.sigma < policy.min_noise_multiplier:
        raise PolicyRefusal(f"hospital {hospital} accepts noise multiplier >= {policy.min_noise_multiplier:g} "
                            f"({policy.source}) and the run asks for {plan.sigma:.4g}")
    return replace(plan, accountant=policy.accountant or plan.accountant,
                   max_epsilon=min(plan.max_epsilon, policy.max_epsilon),
                   secure_randomness=plan.secure_randomness or policy.secure_randomness)
