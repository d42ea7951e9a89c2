"""Print the number of rows in the `messages` table of an smtptap database
(read-only; prints ERROR:<reason> and exits 1 if it cannot)."""
import sqlite3
import sys

try:
    db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True, timeout=10)
    print(db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])
except Exception as e:  # noqa: BLE001 - report anything, the caller warns
    print("ERROR:%s" % str(e).replace("\t", " ").replace("\n", " "))
    sys.exit(1)
