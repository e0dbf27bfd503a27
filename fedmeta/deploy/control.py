"""The ``flwr`` CLI against one SuperLink: its connection in ``$FLWR_HOME/config.toml``, node
registration, the node list, and starting and watching a run.

Every call runs the installed ``flwr`` with ``--format json`` and an explicit environment whose
``FLWR_HOME`` holds the connection; nothing under the user's home is read or written.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmeta.errors import FedMetaError

__all__ = ["Control", "write_connection"]


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def write_connection(flwr_home: Path, name: str, address: str, root_certificates: Path | None) -> Path:
    """Write ``[superlink.NAME]`` (TLS with ``root_certificates``; plain text only when ``None``)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = [f"[superlink.{name}]", f"address = {_toml_str(address)}"]
    if root_certificates is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {_toml_str(str(root_certificates))}")
    path = flwr_home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class Control:
    """``flwr`` commands for the SuperLink connection ``name`` (defined in ``env['FLWR_HOME']``)."""

    flwr: str
    name: str
    env: Mapping[str, str]
    cwd: Path | None = None

    def call(self, *args: str, timeout_s: float = 60.0) -> dict[str, Any]:
        argv = [self.flwr, *args, "--format", "json"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=dict(self.env), cwd=self.cwd,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise FedMetaError(f"`flwr {args[0]}` did not answer within {timeout_s:.0f}s") from None
        try:
            reply = json.loads(proc.stdout)
        except json.JSONDecodeError:
            detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
            raise FedMetaError(f"`flwr {' '.join(args[:2])}` failed (exit {proc.returncode}): "
                               f"{detail[-1] if detail else 'no output'}") from None
        if proc.returncode != 0 or not reply.get("success", False):
            raise FedMetaError(f"`flwr {' '.join(args[:2])}` failed: {reply.get('error-message', reply)}")
        return reply

    def register(self, public_key: Path) -> int:
        """Register a SuperNode's public key; returns its node id."""
        return int(self.call("supernode", "register", str(public_key), self.name)["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.call("supernode", "list", self.name)["nodes"])

    def run(self, project: Path, run_config: Path) -> int:
        """Submit ``project`` with overrides from the TOML file ``run_config``; returns the run id."""
        return int(self.call("run", str(project), self.name, "--run-config", str(run_config),
                             timeout_s=180.0)["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        runs = self.call("list", self.name, "--run-id", str(run_id))["runs"]
        if not runs:
            raise FedMetaError(f"run {run_id}: not known to the SuperLink")
        return dict(runs[0])
