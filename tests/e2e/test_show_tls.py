"""`smtptap show`'s "client tls" and "upstream tls" header lines: readable
text built from the recorded TLS objects (never the stored JSON), while
`show --json` and `sessions --json` keep the objects themselves."""

import re
import smtplib
import sqlite3
import ssl
import subprocess

from conftest import RawClient, only_session, run_cli, sessions_list, show_json

LABEL_CLIENT = "client tls   "
LABEL_UPSTREAM = "upstream tls "


def unverified_context():
    """A client context that accepts smtptap's forged certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def header(text):
    """The header of a readable transcript: the lines before the first
    blank one."""
    return text.split("\n\n", 1)[0].split("\n")


def header_value(text, label):
    """The value of the one header line that starts with label (or None
    when there is none)."""
    lines = [l for l in header(text) if l.startswith(label)]
    assert len(lines) <= 1, "several %r lines: %r" % (label, lines)
    return lines[0][len(label):] if lines else None


def check_readable(line, obj, what):
    """The line presents the recorded object as text: no JSON syntax, and
    each field the object has is there in its readable form."""
    assert line is not None, "no %s line" % what
    assert "{" not in line and '"' not in line and "null" not in line, "%s line is JSON: %r" % (what, line)
    assert line.startswith("%s %s (%s)" % (obj["version"], obj["cipher"], obj["mode"])), (line, obj)
    assert "sha256 %s" % obj["cert_sha256"] in line, (line, obj)
    assert re.search(r", handshake \d+\.\d ms$", line), line
    if obj.get("sni"):
        assert ", sni %s," % obj["sni"] in line, (line, obj)
    else:
        assert ", no sni," in line, (line, obj)


def starttls_session(p, sni=None):
    """EHLO, STARTTLS, EHLO again over TLS and QUIT, with `sni` as the
    server name sent (None: none, as for an address).  Returns the TLS
    version and cipher the client saw."""
    c = RawClient(p.host, p.port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO tls.example")[0] == 250
        assert c.cmd("STARTTLS")[0] == 220
        assert c.buf == b""
        c.sock = unverified_context().wrap_socket(c.sock, server_hostname=sni)
        assert c.cmd("EHLO tls.example")[0] == 250
        seen = (c.sock.version(), c.sock.cipher()[0])
        assert c.cmd("QUIT")[0] == 221
        return seen
    finally:
        c.close()


def test_show_client_tls_line_readable(smtptap):
    """smtplib upgrades with STARTTLS in sink mode (no SNI, the host is an
    address): the header says which protocol, that the certificate was
    forged by smtptap and by which CA, and --json keeps the object."""
    p = smtptap(sink=True, args=["--client-tls", "starttls"])
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        s.ehlo("tls.example")
        s.starttls(context=unverified_context())
        version, cipher = s.sock.version(), s.sock.cipher()[0]
        s.ehlo("tls.example")
        s.quit()
    finally:
        s.close()
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    ct = doc["session"]["client_tls"]
    assert isinstance(ct, dict), "show --json: client_tls is not an object: %r" % (ct,)
    assert doc["session"]["upstream_tls"] is None
    assert (ct["version"], ct["cipher"], ct["mode"], ct["forged"]) == (version, cipher, "starttls", True), ct
    assert ct["sni"] is None, ct
    assert isinstance(sessions_list(p.db)[0]["client_tls"], dict)

    text = run_cli("show", sess["id"], "--db", p.db).text
    line = header_value(text, LABEL_CLIENT)
    check_readable(line, ct, "client tls")
    assert line.startswith("%s %s (starttls), no sni, " % (version, cipher)), line
    assert "certificate %s forged by smtptap (%s)" % (ct["cert_subject"], ct["cert_issuer"]) in line, (line, ct)
    assert "verified" not in line, line  # not applicable to the client leg
    assert header_value(text, LABEL_UPSTREAM) is None, text


def test_show_client_tls_line_sni(smtptap):
    """A client that sends SNI: the name is on the line, and the forged
    certificate is the one the client got."""
    p = smtptap(sink=True, args=["--client-tls", "starttls"])
    version, cipher = starttls_session(p, sni="mx.example.test")
    sess = only_session(p.db)
    ct = show_json(p.db, sess["id"])["session"]["client_tls"]
    assert (ct["version"], ct["cipher"], ct["sni"], ct["forged"]) == (version, cipher, "mx.example.test", True), ct
    line = header_value(run_cli("show", sess["id"], "--db", p.db).text, LABEL_CLIENT)
    check_readable(line, ct, "client tls")
    assert ", sni mx.example.test, certificate %s forged by smtptap" % ct["cert_subject"] in line, (line, ct)


def test_show_upstream_tls_line(aiosmtpd_factory, smtptap, tmp_path, tools_required):
    """The upstream leg (STARTTLS to aiosmtpd with a self-signed
    certificate): trusted through --upstream-ca it reads "verified";
    with --upstream-verify off it reads "NOT verified" and why."""
    tools_required("openssl")
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    up = aiosmtpd_factory(tls_context=ctx)

    cases = [
        (["--upstream-ca", cert, "--upstream-sni", "localhost"], True),
        (["--upstream-verify", "off"], False),
    ]
    for args, trusted in cases:
        p = smtptap(upstream=up.addr, args=["--client-tls", "off", "--upstream-tls", "starttls"] + args)
        s = smtplib.SMTP(p.host, p.port, timeout=30)
        try:
            s.ehlo("plain.example")
            s.sendmail("a@example.com", ["b@example.org"], b"Subject: over tls\r\n\r\nbody\r\n")
            s.quit()
        finally:
            s.close()
        sess = only_session(p.db)
        doc = show_json(p.db, sess["id"])
        ut = doc["session"]["upstream_tls"]
        assert isinstance(ut, dict), "show --json: upstream_tls is not an object: %r (%s)" % (ut, args)
        assert doc["session"]["client_tls"] is None
        assert ut["mode"] == "starttls" and ut["verified"] is trusted, (ut, args)

        text = run_cli("show", sess["id"], "--db", p.db).text
        line = header_value(text, LABEL_UPSTREAM)
        check_readable(line, ut, "upstream tls")
        assert "certificate %s issued by %s, " % (ut["cert_subject"], ut["cert_issuer"]) in line, (line, ut)
        assert "CN=localhost" in line, line
        if trusted:
            assert ", verified, " in line and "NOT verified" not in line, line
        else:
            assert ut["verify_error"], ut
            assert ", NOT verified: %s, " % ut["verify_error"] in line, (line, ut)
        assert header_value(text, LABEL_CLIENT) is None, text
        # `sessions` sums both legs up in its TLS column ("!": not verified)
        table = run_cli("sessions", "--db", p.db).text.splitlines()
        assert table[0].split()[5] == "TLS", table
        assert table[1].split()[6] == ("-/starttls" if trusted else "-/starttls!"), table  # START is 2 words


def test_sessions_tls_column_sink(smtptap):
    """In sink mode the TLS column names the client leg alone; a plaintext
    session reads "-"."""
    p = smtptap(sink=True, args=["--client-tls", "starttls"])
    starttls_session(p)
    c = RawClient(p.host, p.port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    rows = [l.split() for l in run_cli("sessions", "--db", p.db).text.splitlines()]
    for _ in range(100):
        if len(rows) == 3:
            break
        rows = [l.split() for l in run_cli("sessions", "--db", p.db).text.splitlines()]
    assert rows[0][5] == "TLS" and [r[6] for r in rows[1:]] == ["starttls", "-"], rows  # START is 2 words


def test_show_tls_hand_edited(smtptap):
    """A database edited by hand or written by another version: a record
    that is not JSON is printed escaped as it is stored, one with unknown,
    nested or mistyped fields shows what it can, and neither breaks the
    text or the --json document."""
    p = smtptap(sink=True, args=["--client-tls", "starttls"])
    starttls_session(p)
    sid = only_session(p.db)["id"]
    p.stop()

    cases = [
        ("\x1b[2Jnot json", "\\x1b[2Jnot json", "\x1b[2Jnot json"),
        ('{"version":"TLSv1.9","future":{"x":[1,"}"]},"handshake_us":"soon","mode":7,"verified":false}',
         "TLSv1.9, NOT verified", None),
        ('{"unknown":true}', '{"unknown":true}', None),
    ]
    for stored, shown, as_string in cases:
        db = sqlite3.connect(p.db)
        try:
            db.execute("UPDATE sessions SET client_tls = ? WHERE id = ?", (stored, sid))
            db.commit()
        finally:
            db.close()
        text = run_cli("show", sid, "--db", p.db).text
        assert header_value(text, LABEL_CLIENT) == shown, (stored, text)
        ct = show_json(p.db, sid)["session"]["client_tls"]
        if as_string is not None:
            assert ct == as_string, (stored, ct)
        else:
            assert isinstance(ct, dict), (stored, ct)
