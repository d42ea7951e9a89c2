"""What schema 2 records (issue 7, item 1): every recipient with its reply,
written when the reply arrives, whether or not the transaction reaches DATA
(pipelined MAIL/RCPT/DATA and BDAT, RSET, RCPT-without-DATA, in relay and
sink mode); every reply linked to the command it answers; the sessions'
summaries (counts, bytes, HELO, AUTH user, never the password); and prune
and retention deleting whole sessions, never a live one."""

import base64
import json
import os
import shutil
import smtplib
import sqlite3

import pytest

from conftest import (RECORD_TIMEOUT, db_bytes, RawClient, only_session, run_cli, sessions_list, show_json,
                      stuff_data, wait_sessions, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
V1_DB = os.path.join(HERE, "..", "fixtures", "v1.db")


def db_query(db, sql, args=()):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def by_seq(doc):
    return {e["seq"]: e for e in doc["events"]}


def rcpts(t):
    return [(r["address"], r["reply_code"]) for r in t["rcpt_to"]]


def check_links(doc):
    """Every reply that answers something names an earlier event of the
    right kind; a client's command is answered at most once by a reply the
    client received (an altered reply and its replacement share one)."""
    ev = by_seq(doc)
    answered = {}
    for e in doc["events"]:
        if e["kind"] != "reply" or e["answers_seq"] is None:
            continue
        q = ev[e["answers_seq"]]
        assert q["seq"] < e["seq"], (q, e)
        assert q["kind"] in ("command", "auth", "data", "connect"), (q, e)
        if "altered" not in e["flags"]:
            assert q["seq"] not in answered, "command %d answered twice: %r %r" % (q["seq"], answered[q["seq"]], e)
            answered[q["seq"]] = e
    return answered


def test_pipelined_bdat_relay_every_recipient_with_its_reply(mini_factory, smtptap):
    """MAIL/RCPT/RCPT/BDAT LAST in one write: the message is opened before
    any reply arrives; the recipients still get theirs."""
    up = mini_factory(caps=("PIPELINING", "CHUNKING", "8BITMIME"))
    p = smtptap(upstream=up.addr, args=["--client-tls", "off", "--upstream-tls", "off"])
    body = b"Subject: pipelined bdat\r\n\r\nhello\r\n"
    c = p.connect()
    try:
        c.reply()
        assert c.cmd("EHLO pipe.example")[0] == 250
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<x@example.org>\r\nRCPT TO:<y@example.org> NOTIFY=NEVER\r\n"
               b"BDAT %d LAST\r\n" % len(body) + body)
        assert [c.reply()[0] for _ in range(4)] == [250] * 4
        # then a transaction reset before any of its replies came
        c.send(b"MAIL FROM:<b@example.com>\r\nRCPT TO:<z@example.org>\r\nRSET\r\nQUIT\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 221]
    finally:
        c.close()
    s = only_session(p.db)
    doc = show_json(p.db, s["id"])
    m = doc["messages"][0]
    assert m["transport"] == "bdat" and m["transaction"] == 1
    assert rcpts(m) == [("x@example.org", 250), ("y@example.org", 250)]
    assert m["rcpt_to"][1]["params"] == "NOTIFY=NEVER"
    assert [t["idx"] for t in doc["transactions"]] == [1, 2]
    t1, t2 = doc["transactions"]
    assert t1["mail_code"] == 250 and t1["nmessages"] == 1
    assert t2["mail_from"] == "b@example.com" and t2["mail_code"] == 250 and t2["nmessages"] == 0
    assert rcpts(t2) == [("z@example.org", 250)]
    ev = by_seq(doc)
    answered = check_links(doc)
    # each recipient names its RCPT command, whose reply is the one kept
    for t in doc["transactions"]:
        for r in t["rcpt_to"]:
            cmd = ev[r["seq"]]
            assert cmd["kind"] == "command" and r["address"] in cmd["text"]
            assert answered[r["seq"]]["text"] == r["reply"]
        assert ev[t["mail_seq"]]["text"].startswith("MAIL FROM:<%s>" % t["mail_from"])
    # the BDAT LAST reply answers the BDAT command, the QUIT reply the QUIT
    bdat = [e for e in doc["events"] if e["kind"] == "command" and e["text"].startswith("BDAT")][0]
    assert answered[bdat["seq"]]["text"].startswith("250 2.0.0 %d octets" % len(body))
    assert ev[1]["kind"] == "connect" and answered[1]["text"].startswith("220")
    assert s["ntransactions"] == 2 and s["nmessages"] == 1 and s["nevents"] == len(doc["events"])
    assert s["helo"] == "pipe.example"


def test_rcpt_without_data_relay(aio, smtptap):
    """A transaction refused before DATA, and one abandoned with RSET: both
    have their recipients, with the replies, in --json and in show."""
    p = smtptap(upstream=aio.addr, args=["--client-tls", "off", "--upstream-tls", "off"])
    c = p.connect()
    try:
        c.reply()
        assert c.cmd("EHLO nodata.example")[0] == 250
        assert c.cmd("MAIL FROM:<a@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<nouser@example.org>")[0] == 550
        assert c.cmd("DATA")[0] == 503
        assert c.cmd("RSET")[0] == 250
        assert c.cmd("MAIL FROM:<b@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<someone@example.org>")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    s = only_session(p.db)
    doc = show_json(p.db, s["id"])
    assert doc["messages"] == []
    assert [(t["mail_from"], t["mail_code"], rcpts(t), t["nmessages"]) for t in doc["transactions"]] == [
        ("a@example.com", 250, [("nouser@example.org", 550)], 0),
        ("b@example.com", 250, [("someone@example.org", 250)], 0)]
    assert "no such user" in doc["transactions"][0]["rcpt_to"][0]["reply"]
    check_links(doc)
    text = run_cli("show", s["id"], "--db", p.db).text
    assert "transaction 1 (no message)" in text and "transaction 2 (no message)" in text
    assert "rcpt to      <nouser@example.org>: 550 5.1.1 no such user" in text
    assert "mail from    <b@example.com>: 250" in text
    # the recipient is found by address, case-insensitively, with an index
    assert db_query(p.db, "SELECT session_id FROM recipients WHERE address = ? COLLATE NOCASE",
                    ("NOUSER@example.org",)) == [(s["id"],)]


def test_pipelined_sink_data_and_bdat(smtptap):
    p = smtptap(sink=True)
    c = p.connect()
    try:
        c.reply()
        assert c.cmd("EHLO sinkpipe.example")[0] == 250
        c.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<r1@example.org>\r\nRCPT TO:<r2@example.org>\r\nDATA\r\n")
        assert [c.reply()[0] for _ in range(4)] == [250, 250, 250, 354]
        c.send(stuff_data(b"Subject: one\r\n\r\n.dot\r\n"))
        assert c.reply()[0] == 250
        c.send(b"MAIL FROM:<b@example.com>\r\nRCPT TO:<r3@example.org>\r\nBDAT 0 LAST\r\n")
        codes = [c.reply()[0] for _ in range(3)]
        assert codes == [250, 250, 250], codes  # BDAT 0 LAST is answered
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    s = only_session(p.db)
    doc = show_json(p.db, s["id"])
    assert [rcpts(m) for m in doc["messages"]] == [[("r1@example.org", 250), ("r2@example.org", 250)],
                                                   [("r3@example.org", 250)]]
    assert [m["transport"] for m in doc["messages"]] == ["data", "bdat"]
    assert [m["transaction"] for m in doc["messages"]] == [1, 2]
    answered = check_links(doc)
    # the final reply to DATA answers the last data event (the one with the
    # terminator)
    data = [e for e in doc["events"] if e["kind"] == "data"]
    assert answered[data[-1]["seq"]]["text"].startswith("250 2.0.0 Ok")
    assert s["proxy_bytes"] > 0 and s["upstream_bytes"] == 0
    assert s["client_bytes"] == sum(len(e["text"] or "") + 2 for e in doc["events"]
                                    if e["side"] == "client" and e["kind"] == "command") + \
        sum(e["bytes"] for e in data)


def test_altered_reply_linked_to_its_replacement(mini_factory, smtptap):
    """--client-tls off removes STARTTLS from the upstream's EHLO reply: the
    reply as received is marked altered, and what the client got names it
    as its cause; both answer the EHLO."""
    up = mini_factory(caps=("PIPELINING", "STARTTLS", "8BITMIME"))
    p = smtptap(upstream=up.addr, args=["--client-tls", "off", "--upstream-tls", "off"])
    c = p.connect()
    try:
        c.reply()
        assert c.cmd("EHLO alter.example")[0] == 250
        assert c.cmd("STARTTLS")[0] == 454
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    doc = show_json(p.db, only_session(p.db)["id"])
    ev = by_seq(doc)
    altered = [e for e in doc["events"] if "altered" in e["flags"]]
    assert len(altered) == 1
    a = altered[0]
    sent = [e for e in doc["events"] if e["cause_seq"] == a["seq"]]
    assert len(sent) == 1 and sent[0]["side"] == "proxy" and "STARTTLS" not in sent[0]["text"]
    assert a["answers_seq"] == sent[0]["answers_seq"]
    assert ev[a["answers_seq"]]["text"] == "EHLO alter.example"
    # smtptap's own 454 answers the STARTTLS it refused
    st = [e for e in doc["events"] if e["kind"] == "command" and e["text"] == "STARTTLS"][0]
    assert check_links(doc)[st["seq"]]["text"].startswith("454")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_auth_user_kept_password_not(aiosmtpd_factory, smtptap, mech):
    up = aiosmtpd_factory(auth=True)
    p = smtptap(upstream=up.addr, args=["--client-tls", "off", "--upstream-tls", "off"])
    user, password = "mailuser@example.com", "s3cret-Pa55"
    s = smtplib.SMTP(p.host, p.port, timeout=30)
    try:
        s.ehlo("auth.example")
        s.user, s.password = user, password
        if mech == "PLAIN":
            assert s.auth("PLAIN", s.auth_plain, initial_response_ok=True)[0] == 235
        else:
            assert s.auth("LOGIN", s.auth_login, initial_response_ok=False)[0] == 235
        s.quit()
    finally:
        s.close()
    sess = only_session(p.db)
    assert sess["auth_mech"] == mech and sess["auth_user"] == user
    assert sess["helo"] == "auth.example"
    dump = db_bytes(p.db)
    for secret in (password.encode(), base64.b64encode(password.encode()),
                   base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())):
        assert secret not in dump, secret


def test_prune_cli_with_a_proxy_recording(smtptap):
    p = smtptap(sink=True)
    for i in range(3):
        with smtplib.SMTP(p.host, p.port, local_hostname="prune.example", timeout=30) as s:
            s.sendmail("a@example.com", ["r%d@example.org" % i], b"Subject: prune %d\r\n\r\nbody\r\n" % i)
    wait_sessions(p.db, 3)
    live = p.connect()
    try:
        live.reply()
        assert live.cmd("EHLO live.example")[0] == 250
        assert live.cmd("MAIL FROM:<live@example.com>")[0] == 250
        wait_until(lambda: len(sessions_list(p.db)) == 4, RECORD_TIMEOUT, what="the live session recorded")
        dry = run_cli("prune", "--older-than", "0s", "--db", p.db, "--dry-run", "--json").json()
        assert dry["dry_run"] is True and dry["sessions"] == 3 and dry["messages"] == 3
        assert [s["id"] for s in sessions_list(p.db)] == [1, 2, 3, 4]
        res = run_cli("prune", "--older-than", "0s", "--db", p.db, "--json").json()
        for k in ("sessions", "transactions", "messages", "recipients", "events", "bytes"):
            assert res[k] == dry[k], k
        assert (res["first_id"], res["last_id"]) == (1, 3)
        assert res["auto_vacuum"] == "none"
        # the live session is untouched, and goes on being recorded
        assert [s["id"] for s in sessions_list(p.db)] == [4]
        assert live.cmd("RCPT TO:<after-prune@example.org>")[0] == 250
        assert live.cmd("QUIT")[0] == 221
    finally:
        live.close()
    wait_until(lambda: sessions_list(p.db)[0]["ended_at"], RECORD_TIMEOUT, what="the live session ended")
    run_cli("show", 1, "--db", p.db, expect=3)
    doc = show_json(p.db, 4)
    assert rcpts(doc["transactions"][0]) == [("after-prune@example.org", 250)]
    for table in ("events", "messages", "transactions", "recipients"):
        assert db_query(p.db, "SELECT count(*) FROM %s WHERE session_id < 4" % table) == [(0,)], table
    text = run_cli("prune", "--older-than", "1d", "--db", p.db).text
    assert text.startswith("no session ended more than 1d ago")


def test_prune_usage_errors(tmp_path):
    db = str(tmp_path / "none.db")
    assert "--older-than AGE" in run_cli("prune", "--help").text
    assert "is required" in run_cli("prune", "--db", db, expect=2).err
    assert "expected a duration" in run_cli("prune", "--older-than", "7", "--db", db, expect=2).err
    assert "choose one" in run_cli("prune", "--older-than", "7d", "--dry-run", "--vacuum", "--db", db,
                                   expect=2).err
    assert "No such file" in run_cli("prune", "--older-than", "7d", "--db", db, expect=1).err


def test_proxy_retain_deletes_old_sessions(smtptap, tmp_path):
    """--retain 1m on the schema-1 fixture (recorded long before this
    test): the writer deletes its sessions, whole, while recording."""
    db = str(tmp_path / "old.db")
    shutil.copyfile(V1_DB, db)
    os.chmod(db, 0o600)
    p = smtptap(sink=True, db=db, args=["--retain", "1m"])
    with smtplib.SMTP(p.host, p.port, timeout=30) as s:
        s.sendmail("a@example.com", ["b@example.org"], b"Subject: new\r\n\r\nkept\r\n")
    wait_until(lambda: [s["id"] for s in sessions_list(db)] == [11], RECORD_TIMEOUT,
               what="the ten old sessions deleted, the new one kept")
    assert db_query(db, "SELECT count(*) FROM events WHERE session_id <= 10") == [(0,)]
    assert "retention deleted 10 session(s)" in p.stderr()
    assert "--retain" in run_cli("proxy", "--help").text
    assert "at least a minute" in run_cli("proxy", "--retain", "10s", expect=2).err
    assert "at least 1M" in run_cli("proxy", "--max-db-size", "100K", expect=2).err


def test_proxy_max_db_size_keeps_the_newest(smtptap):
    p = smtptap(sink=True, args=["--max-db-size", "2M"])
    body = b"Subject: big\r\n\r\n" + (b"x" * 1000 + b"\r\n") * 500  # ~500 KB
    for i in range(8):
        with smtplib.SMTP(p.host, p.port, timeout=30) as s:
            s.sendmail("a@example.com", ["b@example.org"], body)

    def fits():
        used = db_query(p.db, "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count, "
                              "pragma_freelist_count, pragma_page_size")[0][0]
        ss = sessions_list(p.db)
        ids = [s["id"] for s in ss]
        return used <= 2 * 1024 * 1024 and ids and ids[-1] == 8 and ss[-1]["ended_at"] and ids
    wait_until(fits, RECORD_TIMEOUT, what="the data under --max-db-size 2M")
    # Retention may still delete between a look and the next read (the
    # writer checks every few seconds): stop the proxy, then read.
    p.stop()
    ids = [x["id"] for x in sessions_list(p.db)]
    # the newest kept, whole and in a row; the oldest gone
    assert ids and ids == list(range(ids[0], 9)) and ids[0] > 1
    for sid in ids:
        assert show_json(p.db, sid)["messages"][0]["size"] == len(body)
