"""The app under Flower's own runner: ``flwr run .`` on a local simulation federation.

It must finish with the run's outputs, rewrite no file of the project and install nothing. The
local SuperLink that ``flwr run`` leaves running is stopped by its own PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DP = "privacy.mode='record' privacy.noise_multiplier=2.0"


def _superlinks_of(marker: Path | str) -> list[int]:
    """Live SuperLinks whose command line holds ``marker`` (read from /proc: ``ps`` may cut long
    command lines when its output is not a terminal)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and "flower-superlink" in args and str(marker) in args:
            pids.append(int(proc.name))
    return pids


@pytest.mark.skipif(shutil.which("flwr", path=str(BIN)) is None, reason="flwr CLI not installed in this env")
def test_flwr_run_simulation(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    out = tmp_path / "out"
    others = _superlinks_of("--simulation")
    # `flwr run` reuses whatever local SuperLink answers on its fixed port, even another project's.
    assert not others, f"a local SuperLink is already running (pids {others}): this run would use it"
    before = {p: p.read_bytes() for p in (ROOT / "pyproject.toml", ROOT / "configs" / "ci.toml")}
    # Its ClientApps take their config from the run config, so their nodes' policy applies: with no
    # node config they require record-level DP and keep their ledgers under FEDMETA_HOME.
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "FEDMETA_HOME": str(tmp_path / "nodes"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1"}
    try:
        proc = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "--federation-config", "num-supernodes=5",
             "-c", f'config-file="configs/ci.toml" out-dir="{out}" overrides="{DP}"', "--stream"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        results = json.loads((out / "results.json").read_text())
        assert len(results["final"]) == 5
        assert [r["round"] for r in results["history"]["rounds"]] == [1, 2, 3]
        assert all(r["train"] for r in results["history"]["rounds"])
        assert sorted(p.name for p in (tmp_path / "nodes" / "ledgers").glob("*.sqlite")) == sorted(
            f"{h}.sqlite" for h in results["history"]["ledgers"])
    finally:
        started = _superlinks_of(flwr_home)
        for pid in started:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _superlinks_of(flwr_home) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in _superlinks_of(flwr_home):
            os.kill(pid, signal.SIGKILL)
    assert started, "no SuperLink of this run was found to stop"
    assert not _superlinks_of(flwr_home)
    for path, content in before.items():
        assert path.read_bytes() == content, f"flwr run rewrote {path}"
