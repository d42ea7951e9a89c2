"""`smtptap sessions` filters, pages and outputs, on a database recorded
through the real proxy.

One proxy records a small corpus for the whole module: sink sessions (one
over STARTTLS, one that never reaches DATA, one cut by its client) and a
relayed one through an aiosmtpd upstream, on two listeners of the same
proxy.  The tests then only read it: each filter, the pages, --json and
--jsonl, the plans (--explain), and the errors for bad values (one line
naming the flag, exit status 2).
"""

import datetime
import json
import re
import smtplib
import ssl
import time

import pytest

from conftest import AioUpstream, Proxy, RawClient, run_cli, wait_sessions

# The corpus, in recording order (session ids 1..6).
ALICE = 1      # alice@example.com -> bob@example.org, carol@other.net: "Invoice 42"
TLS = 2        # over STARTTLS: bob@example.com -> dave@example.org: "Password reset"
BOUNCE = 3     # the null sender -> postmaster@example.org: "bounce 100%_off"
NODATA = 4     # x@example.com -> nodata@example.org, then RSET: no message
CUT = 5        # EHLO, then the client goes away
RELAYED = 6    # via aiosmtpd: news@lists.example.net -> Bob@EXAMPLE.org: "Weekly news"
ALL = [1, 2, 3, 4, 5, 6]


def unverified_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def send(host, port, mail_from, rcpts, msg, tls=False):
    s = smtplib.SMTP(host, port, timeout=30)
    try:
        s.ehlo("client.test")
        if tls:
            s.starttls(context=unverified_context())
            s.ehlo("client.test")
        s.sendmail(mail_from, rcpts, msg)
        s.quit()
    finally:
        s.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """The recorded corpus: a database path, the proxy stopped."""
    tmp = tmp_path_factory.mktemp("filters")
    up = AioUpstream()
    p = None
    try:
        p = Proxy(tmp, "rec", sink=True, args=["--client-tls", "starttls"],
                  listen=("127.0.0.1:0,sink", "127.0.0.1:0,upstream=%s" % up.addr))
        (sh, sp), (rh, rp) = p.addrs[0], p.addrs[1]
        send(sh, sp, "alice@example.com", ["bob@example.org", "carol@other.net"],
             b"Subject: Invoice 42\r\nMessage-ID: <inv42@example.com>\r\n\r\nPlease pay.\r\n")
        wait_sessions(p.db, 1)
        send(sh, sp, "bob@example.com", ["dave@example.org"], b"Subject: Password reset\r\n\r\nclick\r\n", tls=True)
        wait_sessions(p.db, 2)
        send(sh, sp, "", ["postmaster@example.org"], b"Subject: bounce 100%_off\r\n\r\nbounced\r\n")
        wait_sessions(p.db, 3)
        c = RawClient(sh, sp)
        try:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO client.test")[0] == 250
            assert c.cmd("MAIL FROM:<x@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<nodata@example.org>")[0] == 250
            assert c.cmd("RSET")[0] == 250
            assert c.cmd("QUIT")[0] == 221
        finally:
            c.close()
        wait_sessions(p.db, 4)
        c = RawClient(sh, sp)
        try:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO client.test")[0] == 250
        finally:
            c.close()
        wait_sessions(p.db, 5)
        send(rh, rp, "news@lists.example.net", ["Bob@EXAMPLE.org"], b"Subject: Weekly news\r\n\r\nnews\r\n")
        wait_sessions(p.db, 6)
        p.stop()
    finally:
        if p is not None and p.running():
            p.kill()
        up.stop()
    return p.db


def ids(db, *args):
    """The ids `sessions --json` lists for these flags (all pages)."""
    doc = run_cli("sessions", "--db", db, "--json", "--limit", 0, *args).json()
    assert isinstance(doc, list), doc
    return [s["id"] for s in doc]


def sessions(db):
    return {s["id"]: s for s in run_cli("sessions", "--db", db, "--json", "--limit", 0).json()}


def test_corpus_recorded_as_expected(db):
    ss = sessions(db)
    assert sorted(ss) == ALL
    assert ss[TLS]["client_tls"] is not None
    assert [i for i in ALL if ss[i]["client_tls"] is None] == [1, 3, 4, 5, 6]
    assert ss[RELAYED]["mode"] == "relay" and ss[RELAYED]["upstream"] is not None
    assert ss[CUT]["outcome"] == "client-closed", ss[CUT]
    assert ss[NODATA]["nmessages"] == 0 and ss[NODATA]["ntransactions"] == 1


@pytest.mark.parametrize("args,want", [
    # envelope recipients: any case, with or without <>, accepted or not,
    # with or without DATA; a domain is exact (no subdomains)
    (["--to", "bob@example.org"], [ALICE, RELAYED]),
    (["--to", "<BOB@example.ORG>"], [ALICE, RELAYED]),
    (["--to", "nodata@example.org"], [NODATA]),
    (["--to", "@example.org"], [ALICE, TLS, BOUNCE, NODATA, RELAYED]),
    (["--to", "@other.net"], [ALICE]),
    (["--to", "@org"], []),
    (["--to", "nobody@example.org"], []),
    # envelope senders, the null sender
    (["--from", "ALICE@example.com"], [ALICE]),
    (["--from", "@example.com"], [ALICE, TLS, NODATA]),
    (["--from", "@lists.example.net"], [RELAYED]),
    (["--from", "@example.net"], []),
    (["--from", "<>"], [BOUNCE]),
    # both, and more
    (["--from", "@example.com", "--to", "@example.org"], [ALICE, TLS, NODATA]),
    (["--from", "@example.com", "--to", "@example.org", "--tls"], [TLS]),
    # the Subject: a substring, case ignored, wildcards literal
    (["--search", "password"], [TLS]),
    (["--search", "100%"], [BOUNCE]),
    (["--search", "%_"], [BOUNCE]),
    (["--search", "_"], [BOUNCE]),
    (["--search", "e"], [ALICE, TLS, BOUNCE, RELAYED]),
    (["--search", "nothing like it"], []),
    # Message-ID, with or without <>
    (["--message-id", "inv42@example.com"], [ALICE]),
    (["--message-id", "<inv42@example.com>"], [ALICE]),
    # outcome, live
    (["--outcome", "quit"], [ALICE, TLS, BOUNCE, NODATA, RELAYED]),
    (["--outcome", "client-closed"], [CUT]),
    (["--outcome", "live"], []),
    # client address and blocks
    (["--client", "127.0.0.1"], ALL),
    (["--client", "127.0.0.0/8"], ALL),
    (["--client", "10.0.0.0/8"], []),
    (["--client", "::1"], []),
    # TLS, mode, ids
    (["--tls"], [TLS]),
    (["--no-tls"], [ALICE, BOUNCE, NODATA, CUT, RELAYED]),
    (["--mode", "relay"], [RELAYED]),
    (["--mode", "sink"], [1, 2, 3, 4, 5]),
    (["--id", "2-3,6"], [2, 3, 6]),
    (["--id", "4"], [4]),
    (["--id", "7-100"], []),
    (["--id", "1-6", "--outcome", "client-closed"], [CUT]),
])
def test_filter(db, args, want):
    assert ids(db, *args) == want, args


def test_time_filters(db):
    ss = sessions(db)
    # RFC 3339, as --json prints times: since is inclusive, until exclusive
    third = ss[BOUNCE]["started_at"]
    assert ids(db, "--since", third) == [3, 4, 5, 6]
    assert ids(db, "--until", third) == [1, 2]
    assert ids(db, "--since", ss[TLS]["started_at"], "--until", third) == [TLS]
    assert ids(db, "--since", third, "--to", "@example.org") == [BOUNCE, NODATA, RELAYED]
    # local time, as `date` prints it: the minute and the day of the first
    first = datetime.datetime.strptime(ss[1]["started_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).astimezone()
    assert ids(db, "--since", first.strftime("%Y-%m-%d %H:%M")) == ALL
    assert ids(db, "--until", first.strftime("%Y-%m-%d %H:%M")) == []
    assert ids(db, "--since", first.strftime("%Y-%m-%d")) == ALL
    assert ids(db, "--until", first.strftime("%Y-%m-%d")) == []
    # ages before now
    assert ids(db, "--since", "1d") == ALL
    assert ids(db, "--until", "1d") == []
    assert ids(db, "--since", "yesterday") == ALL
    assert ids(db, "--until", "now") == ALL


def test_pages(db):
    # the newest page, shown oldest first, and where the next one is
    r = run_cli("sessions", "--db", db, "--json", "--limit", 2)
    assert [s["id"] for s in r.json()] == [5, 6]
    r = run_cli("sessions", "--db", db, "--limit", 2)
    assert re.search(r"--before 5\b", r.err), r.err
    assert [int(l.split()[0]) for l in r.text.splitlines()[1:]] == [5, 6]
    # following the cursor back
    assert ids(db, "--before", 5) == [1, 2, 3, 4]
    r = run_cli("sessions", "--db", db, "--json", "--limit", 2, "--before", 5)
    assert [s["id"] for s in r.json()] == [3, 4]
    r = run_cli("sessions", "--db", db, "--limit", 2, "--before", 3)
    assert [int(l.split()[0]) for l in r.text.splitlines()[1:]] == [1, 2]
    assert "--before" not in r.err, "the last page says there is more: %r" % r.err
    # and forward
    r = run_cli("sessions", "--db", db, "--json", "--limit", 2, "--after", 1)
    assert [s["id"] for s in r.json()] == [2, 3]
    r = run_cli("sessions", "--db", db, "--limit", 2, "--after", 1)
    assert re.search(r"--after 3\b", r.err), r.err
    assert ids(db, "--after", 4) == [5, 6]
    assert ids(db, "--after", 6) == []
    assert ids(db, "--before", 1) == []
    assert ids(db, "--after", 2, "--before", 5) == [3, 4]
    # a page of a filter
    r = run_cli("sessions", "--db", db, "--json", "--limit", 2, "--to", "@example.org")
    assert [s["id"] for s in r.json()] == [4, 6]
    r = run_cli("sessions", "--db", db, "--json", "--limit", 2, "--to", "@example.org", "--before", 4)
    assert [s["id"] for s in r.json()] == [2, 3]


def test_json_and_jsonl(db):
    arr = run_cli("sessions", "--db", db, "--json", "--limit", 0).json()
    r = run_cli("sessions", "--db", db, "--jsonl", "--limit", 0)
    lines = r.out.decode().splitlines()
    assert len(lines) == len(arr) == 6
    for line, obj in zip(lines, arr):
        assert json.loads(line) == obj
        assert "\n" not in line
    # the same session objects as show --json's (which also lists the
    # sessions replaying it)
    doc = run_cli("show", TLS, "--db", db, "--json").json()
    assert doc["session"].pop("replays") == []
    assert doc["session"] == arr[TLS - 1]
    # filters apply to both
    r = run_cli("sessions", "--db", db, "--jsonl", "--to", "@other.net")
    assert [json.loads(l)["id"] for l in r.out.decode().splitlines()] == [ALICE]
    assert run_cli("sessions", "--db", db, "--jsonl", "--to", "nobody@x").out == b""
    assert run_cli("sessions", "--db", db, "--json", "--to", "nobody@x").json() == []


def test_table_lists_the_matches(db):
    r = run_cli("sessions", "--db", db, "--from", "@example.com")
    rows = r.text.splitlines()
    assert rows[0].split()[0] == "ID"
    assert [int(l.split()[0]) for l in rows[1:]] == [ALICE, TLS, NODATA]
    r = run_cli("sessions", "--db", db, "--to", "nobody@example.org")
    assert r.text.splitlines()[1:] == []


def test_explain_no_scan(db):
    """The plans of the default listing and of --to --since search
    indexes: no scan of the sessions table (SCAN s / SCAN sessions)."""
    for args in ([], ["--before", 4], ["--to", "bob@example.org", "--since", "1d"], ["--to", "@example.org"],
                 ["--from", "alice@example.com"]):
        plan = run_cli("sessions", "--db", db, "--explain", *args).text
        assert "SEARCH" in plan, (args, plan)
        assert not re.search(r"^SCAN (s|sessions)\b", plan, re.M), "%r scans the sessions table:\n%s" % (args, plan)
    plan = run_cli("sessions", "--db", db, "--explain", "--to", "bob@example.org", "--since", "1d").text
    assert "recipients_address" in plan, plan


@pytest.mark.parametrize("args,flag", [
    (["--since", "yesterdayish"], "--since"),
    (["--since", "2024-02-30"], "--since"),
    (["--until", "12:00"], "--until"),
    (["--since", "2024-05-02", "--until", "2024-05-01"], "--until"),
    (["--to", "@"], "--to"),
    (["--to", ""], "--to"),
    (["--from", "@"], "--from"),
    (["--client", "10.0.0.0/40"], "--client"),
    (["--client", "localhost"], "--client"),
    (["--outcome", "quit'; --"], "--outcome"),
    (["--mode", "proxy"], "--mode"),
    (["--search", ""], "--search"),
    (["--message-id", ""], "--message-id"),
    (["--id", "9-3"], "--id"),
    (["--id", "x"], "--id"),
    (["--id", "1", "--id", "2"], "--id"),
    (["--before", "0"], "--before"),
    (["--after", "-1"], "--after"),
    (["--after", "5", "--before", "6"], "--before"),
    (["--limit", "-1"], "--limit"),
    (["--tls", "--no-tls"], "--tls"),
    (["--json", "--jsonl"], "--json"),
])
def test_bad_values(db, args, flag):
    r = run_cli("sessions", "--db", db, *args, expect=2)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1, r.err
    assert flag in lines[0], r.err
    assert r.out == b""


def test_help_says_what_search_searches():
    text = run_cli("sessions", "--help").text
    for flag in ("--from", "--to", "--since", "--until", "--search", "--outcome", "--client", "--tls", "--no-tls",
                 "--id", "--limit", "--after", "--before", "--json", "--jsonl", "--message-id", "--mode"):
        assert flag in text, flag
    assert re.search(r"--search TEXT\s+TEXT in the Subject", text), text


def test_filters_while_the_proxy_records(smtptap):
    """A live session is found (--outcome live) while the proxy records,
    and gone from that filter once it ended."""
    p = smtptap(sink=True)
    c = p.connect()
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO live.test")[0] == 250
        assert c.cmd("MAIL FROM:<live@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<watch@example.org>")[0] == 250
        deadline = time.monotonic() + 20
        while ids(p.db, "--outcome", "live") != [1]:
            assert time.monotonic() < deadline, "the live session was not listed"
            time.sleep(0.1)
        assert ids(p.db, "--outcome", "live", "--from", "live@example.com") == [1]
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    wait_sessions(p.db, 1)
    assert ids(p.db, "--outcome", "live") == []
    assert ids(p.db, "--outcome", "quit", "--to", "watch@example.org") == [1]
