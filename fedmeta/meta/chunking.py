"""How many episodes are differentiated together: ``vmap`` keeps every episode's second-order graph
alive at once, so a conv net over images needs the meta-batch split into chunks (the per-episode
gradients are the same, only computed in pieces).

``meta.episode_chunk = 0`` picks the chunk from an estimate of one episode's graph: the bytes of
every layer's output on its support and query sets, times the inner steps kept for the second-order
backward (and a factor for the gradients of the gradients), against ``AUTO_BUDGET_BYTES``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from fedmeta.data.episodes import EpisodeBatch

__all__ = ["AUTO_BUDGET_BYTES", "episode_graph_bytes", "chunk_size", "chunks"]

AUTO_BUDGET_BYTES = 1 << 30  # 1 GiB of estimated graph per chunk
_GRAPH_FACTOR = 3  # forward activations + their gradients + the second-order terms, per inner step
_cache: dict[tuple, int] = {}


def _layer_output_bytes(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total + x.numel() * x.element_size()


def episode_graph_bytes(model: nn.Module, batch: EpisodeBatch, steps: int) -> int:
    """Estimated bytes of one episode's differentiable graph (cached per model and shapes)."""
    key = (id(model), tuple(batch.x_support.shape[1:]), tuple(batch.x_query.shape[1:]), steps,
           str(batch.x_support.dtype), str(batch.x_support.device))
    if key not in _cache:
        support = _layer_output_bytes(model, batch.x_support[0])
        query = _layer_output_bytes(model, batch.x_query[0])
        _cache[key] = _GRAPH_FACTOR * (steps * support + query)
    return _cache[key]


def chunk_size(model: nn.Module, batch: EpisodeBatch, steps: int, configured: int) -> int:
    """``configured`` episodes per chunk, or (0) as many as ``AUTO_BUDGET_BYTES`` holds (at least 1)."""
    if configured:
        return min(configured, batch.size)
    per_episode = episode_graph_bytes(model, batch, steps)
    return max(1, min(batch.size, AUTO_BUDGET_BYTES // max(per_episode, 1)))


def chunks(batch: EpisodeBatch, size: int) -> list[EpisodeBatch]:
    """The meta-batch as consecutive chunks of ``size`` episodes (weights sliced alike)."""
    if size >= batch.size:
        return [batch]
    out = []
    for start in range(0, batch.size, size):
        part = slice(start, start + size)
        out.append(replace(batch, x_support=batch.x_support[part], y_support=batch.y_support[part],
                           x_query=batch.x_query[part], y_query=batch.y_query[part],
                           w_support=None if batch.w_support is None else batch.w_support[part],
                           w_query=None if batch.w_query is None else batch.w_query[part]))
    return out
