"""Who is who: the hospital behind each node, learned from each node's answer to a ``query``.

Node ids are not stable: a SuperNode that restarts may register under a new id (with SuperNode
authentication it keeps the id of its key). The server therefore asks only nodes it has never
seen, and a hospital's new node replaces its old one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

__all__ = ["Identity", "Shape", "identify", "Membership", "reply_node"]

log = logging.getLogger("fedmeta.server")


@dataclass(frozen=True)
class Shape:
    """What a hospital's model must take and give: every hospital of a federation agrees on it."""

    input_shape: tuple[int, ...]
    n_outputs: int
    task: str
    features: tuple[str, ...] = ()  # a table's column names, in order (none for images)

    def __str__(self) -> str:
        columns = f" (columns {', '.join(self.features)})" if self.features else ""
        return f"inputs of shape {self.input_shape}{columns}, {self.n_outputs} output(s), a {self.task} task"

    def schema(self) -> dict[str, object]:
        """What a new hospital's data must look like to use the run's model (``fedmeta onboard``)."""
        return {"task": self.task, "input_shape": list(self.input_shape), "n_outputs": self.n_outputs,
                "features": list(self.features)}


@dataclass(frozen=True)
class Identity:
    hospital: str
    role: str  # "train" / "held-out"
    shape: Shape
    device: str


def _shape(ident: object, sizes: object) -> Shape:
    dims = tuple(int(d) for d in sizes["input-shape"])  # type: ignore[index]
    outputs = int(sizes["n-outputs"])  # type: ignore[index]
    if not dims or min(dims) < 1 or outputs < 1:
        raise ValueError(f"input-shape {dims} / n-outputs {outputs} are not positive")
    features = tuple(str(f) for f in ident.get("features", []))  # type: ignore[attr-defined]
    return Shape(dims, outputs, str(ident["task"]), features)  # type: ignore[index]


def reply_node(reply: Message, sent: list[Message]) -> int:
    """The node a reply answers for. An error reply made by the SuperLink itself (e.g. "Node
    Unavailable" for a node that stopped sending heartbeats) comes from the SuperLink's own node id;
    its ``reply_to_message_id`` names the message we sent, hence the node."""
    node = reply.metadata.src_node_id
    dst = {m.metadata.dst_node_id for m in sent}
    if node in dst:
        return node
    for m in sent:  # the grid set each message's id when it pushed it
        if m.metadata.message_id and m.metadata.message_id == reply.metadata.reply_to_message_id:
            return m.metadata.dst_node_id
    return node


def identify(grid: Grid, nodes: list[int], timeout: float) -> tuple[dict[int, Identity], dict[int, str]]:
    """Ask ``nodes`` who they are: ``(identities, node -> why it gave none)``."""
    messages = [Message(RecordDict({"config": ConfigRecord({"ask": "identity"})}), dst_node_id=n,
                        message_type=MessageType.QUERY) for n in nodes]
    found: dict[int, Identity] = {}
    failed: dict[int, str] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply_node(reply, messages)
        if reply.has_error():
            lines = [line for line in reply.error.reason.splitlines() if line.strip()]
            failed[node] = f"error reply (code {reply.error.code}): {lines[-1].strip() if lines else ''}"
            continue
        try:
            ident, sizes = reply.content["identity"], reply.content["sizes"]
            found[node] = Identity(str(ident["hospital"]), str(ident["role"]), _shape(ident, sizes),
                                   str(ident["device"]))
        except (KeyError, TypeError, ValueError) as err:
            failed[node] = f"malformed identity: {err}"
    for node in nodes:
        if node not in found and node not in failed:
            failed[node] = f"no reply within {timeout:.0f}s"
    return found, failed


class Membership:
    """The current node of each hospital of the federation, kept up to date between rounds."""

    def __init__(self, node_of: dict[str, int], roles: dict[str, str], shape: Shape | None = None):
        self.node_of = dict(node_of)
        self.roles = dict(roles)
        self.shape = shape
        self._seen: set[int] = set(node_of.values())  # identified, refused or failed: never asked again
        self.connected: set[str] = set(node_of)

    def hospital(self, node: int) -> str:
        for h, n in self.node_of.items():
            if n == node:
                return h
        return f"node-{node}"

    def refresh(self, grid: Grid, timeout: float) -> list[str]:
        """Learn new nodes; return the hospitals that came back on a new node."""
        live = set(grid.get_node_ids())
        new = sorted(live - self._seen)
        rejoined: list[str] = []
        if new:
            found, failed = identify(grid, new, timeout)
            self._seen.update(new)
            for node, why in failed.items():
                log.warning("node %d did not identify itself (%s); it is ignored", node, why)
            for node, ident in sorted(found.items()):
                problem = self._mismatch(ident)
                if problem:
                    log.warning("node %d claims to be %s but %s; it is ignored", node, ident.hospital, problem)
                    continue
                if self.node_of.get(ident.hospital) != node:
                    log.warning("hospital %s is back on node %d (was node %s)", ident.hospital, node,
                                self.node_of.get(ident.hospital))
                    self.node_of[ident.hospital] = node
                    rejoined.append(ident.hospital)
        connected = {h for h, n in self.node_of.items() if n in live}
        # With SuperNode authentication a restarted node keeps its id (it is bound to the node's
        # key): it rejoins when its id is listed again after it was not.
        rejoined += sorted(connected - self.connected)
        self.connected = connected
        return sorted(set(rejoined))

    def _mismatch(self, ident: Identity) -> str:
        if ident.hospital not in self.roles:
            return "it is not part of this federation"
        if ident.role != self.roles[ident.hospital]:
            return f"its role is {ident.role}, not {self.roles[ident.hospital]}"
        if self.shape is not None and ident.shape != self.shape:
            return f"its data has {ident.shape}, not {self.shape}"
        return ""
