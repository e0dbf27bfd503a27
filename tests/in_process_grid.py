"""A stand-in for Flower's grid: each message runs the real hospital ClientApp in this process, so a
ServerApp can be driven without Ray or a SuperLink."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from fedmeta.flower.client import build_client_app


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
