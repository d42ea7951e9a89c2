"""Many sessions at once, SIGTERM with sessions in flight, SIGKILL under load."""

import os
import shutil
import signal
import socket
import subprocess
import sqlite3
import threading
import time


from conftest import (RECORD_TIMEOUT, RawClient, export_eml, sessions_list,
                      stuff_data, wait_sessions, wait_until)


def tagged_message(tag, body_lines=20):
    return (b"From: load@example.com\r\nTo: sink@example.org\r\nSubject: " + tag.encode() + b"\r\n"
            b"Message-ID: <" + tag.encode() + b"@load.test>\r\n\r\n" +
            b"".join(b"line %d of %s\r\n" % (i, tag.encode()) for i in range(body_lines)) +
            b".dot-started line\r\n")


def db_query(db, sql, args=()):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=30)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def run_threads(n, target, timeout):
    errors = []
    results = [None] * n

    def wrap(i):
        try:
            results[i] = target(i)
        except BaseException as e:  # reported below
            errors.append((i, repr(e)))
    ts = [threading.Thread(target=wrap, args=(i,), daemon=True) for i in range(n)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    for t in ts:
        t.join(max(0.1, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in ts)
    assert alive == 0, "%d client threads still running after %ss" % (alive, timeout)
    return results, errors


def test_200_concurrent_sessions(aio, smtptap):
    n = 200
    p = smtptap(upstream=aio.addr)
    barrier = threading.Barrier(n, timeout=120)
    msgs = [tagged_message("conc-%03d" % i) for i in range(n)]

    def client(i):
        c = RawClient(p.host, p.port, timeout=120)
        try:
            assert c.reply()[0] == 220
            barrier.wait()  # all 200 sessions are open at once here
            assert c.cmd("EHLO load%d.example" % i)[0] == 250
            assert c.cmd("MAIL FROM:<load@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<sink@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(stuff_data(msgs[i]))
            code, lines, _ = c.reply()
            assert code == 250, lines
            assert c.cmd("QUIT")[0] == 221
            return code
        finally:
            c.close()

    results, errors = run_threads(n, client, timeout=300)
    assert not errors, errors[:5]
    assert results == [250] * n
    envs = aio.wait_envelopes(n)
    assert sorted(e["content"] for e in envs) == sorted(msgs)
    ss = wait_sessions(p.db, n, timeout=RECORD_TIMEOUT * 3)
    assert len(ss) == n
    assert all(s["outcome"] == "quit" for s in ss), [s for s in ss if s["outcome"] != "quit"][:3]
    p.stop()
    rows = db_query(p.db, "SELECT subject, size, complete FROM messages ORDER BY subject")
    assert len(rows) == n
    assert [r[0] for r in rows] == ["conc-%03d" % i for i in range(n)]
    assert all(r[2] == 1 for r in rows)
    assert [r[1] for r in rows] == [len(m) for m in msgs]
    assert db_query(p.db, "SELECT COUNT(DISTINCT session_id) FROM messages")[0][0] == n


GRACE = 600  # far longer than 50 sessions need, however loaded the machine: never the limit here


def test_sigterm_with_sessions_in_flight(aio, smtptap):
    n = 50
    p = smtptap(upstream=aio.addr, grace=GRACE)
    msgs = [tagged_message("term-%02d" % i, body_lines=200) for i in range(n)]
    mid = threading.Barrier(n + 1, timeout=120)
    go = threading.Event()

    def client(i):
        c = RawClient(p.host, p.port, timeout=60)
        try:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO term%d.example" % i)[0] == 250
            assert c.cmd("MAIL FROM:<load@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<sink@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            wire = stuff_data(msgs[i])
            half = len(wire) // 2
            c.send(wire[:half])
            mid.wait()
            assert go.wait(120)
            c.send(wire[half:])
            code, lines, _ = c.reply()
            try:
                c.cmd("QUIT")
            except (OSError, EOFError):
                pass
            return code
        finally:
            c.close()

    holder = {}
    t = threading.Thread(target=lambda: holder.update(r=run_threads(n, client, timeout=240)), daemon=True)
    t.start()
    mid.wait()  # every client is in the middle of its DATA
    p.send_signal(signal.SIGTERM)

    # the listener closes at once while the sessions go on
    def refused():
        try:
            s = socket.create_connection((p.host, p.port), timeout=5)
        except ConnectionRefusedError:
            return True
        s.close()
        return False
    wait_until(refused, 30, what="the listener to close after SIGTERM")
    assert p.running(), "smtptap exited before its sessions finished (grace %d s)" % GRACE
    go.set()
    t.join(300)
    assert "r" in holder, "clients did not finish"
    results, errors = holder["r"]
    assert not errors, errors[:5]
    # the last session over, smtptap exits by itself (no second signal)
    try:
        rc = p.proc.wait(RECORD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError("smtptap still running %ss after its last session ended" % RECORD_TIMEOUT)
    assert rc == 0
    assert p.stop() == 0
    # every message that got a 250 is in the database, whole
    assert results == [250] * n, results
    rows = db_query(p.db, "SELECT session_id, idx, subject, size, complete FROM messages")
    by_subject = {r[2]: r for r in rows}
    for i, code in enumerate(results):
        if code != 250:
            continue
        tag = "term-%02d" % i
        assert tag in by_subject, "message %s got 250 but is not in the database" % tag
        sid, idx, _, size, complete = by_subject[tag]
        assert complete == 1 and size == len(msgs[i])
        assert export_eml(p.db, sid) == msgs[i]
    assert len(aio.envelopes) == n


def test_sigkill_under_load_then_restart(smtptap, tmp_path):
    p = smtptap(sink=True, name="killed")
    stop = threading.Event()
    accepted = [0]
    lock = threading.Lock()

    def client(i):
        k = 0
        while not stop.is_set() and k < 10000:
            try:
                c = RawClient(p.host, p.port, timeout=30)
            except OSError:
                return
            try:
                c.reply()
                c.cmd("EHLO kill%d.example" % i)
                for _ in range(3):
                    k += 1
                    c.cmd("MAIL FROM:<load@example.com>")
                    c.cmd("RCPT TO:<sink@example.org>")
                    c.cmd("DATA")
                    c.send(stuff_data(tagged_message("kill-%d-%d" % (i, k))))
                    if c.reply()[0] == 250:
                        with lock:
                            accepted[0] += 1
                c.cmd("QUIT")
            except (OSError, EOFError, AssertionError, ValueError):
                return
            finally:
                c.close()

    ts = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(20)]
    for t in ts:
        t.start()
    wait_until(lambda: accepted[0] >= 300, 120, what="300 accepted messages before the kill")
    # One session certainly live at the kill, and already in the database
    # (the load's own sessions may all fall in the last uncommitted batch).
    idle = RawClient(p.host, p.port, timeout=30)
    idle.reply()
    idle.cmd("EHLO idle.example")
    idle_addr = "127.0.0.1:%d" % idle.sock.getsockname()[1]

    def idle_recorded():
        con = sqlite3.connect("file:%s?mode=ro" % p.db, uri=True, timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM sessions WHERE client = ? AND outcome IS NULL",
                               (idle_addr,)).fetchone()[0] == 1
        finally:
            con.close()
    wait_until(idle_recorded, 60, what="the idle session to be recorded")
    p.kill()
    idle.close()
    p.expect_rc = -signal.SIGKILL
    stop.set()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts)

    # the database as the kill left it (copied, so that our check does not
    # recover the WAL before smtptap does)
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(p.db + suffix):
            shutil.copy(p.db + suffix, str(copy / ("t.db" + suffix)))
    con = sqlite3.connect(str(copy / "t.db"), timeout=30)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        before = con.execute("SELECT COUNT(*) FROM sessions WHERE outcome IS NULL").fetchone()[0]
    finally:
        con.close()
    assert before >= 1, "no session was live at the kill?"

    # a new proxy on the same database
    p2 = smtptap(sink=True, name="restarted", db=p.db)
    c = p2.connect()
    try:
        assert c.reply()[0] == 220
        c.cmd("EHLO after.example")
        c.cmd("MAIL FROM:<a@example.com>")
        c.cmd("RCPT TO:<b@example.org>")
        c.cmd("DATA")
        c.send(stuff_data(b"Subject: after the kill\r\n\r\nalive\r\n"))
        assert c.reply()[0] == 250
        c.cmd("QUIT")
    finally:
        c.close()
    p2.stop()
    ss = sessions_list(p.db)
    assert all(s["outcome"] for s in ss), [s for s in ss if not s["outcome"]][:3]
    interrupted = [s for s in ss if s["outcome"] == "interrupted"]
    assert len(interrupted) == before
    assert ss[-1]["outcome"] == "quit"
    assert export_eml(p.db, ss[-1]["id"]) == b"Subject: after the kill\r\n\r\nalive\r\n"
    con = sqlite3.connect(p.db, timeout=30)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
