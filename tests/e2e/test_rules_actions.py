"""Fault rules end to end: each action on a command and on the end of
message data, in relay mode (a recording aiosmtpd upstream) and sink mode,
with a plaintext client and with a client that upgrades with STARTTLS
(trusting only smtptap's CA).

Each test checks three things: what the client saw (codes, texts, a FIN or
an RST, timing only as "at least D"), what the upstream received (the raw
bytes of its connection, the messages it delivered), and the transcript
(`smtptap show --json`: the rule's action event right after its trigger,
quoting the rule's line and text; replies a rule made or changed flagged
`rule`; commands it kept from the upstream flagged `dropped`).  The
contract is the table "What each action does" (docs/rules.md).
"""

import ssl
import time

import pytest

from rulekit import (CLOCK_SLACK, COMBOS, DELAY, DELAY_US, GOOD, MODES, SILENCE, after, altered_replies, check_fired,
                     combos, data_bytes, finish, flags, mail, message, rule_replies, rules, session_outcome,
                     upstream_lines)
from rulekit import rules_ca, rules_env, shared_upstreams  # noqa: F401

# --------------------------------------------------------------------------
# actions on a command


@combos
def test_reply_on_rcpt(mode, tls, rules_env):
    """`reply`: the client gets the rule's reply; the upstream never sees
    the command; the rest of the session goes on (the message reaches the
    other recipient)."""
    r = rules('on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"')
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    got = c.cmd("RCPT TO:<bad@example.org>")
    assert (got.code, got.lines) == (550, ["5.1.1 No such user"]), got
    assert finish(c).code == 250
    c.expect("QUIT", 221)

    if env.relay:
        env.up.wait_envelopes(1)
        assert [e["rcpt_tos"] for e in env.up.envelopes] == [[GOOD]]
        assert not any(b"bad@" in l for l in upstream_lines(env)), upstream_lines(env)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "rcpt", "command")
    assert trig["text"] == "RCPT TO:<bad@example.org>"
    assert {"dropped", "rule"} <= flags(trig), trig
    nxt = after(doc, act, "reply")[0]
    assert nxt["text"] == "550 5.1.1 No such user" and {"injected", "rule"} <= flags(nxt), nxt
    # the other replies are the upstream's (or the sink's) own
    assert [e["text"] for e in rule_replies(doc)] == ["550 5.1.1 No such user"]
    assert doc["session"]["outcome"] == "quit"


@combos
def test_rewrite_on_rcpt(mode, tls, rules_env):
    """`rewrite`: the command is forwarded and answered; the client gets the
    rule's reply instead.  A RCPT 250 turned into 550 stays accepted
    upstream: the message goes to that recipient too."""
    r = rules('on rcpt to ~ "^rw@" rewrite 550 5.1.1 "Rewritten by rule"')
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    got = c.cmd("RCPT TO:<rw@example.org>")
    assert (got.code, got.lines) == (550, ["5.1.1 Rewritten by rule"]), got
    assert finish(c).code == 250
    c.expect("QUIT", 221)

    if env.relay:
        env.up.wait_envelopes(1)
        assert [e["rcpt_tos"] for e in env.up.envelopes] == [["rw@example.org", GOOD]]
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "rcpt", "command")
    assert not flags(trig) & {"dropped"}, trig
    own, mine = after(doc, act, "reply")[:2]
    # the upstream's own reply (the sink's in sink mode): kept from the client
    assert own["side"] == ("upstream" if env.relay else "proxy"), own
    assert own["text"].startswith("250") and {"altered", "rule"} <= flags(own), own
    assert "injected" not in flags(own), own
    assert mine["text"] == "550 5.1.1 Rewritten by rule" and {"injected", "rule"} <= flags(mine), mine


@combos
def test_delay_on_rcpt(mode, tls, rules_env):
    """`delay`: the reply comes at least D later; a command pipelined behind
    it waits too and the order is kept; the upstream gets the command D
    later."""
    r = rules("on rcpt delay 300ms")
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    t0 = time.monotonic()
    c.send("RCPT TO:<%s>\r\nNOOP\r\n" % GOOD)
    first = c.reply()
    t1 = time.monotonic()
    second = c.reply()
    assert first.code == 250 and "2.1.5" in first.text, first
    assert second.code == 250, second
    assert t1 - t0 >= DELAY, "RCPT answered after %.3fs, before the 300ms delay" % (t1 - t0)
    c.expect("DATA", 354)
    c.send(data_bytes(message()))
    assert c.reply().code == 250
    c.expect("QUIT", 221)

    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "rcpt", "command")
    assert trig["text"] == "RCPT TO:<%s>" % GOOD
    if env.relay:
        env.up.wait_envelopes(1)
        # the upstream answered (so received) the RCPT 300ms after it came
        reply = [e for e in after(doc, act, "reply") if e["side"] == "upstream"][0]
        assert reply["t_us"] - trig["t_us"] >= DELAY_US, (trig, reply)
        cmds = env.up.commands()
        assert cmds[cmds.index("RCPT"):cmds.index("RCPT") + 2] == ["RCPT", "NOOP"], cmds
    assert not rule_replies(doc) and not altered_replies(doc)


@combos
def test_stall_on_rcpt(mode, tls, rules_env):
    """`stall`: no reply, ever; the upstream sees neither the command nor
    anything after it."""
    r = rules("on rcpt stall")
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    c.settimeout(SILENCE)
    c.send("RCPT TO:<%s>\r\n" % GOOD)
    outcome, got = c.outcome()
    assert (outcome, got) == ("silent", b""), (outcome, got)
    c.send("NOOP\r\n")
    c.settimeout(0.2)
    assert c.outcome() == ("silent", b"")
    if env.relay:
        # nothing after MAIL reached the upstream
        assert env.up.commands()[-1] == "MAIL", env.up.commands()
    c.close()
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "rcpt", "command")
    assert {"dropped", "rule"} <= flags(trig), trig
    notes = [e["text"] for e in after(doc, act, "action")]
    assert any("stalled" in t for t in notes), notes
    assert not [e for e in after(doc, act, "reply") if "to-client" in flags(e) or e["side"] == "upstream"], doc
    if env.relay:
        assert env.up.commands()[-1] == "MAIL", env.up.commands()
        assert not env.up.envelopes


@combos
def test_close_and_reset_on_rcpt(mode, tls, rules_env):
    """`close`: FIN without a reply; `reset`: RST.  The upstream never sees
    the command; the session's outcome names the rule's line."""
    r = rules('on rcpt to ~ "^close@" close', 'on rcpt to ~ "^reset@" reset')
    env = rules_env(r, mode, tls)
    for n, (who, expect, line) in enumerate([("close", "closed", 3), ("reset", "reset", 4)], 1):
        c = env.session()
        mail(c)
        c.send("RCPT TO:<%s@example.org>\r\n" % who)
        assert c.outcome() == (expect, b""), who
        doc = env.doc(n)
        [(act, trig, _)] = check_fired(doc, r, line, "rcpt", "command")
        assert {"dropped", "rule"} <= flags(trig), trig
        outcome, detail = session_outcome(doc)
        assert outcome == "rule-" + who and "rule %d" % line in detail, (outcome, detail)
        if env.relay:
            assert env.up.commands(n - 1)[-1] == "MAIL", env.up.commands(n - 1)
    if env.relay:
        assert not env.up.envelopes


def throttle_combos(f):
    return pytest.mark.parametrize("mode,tls", [pytest.param(m, t, id="%s-%s" % (m, t)) for m, t in COMBOS])(f)


@throttle_combos
def test_throttle_to_client(mode, tls, rules_env):
    """`throttle R to-client`: from the rule on, bytes towards the client
    at R bytes/s (here: the replies to MAIL, RSET and a second EHLO)."""
    r = rules("on mail throttle 400 to-client")
    env = rules_env(r, mode, tls)
    c = env.session(timeout=1.5)
    t0 = time.monotonic()
    c.send("MAIL FROM:<alice@example.com>\r\nRSET\r\nEHLO again.example\r\n")
    got = [c.reply() for _ in range(3)]
    elapsed = time.monotonic() - t0
    assert [g.code for g in got] == [250, 250, 250], got
    n = sum(len(g.raw) for g in got)
    # 40 bytes per tenth of a second; the first tick may be partial
    least = (-(-n // 40) - 2) * 0.1
    assert n >= 60 and elapsed >= least - CLOCK_SLACK, "%d bytes in %.3fs, expected at least %.2fs at 400 B/s" % (
        n, elapsed, least)
    c.expect("QUIT", 221)
    check_fired(env.doc(), r, 3, "mail", "command")


@throttle_combos
def test_throttle_to_upstream(mode, tls, rules_env):
    """`throttle R to-upstream`: from the rule on, bytes towards the
    upstream (in sink mode: the client's bytes read) at R bytes/s; the
    message still arrives whole."""
    r = rules("on data throttle 4k to-upstream")
    env = rules_env(r, mode, tls)
    c = env.session(timeout=1.5)
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    c.expect("DATA", 354)
    body = b"".join(b"line %04d of the throttled message, padded to be long enough\r\n" % i for i in range(24))
    msg = message("throttled", body)
    t0 = time.monotonic()
    c.send(data_bytes(msg))
    got = c.reply()
    elapsed = time.monotonic() - t0
    assert got.code == 250, got
    n = len(data_bytes(msg))
    least = (-(-n // 409) - 2) * 0.1  # 4096 B/s: 409 bytes per tick
    assert least >= 0.1 and elapsed >= least - CLOCK_SLACK, "%d bytes in %.3fs, expected at least %.2fs at 4 KiB/s" % (
        n, elapsed, least)
    c.expect("QUIT", 221)
    if env.relay:
        [e] = env.up.wait_envelopes(1)
        assert e["content"] == msg
    check_fired(env.doc(), r, 3, "data", "command")


@combos
def test_truncate_on_rcpt(mode, tls, rules_env):
    """`truncate N`: the first N bytes of the reply, then the connection
    closes; the upstream answered normally (and delivers nothing, the
    transaction never ended)."""
    r = rules("on rcpt truncate 7")
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    c.send("RCPT TO:<%s>\r\n" % GOOD)
    assert c.outcome() == ("closed", b"250 2.1"), "expected 7 bytes of the 250 then a close"
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "rcpt", "command")
    assert "dropped" not in flags(trig)
    outcome, detail = session_outcome(doc)
    assert outcome == "rule-close" and "rule 3" in detail, (outcome, detail)
    if env.relay:
        assert env.up.commands()[-1] == "RCPT", env.up.commands()
        assert not env.up.envelopes


@combos
def test_strip_on_ehlo(mode, tls, rules_env):
    """`strip`: the EHLO reply reaches the client without those
    capabilities (every EHLO of the session, before and after STARTTLS);
    the upstream answers as usual."""
    r = rules("on ehlo strip PIPELINING,8BITMIME")
    env = rules_env(r, mode, tls)
    c = env.client()
    assert c.reply().code == 220
    first = c.ehlo()
    assert "PIPELINING" not in first and "8BITMIME" not in first, first
    assert "SMTPUTF8" in first, first  # only those two are gone
    if tls == "starttls":
        assert "STARTTLS" in first, first
        assert c.starttls().code == 220
        second = c.ehlo()
        assert "PIPELINING" not in second and "8BITMIME" not in second, second
    mail(c)
    assert finish(c).code == 250
    c.expect("QUIT", 221)
    doc = env.doc()
    n = 2 if tls == "starttls" else 1
    fired = check_fired(doc, r, 3, "ehlo", "command", count=n)
    for act, trig, _ in fired:
        assert "dropped" not in flags(trig)
        sent = [e for e in after(doc, act, "reply") if "to-client" in flags(e)][0]
        assert "rule" in flags(sent) and "PIPELINING" not in sent["text"], sent
    if env.relay:
        assert env.up.commands().count("EHLO") == n



@pytest.mark.parametrize("mode", MODES)
def test_fail_tls_on_starttls(mode, rules_env):
    """`fail-tls` on STARTTLS: the client gets its 220, then a fatal
    handshake_failure alert and the close; the upstream is left as without
    the rule (this plaintext one sees no STARTTLS, and no mail)."""
    r = rules("on starttls fail-tls")
    env = rules_env(r, mode, "starttls")
    c = env.client()
    assert c.reply().code == 220
    assert "STARTTLS" in c.ehlo()
    with pytest.raises(ssl.SSLError) as ei:
        c.starttls()
    assert "HANDSHAKE_FAILURE" in str(ei.value).upper(), ei.value
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "starttls", "command")
    assert trig["text"].upper() == "STARTTLS"
    outcome, detail = session_outcome(doc)
    assert outcome == "rule-tls-fail" and "rule 3" in detail, (outcome, detail)
    if env.relay:
        assert env.up.commands() == ["EHLO"], env.up.commands()


@pytest.mark.parametrize("mode,tls", [("relay", "plain"), ("sink", "starttls")], ids=["relay-plain", "sink-starttls"])
def test_reply_then_close_or_reset_and_delayed_reply(mode, tls, rules_env):
    """`reply ... close` / `reply ... reset`: the reply, then a FIN / an
    RST; `delay D reply ...`: the rule's reply at least D later."""
    r = rules('on rcpt to ~ "^closeme@" reply 421 4.7.0 "Closing (rule)" close',
              'on rcpt to ~ "^resetme@" reply 421 4.7.0 "Resetting (rule)" reset',
              'on rcpt to ~ "^slow@" delay 300ms reply 450 4.2.1 "Slow (rule)"')
    env = rules_env(r, mode, tls)
    for n, (who, expect) in enumerate([("closeme", "closed"), ("resetme", "reset")], 1):
        c = env.session()
        mail(c)
        c.send("RCPT TO:<%s@example.org>\r\n" % who)
        got = c.reply()
        assert got.code == 421 and "(rule)" in got.text, got
        assert c.outcome() == (expect, b""), who
        assert session_outcome(env.doc(n))[0] == "rule-" + ("close" if who == "closeme" else "reset")
    c = env.session()
    mail(c)
    t0 = time.monotonic()
    got = c.cmd("RCPT TO:<slow@example.org>")
    assert (got.code, got.lines) == (450, ["4.2.1 Slow (rule)"]) and time.monotonic() - t0 >= DELAY, got
    c.expect("QUIT", 221)
    doc = env.doc(3)
    [(act, trig, _)] = check_fired(doc, r, 5, "rcpt", "command")
    assert {"dropped", "rule"} <= flags(trig)
    if env.relay:
        assert all(b"me@" not in l and b"slow@" not in l for l in env.up.conns()), env.up.conns()
