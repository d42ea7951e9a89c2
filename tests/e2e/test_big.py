"""A 1 GiB message streamed through relay mode to smtp-sink (which discards).

The proxy must stream it: peak RSS stays under 64 MB.  The message is
generated block by block, never held in memory.  Under ASan/UBSan
(SMTPTAP_SANITIZER=1) the message is 64 MiB and the RSS assertion is
skipped: the sanitizer's shadow memory and quarantine dominate RSS there.
"""

import os

import pytest

from conftest import SANITIZER, Proxy, SmtpSink, only_session, run_cli, show_json

# The three tests share one 1 GiB run (the module fixture): under
# pytest-xdist they go to one worker together (run-all.sh: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("big")

MIB = 1024 * 1024
BLOCKS = 64 if SANITIZER else 1024  # MiB of body
RSS_LIMIT_KB = 64 * 1000  # 64 MB

HEADER = b"From: big@example.com\r\nTo: sink@example.org\r\nSubject: big message\r\nMessage-ID: <big@test>\r\n\r\n"
PLAIN = b"x" * 1022 + b"\r\n"
DOTTED = b"." + b"y" * 1021 + b"\r\n"  # stuffed on the wire: one more byte
ORIG_BLOCK = PLAIN * 1023 + DOTTED
WIRE_BLOCK = PLAIN * 1023 + b"." + DOTTED
assert len(ORIG_BLOCK) == MIB


def first_difference(path):
    """Where the file at path first differs from the message sent (HEADER,
    then BLOCKS times ORIG_BLOCK), as a string, or None if it is the same."""
    with open(path, "rb") as f:
        if f.read(len(HEADER)) != HEADER:
            return "in the header"
        for i in range(BLOCKS):
            if f.read(MIB) != ORIG_BLOCK:
                return "in body block %d (at byte %d)" % (i, len(HEADER) + i * MIB)
        if f.read(1):
            return "after the end (at byte %d)" % (len(HEADER) + BLOCKS * MIB)
    return None


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("big")
    sink = SmtpSink(tmp)
    proxy = None
    res = {"blocks": BLOCKS}
    try:
        proxy = Proxy(tmp, "big", upstream=sink.addr)
        c = proxy.connect(timeout=300)
        try:
            assert c.reply()[0] == 220
            assert c.cmd("EHLO big.example")[0] == 250
            assert c.cmd("MAIL FROM:<big@example.com>")[0] == 250
            assert c.cmd("RCPT TO:<sink@example.org>")[0] == 250
            assert c.cmd("DATA")[0] == 354
            c.send(HEADER)
            for _ in range(BLOCKS):
                c.send(WIRE_BLOCK)
            c.send(b".\r\n")
            res["reply"] = c.reply()
            res["quit"] = c.cmd("QUIT")[0]
        finally:
            c.close()
        res["size"] = len(HEADER) + BLOCKS * MIB
        sess = only_session(proxy.db)
        res["session"] = sess
        res["hwm_kb"] = proxy.vm_hwm_kb()  # just before SIGTERM
        proxy.stop()
        res["doc"] = show_json(proxy.db, sess["id"])
        # export, and compare it with the message sent, block by block (a
        # byte comparison: exact, and far cheaper than hashing 2 GiB)
        out = os.path.join(str(tmp), "big.eml")
        run_cli("export", sess["id"], "--eml", "--db", proxy.db, "-o", out, timeout=600)
        res["export_size"] = os.path.getsize(out)
        res["export_diff"] = first_difference(out)
        os.unlink(out)
        yield res
    finally:
        if proxy is not None:
            if proxy.running():
                proxy.kill()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(proxy.db + suffix):
                    os.unlink(proxy.db + suffix)
        sink.stop()


def test_big_message_relayed_and_recorded(big_run):
    code, lines, _ = big_run["reply"]
    assert code == 250, lines
    assert big_run["quit"] == 221
    assert big_run["session"]["outcome"] == "quit"
    m = big_run["doc"]["messages"]
    assert len(m) == 1
    assert m[0]["size"] == big_run["size"]
    assert m[0]["complete"] in (True, 1)
    assert m[0]["subject"] == "big message"
    assert m[0]["upstream_code"] == 250


def test_big_message_export_identical(big_run):
    assert big_run["export_size"] == big_run["size"]
    assert big_run["export_diff"] is None, "export --eml differs from the message sent " + big_run["export_diff"]


def test_big_message_peak_rss(big_run):
    print("smtptap peak RSS: %d kB for a %d MiB message" % (big_run["hwm_kb"], BLOCKS))
    if SANITIZER:
        pytest.skip("ASan/UBSan build: shadow memory and the allocator quarantine make RSS meaningless "
                    "(peak was %d kB for a %d MiB message)" % (big_run["hwm_kb"], BLOCKS))
    assert big_run["hwm_kb"] < RSS_LIMIT_KB, "peak RSS %d kB for a %d MiB message (limit %d kB)" % (
        big_run["hwm_kb"], BLOCKS, RSS_LIMIT_KB)
