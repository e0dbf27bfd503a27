"""First-order MAML: ``grad L_Q`` evaluated at ``U_k(theta; S)``, the inner loop treated as constant.

Record-level DP: per-record DP-SGD. Every inner step of every episode is a release on a Poisson
sample the size of a support set, every episode's query gradient a release the size of a query set.
"""

from __future__ import annotations

from fedmeta.config import MetaConfig
from fedmeta.meta.algorithms.base import Releaser, release_rate
from fedmeta.meta.algorithms.maml import SecondOrderMAML
from fedmeta.meta.functional import Params
from fedmeta.privacy.plan import DP_SGD_QUERY, DP_SGD_SUPPORT, Release

__all__ = ["FirstOrderMAML"]


class FirstOrderMAML(SecondOrderMAML):
    name = "fomaml"
    second_order = False

    def record_releases(self, meta: MetaConfig, support: int, n_train: int, rate: float) -> tuple[Release, ...]:
        per_outer = meta.outer_steps * meta.meta_batch
        return (Release(DP_SGD_SUPPORT, release_rate(support, n_train, rate), per_outer * meta.inner_steps),
                Release(DP_SGD_QUERY, release_rate(meta.query, n_train, rate), per_outer))

    def private_outer_step(self, local: Params, release: Releaser, meta: MetaConfig, global_params: Params) -> Params:
        m = meta.meta_batch
        fast = {k: v[None].expand(m, *v.shape) for k, v in local.items()}
        for _ in range(meta.inner_steps):
            g = release(DP_SGD_SUPPORT, fast)
            fast = {k: fast[k] - meta.inner_lr * g[k] for k in fast}
        direction = release(DP_SGD_QUERY, fast)  # the query gradient at the adapted weights
        return self.local_step(local, global_params, {k: v.mean(0) for k, v in direction.items()}, meta)
