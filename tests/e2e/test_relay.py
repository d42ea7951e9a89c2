"""Relay mode is transparent: same replies, same bytes, all recorded."""

import smtplib
import subprocess
from email.message import EmailMessage

import pytest

from conftest import (RawClient, commands, content_queue_id, export_eml, only_session, reply_events_seen_by_client,
                      reply_lines, sample_message, show_json, show_raw, stuff_data, wait_sessions)


def smtplib_transcript(host, port, msg, rcpts, mail_from="alice@example.com", mail_options=()):
    """Send one message with smtplib and return every (code, text) reply."""
    out = []
    s = smtplib.SMTP(timeout=30)
    try:
        out.append(("connect",) + s.connect(host, port))
        out.append(("ehlo",) + s.ehlo("client.example"))
        out.append(("mail",) + s.mail(mail_from, list(mail_options)))
        for r in rcpts:
            out.append(("rcpt",) + s.rcpt(r))
        out.append(("data",) + s.data(msg))
        out.append(("quit",) + s.quit())
    finally:
        s.close()
    return out


def test_smtplib_direct_vs_proxied_identical(aio, smtptap):
    """The same smtplib conversation directly and through smtptap: identical
    replies; the upstream gets identical content; export --eml gives it back."""
    msg = sample_message("transparent")
    rcpts = ["bob@example.org", "carol@example.org"]
    direct = smtplib_transcript(aio.host, aio.port, msg, rcpts)
    p = smtptap(upstream=aio.addr)
    proxied = smtplib_transcript(p.host, p.port, msg, rcpts)
    assert proxied == direct
    envs = aio.wait_envelopes(2)
    assert envs[0]["content"] == msg
    assert envs[1]["content"] == envs[0]["content"]
    assert envs[1]["rcpt_tos"] == rcpts and envs[1]["mail_from"] == "alice@example.com"

    s = only_session(p.db)
    assert export_eml(p.db, s["id"]) == msg
    doc = show_json(p.db, s["id"])
    sess = doc["session"]
    assert sess["id"] == s["id"]
    assert sess["mode"] == "relay"
    assert sess["upstream"] == aio.addr
    assert sess["upstream_addr"] == aio.addr
    assert sess["outcome"] == "quit"
    assert sess["client_tls"] is None and sess["upstream_tls"] is None
    assert sess["client"].startswith("127.0.0.1:")
    assert sess["listener"] == "127.0.0.1:%d" % p.port
    assert sess["started_at"] and sess["ended_at"]
    # the documented fields are all there
    assert set(sess) >= {"id", "started_at", "ended_at", "client", "upstream", "upstream_addr", "listener", "mode",
                         "client_tls", "upstream_tls", "outcome", "detail"}, sorted(sess)
    for e in doc["events"]:
        assert set(e) >= {"seq", "t_us", "side", "kind", "flags", "message_id"}, e
        assert e["kind"] in ("connect", "command", "reply", "data", "auth", "action", "close", "tls"), e
        assert isinstance(e["flags"], list), e
        if e["kind"] == "data":
            assert "bytes" in e and e["message_id"] == doc["messages"][0]["id"], e
        else:
            assert "text" in e, e
    data_bytes = sum(e["bytes"] for e in doc["events"] if e["kind"] == "data")
    assert data_bytes == len(stuff_data(msg)), "data events should hold the wire bytes (stuffed, with the end)"
    for m in doc["messages"]:
        assert set(m) >= {"id", "idx", "mail_from", "mail_params", "rcpt_to", "size", "subject", "from", "to",
                          "message_id", "date", "upstream_reply", "upstream_code", "complete", "transport"}, sorted(m)
        for r in m["rcpt_to"]:
            assert set(r) >= {"address", "params", "reply_code", "reply"}, r
    # events in order, numbered from 1
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == list(range(1, len(seqs) + 1))
    ts = [e["t_us"] for e in doc["events"]]
    assert ts == sorted(ts)
    assert {e["side"] for e in doc["events"]} <= {"client", "upstream", "proxy"}
    # the replies the client saw, as recorded, are the ones smtplib got
    got = [" ".join(reply_lines(e["text"])) for e in reply_events_seen_by_client(doc)]
    assert [int(g[:3]) for g in got] == [220, 250, 250, 250, 250, 354, 250, 221], got
    del got[5]  # smtplib's data() returns only the final reply, not the 354
    for (what, code, text), rec in zip(proxied, got):
        assert rec.startswith(str(code)), (what, code, rec)
        last = text.decode("utf-8", "replace").split("\n")[-1]
        assert last in rec, (what, text, rec)
    cmds = [reply_lines(e["text"])[0].split(" ")[0].upper() for e in commands(doc)]
    assert cmds == ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    # the message summary
    assert len(doc["messages"]) == 1
    m = doc["messages"][0]
    assert m["idx"] == 1
    assert m["mail_from"] == "alice@example.com"
    assert [r["address"] for r in m["rcpt_to"]] == rcpts
    assert [r["reply_code"] for r in m["rcpt_to"]] == [250, 250]
    assert m["size"] == len(msg)
    assert m["complete"] is True or m["complete"] == 1
    assert m["transport"] == "data"
    assert m["subject"] == "Gr\u00fc\u00dfe transparent"
    assert "alice@example.com" in m["from"] and "Alice" in m["from"]
    assert "bob@example.org" in m["to"]
    assert m["message_id"] == "<transparent@example.com>"
    assert m["date"] == "Mon, 02 Jan 2023 10:00:00 +0000"
    assert m["upstream_code"] == 250
    assert content_queue_id(msg) in m["upstream_reply"]


def test_raw_bytes_both_directions(mini_factory, smtptap):
    """Byte level: the upstream receives exactly what the client sent, the
    client exactly what the upstream sent, and show --raw gives both back."""
    up = mini_factory(caps=("PIPELINING", "8BITMIME", "SIZE 1000000", "ENHANCEDSTATUSCODES", "X-ODD   spacing "))
    p = smtptap(upstream=up.addr)
    c = p.connect()
    sent = b""
    msg = sample_message("bytes", extra_body=b"bare\nLF and bare\rCR\r\n\x01\x7f\xff\r\n")

    def send(b):
        nonlocal sent
        sent += b
        c.send(b)

    try:
        assert c.reply()[0] == 220
        send(b"EHLO raw.example\r\n")
        code, lines, _ = c.reply()
        assert code == 250 and "X-ODD   spacing " in lines, lines
        send(b"mail from:<alice@example.com> BODY=8BITMIME\r\n")
        assert c.reply()[0] == 250
        send(b"RCPT TO:<bob@example.org>\r\n")
        assert c.reply()[0] == 250
        send(b"NOOP\r\n")
        assert c.reply()[0] == 250
        send(b"DATA\r\n")
        assert c.reply()[0] == 354
        send(stuff_data(msg))
        code, lines, _ = c.reply()
        assert code == 250 and lines == ["2.0.0 queued as MINI1"]
        send(b"QUIT\r\n")
        assert c.reply()[0] == 221
        c.read_until_closed()
    finally:
        c.close()
    s = only_session(p.db)
    assert up.received() == [sent]
    assert up.messages[0]["content"] == msg
    assert show_raw(p.db, s["id"], "client") == sent
    assert show_raw(p.db, s["id"], "upstream") == c.received
    assert export_eml(p.db, s["id"]) == msg
    doc = show_json(p.db, s["id"])
    assert doc["messages"][0]["mail_params"] == "BODY=8BITMIME"
    assert doc["messages"][0]["size"] == len(msg)


def test_rejected_recipient_recorded_per_recipient(aio, smtptap):
    p = smtptap(upstream=aio.addr)
    msg = sample_message("reject")
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        refused = s.sendmail("alice@example.com", ["bob@example.org", "nouser@example.org", "carol@example.org"], msg)
        s.quit()
    finally:
        s.close()
    assert refused == {"nouser@example.org": (550, b"5.1.1 no such user")}
    env = aio.wait_envelopes(1)[0]
    assert env["rcpt_tos"] == ["bob@example.org", "carol@example.org"]
    assert env["content"] == msg
    sess = only_session(p.db)
    m = show_json(p.db, sess["id"])["messages"][0]
    assert [(r["address"], r["reply_code"]) for r in m["rcpt_to"]] == [
        ("bob@example.org", 250), ("nouser@example.org", 550), ("carol@example.org", 250)]
    assert "no such user" in m["rcpt_to"][1]["reply"]
    assert "5.1.1" in m["rcpt_to"][1]["reply"]
    assert export_eml(p.db, sess["id"]) == msg


def test_smtputf8_send_message(aio, smtptap):
    p = smtptap(upstream=aio.addr)
    em = EmailMessage()
    em["From"] = "J\u00f6rg <j\u00f6rg@b\u00fccher.example>"
    em["To"] = "\u00e9lo\u00efse@exempl\u00e9.example"
    em["Subject"] = "Unicode \u2603 subject"
    em.set_content("Bodies can be UTF-8 too: \u00e4\u00f6\u00fc \u2603\n.and a dot\n")
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        assert s.has_extn("smtputf8") or s.ehlo() and s.has_extn("smtputf8")
        s.send_message(em)
        s.quit()
    finally:
        s.close()
    env = aio.wait_envelopes(1)[0]
    assert env["mail_from"] == "j\u00f6rg@b\u00fccher.example"
    assert env["rcpt_tos"] == ["\u00e9lo\u00efse@exempl\u00e9.example"]
    assert "SMTPUTF8" in env["mail_options"]
    sess = only_session(p.db)
    assert export_eml(p.db, sess["id"]) == env["content"]
    m = show_json(p.db, sess["id"])["messages"][0]
    assert m["mail_from"] == env["mail_from"]
    assert m["rcpt_to"][0]["address"] == env["rcpt_tos"][0]
    assert "SMTPUTF8" in (m["mail_params"] or "")
    assert m["subject"] == "Unicode \u2603 subject"


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_pipelining_one_write(mode, aio, smtptap):
    p = smtptap(upstream=aio.addr) if mode == "relay" else smtptap(sink=True)
    bad = "nouser@example.org" if mode == "relay" else "carol@example.org"
    c = p.connect()
    msg = sample_message("pipe")
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO pipe.example")[0] == 250
        c.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nRCPT TO:<" + bad.encode() +
               b">\r\nDATA\r\n")
        codes = [c.reply()[0] for _ in range(4)]
        want = [250, 250, 550, 354] if mode == "relay" else [250, 250, 250, 354]
        assert codes == want
        # the message and QUIT in one write too
        c.send(stuff_data(msg) + b"QUIT\r\n")
        assert c.reply()[0] == 250
        assert c.reply()[0] == 221
        c.read_until_closed()
    finally:
        c.close()
    sess = only_session(p.db)
    assert sess["outcome"] == "quit"
    doc = show_json(p.db, sess["id"])
    cmds = [reply_lines(e["text"])[0] for e in commands(doc)]
    assert cmds == ["EHLO pipe.example", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>",
                    "RCPT TO:<%s>" % bad, "DATA", "QUIT"]
    replies = [int(reply_lines(e["text"])[0][:3]) for e in reply_events_seen_by_client(doc)]
    assert replies == [220, 250] + want + [250, 221]
    m = doc["messages"][0]
    assert [r["reply_code"] for r in m["rcpt_to"]] == want[1:3]
    assert export_eml(p.db, sess["id"]) == msg
    if mode == "relay":
        assert aio.wait_envelopes(1)[0]["content"] == msg


def test_starttls_removed_and_answered_454(mini_factory, smtptap):
    up = mini_factory(caps=("PIPELINING", "STARTTLS", "8BITMIME", "ENHANCEDSTATUSCODES"))
    p = smtptap(upstream=up.addr, args=["--client-tls", "off", "--upstream-tls", "off"])
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        code, lines, raw = c.cmd("EHLO tls.example")
        assert code == 250
        assert lines == ["mini.test greets you", "PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
        assert raw == (b"250-mini.test greets you\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                       b"250 ENHANCEDSTATUSCODES\r\n")
        code, lines, _ = c.cmd("STARTTLS")
        assert code == 454, lines
        # the session goes on in plaintext
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(stuff_data(b"Subject: after 454\r\n\r\nstill plaintext\r\n"))
        assert c.reply()[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    sess = only_session(p.db)
    got = up.received()[0]
    assert b"STARTTLS" not in got.upper(), got
    assert up.messages[0]["content"] == b"Subject: after 454\r\n\r\nstill plaintext\r\n"
    doc = show_json(p.db, sess["id"])
    st = [e for e in doc["events"] if e["kind"] == "command" and "STARTTLS" in (e["text"] or "").upper()]
    assert len(st) == 1 and "dropped" in st[0]["flags"], st
    inj = [e for e in doc["events"] if e["kind"] == "reply" and e["side"] == "proxy" and
           (e["text"] or "").startswith("454")]
    assert len(inj) == 1 and "injected" in inj[0]["flags"], inj
    # the upstream's EHLO reply is recorded as it was, marked altered
    ehlo = [e for e in doc["events"] if e["kind"] == "reply" and e["side"] == "upstream" and
            "STARTTLS" in (e["text"] or "")]
    assert len(ehlo) == 1 and "altered" in ehlo[0]["flags"], ehlo
    assert show_raw(p.db, sess["id"], "upstream").startswith(up.greeting + b"250-mini.test greets you\r\n"
                                                            b"250-PIPELINING\r\n250-STARTTLS\r\n")


def test_smtp_sink_direct_vs_proxied_bytes(smtp_sink, smtptap):
    """Postfix's smtp-sink (odd empty last EHLO line, XCLIENT, ...): the client
    gets byte-identical replies through smtptap."""
    script = [b"EHLO sinkcmp.example", b"MAIL FROM:<a@example.com> SIZE=100", b"RCPT TO:<b@example.org>",
              b"VRFY b", b"RSET", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.org>", b"DATA"]
    msg = sample_message("sinkcmp")

    def converse(port):
        c = RawClient("127.0.0.1", port)
        try:
            c.reply()
            for line in script:
                c.cmd(line)
            c.send(stuff_data(msg))
            c.reply()
            c.cmd(b"QUIT")
            c.read_until_closed()
        finally:
            c.close()
        return c.received

    direct = converse(smtp_sink.port)
    p = smtptap(upstream=smtp_sink.addr)
    proxied = converse(p.port)
    assert proxied == direct
    sess = only_session(p.db)
    assert show_raw(p.db, sess["id"], "upstream") == direct
    assert export_eml(p.db, sess["id"]) == msg


def test_several_messages_rset_and_null_sender(aio, smtptap):
    p = smtptap(upstream=aio.addr)
    msgs = [sample_message("m%d" % i) for i in range(3)]
    c = p.connect()
    try:
        c.reply()
        c.cmd("EHLO several.example")
        # an aborted transaction first
        assert c.cmd("MAIL FROM:<x@example.com>")[0] == 250
        assert c.cmd("RSET")[0] == 250
        for i, m in enumerate(msgs):
            frm = "" if i == 1 else "alice@example.com"
            assert c.cmd("MAIL FROM:<%s>" % frm)[0] == 250
            assert c.cmd("RCPT TO:<bob@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(stuff_data(m))
            assert c.reply()[0] == 250
        c.cmd("QUIT")
    finally:
        c.close()
    envs = aio.wait_envelopes(3)
    assert [e["content"] for e in envs] == msgs
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    assert [m["idx"] for m in doc["messages"]] == [1, 2, 3]
    assert [m["mail_from"] for m in doc["messages"]] == ["alice@example.com", "", "alice@example.com"]
    for i, m in enumerate(msgs):
        assert export_eml(p.db, sess["id"], message=i + 1) == m


def test_upstream_by_host_name(aio, smtptap):
    """--upstream localhost:PORT: the name is resolved (without blocking) and
    the relay works."""
    p = smtptap(upstream="localhost:%d" % aio.port)
    out = smtplib_transcript(p.host, p.port, b"Subject: by name\r\n\r\nhi\r\n", ["bob@example.org"])
    assert [x[1] for x in out] == [220, 250, 250, 250, 250, 221]
    assert aio.wait_envelopes(1)[0]["content"] == b"Subject: by name\r\n\r\nhi\r\n"
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    assert doc["session"]["upstream"] == "localhost:%d" % aio.port
    assert doc["session"]["upstream_addr"] == "127.0.0.1:%d" % aio.port


def test_upstream_rejects_data(aiosmtpd_factory, smtptap):
    up = aiosmtpd_factory()
    up.handler.reject_data = b"REJECT-ME"
    p = smtptap(upstream=up.addr)
    bad = b"Subject: spam\r\n\r\nREJECT-ME please\r\n"
    good = b"Subject: fine\r\n\r\nok\r\n"
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        with pytest.raises(smtplib.SMTPDataError) as ei:
            s.sendmail("a@example.com", ["b@example.org"], bad)
        assert ei.value.smtp_code == 554
        s.sendmail("a@example.com", ["b@example.org"], good)
        s.quit()
    finally:
        s.close()
    sess = only_session(p.db)
    ms = show_json(p.db, sess["id"])["messages"]
    assert [m["upstream_code"] for m in ms] == [554, 250]
    assert "5.6.0 content rejected" in ms[0]["upstream_reply"]
    assert ms[0]["complete"] in (True, 1)
    assert export_eml(p.db, sess["id"], message=1) == bad
    assert export_eml(p.db, sess["id"], message=2) == good


@pytest.mark.parametrize("greeting", [
    b"220-mini.test ESMTP\r\n220-multi-line greeting\r\n220 ready\r\n",
    b"554 5.3.2 mini.test does not want you\r\n",
], ids=["multiline", "refusal"])
def test_greeting_passed_through(greeting, mini_factory, smtptap):
    up = mini_factory(greeting=greeting)
    p = smtptap(upstream=up.addr)
    c = p.connect()
    try:
        code, lines, raw = c.reply()
        assert raw == greeting
        assert c.cmd("QUIT")[0] == 221
        c.read_until_closed()
    finally:
        c.close()
    sess = only_session(p.db)
    assert show_raw(p.db, sess["id"], "upstream") == c.received


def test_upstream_ipv6_literal(mini_factory, smtptap):
    try:
        up = mini_factory(host="::1")
    except OSError as e:
        pytest.skip("no IPv6 loopback here (%s)" % e)
    p = smtptap(upstream=up.addr)
    c = p.connect()
    msg = b"Subject: over IPv6\r\n\r\nhello\r\n"
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO v6.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(stuff_data(msg))
        assert c.reply()[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    assert up.messages[0]["content"] == msg
    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    assert doc["session"]["upstream_addr"] == up.addr
    assert export_eml(p.db, sess["id"]) == msg


def test_starttls_real_upstream(aiosmtpd_factory, smtptap, tmp_path, tools_required):
    """A real upstream offering STARTTLS (aiosmtpd with a certificate) behind
    --client-tls off: the client does not see STARTTLS; msmtp requiring
    STARTTLS gives up without sending mail; smtplib gets 454 for STARTTLS
    and goes on in plaintext.  (test_tls.py covers the default, transparent
    STARTTLS.)"""
    tools_required("msmtp", "openssl")
    import ssl
    key, cert = str(tmp_path / "key.pem"), str(tmp_path / "cert.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    assert r.returncode == 0, r.stdout
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    up = aiosmtpd_factory(tls_context=ctx)
    # the upstream itself offers STARTTLS
    s = smtplib.SMTP(up.host, up.port, timeout=30)
    try:
        s.ehlo("probe")
        assert s.has_extn("starttls")
        s.quit()
    finally:
        s.close()
    p = smtptap(upstream=up.addr, args=["--client-tls", "off", "--upstream-tls", "off"])
    r = subprocess.run(["msmtp", "--host=%s" % p.host, "--port=%d" % p.port, "--from=a@example.com", "--auth=off",
                        "--tls=on", "--tls-starttls=on", "--tls-certcheck=off", "--timeout=30", "--",
                        "b@example.org"], input=b"Subject: must not be sent\r\n\r\nsecret\r\n",
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = r.stdout.decode("utf-8", "replace")
    assert r.returncode != 0, out
    assert "STARTTLS" in out.upper(), out  # msmtp says the server does not offer it
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        s.ehlo("plain.example")
        assert not s.has_extn("starttls"), s.esmtp_features
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.starttls()
        code, _ = s.docmd("STARTTLS")
        assert code == 454
        s.sendmail("a@example.com", ["b@example.org"], b"Subject: plaintext\r\n\r\nafter all\r\n")
        s.quit()
    finally:
        s.close()
    envs = up.wait_envelopes(1)
    assert [e["content"] for e in envs] == [b"Subject: plaintext\r\n\r\nafter all\r\n"]
    ss = wait_sessions(p.db, 2)
    assert export_eml(p.db, ss[1]["id"]) == envs[0]["content"]
