#!/usr/bin/python3
"""Time `smtptap sessions` searches on a database of N sessions (default
100,000): the default listing (the newest 50) and `--to ADDR --since ...`,
with a few other filters beside them, as a user runs them (the whole
command: process start, opening the file, the query, the output).

    /usr/bin/python3 tools/bench/reader.py [--sessions N] [--runs R] [--db PATH] [--smtptap BIN]
                                           [--query build/bench/reader_query]

The database is made as tools/bench/schema_search.py makes it (the schema
by smtptap itself, then one session each with a transaction, a recipient
and a message, rows written straight in SQL: fast), once; a --db that
exists is reused.  Each command runs R times (default 7) after one warm-up
run; the median and the fastest are printed in milliseconds, with
`smtptap --version` as the floor (what starting the process costs).  Beside
each, the same search inside one process (tools/bench/reader_query.c:
reader_sessions() in its own request, R runs on an open reader), which is
the reader's own cost without the process around it; and the query plan of
each search (`sessions --explain`).  Nothing here is a test: the numbers
depend on the machine and its load (`make bench-reader`).
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import schema_search  # noqa: E402  (make_schema, fill)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def timed(argv, runs):
    """Median and fastest wall time of argv in ms (one warm-up run first);
    the last run's stdout line count."""
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times = []
    out = b""
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - t0) * 1000)
        out = p.stdout
    return statistics.median(times), min(times), out.count(b"\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--db", help="database to make or reuse (default: a temporary one, removed)")
    ap.add_argument("--smtptap", default=os.path.join(ROOT, "build", "smtptap"))
    ap.add_argument("--query", default=os.path.join(ROOT, "build", "bench", "reader_query"),
                    help="the in-process timer (make build/bench/reader_query); skipped if missing")
    a = ap.parse_args()
    tmp = None
    db = a.db
    if db is None:
        tmp = tempfile.mkdtemp(prefix="smtptap-bench-reader-")
        db = os.path.join(tmp, "reader.db")
    try:
        if not os.path.exists(db):
            schema_search.make_schema(a.smtptap, db)
            t0 = time.perf_counter()
            schema_search.fill(db, a.sessions)
            print("%d sessions made in %.1f s (%d MB)" % (a.sessions, time.perf_counter() - t0,
                                                         os.path.getsize(db) // 1000000))
        # Bring the file to this binary's schema once, outside the timings.
        subprocess.run([a.smtptap, "sessions", "--db", db, "--limit", "1"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)
        c = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
        n = c.execute("SELECT count(*) FROM sessions").fetchone()[0]
        # a recipient of the newest session, a domain, a sender
        addr, = c.execute("SELECT address FROM recipients ORDER BY session_id DESC LIMIT 1").fetchone()
        sender, = c.execute("SELECT mail_from FROM transactions ORDER BY session_id DESC LIMIT 1").fetchone()
        c.close()
        domain = "@" + addr.split("@", 1)[1]
        print("database: %s, %d sessions; smtptap: %s" % (db, n, a.smtptap))
        base = [a.smtptap, "sessions", "--db", db]
        cases = [
            ("default listing (newest 50)", []),
            ("--to ADDR --since 1d", ["--to", addr, "--since", "1d"]),
            ("--to ADDR --since 7d", ["--to", addr, "--since", "7d"]),
            ("--to @DOMAIN (newest 50)", ["--to", domain]),
            ("--from SENDER (newest 50)", ["--from", sender]),
            ("--search WORD (newest 50)", ["--search", "password"]),
            ("--outcome client-closed", ["--outcome", "client-closed"]),
            ("--before N/2 (a page back)", ["--before", str(n // 2)]),
            ("--limit 0 --jsonl (all)", ["--limit", "0", "--jsonl"]),
        ]
        floor, _, _ = timed([a.smtptap, "--version"], a.runs)
        query = os.access(a.query, os.X_OK)
        print("%-34s %21s %7s   %s" % ("", "the whole command", "", "in-process query" if query else ""))
        print("%-34s %9s %9s %7s   %9s %9s %6s" % ("smtptap sessions ...", "median", "fastest", "lines", "median",
                                                  "fastest", "rows"))
        print("%-34s %6.1f ms %9s %7s" % ("(smtptap --version: process start)", floor, "", ""))
        for label, args in cases:
            med, best, lines = timed(base + args, a.runs)
            q = ""
            if query and "--jsonl" not in args:
                r = subprocess.run([a.query, db, str(a.runs)] + args, stdout=subprocess.PIPE, check=True)
                qmed, qbest, rows = r.stdout.split()
                q = "   %6.2f ms %6.2f ms %6s" % (int(qmed) / 1000, int(qbest) / 1000, rows.decode())
            print("%-34s %6.1f ms %6.1f ms %7d%s" % (label, med, best, lines, q))
        print("\nquery plans (smtptap sessions --explain):")
        for label, args in cases[:8]:
            plan = subprocess.run(base + ["--explain"] + args, stdout=subprocess.PIPE, check=True).stdout
            print("  %s: %s" % (label, " | ".join(plan.decode().strip().splitlines())))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
