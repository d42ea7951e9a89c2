"""A database written by the smtptap that landed issue 2 (schema 1) opens
with this one, is migrated in place, and its sessions show and export as
that smtptap showed and exported them.

tests/fixtures/v1.db and the expected outputs next to it (tests/fixtures/v1/)
were made by that binary (commit 86cfdc3) with tests/fixtures/make_v1.py,
which says how.  `show` prints local times: every command here runs with
TZ=UTC, as they were made.  `show --json` may have gained keys since: each
old document must be contained in the new one (same keys, same values,
same lists), nothing removed or changed.
"""

import glob
import json
import os
import shutil
import sqlite3
import subprocess

import pytest

from conftest import BIN, CLI_TIMEOUT, RawClient, run_cli, sanitizer_findings

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "fixtures")
V1_DB = os.path.join(FIXTURES, "v1.db")
V1_OUT = os.path.join(FIXTURES, "v1")
NSESSIONS = 10


def cli_utc(*args, expect=0):
    """run_cli with TZ=UTC (show prints local times)."""
    argv = [BIN] + [str(a) for a in args]
    env = dict(os.environ, TZ="UTC")
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=env, timeout=CLI_TIMEOUT)
    err = p.stderr.decode("utf-8", "replace")
    bad = sanitizer_findings(err)
    assert not bad, "sanitizer report from %s:\n%s" % (" ".join(argv), err[-4000:])
    assert p.returncode == expect, "%s exited %s; stderr:\n%s" % (" ".join(argv), p.returncode, err[-2000:])
    return p.stdout, err


def expected(name):
    with open(os.path.join(V1_OUT, name), "rb") as f:
        return f.read()


def contained(old, new, path="$"):
    """Assert that JSON value `old` is contained in `new`: objects may have
    gained keys, nothing else may differ."""
    if isinstance(old, dict):
        assert isinstance(new, dict), "%s: object became %r" % (path, type(new).__name__)
        for k, v in old.items():
            assert k in new, "%s: key %r was removed" % (path, k)
            contained(v, new[k], "%s.%s" % (path, k))
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), "%s: list of %d became %r" % (
            path, len(old), new if not isinstance(new, list) else "a list of %d" % len(new))
        for i, (a, b) in enumerate(zip(old, new)):
            contained(a, b, "%s[%d]" % (path, i))
    else:
        assert old == new, "%s: %r became %r" % (path, old, new)


@pytest.fixture
def v1db(tmp_path):
    """A private copy of the schema-1 fixture (migrating changes it)."""
    assert os.path.exists(V1_DB), "missing %s (made by tests/fixtures/make_v1.py)" % V1_DB
    db = str(tmp_path / "v1.db")
    shutil.copyfile(V1_DB, db)
    os.chmod(db, 0o600)
    return db


# This binary's schema version: the highest sql/NNN_*.sql.
NEWEST = max(int(os.path.basename(p)[:3]) for p in glob.glob(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "sql", "[0-9][0-9][0-9]_*.sql")))


def user_version(db):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


def test_fixture_is_schema_1():
    assert user_version(V1_DB) == 1


def test_read_commands_migrate_and_match_the_old_binary(v1db):
    # The first command upgrades the file, and says so on stderr.
    out, err = cli_utc("show", 1, "--db", v1db)
    assert "schema upgraded from version 1 to %d" % NEWEST in err
    assert user_version(v1db) == NEWEST
    assert out == expected("show-1.txt")
    for sid in range(1, NSESSIONS + 1):
        out, _ = cli_utc("show", sid, "--db", v1db)
        assert out == expected("show-%d.txt" % sid), "show %d differs" % sid
        out, _ = cli_utc("show", sid, "--db", v1db, "--raw")
        assert out == expected("raw-%d.bin" % sid), "show --raw %d differs" % sid
        old = json.loads(expected("show-%d.json" % sid))
        new = json.loads(cli_utc("show", sid, "--db", v1db, "--json")[0])
        contained(old, new, "show %d --json" % sid)
        for m in range(1, len(old["messages"]) + 1):
            out, _ = cli_utc("export", sid, "--db", v1db, "--eml", "--message", m)
            assert out == expected("eml-%d-%d.eml" % (sid, m)), "export %d --message %d differs" % (sid, m)
        if old["messages"]:
            out, _ = cli_utc("export", sid, "--db", v1db, "--mbox")
            assert out == expected("mbox-%d.mbox" % sid), "export %d --mbox differs" % sid
        else:
            cli_utc("export", sid, "--db", v1db, "--eml", expect=3)
    contained(json.loads(expected("sessions.json")),
              json.loads(cli_utc("sessions", "--db", v1db, "--json", "--limit", 0)[0]), "sessions --json")
    con = sqlite3.connect(v1db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


def test_migrated_summaries(v1db):
    ss = json.loads(cli_utc("sessions", "--db", v1db, "--json", "--limit", 0)[0])
    by = {s["id"]: s for s in ss}
    assert [s["id"] for s in ss] == list(range(1, NSESSIONS + 1))
    for s in ss:
        doc = json.loads(cli_utc("show", s["id"], "--db", v1db, "--json")[0])
        assert s["nevents"] == len(doc["events"])
        assert s["nmessages"] == len(doc["messages"])
        assert s["client_ip"] == "127.0.0.1"
        # schema 1 had one envelope per message
        assert s["ntransactions"] == s["nmessages"] == len(doc["transactions"])
        for m, t in zip(doc["messages"], doc["transactions"]):
            assert m["transaction"] == t["idx"] == m["idx"]
            assert t["rcpt_to"] == m["rcpt_to"] and t["mail_from"] == m["mail_from"]
            assert t["nmessages"] == 1
        raw = {"client": 0, "upstream": 0, "proxy": 0}
        for e in doc["events"]:
            if e["kind"] == "data":
                raw[e["side"]] += e["bytes"]
        assert s["client_bytes"] >= raw["client"]
    assert by[1]["helo"] == "client.example"
    assert by[5]["helo"] == "old.example"
    assert by[4]["auth_mech"] == "PLAIN" and by[4]["auth_user"] is None  # recorded redacted
    assert by[9]["auth_mech"] == "LOGIN" and by[9]["auth_user"] == "login-user@example.com"
    assert by[7]["upstream_bytes"] > 0 and by[7]["proxy_bytes"] == 0
    assert by[1]["proxy_bytes"] > 0 and by[1]["upstream_bytes"] == 0
    assert by[10]["outcome"] == "interrupted"


def test_proxy_migrates_and_records_on(v1db, smtptap):
    p = smtptap(sink=True, db=v1db)
    assert "schema upgraded from version 1 to %d" % NEWEST in p.stderr()
    assert user_version(v1db) == NEWEST
    c = RawClient(p.host, p.port)
    try:
        c.reply()
        assert c.cmd("EHLO after.example")[0] == 250
        assert c.cmd("MAIL FROM:<new@example.com>")[0] == 250
        assert c.cmd("RCPT TO:<nodata@example.org>")[0] == 250
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()
    p.stop()
    ss = json.loads(cli_utc("sessions", "--db", v1db, "--json", "--limit", 0)[0])
    assert [s["id"] for s in ss] == list(range(1, NSESSIONS + 2))
    new = ss[-1]
    assert new["helo"] == "after.example" and new["ntransactions"] == 1 and new["nmessages"] == 0
    doc = json.loads(cli_utc("show", new["id"], "--db", v1db, "--json")[0])
    assert doc["transactions"][0]["rcpt_to"][0]["address"] == "nodata@example.org"
    # the old sessions still show as they did
    assert cli_utc("show", 3, "--db", v1db)[0] == expected("show-3.txt")


def test_upgrade_needs_write_access(v1db, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write a mode 0400 file: the refusal cannot be provoked")
    os.chmod(v1db, 0o400)
    res = run_cli("show", 1, "--db", v1db, expect=1)
    assert "needs upgrading to version 2, which needs write access" in res.err
    assert user_version(v1db) == 1
