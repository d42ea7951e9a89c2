"""The command line: help, version, usage errors, not-found, file modes."""

import json
import os
import re
import socket
import stat
import subprocess

import pytest

from conftest import (BIN, REPO, RawClient, export_eml, only_session, run_cli, sample_message,
                      show_json, stuff_data, wait_sessions)


@pytest.fixture(autouse=True)
def _need_binary():
    if not os.access(BIN, os.X_OK):
        pytest.fail("smtptap binary not found or not executable: %s" % BIN)


def mboxrd_quote(msg):
    """RFC 4155 mboxrd: one more '>' before every line matching ^>*From ."""
    return re.sub(rb"(?m)^(>*From )", rb">\1", msg)


def send_one(proxy, msg=b"Subject: one\r\n\r\nbody\r\n", rcpts=("bob@example.org",)):
    c = proxy.connect()
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO client.test")[0] == 250
        assert c.cmd("MAIL FROM:<alice@example.com>")[0] == 250
        for r in rcpts:
            assert c.cmd("RCPT TO:<%s>" % r)[0] == 250
        assert c.cmd("DATA")[0] == 354
        c.send(stuff_data(msg))
        code, lines, _ = c.reply()
        assert code == 250, lines
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()


def test_version():
    with open(os.path.join(REPO, "VERSION")) as f:
        version = f.read().strip()
    r = run_cli("--version")
    assert r.text.strip() == "smtptap %s" % version


@pytest.mark.parametrize("cmd", [[], ["proxy"], ["sessions"], ["show"], ["export"]])
def test_help(cmd):
    r = run_cli(*(cmd + ["--help"]))
    assert "usage" in r.text.lower()
    if cmd:
        assert cmd[0] in r.text


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["proxy", "--no-such-flag"],
    ["proxy", "--sink", "--upstream", "127.0.0.1:25"],
    ["proxy", "--upstream", "no-port-here"],
    ["proxy", "--upstream", "127.0.0.1:0"],
    ["proxy", "--listen", "127.0.0.1:notaport"],
    ["proxy", "--idle-timeout", "soon"],
    ["proxy", "--redact-auth", "maybe"],
    ["proxy", "--max-sessions", "0"],
    ["proxy", "unexpected-argument"],
    ["sessions", "--limit", "many"],
    ["show"],
    ["show", "--json"],
    ["export", "1"],
    ["export", "1", "--eml", "--mbox"],
])
def test_usage_errors_exit_2(args, tmp_path):
    # Run in a scratch directory so a default ./smtptap.db never lands in the repo.
    argv = [BIN] + args
    p = subprocess.run(argv, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2, "%r exited %s, stderr: %s" % (args, p.returncode, err)
    assert err.strip(), "%r: a usage error must say something on stderr" % (args,)
    assert not os.path.exists(tmp_path / "smtptap.db"), "a usage error created ./smtptap.db"


def test_not_found_exit_3(smtptap, tmp_path):
    p = smtptap(sink=True)
    send_one(p)
    s = only_session(p.db)
    sid = s["id"]
    run_cli("show", sid + 1000, "--db", p.db, expect=3)
    run_cli("show", sid + 1000, "--db", p.db, "--json", expect=3)
    run_cli("export", sid + 1000, "--eml", "--db", p.db, expect=3)
    run_cli("export", sid, "--eml", "--message", 2, "--db", p.db, expect=3)
    # and the one that exists is found
    assert export_eml(p.db, sid) == b"Subject: one\r\n\r\nbody\r\n"
    # a session without messages has nothing to export
    c = p.connect()
    try:
        c.reply()
        c.cmd("QUIT")
    finally:
        c.close()
    empty = wait_sessions(p.db, 2)[1]["id"]
    run_cli("export", empty, "--eml", "--db", p.db, expect=3)
    assert show_json(p.db, empty)["messages"] == []


def test_database_mode_0600(smtptap, tmp_path):
    old = os.umask(0o022)
    try:
        p = smtptap(sink=True)
    finally:
        os.umask(old)
    send_one(p)
    wait_sessions(p.db, 1)
    # while the proxy runs, WAL mode keeps the -wal and -shm files: they
    # hold recorded content too
    assert p.running()
    for suffix in ("", "-wal", "-shm"):
        path = p.db + suffix
        assert os.path.exists(path), "%s does not exist while the proxy runs" % path
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, "%s has mode %o" % (path, mode)
    # the message content beside it: the directory 0700, each segment 0600
    d = p.db + "-content"
    mode = stat.S_IMODE(os.stat(d).st_mode)
    assert mode == 0o700, "%s has mode %o" % (d, mode)
    segs = sorted(os.listdir(d))
    assert segs, "no content segment in %s" % d
    for name in segs:
        mode = stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode)
        assert mode == 0o600, "%s/%s has mode %o" % (d, name, mode)
    p.stop()
    mode = stat.S_IMODE(os.stat(p.db).st_mode)
    assert mode == 0o600, "database %s has mode %o after the proxy stopped" % (p.db, mode)


def test_unopenable_database_is_a_clear_error(tmp_path):
    missing = tmp_path / "no" / "such" / "dir" / "t.db"
    # README: exit status 1 is a runtime failure
    r = run_cli("proxy", "--listen", "127.0.0.1:0", "--sink", "--db", missing, expect=1, timeout=30)
    assert str(missing) in r.err, r.err
    r = run_cli("sessions", "--db", missing, expect=1)
    assert str(missing) in r.err, r.err
    # not an smtptap database
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    r = run_cli("sessions", "--db", junk, expect=1)
    assert str(junk) in r.err, r.err


def test_listen_port_in_use_is_a_clear_error(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        r = run_cli("proxy", "--listen", "127.0.0.1:%d" % port, "--sink", "--db", tmp_path / "t.db",
                    expect=1, timeout=30)
    finally:
        s.close()
    assert str(port) in r.err, r.err


def test_sessions_and_show_outputs(smtptap):
    p = smtptap(sink=True)
    send_one(p, sample_message("cli"))
    send_one(p)
    ss = wait_sessions(p.db, 2)
    assert len(ss) == 2
    assert ss[0]["id"] < ss[1]["id"], "sessions --json must list oldest first"
    ids = [s["id"] for s in ss]
    # --limit N keeps the most recent N
    lim = run_cli("sessions", "--db", p.db, "--json", "--limit", 1).json()
    if isinstance(lim, dict):
        lim = lim["sessions"]
    assert [s["id"] for s in lim] == ids[-1:]
    # the readable list names each session id
    text = run_cli("sessions", "--db", p.db).text
    for i in ids:
        assert re.search(r"\b%d\b" % i, text), text
    # the readable transcript shows the commands and replies
    t = run_cli("show", ids[0], "--db", p.db).text
    for needle in ("EHLO client.test", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.org>", "DATA",
                   "QUIT", "220", "354", "221"):
        assert needle in t, "show %d lacks %r:\n%s" % (ids[0], needle, t)


def test_show_raw_both_sides_sink(smtptap):
    """--raw --side client is exactly what the client sent; in sink mode the
    replies come from the proxy and --side proxy is exactly what it got."""
    p = smtptap(sink=True)
    c = p.connect()
    sent = b""

    def cmd(line):
        nonlocal sent
        sent += line + b"\r\n"
        c.send(line + b"\r\n")
        return c.reply()

    msg = sample_message("raw")
    try:
        c.reply()
        cmd(b"EHLO raw.test")
        cmd(b"MAIL FROM:<a@example.com>")
        cmd(b"RCPT TO:<b@example.org>")
        cmd(b"DATA")
        sent += stuff_data(msg)
        c.send(stuff_data(msg))
        c.reply()
        cmd(b"QUIT")
        c.read_until_closed()
    finally:
        c.close()
    s = only_session(p.db)
    raw_client = run_cli("show", s["id"], "--db", p.db, "--raw", "--side", "client").out
    assert raw_client == sent
    raw_proxy = run_cli("show", s["id"], "--db", p.db, "--raw", "--side", "proxy").out
    assert raw_proxy == c.received


def test_export_formats(smtptap, tmp_path):
    p = smtptap(sink=True)
    m1 = sample_message("first")
    m2 = b"From: x@example.com\r\nSubject: second\r\n\r\nFrom the start of a line\r\n>From quoted\r\nend\r\n"
    c = p.connect()
    try:
        c.reply()
        c.cmd("EHLO multi.test")
        for m in (m1, m2):
            assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<b@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(stuff_data(m))
            assert c.reply()[0] == 250
        c.cmd("QUIT")
    finally:
        c.close()
    sid = only_session(p.db)["id"]
    assert export_eml(p.db, sid, message=1) == m1
    assert export_eml(p.db, sid, message=2) == m2
    # -o FILE
    out = tmp_path / "two.eml"
    run_cli("export", sid, "--eml", "--message", 2, "--db", p.db, "-o", out)
    assert out.read_bytes() == m2
    # several messages without --message need -o DIR
    r = run_cli("export", sid, "--eml", "--db", p.db, expect=None)
    assert r.rc == 2, r
    d = tmp_path / "outdir"
    d.mkdir()
    run_cli("export", sid, "--eml", "--db", p.db, "-o", d)
    files = sorted(os.listdir(d))
    assert len(files) == 2, files
    assert sorted((d / f).read_bytes() for f in files) == sorted([m1, m2])
    # mbox holds both: mboxrd (RFC 4155; src/export.c): each message after a
    # "From " line, every line matching ^>*From  gets one more '>', line
    # ends as sent, an empty line after each message
    mb = tmp_path / "all.mbox"
    run_cli("export", sid, "--mbox", "--db", p.db, "-o", mb)
    raw = mb.read_bytes()
    assert b"\r\n>From the start of a line\r\n>>From quoted\r\nend\r\n" in raw, raw[-200:]
    from_line = rb"From a@example\.com [A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9][0-9] \d\d:\d\d:\d\d \d{4}\n"
    want = b"".join(from_line + re.escape(mboxrd_quote(m)) + b"\n" for m in (m1, m2))
    assert re.fullmatch(want, raw), raw[:300]
    # and Python's mailbox module reads it back
    import mailbox
    box = mailbox.mbox(str(mb))
    try:
        msgs = list(box)
    finally:
        box.close()
    # two, not three: the body line starting with "From " was quoted
    assert len(msgs) == 2, [m["Subject"] for m in msgs]
    assert "second" in msgs[1]["Subject"]
    body = msgs[1].get_payload(decode=True).replace(b"\r\n", b"\n")
    assert b"From the start of a line\n" in body and b"From quoted\nend\n" in body, body
    # JSON export: the session document that show --json prints
    out = run_cli("export", sid, "--json", "--db", p.db).out
    js = json.loads(out)
    assert js == json.loads(run_cli("show", sid, "--json", "--db", p.db).out)
    assert js["session"]["id"] == sid and js["session"]["mode"] == "sink" and js["session"]["outcome"] == "quit"
    ms = js["messages"]
    assert [m["idx"] for m in ms] == [1, 2]
    assert [m["subject"] for m in ms] == ["Gr\u00fc\u00dfe first", "second"]
    assert [m["size"] for m in ms] == [len(m1), len(m2)]
    assert [m["message_id"] for m in ms] == ["<first@example.com>", None]
    for m in ms:
        assert m["mail_from"] == "a@example.com" and m["complete"] is True and m["transport"] == "data", m
        assert [r["address"] for r in m["rcpt_to"]] == ["b@example.org"], m
        assert m["upstream_code"] == 250 and m["upstream_reply"].startswith("250 "), m


def _ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
        return True
    except OSError:
        return False


def several_listeners(smtptap, listen):
    p = smtptap(sink=True, listen=listen)
    assert len(p.addrs) == len(listen), p.addrs
    for host, port in p.addrs:
        c = RawClient(host, port)
        try:
            assert c.reply()[0] == 220
            assert c.cmd("QUIT")[0] == 221
        finally:
            c.close()
    ss = wait_sessions(p.db, len(listen))
    assert len(ss) == len(listen), ss
    got = sorted(s["listener"] for s in ss)
    want = sorted(("[%s]:%d" if ":" in h else "%s:%d") % (h, port) for h, port in p.addrs)
    assert got == want
    return ss


def test_several_listeners(smtptap):
    several_listeners(smtptap, ["127.0.0.1:0", "127.0.0.1:0"])


def test_ipv6_listener(smtptap):
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback (::1) on this machine: the IPv6 listener is not tested")
    ss = several_listeners(smtptap, ["127.0.0.1:0", "[::1]:0"])
    clients = sorted(s["client"] for s in ss)
    assert clients[0].startswith("127.0.0.1:") and clients[1].startswith("[::1]:"), clients


def test_max_sessions_makes_clients_wait(smtptap):
    p = smtptap(sink=True, args=["--max-sessions", "2"])
    a, b = p.connect(), p.connect()
    c = None
    try:
        assert a.reply()[0] == 220 and b.reply()[0] == 220
        c = p.connect(timeout=30)
        # while two sessions run, the third is not served (no greeting yet)
        c.sock.settimeout(1.0)
        try:
            early = c.sock.recv(100)
        except socket.timeout:
            early = None
        assert early is None, "a third session was served despite --max-sessions 2: %r" % early
        c.sock.settimeout(30)
        assert a.cmd("QUIT")[0] == 221
        a.close()
        assert c.reply()[0] == 220, "the waiting client was never served"
        assert c.cmd("QUIT")[0] == 221
        assert b.cmd("QUIT")[0] == 221
    finally:
        for x in (a, b, c):
            if x is not None:
                x.close()
    assert len(wait_sessions(p.db, 3)) == 3


def test_verbose_prints_the_conversation(smtptap):
    p = smtptap(sink=True, args=["-v"])
    send_one(p)
    wait_sessions(p.db, 1)
    p.stop()
    err = p.stderr()
    for needle in ("EHLO client.test", "MAIL FROM:<alice@example.com>", "354", "221"):
        assert needle in err, "-v output lacks %r:\n%s" % (needle, err[-3000:])
