"""`smtptap ca init|show`: the local CA on disk, its output, its errors."""

import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import BIN, run_cli


@pytest.fixture(autouse=True)
def _need_binary():
    if not os.access(BIN, os.X_OK):
        pytest.fail("smtptap binary not found or not executable: %s" % BIN)


def openssl_fingerprint(path):
    """The SHA-256 fingerprint as `openssl x509` prints it (AB:CD:...)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (tools/install-deps.sh installs it)")
    out = subprocess.run(["openssl", "x509", "-in", path, "-noout", "-fingerprint", "-sha256"],
                         check=True, stdout=subprocess.PIPE, timeout=30).stdout.decode()
    return out.strip().split("=", 1)[1]


def test_init_creates_then_finds(tmp_path):
    ca_dir = tmp_path / "state" / "ca"
    r = run_cli("ca", "init", "--ca-dir", ca_dir)
    cert = str(ca_dir / "ca.pem")
    assert "created" in r.text and cert in r.text
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(ca_dir / "ca.key").st_mode) == 0o600
    key_before = (ca_dir / "ca.key").read_bytes()
    fp = openssl_fingerprint(cert)
    assert fp in r.text

    r = run_cli("ca", "init", "--ca-dir", ca_dir)
    assert "already there" in r.text and cert in r.text
    assert (ca_dir / "ca.key").read_bytes() == key_before

    doc = run_cli("ca", "init", "--ca-dir", ca_dir, "--json").json()
    assert doc == {"ca_dir": str(ca_dir), "cert": cert, "fingerprint_sha256": fp, "created": False}

    # a CA certificate openssl accepts as one
    v = subprocess.run(["openssl", "verify", "-CAfile", cert, cert], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    assert v.returncode == 0, v.stdout
    text = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"], check=True,
                          stdout=subprocess.PIPE, timeout=30).stdout.decode()
    assert "CA:TRUE" in text and "Certificate Sign" in text
    assert "smtptap local CA (" in text


def test_show(tmp_path):
    ca_dir = tmp_path / "ca"
    run_cli("ca", "init", "--ca-dir", ca_dir)
    cert = str(ca_dir / "ca.pem")
    fp = openssl_fingerprint(cert)
    r = run_cli("ca", "show", "--ca-dir", ca_dir)
    assert cert in r.text and fp in r.text
    for hint in ("/usr/local/share/ca-certificates/smtptap.crt", "update-ca-certificates",
                 "SSL_CERT_FILE=" + cert, "cafile=\"%s\"" % cert, "NODE_EXTRA_CA_CERTS=" + cert,
                 "openssl.cafile=" + cert, "--cacert " + cert, "--tls-ca-path " + cert):
        assert hint in r.text, hint
    # options before the command word work too
    doc = run_cli("ca", "--ca-dir", ca_dir, "show", "--json").json()
    assert doc == {"ca_dir": str(ca_dir), "cert": cert, "fingerprint_sha256": fp}


def test_show_relative_dir_prints_absolute_paths(tmp_path):
    run_cli("ca", "init", "--ca-dir", tmp_path / "ca")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        doc = run_cli("ca", "show", "--ca-dir", "ca", "--json").json()
    finally:
        os.chdir(old)
    assert doc["cert"] == str(tmp_path / "ca" / "ca.pem")


def test_concurrent_init_makes_one_ca(tmp_path):
    """Several processes creating the same CA at once: one creates it, the
    others find it whole (never half-made)."""
    ca_dir = tmp_path / "ca"
    argv = [BIN, "ca", "init", "--ca-dir", str(ca_dir), "--json"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(6)]
    docs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
            docs.append(json.loads(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(d["created"] for d in docs) == 1
    assert len({d["fingerprint_sha256"] for d in docs}) == 1


def test_show_without_ca(tmp_path):
    r = run_cli("ca", "show", "--ca-dir", tmp_path / "none", expect=1)
    assert "smtptap ca init" in r.err
    assert not (tmp_path / "none").exists()


def test_half_made_ca_is_not_replaced(tmp_path):
    ca_dir = tmp_path / "ca"
    run_cli("ca", "init", "--ca-dir", ca_dir)
    key = (ca_dir / "ca.key").read_bytes()
    os.unlink(ca_dir / "ca.pem")
    r = run_cli("ca", "init", "--ca-dir", ca_dir, expect=1)
    assert str(ca_dir / "ca.pem") in r.err
    assert (ca_dir / "ca.key").read_bytes() == key
    assert not (ca_dir / "ca.pem").exists()
    r = run_cli("ca", "show", "--ca-dir", ca_dir, expect=1)
    assert str(ca_dir / "ca.pem") in r.err


def test_default_dir_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    doc = run_cli("ca", "init", "--json").json()
    assert doc["ca_dir"] == str(tmp_path / "xdg" / "smtptap" / "ca")
    assert doc["created"] is True
    assert run_cli("ca", "show", "--json").json()["fingerprint_sha256"] == doc["fingerprint_sha256"]
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    doc = run_cli("ca", "init", "--json").json()
    assert doc["ca_dir"] == str(tmp_path / "home" / ".local" / "share" / "smtptap" / "ca")


@pytest.mark.parametrize("cmd", [["ca"], ["ca", "init"], ["ca", "show"]])
def test_help(cmd):
    r = run_cli(*(cmd + ["--help"]))
    assert r.text.startswith("usage: smtptap " + " ".join(cmd))
    assert "--ca-dir" in r.text


@pytest.mark.parametrize("args", [["ca"], ["ca", "frobnicate"], ["ca", "init", "--no-such-flag"],
                                  ["ca", "show", "extra"], ["ca", "init", "--ca-dir"]])
def test_usage_errors(args):
    r = run_cli(*args, expect=2)
    assert "try" in r.err.lower()
    assert len(r.err.strip().splitlines()) <= 2
