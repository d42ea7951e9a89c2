"""Helpers for the fault-rules end-to-end tests (test_rules_*.py).

- `rules_env(rules, mode="relay"|"sink", tls="plain"|"starttls", ...)` starts
  `smtptap proxy --rules FILE` in front of a recording aiosmtpd upstream
  (relay; one per run, each test sees only its own connections and
  messages through an UpView) or alone (sink), with a client that talks
  plaintext or upgrades with STARTTLS trusting only smtptap's CA.
- `LogUpstream`: conftest's aiosmtpd handler, plus the raw bytes each
  connection sent it, so a test sees exactly what reached the upstream
  (a dropped RCPT, a withheld ".", a "*" or a RSET smtptap sent).
- `Client`: a socket client (plaintext, or TLS after STARTTLS) that says
  what happened to it: a reply, a FIN (Closed), an RST (Reset), silence
  (socket.timeout).
- transcript checks: the rule's action event right after its trigger,
  with the rule's line and text; replies a rule made or changed flagged
  `rule`.

Everything is on 127.0.0.1; every wait is bounded.
"""

import re
import socket
import ssl
import threading

import pytest

from aiosmtpd.smtp import AuthResult

from conftest import (RECORD_TIMEOUT, RecordingHandler, _BigLineSMTP, _BoundController, run_cli, show_json,
                      wait_sessions, wait_until)
from tlspeers import client_context, smtptap_ca

FROM = "alice@example.com"
GOOD = "bob@example.org"
MODES = ["relay", "sink"]
TLS = ["plain", "starttls"]
COMBOS = [(m, t) for m in MODES for t in TLS]
COMBO_IDS = ["%s-%s" % c for c in COMBOS]

# How long a client waits for something that must not come (a stalled
# reply).  Short on purpose: the suite runs in make check.
SILENCE = 1.0

# Timing is only ever checked as "at least D", less the granularity of
# libevent's clock (CLOCK_MONOTONIC_COARSE: a timer may fire a few ms
# before D as measured with a fine clock).  The delay rules use 300ms.
CLOCK_SLACK = 0.02
DELAY = 0.3 - CLOCK_SLACK
DELAY_US = int(DELAY * 1e6)


def combos(f):
    """Parametrize a test over relay/sink x plaintext/STARTTLS clients."""
    return pytest.mark.parametrize("mode,tls", COMBOS, ids=COMBO_IDS)(f)


def message(subject="rules test", body=b"Hello.\r\n", extra_headers=b""):
    return (b"From: Alice <alice@example.com>\r\nTo: Bob <bob@example.org>\r\nSubject: " + subject.encode() +
            b"\r\n" + extra_headers + b"Message-ID: <" + subject.replace(" ", ".").encode() +
            b"@example.com>\r\n\r\n" + body)


def data_bytes(msg):
    """DATA content as a client sends it (dot-stuffed, terminated)."""
    if not msg.endswith(b"\r\n"):
        msg += b"\r\n"
    lines = msg.split(b"\r\n")
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in lines) + b".\r\n"


# --------------------------------------------------------------------------
# the upstream


class _LogReader:
    """Wraps an asyncio StreamReader: every byte aiosmtpd reads is logged."""

    def __init__(self, reader, rec):
        self._r = reader
        self._rec = rec

    async def readuntil(self, *a, **kw):
        d = await self._r.readuntil(*a, **kw)
        self._rec.extend(d)
        return d

    async def readline(self):
        d = await self._r.readline()
        self._rec.extend(d)
        return d

    async def read(self, n=-1):
        d = await self._r.read(n)
        self._rec.extend(d)
        return d

    async def readexactly(self, n):
        d = await self._r.readexactly(n)
        self._rec.extend(d)
        return d

    def __getattr__(self, name):
        return getattr(self._r, name)


class _LogController(_BoundController):
    def __init__(self, handler, conns, lock, **kw):
        self._conns, self._lock = conns, lock
        super().__init__(handler, **kw)

    def factory(self):
        conns, lock = self._conns, self._lock

        class LogSMTP(_BigLineSMTP):
            def _client_connected_cb(self, reader, writer):
                super()._client_connected_cb(reader, writer)
                rec = bytearray()
                with lock:
                    conns.append(rec)
                self._reader = _LogReader(reader, rec)

        return LogSMTP(self.handler, **self.SMTP_kwargs)


class LogUpstream:
    """aiosmtpd (conftest's RecordingHandler: rejects nouser@example.org)
    recording the raw bytes of each connection."""

    def __init__(self, auth=False):
        self.handler = RecordingHandler(["nouser@example.org"])
        self.auth_seen = []
        self._conns = []
        self._lock = threading.Lock()
        kw = dict(enable_SMTPUTF8=True, data_size_limit=0)
        if auth:
            kw.update(auth_require_tls=False, authenticator=self._authenticator)
        self.controller = _LogController(self.handler, self._conns, self._lock, **kw)
        self.controller.start()
        # Controller.start() connects once to see the server up: not a session.
        with self._lock:
            self._base = len(self._conns)
        self.port = self.controller.port
        self.addr = "127.0.0.1:%d" % self.port

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        login = getattr(auth_data, "login", None)
        self.auth_seen.append((mechanism, login))
        return AuthResult(success=getattr(auth_data, "password", None) == b"s3cret", handled=False)

    @property
    def envelopes(self):
        with self.handler.lock:
            return list(self.handler.envelopes)

    def wait_envelopes(self, n, timeout=RECORD_TIMEOUT):
        return wait_until(lambda: self.envelopes if len(self.envelopes) >= n else None, timeout,
                          what="%d messages at the upstream" % n)

    def conns(self):
        with self._lock:
            return [bytes(c) for c in self._conns[self._base:]]

    def lines(self, i=0):
        """The command lines connection i sent (message data included)."""
        c = self.conns()
        return c[i].split(b"\r\n") if i < len(c) else []

    def commands(self, i=0):
        """Upper-case verbs connection i sent, outside message data."""
        out, in_data = [], False
        for l in self.lines(i):
            if in_data:
                if l == b".":
                    in_data = False
                continue
            if not l:
                continue
            v = l.split(b" ", 1)[0].upper().decode("ascii", "replace")
            out.append(v)
            if v == "DATA":
                in_data = True
        return out

    def stop(self):
        try:
            self.controller.stop()
        except Exception:
            pass


class UpView:
    """One test's view of a shared LogUpstream: the connections and
    messages since the test started (starting aiosmtpd for each test
    would cost a third of a second each)."""

    def __init__(self, up):
        self.up = up
        self.addr = up.addr
        with up._lock:
            self._c0 = len(up._conns)
        with up.handler.lock:
            self._e0 = len(up.handler.envelopes)
        self._a0 = len(up.auth_seen)

    @property
    def envelopes(self):
        return self.up.envelopes[self._e0:]

    @property
    def auth_seen(self):
        return self.up.auth_seen[self._a0:]

    def wait_envelopes(self, n, timeout=RECORD_TIMEOUT):
        return wait_until(lambda: self.envelopes if len(self.envelopes) >= n else None, timeout,
                          what="%d messages at the upstream" % n)

    def conns(self):
        with self.up._lock:
            return [bytes(c) for c in self.up._conns[self._c0:]]

    lines = LogUpstream.lines
    commands = LogUpstream.commands


# --------------------------------------------------------------------------
# the client


class Closed(Exception):
    """The proxy closed the connection (FIN)."""


class Reset(Exception):
    """The proxy reset the connection (RST)."""


class Reply:
    def __init__(self, code, lines, raw):
        self.code, self.lines, self.raw = code, lines, raw

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "<Reply %r>" % self.raw


class Client:
    """An SMTP client on a socket; TLS after starttls().  Every read is
    bounded by the socket timeout.

    TLS runs over memory BIOs with the socket read here, so that a reset
    shows as one (ssl.SSLSocket reports an RST like a FIN without
    close_notify: "EOF occurred in violation of protocol")."""

    def __init__(self, port, timeout=10, ctx=None):
        self.ctx = ctx
        self.buf = b""
        self.tls = None  # ssl.SSLObject once upgraded
        self.reset_early = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(("127.0.0.1", port))
        except ConnectionResetError:
            # accepted and reset before connect(2) returned (loopback is quick)
            self.reset_early = True

    def settimeout(self, t):
        self.sock.settimeout(t)

    def _raw_recv(self):
        if self.reset_early:
            raise Reset("connection reset at once")
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            raise Reset("connection reset (buffered %r)" % self.buf)
        if not d:
            raise Closed("connection closed (buffered %r)" % self.buf)
        return d

    def _sendall(self, data):
        try:
            self.sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            raise Reset("connection reset while sending")

    def _tls_flush(self):
        out = self._out.read()
        if out:
            self._sendall(out)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        if self.tls is None:
            self._sendall(data)
            return
        self.tls.write(data)
        self._tls_flush()

    def _fill(self):
        if self.tls is None:
            self.buf += self._raw_recv()
            return
        for _ in range(100000):
            try:
                d = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._tls_flush()
                try:
                    self._in.write(self._raw_recv())
                except Closed:
                    self._in.write_eof()
                    raise
                continue
            except ssl.SSLZeroReturnError:
                raise Closed("TLS closed with close_notify (buffered %r)" % self.buf)
            if not d:
                raise Closed("TLS closed (buffered %r)" % self.buf)
            self.buf += d
            return
        raise AssertionError("no progress")

    def handshake(self, hostname="localhost"):
        """TLS handshake on the socket as it is (after a 220 to STARTTLS,
        or at once on an implicit-TLS listener); ssl.SSLError on failure."""
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = self.ctx.wrap_bio(self._in, self._out, server_hostname=hostname)
        # what came with the 220 is the server's TLS already (an alert)
        self._in.write(self.buf)
        self.buf = b""
        for _ in range(1000):
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._tls_flush()
                try:
                    self._in.write(self._raw_recv())
                except Closed:
                    self._in.write_eof()
        else:
            raise AssertionError("endless handshake")
        self._tls_flush()
        self.tls = obj

    def read_line(self):
        for _ in range(10000):
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line
            self._fill()
        raise AssertionError("no line")

    def reply(self):
        raw, lines = b"", []
        for _ in range(1000):
            line = self.read_line()
            raw += line
            s = line.rstrip(b"\r\n").decode("utf-8", "replace")
            lines.append(s[4:])
            if len(s) < 4 or s[3] != "-":
                return Reply(int(s[:3]) if s[:3].isdigit() else 0, lines, raw)
        raise AssertionError("reply too long")

    def cmd(self, line):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def expect(self, line, code):
        r = self.cmd(line)
        assert r.code == code, "%s: expected %d, got %r" % (line, code, r.raw)
        return r

    def ehlo(self, name="client.example"):
        r = self.expect("EHLO " + name, 250)
        return [l.split(" ")[0].upper() for l in r.lines[1:]]

    def starttls(self, hostname="localhost"):
        r = self.cmd("STARTTLS")
        if r.code != 220:
            return r
        self.handshake(hostname)
        return r

    def hello(self, tls):
        """Greeting, EHLO, and under `tls == "starttls"` STARTTLS and EHLO
        again.  Returns the EHLO keywords the client ends up with."""
        g = self.reply()
        assert g.code == 220, g
        caps = self.ehlo()
        if tls == "starttls":
            assert "STARTTLS" in caps, caps
            r = self.starttls()
            assert r.code == 220, r
            caps = self.ehlo()
        return caps

    def send_message(self, msg, rcpts=(GOOD,), mail_from=FROM):
        """MAIL, RCPTs, DATA and the content; returns the final reply."""
        self.expect("MAIL FROM:<%s>" % mail_from, 250)
        for r in rcpts:
            self.expect("RCPT TO:<%s>" % r, 250)
        self.expect("DATA", 354)
        self.send(data_bytes(msg))
        return self.reply()

    def outcome(self):
        """Read until the connection ends: ("closed"|"reset"|"silent", bytes)."""
        got = self.buf
        self.buf = b""
        for _ in range(10000):
            try:
                self._fill()
            except Closed:
                return "closed", got + self.buf
            except Reset:
                return "reset", got + self.buf
            except socket.timeout:
                return "silent", got + self.buf
            got += self.buf
            self.buf = b""
        raise AssertionError("endless data")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# the proxy with rules


class Env:
    """A proxy with a rules file, its upstream (relay), and how its clients
    talk (tls: plain or starttls)."""

    def __init__(self, p, up, mode, tls, ctx, rules_path):
        self.p, self.up, self.mode, self.tls, self.ctx, self.rules_path = p, up, mode, tls, ctx, rules_path
        self.clients = []

    @property
    def relay(self):
        return self.mode == "relay"

    def client(self, timeout=10):
        c = Client(self.p.port, timeout=timeout, ctx=self.ctx)
        self.clients.append(c)
        return c

    def session(self, timeout=10):
        """A client past the greeting and EHLO (and STARTTLS + EHLO)."""
        c = self.client(timeout)
        c.caps = c.hello(self.tls)
        return c

    def sessions(self, n):
        return wait_sessions(self.p.db, n)

    def doc(self, n=1):
        """show --json of the n-th session, once n sessions have ended."""
        ss = wait_sessions(self.p.db, n)
        assert len(ss) >= n, ss
        ss = sorted(ss, key=lambda s: s["id"])
        return show_json(self.p.db, ss[n - 1]["id"])

    def write_rules(self, text):
        with open(self.rules_path, "w") as f:
            f.write(text)

    def close_clients(self):
        for c in self.clients:
            c.close()


@pytest.fixture(scope="module")
def rules_ca(tmp_path_factory):
    """One smtptap CA for every proxy of a module (ca init is not free)."""
    d = str(tmp_path_factory.mktemp("rules-ca"))
    run_cli("ca", "init", "--ca-dir", d)
    cafile, _ = smtptap_ca(d)
    return d, cafile


@pytest.fixture(scope="session")
def shared_upstreams():
    """Recording aiosmtpd upstreams (plain, and with AUTH) for the whole run."""
    ups = {}

    def get(auth=False):
        if auth not in ups:
            ups[auth] = LogUpstream(auth=auth)
        return ups[auth]

    yield get
    for u in ups.values():
        u.stop()


@pytest.fixture
def rules_env(smtptap, rules_ca, tmp_path, shared_upstreams):
    """Factory: rules_env(rules_text, mode="relay"|"sink", tls="plain"|"starttls",
    args=[...], upstream=ADDR (default: a fresh LogUpstream), auth=False,
    listen=(...)) -> Env."""
    envs = []
    n = [0]

    def start(rules, mode="relay", tls="plain", args=(), upstream=None, auth=False, listen=("127.0.0.1:0",),
              name=None, grace=1):
        n[0] += 1
        path = str(tmp_path / ("rules%d.conf" % n[0]))
        with open(path, "w") as f:
            f.write(rules)
        up = None
        a = ["--rules", path, "--ca-dir", rules_ca[0]]
        if tls == "starttls":
            a += ["--client-tls", "starttls"]
        if mode == "relay":
            if upstream is None:
                up = UpView(shared_upstreams(auth))
                upstream = up.addr
            p = smtptap(upstream=upstream, args=a + list(args), listen=listen, name=name, grace=grace)
        else:
            p = smtptap(sink=True, args=a + list(args), listen=listen, name=name, grace=grace)
        ctx = client_context(rules_ca[1])
        e = Env(p, up, mode, tls, ctx, path)
        envs.append(e)
        return e

    yield start
    for e in envs:
        e.close_clients()


# --------------------------------------------------------------------------
# conversations

# Every rules file starts with a comment and a blank line: rules are on
# line 3 and below, so a line number that is off shows.
HEAD = "# fault rules under test\n\n"


def rules(*lines):
    return HEAD + "\n".join(lines) + "\n"


def mail(c):
    c.expect("MAIL FROM:<alice@example.com>", 250)


def finish(c, rcpts=(GOOD,), subject="ok"):
    """The rest of a transaction after MAIL; returns the final reply."""
    for r in rcpts:
        c.expect("RCPT TO:<%s>" % r, 250)
    c.expect("DATA", 354)
    c.send(data_bytes(message(subject)))
    return c.reply()


def deliver_control(env):
    """A clean session that delivers one message: proves the upstream is
    alive and takes mail, so a message it lacks was really never delivered."""
    c = env.session()
    mail(c)
    r = finish(c, subject="control")
    assert r.code == 250, r
    c.expect("QUIT", 221)
    c.close()


def upstream_lines(env, i=0):
    return env.up.lines(i) if env.relay else []


def session_outcome(doc):
    return doc["session"]["outcome"], doc["session"]["detail"] or ""


# --------------------------------------------------------------------------
# the transcript

FIRED_RE = re.compile(r"^rule (\d+) fired on (.+?) \(event (\d+)\): (.*?)(?: \[seed (\d+)\])?$")


def by_seq(doc):
    return {e["seq"]: e for e in doc["events"]}


def flags(e):
    return set(e.get("flags") or [])


def fired_events(doc, line=None):
    out = []
    for e in doc["events"]:
        if e["kind"] != "action":
            continue
        m = FIRED_RE.match(e["text"] or "")
        if m and (line is None or int(m.group(1)) == line):
            out.append((e, m))
    return out


def rule_text(rules, line):
    """The rule on `line` of a rules text, as the transcript quotes it."""
    return rules.split("\n")[line - 1].strip()


def check_fired(doc, rules, line, on, trigger_kind=None, count=1):
    """The rule on `line` fired `count` times on `on`; each firing is an
    action event flagged rule, right after the event it names, quoting the
    rule as written.  Returns [(action event, trigger event, seed)]."""
    evs = by_seq(doc)
    got = fired_events(doc, line)
    assert len(got) == count, "rule %d fired %d times (expected %d): %r" % (
        line, len(got), count, [e["text"] for e in doc["events"] if e["kind"] == "action"])
    out = []
    for e, m in got:
        assert m.group(2) == on, "rule %d fired on %r, expected %r: %s" % (line, m.group(2), on, e["text"])
        assert m.group(4) == rule_text(rules, line), (m.group(4), rule_text(rules, line))
        assert "rule" in flags(e), e
        assert e["side"] == "proxy", e
        trig = int(m.group(3))
        assert trig in evs, "rule %d names event %d, which is not in the transcript" % (line, trig)
        assert e["seq"] == trig + 1, "rule %d's action (event %d) is not right after its trigger (event %d)" % (
            line, e["seq"], trig)
        if trigger_kind is not None:
            assert evs[trig]["kind"] == trigger_kind, (evs[trig], trigger_kind)
        out.append((e, evs[trig], m.group(5)))
    return out


def after(doc, ev, kind=None, side=None):
    """Events after ev (optionally of one kind / side)."""
    return [e for e in doc["events"] if e["seq"] > ev["seq"] and (kind is None or e["kind"] == kind) and
            (side is None or e["side"] == side)]


def rule_replies(doc):
    """Replies smtptap sent in the upstream's place because of a rule."""
    return [e for e in doc["events"] if e["kind"] == "reply" and {"injected", "rule"} <= flags(e)]


def altered_replies(doc):
    """The upstream's (or the sink's) own replies a rule kept from the client."""
    return [e for e in doc["events"] if e["kind"] == "reply" and {"altered", "rule"} <= flags(e)]
