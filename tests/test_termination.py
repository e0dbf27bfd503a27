"""A terminated ``fedmeta compare`` stops while its Flower simulation runs: within seconds, with
its local Ray cluster stopped and its output directory released for ``--resume``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedmeta.output_dir import CLAIM

ROOT = Path(__file__).resolve().parents[1]
CI = str(ROOT / "configs" / "ci.toml")


def _cluster_processes(port: int) -> list[str]:
    """Live processes of the Ray cluster whose GCS listens on ``port``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        ours = any(a == f"--gcs_server_port={port}" or (a.startswith(("--gcs-address=", "--gcs_address=", "--address="))
                                                        and a.endswith(f":{port}")) for a in args)
        if ours and state != "Z":
            found.append(f"{proc.name} {args[0]}")
    return found


def test_a_terminated_compare_stops_its_simulation_and_its_ray_cluster(tmp_path):
    out = tmp_path / "cmp"
    proc = subprocess.Popen([sys.executable, "-m", "fedmeta.cli", "compare", CI, "--algorithms", "fedavg",
                             "--seeds", "0", "--set", "federation.rounds=100000", "--out", str(out)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while not re.search(r"fedavg rounds: .*\| [1-9]\d*/100000", "".join(err)) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(err)
            time.sleep(0.2)
        text = "".join(err)
        assert "/100000" in text, text
        port = int(re.search(r"on the Ray cluster at 127\.0\.0\.1:(\d+)", text).group(1))
        assert _cluster_processes(port)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        stopped_s = time.monotonic() - sent
    finally:
        proc.kill()
    reader.join(timeout=5)
    assert "fedmeta: terminated" in "".join(err).splitlines()[-1]
    assert stopped_s < 30
    assert not _cluster_processes(port), "the Ray cluster outlived the terminated compare"
    assert not (out / CLAIM).exists()  # released: `compare --resume` may continue it
