"""A stand-in for Flower's grid: each message runs the real hospital ClientApp in this process, so a
ServerApp can be driven without Ray or a SuperLink."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedmeta.flower.client import build_client_app

# Five simulated hospitals whose node policy allows non-private runs.
NODES = [{"partition-id": i, "num-partitions": 5, "privacy-mode": "none"} for i in range(5)]


class InProcessGrid:
    """Nodes ``first_id ..``, one per node config, all answered by the ClientApp of the run config."""

    def __init__(self, node_configs: list[dict], run_config: dict, first_id: int = 10):
        self.app = build_client_app()
        self.contexts = {first_id + i: Context(run_id=1, node_id=first_id + i, state=RecordDict(), node_config=c,
                                               run_config=run_config) for i, c in enumerate(node_configs)}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        return [self.app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def run_server_app(run_config: dict, first_id: int, nodes: list[dict] = NODES, **app_kwargs) -> None:
    """The ServerApp, as ``flwr run`` starts it, against ``nodes`` answered in this process."""
    from fedmeta.flower.server import build_server_app

    app = build_server_app(progress=False, expected_nodes=len(nodes), **app_kwargs)
    server = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    app(InProcessGrid(nodes, run_config, first_id), server)
