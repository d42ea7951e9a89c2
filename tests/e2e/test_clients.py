"""Real mail clients through smtptap, relaying to aiosmtpd and in sink mode.

For each client: it succeeds; the upstream got the message byte-identical
to what `export --eml` gives (and, for clients sending a file, to the file);
the replies the client printed are the replies smtptap recorded."""

import os
import re
import smtplib
import subprocess

import pytest

from conftest import (CLIENTS, content_queue_id, export_eml, only_session, reply_events_seen_by_client,
                      reply_lines, sample_message, show_json, show_raw, fail_missing, stuff_data,
                      unstuff_data)

FROM = "alice@example.com"
TO = "bob@example.org"
SUBJECT = "client test \u00e4\u00f6\u00fc"
BODY = "Hello from a client.\n.a line starting with a dot\n..two dots\n8-bit: \u00e4\u00f6\u00fc \u20ac\nbye\n"


def lines_with_prefix(text, prefixes):
    out = []
    for l in text.splitlines():
        for pfx in prefixes:
            if l.startswith(pfx):
                out.append(l[len(pfx):].rstrip("\r"))
                break
    return out


def run(argv, stdin=None, timeout=90):
    p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       stdin=None if stdin is not None else subprocess.DEVNULL)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def client_swaks(host, port, tmp, msgfile, pipeline=False):
    argv = ["swaks", "--server", "%s:%d" % (host, port), "--from", FROM, "--to", TO, "--data", "@" + msgfile,
            "--timeout", "30", "--helo", "swaks.example"]
    if pipeline:
        argv.append("--pipeline")
    rc, out, err = run(argv)
    return rc, out + err, lines_with_prefix(out, ("<-  ", "<** ")), True


def client_curl(host, port, tmp, msgfile):
    rc, out, err = run(["curl", "-sS", "-v", "--max-time", "60", "smtp://%s:%d/curl.example" % (host, port),
                        "--mail-from", FROM, "--mail-rcpt", TO, "--upload-file", msgfile])
    # curl -v does not print the reply to its closing QUIT
    return rc, out + err, lines_with_prefix(err, ("< ",)), False


def client_msmtp(host, port, tmp, msgfile):
    with open(msgfile, "rb") as f:
        data = f.read()
    rc, out, err = run(["msmtp", "--debug", "--host=%s" % host, "--port=%d" % port, "--from=%s" % FROM,
                        "--auth=off", "--tls=off", "--domain=msmtp.example", "--timeout=30", "--", TO], stdin=data)
    return rc, out + err, lines_with_prefix(out + "\n" + err, ("<-- ",)), True


def _body_file(tmp):
    path = os.path.join(tmp, "body.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(BODY)
    return path


def client_phpmailer(host, port, tmp, msgfile):
    rc, out, err = run(["php", os.path.join(CLIENTS, "phpmailer_send.php"), host, str(port), FROM, TO, SUBJECT,
                        _body_file(tmp)])
    return rc, out + err, lines_with_prefix(out, ("S: ",)), True


def client_nodemailer(host, port, tmp, msgfile):
    rc, out, err = run(["node", os.path.join(CLIENTS, "nodemailer_send.js"), host, str(port), FROM, TO, SUBJECT,
                        _body_file(tmp)])
    # Nodemailer may close without waiting for the reply to QUIT
    return rc, out + err, lines_with_prefix(out, ("S: ",)), False


def client_smtplib(host, port, tmp, msgfile):
    with open(msgfile, "rb") as f:
        data = f.read()
    seen = []
    s = smtplib.SMTP(timeout=30)
    try:
        seen.append(s.connect(host, port))
        seen.append(s.ehlo("smtplib.example"))
        seen.append(s.mail(FROM))
        seen.append(s.rcpt(TO))
        # data() would hide the 354: do it by hand (the file is CRLF, no
        # line starts with a dot that smtplib would not stuff the same way)
        s.putcmd("data")
        seen.append(s.getreply())
        s.send(stuff_data(data))
        seen.append(s.getreply())
        seen.append(s.quit())
    finally:
        s.close()
    lines = []
    for code, text in seen:
        parts = text.decode("utf-8", "replace").split("\n")
        for i, t in enumerate(parts):
            lines.append("%d%s%s" % (code, "-" if i < len(parts) - 1 else " ", t))
    return 0, repr(seen), lines, True


def same(msg):
    return msg


def swaks_sent(msg):
    # swaks ends the DATA with CRLF "." CRLF after the file's last line ending
    return msg + b"\r\n"


# name: (function, tool that must be installed, what the message becomes on
# the wire given the file (None: the client composes its own message))
CLIENTS_TABLE = {
    "swaks": (client_swaks, "swaks", swaks_sent),
    "swaks-pipeline": (lambda *a: client_swaks(*a, pipeline=True), "swaks", swaks_sent),
    "curl": (client_curl, "curl", same),
    "msmtp": (client_msmtp, "msmtp", same),
    "phpmailer": (client_phpmailer, "php", None),
    "nodemailer": (client_nodemailer, "node", None),
    "smtplib": (client_smtplib, None, same),
}


def data_from_raw_client(raw):
    """The DATA stream (stuffed, with terminator) from a client's raw bytes."""
    m = re.search(rb"(?im)^DATA\r?\n", raw)
    assert m, "no DATA command in the client's raw bytes"
    rest = raw[m.end():]
    i = rest.find(b"\r\n.\r\n")
    if rest.startswith(b".\r\n"):
        return b".\r\n"
    assert i >= 0, "no end of data in the client's raw bytes"
    return rest[:i + 5]


@pytest.mark.parametrize("mode", ["relay", "sink"])
@pytest.mark.parametrize("client", list(CLIENTS_TABLE))
def test_client(client, mode, aio, smtptap, tmp_path, tools_required):
    fn, tool, sent_as = CLIENTS_TABLE[client]
    if tool:
        tools_required(tool)
    if client == "phpmailer" and not os.path.exists("/usr/share/php/libphp-phpmailer/autoload.php"):
        fail_missing("PHPMailer is not installed (Debian package libphp-phpmailer)")
    if client == "nodemailer" and not os.path.isdir("/usr/share/nodejs/nodemailer"):
        fail_missing("Nodemailer is not installed (Debian package node-nodemailer)")
    msg = sample_message(client)
    msgfile = str(tmp_path / "msg.eml")
    with open(msgfile, "wb") as f:
        f.write(msg)

    p = smtptap(upstream=aio.addr) if mode == "relay" else smtptap(sink=True)
    rc, output, seen, saw_quit = fn(p.host, p.port, str(tmp_path), msgfile)
    assert rc == 0, "%s failed through smtptap (%s):\n%s\nproxy stderr:\n%s" % (client, mode, output, p.stderr())

    sess = only_session(p.db)
    doc = show_json(p.db, sess["id"])
    assert len(doc["messages"]) == 1, doc["messages"]
    m = doc["messages"][0]
    eml = export_eml(p.db, sess["id"])
    assert m["mail_from"] == FROM
    assert [r["address"] for r in m["rcpt_to"]] == [TO]
    assert m["complete"] in (True, 1)
    assert m["size"] == len(eml)

    if sent_as is not None:
        assert eml == sent_as(msg), "%s: export --eml differs from the file the client sent" % client
    else:
        assert "Hello from a client." in eml.decode("utf-8", "replace") or b"Hello from a client." in eml
        assert m["subject"] == SUBJECT

    if mode == "relay":
        env = aio.wait_envelopes(1)[0]
        assert eml == env["content"], "%s: the upstream got different bytes than export --eml gives" % client
        assert env["mail_from"] == FROM and env["rcpt_tos"] == [TO]
        assert m["upstream_code"] == 250
        assert content_queue_id(env["content"]) in m["upstream_reply"]
    else:
        wire = data_from_raw_client(show_raw(p.db, sess["id"], "client"))
        assert eml == unstuff_data(wire)
        assert m["upstream_code"] == 250

    if client == "swaks-pipeline" and mode == "relay":
        # MAIL, RCPT and DATA all arrived (and were passed on) before the
        # first of their replies came back: the proxy did not serialise them.
        # (The sink answers each command as soon as it is parsed.)
        kinds = [(e["kind"], (e.get("text") or "")[:4].upper()) for e in doc["events"]
                 if e["kind"] in ("command", "reply")]
        i = kinds.index(("command", "MAIL"))
        assert kinds[i:i + 3] == [("command", "MAIL"), ("command", "RCPT"), ("command", "DATA")], kinds

    recorded = []
    for e in reply_events_seen_by_client(doc):
        recorded += reply_lines(e["text"])
    assert seen, "%s printed no server replies:\n%s" % (client, output)
    if saw_quit:
        assert seen == recorded, "%s saw other replies than smtptap recorded" % client
    else:
        assert seen == recorded[:len(seen)] and len(recorded) - len(seen) <= 1, (seen, recorded)
    if saw_quit:
        assert sess["outcome"] == "quit"
