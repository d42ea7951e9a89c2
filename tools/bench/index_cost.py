#!/usr/bin/python3
"""What the recipient and sender indexes cost the writer: insert N
transactions of one recipient each (in batches of 1,000 per commit, WAL,
an 8 MiB cache, as the writer does) into a copy of an empty smtptap
database, with some indexes dropped first.  Run it under callgrind and
compare the instruction totals of the variants (the Python around the
inserts is the same in each, so it cancels out):

    /usr/bin/python3 tools/bench/schema_search.py --sessions 0 --db /tmp/empty.db   # or any empty smtptap db
    for v in with without rcptonly noaddr; do
        N=10000 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            /usr/bin/python3 tools/bench/index_cost.py /tmp/empty.db $v 2>&1 | grep Collected
    done

Variants: with (every index), without (no domain index), rcptonly (the
recipient domain index only), noaddr (no address nor domain index).
Indexes a variant drops that the file does not have are skipped.
"""

import os
import shutil
import sqlite3
import sys
import tempfile

DROPS = {
    "with": [],
    "without": ["recipients_domain", "transactions_domain"],
    "rcptonly": ["transactions_domain"],
    "noaddr": ["recipients_domain", "transactions_domain", "recipients_address", "transactions_mail_from"],
}


def main():
    src, variant = sys.argv[1], sys.argv[2]
    n = int(os.environ.get("N", "60000"))
    tmp = tempfile.mkdtemp(prefix="smtptap-index-cost-")
    try:
        d = os.path.join(tmp, "t.db")
        shutil.copy(src, d)
        c = sqlite3.connect(d, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=NORMAL")
        c.execute("PRAGMA cache_size=-8192")
        for x in DROPS[variant]:
            c.execute("DROP INDEX IF EXISTS " + x)
        for b in range(0, n, 1000):
            c.execute("BEGIN")
            c.executemany("INSERT INTO transactions (session_id, idx, started_us, mail_from, mail_code) "
                          "VALUES (?, 1, 0, ?, 250)",
                          [(i, "app%d@example%d.com" % (i % 100, i % 7)) for i in range(b, b + 1000)])
            c.executemany("INSERT INTO recipients (session_id, transaction_idx, idx, address, reply_code, "
                          "reply_text) VALUES (?, 1, 1, ?, 250, '250 2.1.5 Ok')",
                          [(i, "user%d@example%d.org" % ((i * 7) % 5000, i % 50)) for i in range(b, b + 1000)])
            c.execute("COMMIT")
        c.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
