"""docker-compose.yml: valid for a real compose implementation, and the topology it promises.

There is no Docker engine here: Debian's ``docker-compose`` 1.29 validates the file offline
(``config -q``) and rejects Compose-v2-only keys. The structure test checks what each container
sees (one hospital's data, read-only; its own key), that TLS and SuperNode authentication are on,
and that every flag is one the installed Flower accepts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
import yaml

from fedmeta.deploy.certs import create_credentials

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
HOSPITALS = ["hospital-a", "hospital-b", "hospital-c"]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _supernodes(compose: dict) -> dict[str, dict]:
    return {k: v for k, v in compose["services"].items() if k.startswith("supernode-")}


def _flags(service: dict) -> dict[str, str]:
    return dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in service["command"])


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, GPU]], ids=["cpu", "with-gpu-override"])
def test_docker_compose_config_validates(files):
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed, and CI is set: install it (apt-get install docker-compose)")
        pytest.skip("docker-compose not installed (apt-get install docker-compose); CI unset")
    args = [a for f in files for a in ("-f", str(f))]
    proc = subprocess.run([exe, *args, "config", "-q"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_one_supernode_per_hospital_each_sees_only_its_own_data(compose):
    nodes = _supernodes(compose)
    assert sorted(nodes) == [f"supernode-{h}" for h in HOSPITALS]
    seen_sources, seen_volumes = set(), set()
    for hospital in HOSPITALS:
        node = nodes[f"supernode-{hospital}"]
        node_config = _flags(node)["--node-config"]
        assert f'hospital="{hospital}"' in node_config and 'data-dir="/data"' in node_config
        assert 'ledger="/state/' in node_config and "max-epsilon=" in node_config
        assert 'privacy-mode="record"' in node_config  # the hospital's own policy, not the coordinator's
        binds = [v for v in node["volumes"] if v.split(":")[-2 if v.endswith((":ro", ":rw")) else -1].startswith("/")]
        data = [v for v in binds if ":/data" in v]
        assert len(data) == 1 and data[0].endswith(":/data:ro"), node["volumes"]
        source = data[0].rsplit(":/data", 1)[0]
        assert hospital in source and not any(h in source for h in HOSPITALS if h != hospital)
        state = [v for v in node["volumes"] if v.endswith(":/state")]
        assert state == [f"{hospital}-state:/state"] and f"{hospital}-state" in compose["volumes"]
        assert len(node["volumes"]) == 2  # its data (read-only) and its own state volume, nothing else
        seen_sources.add(source)
        seen_volumes.add(state[0])
    assert len(seen_sources) == len(seen_volumes) == len(HOSPITALS)


def test_tls_and_supernode_auth_on_no_plain_text_anywhere(compose):
    assert "--insecure" not in COMPOSE.read_text() and "--insecure" not in GPU.read_text()
    link = _flags(compose["services"]["superlink"])
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"):
        assert flag in link, flag
    assert link["--isolation"] == "process"
    server = _flags(compose["services"]["serverapp"])
    assert server["--root-certificates"] == "/run/secrets/ca-cert"
    assert server["--superexec-auth-secret-file"] == link["--superexec-auth-secret-file"]


def test_each_supernode_has_the_root_cert_and_its_own_private_key_only(compose, tmp_path):
    creds = create_credentials(tmp_path / "certs", HOSPITALS)
    secrets = compose["secrets"]
    for hospital in HOSPITALS:
        node = compose["services"][f"supernode-{hospital}"]
        flags = _flags(node)
        assert sorted(node["secrets"]) == sorted(["ca-cert", f"{hospital}-key"])
        assert flags["--root-certificates"] == "/run/secrets/ca-cert"
        assert flags["--auth-supernode-private-key"] == f"/run/secrets/{hospital}-key"
        assert (tmp_path / secrets[f"{hospital}-key"]["file"]).resolve() == creds.node_key(hospital)
    # Every secret file is one that `fedmeta deploy certs certs ...` writes.
    for name, spec in secrets.items():
        assert (tmp_path / spec["file"]).is_file(), f"secret {name}: {spec['file']} is not created by deploy certs"


def test_images_match_the_installed_flower_and_pin_cpu_torch(compose):
    version = dist_version("flwr")
    assert compose["services"]["superlink"]["image"] == f"flwr/superlink:{version}"
    assert f"FROM flwr/supernode:{version}\n" in (ROOT / "clients" / "Dockerfile").read_text()
    assert f"FROM flwr/superexec:{version}\n" in (ROOT / "server" / "Dockerfile").read_text()
    for dockerfile in ("clients/Dockerfile", "server/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert "ARG TORCH_SPEC=torch==2.13.0" in text and "whl/cpu" in text
    assert compose["services"]["serverapp"]["build"]["dockerfile"] == "server/Dockerfile"
    assert all(n["build"]["dockerfile"] == "clients/Dockerfile" for n in _supernodes(compose).values())


@pytest.mark.skipif(not (BIN / "flower-supernode").exists(), reason="Flower executables not installed in this env")
def test_every_flag_is_accepted_by_the_installed_flower(compose):
    executables = {"superlink": "flower-superlink", "serverapp": "flower-superexec"}
    executables.update({k: "flower-supernode" for k in _supernodes(compose)})
    helps: dict[str, str] = {}
    for service, exe in executables.items():
        if exe not in helps:
            helps[exe] = subprocess.run([str(BIN / exe), "--help"], capture_output=True, text=True,
                                        env={**os.environ, "COLUMNS": "200"}, timeout=60).stdout
        usage = helps[exe]
        for flag in _flags(compose["services"][service]):
            accepted = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage)
            assert accepted, f"{service}: {exe} does not accept {flag}"
