"""Print the number of rows in the `messages` table of an smtptap database
(read-only; prints ERROR:<reason> and exits 1 if it cannot).

With --rule-events, print the number of events a fault rule made, changed
or dropped (flag 0x80, STORE_F_RULE; 0 when the rules never fired).

With --tls, print four numbers: messages, sessions, sessions whose
client_tls and upstream_tls are both recorded (a TLS benchmark checks that
smtptap terminated and re-originated TLS on every session it recorded), and
sessions whose upstream handshake was resumed (the benchmark means every
handshake to be a full one).
"""
import json
import sqlite3
import sys

try:
    db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=10)
    msgs = db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    if "--rule-events" in sys.argv[2:]:
        print(db.execute("SELECT COUNT(*) FROM events WHERE flags & 128").fetchone()[0])
    elif "--tls" in sys.argv[2:]:
        sess = both = resumed = 0
        for client, upstream in db.execute("SELECT client_tls, upstream_tls FROM sessions"):
            sess += 1
            if client is not None and upstream is not None:
                both += 1
                if json.loads(upstream).get("resumed"):
                    resumed += 1
        print(msgs, sess, both, resumed)
    else:
        print(msgs)
except Exception as e:  # noqa: BLE001 - report anything, the caller warns
    print("ERROR:%s" % str(e).replace("\t", " ").replace("\n", " "))
    sys.exit(1)
