"""`smtptap replay ID --to HOST:PORT`: the client side of a recorded session
sent again, through the session machinery, to a server; --diff compares each
reply with the recorded one.

A session is recorded through a proxy first (which is then stopped: the
replay records into the same database), then replayed to a fresh server.
What the server receives is checked directly: the same message bytes, the
same commands in the same batches (a scripted upstream keeps each read).
"""

import json
import os
import re
import time

import pytest

from conftest import (RawClient, export_eml, only_session, run_cli, sample_message, sessions_list, show_json,
                      stuff_data, wait_sessions)
from scripted import close, expect, expect_closed, send
from test_tls import client_phpmailer, tls_proxy  # noqa: F401 (a fixture)
from tlspeers import AUTH_PASS, AUTH_USER, pki, tls_upstream  # noqa: F401 (fixtures)

FROM = "alice@example.com"
TO = "bob@example.org"


def replay(db, sid, to, *args, expect=0):
    return run_cli("replay", sid, "--db", db, "--to", to, "--reply-timeout", 20, *args, expect=expect)


def replay_json(db, sid, to, *args, expect=0):
    return replay(db, sid, to, "--json", *args, expect=expect).json()


def replay_session(db, original):
    """The session recorded as a replay of `original` (the newest)."""
    ss = [s for s in sessions_list(db) if s.get("replay_of") == original]
    assert ss, "no session is recorded as a replay of %s: %r" % (original, sessions_list(db))
    return ss[-1]


def raw_send_pipelined(port, msg, batch_rcpts=(TO, "carol@example.org")):
    """A client that pipelines MAIL, RCPTs and DATA in one write."""
    c = RawClient("127.0.0.1", port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO pipeliner.example")[0] == 250
        batch = "MAIL FROM:<%s>\r\n" % FROM + "".join("RCPT TO:<%s>\r\n" % r for r in batch_rcpts) + "DATA\r\n"
        c.send(batch.encode())
        codes = [c.reply()[0] for _ in range(len(batch_rcpts) + 2)]
        assert codes[-1] == 354, codes
        c.send(stuff_data(msg))
        assert c.reply()[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()


def batch_upstream_script(nrcpt=2):
    """An upstream that answers MAIL, the RCPTs and DATA only once all of them
    arrived: a client that waits for the reply to MAIL never gets one."""
    rcpts = rb"RCPT TO:<[^\r\n]*\r\n" * nrcpt
    return [
        send(b"220 up.test ESMTP\r\n"),
        expect(rb"EHLO [^\r\n]*\r\n", name="ehlo"),
        send(b"250-up.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
        expect(rb"MAIL FROM:<[^\r\n]*\r\n" + rcpts + rb"DATA\r\n", name="batch"),
        send(b"250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * nrcpt + b"354 go ahead\r\n"),
        expect(rb"\r\n\.\r\n", name="content"),
        send(b"250 2.0.0 queued\r\n"),
        expect(rb"QUIT\r\n"),
        send(b"221 2.0.0 bye\r\n"),
        expect_closed(),
    ]


def read_holding(conn, needle):
    reads = [r for r in conn.reads if needle in r]
    assert len(reads) == 1, "%r arrived over %d reads: %r" % (needle, len(reads), conn.reads)
    return reads[0]


# --------------------------------------------------------------------------
# PHPMailer over STARTTLS with AUTH: the first case


def record_phpmailer(tls_proxy, tls_upstream, pki, tmp_path, tools_required):  # noqa: F811
    tools_required("php")
    if not os.path.exists("/usr/share/php/libphp-phpmailer/autoload.php"):
        pytest.fail("PHPMailer is not installed [run tools/install-deps.sh]", pytrace=False)
    up = tls_upstream("starttls", auth=True)
    p = tls_proxy(upstream=up.addr)
    rc, out, _ = client_phpmailer(p.port, "starttls", p.cafile, tmp_path)
    assert rc == 0, "PHPMailer failed through smtptap:\n%s" % out
    env = up.wait_envelopes(1)[0]
    sess = only_session(p.db)
    p.stop()
    return p, sess, env


def test_replay_phpmailer_starttls(tls_proxy, tls_upstream, pki, tmp_path, tools_required):  # noqa: F811
    p, sess, env = record_phpmailer(tls_proxy, tls_upstream, pki, tmp_path, tools_required)
    doc = show_json(p.db, sess["id"])
    assert doc["session"]["upstream_tls"]["mode"] == "starttls"
    assert any("redacted" in e["flags"] for e in doc["events"]), "the AUTH exchange was not redacted"

    fresh = tls_upstream("starttls", auth=True)
    r = replay(p.db, sess["id"], fresh.addr, "--diff", "--auth", "%s:%s" % (AUTH_USER, AUTH_PASS),
               "--upstream-ca", pki.ca, "--upstream-sni", "localhost")
    got = fresh.wait_envelopes(1)[0]
    # the same message bytes, the same envelope, authenticated again
    assert got["content"] == env["content"] == export_eml(p.db, sess["id"])
    assert (got["mail_from"], got["rcpt_tos"]) == (env["mail_from"], env["rcpt_tos"])
    assert fresh.auth_seen and fresh.auth_seen[-1][1:] == (AUTH_USER.encode(), AUTH_PASS.encode())
    assert fresh.connections()[-1]["mode"] == "starttls"
    assert re.search(r"0 of \d+ replies differ", r.text), r.text

    # recorded as a replay, with the upstream leg's TLS, and no password
    rs = replay_session(p.db, sess["id"])
    assert rs["mode"] == "replay"
    rdoc = show_json(p.db, rs["id"])
    assert rdoc["session"]["replay_of"] == sess["id"]
    assert rdoc["session"]["upstream_tls"]["mode"] == "starttls"
    assert rdoc["session"]["upstream_tls"]["verified"] is True
    assert rdoc["session"]["client_tls"] is None  # the replayed client is in-process
    assert AUTH_PASS.encode() not in json.dumps(rdoc).encode()
    # the original leads to its replay
    odoc = show_json(p.db, sess["id"])
    assert [x["id"] for x in odoc["session"]["replays"]] == [rs["id"]]
    text = run_cli("show", sess["id"], "--db", p.db).text
    assert re.search(r"\nreplayed as +session %d\n" % rs["id"], text), text
    text = run_cli("show", rs["id"], "--db", p.db).text
    assert re.search(r"\nreplay of +session %d\n" % sess["id"], text), text
    table = run_cli("sessions", "--db", p.db).text
    assert re.search(r"\(replay of %d\)" % sess["id"], table), table


def test_replay_redacted_without_auth_stops_before_connecting(tls_proxy, tls_upstream, pki, tmp_path,  # noqa: F811
                                                              tools_required):
    p, sess, _ = record_phpmailer(tls_proxy, tls_upstream, pki, tmp_path, tools_required)
    fresh = tls_upstream("starttls", auth=True)
    r = replay(p.db, sess["id"], fresh.addr, "--diff", "--upstream-ca", pki.ca, expect=2)
    assert "redacted" in r.err and "--auth USER:PASS" in r.err, r.err
    assert len([l for l in r.err.splitlines() if l.strip()]) == 1, r.err
    assert fresh.connections() == [], "the replay connected although it could not authenticate"
    assert [s for s in sessions_list(p.db) if s.get("replay_of")] == []


def test_replay_diff_rejected_recipient(tls_proxy, tls_upstream, pki, tmp_path, tools_required):  # noqa: F811
    """The new server rejects the recipient: --diff exits 1 and shows 250
    against 550 at the RCPT; the message is not sent (DATA was refused)."""
    p, sess, env = record_phpmailer(tls_proxy, tls_upstream, pki, tmp_path, tools_required)
    strict = tls_upstream("starttls", auth=True, reject=[TO])
    args = ["--auth", "%s:%s" % (AUTH_USER, AUTH_PASS), "--upstream-ca", pki.ca, "--upstream-sni", "localhost"]
    r = replay(p.db, sess["id"], strict.addr, "--diff", *args, expect=1)
    rcpt = [l for l in r.text.splitlines() if "RCPT TO:<%s>" % TO in l]
    assert len(rcpt) == 1, r.text
    assert rcpt[0].startswith("!") and re.search(r"\b250 2\.1\.5\s+550 5\.1\.1\b", rcpt[0]), rcpt[0]
    assert "recorded: 250" in r.text and "replay:   550" in r.text, r.text
    assert strict.envelopes == []

    doc = replay_json(p.db, sess["id"], strict.addr, "--diff", *args, expect=1)
    (one,) = doc["replays"]
    assert one["equal"] is False and one["differences"] >= 1 and one["error"] is None
    (u,) = [u for u in one["units"] if u["command"].upper().startswith("RCPT TO:")]
    assert (u["recorded"]["code"], u["recorded"]["enhanced"]) == (250, "2.1.5"), u
    assert (u["replay"]["code"], u["replay"]["enhanced"]) == (550, "5.1.1"), u
    assert u["differs"] is True and u["diff"] == ["code", "enhanced"], u
    summary = doc["summary"]
    assert {k: summary[k] for k in ("sessions", "equal", "differing", "failed")} == \
        {"sessions": 1, "equal": 0, "differing": 1, "failed": 0}


# --------------------------------------------------------------------------
# batches: pipelining, BDAT


def test_replay_pipelined_batches_relay(smtptap, scripted):
    msg = sample_message("pipelined")
    up = scripted.server(batch_upstream_script())
    p = smtptap(upstream=up.addr)
    raw_send_pipelined(p.port, msg)
    up[0].wait()
    sess = only_session(p.db)
    p.stop()

    again = scripted.server(batch_upstream_script())
    r = replay(p.db, sess["id"], again.addr, "--diff")
    again[0].wait()
    assert re.search(r"0 of \d+ replies differ", r.text), r.text
    conn = again[0]
    # EHLO alone (the client waited for its reply), then MAIL..DATA together
    assert read_holding(conn, b"EHLO") == up[0].got["ehlo"]
    batch = read_holding(conn, b"MAIL FROM")
    assert batch == up[0].got["batch"], (batch, conn.reads)
    assert conn.got["content"] == up[0].got["content"]
    assert unstuffed(conn.got["content"]) == msg


def unstuffed(wire):
    from conftest import unstuff_data
    return unstuff_data(wire)


def test_replay_pipelined_batches_from_sink(smtptap, scripted):
    """In sink mode the replies are made at once, between the commands:
    the "pipelined" flag keeps the client's batch."""
    msg = sample_message("sink-pipelined")
    p = smtptap(sink=True)
    raw_send_pipelined(p.port, msg)
    sess = only_session(p.db)
    p.stop()
    doc = show_json(p.db, sess["id"])
    cmds = [e for e in doc["events"] if e["side"] == "client" and e["kind"] == "command"]
    flagged = [e["text"] if e.get("text") else e.get("raw") for e in cmds if "pipelined" in e["flags"]]
    assert len(flagged) == 3, cmds  # the RCPTs and DATA follow MAIL without waiting
    assert "pipelined" not in cmds[0]["flags"] and "pipelined" not in cmds[1]["flags"], cmds[:2]

    up = scripted.server(batch_upstream_script())
    replay(p.db, sess["id"], up.addr)
    up[0].wait()
    assert read_holding(up[0], b"MAIL FROM") == up[0].got["batch"], up[0].reads
    assert unstuffed(up[0].got["content"]) == msg


def one_by_one_script():
    return [
        send(b"220 up.test ESMTP\r\n"),
        expect(rb"EHLO [^\r\n]*\r\n"),
        send(b"250-up.test\r\n250 PIPELINING\r\n"),
        expect(rb"MAIL FROM:[^\r\n]*\r\n"),
        send(b"250 2.1.0 ok\r\n"),
        expect(rb"RCPT TO:[^\r\n]*\r\n"),
        send(b"250 2.1.5 ok\r\n"),
        expect(rb"DATA\r\n"),
        send(b"354 go ahead\r\n"),
        expect(rb"\r\n\.\r\n"),
        send(b"250 2.0.0 queued\r\n"),
        expect(rb"QUIT\r\n"),
        send(b"221 2.0.0 bye\r\n"),
        expect_closed(),
    ]


def test_replay_waits_where_the_client_waited(smtptap, scripted):
    """A client that waits for each reply, recorded in sink mode (replies
    between every two commands): replayed one command per batch."""
    p = smtptap(sink=True)
    c = RawClient("127.0.0.1", p.port)
    assert c.reply()[0] == 220
    for line in ("EHLO waiter.example", "MAIL FROM:<%s>" % FROM, "RCPT TO:<%s>" % TO):
        assert c.cmd(line)[0] == 250
    assert c.cmd("DATA")[0] == 354
    c.send(stuff_data(b"Subject: one by one\r\n\r\nbody\r\n"))
    assert c.reply()[0] == 250
    assert c.cmd("QUIT")[0] == 221
    c.close()
    sess = only_session(p.db)
    p.stop()
    doc = show_json(p.db, sess["id"])
    assert not [e for e in doc["events"] if "pipelined" in e["flags"]], "a waiting client flagged as pipelining"

    up = scripted.server(one_by_one_script())
    replay(p.db, sess["id"], up.addr)
    up[0].wait()
    for verb in (b"EHLO", b"MAIL FROM", b"RCPT TO", b"DATA\r\n", b"QUIT"):
        r = read_holding(up[0], verb)
        assert r.count(b"\r\n") == 1 or verb == b"DATA\r\n", "%r shares a read: %r" % (verb, up[0].reads)


def bdat_script():
    return [
        send(b"220 up.test ESMTP\r\n"),
        expect(rb"EHLO [^\r\n]*\r\n"),
        send(b"250-up.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"),
        expect(rb"MAIL FROM:<[^\r\n]*\r\nRCPT TO:<[^\r\n]*\r\nBDAT 12\r\nchunk one.\r\nBDAT 11 LAST\r\nchunk two\r\n",
               name="batch"),
        send(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 12 octets\r\n250 2.0.0 queued\r\n"),
        expect(rb"QUIT\r\n"),
        send(b"221 2.0.0 bye\r\n"),
        expect_closed(),
    ]


def test_replay_bdat_batch(smtptap, scripted):
    up = scripted.server(bdat_script())
    p = smtptap(upstream=up.addr)
    c = RawClient("127.0.0.1", p.port)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO chunker.example")[0] == 250
    c.send(b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nBDAT 12\r\nchunk one.\r\nBDAT 11 LAST\r\nchunk two\r\n"
           % (FROM.encode(), TO.encode()))
    assert [c.reply()[0] for _ in range(4)] == [250] * 4
    assert c.cmd("QUIT")[0] == 221
    c.close()
    up[0].wait()
    sess = only_session(p.db)
    p.stop()

    again = scripted.server(bdat_script())
    r = replay(p.db, sess["id"], again.addr, "--diff")
    again[0].wait()
    assert re.search(r"0 of \d+ replies differ", r.text), r.text
    assert read_holding(again[0], b"BDAT 12") == up[0].got["batch"], again[0].reads


# --------------------------------------------------------------------------
# --strict, --timing, errors


def test_replay_strict_compares_text(smtptap, mini_factory):
    a = mini_factory(greeting=b"220 first.test ESMTP ready\r\n")
    p = smtptap(upstream=a.addr)
    c = RawClient("127.0.0.1", p.port)
    assert c.reply()[0] == 220
    assert c.cmd("HELO strict.example")[0] == 250
    assert c.cmd("QUIT")[0] == 221
    c.close()
    sess = only_session(p.db)
    p.stop()
    b = mini_factory(greeting=b"220 second.test ESMTP ready\r\n")
    replay(p.db, sess["id"], b.addr, "--diff")
    r = replay(p.db, sess["id"], b.addr, "--diff", "--strict", expect=1)
    (line,) = [l for l in r.text.splitlines() if "(greeting)" in l]
    assert line.startswith("!") and "text differs" in line, r.text
    assert "first.test" in r.text and "second.test" in r.text


def test_replay_timing_original_keeps_the_pauses(smtptap, mini_factory):
    up = mini_factory()
    p = smtptap(upstream=up.addr)
    c = RawClient("127.0.0.1", p.port)
    assert c.reply()[0] == 220
    assert c.cmd("HELO slow.example")[0] == 250
    time.sleep(1.0)
    assert c.cmd("NOOP")[0] == 250
    assert c.cmd("QUIT")[0] == 221
    c.close()
    sess = only_session(p.db)
    p.stop()
    t0 = time.monotonic()
    replay(p.db, sess["id"], up.addr, "--timing", "original")
    # a lower bound only: the recorded second of silence was kept
    assert time.monotonic() - t0 >= 1.0


def test_replay_usage_errors(smtptap, mini_factory):
    up = mini_factory()
    p = smtptap(upstream=up.addr)
    c = RawClient("127.0.0.1", p.port)
    assert c.reply()[0] == 220
    assert c.cmd("QUIT")[0] == 221
    c.close()
    sess = only_session(p.db)
    p.stop()
    db = p.db
    assert "--to" in run_cli("replay", sess["id"], "--db", db, expect=2).err
    assert "--diff" in run_cli("replay", sess["id"], "--db", db, "--to", up.addr, "--strict", expect=2).err
    assert "--upstream-tls" in run_cli("replay", sess["id"], "--db", db, "--to", up.addr, "--upstream-tls", "maybe",
                                       expect=2).err
    assert "--timing" in run_cli("replay", sess["id"], "--db", db, "--to", up.addr, "--timing", "slow", expect=2).err
    r = run_cli("replay", sess["id"] + 100, "--db", db, "--to", up.addr, expect=3)
    assert "no session" in r.err
    run_cli("replay", "--help")
    # a server that is not there: an error, not a difference
    r = run_cli("replay", sess["id"], "--db", db, "--to", "127.0.0.1:1", "--diff", expect=2)
    assert "upstream-unreachable" in r.err, r.err


# --------------------------------------------------------------------------
# the upstream leg's TLS: as recorded, or chosen


@pytest.mark.parametrize("recorded,chosen", [("implicit", None), ("off", "starttls"), ("starttls", "none")])
def test_replay_upstream_tls_modes(recorded, chosen, smtptap, tls_upstream, pki):  # noqa: F811
    """implicit as recorded; a plaintext recording replayed over STARTTLS
    (smtptap's own EHLO and STARTTLS first, as the proxy's upstream leg
    does); a STARTTLS recording replayed in plaintext."""
    from tlspeers import smtplib_send
    up = tls_upstream(recorded if recorded != "off" else "plain")
    args = ["--upstream-ca", pki.ca, "--upstream-tls", recorded]
    if recorded == "starttls":
        args += ["--client-tls", "off"]  # smtptap's own STARTTLS upstream: the client's leg is plain
    p = smtptap(upstream=up.addr, args=args)
    msg = sample_message("tls-" + recorded)
    smtplib_send(p.host, p.port, "off", msg)
    up.wait_envelopes(1)
    sess = only_session(p.db)
    p.stop()

    want = chosen or recorded
    fresh = tls_upstream(want if want in ("starttls", "implicit") else "starttls")
    extra = ["--upstream-tls", chosen] if chosen else []
    r = replay(p.db, sess["id"], fresh.addr, "--diff", "--upstream-ca", pki.ca, "--upstream-sni", "localhost", *extra,
               expect=None)
    assert r.rc == 0, r
    assert fresh.wait_envelopes(1)[0]["content"] == msg
    rs = replay_session(p.db, sess["id"])
    leg = show_json(p.db, rs["id"])["session"]["upstream_tls"]
    if want == "none":
        assert leg is None
        assert fresh.connections()[-1]["tls"] is None, fresh.connections()[-1]
    else:
        assert leg["mode"] == want and leg["verified"] is True, leg
        assert fresh.connections()[-1]["mode"] == want


# --------------------------------------------------------------------------
# a big message: streamed from the recording, never held whole


def test_replay_big_message_streams(smtptap):
    import hashlib
    import subprocess
    from conftest import BIN, SANITIZER, sanitizer_findings
    from test_big import HEADER, MIB, ORIG_BLOCK, WIRE_BLOCK
    blocks = 16 if SANITIZER else 128
    src = smtptap(sink=True)
    c = RawClient("127.0.0.1", src.port, timeout=300)
    assert c.reply()[0] == 220
    assert c.cmd("EHLO big.example")[0] == 250
    assert c.cmd("MAIL FROM:<big@example.com>")[0] == 250
    assert c.cmd("RCPT TO:<sink@example.org>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    h = hashlib.sha256(HEADER)
    c.send(HEADER)
    for _ in range(blocks):
        c.send(WIRE_BLOCK)
        h.update(ORIG_BLOCK)
    c.send(b".\r\n")
    assert c.reply()[0] == 250
    assert c.cmd("QUIT")[0] == 221
    c.close()
    sess = only_session(src.db)
    src.stop()

    dst = smtptap(sink=True)
    # /usr/bin/time -f %M: the replay's peak RSS in KiB, on the last line
    p = subprocess.run(["/usr/bin/time", "-f", "%M", BIN, "replay", str(sess["id"]), "--db", src.db, "--to",
                        "127.0.0.1:%d" % dst.port, "--diff"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=600)
    err = p.stderr.decode("utf-8", "replace")
    assert not sanitizer_findings(err), err[-4000:]
    assert p.returncode == 0, (p.returncode, p.stdout, err[-2000:])
    peak_kb = int(err.strip().splitlines()[-1])
    got = only_session(dst.db)
    dst.stop()
    out = hashlib.sha256()
    proc = subprocess.Popen([BIN, "export", str(got["id"]), "--eml", "--db", dst.db], stdout=subprocess.PIPE)
    n = 0
    while True:
        chunk = proc.stdout.read(MIB)
        if not chunk:
            break
        n += len(chunk)
        out.update(chunk)
    assert proc.wait(120) == 0
    assert n == len(HEADER) + blocks * MIB and out.hexdigest() == h.hexdigest()
    if not SANITIZER:
        assert peak_kb < 64 * 1000, "replay of a %d MiB message peaked at %d KiB" % (blocks, peak_kb)
