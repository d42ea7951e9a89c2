"""Fixtures for smtptap's end-to-end tests.

Everything listens on 127.0.0.1 with ports chosen at run time.  Every process
a test starts is ended by its PID in a finalizer; every wait is bounded.

Environment:
  SMTPTAP_BIN        the binary under test (default: <repo>/build/smtptap)
  SMTPTAP_SANITIZER  "1" when the binary is an ASan/UBSan build (smaller
                     workloads, no RSS assertions)
"""

import base64
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP, AuthResult, LoginPassword

from scripted import Scripted

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.abspath(os.environ.get("SMTPTAP_BIN") or os.path.join(REPO, "build", "smtptap"))
SANITIZER = os.environ.get("SMTPTAP_SANITIZER") == "1"
CLIENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clients")

SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
LISTEN_RE = re.compile(r"smtptap: listening on (\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)")

# Upper bounds (safety nets, never thresholds a passing test relies on).
START_TIMEOUT = 10
STOP_TIMEOUT = 30
CLI_TIMEOUT = 60 if not SANITIZER else 180
RECORD_TIMEOUT = 20 if not SANITIZER else 60


# --------------------------------------------------------------------------
# small helpers


def free_port():
    """A port nothing listens on right now (racy by nature: only for servers
    we cannot hand a socket to, and callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port_picker():
    return free_port


@pytest.fixture
def dead_port():
    """A port that refuses connections for the whole test: bound, never
    listening, so nobody else can take it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def sanitizer_findings(text):
    return [m for m in SANITIZER_MARKS if m in text]


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it returns a true value (returned) or the time is
    up (AssertionError naming `what`)."""
    deadline = time.monotonic() + timeout
    n = 0
    while True:
        v = pred()
        if v:
            return v
        n += 1
        if time.monotonic() > deadline or n > 100000:
            raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))
        time.sleep(interval)


def unstuff_data(wire):
    """The message from a DATA stream as sent on the wire (dot-stuffed, ending
    with CRLF.CRLF): RFC 5321 4.5.2."""
    if wire.endswith(b"\r\n.\r\n"):
        body = wire[:-3]
    elif wire == b".\r\n":
        body = b""
    else:
        body = wire
    lines = body.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


def stuff_data(msg):
    """Dot-stuff a message and add the terminator (what a client sends)."""
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    out = b"\r\n".join(b"." + l if l.startswith(b".") else l for l in msg.split(b"\r\n"))
    return out + b".\r\n"


# --------------------------------------------------------------------------
# the CLI


class CliResult:
    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    @property
    def text(self):
        return self.out.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError as e:
            raise AssertionError("%s: stdout is not JSON (%s): %r" % (" ".join(self.argv), e, self.out[:500]))

    def __repr__(self):
        return "<CliResult %s rc=%s err=%r>" % (" ".join(self.argv), self.rc, self.err[-500:])


def run_cli(*args, expect=0, timeout=CLI_TIMEOUT, stdin=None):
    """Run `smtptap ARGS...`; assert the exit status (unless expect is None)
    and that no sanitizer complained."""
    argv = [BIN] + [str(a) for a in args]
    p = subprocess.run(argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    res = CliResult(argv, p.returncode, p.stdout, p.stderr.decode("utf-8", "replace"))
    bad = sanitizer_findings(res.err)
    assert not bad, "sanitizer report from %s:\n%s" % (" ".join(argv), res.err[-4000:])
    if expect is not None:
        assert res.rc == expect, "%s exited %s (expected %s); stderr:\n%s" % (
            " ".join(argv), res.rc, expect, res.err[-2000:])
    return res


def sessions_list(db):
    """`smtptap sessions --json` as a list of session objects."""
    doc = run_cli("sessions", "--db", db, "--json", "--limit", 0).json()
    if isinstance(doc, dict):
        doc = doc.get("sessions", doc)
    assert isinstance(doc, list), "sessions --json: expected a list, got %r" % (doc,)
    return doc


def show_json(db, sid):
    doc = run_cli("show", sid, "--db", db, "--json").json()
    for k in ("session", "events", "messages"):
        assert k in doc, "show --json lacks %r: %r" % (k, list(doc))
    return doc


def show_raw(db, sid, side=None):
    args = ["show", sid, "--db", db, "--raw"]
    if side:
        args += ["--side", side]
    return run_cli(*args).out


def export_eml(db, sid, message=None):
    args = ["export", sid, "--eml", "--db", db]
    if message is not None:
        args += ["--message", message]
    return run_cli(*args).out


def wait_sessions(db, count, timeout=RECORD_TIMEOUT):
    """Wait until at least `count` sessions are recorded as ended; returns
    the session list (oldest first)."""
    def ready():
        if not os.path.exists(db):
            return None
        ss = sessions_list(db)
        ended = [s for s in ss if s.get("ended_at")]
        return ss if len(ended) >= count else None
    return wait_until(ready, timeout, interval=0.1, what="%d ended sessions in %s" % (count, db))


def only_session(db, timeout=RECORD_TIMEOUT):
    ss = wait_sessions(db, 1, timeout)
    assert len(ss) == 1, "expected one session, got %d: %r" % (len(ss), ss)
    return ss[0]


def reply_events_seen_by_client(doc):
    """The replies the client received, in order, from a show --json
    document: upstream replies forwarded as is, plus proxy-injected ones."""
    out = []
    for e in doc["events"]:
        if e["kind"] != "reply":
            continue
        flags = set(e.get("flags") or [])
        if e["side"] == "upstream" and not flags & {"altered", "dropped"}:
            out.append(e)
        elif e["side"] == "proxy" and "injected" in flags:
            out.append(e)
    return out


def reply_lines(text):
    return [l for l in re.split(r"\r?\n", text or "") if l]


def commands(doc):
    return [e for e in doc["events"] if e["kind"] == "command"]


# --------------------------------------------------------------------------
# the proxy


class Proxy:
    """One running `smtptap proxy`."""

    def __init__(self, tmpdir, name, upstream=None, sink=False, args=(), db=None, listen=("127.0.0.1:0",),
                 grace=None, env=None):
        self.dir = str(tmpdir)
        self.db = db or os.path.join(self.dir, "%s.db" % name)
        self.errpath = os.path.join(self.dir, "%s.stderr" % name)
        self.outpath = os.path.join(self.dir, "%s.stdout" % name)
        self.argv = [BIN, "proxy"]
        for l in listen:
            self.argv += ["--listen", l]
        self.argv += ["--db", self.db]
        if upstream is not None:
            self.argv += ["--upstream", upstream]
        elif sink:
            self.argv += ["--sink"]
        if grace is not None:
            self.argv += ["--grace", str(grace)]
        self.argv += [str(a) for a in args]
        # Set by a test that ends the process itself in a special way.
        self.expect_rc = 0
        self.stopped_rc = None
        self.nlisten = len(listen)
        self._err = open(self.errpath, "wb")
        self._out = open(self.outpath, "wb")
        e = dict(os.environ)
        # The local CA (created on first use in relay mode) goes under the
        # test's directory, never into the user's $HOME.
        e["XDG_DATA_HOME"] = os.path.join(self.dir, "xdg")
        if env:
            e.update(env)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                     env=e)
        self.pid = self.proc.pid
        self.addrs = self._wait_listening()
        self.host, self.port = self.addrs[0]

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT * (3 if SANITIZER else 1)
        while True:
            found = [(h.strip("[]"), int(p)) for h, p in LISTEN_RE.findall(self.stderr())]
            if len(found) >= self.nlisten:
                return found
            if self.proc.poll() is not None:
                raise AssertionError("smtptap proxy exited %s before listening: %s\nstderr:\n%s" % (
                    self.proc.returncode, " ".join(self.argv), self.stderr()[-3000:]))
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError("smtptap proxy printed no 'listening on' line in %ss: %s\nstderr:\n%s" % (
                    START_TIMEOUT, " ".join(self.argv), self.stderr()[-3000:]))
            time.sleep(0.02)

    def stderr(self):
        with open(self.errpath, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def running(self):
        return self.proc.poll() is None

    def send_signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; returns the exit status.  Asserts a timely exit
        with the expected status and no sanitizer report."""
        if self.stopped_rc is not None:
            return self.stopped_rc
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT)
            self._close_files()
            self.stopped_rc = -9
            raise AssertionError("smtptap proxy did not exit within %ss of signal %s; stderr:\n%s" % (
                timeout, sig, self.stderr()[-3000:]))
        self._close_files()
        self.stopped_rc = rc
        self.check_stderr()
        if self.expect_rc is not None:
            assert rc == self.expect_rc, "smtptap proxy exited %s (expected %s); stderr:\n%s" % (
                rc, self.expect_rc, self.stderr()[-3000:])
        return rc

    def check_stderr(self):
        err = self.stderr()
        bad = sanitizer_findings(err)
        assert not bad, "sanitizer report (%s) from smtptap proxy:\n%s" % (", ".join(bad), err[-6000:])

    def _close_files(self):
        for f in (self._err, self._out):
            if not f.closed:
                f.close()

    def vm_hwm_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc/%d/status" % self.pid)

    def connect(self, timeout=30):
        return RawClient(self.host, self.port, timeout)


@pytest.fixture
def smtptap(tmp_path):
    """Factory: smtptap(upstream="127.0.0.1:P" | sink=True, args=[...]) starts
    a proxy on 127.0.0.1:0 and returns a Proxy.  At teardown each is sent
    SIGTERM, must exit 0 within 30 s and must not have a sanitizer report."""
    if not os.access(BIN, os.X_OK):
        pytest.fail("smtptap binary not found or not executable: %s (build it with make, or set SMTPTAP_BIN)" % BIN)
    procs = []
    counter = [0]

    def start(upstream=None, sink=False, args=(), name=None, **kw):
        counter[0] += 1
        p = Proxy(tmp_path, name or "proxy%d" % counter[0], upstream=upstream, sink=sink, args=args, **kw)
        procs.append(p)
        return p

    yield start
    errors = []
    for p in procs:
        try:
            p.stop()
        except AssertionError as e:
            errors.append(str(e))
        finally:
            if p.proc.poll() is None:
                p.kill()
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


# --------------------------------------------------------------------------
# raw SMTP client


class RawClient:
    """A line-oriented SMTP client on a plain socket, for exact bytes."""

    def __init__(self, host, port, timeout=30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.received = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by peer (buffered: %r)" % self.buf[-200:])
        self.buf += chunk
        self.received += chunk

    def read_line(self):
        for _ in range(100000):
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            self._fill()
        raise AssertionError("no line")

    def reply(self):
        """One complete (multi-line) reply: (code, [text lines], raw bytes)."""
        raw = b""
        lines = []
        for _ in range(1000):
            line = self.read_line()
            raw += line
            s = line.rstrip(b"\r\n").decode("utf-8", "replace")
            lines.append(s[4:])
            if len(s) < 4 or s[3] != "-":
                return int(s[:3]) if s[:3].isdigit() else 0, lines, raw
        raise AssertionError("reply too long")

    def cmd(self, line):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def read_until_closed(self, limit=10 * 1024 * 1024):
        """Read everything until the peer closes; returns the bytes after
        what reply() already consumed.  Raises on timeout."""
        out = self.buf
        self.buf = b""
        while len(out) < limit:
            chunk = self.sock.recv(65536)
            if not chunk:
                return out
            out += chunk
        raise AssertionError("peer kept sending")

    def closed_by_peer(self):
        """True if the peer closed (EOF or reset) before the timeout."""
        try:
            self.read_until_closed()
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# upstream: aiosmtpd


def content_queue_id(content):
    return hashlib.sha1(content).hexdigest()[:12].upper()


class RecordingHandler:
    """aiosmtpd handler: records every envelope; rejects chosen recipients.
    The DATA reply depends only on the content, so a direct send and a
    proxied one get the same reply text."""

    def __init__(self, reject=()):
        self.reject = set(a.lower() for a in reject)
        self.envelopes = []
        self.rcpt_options = []
        self.reject_data = None  # bytes: reject messages containing them with 554
        self.lock = threading.Lock()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # aiosmtpd reads commands one at a time from a stream, so pipelined
        # commands work; say so, so that clients (swaks --pipeline) pipeline.
        session.host_name = hostname
        return responses[:-1] + ["250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(list(rcpt_options))
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        rec = {
            "mail_from": envelope.mail_from,
            "mail_options": list(envelope.mail_options),
            "rcpt_tos": list(envelope.rcpt_tos),
            "rcpt_options": list(envelope.rcpt_options),
            "content": bytes(envelope.original_content),
            "auth": getattr(session, "auth_data", None),
        }
        if self.reject_data is not None and self.reject_data in rec["content"]:
            return "554 5.6.0 content rejected"
        with self.lock:
            self.envelopes.append(rec)
        return "250 2.0.0 OK queued as %s" % content_queue_id(rec["content"])


class _BigLineSMTP(AioSMTP):
    # RFC 5321 says 1000; test messages use longer lines on purpose.
    line_length_limit = 1024 * 1024


class _BoundController(Controller):
    """A Controller on a socket we bound ourselves (port 0, no race)."""

    def __init__(self, handler, **kw):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        super().__init__(handler, hostname="127.0.0.1", port=port, **kw)

    def factory(self):
        return _BigLineSMTP(self.handler, **self.SMTP_kwargs)

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class AioUpstream:
    def __init__(self, reject=(), auth=False, tls_context=None, smtputf8=True, ident=None):
        self.handler = RecordingHandler(reject)
        self.auth_seen = []
        kw = dict(enable_SMTPUTF8=smtputf8, data_size_limit=0)
        if ident:
            kw["ident"] = ident
        if auth:
            kw.update(auth_require_tls=False, authenticator=self._authenticator)
        if tls_context is not None:
            kw.update(tls_context=tls_context, require_starttls=False)
        self.controller = _BoundController(self.handler, **kw)
        self.controller.start()
        self.host, self.port = "127.0.0.1", self.controller.port
        self.addr = "127.0.0.1:%d" % self.port

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            self.auth_seen.append((mechanism, auth_data.login, auth_data.password))
            ok = auth_data.password == b"s3cret-Pa55"
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    @property
    def envelopes(self):
        with self.handler.lock:
            return list(self.handler.envelopes)

    def wait_envelopes(self, n, timeout=RECORD_TIMEOUT):
        return wait_until(lambda: self.envelopes if len(self.envelopes) >= n else None, timeout,
                          what="%d messages at aiosmtpd" % n)

    def stop(self):
        try:
            self.controller.stop()
        except Exception:
            pass


@pytest.fixture
def aiosmtpd_factory():
    """Factory: aiosmtpd_factory(reject=[...], auth=False, tls_context=None)."""
    servers = []

    def make(**kw):
        s = AioUpstream(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def aio(aiosmtpd_factory):
    """A recording aiosmtpd upstream rejecting nouser@example.org."""
    return aiosmtpd_factory(reject=["nouser@example.org"])


# --------------------------------------------------------------------------
# upstream: Postfix smtp-sink


SMTP_SINK = "/usr/sbin/smtp-sink"


class SmtpSink:
    def __init__(self, tmpdir, extra=(), dump=False):
        if not os.access(SMTP_SINK, os.X_OK):
            fail_missing("Postfix smtp-sink not installed at %s (tools/install-deps.sh installs postfix)"
                                 % SMTP_SINK)
        self.dumpdir = None
        for attempt in range(20):
            self.port = free_port()
            argv = [SMTP_SINK]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]  # required when run as root
            argv += ["-m", "1000"]
            if dump:
                self.dumpdir = os.path.join(str(tmpdir), "sinkdump")
                os.makedirs(self.dumpdir, exist_ok=True)
                os.chmod(self.dumpdir, 0o777)
                argv += ["-D", os.path.join(self.dumpdir, "dump")]
            argv += list(extra) + ["127.0.0.1:%d" % self.port, "1024"]
            self.errpath = os.path.join(str(tmpdir), "smtp-sink.stderr")
            self._err = open(self.errpath, "wb")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                        s.settimeout(5)
                        if s.recv(100).startswith(b"220"):
                            self.addr = "127.0.0.1:%d" % self.port
                            return
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise AssertionError("smtp-sink did not start")

    def dump(self):
        p = os.path.join(self.dumpdir, "dump")
        with open(p, "rb") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        self._err.close()


@pytest.fixture
def smtp_sink_factory(tmp_path):
    sinks = []

    def make(extra=(), dump=False):
        s = SmtpSink(tmp_path, extra, dump)
        sinks.append(s)
        return s

    yield make
    for s in sinks:
        s.stop()


@pytest.fixture
def smtp_sink(smtp_sink_factory):
    return smtp_sink_factory()


# --------------------------------------------------------------------------
# upstream: a small raw SMTP server (exact bytes, CHUNKING); scripted.py for faults


class MiniSMTP:
    """A small threaded ESMTP server that records every byte it receives.

    caps: EHLO keywords to advertise.  Implements DATA (with unstuffing) and
    BDAT; messages are appended to self.messages as dicts {mail, rcpts,
    content, transport}.  A peer that misbehaves on purpose is a scripted
    one (scripted.py, the `scripted` fixture)."""

    def __init__(self, caps=("PIPELINING", "8BITMIME", "CHUNKING", "STARTTLS", "ENHANCEDSTATUSCODES"),
                 greeting=b"220 mini.test ESMTP ready\r\n", host="127.0.0.1"):
        self.caps = list(caps)
        self.greeting = greeting
        self.messages = []
        self.conns = []  # raw bytes received, per connection
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.addr = ("[%s]:%d" if fam == socket.AF_INET6 else "%s:%d") % (host, self.port)
        self.threads = []
        self.t = threading.Thread(target=self._accept_loop, daemon=True)
        self.t.start()

    def _accept_loop(self):
        while not self.stopping.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, c):
        c.settimeout(30)
        rec = bytearray()
        with self.lock:
            self.conns.append(rec)
        buf = b""

        def fill():
            nonlocal buf
            d = c.recv(65536)
            if not d:
                raise EOFError
            rec.extend(d)
            buf += d

        def line():
            nonlocal buf
            while b"\n" not in buf:
                fill()
            i = buf.index(b"\n")
            l, buf = buf[:i + 1], buf[i + 1:]
            return l

        def take(n):
            nonlocal buf
            while len(buf) < n:
                fill()
            d, buf = buf[:n], buf[n:]
            return d

        try:
            c.sendall(self.greeting)
            mail, rcpts, bdat = None, [], b""
            while not self.stopping.is_set():
                l = line()
                verb = l.split(b" ", 1)[0].strip().upper()
                if verb in (b"EHLO", b"LHLO"):
                    lines = [b"mini.test greets you"] + [x.encode() for x in self.caps]
                    out = b"".join(b"250-" + x + b"\r\n" for x in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"
                    c.sendall(out)
                elif verb == b"HELO":
                    c.sendall(b"250 mini.test\r\n")
                elif verb == b"MAIL":
                    mail, rcpts, bdat = l.rstrip(b"\r\n"), [], b""
                    c.sendall(b"250 2.1.0 sender ok\r\n")
                elif verb == b"RCPT":
                    rcpts.append(l.rstrip(b"\r\n"))
                    c.sendall(b"250 2.1.5 recipient ok\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go ahead\r\n")
                    data = b""
                    while True:
                        dl = line()
                        if dl == b".\r\n":
                            break
                        data += dl[1:] if dl.startswith(b".") else dl
                    with self.lock:
                        self.messages.append({"mail": mail, "rcpts": rcpts, "content": data, "transport": "data"})
                    c.sendall(b"250 2.0.0 queued as MINI%d\r\n" % len(self.messages))
                elif verb == b"BDAT":
                    parts = l.split()
                    n = int(parts[1])
                    bdat += take(n)
                    if len(parts) > 2 and parts[2].upper() == b"LAST":
                        with self.lock:
                            self.messages.append({"mail": mail, "rcpts": rcpts, "content": bdat,
                                                  "transport": "bdat"})
                        c.sendall(b"250 2.0.0 %d octets queued as MINI%d\r\n" % (len(bdat), len(self.messages)))
                    else:
                        c.sendall(b"250 2.0.0 %d octets received\r\n" % n)
                elif verb == b"RSET":
                    mail, rcpts, bdat = None, [], b""
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"NOOP":
                    c.sendall(b"250 2.0.0 ok\r\n")
                elif verb == b"STARTTLS":
                    c.sendall(b"220 2.0.0 ready to start TLS (but this server will not)\r\n")
                    return
                elif verb == b"QUIT":
                    c.sendall(b"221 2.0.0 bye\r\n")
                    return
                else:
                    c.sendall(b"502 5.5.2 unknown command\r\n")
        except (EOFError, OSError):
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def received(self):
        with self.lock:
            return [bytes(r) for r in self.conns]

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        self.t.join(5)


@pytest.fixture
def mini_factory():
    servers = []

    def make(**kw):
        s = MiniSMTP(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------
# scripted peers (scripted.py): a dialogue per connection, either side


@pytest.fixture
def scripted(smtptap):
    """scripted.server(steps, ...) -> ScriptedServer (addr, port, [n] the
    n-th connection's Conn); scripted.client(port, steps) -> Conn.  Depends
    on smtptap so that the peers are stopped (sockets closed) before the
    proxies are, and a proxy never waits out its grace period for them."""
    f = Scripted()
    yield f
    f.stop_all()


# --------------------------------------------------------------------------
# test messages


def sample_message(tag="sample", extra_body=b""):
    """A message exercising the byte-exactness corners: lines starting with
    '.', a line that is only '.', 8-bit UTF-8, a long line, a header with an
    encoded word."""
    return (
        b"From: Alice <alice@example.com>\r\n"
        b"To: Bob <bob@example.org>\r\n"
        b"Subject: =?UTF-8?B?" + base64.b64encode(("Gr\u00fc\u00dfe " + tag).encode()) + b"?=\r\n"
        b"Message-ID: <" + tag.encode() + b"@example.com>\r\n"
        b"Date: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"Hello Bob,\r\n"
        b".leading dot line\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"8-bit: \xc3\xa4\xc3\xb6\xc3\xbc \xe2\x82\xac \xf0\x9f\x93\xa7\r\n"
        b"long: " + b"x" * 2000 + b"\r\n"
        b"tab\tand trailing space \r\n"
        + extra_body +
        b"-- \r\nAlice\r\n"
    )


def fail_missing(reason):
    """A peer that is not installed fails the test, in every run: the
    install script (tools/install-deps.sh) provides every peer, and a skip
    would let a broken install, or a machine without it, look green."""
    pytest.fail(reason + " [run tools/install-deps.sh]", pytrace=False)


@pytest.fixture
def tools_required():
    def need(*names):
        for n in names:
            if shutil.which(n) is None and not os.path.exists(n):
                fail_missing("%s is not installed (tools/install-deps.sh installs it)" % n)
    return need


def db_bytes(db):
    """Every byte of the database (main file, WAL, shm, and the content
    segments under PATH-content/)."""
    out = b""
    for path in sorted(glob.glob(db + "*")):
        if os.path.isdir(path):
            for seg in sorted(glob.glob(os.path.join(path, "*"))):
                with open(seg, "rb") as f:
                    out += f.read()
            continue
        with open(path, "rb") as f:
            out += f.read()
    return out
