"""Defects found in review of the session code (issue 5), each driven by a
scripted peer (scripted.py) on the leg that misbehaves.

Each failed against the session code before the leg layer (issue 5) and
passes since.
"""

import os
import select
import socket
import struct
import time

import pytest

from conftest import (SANITIZER, RawClient, export_eml, only_session, sample_message, show_json, show_raw,
                      stuff_data)
from scripted import close, expect, expect_closed, read_all, send

GREET = b"220 up.test ESMTP scripted\r\n"
EHLO_REPLY = b"250-up.test greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
LINE = rb"[^\r\n]*\r\n"  # the rest of a line


def reply(code):
    """expect() pattern for the last line of a reply with this code."""
    return (b"%d " % code) + LINE


def client_hello_steps(helo=b"client.test"):
    return [expect(reply(220)), send(b"EHLO " + helo + b"\r\n"), expect(reply(250))]


def envelope_steps():
    return [send(b"MAIL FROM:<a@example.com>\r\n"), expect(reply(250)),
            send(b"RCPT TO:<b@example.org>\r\n"), expect(reply(250))]


def upstream_envelope_steps():
    return [expect(rb"MAIL FROM:" + LINE), send(b"250 2.1.0 ok\r\n"),
            expect(rb"RCPT TO:" + LINE), send(b"250 2.1.5 ok\r\n")]


def upstream_hello_steps():
    return [send(GREET), expect(rb"EHLO " + LINE), send(EHLO_REPLY)]


def strict_unstuff(wire):
    """The message a strict server takes from a DATA stream: it ends only at
    CRLF.CRLF and only CRLF ends a line (RFC 5321 4.1.1.4, 2.3.8)."""
    assert wire.endswith(b"\r\n.\r\n"), wire[-20:]
    lines = wire[:-3].split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


# a message whose line ends are bare LF, with a "." line between them: a
# strict server reads on to the CRLF.CRLF, a lenient one stops at "\n.\n"
BARE_LF_WIRE = b"Subject: x\n\n.\nmore\r\n.\r\n"
SECOND = b"Subject: second\r\n\r\nthe session goes on\r\n"


# --------------------------------------------------------------------------
# a. the upstream closes in the middle of a reply


def test_upstream_closes_mid_reply(scripted, smtptap):
    cut = b"250-host hello\r\n250-PIPELI"
    up = scripted.server([send(GREET), expect(rb"EHLO " + LINE), send(cut), close(), expect_closed()])
    p = smtptap(upstream=up.addr)
    cl = scripted.client(p.port, [expect(reply(220)), send(b"EHLO cut.example\r\n"), read_all()])
    cl.wait()
    up.wait()
    # what a direct connection would have shown the client, then the close
    assert cl.received == GREET + cut
    sess = only_session(p.db)
    assert sess["outcome"] == "upstream-closed", sess
    assert show_raw(p.db, sess["id"], side="upstream") == GREET + cut
    ups = [e for e in show_json(p.db, sess["id"])["events"] if e["side"] == "upstream"]
    assert ups and "incomplete" in ups[-1]["flags"], ups


# --------------------------------------------------------------------------
# b. a client that pipelines EHLO and never reads the replies

FLOOD_MAX = 200 * 1024 * 1024  # bytes of EHLO lines at most
BLOCKED = 5  # seconds the socket must stay unwritable to count as blocked
RSS_LIMIT_KB = (512 if SANITIZER else 64) * 1024  # ASan's quarantine alone may take 256 MiB
# a long EHLO reply from the relayed upstream: a proxy that keeps reading
# shows it quickly (the reply is ~40 times the command)
FILLER_CAPS = tuple("X-FILLER-%02d-%s" % (i, "x" * 40) for i in range(20))


def vm_kb(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (key, pid))


def cpu_ticks(pid):
    """utime + stime of the process, all threads (clock ticks)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def flood_ehlo(p, sock):
    """Write EHLO lines without reading until the socket stays blocked for
    BLOCKED seconds while the proxy is idle, FLOOD_MAX bytes are out, or the
    proxy's RSS passes the limit (so a broken proxy cannot eat the
    machine).  A proxy that is busy while we are blocked (its store writer
    catching up, say) has only paused: it will read again, so the flood
    goes on.  Returns (bytes written, why it stopped)."""
    chunk = b"EHLO f\r\n" * 8192  # 64 KiB
    sock.setblocking(False)
    written, view, checked = 0, memoryview(chunk), 0
    deadline = time.monotonic() + 600  # safety net: FLOOD_MAX is the real bound
    for _ in range(10 ** 6):
        if written >= FLOOD_MAX:
            return written, "wrote %d bytes" % written
        if time.monotonic() > deadline:
            return written, "still writing after 600 s"
        ticks = cpu_ticks(p.pid)
        _, w, _ = select.select([], [sock], [], BLOCKED)
        if not w:
            if cpu_ticks(p.pid) - ticks <= os.sysconf("SC_CLK_TCK") // 10:
                return written, "blocked"
            continue  # paused, not stopped
        try:
            n = sock.send(view)
        except BlockingIOError:
            continue
        written += n
        view = view[n:] if n < len(view) else memoryview(chunk)
        if written - checked >= 1024 * 1024:
            checked = written
            if vm_kb(p.pid, "VmRSS") > RSS_LIMIT_KB:
                return written, "RSS over the limit"
    return written, "loop bound"


@pytest.mark.parametrize("mode", ["sink", "relay"])
def test_client_that_never_reads(mode, mini_factory, smtptap):
    if mode == "relay":
        up = mini_factory(caps=("PIPELINING", "8BITMIME") + FILLER_CAPS)
        p = smtptap(upstream=up.addr)
    else:
        p = smtptap(sink=True)
    flood = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # a small receive buffer: the proxy's output is what must stay bounded
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        flood.settimeout(30)
        flood.connect((p.host, p.port))
        written, why = flood_ehlo(p, flood)
        hwm = vm_kb(p.pid, "VmHWM")
        # meanwhile, another client is served normally
        msg = sample_message("beside-the-flood")
        c = RawClient(p.host, p.port, timeout=60)
        try:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO other.example")[0] == 250
            assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(stuff_data(msg))
            assert c.reply()[0] == 250
            assert c.cmd("QUIT")[0] == 221
        finally:
            c.close()
        assert p.running()
        assert hwm < RSS_LIMIT_KB, "peak RSS %d KiB after %d bytes of EHLO (%s)" % (hwm, written, why)
        assert why == "blocked", "the proxy kept reading a client that does not read: %s" % why
    finally:
        flood.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        flood.close()


# --------------------------------------------------------------------------
# c. a bare-LF "end of data" against a strict upstream


def test_bare_lf_dot_with_strict_upstream(scripted, smtptap):
    up = scripted.server(upstream_hello_steps() + upstream_envelope_steps() + [
        expect(rb"DATA\r\n"), send(b"354 go ahead\r\n"),
        expect(rb"\r\n\.\r\n", name="data1"),  # CRLF.CRLF only
        send(b"250 2.0.0 queued as STRICT1\r\n"),
    ] + upstream_envelope_steps() + [
        expect(rb"DATA\r\n"), send(b"354 go ahead\r\n"),
        expect(rb"\r\n\.\r\n", name="data2"),
        send(b"250 2.0.0 queued as STRICT2\r\n"),
        expect(rb"QUIT\r\n"), send(b"221 2.0.0 bye\r\n"), close(), expect_closed(),
    ])
    p = smtptap(upstream=up.addr)
    cl = scripted.client(p.port, client_hello_steps() + envelope_steps() + [
        send(b"DATA\r\n"), expect(reply(354)),
        send(BARE_LF_WIRE), expect(rb"250 2\.0\.0 queued as STRICT1\r\n"),
    ] + envelope_steps() + [
        send(b"DATA\r\n"), expect(reply(354)),
        send(stuff_data(SECOND)), expect(rb"250 2\.0\.0 queued as STRICT2\r\n"),
        send(b"QUIT\r\n"), expect(reply(221)), expect_closed(),
    ])
    cl.wait()
    up.wait()
    sent_by_upstream = up[0].sent
    assert cl.received == sent_by_upstream
    assert up[0].received == cl.sent
    took = strict_unstuff(up[0].got["data1"])
    assert took == b"Subject: x\n\n.\nmore\r\n"
    sess = only_session(p.db)
    sid = sess["id"]
    assert sess["outcome"] == "quit", sess
    assert export_eml(p.db, sid, message=1) == took, "the recorded message is not what the upstream received"
    assert export_eml(p.db, sid, message=2) == SECOND
    assert show_raw(p.db, sid, side="client") == cl.sent
    doc = show_json(p.db, sid)
    assert [m["upstream_code"] for m in doc["messages"]] == [250, 250], doc["messages"]
    assert any("bare lf" in (e.get("text") or "").lower() for e in doc["events"]), \
        "no event mentions the bare LF: %r" % [e.get("text") for e in doc["events"]]


# --------------------------------------------------------------------------
# d. BDAT 0 LAST


BDAT_MODES = ["sink", "relay"]


@pytest.mark.parametrize("mode", BDAT_MODES)
def test_bdat_zero_last(mode, mini_factory, scripted, smtptap):
    if mode == "relay":
        up = mini_factory(caps=("PIPELINING", "CHUNKING"))
        p = smtptap(upstream=up.addr)
    else:
        p = smtptap(sink=True)
    cl = scripted.client(p.port, client_hello_steps() + envelope_steps() + [
        send(b"BDAT 5\r\nhello"), expect(reply(250)),
        send(b"BDAT 0 LAST\r\n"), expect(reply(250), name="last"),  # nothing else is sent until it comes
        send(b"QUIT\r\n"), expect(reply(221)), expect_closed(),
    ])
    cl.wait()
    sess = only_session(p.db)
    assert sess["outcome"] == "quit", sess
    assert export_eml(p.db, sess["id"]) == b"hello"
    m = show_json(p.db, sess["id"])["messages"][0]
    assert m["complete"] in (True, 1) and m["size"] == 5, m
    assert m["upstream_code"] == 250, m
    if mode == "relay":
        assert [x["content"] for x in up.messages] == [b"hello"]


# --------------------------------------------------------------------------
# e. a lenient upstream answers while smtptap may still count message data


def test_lenient_upstream_answers_at_bare_lf_dot(scripted, smtptap):
    """The upstream ends DATA at "\\n.\\n" and answers; the client's next
    lines are commands to it.  Whatever smtptap makes of the DATA stream,
    every reply reaches the client and the record, and the session goes on
    (a strict DATA scanner must not stall waiting for CRLF.CRLF here)."""
    up = scripted.server(upstream_hello_steps() + upstream_envelope_steps() + [
        expect(rb"DATA\r\n"), send(b"354 go ahead\r\n"),
        expect(rb"\n\.\r?\n", name="data1"),
        send(b"250 2.0.0 queued as LENIENT1\r\n"),
        expect(rb"more\r\n"), send(b"500 5.5.2 unknown command\r\n"),
        expect(rb"\.\r\n"), send(b"500 5.5.2 unknown command\r\n"),
    ] + upstream_envelope_steps() + [
        expect(rb"DATA\r\n"), send(b"354 go ahead\r\n"),
        expect(rb"\r\n\.\r\n", name="data2"),
        send(b"250 2.0.0 queued as LENIENT2\r\n"),
        expect(rb"QUIT\r\n"), send(b"221 2.0.0 bye\r\n"), close(), expect_closed(),
    ])
    p = smtptap(upstream=up.addr)
    cl = scripted.client(p.port, client_hello_steps() + envelope_steps() + [
        send(b"DATA\r\n"), expect(reply(354)),
        send(BARE_LF_WIRE),
        expect(rb"250 2\.0\.0 queued as LENIENT1\r\n"), expect(reply(500)), expect(reply(500)),
    ] + envelope_steps() + [
        send(b"DATA\r\n"), expect(reply(354)),
        send(stuff_data(SECOND)), expect(rb"250 2\.0\.0 queued as LENIENT2\r\n"),
        send(b"QUIT\r\n"), expect(reply(221)), expect_closed(),
    ])
    cl.wait()
    up.wait()
    assert up[0].got["data1"] == b"Subject: x\n\n.\n"
    assert cl.received == up[0].sent
    assert up[0].received == cl.sent
    sess = only_session(p.db)
    sid = sess["id"]
    assert sess["outcome"] == "quit", sess
    assert show_raw(p.db, sid, side="upstream") == up[0].sent
    assert show_raw(p.db, sid, side="client") == cl.sent
    doc = show_json(p.db, sid)
    texts = [e.get("text") or "" for e in doc["events"] if e["side"] == "upstream" and e["kind"] == "reply"]
    assert any("LENIENT1" in t for t in texts), texts
    assert export_eml(p.db, sid, message=len(doc["messages"])) == SECOND
