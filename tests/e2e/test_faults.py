"""Faults on either side: the proxy reports them, records them, and keeps
serving the next client."""

import random
import socket
import subprocess

import pytest

from conftest import (RECORD_TIMEOUT, export_eml, only_session, sample_message,
                      show_json, show_raw, stuff_data, wait_sessions, wait_until)
from scripted import close, expect, expect_closed, send, stall


def next_client_ok(p, tag="next"):
    """A complete, well-behaved session through p; returns the message."""
    msg = sample_message(tag)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO next.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(stuff_data(msg))
        code, lines, _ = c.reply()
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    return msg


def start(mode, aio, smtptap, args=()):
    if mode == "relay":
        return smtptap(upstream=aio.addr, args=args)
    return smtptap(sink=True, args=args)


def last_session_doc(p, n):
    ss = wait_sessions(p.db, n)
    return show_json(p.db, ss[n - 1]["id"])


def test_upstream_unreachable(dead_port, smtptap):
    up = "127.0.0.1:%d" % dead_port
    p = smtptap(upstream=up)
    for i in range(2):
        c = p.connect()
        try:
            code, lines, raw = c.reply()
            assert code == 421, raw
            assert lines[-1].startswith("4.4.1 "), raw
            assert up in raw.decode(), "the 421 should name the upstream: %r" % raw
            assert c.closed_by_peer()
        finally:
            c.close()
    ss = wait_sessions(p.db, 2)
    for s in ss:
        assert s["outcome"] == "upstream-unreachable", s
    doc = show_json(p.db, ss[0]["id"])
    assert doc["session"]["detail"], doc["session"]


def test_upstream_name_unresolvable(smtptap):
    p = smtptap(upstream="no-such-host.invalid:25")
    c = p.connect()
    try:
        code, lines, raw = c.reply()
        assert code == 421, raw
        assert b"no-such-host.invalid" in raw
        assert c.closed_by_peer()
    finally:
        c.close()
    assert only_session(p.db)["outcome"] == "upstream-unreachable"


LINE = rb"[^\r\n]*\r\n"


def upstream_session_steps(greet=b"220 up.test ESMTP\r\n"):
    """A scripted upstream's side of one ordinary session (next_client_ok)."""
    return [send(greet), expect(rb"EHLO " + LINE), send(b"250-up.test\r\n250 8BITMIME\r\n"),
            expect(rb"MAIL FROM:" + LINE), send(b"250 2.1.0 ok\r\n"),
            expect(rb"RCPT TO:" + LINE), send(b"250 2.1.5 ok\r\n"),
            expect(rb"DATA\r\n"), send(b"354 go ahead\r\n"),
            expect(rb"\r\n\.\r\n", name="data"), send(b"250 2.0.0 queued as UP1\r\n"),
            expect(rb"QUIT\r\n"), send(b"221 2.0.0 bye\r\n"), close(), expect_closed()]


def test_upstream_closes_mid_data(scripted, smtptap):
    up = scripted.server(
        # the first connection closes after some of the message
        upstream_session_steps()[:9] + [expect(rb"Subject: cut\r\n"), close(), expect_closed()],
        upstream_session_steps())
    p = smtptap(upstream=up.addr)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO cut.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: cut\r\n\r\n" + b"0123456789abcdef" * 64 + b"\r\n")
        # as without smtptap: the connection just closes, no reply comes
        rest = c.read_until_closed()
        assert rest == b"", rest[:200]
    finally:
        c.close()
    up[0].wait()
    s = only_session(p.db)
    assert s["outcome"] == "upstream-closed", s
    assert s["detail"] == "upstream closed the connection in the middle of message 1", s
    doc = show_json(p.db, s["id"])
    assert len(doc["messages"]) == 1
    assert doc["messages"][0]["complete"] is False
    # and the proxy still works for the next client (the fault is per connection)
    msg = next_client_ok(p)
    up[1].wait()
    assert up[1].got["data"] == stuff_data(msg)
    assert wait_sessions(p.db, 2)[1]["outcome"] == "quit"


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_client_vanishes_mid_data(mode, aio, smtptap):
    p = start(mode, aio, smtptap)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO vanish.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(b"Subject: vanishing\r\n\r\n" + b"partial line\r\n" * 1000 + b"no end")
    finally:
        c.close()
    s = only_session(p.db)
    assert s["outcome"] == "client-closed", s
    doc = show_json(p.db, s["id"])
    assert len(doc["messages"]) == 1
    m = doc["messages"][0]
    assert m["complete"] in (False, 0)
    assert m["subject"] == "vanishing"
    # what arrived is kept (lossless), even though the message is incomplete
    eml = export_eml(p.db, s["id"])
    assert eml.startswith(b"Subject: vanishing\r\n\r\npartial line\r\n")
    msg = next_client_ok(p)
    if mode == "relay":
        envs = aio.wait_envelopes(1)
        assert [e["content"] for e in envs] == [msg], "the cut message must not be delivered"


IDLE = 5  # --idle-timeout in the timeout tests: long enough for the next client's own pauses


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_idle_timeout(mode, aio, scripted, smtptap):
    p = start(mode, aio, smtptap, args=["--idle-timeout", IDLE])
    # a client that reads the greeting and then says nothing
    cl = scripted.client(p.port, [expect(rb"220 [^\r\n]*\r\n"),
                                  expect(rb"421 4\.4\.2 [^\r\n]*\r\n", name="421", timeout=IDLE + 120),
                                  expect_closed()])
    cl.wait(timeout=IDLE + 180)
    assert b"idle for %d seconds" % IDLE in cl.got["421"], cl.got
    s = only_session(p.db)
    assert s["outcome"] == "client-timeout", s
    assert s["detail"] == "client idle for %d s" % IDLE, s
    next_client_ok(p)
    assert wait_sessions(p.db, 2)[1]["outcome"] == "quit"


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_overlong_line(mode, mini_factory, smtptap):
    up = mini_factory(caps=("PIPELINING", "8BITMIME"))
    p = smtptap(upstream=up.addr) if mode == "relay" else smtptap(sink=True)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        try:
            c.send(b"A" * 100000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, lines, raw = c.reply()
        assert raw == b"500 5.5.2 smtptap: line too long (the limit is 65536 bytes)\r\n", raw
        assert c.closed_by_peer()
    finally:
        c.close()
    s = only_session(p.db)
    assert s["outcome"] == "protocol-error", s
    next_client_ok(p)
    if mode == "relay":
        # the upstream saw two connections: not a byte of the long line on
        # the first, the whole next session on the second
        conns = wait_until(lambda: up.received() if len(up.received()) == 2 else None, RECORD_TIMEOUT,
                           what="two connections at the upstream")
        assert conns[0] == b"", conns[0][:100]
        assert b"A" * 10 not in conns[1] and conns[1].startswith(b"EHLO next.example\r\n"), conns[1][:100]
        assert len(up.messages) == 1


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_binary_noise(mode, aio, smtptap):
    p = start(mode, aio, smtptap)
    rnd = random.Random(5321)
    noises = [
        b"\x00" * 5000,
        b"NOOP\x00\x00\r\nEHLO \x00\xff\xfe\r\nMAIL FROM:<\x00@\x00>\r\n\r\n\n\r\r\n",
        bytes(rnd.getrandbits(8) for _ in range(40000)),
        b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" + bytes(rnd.getrandbits(8) for _ in range(40000)),
        b"BDAT 18446744073709551615 LAST\r\n" + b"\x00" * 1000,
        b"BDAT 99999999999999999999999\r\nBDAT -1\r\nBDAT\r\nAUTH PLAIN\r\n\x00\x00\r\n*\r\n",
        b"\r\n" * 2000,
    ]
    for n in noises:
        c = p.connect()
        try:
            assert c.reply()[0] == 220
            try:
                c.send(n)
                c.sock.shutdown(socket.SHUT_WR)
                c.read_until_closed()
            except (BrokenPipeError, ConnectionResetError):
                pass  # smtptap closed before taking it all: the outcome below says why
        finally:
            c.close()
        assert p.running(), "smtptap died on noise %r...\n%s" % (n[:40], p.stderr()[-3000:])
    ss = wait_sessions(p.db, len(noises))
    assert len(ss) == len(noises), ss
    # the client ended each one (SHUT_WR), with nothing smtptap had to refuse
    assert [x["outcome"] for x in ss] == ["client-closed"] * len(noises), [(x["outcome"], x["detail"]) for x in ss]
    next_client_ok(p)


def test_tls_client_hello_on_plain_port(smtptap, tools_required):
    tools_required("openssl")
    p = smtptap(sink=True)
    r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (p.host, p.port), "-servername", "localhost"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode != 0, "a TLS handshake cannot succeed on a plain SMTP port"
    assert p.running()
    s = only_session(p.db)
    assert s["outcome"] == "protocol-error", s
    assert "TLS handshake" in s["detail"], s
    next_client_ok(p)
    assert wait_sessions(p.db, 2)[1]["outcome"] == "quit"


REPLY = 3  # --reply-timeout in test_upstream_reply_timeout


def test_upstream_reply_timeout(scripted, smtptap):
    up = scripted.server([send(b"220 silent.test ESMTP\r\n"), expect(rb"EHLO [^\r\n]*\r\n"),
                          send(b"250 silent.test\r\n"), expect(rb"MAIL FROM:[^\r\n]*\r\n"), stall()])
    p = smtptap(upstream=up.addr, args=["--reply-timeout", REPLY])
    cl = scripted.client(p.port, [expect(rb"220 [^\r\n]*\r\n"), send(b"EHLO slow.example\r\n"),
                                  expect(rb"250 [^\r\n]*\r\n"), send(b"MAIL FROM:<a@example.com>\r\n"),
                                  expect(rb"421 4\.4\.2 [^\r\n]*\r\n", name="421", timeout=REPLY + 120),
                                  expect_closed()])
    cl.wait(timeout=REPLY + 180)
    up.wait()
    assert b"did not reply within %d s" % REPLY in cl.got["421"], cl.got
    s = only_session(p.db)
    assert s["outcome"] == "upstream-timeout", s
    assert s["detail"] == "upstream %s did not reply within %d s" % (up.addr, REPLY), s


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_unterminated_last_line_is_kept(mode, mini_factory, smtptap):
    """Bytes a client sends without a final CRLF before it closes are not
    lost: they are recorded (flagged incomplete) and, in relay mode, passed
    on as a direct connection would have."""
    up = mini_factory(caps=("PIPELINING", "8BITMIME"))
    p = smtptap(upstream=up.addr) if mode == "relay" else smtptap(sink=True)
    c = p.connect()
    sent = b"EHLO tail.example\r\nNOOP\r\nQUIT-without-crlf"
    try:
        assert c.reply()[0] == 220
        c.send(sent)
        # both commands answered: smtptap has read the tail too
        assert c.reply()[0] == 250
        assert c.reply()[0] == 250
    finally:
        c.close()
    sid = wait_sessions(p.db, 1)[0]["id"]
    doc = show_json(p.db, sid)
    assert doc["session"]["outcome"] == "client-closed", doc["session"]
    assert show_raw(p.db, sid, side="client") == sent
    tail = [e for e in doc["events"] if e["side"] == "client" and "incomplete" in e["flags"]]
    assert len(tail) == 1 and tail[0]["text"] == "QUIT-without-crlf", tail
    assert ("dropped" in tail[0]["flags"]) == (mode == "sink")
    if mode == "relay":
        # exactly what the client sent, tail included, then the close
        got = wait_until(lambda: up.received() if up.received() and up.received()[0] == sent else None,
                         RECORD_TIMEOUT, what="the client's bytes at the upstream")
        assert got[0] == sent
    next_client_ok(p)
