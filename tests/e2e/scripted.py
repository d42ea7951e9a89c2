"""A scripted SMTP peer: one side of a conversation written as a dialogue.

A script is a list of steps run in order, in a thread, on one TCP
connection; the peer is either a server (listens on 127.0.0.1, port 0, and
runs one script per accepted connection) or a client (connects, runs its
script):

    up = scripted.server([
        send(b"220 up.test ESMTP\\r\\n"),
        expect(rb"EHLO [^\\r\\n]*\\r\\n"),
        send(b"250-host hello\\r\\n", b"250-PIPELI"),   # two segments
        close(),                                        # FIN
    ])
    p = smtptap(upstream=up.addr)
    cl = scripted.client(p.port, [expect(rb"220 [^\\r\\n]*\\r\\n"), send(b"EHLO c\\r\\n"), read_all()])
    cl.wait()          # AssertionError naming the step that failed, if one did
    up[0].wait()
    assert cl.received == ...

Steps:
  send(*segments)        write each segment separately (TCP_NODELAY, with a
                         short pause between them so that they arrive in
                         separate reads)
  wait(seconds)          pause
  expect(pattern, name=None, timeout=None)
                         read until the bytes regex `pattern` matches the
                         input not yet consumed by an earlier expect, then
                         consume it up to the end of the match: write
                         patterns to the end of the line, e.g.
                         rb"MAIL FROM:[^\\r\\n]*\\r\\n".  With `name`, what
                         the step consumed (everything up to the match end)
                         is kept in .got[name].
  expect_closed(timeout=None)  read until the peer closes (FIN or RST)
  read_all(name=None, timeout=None)  the same, keeping what was read in
                         .got[name]
  close()                FIN (shutdown for writing; reading still works)
  reset()                RST (SO_LINGER 0, then close)
  stall()                stop reading; the socket stays open until the test
                         ends (the last step of a script)
  starttls(ctx, server_hostname=None) / tls(...)
                         TLS on the connection now, as server (a server
                         peer) or client; input read but not consumed
                         before it is kept in .plaintext_before_tls
  half_tls(nbytes=None)  send the first bytes of a TLS ClientHello (half of
                         it by default), then stall

Every wait is bounded: expect, expect_closed and read_all give up after
`timeout` (default WAIT seconds, generous: these are safety nets, never
thresholds) and the script stops with an error that says what was expected
and what arrived.  A Conn exposes:
  .received     every byte read, in order
  .reads        the same, one entry per recv() (the batches the peer
                sent, as far as TCP kept them together)
  .sent         every byte written, in order
  .got          {name: bytes} from expect/read_all steps with a name
  .done         the script ran to its end (or to its stall)
  .error        None, or why it stopped
  .peer_closed  the other side closed (FIN or RST) while a step read
  .wait()       wait for the script and raise AssertionError if it failed
"""

import os
import re
import socket
import ssl
import struct
import threading
import time

SANITIZER = os.environ.get("SMTPTAP_SANITIZER") == "1"
WAIT = 30 * (3 if SANITIZER else 1)  # default bound of a reading step
GAP = 0.05  # between the segments of one send()
READ_SLICE = 0.1  # recv timeout, so that a stop request is seen


class _Step:
    def __init__(self, op, desc, **kw):
        self.op, self.desc, self.kw = op, desc, kw

    def __repr__(self):
        return self.desc


def _short(b, n=60):
    r = repr(b)
    return r if len(r) <= n else r[:n] + "..."


def send(*segments, gap=GAP):
    segs = [s.encode() if isinstance(s, str) else bytes(s) for s in segments]
    return _Step("send", "send(%s)" % ", ".join(_short(s) for s in segs), segments=segs, gap=gap)


def wait(seconds):
    return _Step("wait", "wait(%s)" % seconds, seconds=seconds)


def expect(pattern, name=None, timeout=None):
    if isinstance(pattern, str):
        pattern = pattern.encode("latin-1")
    return _Step("expect", "expect(%r)" % pattern, rx=re.compile(pattern), name=name, timeout=timeout)


def expect_closed(timeout=None):
    return _Step("read_all", "expect_closed()", name=None, timeout=timeout)


def read_all(name=None, timeout=None):
    return _Step("read_all", "read_all(%s)" % (name or ""), name=name, timeout=timeout)


def close():
    return _Step("close", "close()")


def reset():
    return _Step("reset", "reset()")


def stall():
    return _Step("stall", "stall()")


def starttls(ctx, server_hostname=None):
    return _Step("tls", "starttls()", ctx=ctx, server_hostname=server_hostname)


tls = starttls


def half_tls(nbytes=None):
    return _Step("half_tls", "half_tls(%s)" % (nbytes or ""), nbytes=nbytes)


def client_hello(server_hostname="localhost"):
    """The bytes of a real TLS ClientHello (from this Python's OpenSSL)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class StepFailed(Exception):
    pass


class Conn:
    """One connection's script.  Created by ScriptedServer/ScriptedClient."""

    def __init__(self, steps, role, label):
        self.steps = list(steps)
        self.role = role
        self.label = label
        self.received = b""
        self.reads = []
        self.sent = b""
        self.got = {}
        self.done = False
        self.error = None
        self.failed_step = None
        self.stalled = False
        self.peer_closed = False
        self.plaintext_before_tls = b""
        self.sock = None
        self._pending = b""  # read, not yet consumed by an expect
        self._stop = threading.Event()
        self._finished = threading.Event()
        self.thread = None

    # ---- running

    def start(self, sock):
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.thread = threading.Thread(target=self._run, name="scripted-" + self.label, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for i, st in enumerate(self.steps):
                self.failed_step = "step %d %s" % (i + 1, st.desc)
                if self._stop.is_set():
                    raise StepFailed("stopped by the test before this step")
                getattr(self, "_do_" + st.op)(**st.kw)
                if self.stalled and i + 1 < len(self.steps):
                    raise StepFailed("steps after stall() never run")
            self.failed_step = None
            self.done = True
        except StepFailed as e:
            self.error = str(e)
        except Exception as e:  # a bug in a script or in this file: report it the same way
            self.error = "%s: %s" % (type(e).__name__, e)
        finally:
            self._finished.set()
        if self.stalled:
            self._stop.wait()

    def _fill(self, deadline, what):
        """Read more input into _pending; False at EOF/RST.  StepFailed on
        timeout."""
        while True:
            if self._stop.is_set():
                raise StepFailed("stopped by the test while waiting for %s" % what)
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed("timed out waiting for %s; unconsumed input: %r" % (what, self._pending[-2000:]))
            self.sock.settimeout(min(READ_SLICE, left))
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            except ssl.SSLWantReadError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                self.peer_closed = True
                return False
            if not d:
                self.peer_closed = True
                return False
            self.received += d
            self.reads.append(d)
            self._pending += d
            return True

    def _do_send(self, segments, gap):
        for i, seg in enumerate(segments):
            if i > 0 and gap:
                self._sleep(gap)
            try:
                self.sock.settimeout(WAIT)
                self.sock.sendall(seg)
                self.sent += seg
            except OSError as e:
                raise StepFailed("send failed after %d of %d segments: %s" % (i, len(segments), e))

    def _do_wait(self, seconds):
        self._sleep(seconds)

    def _sleep(self, seconds):
        if self._stop.wait(seconds):
            raise StepFailed("stopped by the test during a pause")

    def _do_expect(self, rx, name, timeout):
        deadline = time.monotonic() + (timeout or WAIT)
        what = "%r (for %ss)" % (rx.pattern, timeout or WAIT)
        while True:
            m = rx.search(self._pending)
            if m:
                took, self._pending = self._pending[:m.end()], self._pending[m.end():]
                if name:
                    self.got[name] = took
                return
            if self.peer_closed or not self._fill(deadline, what):
                raise StepFailed("the peer closed the connection while waiting for %s; unconsumed input: %r"
                                 % (what, self._pending[-2000:]))

    def _do_read_all(self, name, timeout):
        deadline = time.monotonic() + (timeout or WAIT)
        while not self.peer_closed and self._fill(deadline, "the peer to close the connection"):
            pass
        if name:
            self.got[name] = self._pending
        self._pending = b""

    def _do_close(self):
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_WR)  # below TLS too: a plain FIN
        except OSError as e:
            raise StepFailed("shutdown failed: %s" % e)

    def _do_reset(self):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _do_stall(self):
        self.stalled = True

    def _do_tls(self, ctx, server_hostname):
        self.plaintext_before_tls += self._pending
        self._pending = b""
        self.sock.settimeout(WAIT)
        try:
            if self.role == "server":
                self.sock = ctx.wrap_socket(self.sock, server_side=True)
            else:
                self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        except (OSError, ssl.SSLError) as e:
            raise StepFailed("TLS handshake failed: %s" % e)

    def _do_half_tls(self, nbytes):
        hello = client_hello()
        self._do_send([hello[:nbytes or len(hello) // 2]], 0)
        self.stalled = True

    # ---- for the test

    def wait(self, timeout=None):
        """Wait for the script to finish (or stall); AssertionError if a step
        failed or it is still running after `timeout`."""
        t = timeout or WAIT * 2
        if not self._finished.wait(t):
            raise AssertionError("%s: script still running after %ss at %s; received so far: %r"
                                 % (self.label, t, self.failed_step, self.received[-2000:]))
        if self.error is not None:
            raise AssertionError("%s: %s failed: %s\nreceived: %r"
                                 % (self.label, self.failed_step, self.error, self.received[-2000:]))
        return self

    def finished(self):
        return self._finished.is_set()

    def stop(self):
        self._stop.set()
        if self.thread is not None:
            self.thread.join(5)
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass


class ScriptedServer:
    """Listens on 127.0.0.1:0; the n-th accepted connection runs the n-th
    script (server[n] is its Conn).  Connections beyond the scripts are
    closed at once and counted in .extra."""

    def __init__(self, *scripts, label="upstream", host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lsock = socket.socket(fam, socket.SOCK_STREAM)
        self.lsock.bind((host, 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.addr = ("[%s]:%d" if fam == socket.AF_INET6 else "%s:%d") % (host, self.port)
        self.conns = [Conn(s, "server", "%s#%d" % (label, i + 1)) for i, s in enumerate(scripts)]
        self.extra = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, name="scripted-" + label, daemon=True)
        self.thread.start()

    def __getitem__(self, i):
        return self.conns[i]

    def _accept_loop(self):
        n = 0
        self.lsock.settimeout(READ_SLICE)
        while not self._stop.is_set():
            try:
                c, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if n < len(self.conns):
                self.conns[n].start(c)
                n += 1
            else:
                self.extra += 1
                c.close()

    def wait(self, timeout=None):
        for c in self.conns:
            c.wait(timeout)
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        self.lsock.close()
        for c in self.conns:
            c.stop()


class ScriptedClient(Conn):
    """Connects to 127.0.0.1:port (or (host, port)) and runs its script."""

    def __init__(self, where, steps, label="client"):
        super().__init__(steps, "client", label)
        host, port = where if isinstance(where, tuple) else ("127.0.0.1", where)
        self.start(socket.create_connection((host, port), timeout=WAIT))


class Scripted:
    """The `scripted` fixture: makes peers and stops them all at teardown."""

    def __init__(self):
        self.peers = []

    def server(self, *scripts, label="upstream", host="127.0.0.1"):
        s = ScriptedServer(*scripts, label=label, host=host)
        self.peers.append(s)
        return s

    def client(self, where, steps, label="client"):
        c = ScriptedClient(where, steps, label=label)
        self.peers.append(c)
        return c

    def stop_all(self):
        for p in self.peers:
            p.stop()
