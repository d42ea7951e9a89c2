"""`smtptap mock ID --listen ADDR:PORT`: the recorded server's side played to
a client.  A client repeating the recorded conversation gets the recorded
codes and texts; one that diverges gets 503 5.5.1 naming what was expected,
and the mismatch is recorded; every mock connection is recorded as a
session, a mock of ID."""

import os
import signal
import smtplib
import subprocess
import time

import pytest

from conftest import (BIN, LISTEN_RE, START_TIMEOUT, STOP_TIMEOUT, SANITIZER, only_session, reply_events_seen_by_client,
                      run_cli, sample_message, sanitizer_findings, sessions_list, show_json, stuff_data, wait_until)
from tlspeers import client_context, pki, smtptap_ca, tls_upstream  # noqa: F401 (fixtures)

FROM = "alice@example.com"
TO = "bob@example.org"


class Mock:
    """One running `smtptap mock`."""

    def __init__(self, tmpdir, sid, db, args=()):
        self.errpath = os.path.join(str(tmpdir), "mock-%s.stderr" % sid)
        self._err = open(self.errpath, "wb")
        self.argv = [BIN, "mock", str(sid), "--db", db, "--listen", "127.0.0.1:0"] + [str(a) for a in args]
        env = dict(os.environ, XDG_DATA_HOME=os.path.join(str(tmpdir), "xdg"))
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._err,
                                     env=env)
        deadline = time.monotonic() + START_TIMEOUT * (3 if SANITIZER else 1)
        while True:
            m = LISTEN_RE.search(self.stderr())
            if m:
                self.host, self.port = m.group(1).strip("[]"), int(m.group(2))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(expect=None)
                raise AssertionError("smtptap mock did not start: %s\n%s" % (" ".join(self.argv), self.stderr()))
            time.sleep(0.02)

    def stderr(self):
        with open(self.errpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, expect=0):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
                raise AssertionError("smtptap mock did not stop on SIGTERM")
        self._err.close()
        bad = sanitizer_findings(self.stderr())
        assert not bad, "sanitizer report from smtptap mock:\n%s" % self.stderr()[-6000:]
        if expect is not None:
            assert self.proc.returncode == expect, (self.proc.returncode, self.stderr()[-2000:])


@pytest.fixture
def mock(tmp_path):
    started = []

    def start(sid, db, args=()):
        m = Mock(tmp_path, sid, db, args)
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


def conversation(host, port, msg, ctx=None):
    """The recorded client's conversation, with every reply (code, text)."""
    seen = []
    s = smtplib.SMTP(timeout=30)
    try:
        seen.append(s.connect(host, port))
        seen.append(s.ehlo("mocked.example"))
        if ctx is not None:
            s._host = host  # the name starttls() checks (connect() does not set it)
            seen.append(s.starttls(context=ctx))
            seen.append(s.ehlo("mocked.example"))
        seen.append(s.mail(FROM))
        seen.append(s.rcpt(TO))
        s.putcmd("data")
        seen.append(s.getreply())
        s.send(stuff_data(msg))
        seen.append(s.getreply())
        seen.append(s.quit())
    finally:
        s.close()
    return seen


def recorded_replies(doc):
    """(code, text) of each reply the recorded client was told."""
    out = []
    for e in reply_events_seen_by_client(doc):
        lines = [l for l in (e.get("text") or e.get("raw") or "").split("\r\n") if l]
        out.append((int(lines[0][:3]), "\n".join(l[4:] for l in lines).encode()))
    return out


def record(smtptap, aio, msg):
    p = smtptap(upstream=aio.addr)
    conversation(p.host, p.port, msg)
    aio.wait_envelopes(1)
    sess = only_session(p.db)
    p.stop()
    return p.db, sess


def test_mock_replays_the_recorded_server(smtptap, aio, mock):
    msg = sample_message("mocked")
    db, sess = record(smtptap, aio, msg)
    want = recorded_replies(show_json(db, sess["id"]))
    aio.stop()  # the real server is gone: the mock answers

    m = mock(sess["id"], db)
    seen = conversation(m.host, m.port, msg)
    assert [c for c, _ in seen] == [c for c, _ in want], (seen, want)
    assert seen == want  # the texts too: the queue id aiosmtpd gave
    # twice: each connection starts the recording again
    assert conversation(m.host, m.port, msg) == want
    m.stop()

    mocks = [s for s in sessions_list(db) if s.get("replay_of") == sess["id"]]
    assert [s["mode"] for s in mocks] == ["mock", "mock"], mocks
    doc = show_json(db, mocks[0]["id"])
    assert doc["session"]["replay_of"] == sess["id"]
    assert [x["id"] for x in show_json(db, sess["id"])["session"]["replays"]] == [s["id"] for s in mocks]
    assert not [e for e in doc["events"] if e["kind"] == "action" and "mock:" in (e.get("text") or "")]
    assert len(doc["messages"]) == 1 and doc["messages"][0]["size"] == len(msg)
    assert run_cli("export", mocks[0]["id"], "--db", db, "--eml").out == msg


def test_mock_diverging_client_gets_503(smtptap, aio, mock):
    msg = sample_message("diverge")
    db, sess = record(smtptap, aio, msg)
    m = mock(sess["id"], db)
    s = smtplib.SMTP(m.host, m.port, timeout=30)
    try:
        assert s.ehlo("diverger.example")[0] == 250
        code, text = s.mail("mallory@example.net")
        assert code == 503, (code, text)
        assert text.startswith(b"5.5.1 ") and b"expected" in text and FROM.encode() in text, text
        assert b"mallory@example.net" in text, text
        # the recording waits where it was: the expected command still works
        assert s.mail(FROM)[0] == 250
        code, text = s.docmd("NOOP")
        assert code == 503 and b"RCPT TO:<%s>" % TO.encode() in text.upper().replace(TO.upper().encode(), TO.encode()), (code, text)
        assert s.quit()[0] == 221
    finally:
        s.close()
    m.stop()
    (mk,) = [x for x in sessions_list(db) if x.get("replay_of") == sess["id"]]
    doc = show_json(db, mk["id"])
    notes = [e for e in doc["events"] if e["kind"] == "action" and (e.get("text") or "").startswith("mock:")]
    assert len(notes) >= 2, [e for e in doc["events"] if e["kind"] == "action"]
    assert "mallory@example.net" in notes[0]["text"] and FROM in notes[0]["text"], notes[0]
    cmds = {e["seq"]: e for e in doc["events"] if e["kind"] == "command"}
    assert notes[0]["cause_seq"] in cmds, notes[0]  # the note names the command it is about
    rep503 = [e for e in doc["events"] if e["kind"] == "reply" and (e.get("text") or e.get("raw") or "").startswith("503")]
    assert rep503 and rep503[0]["answers_seq"] == notes[0]["cause_seq"], rep503


def test_mock_beyond_the_recording(smtptap, aio, mock):
    db, sess = record(smtptap, aio, sample_message("short"))
    m = mock(sess["id"], db)
    s = smtplib.SMTP(m.host, m.port, timeout=30)
    try:
        s.ehlo("x.example")
        s.mail(FROM)
        s.rcpt(TO)
        s.putcmd("data")
        assert s.getreply()[0] == 354
        s.send(stuff_data(b"Subject: x\r\n\r\nx\r\n"))
        assert s.getreply()[0] == 250
        code, text = s.docmd("RSET")
        # QUIT was recorded next: RSET is not it
        assert code == 503 and b"QUIT" in text.upper(), (code, text)
        assert s.quit()[0] == 221
    finally:
        s.close()


def test_mock_starttls(smtptap, tls_upstream, pki, mock, tmp_path):  # noqa: F811
    """A session whose client used STARTTLS: the mock offers and answers
    STARTTLS (certificate from smtptap's CA), then plays the rest."""
    ca_dir = str(tmp_path / "ca")
    run_cli("ca", "init", "--ca-dir", ca_dir)
    cafile, _ = smtptap_ca(ca_dir)
    up = tls_upstream("starttls")
    p = smtptap(upstream=up.addr, args=["--ca-dir", ca_dir, "--upstream-ca", pki.ca, "--client-tls", "starttls"])
    msg = sample_message("mock-tls")
    recorded = conversation("localhost", p.port, msg, ctx=client_context(cafile))
    up.wait_envelopes(1)
    sess = only_session(p.db)
    p.stop()
    assert show_json(p.db, sess["id"])["session"]["client_tls"]["mode"] == "starttls"

    m = mock(sess["id"], p.db, args=["--ca-dir", ca_dir])
    seen = conversation("127.0.0.1", m.port, msg, ctx=client_context(cafile))
    assert [c for c, _ in seen] == [c for c, _ in recorded], (seen, recorded)
    m.stop()
    (mk,) = [x for x in sessions_list(p.db) if x.get("replay_of") == sess["id"]]
    doc = show_json(p.db, mk["id"])
    assert doc["session"]["client_tls"]["mode"] == "starttls", doc["session"]


def test_mock_usage_errors(smtptap, aio, tmp_path):
    db, sess = record(smtptap, aio, sample_message("usage"))
    run_cli("mock", "--help")
    assert "session ID" in run_cli("mock", "--db", db, expect=2).err
    assert "no session" in run_cli("mock", sess["id"] + 50, "--db", db, "--listen", "127.0.0.1:0", expect=3).err
    assert "--client-tls" in run_cli("mock", sess["id"], "--db", db, "--client-tls", "auto", expect=2).err


def test_mock_implicit_tls(smtptap, aio, mock, tmp_path):
    """A session whose client spoke TLS from the first byte: so does the mock."""
    ca_dir = str(tmp_path / "ca")
    run_cli("ca", "init", "--ca-dir", ca_dir)
    cafile, _ = smtptap_ca(ca_dir)
    p = smtptap(upstream=aio.addr, args=["--ca-dir", ca_dir, "--client-tls", "implicit"])
    msg = sample_message("mock-implicit")

    def send_implicit(port, hostname):
        s = smtplib.SMTP_SSL(timeout=30, context=client_context(cafile))
        s._host = hostname  # the name the handshake checks
        seen = [s.connect("127.0.0.1", port)]
        try:
            seen.append(s.ehlo("implicit.example"))
            seen.append(s.mail(FROM))
            seen.append(s.rcpt(TO))
            s.putcmd("data")
            seen.append(s.getreply())
            s.send(stuff_data(msg))
            seen.append(s.getreply())
            seen.append(s.quit())
        finally:
            s.close()
        return [c for c, _ in seen]

    recorded = send_implicit(p.port, "localhost")
    aio.wait_envelopes(1)
    sess = only_session(p.db)
    p.stop()
    assert show_json(p.db, sess["id"])["session"]["client_tls"]["mode"] == "implicit"
    m = mock(sess["id"], p.db, args=["--ca-dir", ca_dir])
    assert send_implicit(m.port, "127.0.0.1") == recorded
    m.stop()
    (mk,) = [x for x in sessions_list(p.db) if x.get("replay_of") == sess["id"]]
    assert show_json(p.db, mk["id"])["session"]["client_tls"]["mode"] == "implicit"
