"""Several hospitals' messages per Ray task in the simulation engine.

Flower's simulation engine (1.41) hands every message to a hospital actor as a Ray task of its own
(``vce_api.worker`` -> ``RayBackend.process_message``). At 100 hospitals on two cores, a task's cost
(its submission and serialisation in the driver, then the actor's wait for its next task) made a
round 1.15-1.2x its bare computation. Here each of the engine's workers (one per actor) takes the
queued messages in chunks that shrink as the queue empties ("factoring": a chunk is a quarter of a
worker's share of what is queued, so a round ends on single messages and the actors finish together),
and sends a chunk to its actor as one task. The actor runs the chunk's messages one after another
through Flower's own ``run`` and returns their replies together.

What a hospital computes, its context and its error replies are as with Flower's worker: a message
whose ClientApp raises gets that message's error reply, with the same code and a reason ending in
the same line. What differs is bounded by the chunk: its replies reach the server together, when its
last hospital is done (never later than the actor's last one), so a simulated hospital that hangs
holds back its whole chunk and an actor that dies fails it. Up to four queued messages per worker are
sent one per task, as Flower sends them. Streaming each reply back as soon as it is made (a Ray
generator) was measured too: 1.07-1.14x the bare round at 100 hospitals, against 1.03-1.06x.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from collections.abc import Callable
from logging import ERROR
from queue import Empty, Queue
from typing import Any
from uuid import uuid4

import ray
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp.client_app import LoadClientAppError
from flwr.common.constant import ErrorCode
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.backend import raybackend
from flwr.simulation.ray_transport.ray_actor import VirtualClientEngineActor
from flwr.supercore import log

__all__ = ["CHUNK_FACTOR", "HospitalActor", "chunk_size", "install", "worker"]

CHUNK_FACTOR = 4


def chunk_size(queued: int, workers: int) -> int:
    """How many of the ``queued`` messages (the one already taken included) the next task carries."""
    return max(1, math.ceil(queued / (CHUNK_FACTOR * max(1, workers))))


class HospitalActor(VirtualClientEngineActor):
    """Flower's ``ClientAppActor``, with a method that runs a chunk of messages."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        super().__init__()
        if on_actor_init_fn:
            on_actor_init_fn()

    def run_chunk(self, client_app_fn: Callable[[], Any], jobs: list[tuple[Message, Context]]) -> list[tuple]:
        """``("reply", message, context)`` or ``("error", code, reason)`` per job, in order."""
        outcomes: list[tuple] = []
        for message, context in jobs:
            try:
                _, reply, context = self.run(client_app_fn, message, "", context)
            except Exception as err:  # noqa: BLE001 - reported as the message's error reply
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(err, LoadClientAppError) \
                    else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                outcomes.append(("error", code, f"{type(err)}:<'{traceback.format_exc().rstrip()}'>"))
                continue
            outcomes.append(("reply", reply, context))
        return outcomes


def _take_chunk(messages: Queue, workers: int) -> list[Any]:
    chunk = [messages.get(timeout=1.0)]
    size = chunk_size(messages.qsize() + 1, workers)
    while len(chunk) < size:
        try:
            chunk.append(messages.get_nowait())
        except Empty:
            break
    return chunk


def _error_reply(message: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=message)


def _send(replies: Queue, reply: Any) -> None:
    reply.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's worker does
    replies.put(reply)


def worker(messageins_queue: Queue, messageres_queue: Queue, node_info_store: dict[int, Any], backend: Any,
           f_stop: threading.Event, metrics: Any) -> None:
    """``vce_api.worker``'s contract (process queued messages, update each node's context, queue the
    replies) with a chunk of messages per actor task."""
    while not f_stop.is_set():
        try:
            chunk = _take_chunk(messageins_queue, backend.num_workers)
        except Empty:
            continue
        started, done, actor = time.perf_counter(), 0, None
        try:
            stores = [node_info_store[m.metadata.dst_node_id] for m in chunk]
            jobs = [(m, s.retrieve_context(run_id=m.metadata.run_id)) for m, s in zip(chunk, stores)]
            actor = backend.pool.pool.pop()
            for kind, *outcome in ray.get(actor.run_chunk.remote(backend.app_fn, jobs)):
                if kind == "reply":
                    reply, context = outcome
                    stores[done].update_context(chunk[done].metadata.run_id, context=context)
                else:
                    log(ERROR, outcome[1])
                    reply = _error_reply(chunk[done], *outcome)
                _send(messageres_queue, reply)
                done += 1
        except Exception as err:  # noqa: BLE001 - an actor that died, or Ray failing: each message left errs
            log(ERROR, traceback.format_exc())
            for message in chunk[done:]:
                _send(messageres_queue, _error_reply(message, ErrorCode.UNKNOWN, f"{type(err)}:<'{err}'>"))
        finally:
            if actor is not None:
                backend.pool.pool.append(actor)
            metrics.add_clientapp_runtime(time.perf_counter() - started)


def install() -> None:
    """Use this worker and actor in this process's simulations (``run_api`` and ``RayBackend.build``
    look both up at each start)."""
    if vce_api.worker is not worker:
        vce_api.worker = worker
        raybackend.ClientAppActor = ray.remote(HospitalActor)
