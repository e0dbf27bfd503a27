"""``fedmeta deploy certs`` and the user errors of ``deploy register`` / ``deploy-local``: one line
naming what is wrong, exit code 2, no traceback, nothing left behind."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedmeta.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = str(ROOT / "configs" / "deploy.toml")


def test_certs_layout_permissions_and_sans(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["deploy", "certs", str(out), "--hospitals", "hospital-a", "hospital-b",
                 "--san", "coordinator.example.org", "--san", "10.0.0.5"]) == 0
    printed = capsys.readouterr().out
    assert "give this folder to hospital-a only" in printed
    for private in ["ca/ca.key", "superlink/server.key", "superlink/superexec.secret",
                    "hospital-a/node.key", "hospital-b/node.key"]:
        assert stat.S_IMODE((out / private).stat().st_mode) == 0o600, private
    cert = x509.load_pem_x509_certificate((out / "superlink" / "server.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "superlink", "coordinator.example.org"}
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    ca = x509.load_pem_x509_certificate((out / "ca" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    key = load_ssh_private_key((out / "hospital-a" / "node.key").read_bytes(), password=None)
    pub = load_ssh_public_key((out / "public-keys" / "hospital-a.pub").read_bytes())
    assert key.public_key().public_numbers() == pub.public_numbers()  # type: ignore[union-attr]
    assert key.curve.name == "secp384r1"  # type: ignore[union-attr]
    # A hospital's folder holds what that site needs, and no other hospital's key.
    assert sorted(p.name for p in (out / "hospital-a").iterdir()) == ["ca.crt", "node.key", "node.pub"]


def test_certs_refuse_to_overwrite_unless_forced(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["deploy", "certs", str(out), "--hospitals", "hospital-a"]) == 0
    before = (out / "hospital-a" / "node.key").read_bytes()
    capsys.readouterr()
    assert main(["deploy", "certs", str(out), "--hospitals", "hospital-a"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmeta: error: ") and "already exists" in err and "--force" in err
    assert len(err.splitlines()) == 1 and (out / "hospital-a" / "node.key").read_bytes() == before
    assert main(["deploy", "certs", str(out), "--hospitals", "hospital-a", "--force"]) == 0
    assert (out / "hospital-a" / "node.key").read_bytes() != before


@pytest.mark.parametrize("args, message", [
    (["deploy", "certs", "{tmp}/c", "--hospitals", "ca"], "--hospitals: 'ca' is not a usable hospital name"),
    (["deploy", "certs", "{tmp}/c", "--hospitals", "a/b"], "--hospitals: 'a/b' is not a usable hospital name"),
    (["deploy", "certs", "{tmp}/c", "--hospitals", "x", "x"], "--hospitals: duplicate names"),
    (["deploy", "register", "{tmp}/missing.pub", "--root-certificates", "{tmp}/ca.crt"],
     "--root-certificates: {tmp}/ca.crt: file not found"),
    (["deploy-local", DEPLOY, "--hospitals", "a", "b", "c", "d", "--out", "{tmp}/run"],
     "--hospitals: 4 names, but the config generates 3 synthetic hospitals (data.synthetic.hospitals)"),
    (["deploy-local", DEPLOY, "--set", "data.held_out=['hospital-01']", "--hospitals", "a", "b", "c",
      "--out", "{tmp}/run"], "data.held_out: hospital-01 is not one of the nodes (a, b, c)"),
    (["deploy-local", DEPLOY, "--project", "{tmp}", "--out", "{tmp}/run"],
     "--project: {tmp}: no pyproject.toml"),
    (["deploy-local", DEPLOY, "--resume", "{tmp}/run"], "--resume {tmp}/run: no out/checkpoint.pt there; "
     "nothing to resume"),
    (["deploy-local", DEPLOY, "--resume", "{tmp}/run", "--out", "{tmp}/run"],
     "deploy-local: give --out for a new run or --resume RUN_DIR, not both"),
])
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("fedmeta: error: " + message.replace("{tmp}", str(tmp_path))), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()


def test_deploy_local_refuses_an_existing_run_directory(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["deploy-local", DEPLOY, "--out", str(tmp_path / "run")]) == 2
    assert "run directory already exists" in capsys.readouterr().err
