"""Fault rules tried as a new user would (issue 6): real clients through
`smtptap proxy --rules FILE`.

- A real queueing client, a private Postfix instance (its own main.cf,
  master.cf and logs under the test's tmp_path, its queue in a short
  directory of its own, retry timers of a few seconds) relaying through
  smtptap to aiosmtpd: answered 451 on MAIL in its first two sessions, it
  backs off, retries and delivers on the third; the transcript shows the
  three sessions and the two injected 451s, and the upstream got the
  message once.
- The duplicate-delivery test: the upstream's 250 after DATA rewritten to a
  451 in the first session makes the same Postfix deliver the message again;
  the upstream has it twice and the transcript shows both deliveries.
- PHPMailer and Nodemailer, refused with a 550 on RCPT by a rule, report the
  550 to their caller (relay and sink mode).
- swaks shows an EHLO reply without the capabilities a rule strips.

Everything listens on 127.0.0.1 with ports picked at run time; every
process started here is ended by its PID; every wait is bounded.
"""

import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import CLIENTS, STOP_TIMEOUT, fail_missing, run_cli, show_json, wait_sessions, wait_until

POSTFIX_LIBEXEC = "/usr/lib/postfix/sbin"
POSTFIX_CMD = "/usr/sbin/postfix"
FROM = "alice@example.com"
TO = "bob@example.org"
# How long a Postfix with 3-second retry timers may take to get through its
# retries (a safety net: it needs a few seconds).
RETRY_TIMEOUT = 60


def write_rules(tmp_path, *lines, name="rules.txt"):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        f.write("# written by test_rules_clients.py\n")
        for l in lines:
            f.write(l + "\n")
    # what a user would do first; the proxy would refuse a bad file anyway
    res = run_cli("rules", "check", path)
    assert re.search(r"\b%d rules? ok" % len(lines), res.text), res.text
    return path


def rule_actions(doc):
    """The `action` events of a session that say a rule fired."""
    return [e for e in doc["events"] if e["kind"] == "action" and re.match(r"rule \d+ fired on ", e.get("text") or "")]


def flags(e):
    return set(e.get("flags") or [])


def injected_replies(doc):
    return [e for e in doc["events"] if e["kind"] == "reply" and e["side"] == "proxy" and "injected" in flags(e)]


def upstream_replies(doc):
    return [e for e in doc["events"] if e["kind"] == "reply" and e["side"] == "upstream"]


def client_commands(doc, verb):
    return [e for e in doc["events"] if e["kind"] == "command" and e["side"] == "client"
            and (e.get("text") or "").upper().startswith(verb)]


# --------------------------------------------------------------------------
# a private Postfix instance as the client


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostfixClient:
    """Postfix master, its queue manager and smtp(8) client, configured to
    relay every message to relayhost [127.0.0.1]:relay_port (smtptap), with
    retry timers of a few seconds.  Messages are submitted over SMTP to its own
    smtpd on 127.0.0.1:submit_port.  Configuration and logs live in `dir`
    (under the test's tmp_path); the queue in a short directory of its own
    (removed by cleanup()): Postfix names its unix-domain sockets
    (public/postlog, ...) by absolute path, at most 107 bytes, and a
    tmp_path can be longer (pytest-xdist adds popen-gwN/, TMPDIR may be
    long): the instance then did not start, with nothing in its logs.

    Postfix's daemons change into the queue directory as root, then drop
    privileges to the postfix user, and reach their files relative to it;
    data_directory is relative too (master opens its lock there as postfix).
    So the instance works under pytest's private (0700) tmp_path, which the
    postfix user could not traverse by an absolute path."""

    def __init__(self, dir, relay_port):
        self.dir = str(dir)
        self.conf = os.path.join(self.dir, "etc")
        self.queue = tempfile.mkdtemp(prefix="smtptap-pfq-")
        os.chmod(self.queue, 0o755)  # the daemons reach it as postfix
        # relative to the queue directory (see above)
        self.data = os.path.join(self.queue, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        self.errpath = os.path.join(self.dir, "master.log")
        for d in (self.conf, self.data):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        self.relay_port = relay_port
        self.proc = None
        self._err = None
        for attempt in range(10):
            self.submit_port = _free_port()
            self._write_config()
            if self._start():
                return
        log = self.log()
        self.stop()
        self.cleanup()
        raise AssertionError("Postfix did not start; log:\n%s" % log[-3000:])

    def _write_config(self):
        main = {
            "compatibility_level": "3.6",
            "config_directory": self.conf,
            "queue_directory": self.queue,
            # master opens its lock here after dropping privileges: a path
            # relative to the queue directory, where it already is
            "data_directory": "data",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "client.example.test",
            "mydomain": "example.test",
            "myorigin": "example.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            # every message goes to smtptap, never anywhere else
            "relayhost": "[127.0.0.1]:%d" % self.relay_port,
            "default_transport": "smtp",
            "relay_transport": "smtp",
            "smtp_host_lookup": "native",
            "smtp_tls_security_level": "none",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            # retry within seconds, not minutes.  Not a backoff of 1s: the
            # smtp(8) agent reports a deferral before it unlocks the queue
            # file, and a deferred-queue scan that finds the file still
            # locked parks it for a fixed 60 s ("skipped, still being
            # delivered").  qmgr takes a deferred file once its mtime (the
            # time of the deferral in whole seconds + backoff) is at most
            # one second ahead; with 3s that is over a second after the
            # deferral, long after the agent let go.
            "minimal_backoff_time": "3s",
            "maximal_backoff_time": "3s",
            "queue_run_delay": "1s",
            # one SMTP session per delivery attempt: a cached connection
            # would carry the retry in the same session
            "smtp_connection_cache_on_demand": "no",
            "smtp_connection_cache_destinations": "",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            "smtputf8_enable": "no",
            "biff": "no",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": POSTFIX_LIBEXEC,
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
            "manpage_directory": "/usr/share/man",
            "html_directory": "no",
            "readme_directory": "no",
            "sample_directory": "/etc/postfix",
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
            "syslog_name": "postfix-smtptap-rules",
        }
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        master = [
            "127.0.0.1:%d inet n - n - - smtpd" % self.submit_port,
            "pickup unix n - n 60 1 pickup",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "smtp unix - - n - - smtp",
            "relay unix - - n - - smtp",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("\n".join(master) + "\n")

    def _start(self):
        env = dict(os.environ, MAIL_CONFIG=self.conf)
        # creates the queue's directories with their owners and modes
        subprocess.run([POSTFIX_CMD, "-c", self.conf, "check"], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self._err = open(self.errpath, "ab")
        # -d: in the foreground, so the PID is ours; its own session, so
        # that its process group holds the daemons it starts
        self.proc = subprocess.Popen([os.path.join(POSTFIX_LIBEXEC, "master"), "-d", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.submit_port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(100).startswith(b"220"):
                        return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def submit(self, msg, mail_from=FROM, rcpts=(TO,)):
        """Hand one message to Postfix (its smtpd, as an application
        would); returns Postfix's queue ID."""
        with smtplib.SMTP("127.0.0.1", self.submit_port, timeout=30) as s:
            s.ehlo("app.example")
            s.mail(mail_from)
            for r in rcpts:
                code, text = s.rcpt(r)
                assert code == 250, (code, text)
            code, text = s.data(msg)
            assert code == 250, "Postfix did not queue the message: %s %r" % (code, text)
            s.quit()
        m = re.search(rb"queued as ([0-9A-Za-z]+)", text)
        assert m, text
        return m.group(1).decode()

    def log(self):
        out = ""
        for p in (self.errpath, self.maillog):
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out += f.read().decode("utf-8", "replace")
        return out

    def delivery_log(self, qid):
        """The smtp(8) client's lines about queue ID qid: one per attempt
        (status=deferred or status=sent)."""
        return [l for l in self.log().splitlines() if (" %s: " % qid) in l and "status=" in l]

    def wait_status(self, qid, status, count=1, timeout=RETRY_TIMEOUT):
        def ready():
            lines = [l for l in self.delivery_log(qid) if "status=%s" % status in l]
            return lines if len(lines) >= count else None
        try:
            return wait_until(ready, timeout, interval=0.1, what="%d x status=%s for %s" % (count, status, qid))
        except AssertionError as e:
            raise AssertionError("%s; Postfix log:\n%s" % (e, self.log()[-4000:]))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
            # master does not wait for its daemons: end any left in its
            # process group (the group's ID is not reused while a member
            # lives, so this reaches only them)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._err is not None and not self._err.closed:
            self._err.close()

    def cleanup(self):
        """Remove the queue directory (after stop())."""
        shutil.rmtree(self.queue, ignore_errors=True)


@pytest.fixture
def postfix_client(tmp_path):
    """Factory: postfix_client(relay_port) -> a running PostfixClient."""
    if not os.access(os.path.join(POSTFIX_LIBEXEC, "master"), os.X_OK):
        fail_missing("Postfix is not installed (tools/install-deps.sh installs postfix)")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root (its daemons drop privileges to the postfix user)")
    started = []

    def make(relay_port):
        p = PostfixClient(tmp_path / ("postfix%d" % (len(started) + 1)), relay_port)
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()
        p.cleanup()


def postfix_message(tag):
    return ("From: Alice <%s>\r\nTo: Bob <%s>\r\nSubject: rules %s\r\n"
            "Message-ID: <%s@smtptap.test>\r\n\r\nHello from an application, via Postfix.\r\n"
            % (FROM, TO, tag, tag)).encode()


# --------------------------------------------------------------------------
# 1. Postfix retries after two 451s and delivers on the third session


def test_postfix_retries_after_451(tmp_path, aio, smtptap, postfix_client):
    rules = write_rules(tmp_path, 'on mail session 1-2 reply 451 4.3.0 "Try again later"')
    p = smtptap(upstream=aio.addr, args=["--rules", rules])
    pf = postfix_client(p.port)
    qid = pf.submit(postfix_message("retry"))

    sent = pf.wait_status(qid, "sent")
    deferred = [l for l in pf.delivery_log(qid) if "status=deferred" in l]
    # Postfix itself says what it was told, twice, then that it delivered
    assert len(deferred) == 2, pf.delivery_log(qid)
    for l in deferred:
        assert "451 4.3.0 Try again later" in l, l
    assert len(sent) == 1 and "250" in sent[0], sent

    ss = wait_sessions(p.db, 3)
    assert len(ss) == 3, ss
    envs = aio.wait_envelopes(1)
    assert len(envs) == 1, "the upstream got the message %d times" % len(envs)
    assert envs[0]["mail_from"] == FROM and envs[0]["rcpt_tos"] == [TO]
    assert b"Message-ID: <retry@smtptap.test>" in envs[0]["content"]

    docs = [show_json(p.db, s["id"]) for s in sorted(ss, key=lambda s: s["id"])]
    for n, doc in enumerate(docs[:2], 1):
        fired = rule_actions(doc)
        assert len(fired) == 1, (n, fired)
        assert re.match(r'rule 2 fired on mail \(event \d+\): on mail session 1-2 reply 451 4\.3\.0 '
                        r'"Try again later"$', fired[0]["text"]), fired[0]["text"]
        mails = client_commands(doc, "MAIL")
        assert len(mails) == 1 and {"dropped", "rule"} <= flags(mails[0]), mails
        inj = injected_replies(doc)
        assert [e["text"].strip() for e in inj] == ["451 4.3.0 Try again later"], inj
        assert "rule" in flags(inj[0]), inj[0]
        assert not any(m.get("upstream_code") == 250 for m in doc["messages"]), doc["messages"]
    third = docs[2]
    assert rule_actions(third) == [] and injected_replies(third) == []
    assert len(third["messages"]) == 1 and third["messages"][0]["upstream_code"] == 250, third["messages"]

    # what a user reads: the injected replies marked as smtptap's own
    text = run_cli("show", ss[0]["id"], "--db", p.db).text
    assert re.search(r"<~ .*451 4\.3\.0 Try again later", text), text


# --------------------------------------------------------------------------
# 3. the reply to DATA rewritten: a retrying client delivers twice


def test_postfix_duplicate_delivery(tmp_path, aio, smtptap, postfix_client):
    rules = write_rules(tmp_path, 'on data-end session 1 rewrite 451 4.3.0 "Lost"')
    p = smtptap(upstream=aio.addr, args=["--rules", rules])
    pf = postfix_client(p.port)
    qid = pf.submit(postfix_message("dup"))

    sent = pf.wait_status(qid, "sent")
    log = pf.delivery_log(qid)
    deferred = [l for l in log if "status=deferred" in l]
    assert len(deferred) == 1 and "451 4.3.0 Lost" in deferred[0] and "end of DATA" in deferred[0], log
    assert len(sent) == 1, log

    ss = sorted(wait_sessions(p.db, 2), key=lambda s: s["id"])
    assert len(ss) == 2, ss
    envs = aio.wait_envelopes(2)
    # the duplicate: the upstream delivered the same message twice
    assert len(envs) == 2, "the upstream got the message %d times" % len(envs)
    assert envs[0]["content"] == envs[1]["content"]
    assert b"Message-ID: <dup@smtptap.test>" in envs[0]["content"]

    docs = [show_json(p.db, s["id"]) for s in ss]
    for doc in docs:
        assert len(doc["messages"]) == 1, doc["messages"]
    exported = [run_cli("export", s["id"], "--eml", "--db", p.db).out for s in ss]
    assert exported == [e["content"] for e in envs], "the transcript's two messages are not what was delivered"

    first, second = docs
    fired = rule_actions(first)
    assert len(fired) == 1 and re.match(r'rule 2 fired on data-end \(event \d+\): on data-end session 1 rewrite '
                                        r'451 4\.3\.0 "Lost"$', fired[0]["text"]), fired
    # the upstream's own 250 is recorded, altered; the client got the 451
    ups = [e for e in upstream_replies(first) if e["text"].startswith("250 2.0.0 OK queued as")]
    assert len(ups) == 1 and {"altered", "rule"} <= flags(ups[0]), ups
    inj = injected_replies(first)
    assert [e["text"].strip() for e in inj] == ["451 4.3.0 Lost"], inj
    ups2 = [e for e in upstream_replies(second) if e["text"].startswith("250 2.0.0 OK queued as")]
    assert len(ups2) == 1 and not flags(ups2[0]) & {"altered", "dropped", "rule"}, ups2
    assert rule_actions(second) == [] and injected_replies(second) == []
    assert second["messages"][0]["upstream_code"] == 250, second["messages"]

    text = run_cli("show", ss[0]["id"], "--db", p.db).text
    assert re.search(r"<- .*\[altered\].*250 2\.0\.0 OK queued as", text), text
    assert re.search(r"<~ .*451 4\.3\.0 Lost", text), text


# --------------------------------------------------------------------------
# 2. PHPMailer and Nodemailer report a forced 550 on RCPT to their caller

BAD = "bad@example.org"
SCRIPT_CLIENTS = {
    # name: (interpreter, script, what must be installed)
    "phpmailer": ("php", "phpmailer_send.php", "/usr/share/php/libphp-phpmailer/autoload.php"),
    "nodemailer": ("node", "nodemailer_send.js", "/usr/share/nodejs/nodemailer"),
}


@pytest.mark.parametrize("mode", ["relay", "sink"])
@pytest.mark.parametrize("client", list(SCRIPT_CLIENTS))
def test_library_reports_rcpt_550(client, mode, tmp_path, aio, smtptap, tools_required):
    interp, script, lib = SCRIPT_CLIENTS[client]
    tools_required(interp)
    if not os.path.exists(lib):
        fail_missing("%s is not installed (%s)" % (client, lib))
    rules = write_rules(tmp_path, 'on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"')
    p = smtptap(upstream=aio.addr, args=["--rules", rules]) if mode == "relay" else \
        smtptap(sink=True, args=["--rules", rules])
    body = tmp_path / "body.txt"
    body.write_text("Hello from %s.\n" % client)
    proc = subprocess.run([interp, os.path.join(CLIENTS, script), p.host, str(p.port), FROM, BAD,
                           "rules %s" % client, str(body)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=90)
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    # the library told its caller: the send failed, and why
    assert proc.returncode == 1, "%s exited %s:\n%s" % (client, proc.returncode, out)
    result = [l for l in out.splitlines() if l.startswith("RESULT: ")]
    assert len(result) == 1 and result[0].startswith("RESULT: failed"), out
    if client == "nodemailer":
        # the Error the promise rejects with carries the whole reply
        assert result[0].endswith("all recipients were rejected: 550 5.1.1 No such user"), result[0]
    else:
        # ErrorInfo names the recipient and the reply's text; PHPMailer's
        # own error line has the code
        assert result[0].endswith("The following recipients failed: %s: No such user" % BAD), result[0]
        assert "SMTP ERROR: RCPT TO command failed: 550 5.1.1 No such user" in out, out
    # and the server line it logged is the injected reply
    assert "S: 550 5.1.1 No such user" in out, out

    sess = wait_sessions(p.db, 1)
    assert len(sess) == 1, sess
    doc = show_json(p.db, sess[0]["id"])
    fired = rule_actions(doc)
    assert len(fired) == 1 and re.match(r'rule 2 fired on rcpt \(event \d+\): on rcpt to ~ "\^bad@" reply 550 5\.1\.1 '
                                        r'"No such user"$', fired[0]["text"]), fired
    rcpts = client_commands(doc, "RCPT")
    assert len(rcpts) == 1 and BAD in rcpts[0]["text"] and {"dropped", "rule"} <= flags(rcpts[0]), rcpts
    inj = [e["text"].strip() for e in injected_replies(doc)]
    assert "550 5.1.1 No such user" in inj, inj
    assert doc["messages"] == [] or all(not m.get("complete") for m in doc["messages"]), doc["messages"]
    if mode == "relay":
        # the upstream never saw the recipient, nor a message
        assert aio.envelopes == []
        assert not any(BAD in (e.get("text") or "") for e in doc["events"]
                       if e["side"] == "upstream" or (e["kind"] == "command" and "dropped" not in flags(e))), \
            doc["events"]


# --------------------------------------------------------------------------
# 4. swaks sees the EHLO reply without the capabilities a rule strips


def swaks(p, *extra):
    argv = ["swaks", "--server", "%s:%d" % (p.host, p.port), "--from", FROM, "--to", TO, "--helo", "swaks.example",
            "--timeout", "30"] + list(extra)
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=90)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def ehlo_keywords(out):
    """The EHLO keywords swaks printed (the lines after its EHLO, up to the
    reply's last line)."""
    lines = out.splitlines()
    i = next(n for n, l in enumerate(lines) if l.startswith(" -> EHLO "))
    kws = []
    for l in lines[i + 2:]:  # the first line is the greeting line of the reply
        m = re.match(r"<-  250([- ])(\S+)", l)
        if not m:
            break
        kws.append(m.group(2).upper())
        if m.group(1) == " ":
            break
    return kws


@pytest.mark.parametrize("mode", ["relay", "sink"])
def test_swaks_sees_stripped_ehlo(mode, tmp_path, aio, smtptap, tools_required):
    tools_required("swaks")
    rules = write_rules(tmp_path, "on ehlo strip STARTTLS,PIPELINING")
    # STARTTLS offered to clients in both modes, so that there is one to strip
    common = ["--client-tls", "starttls"] + (["--upstream", aio.addr] if mode == "relay" else ["--sink"])
    plain = smtptap(args=common, name="plain")
    ruled = smtptap(args=common + ["--rules", rules], name="ruled")

    rc, out = swaks(plain, "--quit-after", "EHLO")
    assert rc == 0, out
    before = ehlo_keywords(out)
    assert "STARTTLS" in before and "PIPELINING" in before, out

    rc, out = swaks(ruled)
    assert rc == 0, out
    after = ehlo_keywords(out)
    assert "STARTTLS" not in after and "PIPELINING" not in after, out
    # nothing else was taken away
    assert after == [k for k in before if k not in ("STARTTLS", "PIPELINING")], (before, after)
    assert re.search(r"<-  250 .*(queued|OK|Ok)", out), out
    if mode == "relay":
        assert len(aio.wait_envelopes(1)) == 1

    # a client that insists on TLS finds none (swaks: exit 29)
    rc, out = swaks(ruled, "--tls")
    assert rc == 29 and "*** Host did not advertise STARTTLS" in out, (rc, out)

    ss = sorted(wait_sessions(ruled.db, 2), key=lambda s: s["id"])
    doc = show_json(ruled.db, ss[0]["id"])
    fired = rule_actions(doc)
    assert len(fired) == 1 and re.match(r"rule 2 fired on ehlo \(event \d+\): on ehlo strip STARTTLS,PIPELINING$",
                                        fired[0]["text"]), fired
    # the reply as the client got it is in the transcript, without them
    got = [e for e in doc["events"] if e["kind"] == "reply" and "250" in (e.get("text") or "")[:3]
           and not flags(e) & {"altered", "dropped"} and (e["side"] == "upstream" or "injected" in flags(e))]
    assert got, doc["events"]
    ehlo_reply = got[0]["text"]
    assert "STARTTLS" not in ehlo_reply and "PIPELINING" not in ehlo_reply, ehlo_reply
    # smtptap's, made by the rule: flagged so (show marks it "<~ [injected] [rule]")
    assert got[0]["side"] == "proxy" and {"injected", "rule"} <= flags(got[0]), got[0]
    # and the reply before the rule changed it, flagged
    orig = [e for e in doc["events"] if e["kind"] == "reply" and {"altered", "rule"} <= flags(e)]
    assert len(orig) == 1 and "PIPELINING" in orig[0]["text"], doc["events"]
