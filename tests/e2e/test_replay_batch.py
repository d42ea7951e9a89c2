"""Batch replay and export of many sessions (issue 8, items 4 and 6).

`smtptap replay (filters | --all) --to HOST:PORT --concurrency N` replays
every session a filter matches; `smtptap export (--mbox | --eml -o DIR |
--jsonl) (filters | --all)` writes the messages or sessions of many.
Sessions are recorded through a proxy first (stopped before the replay:
the replay records into the same database).
"""

import json
import mailbox
import os
import smtplib

import pytest

from conftest import (SANITIZER, export_eml, run_cli, sessions_list, wait_sessions)

FROM = "alice@example.com"
BIG_CLI_TIMEOUT = 600 if SANITIZER else 300


def body(i, tag="m"):
    return ("From: %s\r\nTo: x@example.org\r\nSubject: %s %d\r\nMessage-ID: <%s%d@example.com>\r\n\r\n"
            "line one of %d\r\n.leading dot\r\nFrom the start\r\n" % (FROM, tag, i, tag, i, i)).encode()


def record(port, n, rcpt=lambda i: "r%d@example.org" % i, tag="m", sender=FROM):
    """n sessions of one message each through the proxy at port (smtplib,
    one after the other: bounded by n)."""
    for i in range(n):
        s = smtplib.SMTP("127.0.0.1", port, timeout=30)
        try:
            s.sendmail(sender, [rcpt(i)], body(i, tag))
            s.quit()
        finally:
            s.close()


def recorded(smtptap, n, **kw):
    p = smtptap(sink=True)
    record(p.port, n, **kw)
    wait_sessions(p.db, n)
    p.stop()
    return p.db


def replay_batch(db, to, *args, expect=0, timeout=None):
    kw = {"timeout": timeout} if timeout else {}
    return run_cli("replay", "--db", db, "--to", to, "--reply-timeout", 20, *args, expect=expect, **kw)


# --------------------------------------------------------------------------
# replay


def test_replay_batch_1000_concurrency_20(smtptap, smtp_sink):
    """The issue's check: 1,000 recorded sessions replayed 20 at once, each
    recorded as a replay of its original."""
    n = 200 if SANITIZER else 1000
    db = recorded(smtptap, n)
    originals = [s["id"] for s in sessions_list(db)]
    assert len(originals) == n
    r = replay_batch(db, smtp_sink.addr, "--all", "--concurrency", 20, "--json", timeout=BIG_CLI_TIMEOUT)
    doc = r.json()
    summary = doc["summary"]
    assert summary["sessions"] == n and summary["replayed"] == n, summary
    assert summary["failed"] == 0 and summary["skipped"] == 0, summary
    assert summary["final_replies"] == {"250": n}, summary
    assert sorted(e["session"] for e in doc["replays"]) == originals
    assert all(e["status"] in ("equal", "differs") and e["replay_session"] for e in doc["replays"])
    after = sessions_list(db)
    replays = [s for s in after if s.get("replay_of")]
    assert len(replays) == n
    assert sorted(s["replay_of"] for s in replays) == originals
    assert all(s["mode"] == "replay" and s["outcome"] == "quit" for s in replays)
    # each entry names the session that replayed it
    by_id = {s["id"]: s for s in after}
    assert all(by_id[e["replay_session"]]["replay_of"] == e["session"] for e in doc["replays"])
    # the progress line is a terminal's only: none in the output, none on a pipe
    assert "\r" not in r.err and "\r" not in r.out.decode()
    # a second batch leaves the replays out (not replays of replays)
    doc2 = replay_batch(db, smtp_sink.addr, "--id", "%d-%d" % (n - 2, n + 5), "--concurrency", 20, "--json",
                        timeout=BIG_CLI_TIMEOUT).json()
    assert sorted(e["session"] for e in doc2["replays"]) == [n - 2, n - 1, n]


def test_replay_batch_filter_matches_sessions(smtptap, smtp_sink):
    """A filter replays exactly the sessions `sessions` lists with it."""
    p = smtptap(sink=True)
    record(p.port, 6, rcpt=lambda i: "even%d@a.example" % i if i % 2 == 0 else "odd%d@b.example" % i)
    record(p.port, 2, sender="carol@c.example", tag="c")
    wait_sessions(p.db, 8)
    p.stop()
    for flt in (["--rcpt", "@a.example"], ["--from", "carol@c.example"], ["--search", "m 3"],
                ["--id", "2-5"], ["--id", "1,7", "--outcome", "quit"]):
        want = [s["id"] for s in run_cli("sessions", "--db", p.db, "--json", "--limit", 0,
                                         *[("--to" if a == "--rcpt" else a) for a in flt]).json()]
        assert want, flt
        doc = replay_batch(p.db, smtp_sink.addr, *flt, "--json").json()
        assert [e["session"] for e in doc["replays"]] == want, flt
    # replays are left out unless asked for
    n_rep = len([s for s in sessions_list(p.db) if s.get("replay_of")])
    doc = replay_batch(p.db, smtp_sink.addr, "--mode", "replay", "--json").json()
    assert doc["summary"]["sessions"] == n_rep
    doc = replay_batch(p.db, smtp_sink.addr, "--all", "--with-replays", "--json").json()
    assert doc["summary"]["sessions"] == 8 + 2 * n_rep


def test_replay_batch_mix_equal_and_differing(smtptap, aiosmtpd_factory):
    """Recorded against a server accepting all; replayed to one refusing
    some recipients: exit 1, and the summary counts each kind."""
    good = aiosmtpd_factory()
    p = smtptap(upstream=good.addr)
    record(p.port, 6, rcpt=lambda i: "nouser%d@example.org" % i if i in (1, 4) else "ok%d@example.org" % i)
    wait_sessions(p.db, 6)
    p.stop()
    picky = aiosmtpd_factory(reject=["nouser1@example.org", "nouser4@example.org"])
    r = replay_batch(p.db, picky.addr, "--all", "--diff", "--concurrency", 3, expect=1)
    out = r.out.decode()
    assert "4 equal, 2 differ" in out and "0 failed" in out, out
    # the refused recipients leave no message: DATA is refused (554)
    assert "250 x 4" in out, out
    # the differing sessions' reports, the equal ones' not
    assert out.count("replayed to %s as session" % picky.addr) == 2, out
    doc = replay_batch(p.db, picky.addr, "--all", "--diff", "--json", expect=1).json()
    s = doc["summary"]
    assert (s["sessions"], s["equal"], s["differing"], s["failed"]) == (6, 4, 2, 0), s
    diffs = [e for e in doc["replays"] if e["status"] == "differs"]
    assert [e["session"] for e in diffs] == [2, 5]
    for e in diffs:
        fd = e["first_difference"]
        assert fd["command"].upper().startswith("RCPT TO:<NOUSER"), fd
        assert fd["recorded"]["code"] == 250 and fd["replay"]["code"] == 550, fd
        assert "units" not in e  # a batch entry is a summary; replay ID --json has the rest
    eq = [e for e in doc["replays"] if e["status"] == "equal"]
    assert all(e["first_difference"] is None and e["error"] is None for e in eq)
    # without --diff: every session replayed, exit 0
    replay_batch(p.db, picky.addr, "--all", expect=0)


def test_replay_batch_unreachable_is_an_error(smtptap):
    db = recorded(smtptap, 2)
    r = replay_batch(db, "127.0.0.1:1", "--all", "--json", expect=2)
    s = r.json()["summary"]
    assert s["failed"] == 2 and s["connection_failures"] == 2, s
    assert all(e["status"] == "failed" and e["error"] for e in r.json()["replays"])


def test_replay_batch_redacted_skipped(smtptap, aiosmtpd_factory):
    """A session recorded with its credentials redacted is skipped in a
    batch (counted, with the reason); alone, it is refused as before."""
    up = aiosmtpd_factory(auth=True)
    p = smtptap(upstream=up.addr)
    record(p.port, 2)
    s = smtplib.SMTP("127.0.0.1", p.port, timeout=30)
    s.ehlo("authy")
    s.login("wp-user", "s3cret-Pa55")
    s.sendmail(FROM, ["a@example.org"], body(9))
    s.quit()
    wait_sessions(p.db, 3)
    p.stop()
    r = replay_batch(p.db, up.addr, "--all", expect=0)
    assert "skipped: 1" in r.out.decode() and "--auth" in r.out.decode(), r.out
    doc = replay_batch(p.db, up.addr, "--all", "--json").json()
    assert doc["summary"]["skipped"] == 1 and doc["summary"]["replayed"] == 2
    (sk,) = [e for e in doc["replays"] if e["status"] == "skipped"]
    assert sk["session"] == 3 and "redacted" in sk["skipped"]
    # one ID: the one-line error, nothing replayed
    r = run_cli("replay", 3, "--db", p.db, "--to", up.addr, expect=1)
    assert "redacted" in r.err and "--auth" in r.err


def test_replay_batch_usage_errors(smtptap, smtp_sink):
    db = recorded(smtptap, 1)
    to = smtp_sink.addr
    assert "--all" in replay_batch(db, to, expect=2).err
    for bad in ("0", "257", "-1", "x"):
        assert "--concurrency" in replay_batch(db, to, "--all", "--concurrency", bad, expect=2).err
    replay_batch(db, to, "--all", "--concurrency", 256)
    assert "not both" in run_cli("replay", 1, "--db", db, "--to", to, "--all", expect=2).err
    assert "--concurrency" in run_cli("replay", 1, "--db", db, "--to", to, "--concurrency", 2, expect=2).err
    assert "--since" in replay_batch(db, to, "--since", "soon", expect=2).err
    assert "--rcpt" in replay_batch(db, to, "--rcpt", "", expect=2).err
    assert "--id" in replay_batch(db, to, "--id", "9-3", expect=2).err
    # no match: 3, like no such session
    assert "no session" in replay_batch(db, to, "--id", "500", expect=3).err
    h = run_cli("replay", "--help").out.decode()
    assert "--concurrency" in h and "--with-replays" in h and "--rcpt ADDR" in h


# --------------------------------------------------------------------------
# export


def test_export_mbox_all_and_filter(smtptap, tmp_path):
    p = smtptap(sink=True)
    record(p.port, 4, rcpt=lambda i: "x%d@a.example" % (i % 2))
    wait_sessions(p.db, 4)
    p.stop()
    out = str(tmp_path / "all.mbox")
    run_cli("export", "--db", p.db, "--mbox", "--all", "-o", out)
    # the same bytes as each session's own mbox, in session order
    one = b"".join(run_cli("export", i, "--db", p.db, "--mbox").out for i in range(1, 5))
    with open(out, "rb") as f:
        assert f.read() == one
    msgs = list(mailbox.mbox(out))
    assert [m["Subject"] for m in msgs] == ["m 0", "m 1", "m 2", "m 3"]
    # mboxrd quoting kept
    assert b"\n>From the start" in one
    # a filter: standard output
    got = run_cli("export", "--db", p.db, "--mbox", "--to", "x1@a.example").out
    assert got == run_cli("export", 2, "--db", p.db, "--mbox").out + run_cli("export", 4, "--db", p.db, "--mbox").out
    assert run_cli("export", "--db", p.db, "--mbox", "--rcpt", "x1@a.example", "--since", "1d").out == got
    assert "no session" in run_cli("export", "--db", p.db, "--mbox", "--until", "2001-01-01", expect=3).err
    # nothing matched: -o is not created, and an existing file keeps its bytes
    for fmt in ("--mbox", "--jsonl"):
        none = tmp_path / ("none" + fmt)
        run_cli("export", "--db", p.db, fmt, "--until", "2001-01-01", "-o", none, expect=3)
        assert not none.exists()
        none.write_bytes(b"kept")
        run_cli("export", "--db", p.db, fmt, "--until", "2001-01-01", "-o", none, expect=3)
        assert none.read_bytes() == b"kept"


def test_export_eml_many_sessions_into_dir(smtptap, tmp_path):
    p = smtptap(sink=True)
    record(p.port, 3)
    # one session with two messages
    s = smtplib.SMTP("127.0.0.1", p.port, timeout=30)
    s.sendmail(FROM, ["a@example.org"], body(10))
    s.sendmail(FROM, ["b@example.org"], body(11))
    s.quit()
    wait_sessions(p.db, 4)
    p.stop()
    d = tmp_path / "out"
    run_cli("export", "--db", p.db, "--eml", "--all", "-o", d)
    assert sorted(os.listdir(d)) == ["1-1.eml", "2-1.eml", "3-1.eml", "4-1.eml", "4-2.eml"]
    for name in os.listdir(d):
        sid, n = name[:-4].split("-")
        assert (d / name).read_bytes() == export_eml(p.db, int(sid), int(n))
    assert (d / "4-2.eml").read_bytes() == body(11)
    # a second export into the same directory: the same names, overwritten
    run_cli("export", "--db", p.db, "--eml", "--id", "4", "-o", d)
    assert len(os.listdir(d)) == 5
    assert "-o DIR" in run_cli("export", "--db", p.db, "--eml", "--all", expect=2).err
    f = tmp_path / "file"
    f.write_text("x")
    assert "not a directory" in run_cli("export", "--db", p.db, "--eml", "--all", "-o", f, expect=2).err


def test_export_jsonl(smtptap, tmp_path):
    p = smtptap(sink=True)
    record(p.port, 3)
    wait_sessions(p.db, 3)
    p.stop()
    lines = run_cli("export", "--db", p.db, "--jsonl", "--all").out.decode().splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines, 1):
        doc = json.loads(line)
        # the same document as show --json, one per line
        assert doc == run_cli("show", i, "--db", p.db, "--json").json()
        assert doc["session"]["id"] == i
        assert doc["messages"][0]["mail_from"] == FROM
        assert "r%d@example.org" % (i - 1) in json.dumps(doc["messages"][0]["rcpt_to"])
    out = tmp_path / "s.jsonl"
    run_cli("export", "--db", p.db, "--jsonl", "--id", "2-3", "-o", out)
    assert [json.loads(x)["session"]["id"] for x in out.read_text().splitlines()] == [2, 3]
    # one session by ID: one line
    one = run_cli("export", 2, "--db", p.db, "--jsonl").out.decode()
    assert one.count("\n") == 1 and json.loads(one)["session"]["id"] == 2


def test_export_batch_usage_errors(smtptap):
    db = recorded(smtptap, 1)
    assert "--all" in run_cli("export", "--db", db, "--mbox", expect=2).err
    assert "--jsonl" in run_cli("export", "--db", db, "--json", "--all", expect=2).err
    assert "--message" in run_cli("export", "--db", db, "--mbox", "--all", "--message", 1, expect=2).err
    assert "not both" in run_cli("export", 1, "--db", db, "--mbox", "--all", expect=2).err
    assert "--since" in run_cli("export", "--db", db, "--mbox", "--since", "x", expect=2).err
    h = run_cli("export", "--help").out.decode()
    assert "--jsonl" in h and "--all" in h and "SESSION-N.eml" in h
