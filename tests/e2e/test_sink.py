"""Sink mode (the capture server) and BDAT/CHUNKING in both modes."""

import re

import pytest

from conftest import (RawClient, export_eml, only_session, show_json, stuff_data,
                      wait_sessions)


def ehlo_keywords(lines):
    return {l.split(" ")[0].upper(): l for l in lines[1:]}


def test_sink_ehlo_capabilities(smtptap):
    p = smtptap(sink=True, args=["--client-tls", "off"])
    c = p.connect()
    try:
        code, greet, _ = c.reply()
        assert code == 220
        code, lines, raw = c.cmd("EHLO caps.example")
        assert code == 250
        kw = ehlo_keywords(lines)
        for k in ("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE", "CHUNKING", "ENHANCEDSTATUSCODES", "DSN", "AUTH"):
            assert k in kw, "sink EHLO lacks %s: %r" % (k, lines)
        auth = kw["AUTH"].upper().split()
        assert "PLAIN" in auth and "LOGIN" in auth
        assert "STARTTLS" not in kw, "STARTTLS advertised with --client-tls off: %r" % lines
        assert c.cmd("STARTTLS")[0] == 454
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()


def send_msgs(c, msgs):
    replies = []
    for m in msgs:
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(stuff_data(m))
        code, lines, _ = c.reply()
        assert code == 250, lines
        replies.append(lines[-1])
    return replies


def test_sink_queue_ids(smtptap):
    p = smtptap(sink=True)
    replies = []
    for _ in range(2):
        c = p.connect()
        try:
            c.reply()
            c.cmd("EHLO q.example")
            replies += send_msgs(c, [b"Subject: a\r\n\r\na\r\n", b"Subject: b\r\n\r\nb\r\n"])
            c.cmd("QUIT")
        finally:
            c.close()
    ids = []
    for r in replies:
        m = re.search(r"queued as (\S+)", r)
        assert m, "250 reply without a queue id: %r" % r
        ids.append(m.group(1))
    assert len(set(ids)) == 4, ids
    ss = wait_sessions(p.db, 2)
    recorded = []
    for s in ss:
        doc = show_json(p.db, s["id"])
        assert doc["session"]["mode"] == "sink"
        assert doc["session"]["upstream"] is None
        assert doc["session"]["outcome"] == "quit"
        recorded += [m["upstream_reply"] for m in doc["messages"]]
    # two sessions of two messages each: four replies, four recorded
    assert len(replies) == 4 and len(recorded) == 4, (replies, recorded)
    for r, rec in zip(replies, recorded):
        assert rec == "250 " + r, (r, rec)


BINARY_CHUNK_1 = b"Subject: bdat\r\n\r\nline one\r\n.\r\n.. dots\r\nnul:\x00\x00 end\r\n"
BINARY_CHUNK_2 = bytes(range(256)) + b"\r\n.\r\nQUIT\r\n"
BINARY_CHUNK_3 = b"tail\r\n"


def bdat_conversation(c, chunks, pipelined=False):
    assert c.reply()[0] == 220
    code, lines, _ = c.cmd("EHLO bdat.example")
    assert code == 250
    assert "CHUNKING" in ehlo_keywords(lines), lines
    assert c.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME")[0] == 250
    assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
    wire = b""
    for i, ch in enumerate(chunks):
        last = i == len(chunks) - 1
        wire += b"BDAT %d%s\r\n" % (len(ch), b" LAST" if last else b"") + ch
        if not pipelined:
            c.send(wire)
            wire = b""
            code, lines, _ = c.reply()
            assert code == 250, lines
    if pipelined:
        c.send(wire)
        for _ in chunks:
            code, lines, _ = c.reply()
            assert code == 250, lines
    assert c.cmd("QUIT")[0] == 221


@pytest.mark.parametrize("pipelined", [False, True], ids=["lockstep", "pipelined"])
def test_bdat_binary_sink(smtptap, pipelined):
    p = smtptap(sink=True)
    chunks = [BINARY_CHUNK_1, BINARY_CHUNK_2, BINARY_CHUNK_3]
    c = p.connect()
    try:
        bdat_conversation(c, chunks, pipelined)
    finally:
        c.close()
    sess = only_session(p.db)
    assert sess["outcome"] == "quit"
    assert export_eml(p.db, sess["id"]) == b"".join(chunks)
    m = show_json(p.db, sess["id"])["messages"][0]
    assert m["transport"] == "bdat"
    assert m["size"] == sum(map(len, chunks))
    assert m["subject"] == "bdat"
    assert m["complete"] in (True, 1)


def test_bdat_relayed_to_chunking_upstream(mini_factory, smtptap):
    up = mini_factory(caps=("PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME"))
    p = smtptap(upstream=up.addr)
    chunks = [BINARY_CHUNK_1, BINARY_CHUNK_2, BINARY_CHUNK_3]
    c = p.connect()
    try:
        bdat_conversation(c, chunks, pipelined=True)
    finally:
        c.close()
    sess = only_session(p.db)
    assert len(up.messages) == 1
    assert up.messages[0]["transport"] == "bdat"
    assert up.messages[0]["content"] == b"".join(chunks)
    assert export_eml(p.db, sess["id"]) == b"".join(chunks)
    m = show_json(p.db, sess["id"])["messages"][0]
    assert m["upstream_code"] == 250 and "queued as MINI1" in m["upstream_reply"]


def test_bdat_relayed_to_smtp_sink(smtp_sink, smtptap):
    c = RawClient("127.0.0.1", smtp_sink.port)
    try:
        c.reply()
        _, lines, _ = c.cmd("EHLO probe")
        c.cmd("QUIT")
    finally:
        c.close()
    if "CHUNKING" not in ehlo_keywords(lines):
        pytest.skip("this smtp-sink does not advertise CHUNKING (EHLO: %s); "
                    "test_bdat_relayed_to_chunking_upstream covers BDAT relaying" % ", ".join(lines[1:]))
    p = smtptap(upstream=smtp_sink.addr)
    chunks = [BINARY_CHUNK_1, BINARY_CHUNK_2, BINARY_CHUNK_3]
    c = p.connect()
    try:
        bdat_conversation(c, chunks)
    finally:
        c.close()
    sess = only_session(p.db)
    assert export_eml(p.db, sess["id"]) == b"".join(chunks)


def test_sink_helo_rset_vrfy_unknown(smtptap):
    """The capture server answers the rest of RFC 5321 sensibly and records it."""
    p = smtptap(sink=True)
    c = p.connect()
    try:
        c.reply()
        assert c.cmd("HELO old.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("DATA")[0] in (503, 554)
        assert c.cmd("VRFY someone")[0] in (250, 251, 252)
        assert c.cmd("XYZZY")[0] in (500, 502)
        assert c.cmd("NOOP")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    assert doc["messages"] == []
    assert sess["outcome"] == "quit"


def test_sink_dsn_and_size_params_recorded(smtptap):
    p = smtptap(sink=True)
    msg = b"Subject: dsn\r\n\r\nbody\r\n"
    c = p.connect()
    try:
        c.reply()
        c.cmd("EHLO dsn.example")
        assert c.cmd("MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159 SIZE=%d BODY=8BITMIME" % len(msg))[0] == 250
        assert c.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.org")[0] == 250
        assert c.cmd("RCPT TO:<c@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(stuff_data(msg))
        assert c.reply()[0] == 250
        c.cmd("QUIT")
    finally:
        c.close()
    sess = only_session(p.db)
    m = show_json(p.db, sess["id"])["messages"][0]
    assert m["mail_params"] == "RET=HDRS ENVID=QQ314159 SIZE=%d BODY=8BITMIME" % len(msg)
    assert m["rcpt_to"][0]["params"] == "NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.org"
    assert not m["rcpt_to"][1]["params"]
    assert m["size"] == len(msg)
