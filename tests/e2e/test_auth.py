"""AUTH passes through; credentials are redacted in the database by default."""

import base64
import smtplib
import subprocess

import pytest

from conftest import db_bytes, export_eml, only_session, show_json, show_raw

USER = "mailuser@example.com"
PASSWORD = "s3cret-Pa55"


PLAIN_IR = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())  # AUTH PLAIN <this>
LOGIN_USER = base64.b64encode(USER.encode())  # the answer to "334 VXNlcm5hbWU6"
LOGIN_PASSWORD = base64.b64encode(PASSWORD.encode())  # the answer to "334 UGFzc3dvcmQ6"


def secrets():
    """What must not be stored: the password in clear, and each base64
    form smtplib and swaks put on the wire."""
    return [PASSWORD.encode(), PLAIN_IR, LOGIN_USER, LOGIN_PASSWORD]


def on_the_wire(mech):
    """The credentials as the client sends them for this mechanism."""
    return [PLAIN_IR] if mech == "PLAIN" else [LOGIN_USER, LOGIN_PASSWORD]


def commands_of(doc):
    return [e for e in doc["events"] if e["kind"] == "command"]


def _smtplib_auth(mech):
    # smtplib's auth_* callbacks read self.user/self.password
    def run(host, port):
        s = smtplib.SMTP(host, port, timeout=30)
        try:
            s.ehlo("auth.example")
            s.user, s.password = USER, PASSWORD
            if mech == "PLAIN":
                code, resp = s.auth("PLAIN", s.auth_plain, initial_response_ok=True)
            else:
                code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
            s.sendmail("alice@example.com", ["bob@example.org"], b"Subject: authed\r\n\r\nhello\r\n")
            s.quit()
        finally:
            s.close()
        return code, resp
    return run


@pytest.mark.parametrize("redact", ["on", "off"])
@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_relay_redaction(aiosmtpd_factory, smtptap, mech, redact):
    up = aiosmtpd_factory(auth=True)
    p = smtptap(upstream=up.addr, args=["--redact-auth", redact, "-v"])
    code, _ = _smtplib_auth(mech)(p.host, p.port)
    assert code == 235
    # the upstream got the real credentials
    assert up.auth_seen == [(mech, USER.encode(), PASSWORD.encode())]
    env = up.wait_envelopes(1)[0]
    assert env["content"] == b"Subject: authed\r\n\r\nhello\r\n"
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    raw = show_raw(p.db, sess["id"], "client")
    p.stop()
    data = db_bytes(p.db)
    verbose = p.stderr().encode()  # -v: the conversation on stderr
    assert b"AUTH " + mech.encode() in verbose, verbose[-2000:]
    if redact == "on":
        for sec in secrets():
            assert sec not in data, "secret %r found in the database files" % sec
            assert sec not in raw, "secret %r in show --raw" % sec
            assert sec.decode() not in str(doc), "secret %r in show --json" % sec
            assert sec not in verbose, "secret %r in the -v output" % sec
        assert b"[redacted]" in verbose, verbose[-2000:]
        flagged = [e for e in doc["events"] if "redacted" in (e.get("flags") or [])]
        assert flagged, "no event is marked redacted"
        # the mechanism is still visible
        assert any(e["kind"] == "command" and ("AUTH " + mech) in (e["text"] or "").upper()
                   for e in doc["events"]), [e["text"] for e in doc["events"]]
    else:
        # the checks above can see the credentials: off keeps them all
        for sec in on_the_wire(mech):
            assert sec in data, "%r not in the database with --redact-auth off" % sec
            assert sec in raw, "%r not in show --raw with --redact-auth off" % sec
            assert sec in verbose, "%r not in the -v output with --redact-auth off" % sec
        assert not [e for e in doc["events"] if "redacted" in (e.get("flags") or [])]


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_swaks_sink(smtptap, tmp_path, mech, tools_required):
    tools_required("swaks")
    p = smtptap(sink=True, args=["-v"])
    r = subprocess.run(["swaks", "--server", "%s:%d" % (p.host, p.port), "--from", "alice@example.com",
                        "--to", "bob@example.org", "--auth", mech, "--auth-user", USER, "--auth-password",
                        PASSWORD, "--body", "authenticated body", "--timeout", "30"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode == 0, out
    assert "235 " in out, out
    # swaks prints its side of the dialogue: the forms looked for below are
    # the ones it sent
    for sec in on_the_wire(mech):
        assert sec.decode() in out, "swaks did not send %r:\n%s" % (sec, out)
    sess = only_session(p.db)
    assert sess["outcome"] == "quit"
    assert b"authenticated body" in export_eml(p.db, sess["id"])
    raw = show_raw(p.db, sess["id"], "client")
    p.stop()
    data = db_bytes(p.db)
    verbose = p.stderr().encode()
    assert b"[redacted]" in verbose, verbose[-2000:]
    for sec in secrets():
        assert sec not in data, "secret %r found in the database files" % sec
        assert sec not in raw, "secret %r in show --raw" % sec
        assert sec not in verbose, "secret %r in the -v output" % sec


def test_auth_rejected_by_upstream(aiosmtpd_factory, smtptap):
    up = aiosmtpd_factory(auth=True)
    p = smtptap(upstream=up.addr)
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        s.ehlo("auth.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as ei:
            s.login(USER, "wrong-password")
        assert ei.value.smtp_code == 535
        s.quit()
    finally:
        s.close()
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    assert any(e["kind"] == "reply" and (e["text"] or "").startswith("535") for e in doc["events"])
    p.stop()
    data = db_bytes(p.db)
    # smtplib's login() tries PLAIN, then LOGIN, each with an initial response
    assert [e["text"] for e in commands_of(doc) if e["text"].upper().startswith("AUTH ")] == \
        ["AUTH PLAIN [redacted]", "AUTH LOGIN [redacted]"], [e["text"] for e in commands_of(doc)]
    for sec in (b"wrong-password", base64.b64encode(b"\0" + USER.encode() + b"\0wrong-password"), LOGIN_USER,
                base64.b64encode(b"wrong-password")):
        assert sec not in data, "secret %r found in the database files" % sec
