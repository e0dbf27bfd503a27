"""The simulation's message pump asks Flower's LinkState only for nodes with an undelivered message
(one look at the in-memory store), and keeps Flower's loop for any other state."""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace

from fedmeta.flower.message_pump import add_messages_to_queue, message_stored
from fedmeta.flower.server import simulation_pull_interval


class FakeState:
    """The in-memory LinkState's surface the pump reads: its store, its lock, ``get_message_ins``."""

    def __init__(self, pending: dict[int, int], store: bool = True):
        self.lock = threading.RLock()
        self.asked: list[int] = []
        if store:
            self.message_ins_store = {f"m{n}": SimpleNamespace(metadata=SimpleNamespace(dst_node_id=n, delivered_at=""))
                                      for n in pending}
        self.pending = dict(pending)

    def get_message_ins(self, node_id: int, limit: int | None) -> list[str]:
        self.asked.append(node_id)
        if self.pending.get(node_id):
            self.pending[node_id] -= 1
            if hasattr(self, "message_ins_store"):
                self.message_ins_store[f"m{node_id}"].metadata.delivered_at = "now"
            return [f"message for {node_id}"]
        return []


def _pump_once(state: FakeState) -> list[str]:
    queue: Queue = Queue()
    stop = threading.Event()
    expected = sum(state.pending.values())
    thread = threading.Thread(target=add_messages_to_queue, args=(state, queue, {n: n for n in range(100)}, stop))
    thread.start()
    while queue.qsize() < expected:
        stop.wait(0.001)
    stop.set()
    thread.join()
    return sorted(queue.queue)


def test_only_nodes_with_a_message_are_asked():
    state = FakeState({3: 1, 97: 1})
    assert _pump_once(state) == ["message for 3", "message for 97"]
    assert set(state.asked) == {3, 97}  # not the 98 others, as Flower's loop would


def test_a_state_without_the_in_memory_store_gets_flowers_loop():
    state = FakeState({3: 1}, store=False)
    assert _pump_once(state) == ["message for 3"]
    assert set(state.asked) == set(range(100))


class CountingState(FakeState):
    """Counts the pump's looks at the store."""

    def __init__(self) -> None:
        self.looks = 0
        super().__init__({})

    @property
    def message_ins_store(self) -> dict:
        self.looks += 1
        return self._store

    @message_ins_store.setter
    def message_ins_store(self, store: dict) -> None:
        self._store = store


def test_an_idle_pump_sleeps_until_a_message_is_stored():
    state, queue, stop = CountingState(), Queue(), threading.Event()
    thread = threading.Thread(target=add_messages_to_queue, args=(state, queue, {n: n for n in range(100)}, stop))
    thread.start()
    try:
        stop.wait(0.5)
        assert state.looks <= 7  # Flower's 0.1 s at the latest, not a look every few milliseconds
        with state.lock:
            state._store["m7"] = SimpleNamespace(metadata=SimpleNamespace(dst_node_id=7, delivered_at=""))
            state.pending[7] = 1
        message_stored.set()
        assert queue.get(timeout=5) == "message for 7"
    finally:
        stop.set()
        thread.join()


def test_a_large_federation_is_polled_less_often():
    assert simulation_pull_interval(5) == 0.005
    assert simulation_pull_interval(100) == 0.05
    assert simulation_pull_interval(1000) == 0.1  # Flower's own


def test_the_last_replies_of_a_round_are_looked_for_often():
    from types import SimpleNamespace

    from fedmeta.flower.server import _pull_as_often_as_awaited

    arrived: list[str] = []
    grid = SimpleNamespace(pull_interval=simulation_pull_interval(100),
                           pull_messages=lambda ids: [i for i in sorted(ids) if i in arrived])
    _pull_as_often_as_awaited(grid)
    awaited = {f"m{i:03d}" for i in range(100)}
    assert grid.pull_messages(awaited) == [] and grid.pull_interval == 0.05
    arrived += sorted(awaited)[:95]
    assert len(grid.pull_messages(awaited)) == 95 and grid.pull_interval == 0.005
