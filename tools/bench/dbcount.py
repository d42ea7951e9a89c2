"""Print the number of rows in the `messages` table of an smtptap database
(read-only; prints ERROR:<reason> and exits 1 if it cannot).

With --tls, print three numbers: messages, sessions, and sessions whose
client_tls and upstream_tls are both recorded (a TLS benchmark checks that
smtptap terminated and re-originated TLS on every session it recorded).
"""
import sqlite3
import sys

try:
    db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=10)
    msgs = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    if "--tls" in sys.argv[2:]:
        sess, both = db.execute(
            "SELECT COUNT(*), COUNT(client_tls IS NOT NULL AND upstream_tls IS NOT NULL OR NULL)"
            " FROM sessions").fetchone()
        print(msgs, sess, both)
    else:
        print(msgs)
except Exception as e:  # noqa: BLE001 - report anything, the caller warns
    print("ERROR:%s" % str(e).replace("\t", " ").replace("\n", " "))
    sys.exit(1)
