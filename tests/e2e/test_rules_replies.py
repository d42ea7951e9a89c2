"""Fault rules on replies (the upstream's, or the sink's), the greeting,
the connection and the TLS handshakes, in relay and sink mode, with
plaintext and STARTTLS clients (docs/rules.md, "On reply and greeting",
"On connect", "On tls client / tls upstream").

A reply rule changes what reaches the client; smtptap then keeps the
upstream consistent with what the client now believes (a MAIL 250 turned
into a failure: RSET upstream; a 354 the client never got: the upstream
connection is reset; a 334: "*").
"""

import socket
import ssl
import time

import pytest

from rulekit import (CLOCK_SLACK, DELAY, DELAY_US, GOOD, MODES, SILENCE, after, check_fired, Closed, combos,
                     data_bytes, finish, flags, mail, message, Reset, rule_replies, rules, session_outcome)
from rulekit import rules_ca, rules_env, shared_upstreams  # noqa: F401
from tlspeers import pki, tls_upstream  # noqa: F401

# One relay and one sink case, one plaintext and one STARTTLS: for triggers
# whose mechanics do not depend on the client's TLS (the action matrix in
# test_rules_actions.py covers all four for every action).
PAIRS = pytest.mark.parametrize("mode,tls", [("relay", "plain"), ("sink", "starttls")],
                                ids=["relay-plain", "sink-starttls"])


def notes(doc, ev=None):
    return [e["text"] for e in doc["events"] if e["kind"] == "action" and (ev is None or e["seq"] > ev["seq"])]


# --------------------------------------------------------------------------
# on reply


@combos
def test_reply_rewrite_mail_250_resets_upstream(mode, tls, rules_env):
    """`on reply mail code 2xx`: the client is told 451 4.3.0; the
    upstream, which accepted MAIL, gets a RSET so that its transaction is
    gone too; the client's next try goes through and delivers once."""
    r = rules('on reply mail code 2xx occurrence 1 rewrite 451 4.3.0 "Try again later (rule)"')
    env = rules_env(r, mode, tls)
    c = env.session()
    got = c.cmd("MAIL FROM:<alice@example.com>")
    assert (got.code, got.lines) == (451, ["4.3.0 Try again later (rule)"]), got
    mail(c)
    assert finish(c).code == 250
    c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "reply", "command")
    assert trig["text"] == "MAIL FROM:<alice@example.com>", trig
    own, mine = after(doc, act, "reply")[:2]
    assert own["text"].startswith("250") and {"altered", "rule"} <= flags(own), own
    assert mine["text"] == "451 4.3.0 Try again later (rule)" and {"injected", "rule"} <= flags(mine), mine
    if env.relay:
        cmds = env.up.commands()
        assert cmds[cmds.index("MAIL"):] == ["MAIL", "RSET", "MAIL", "RCPT", "DATA", "QUIT"], cmds
        env.up.wait_envelopes(1)
        assert len(env.up.envelopes) == 1


def test_reply_rewrite_mail_pipelined_keeps_upstream_transaction(rules_env):
    """When the client pipelined commands behind the rewritten MAIL, no RSET
    is sent (it would land in the middle); the transcript says that the
    upstream keeps its transaction."""
    r = rules('on reply mail code 250 rewrite 451 4.3.0 "Try again later (rule)"')
    env = rules_env(r, "relay", "plain")
    c = env.session()
    c.send("MAIL FROM:<alice@example.com>\r\nRCPT TO:<%s>\r\n" % GOOD)
    assert c.reply().code == 451
    assert c.reply().code == 250  # the upstream's own answer to the RCPT
    c.expect("QUIT", 221)
    doc = env.doc()
    check_fired(doc, r, 3, "reply")
    assert any("keeps its transaction" in t for t in notes(doc)), notes(doc)
    assert "RSET" not in env.up.commands()


def test_reply_by_code_class(rules_env):
    """`code 5xx` matches the upstream's 550 to one recipient, not the 250
    to another; `code 25x,354` is a list; the rule names the command."""
    r = rules('on reply rcpt code 5xx rewrite 450 4.2.0 "Softened by rule"',
              'on reply data code 25x,354 delay 100ms')
    env = rules_env(r, "relay", "plain")
    c = env.session()
    mail(c)
    got = c.cmd("RCPT TO:<nouser@example.org>")
    assert (got.code, got.lines) == (450, ["4.2.0 Softened by rule"]), got
    assert finish(c).code == 250
    c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "reply")
    assert trig["text"] == "RCPT TO:<nouser@example.org>"
    assert after(doc, act, "reply")[0]["text"].startswith("550")
    check_fired(doc, r, 4, "reply")  # the 354 (DATA's own reply), not the 250 after the message


@PAIRS
def test_reply_data_end_250_stall_lost_reply(mode, tls, rules_env):
    """`on reply data-end code 250 stall`: the reply to DATA is lost.  The
    upstream delivered; the client never hears so."""
    r = rules("on reply data-end code 250 stall")
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    c.expect("DATA", 354)
    c.send(data_bytes(message("lost reply")))
    c.settimeout(SILENCE)
    assert c.outcome() == ("silent", b"")
    c.close()
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "reply", "data")
    dropped = [e for e in after(doc, act, "reply") if "dropped" in flags(e)]
    assert dropped and dropped[0]["text"].startswith("250") and "rule" in flags(dropped[0]), dropped
    assert doc["messages"][0]["upstream_code"] == 250
    if env.relay:
        env.up.wait_envelopes(1)


@PAIRS
def test_reply_data_354_rewritten(mode, tls, rules_env):
    """A 354 turned into 451: the client will not send the message.  The
    upstream, waiting for data, is reset (a "." would deliver an empty
    message); smtptap answers the rest: RSET/NOOP 250, QUIT 221, anything
    else 421.  In sink mode the session goes on."""
    r = rules('on reply data code 354 rewrite 451 4.3.0 "No data now (rule)"')
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    got = c.cmd("DATA")
    assert (got.code, got.lines) == (451, ["4.3.0 No data now (rule)"]), got
    c.expect("RSET", 250)
    c.expect("NOOP", 250)
    if env.relay:
        got = c.cmd("MAIL FROM:<alice@example.com>")
        assert got.code == 421, got
        assert c.outcome()[0] == "closed"
    else:
        mail(c)
        c.expect("RCPT TO:<%s>" % GOOD, 250)
        c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "reply", "command")
    if env.relay:
        assert any("upstream connection reset" in t for t in notes(doc, act)), notes(doc)
        assert env.up.commands()[-1] == "DATA", env.up.commands()
        assert not env.up.envelopes


@pytest.mark.parametrize("mode", MODES)
def test_reply_auth_334_rewritten_cancels_upstream(mode, rules_env):
    """A 334 turned into 535: the client ends its AUTH; the upstream's
    exchange is cancelled with "*" (its 501 is recorded, never passed on);
    the session goes on (a second AUTH succeeds)."""
    r = rules('on reply auth code 334 occurrence 1 rewrite 535 5.7.8 "Refused by rule"')
    env = rules_env(r, mode, "plain", auth=True)
    c = env.session()
    got = c.cmd("AUTH LOGIN")
    assert (got.code, got.lines) == (535, ["5.7.8 Refused by rule"]), got
    c.expect("NOOP", 250)
    c.expect("AUTH PLAIN AGFsaWNlAHMzY3JldA==", 235)  # alice / s3cret
    c.expect("QUIT", 221)
    doc = env.doc()
    check_fired(doc, r, 3, "reply", "command")
    if env.relay:
        lines = env.up.lines()
        assert b"*" in lines and lines.index(b"*") == lines.index(b"AUTH LOGIN") + 1, lines
        up501 = [e for e in doc["events"] if e["kind"] == "reply" and e["side"] == "upstream" and
                 e["text"].startswith("501")]
        assert up501 and "dropped" in flags(up501[0]), up501


@pytest.mark.parametrize("mode", MODES)
def test_reply_ehlo_strip_starttls(mode, rules_env):
    """`on reply ehlo strip STARTTLS`: a client told about no STARTTLS
    stays in plaintext (the downgrade test)."""
    r = rules("on reply ehlo strip STARTTLS")
    env = rules_env(r, mode, "starttls")
    c = env.client()
    assert c.reply().code == 220
    caps = c.ehlo()
    assert "STARTTLS" not in caps and "SMTPUTF8" in caps, caps
    c.expect("QUIT", 221)
    check_fired(env.doc(), r, 3, "reply")


@PAIRS
def test_reply_delay_keeps_order(mode, tls, rules_env):
    """`on reply rcpt delay`: the reply comes at least D later, and the
    replies behind it wait (pipelined NOOP)."""
    r = rules("on reply rcpt delay 300ms")
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    t0 = time.monotonic()
    c.send("RCPT TO:<%s>\r\nNOOP\r\n" % GOOD)
    first = c.reply()
    second = c.reply()
    elapsed = time.monotonic() - t0
    assert "2.1.5" in first.text and second.code == 250, (first, second)
    assert elapsed >= DELAY, elapsed
    c.expect("QUIT", 221)
    check_fired(env.doc(), r, 3, "reply")


@pytest.mark.parametrize("action,expect", [("close", "closed"), ("reset", "reset"), ("truncate", "closed")])
@PAIRS
def test_reply_close_reset_truncate(mode, tls, action, expect, rules_env):
    """`close` / `reset` instead of the reply; `truncate` (no N): half of
    the reply's first line, then the close."""
    r = rules("on reply rcpt code 250 " + action)
    env = rules_env(r, mode, tls)
    c = env.session()
    mail(c)
    c.send("RCPT TO:<%s>\r\n" % GOOD)
    outcome, got = c.outcome()
    assert outcome == expect, (outcome, got)
    # "250 2.1.5 OK\r\n": 13 bytes to the LF, half of them
    assert got == (b"250 2." if action == "truncate" else b""), got
    doc = env.doc()
    check_fired(doc, r, 3, "reply")
    assert session_outcome(doc)[0] == ("rule-reset" if action == "reset" else "rule-close")


# --------------------------------------------------------------------------
# greeting


@pytest.mark.parametrize("rule,check", [
    ('rewrite 554 5.3.2 "Not now (rule)"', "554"),
    ("delay 300ms", "delay"),
    ("truncate 5", "truncate"),
    ("stall", "silent"),
    ("close", "closed"),
])
@pytest.mark.parametrize("mode", MODES)
def test_greeting(mode, rule, check, rules_env):
    """Rules on the greeting (the upstream's, or the sink's)."""
    r = rules("on greeting " + rule)
    env = rules_env(r, mode, "plain")
    t0 = time.monotonic()
    c = env.client(timeout=SILENCE if check == "silent" else 10)
    if check == "554":
        got = c.reply()
        assert (got.code, got.lines) == (554, ["5.3.2 Not now (rule)"]), got
        c.expect("QUIT", 221)
    elif check == "delay":
        assert c.reply().code == 220 and time.monotonic() - t0 >= DELAY
        c.expect("QUIT", 221)
    elif check == "truncate":
        outcome, got = c.outcome()
        assert outcome == "closed" and len(got) == 5 and got.startswith(b"220 "), got
    else:
        assert c.outcome() == (check, b"")
    c.close()
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "greeting")
    if check == "554":
        own = after(doc, act, "reply")[0]
        assert own["text"].startswith("220") and {"altered", "rule"} <= flags(own), own


# --------------------------------------------------------------------------
# connect


@combos
def test_connect_reply_refuses_service(mode, tls, rules_env):
    """`on connect reply 554`: the rule's reply is the greeting; every
    command but QUIT gets 503 5.5.1 (RFC 5321 3.1); the upstream is never
    contacted."""
    r = rules('on connect reply 554 5.7.1 "No service (rule)"')
    env = rules_env(r, mode, tls)
    c = env.client()
    got = c.reply()
    assert (got.code, got.lines) == (554, ["5.7.1 No service (rule)"]), got
    for cmd in ("EHLO client.example", "MAIL FROM:<alice@example.com>", "STARTTLS"):
        got = c.cmd(cmd)
        assert got.code == 503 and "5.5.1" in got.text, (cmd, got)
    c.expect("QUIT", 221)
    assert c.outcome()[0] == "closed"
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "connect", "connect")
    assert rule_replies(doc)[0]["text"] == "554 5.7.1 No service (rule)"
    if env.relay:
        assert env.up.conns() == []


@pytest.mark.parametrize("rule,expect", [
    ('reply 421 4.3.2 "Busy (rule)"', "421"),
    ("delay 300ms", "delay"),
    ("stall", "silent"),
    ("close", "closed"),
    ("reset", "reset"),
    ("throttle 400 to-client", "throttle"),
])
@pytest.mark.parametrize("mode", MODES)
def test_connect(mode, rule, expect, rules_env):
    """Rules on the connection: 421 then closed; the greeting D later (the
    upstream contacted D later); no greeting at all; closed / reset at
    once; the whole session throttled.  The upstream is never contacted
    when the client gets no service."""
    r = rules("on connect " + rule)
    env = rules_env(r, mode, "plain")
    t0 = time.monotonic()
    c = env.client(timeout=SILENCE if expect == "silent" else 10)
    if expect == "421":
        got = c.reply()
        assert (got.code, got.lines) == (421, ["4.3.2 Busy (rule)"]), got
        assert c.outcome()[0] == "closed"
    elif expect == "delay":
        assert c.reply().code == 220 and time.monotonic() - t0 >= DELAY
        c.expect("QUIT", 221)
    elif expect == "throttle":
        n = len(c.reply().raw) + sum(len(l) + 6 for l in c.cmd("EHLO client.example").lines)
        least = (-(-n // 40) - 2) * 0.1
        assert time.monotonic() - t0 >= least - CLOCK_SLACK, (n, least)
        c.expect("QUIT", 221)
    else:
        assert c.outcome() == (expect, b"")
    c.close()
    doc = env.doc()
    check_fired(doc, r, 3, "connect", "connect")
    if env.relay:
        contacted = [e for e in doc["events"] if e["kind"] == "connect" and e["text"].startswith("connected to")]
        if expect in ("421", "silent", "closed", "reset"):
            assert env.up.conns() == [] and not contacted, (env.up.conns(), contacted)
        elif expect == "delay":
            assert contacted and contacted[0]["t_us"] >= DELAY_US, contacted


@pytest.mark.parametrize("mode", MODES)
def test_connect_fail_tls_implicit(mode, rules_env):
    """`on connect fail-tls` on an implicit-TLS listener: the handshake
    fails (handshake_failure alert); the upstream is never contacted."""
    r = rules("on connect fail-tls")
    env = rules_env(r, mode, "plain", listen=("127.0.0.1:0,client-tls=implicit",))
    c = env.client()
    with pytest.raises(ssl.SSLError) as ei:
        c.handshake()
    assert "HANDSHAKE_FAILURE" in str(ei.value).upper(), ei.value
    doc = env.doc()
    check_fired(doc, r, 3, "connect", "connect")
    assert session_outcome(doc)[0] == "rule-tls-fail"
    if env.relay:
        assert env.up.conns() == []


# --------------------------------------------------------------------------
# TLS handshakes


@pytest.mark.parametrize("rule", ["fail-tls", "delay 300ms", "stall", "close", "reset"])
@pytest.mark.parametrize("mode", MODES)
def test_tls_client(mode, rule, rules_env):
    """Rules on the client's handshake (after its STARTTLS got 220)."""
    r = rules("on tls client " + rule)
    env = rules_env(r, mode, "starttls")
    c = env.client(timeout=SILENCE if rule == "stall" else 10)
    assert c.reply().code == 220
    c.ehlo()
    t0 = time.monotonic()
    if rule == "fail-tls":
        with pytest.raises(ssl.SSLError) as ei:
            c.starttls()
        assert "HANDSHAKE_FAILURE" in str(ei.value).upper(), ei.value
    elif rule.startswith("delay"):
        assert c.starttls().code == 220
        assert time.monotonic() - t0 >= DELAY
        c.ehlo()
        c.expect("QUIT", 221)
    else:
        # close: a FIN, unless the client's ClientHello was already in the
        # proxy's socket buffer, unread (then the kernel makes it an RST)
        exc = {"stall": socket.timeout, "close": (Closed, ssl.SSLError, Reset), "reset": Reset}[rule]
        with pytest.raises(exc):
            c.starttls()
    c.close()
    doc = env.doc()
    check_fired(doc, r, 3, "tls client")
    outcome = session_outcome(doc)[0]
    if rule == "fail-tls":
        assert outcome == "rule-tls-fail"
    elif rule in ("close", "reset"):
        assert outcome == "rule-" + rule
    if env.relay:
        assert "MAIL" not in env.up.commands()


@pytest.mark.parametrize("rule", ["fail-tls", "delay 300ms", "stall", "close"])
def test_tls_upstream(rule, rules_env, tls_upstream, pki):
    """Rules on the upstream's handshake (smtptap's STARTTLS to it):
    fail-tls gives the client 421 4.7.0 as a real TLS failure would; a
    delay only slows it; stall: the handshake never starts; close: the
    session closes."""
    up = tls_upstream("starttls")
    r = rules("on tls upstream " + rule)
    env = rules_env(r, "relay", "starttls", upstream=up.addr, args=["--upstream-ca", pki.ca])
    c = env.client(timeout=SILENCE if rule == "stall" else 10)
    t0 = time.monotonic()
    try:
        c.hello("starttls")
        mail(c)
        assert finish(c).code == 250
        c.expect("QUIT", 221)
        result = "ok"
    except socket.timeout:
        result = "silent"
    except (Closed, Reset):
        result = "closed"
    except AssertionError:
        result = "refused"
    buf = c.buf
    c.close()
    doc = env.doc()
    check_fired(doc, r, 3, "tls upstream")
    if rule == "fail-tls":
        got421 = [e for e in rule_replies(doc) + [e for e in doc["events"] if e["kind"] == "reply"]
                  if (e.get("text") or "").startswith("421 4.7.0")]
        assert result in ("refused", "closed") and got421, (result, buf, got421)
        assert session_outcome(doc)[0] == "upstream-tls-error"
    elif rule.startswith("delay"):
        assert result == "ok" and time.monotonic() - t0 >= DELAY
        up.wait_envelopes(1)
    elif rule == "stall":
        assert result == "silent"
    else:
        assert result == "closed"
    if rule != "delay 300ms":
        assert not up.envelopes
