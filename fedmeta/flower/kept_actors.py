"""The hospitals' Ray actors kept from one simulation to the next, for the runs of a tune or a compare.

Flower's Ray backend creates its actor pool for every simulation and kills it, with the driver's
connection, at the end. A new actor is a new process that imports torch, Flower and fedmeta:
5-6 s on this 2-core machine, against a tenth of a second for a round of UCI Heart. Inside
``kept_actors`` this process stays attached to the cluster, and a simulation hands its idle,
live actors to the next one with the same client resources instead of killing them.

The runs stay independent: an actor holds nothing of a run but the ClientApp rebuilt from that
run's config and ledger directory (``fedmeta.flower.client``), and everything a hospital keeps
between rounds lives in files of the run's own directory. ``tests/test_ray_cluster.py`` holds a run
after another on the same actors equal to the same run alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["kept_actors"]

_lock = threading.Lock()
_kept: dict[tuple, Any] = {}  # client resources -> an idle BasicActorPool
_depth = 0
_ALIVE_TIMEOUT_S = 60.0


def _key(resources: dict[str, float]) -> tuple:
    return tuple(sorted(resources.items()))


def _all_alive(pool: Any) -> bool:
    """Every actor of the parked ``pool`` (parked only when all were idle) still answering: one that
    died with its run is not handed on."""
    import ray

    try:
        ray.get([actor.__ray_ready__.remote() for actor in pool.pool], timeout=_ALIVE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - any failure: build a fresh pool
        return False
    return True


def _build(self: Any, app_fn: Any, *, original: Any) -> None:
    with _lock:
        pool = _kept.pop(_key(self.client_resources), None)
    if pool is not None and _all_alive(pool):
        self.pool, self.app_fn = pool, app_fn
        return
    if pool is not None:
        pool.terminate_all_actors()
    original(self, app_fn)


def _terminate(self: Any) -> None:
    """Park the pool for the next simulation; the driver stays attached."""
    if self.pool is None:
        return
    with _lock:
        previous = _kept.pop(_key(self.client_resources), None)
        if len(self.pool.pool) == self.pool.num_actors:
            _kept[_key(self.client_resources)] = self.pool
        else:  # an actor still busy (a crashed run): not handed on
            self.pool.terminate_all_actors()
    if previous is not None and previous is not self.pool:
        previous.terminate_all_actors()
    self.pool = None


@contextmanager
def kept_actors(address: str) -> Iterator[None]:
    """Within the block, this process's simulations attach to the Ray cluster at ``address`` once and
    reuse each other's actors. ``address`` empty: nothing is kept (each simulation starts its own Ray)."""
    global _depth
    if not address:
        yield
        return
    import ray
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    from fedmeta.simulation import connect_ray

    with _lock:
        _depth += 1
        outermost = _depth == 1
    build, terminate = RayBackend.build, RayBackend.terminate
    if outermost:
        connect_ray(address)
        RayBackend.build = lambda self, app_fn: _build(self, app_fn, original=build)  # type: ignore[method-assign]
        RayBackend.terminate = _terminate  # type: ignore[method-assign]
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            last = _depth == 0
            pools = list(_kept.values()) if last else []
            if last:
                _kept.clear()
        if last:
            RayBackend.build, RayBackend.terminate = build, terminate  # type: ignore[method-assign]
            for pool in pools:
                pool.terminate_all_actors()
            if ray.is_initialized():
                ray.shutdown()
