"""Faults on either side: the proxy reports them, records them, and keeps
serving the next client."""

import os
import random
import shutil
import socket
import subprocess
import time

import pytest

from conftest import (RawClient, export_eml, only_session, sample_message, sessions_list, show_json, show_raw,
                      stuff_data, wait_sessions)


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


def test_upstream_closes_mid_data(mini_factory, smtptap):
    up = mini_factory(caps=("PIPELINING", "8BITMIME"), fault="close-in-data")
    p = smtptap(upstream=up.addr)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO cut.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        body = b"Subject: cut\r\n\r\n" + b"0123456789abcdef" * 64 + b"\r\n"
        try:
            for _ in range(64):
                c.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            rest = c.read_until_closed()
        except (ConnectionResetError, BrokenPipeError):
            rest = b""
        assert rest == b"" or rest.startswith(b"421"), rest[:200]
    finally:
        c.close()
    s = only_session(p.db)
    assert s["outcome"] == "upstream-closed", s
    doc = show_json(p.db, s["id"])
    assert len(doc["messages"]) == 1
    assert doc["messages"][0]["complete"] in (False, 0)
    # and the proxy still works for the next client (the fault is per connection)
    up.fault = None
    next_client_ok(p)
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


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_idle_timeout(mode, aio, smtptap):
    p = start(mode, aio, smtptap, args=["--idle-timeout", "1"])
    c = p.connect(timeout=30)
    try:
        assert c.reply()[0] == 220
        code, lines, raw = c.reply()  # nothing sent: the proxy speaks first
        assert code == 421, raw
        assert c.closed_by_peer()
    finally:
        c.close()
    s = only_session(p.db)
    assert s["outcome"] == "client-timeout", s
    next_client_ok(p)


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_overlong_line(mode, aio, smtptap):
    p = start(mode, aio, smtptap)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        try:
            c.send(b"A" * 100000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, lines, raw = c.reply()
        assert 500 <= code < 600, raw
        assert c.closed_by_peer()
    finally:
        c.close()
    only_session(p.db)
    next_client_ok(p)
    if mode == "relay":
        # the long line never reached the upstream
        assert len(aio.envelopes) == 1


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
            c.reply()
            try:
                c.send(n)
                c.sock.shutdown(socket.SHUT_WR)
                c.read_until_closed()
            except (BrokenPipeError, ConnectionResetError, socket.timeout, AssertionError):
                pass
        finally:
            c.close()
        assert p.running(), "smtptap died on noise %r...\n%s" % (n[:40], p.stderr()[-3000:])
    wait_sessions(p.db, len(noises))
    next_client_ok(p)


def test_tls_client_hello_on_plain_port(smtptap, tools_required):
    tools_required("openssl")
    p = smtptap(sink=True)
    r = subprocess.run(["openssl", "s_client", "-connect", "%s:%d" % (p.host, p.port), "-servername", "localhost"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode != 0, "a TLS handshake cannot succeed on a plain SMTP port"
    assert p.running()
    only_session(p.db)
    next_client_ok(p)
    assert wait_sessions(p.db, 2)[1]["outcome"] == "quit"


class _SilentAfterEhlo:
    """An upstream that greets, answers EHLO, then never answers again."""

    def __init__(self):
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.addr = "127.0.0.1:%d" % self.lsock.getsockname()[1]
        self.conns = []

    def serve_one(self):
        import threading

        def run():
            self.lsock.settimeout(30)
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self.conns.append(c)
            c.settimeout(30)
            try:
                c.sendall(b"220 silent.test ESMTP\r\n")
                buf = b""
                while b"\n" not in buf:
                    d = c.recv(1000)
                    if not d:
                        return
                    buf += d
                c.sendall(b"250 silent.test\r\n")
                while c.recv(1000):
                    pass
            except OSError:
                pass
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t

    def close(self):
        for c in self.conns:
            c.close()
        self.lsock.close()


def test_upstream_reply_timeout(smtptap):
    up = _SilentAfterEhlo()
    t = up.serve_one()
    try:
        p = smtptap(upstream=up.addr, args=["--reply-timeout", "1"])
        c = p.connect()
        try:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO slow.example")[0] == 250
            code, lines, raw = c.cmd("MAIL FROM:<a@example.com>")
            assert code == 421, raw
            assert c.closed_by_peer()
        finally:
            c.close()
        s = only_session(p.db)
        assert s["outcome"] not in (None, "quit"), s
    finally:
        up.close()
        t.join(5)


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_unterminated_last_line_is_kept(mode, aio, smtptap):
    """Bytes a client sends without a final CRLF before it closes are not
    lost: they are recorded (flagged incomplete) and, in relay mode, passed
    on as a direct connection would have."""
    p = start(mode, aio, smtptap)
    c = p.connect()
    sent = b"EHLO tail.example\r\nNOOP\r\nQUIT-without-crlf"
    try:
        assert c.reply()[0] == 220
        c.send(sent)
        time.sleep(0.3)
    finally:
        c.close()
    sid = wait_sessions(p.db, 1)[0]["id"]
    doc = show_json(p.db, sid)
    assert doc["session"]["outcome"] == "client-closed", doc["session"]
    assert show_raw(p.db, sid, side="client") == sent
    tail = [e for e in doc["events"] if e["side"] == "client" and "incomplete" in e["flags"]]
    assert len(tail) == 1 and tail[0]["text"] == "QUIT-without-crlf", tail
    assert ("dropped" in tail[0]["flags"]) == (mode == "sink")
    next_client_ok(p)
