#!/usr/bin/python3
"""Time the searches schema 2's indexes are for, on a database of N
synthetic sessions (default 100,000), and print each query's plan.

    /usr/bin/python3 tools/bench/schema_search.py [--sessions N] [--db PATH] [--smtptap BIN]

The database gets its schema from smtptap itself (a proxy started on
127.0.0.1:0 for a moment and stopped with SIGTERM), then one session each
with a transaction, a recipient and a message, as a mail catcher would
hold them: a few thousand recipients over fifty domains, a hundred senders,
ten subject words.  Each query runs twice (cold, then warm).  Nothing here
is a test: the numbers depend on the machine.
"""

import argparse
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORDS = ["invoice", "reset", "password", "welcome", "order", "shipped", "report", "weekly", "alert", "news"]


def make_schema(binary, db):
    err = tempfile.TemporaryFile()
    p = subprocess.Popen([binary, "proxy", "--listen", "127.0.0.1:0", "--sink", "--db", db],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        for _ in range(200):
            err.seek(0)
            if re.search(rb"listening on", err.read()):
                break
            if p.poll() is not None:
                raise SystemExit("smtptap proxy exited %s" % p.returncode)
            time.sleep(0.05)
        else:
            raise SystemExit("smtptap proxy did not start")
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(30)


def fill(db, n):
    c = sqlite3.connect(db)
    rnd = random.Random(1)
    now = int(time.time() * 1e6)
    c.execute("BEGIN")
    for i in range(1, n + 1):
        t = now - (n - i) * 10_000_000
        ip = "10.0.%d.%d" % (i % 250, i % 200)
        rcpt = "user%d@example%d.org" % (rnd.randrange(5000), rnd.randrange(50))
        c.execute("INSERT INTO sessions (id, started_us, ended_us, listener, client, mode, outcome, client_ip, "
                  "nmessages, ntransactions, nevents) VALUES (?, ?, ?, '127.0.0.1:2525', ?, 'sink', ?, ?, 1, 1, 10)",
                  (i, t, t + 1000, ip + ":5000", rnd.choice(["quit", "quit", "quit", "client-closed"]), ip))
        c.execute("INSERT INTO transactions (session_id, idx, started_us, mail_from, mail_code) "
                  "VALUES (?, 1, ?, ?, 250)", (i, t, "app%d@example.com" % rnd.randrange(100)))
        c.execute("INSERT INTO recipients (session_id, transaction_idx, idx, address, reply_code) "
                  "VALUES (?, 1, 1, ?, 250)", (i, rcpt))
        c.execute("INSERT INTO messages (id, session_id, idx, transaction_idx, started_us, mail_from, transport, "
                  "size, complete, subject, from_hdr, to_hdr, message_id_hdr) "
                  "VALUES (?, ?, 1, 1, ?, 'app@example.com', 'data', 1000, 1, ?, 'App <app@example.com>', ?, ?)",
                  (i, i, t, "%s %s #%d" % (rnd.choice(WORDS), rnd.choice(WORDS), i), rcpt,
                   "<%d@example.com>" % i))
    c.execute("COMMIT")
    c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100000)
    ap.add_argument("--db", help="database to make (default: a temporary file, removed)")
    ap.add_argument("--smtptap", default=os.path.join(ROOT, "build", "smtptap"))
    a = ap.parse_args()
    tmp = None
    db = a.db
    if db is None:
        tmp = tempfile.mkdtemp(prefix="smtptap-search-")
        db = os.path.join(tmp, "search.db")
    try:
        make_schema(a.smtptap, db)
        t0 = time.perf_counter()
        fill(db, a.sessions)
        print("%d sessions made in %.1f s (%d MB)" % (a.sessions, time.perf_counter() - t0,
                                                     os.path.getsize(db) // 1000000))
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        since = c.execute("SELECT max(started_us) - 86400 * 1000000 FROM sessions").fetchone()[0]
        queries = [
            ("newest 50", "SELECT * FROM sessions ORDER BY id DESC LIMIT 50", ()),
            ("recipient, last day", "SELECT s.* FROM sessions s WHERE s.id IN (SELECT session_id FROM recipients "
             "WHERE address = ? COLLATE NOCASE) AND s.started_us >= ? ORDER BY s.id DESC LIMIT 50",
             ("USER42@example7.org", since)),
            ("sender", "SELECT s.* FROM sessions s WHERE s.id IN (SELECT session_id FROM transactions "
             "WHERE mail_from = ? COLLATE NOCASE) ORDER BY s.id DESC LIMIT 50", ("app7@example.com",)),
            ("Message-ID", "SELECT session_id FROM messages WHERE message_id_hdr = ?", ("<50000@example.com>",)),
            ("outcome, newest 50", "SELECT * FROM sessions WHERE outcome = ? ORDER BY id DESC LIMIT 50",
             ("client-closed",)),
            ("client address", "SELECT * FROM sessions WHERE client_ip = ? ORDER BY id DESC LIMIT 50",
             ("10.0.3.3",)),
            ("time range", "SELECT count(*) FROM sessions WHERE started_us BETWEEN ? AND ?",
             (since, since + 3600 * 1000000)),
            ("substring, everywhere", "SELECT session_id FROM messages WHERE subject LIKE ?1 OR from_hdr LIKE ?1 "
             "OR to_hdr LIKE ?1 UNION SELECT session_id FROM recipients WHERE address LIKE ?1 "
             "UNION SELECT session_id FROM transactions WHERE mail_from LIKE ?1", ("%#99999%",)),
        ]
        for label, sql, args in queries:
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                rows = c.execute(sql, args).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
            plan = " | ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql, args))
            print("%-22s %8.2f ms cold %8.2f ms warm %6d rows   %s" % (label, times[0], times[1], len(rows), plan))
        c.close()
    finally:
        if tmp is not None:
            for f in os.listdir(tmp):
                os.unlink(os.path.join(tmp, f))
            os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
