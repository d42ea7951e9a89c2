"""Fault rules: every command trigger (each verb, AUTH by mechanism and
user, STARTTLS, QUIT, `command`/`any`) and every condition (regular
expressions on from/to/helo/subject/header, size, session range,
occurrence, client address, listener, mode, probability with a seed,
limit), as a new user would write them.
"""

import base64

import pytest

from conftest import free_port
from rulekit import (GOOD, MODES, Client, check_fired, data_bytes, fired_events, flags, mail, message, rules)
from rulekit import rules_ca, rules_env, shared_upstreams  # noqa: F401
from tlspeers import pki, tls_upstream  # noqa: F401


def plain_ir(user, password):
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


# --------------------------------------------------------------------------
# triggers: each verb


# trigger (with its conditions), what the client says before, the command,
# and the trigger's name in the transcript
VERBS = [
    ("helo", [], "HELO other.example", "helo"),
    ("ehlo", [], "EHLO other.example", "ehlo"),
    ("mail", [], "MAIL FROM:<alice@example.com>", "mail"),
    ("rcpt", ["MAIL FROM:<alice@example.com>"], "RCPT TO:<bob@example.org>", "rcpt"),
    ("data", ["MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>"], "DATA", "data"),
    ("rset", [], "RSET", "rset"),
    ("noop", [], "NOOP", "noop"),
    ("vrfy", [], "VRFY bob", "vrfy"),
    ("expn", [], "EXPN staff", "expn"),
    ("help", [], "HELP", "help"),
    ('command verb ~ "^XFOO$"', [], "XFOO bar", "command"),
    ('any arg ~ "again$"', [], "NOOP again", "noop"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("trigger,before,line,on", VERBS, ids=[v[0].split()[0] for v in VERBS])
def test_verb_trigger(trigger, before, line, on, mode, rules_env):
    """`on VERB reply ...`: that command (and no other) gets the rule's
    reply; the upstream never sees it."""
    r = rules('on %s reply 452 4.3.1 "refused by rule"' % trigger)
    env = rules_env(r, mode, "plain")
    c = env.client()
    assert c.reply().code == 220
    if on not in ("helo", "ehlo"):
        c.expect("EHLO client.example", 250)
    for b in before:
        c.expect(b, 250)
    got = c.cmd(line)
    assert (got.code, got.lines) == (452, ["4.3.1 refused by rule"]), got
    c.close()
    doc = env.doc()
    [(act, trig, _)] = check_fired(doc, r, 3, on, "command")
    assert trig["text"] == line and {"dropped", "rule"} <= flags(trig), trig
    if env.relay:
        sent = [l for l in env.up.lines() if l]
        assert line.encode() not in sent, sent


@pytest.mark.parametrize("mode", MODES)
def test_quit_trigger_closes_after_reply(mode, rules_env):
    """`on quit reply`: the rule's reply, then the connection closes; the
    upstream never sees the QUIT."""
    r = rules('on quit reply 221 2.0.0 "Bye from a rule"')
    env = rules_env(r, mode, "plain")
    c = env.session()
    got = c.cmd("QUIT")
    assert (got.code, got.lines) == (221, ["2.0.0 Bye from a rule"]), got
    assert c.outcome()[0] == "closed"
    doc = env.doc()
    check_fired(doc, r, 3, "quit", "command")
    if env.relay:
        assert "QUIT" not in env.up.commands()


@pytest.mark.parametrize("mode", MODES)
def test_auth_trigger_mechanism_and_user(mode, rules_env):
    """`on auth mechanism ~` and `on auth user ~` (the user from the PLAIN
    or LOGIN initial response): those get the rule's reply and never reach
    the upstream; another user goes through."""
    r = rules('on auth mechanism ~ "^LOGIN$" reply 504 5.5.4 "LOGIN refused by rule"',
              'on auth user ~ "^mallory$" reply 535 5.7.8 "mallory refused by rule"')
    env = rules_env(r, mode, "plain", auth=True)
    c = env.session()
    got = c.cmd("AUTH LOGIN")
    assert (got.code, got.lines) == (504, ["5.5.4 LOGIN refused by rule"]), got
    got = c.cmd("AUTH PLAIN " + plain_ir("mallory", "s3cret"))
    assert (got.code, got.lines) == (535, ["5.7.8 mallory refused by rule"]), got
    c.expect("AUTH PLAIN " + plain_ir("alice", "s3cret"), 235)
    c.expect("QUIT", 221)
    doc = env.doc()
    check_fired(doc, r, 3, "auth", "command")
    check_fired(doc, r, 4, "auth", "command")
    # the refused AUTH's secret (redacted by default) went nowhere: not into
    # the transcript, not to the upstream, not as a command of its own
    secret = plain_ir("mallory", "s3cret")
    texts = [e.get("text") or "" for e in doc["events"]]
    assert not [t for t in texts if secret[8:] in t or "czNjcmV0" in t], texts
    if env.relay:
        assert [u for _, u in env.up.auth_seen] == [b"alice"], env.up.auth_seen
        assert b"czNjcmV0" not in b"".join(env.up.conns())


def test_reply_auth_user_named_after_the_command(rules_env):
    """`on reply auth ... user ~`: a LOGIN user, named on the line after
    the command, is known to the rules on the replies that follow it; a
    PLAIN initial response on the reply to the command itself."""
    r = rules('on reply auth code 235 user ~ "^mallory$" rewrite 535 5.7.8 "mallory refused by rule"')
    env = rules_env(r, "relay", "plain", auth=True)

    def b64(text):
        return base64.b64encode(text.encode()).decode()

    c = env.session()
    c.expect("AUTH LOGIN", 334)
    c.expect(b64("mallory"), 334)
    got = c.cmd(b64("s3cret"))
    assert (got.code, got.lines) == (535, ["5.7.8 mallory refused by rule"]), got
    c.expect("QUIT", 221)
    check_fired(env.doc(1), r, 3, "reply")
    c = env.session()
    got = c.cmd("AUTH PLAIN " + plain_ir("mallory", "s3cret"))
    assert (got.code, got.lines) == (535, ["5.7.8 mallory refused by rule"]), got
    c.expect("QUIT", 221)
    check_fired(env.doc(2), r, 3, "reply")
    # another user: the upstream's own 235
    c = env.session()
    c.expect("AUTH LOGIN", 334)
    c.expect(b64("alice"), 334)
    c.expect(b64("s3cret"), 235)
    c.expect("QUIT", 221)
    assert not fired_events(env.doc(3), 3)
    assert [u for _, u in env.up.auth_seen] == [b"mallory", b"mallory", b"alice"], env.up.auth_seen


def test_auth_after_upstream_reset_is_redacted(rules_env):
    """After a rule reset the upstream (a refused message end), smtptap
    answers the client itself: an AUTH then is refused with 421, and its
    secret is redacted in the transcript like any other."""
    r = rules('on data-end reply 554 5.7.1 "Refused by rule"')
    env = rules_env(r, "relay", "plain", auth=True)
    c = env.session()
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    c.expect("DATA", 354)
    c.send(data_bytes(message("refused")))
    assert c.reply().code == 554
    ir = plain_ir("alice", "s3cret")
    assert c.cmd("AUTH PLAIN " + ir).code == 421
    doc = env.doc()
    auth = [e for e in doc["events"] if e["kind"] == "command" and e["text"].upper().startswith("AUTH")]
    assert auth and ir not in auth[-1]["text"] and "redacted" in flags(auth[-1]), auth


def test_starttls_trigger_reply(rules_env, tls_upstream, pki):
    """`on starttls reply 454`: the client stays in plaintext and goes on;
    the upstream (which offers STARTTLS) never sees the client's."""
    up = tls_upstream("starttls")
    r = rules('on starttls reply 454 4.7.0 "TLS not available (rule)"')
    env = rules_env(r, "relay", "starttls", upstream=up.addr, args=["--upstream-ca", pki.ca])
    c = env.client()
    assert c.reply().code == 220
    assert "STARTTLS" in c.ehlo()
    got = c.starttls()
    assert (got.code, got.lines) == (454, ["4.7.0 TLS not available (rule)"]), got
    mail(c)
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    c.expect("DATA", 354)
    c.send(data_bytes(message("after 454")))
    assert c.reply().code == 250
    c.expect("QUIT", 221)
    doc = env.doc()
    check_fired(doc, r, 3, "starttls", "command")
    up.wait_envelopes(1)
    [conn] = up.connections()
    verbs = [l.split()[0].upper() for _, l in conn["commands"] if l.strip()]
    assert b"STARTTLS" not in verbs and conn["mode"] is None, conn


# --------------------------------------------------------------------------
# conditions


@pytest.mark.parametrize("mode", MODES)
def test_conditions_from_to_helo(mode, rules_env):
    """Regular expressions on the sender, a recipient (case-insensitive
    `~*`, negated `!~`) and the EHLO name."""
    r = rules('on mail from ~ "^spam@" reply 550 5.7.1 "sender refused"',
              'on rcpt to ~* "^BAD@" reply 550 5.1.1 "recipient refused"',
              'on mail helo ~ "^evil\\." reply 554 5.7.1 "helo refused"',
              'on rcpt to !~ "@example\\.org$" reply 551 5.7.1 "not local"')
    env = rules_env(r, mode, "plain")
    c = env.session()
    assert c.cmd("MAIL FROM:<spam@example.com>").code == 550
    mail(c)
    assert c.cmd("RCPT TO:<bad@example.org>").code == 550
    assert c.cmd("RCPT TO:<carol@example.net>").code == 551
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    c.expect("QUIT", 221)
    c = env.client()
    c.reply()
    c.expect("EHLO evil.example", 250)
    got = c.cmd("MAIL FROM:<alice@example.com>")
    assert (got.code, got.lines) == (554, ["5.7.1 helo refused"]), got
    c.expect("QUIT", 221)
    doc = env.doc(1)
    for line in (3, 4, 6):
        assert len(fired_events(doc, line)) == 1, line
    assert not fired_events(doc, 5)
    assert len(fired_events(env.doc(2), 5)) == 1


@pytest.mark.parametrize("mode", MODES)
def test_conditions_subject_header_size(mode, rules_env):
    """data-end conditions: the Subject, any header (X-Fault), the size."""
    r = rules('on data-end subject ~* "urgent" reply 451 4.7.1 "subject refused"',
              'on data-end header X-Fault ~ "^yes$" reply 554 5.6.0 "header refused"',
              'on data-end size > 2k reply 552 5.3.4 "too big (rule)"')
    env = rules_env(r, mode, "plain")
    c = env.session()
    cases = [
        (message("URGENT: read me"), 451),
        (message("tagged", extra_headers=b"X-Fault: yes\r\n"), 554),
        (message("tagged no", extra_headers=b"X-Fault: no\r\n"), 250),
        (message("big", b"x" * 78 + b"\r\n") + b"y" * 78 * 30 + b"\r\n", 552),
        (message("small"), 250),
    ]
    for msg, code in cases:
        mail(c)
        c.expect("RCPT TO:<%s>" % GOOD, 250)
        c.expect("DATA", 354)
        c.send(data_bytes(msg))
        got = c.reply()
        assert got.code == code, (msg[:80], got)
        if env.relay and code != 250:
            break  # the upstream was reset with the refused message
    c.close()


@pytest.mark.parametrize("mode", MODES)
def test_condition_session_range(mode, rules_env):
    """`on mail session 1-2 reply 451`: the first two sessions are told to
    try again later, the third delivers; the transcript has three sessions
    and the two injected 451s."""
    r = rules('on mail session 1-2 reply 451 4.3.0 "Try again later"')
    env = rules_env(r, mode, "plain")
    codes = []
    for i in range(3):
        c = env.session()
        got = c.cmd("MAIL FROM:<alice@example.com>")
        codes.append(got.code)
        if got.code == 250:
            c.expect("RCPT TO:<%s>" % GOOD, 250)
            c.expect("DATA", 354)
            c.send(data_bytes(message("third try")))
            assert c.reply().code == 250
        c.expect("QUIT", 221)
        c.close()
    assert codes == [451, 451, 250], codes
    env.sessions(3)
    assert [len(fired_events(env.doc(n), 3)) for n in (1, 2, 3)] == [1, 1, 0]
    if env.relay:
        env.up.wait_envelopes(1)


@pytest.mark.parametrize("mode", MODES)
def test_condition_occurrence(mode, rules_env):
    """`occurrence 2`: the second RCPT of each session, not the first or
    the third."""
    r = rules('on rcpt occurrence 2 reply 452 4.5.3 "second recipient refused"')
    env = rules_env(r, mode, "plain")
    for _ in range(2):
        c = env.session()
        mail(c)
        codes = [c.cmd("RCPT TO:<r%d@example.org>" % i).code for i in range(3)]
        assert codes == [250, 452, 250], codes
        c.expect("QUIT", 221)
        c.close()


@pytest.mark.parametrize("mode", MODES)
def test_condition_client_address(mode, rules_env):
    """`client CIDR`: 10.0.0.0/8 and ::1 do not match a client on
    127.0.0.1; 127.0.0.0/8 does (the rule below the others fires)."""
    r = rules('on mail client 10.0.0.0/8 reply 550 5.7.1 "ten"',
              'on mail client ::1 reply 550 5.7.1 "six"',
              'on mail client 127.0.0.0/8 reply 451 4.7.1 "loopback"')
    env = rules_env(r, mode, "plain")
    c = env.session()
    got = c.cmd("MAIL FROM:<alice@example.com>")
    assert (got.code, got.lines) == (451, ["4.7.1 loopback"]), got
    c.expect("QUIT", 221)
    doc = env.doc()
    check_fired(doc, r, 5, "mail")
    assert not fired_events(doc, 3) and not fired_events(doc, 4)


def test_condition_listener_and_mode(rules_env):
    """`listener ADDR:PORT` / `:PORT`: only sessions on that listener;
    `mode sink`: only in sink mode."""
    for _ in range(20):
        port = free_port()
        r = rules('on mail listener 127.0.0.1:%d reply 451 4.3.0 "listener A"' % port,
                  'on rcpt listener :%d reply 452 4.3.0 "listener A by port"' % port,
                  'on rcpt mode sink reply 453 4.3.0 "sink only"')
        try:
            env = rules_env(r, "relay", "plain", listen=("127.0.0.1:%d" % port, "127.0.0.1:0"))
            break
        except AssertionError:
            continue  # the port was taken meanwhile
    else:
        pytest.fail("no free port for the listener")
    ports = [p for _, p in env.p.addrs]
    assert ports[0] == port
    a = Client(ports[0])
    a.hello("plain")
    assert a.cmd("MAIL FROM:<alice@example.com>").code == 451
    a.expect("QUIT", 221)
    b = Client(ports[1])
    b.hello("plain")
    mail(b)
    assert b.cmd("RCPT TO:<%s>" % GOOD).code == 250  # not A, not sink mode
    b.expect("QUIT", 221)
    a.close()
    b.close()
    sink = rules_env(r, "sink", "plain")
    c = sink.session()
    mail(c)
    assert c.cmd("RCPT TO:<%s>" % GOOD).code == 453
    c.close()


def fault_pattern(env, n=40):
    """Run n identical sessions (EHLO, MAIL, QUIT); return which got the
    probability rule's 451."""
    out = []
    for i in range(n):
        c = env.session()
        out.append(c.cmd("MAIL FROM:<alice@example.com>").code == 451)
        c.expect("QUIT", 221)
        c.close()
    return out


def test_probability_seed_reproducible(rules_env):
    """The same seed gives the same faults on two runs of the same traffic
    (40 sessions against two proxies); another seed gives others.  The
    transcript names the seed, so a failing run can be repeated."""
    r = rules('on mail probability 0.5 reply 451 4.3.0 "unlucky"')
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        env = rules_env(r, "sink", "plain", args=["--rules-seed", seed], name="prob-" + name)
        runs[name] = fault_pattern(env)
        assert "--rules-seed %d" % seed in env.p.stderr()
        if name == "a":
            first = [i for i, f in enumerate(runs[name]) if f][0]
            [(e, m)] = fired_events(env.doc(first + 1), 3)
            assert m.group(5) == "7", e["text"]
    assert runs["a"] == runs["b"], (runs["a"], runs["b"])
    assert runs["a"] != runs["c"]
    for v in runs.values():
        assert 5 <= sum(v) <= 35, v  # 0.5 of 40: never all or none


def test_probability_rule_seed_wins(rules_env):
    """A rule's own `seed` is used whatever --rules-seed says."""
    r = rules('on mail probability 50% seed 11 reply 451 4.3.0 "unlucky"')
    a = fault_pattern(rules_env(r, "sink", "plain", args=["--rules-seed", 1], name="own-a"), 20)
    b = fault_pattern(rules_env(r, "sink", "plain", args=["--rules-seed", 2], name="own-b"), 20)
    assert a == b and 0 < sum(a) < 20, (a, b)


@pytest.mark.parametrize("mode", MODES)
def test_limit(mode, rules_env):
    """`limit 2`: the rule fires twice in total (across sessions), then
    never again."""
    r = rules('on mail limit 2 reply 451 4.3.0 "limited"')
    env = rules_env(r, mode, "plain")
    codes = []
    for _ in range(2):
        c = env.session()
        for _ in range(2):
            codes.append(c.cmd("MAIL FROM:<alice@example.com>").code)
            c.expect("RSET", 250)
        c.expect("QUIT", 221)
        c.close()
    assert codes == [451, 451, 250, 250], codes
