"""Fault rules on the end of message data (`data-end`): DATA's "." and the
last BDAT chunk (BDAT 0 LAST included), in relay and sink mode, with
plaintext and STARTTLS clients.

The contract (docs/rules.md, "On data-end"): the content streams to the
upstream as it comes and only its end is held back; a message the client
is told failed (reply, stall, close, reset) never gets its end, so the
upstream never delivers it, and its connection is reset; a rewrite lets
it deliver (the duplicate-delivery test); truncate cuts the upstream's
reply after the delivery.
"""

import time

import pytest

from rulekit import (COMBO_IDS, COMBOS, DELAY, DELAY_US, GOOD, MODES, SILENCE, after, check_fired, combos, data_bytes,
                     deliver_control, flags, mail, message, rule_replies, rules, session_outcome)
from rulekit import rules_ca, rules_env, shared_upstreams  # noqa: F401
from conftest import wait_until

FAULT = 'on data-end subject ~ "^fault" '


def send_data(c, subject, rcpts=(GOOD,)):
    mail(c)
    for r in rcpts:
        c.expect("RCPT TO:<%s>" % r, 250)
    c.expect("DATA", 354)
    msg = message(subject)
    c.send(data_bytes(msg))
    return msg


def delivered(env):
    """Subjects of the messages the upstream delivered."""
    return [e["content"].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for e in env.up.envelopes]


def never_delivered(env, conn=0):
    """The faulty message was not delivered: a later control message is,
    alone; and the upstream never got the end of the data."""
    deliver_control(env)
    env.up.wait_envelopes(1)
    assert delivered(env) == ["control"], delivered(env)
    raw = env.up.conns()[conn]
    assert b"fault" in raw, "the content never reached the upstream: %r" % raw[-300:]
    assert b"\r\n.\r\n" not in raw, "the upstream got the end of the message: %r" % raw[-300:]


def message_record(doc, idx=1):
    return [m for m in doc["messages"] if m["idx"] == idx][0]


# --------------------------------------------------------------------------
# DATA


@combos
def test_reply_on_data_end(mode, tls, rules_env):
    """`reply`: the client gets the rule's reply for the message; the
    upstream never gets its end and is reset, so nothing is delivered; the
    session goes on without it (RSET/NOOP 250, anything else 421 4.4.2).
    In sink mode the message is recorded, answered with the rule's reply,
    and the session goes on as usual."""
    r = rules(FAULT + 'reply 554 5.7.1 "Refused by rule"')
    env = rules_env(r, mode, tls)
    c = env.session()
    send_data(c, "fault one")
    got = c.reply()
    assert (got.code, got.lines) == (554, ["5.7.1 Refused by rule"]), got
    if env.relay:
        c.expect("NOOP", 250)
        c.expect("RSET", 250)
        got = c.cmd("MAIL FROM:<alice@example.com>")
        assert got.code == 421 and "4.4.2" in got.text, got
        assert c.outcome()[0] == "closed"
    else:
        send_data(c, "second")
        assert c.reply().code == 250
        c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "data-end", "data")
    mine = after(doc, act, "reply")[0]
    assert mine["text"] == "554 5.7.1 Refused by rule" and {"injected", "rule"} <= flags(mine), mine
    m = message_record(doc)
    assert m["subject"] == "fault one" and m["upstream_code"] == 554, m
    if env.relay:
        notes = [e["text"] for e in after(doc, act, "action")]
        assert any("upstream connection reset" in t for t in notes), notes
        never_delivered(env)
    else:
        assert message_record(doc, 2)["upstream_code"] == 250


@combos
def test_rewrite_on_data_end_delivers_twice(mode, tls, rules_env):
    """`rewrite`: the upstream gets the whole message and delivers it; the
    client is told it failed and sends it again, and the upstream delivers
    it a second time.  The records say what the upstream did (250 both
    times); the events say what the client was told."""
    r = rules('on data-end occurrence 1 rewrite 451 4.3.0 "Rewritten by rule"')
    env = rules_env(r, mode, tls)
    c = env.session()
    send_data(c, "retried")
    got = c.reply()
    assert (got.code, got.lines) == (451, ["4.3.0 Rewritten by rule"]), got
    send_data(c, "retried")  # the client retries
    assert c.reply().code == 250
    c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "data-end", "data")
    own, mine = after(doc, act, "reply")[:2]
    assert own["text"].startswith("250") and {"altered", "rule"} <= flags(own), own
    assert "to-client" not in flags(own), own
    assert mine["text"] == "451 4.3.0 Rewritten by rule" and {"injected", "rule"} <= flags(mine), mine
    assert [m["upstream_code"] for m in doc["messages"]] == [250, 250], doc["messages"]
    if env.relay:
        env.up.wait_envelopes(2)
        assert delivered(env) == ["retried", "retried"]


@combos
def test_delay_on_data_end(mode, tls, rules_env):
    """`delay`: the reply comes at least D later; the upstream gets the end
    D later and delivers."""
    r = rules(FAULT + "delay 300ms")
    env = rules_env(r, mode, tls)
    c = env.session()
    send_data(c, "fault slow")
    t0 = time.monotonic()
    got = c.reply()
    elapsed = time.monotonic() - t0
    assert got.code == 250 and elapsed >= DELAY, (got, elapsed)
    c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "data-end", "data")
    assert not rule_replies(doc)
    if env.relay:
        env.up.wait_envelopes(1)
        assert delivered(env) == ["fault slow"]
        reply = [e for e in after(doc, act, "reply") if e["side"] == "upstream"][0]
        assert reply["t_us"] - trig["t_us"] >= DELAY_US, (trig, reply)


@pytest.mark.parametrize("mode,tls", [("relay", "plain"), ("sink", "starttls")], ids=["relay-plain", "sink-starttls"])
def test_stall_on_data_end(mode, tls, rules_env):
    """`stall`: the client never gets a reply; the upstream never gets the
    end of the message and delivers nothing."""
    r = rules(FAULT + "stall")
    env = rules_env(r, mode, tls)
    c = env.session()
    send_data(c, "fault stalled")
    c.settimeout(SILENCE)
    assert c.outcome() == ("silent", b"")
    c.close()
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "data-end", "data")
    assert any("stalled" in e["text"] for e in after(doc, act, "action"))
    if env.relay:
        never_delivered(env)


@pytest.mark.parametrize("action", ["close", "reset"])
@combos
def test_close_reset_on_data_end(mode, tls, action, rules_env):
    """`close` / `reset`: the connection is closed / reset instead of a
    reply; the end is withheld and the upstream closed: not delivered."""
    r = rules(FAULT + action)
    env = rules_env(r, mode, tls)
    c = env.session()
    send_data(c, "fault cut")
    assert c.outcome() == ({"close": "closed", "reset": "reset"}[action], b"")
    doc = env.doc()
    check_fired(doc, r, 3, "data-end", "data")
    outcome, detail = session_outcome(doc)
    assert outcome == "rule-" + action and "rule 3" in detail, (outcome, detail)
    if env.relay:
        never_delivered(env)


@combos
def test_truncate_on_data_end(mode, tls, rules_env):
    """`truncate N`: the upstream delivers; the client gets the first N
    bytes of its reply, then the close."""
    r = rules(FAULT + "truncate 9")
    env = rules_env(r, mode, tls)
    c = env.session()
    send_data(c, "fault truncated")
    assert c.outcome() == ("closed", b"250 2.0.0")
    doc = env.doc()
    check_fired(doc, r, 3, "data-end", "data")
    assert message_record(doc)["upstream_code"] == 250
    assert session_outcome(doc)[0] == "rule-close"
    if env.relay:
        env.up.wait_envelopes(1)
        assert delivered(env) == ["fault truncated"]


# --------------------------------------------------------------------------
# BDAT (relayed to a CHUNKING upstream: conftest's MiniSMTP records bytes)


@pytest.fixture
def bdat_env(rules_env, mini_factory):
    def start(r, mode, tls="plain"):
        if mode == "relay":
            up = mini_factory(caps=("PIPELINING", "CHUNKING", "8BITMIME", "ENHANCEDSTATUSCODES"))
            env = rules_env(r, mode, tls, upstream=up.addr)
            env.mini = up
        else:
            env = rules_env(r, mode, tls)
        return env
    return start


def bdat_message(c, subject, last_empty=False):
    """MAIL, RCPT and the message in two BDAT chunks (the second LAST, or
    an empty BDAT 0 LAST after both); returns (message, replies)."""
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    msg = message(subject)
    a, b = msg[:40], msg[40:]
    c.send(b"BDAT %d\r\n" % len(a) + a)
    first = c.reply()
    assert first.code == 250, first
    if last_empty:
        c.send(b"BDAT %d\r\n" % len(b) + b)
        assert c.reply().code == 250
        c.send(b"BDAT 0 LAST\r\n")
    else:
        c.send(b"BDAT %d LAST\r\n" % len(b) + b)
    return msg


@pytest.mark.parametrize("last_empty", [False, True], ids=["bdat-last", "bdat-0-last"])
@pytest.mark.parametrize("mode,tls", COMBOS, ids=COMBO_IDS)
def test_reply_on_bdat_end(mode, tls, last_empty, bdat_env):
    """`reply` on the end of a BDAT message (its last chunk, or BDAT 0
    LAST): the client gets the rule's reply; the upstream never gets the
    end and never delivers."""
    r = rules(FAULT + 'reply 554 5.7.1 "Refused by rule"')
    env = bdat_env(r, mode, tls)
    c = env.session()
    assert "CHUNKING" in c.caps, c.caps
    msg = bdat_message(c, "fault chunked", last_empty)
    got = c.reply()
    assert (got.code, got.lines) == (554, ["5.7.1 Refused by rule"]), got
    c.expect("RSET", 250)
    c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "data-end")
    mine = [e for e in after(doc, act, "reply") if "to-client" in flags(e)][0]
    assert mine["text"] == "554 5.7.1 Refused by rule" and "rule" in flags(mine), mine
    assert message_record(doc)["transport"] == "bdat"
    if env.relay:
        raw = wait_until(lambda: env.mini.received(), 5, what="the upstream's connection")[0]
        if last_empty:
            # both chunks whole, but never the BDAT 0 LAST that ends them
            assert raw.endswith(msg[40:]) and b"BDAT 0 LAST" not in raw, raw[-200:]
        else:
            # the last chunk but for its last byte
            assert raw.endswith(b"LAST\r\n" + msg[40:-1]), raw[-200:]
        assert not env.mini.messages


@pytest.mark.parametrize("mode", MODES)
def test_rewrite_on_bdat_end(mode, bdat_env):
    """`rewrite` on BDAT ... LAST: delivered upstream, the client told 451."""
    r = rules(FAULT + 'rewrite 451 4.3.0 "Rewritten by rule"')
    env = bdat_env(r, mode)
    c = env.session()
    msg = bdat_message(c, "fault chunked")
    got = c.reply()
    assert (got.code, got.lines) == (451, ["4.3.0 Rewritten by rule"]), got
    c.expect("QUIT", 221)
    doc = env.doc()
    check_fired(doc, r, 3, "data-end")
    assert message_record(doc)["upstream_code"] == 250
    if env.relay:
        wait_until(lambda: env.mini.messages, 5, what="the delivery")
        assert env.mini.messages[0]["content"] == msg


@pytest.mark.parametrize("mode", MODES)
def test_reply_on_bdat_command_drops_its_chunk(mode, bdat_env):
    """`reply` on the BDAT command: the client gets the rule's reply; the
    chunk that follows is read and dropped (never taken for commands);
    the upstream sees neither."""
    r = rules('on bdat reply 552 5.3.4 "Chunk refused by rule"')
    env = bdat_env(r, mode)
    c = env.session()
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    chunk = b"NOOP\r\nQUIT\r\n" * 3  # looks like commands: must not be run
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    got = c.reply()
    assert (got.code, got.lines) == (552, ["5.3.4 Chunk refused by rule"]), got
    c.expect("RSET", 250)
    c.expect("QUIT", 221)
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, "bdat", "command")
    assert {"dropped", "rule"} <= flags(trig)
    if env.relay:
        raw = env.mini.received()[0]
        assert b"BDAT" not in raw and b"NOOP" not in raw, raw
