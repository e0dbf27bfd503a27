"""The simulation engine's message pump, without its cost at scale.

Flower's simulation engine (1.41) hands messages to the hospitals' actors from a thread that, every
0.1 s, asks the LinkState for each node's next message (``vce_api.add_messages_to_queue``). Each ask
walks every stored message, so one look costs (hospitals) x (messages in flight) checks: at 100
hospitals about half a core of this 2-core machine, taken from the hospitals' actors, and a 0.1 s
wait before a round's work starts. This pump first reads which nodes have an undelivered message
(one pass over the in-memory store) and asks Flower for those nodes only; delivery itself stays
Flower's (``get_message_ins``, one message per node per look, as Flower does). It looks again at
once while a look delivers something, and otherwise sleeps until the in-memory LinkState stores a
message (0.1 s, Flower's interval, at the latest), so a round's messages are on their way as soon as
the server sends them and an idle pump costs nothing. A LinkState without the in-memory store keeps
Flower's loop.

The engine's other threads (the workers that hand messages to the actors, the one that stores
their replies) wait on their queues for up to 1 s before they look at the stop flag again, so every
simulation ends a second after its last reply: most of a tuning trial on UCI Heart, where a whole
run takes a third of a second. Their queues here wait at most ``QUEUE_WAIT_S`` per look.
"""

from __future__ import annotations

import threading
from queue import Queue
from typing import Any

__all__ = ["install", "add_messages_to_queue", "message_stored", "PromptQueue", "QUEUE_WAIT_S"]

QUEUE_WAIT_S = 0.02
FLOWER_INTERVAL_S = 0.1  # Flower's own
message_stored = threading.Event()  # set by the in-memory LinkState each time it stores a message


def _pending_nodes(state: Any) -> set[int] | None:
    """Nodes with an undelivered message, or None if ``state`` is not the in-memory LinkState."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        return {m.metadata.dst_node_id for m in list(store.values()) if m.metadata.delivered_at == ""}


def add_messages_to_queue(state: Any, queue: Queue, nodes_mapping: dict[int, int], f_stop: threading.Event) -> None:
    """``vce_api.add_messages_to_queue``'s contract: put each node's next message in ``queue`` until stopped."""
    while not f_stop.is_set():
        pending = _pending_nodes(state)
        nodes = list(nodes_mapping) if pending is None else [n for n in nodes_mapping if n in pending]
        delivered = 0
        for node_id in nodes:
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
                delivered += 1
        if pending is None:
            f_stop.wait(FLOWER_INTERVAL_S)
        elif not delivered:
            message_stored.wait(FLOWER_INTERVAL_S)
            message_stored.clear()  # before the next look, which sees every message stored until now


class PromptQueue(Queue):
    """A queue whose waits are short, so that a thread polling it sees the stop flag promptly."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return super().get(block, None if timeout is None else min(timeout, QUEUE_WAIT_S)) if block \
            else super().get(False)


def _announcing(store_message_ins: Any) -> Any:
    def store_and_announce(self: Any, message: Any) -> Any:
        message_id = store_message_ins(self, message)
        message_stored.set()
        return message_id

    store_and_announce.announces = True  # type: ignore[attr-defined]
    return store_and_announce


def install() -> None:
    """Use this pump and these queues in this process's simulations (``run_api`` looks both up at
    each start), woken by the in-memory LinkState."""
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    vce_api.add_messages_to_queue = add_messages_to_queue
    vce_api.Queue = PromptQueue
    if not getattr(InMemoryLinkState.store_message_ins, "announces", False):
        InMemoryLinkState.store_message_ins = _announcing(InMemoryLinkState.store_message_ins)  # type: ignore[method-assign]
