"""Register hospitals' public keys with a running SuperLink (``flwr supernode register``).

The ``flwr`` connection is written to a temporary ``FLWR_HOME``: the operator's own ``flwr``
configuration is neither read nor changed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fedmeta.deploy.control import Control, write_connection
from fedmeta.deploy.flower_launch import flower_bin, flower_env
from fedmeta.errors import FedMetaError

__all__ = ["register_keys"]


def register_keys(public_keys: list[str], *, superlink: str, root_certificates: Path) -> list[tuple[str, int]]:
    """Register each key file; returns ``(file, node id)`` pairs."""
    if not root_certificates.is_file():
        raise FedMetaError(f"--root-certificates: {root_certificates}: file not found")
    for key in public_keys:
        if not Path(key).is_file():
            raise FedMetaError(f"{key}: public key file not found")
    with tempfile.TemporaryDirectory(prefix="fedmeta-register-") as tmp:
        env = flower_env(Path(tmp))
        write_connection(Path(env["FLWR_HOME"]), "coordinator", superlink, root_certificates.resolve())
        control = Control(flower_bin("flwr"), "coordinator", env)
        return [(key, control.register(Path(key).resolve())) for key in public_keys]
