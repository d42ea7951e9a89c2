"""TLS interception end to end: STARTTLS and implicit TLS on both legs.

The peers (a run-time test PKI, aiosmtpd upstreams with STARTTLS and
implicit TLS, a private Postfix) are in tlspeers.py.  Every client here
trusts only smtptap's CA (from `smtptap ca show --json`), so a successful
handshake is itself the proof that the certificate was forged by smtptap;
where the client is Python, the certificate is also compared with the
upstream's (same subject, same subjectAltNames).  The upstreams trust
nothing but the test PKI: smtptap gets `--upstream-ca` for it.
"""

import os
import queue
import re
import ssl
import subprocess
import threading

import pytest

from conftest import (RECORD_TIMEOUT, RawClient, export_eml, run_cli, sample_message, show_json, fail_missing,
                      stuff_data, wait_sessions, wait_until)
from tlspeers import (AUTH_PASS, AUTH_USER, cert_cn, cert_names, client_context, issued_by, pem_certs,  # noqa: F401
                      pki, postfix_upstream, sha256_colon, smtplib_send, smtptap_ca, tls_upstream)

FROM = "alice@example.com"
TO = "bob@example.org"


# --------------------------------------------------------------------------
# helpers


class TlsProxy:
    """A running proxy plus the CA its clients must trust."""

    def __init__(self, proxy, ca_dir):
        self.p = proxy
        self.ca_dir = ca_dir
        self.cafile, self.fingerprint = smtptap_ca(ca_dir)
        self.ca_cert = pem_certs(self.cafile)[0]

    def __getattr__(self, name):
        return getattr(self.p, name)

    def ctx(self, **kw):
        """A client context that trusts only smtptap's CA."""
        return client_context(self.cafile, **kw)


@pytest.fixture
def tls_proxy(smtptap, tmp_path, pki):
    """Factory: tls_proxy(upstream=ADDR | sink=True, client_tls=..., upstream_tls=..., verify=None,
    upstream_ca=True, args=[...]).  Makes smtptap's CA first with `ca init`
    in a test --ca-dir, and by default trusts the test PKI upstream."""
    ca_dir = str(tmp_path / "smtptap-ca")
    state = {"init": False}

    def start(upstream=None, sink=False, client_tls=None, upstream_tls=None, verify=None, upstream_ca=True,
              args=(), listen=("127.0.0.1:0",), **kw):
        if not state["init"]:
            run_cli("ca", "init", "--ca-dir", ca_dir)
            state["init"] = True
        a = ["--ca-dir", ca_dir]
        if client_tls is not None:
            a += ["--client-tls", client_tls]
        if upstream_tls is not None:
            a += ["--upstream-tls", upstream_tls]
        if verify is not None:
            a += ["--upstream-verify", verify]
        if upstream_ca is True and not sink:
            a += ["--upstream-ca", pki.ca]
        elif upstream_ca:
            a += ["--upstream-ca", upstream_ca]
        p = smtptap(upstream=upstream, sink=sink, args=a + list(args), listen=listen, **kw)
        return TlsProxy(p, ca_dir)

    return start


def hexfp(s):
    return re.sub(r"[^0-9a-f]", "", (s or "").lower())


def check_forged(peer, proxy, upstream_cert=None, sni=None, ip=None):
    """The certificate a client was served: issued and signed by smtptap's
    CA; mirrors the upstream certificate's subject CN and subjectAltNames;
    covers the SNI / address the client asked for."""
    assert peer is not None, "the client saw no certificate"
    assert issued_by(peer, proxy.ca_cert), "served certificate %s is not issued by smtptap's CA %s" % (
        peer.issuer.rfc4514_string(), proxy.ca_cert.subject.rfc4514_string())
    dns, ips = cert_names(peer)
    if upstream_cert is not None:
        udns, uips = cert_names(upstream_cert)
        assert set(udns) <= set(dns) and set(uips) <= set(ips), (
            "forged SANs %r %r do not mirror the upstream's %r %r" % (dns, ips, udns, uips))
        assert cert_cn(peer.subject) == cert_cn(upstream_cert.subject), (peer.subject, upstream_cert.subject)
    if sni:
        assert sni in dns, "forged certificate does not name the SNI %r: %r" % (sni, dns)
    if ip:
        assert ip in ips, "forged certificate does not name the address %r: %r" % (ip, ips)


def session_doc(p, n=1):
    ss = wait_sessions(p.db, n)
    return ss, show_json(p.db, ss[n - 1]["id"])


def check_client_leg(leg, mode, sent=None, proxy=None, sni=None):
    """show --json session.client_tls for a TLS client leg."""
    assert leg is not None, "client_tls is null for a TLS client leg"
    assert set(leg) >= {"version", "cipher", "sni", "cert_subject", "cert_issuer", "cert_sha256", "verified",
                        "verify_error", "mode", "handshake_us", "forged"}, sorted(leg)
    assert leg["mode"] == mode, leg
    assert "smtptap" in leg["cert_issuer"], leg
    assert leg["forged"] is True, leg
    assert leg["verified"] is None, leg
    assert isinstance(leg["handshake_us"], int) and leg["handshake_us"] >= 0, leg
    if sni is not None:
        assert leg["sni"] == sni, leg
    if sent is not None:
        assert leg["version"] == sent.tls_version, (leg, sent.tls_version)
        assert leg["cipher"] == sent.cipher, (leg, sent.cipher)
        assert hexfp(leg["cert_sha256"]) == hexfp(sha256_colon(sent.peer_cert)), leg
        assert cert_cn(sent.peer_cert.subject)[0] in leg["cert_subject"], leg


def check_upstream_leg(leg, mode, up, pki_cert=None, verified=True):
    """show --json session.upstream_tls for a TLS upstream leg; `up` is the
    TlsUpstream (what it saw of the handshake)."""
    assert leg is not None, "upstream_tls is null for a TLS upstream leg"
    assert set(leg) >= {"version", "cipher", "sni", "cert_subject", "cert_issuer", "cert_sha256", "verified",
                        "verify_error", "mode", "handshake_us"}, sorted(leg)
    assert leg["mode"] == mode, leg
    assert leg["verified"] is verified, leg
    if verified:
        assert not leg["verify_error"], leg
    else:
        assert leg["verify_error"], leg
    assert isinstance(leg["handshake_us"], int) and leg["handshake_us"] >= 0, leg
    tls_conns = [c for c in up.connections() if c["tls"]]
    assert tls_conns, "the upstream saw no TLS connection"
    assert leg["version"] == tls_conns[-1]["tls"]["version"], (leg, tls_conns[-1])
    assert leg["cipher"] == tls_conns[-1]["tls"]["cipher"], (leg, tls_conns[-1])
    if pki_cert is not None:
        assert hexfp(leg["cert_sha256"]) == hexfp(sha256_colon(pki_cert)), leg
        assert cert_cn(pki_cert.subject)[0] in leg["cert_subject"], leg
        assert cert_cn(pki_cert.issuer)[0] in leg["cert_issuer"], leg


def tls_events(doc):
    return [e for e in doc["events"] if e["kind"] == "tls"]


def tls_event_leg(e):
    """Which leg a "tls" event is about: its side, or (for an event
    recorded as smtptap's own, side "proxy") the leg its text names first."""
    if e["side"] in ("client", "upstream"):
        return e["side"]
    text = (e.get("text") or "").lower()
    at = {l: text.find(l) for l in ("client", "upstream") if l in text}
    assert at, "cannot tell which leg this tls event is about: %r" % e
    return min(at, key=at.get)


def tls_upgrade_events(doc):
    """The "tls" events that record a completed handshake (they name the
    protocol version); other "tls" events note decisions such as an
    upstream leg staying plaintext."""
    return [e for e in tls_events(doc) if re.search(r"TLSv1\.[0-3]", e.get("text") or "")]


def upstream_got(up, msg):
    env = up.wait_envelopes(1)[-1]
    assert env["content"] == msg, "the upstream got different bytes than the client sent"
    assert env["mail_from"] == FROM and env["rcpt_tos"] == [TO], env
    return env


def run(argv, stdin=None, timeout=90, env=None):
    e = dict(os.environ)
    if env:
        e.update(env)
    p = subprocess.run(argv, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       stdin=None if stdin is not None else subprocess.DEVNULL, env=e)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def client_hello_bytes():
    """The first flight of a TLS client (a ClientHello), made in memory."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = outgoing.read()
    assert data[:1] == b"\x16", data[:10]
    return data


def raw_until_421(c, steps):
    """Send each step's command (None: just read the greeting) until a 421
    comes back; returns (code, text) of the 421, or fails."""
    for cmd in steps:
        try:
            code, lines, _ = c.reply() if cmd is None else c.cmd(cmd)
        except (EOFError, ConnectionResetError) as e:
            raise AssertionError("connection closed before a 421 (after %r): %s" % (cmd, e))
        if code == 421:
            return code, "\n".join(lines)
    raise AssertionError("no 421 after %r" % (steps,))


def serves_next_client(proxy, up, tag, client_tls="starttls"):
    """The proxy still relays a good client after a failed session."""
    msg = sample_message(tag)
    smtplib_send(proxy.host, proxy.port, client_tls, msg, ctx=proxy.ctx())
    wait_until(lambda: any(e["content"] == msg for e in up.envelopes), RECORD_TIMEOUT,
               what="the next client's message at the upstream")


# --------------------------------------------------------------------------
# the CA


def test_ca_init_and_show(tmp_path):
    """`ca init` makes ca.pem and a 0600 ca.key; `ca show --json` names
    them and gives the certificate's SHA-256; a second init keeps the CA."""
    d = str(tmp_path / "ca")
    run_cli("ca", "init", "--ca-dir", d)
    assert os.path.isfile(os.path.join(d, "ca.pem"))
    assert os.stat(os.path.join(d, "ca.key")).st_mode & 0o777 == 0o600
    doc = run_cli("ca", "show", "--ca-dir", d, "--json").json()
    assert os.path.samefile(doc["ca_dir"], d), doc
    assert os.path.samefile(doc["cert"], os.path.join(d, "ca.pem")), doc
    cert = pem_certs(doc["cert"])[0]
    assert hexfp(doc["fingerprint_sha256"]) == hexfp(sha256_colon(cert)), doc
    assert "smtptap" in cert.subject.rfc4514_string()
    text = run_cli("ca", "show", "--ca-dir", d).text
    assert doc["cert"] in text and doc["fingerprint_sha256"] in text, text
    run_cli("ca", "init", "--ca-dir", d)
    assert run_cli("ca", "show", "--ca-dir", d, "--json").json()["fingerprint_sha256"] == doc["fingerprint_sha256"]


def test_proxy_creates_ca_on_first_use(smtptap, tls_upstream, tmp_path, pki):
    """Without `ca init`, the proxy makes the CA itself (key 0600) and serves
    certificates from it."""
    up = tls_upstream("starttls")
    d = str(tmp_path / "fresh-ca")
    p = smtptap(upstream=up.addr, args=["--ca-dir", d, "--upstream-ca", pki.ca, "--client-tls", "starttls"])
    msg = sample_message("firstuse")
    cafile = None
    # the CA may be made at start or at the first handshake: ask after one
    # attempt if it is not there yet
    if not os.path.exists(os.path.join(d, "ca.pem")):
        try:
            smtplib_send(p.host, p.port, "starttls", b"Subject: probe\r\n\r\nx\r\n", ctx=client_context(None))
        except (ssl.SSLError, OSError):
            pass
    cafile, _ = smtptap_ca(d)
    assert os.stat(os.path.join(d, "ca.key")).st_mode & 0o777 == 0o600
    sent = smtplib_send(p.host, p.port, "starttls", msg, ctx=client_context(cafile))
    assert issued_by(sent.peer_cert, pem_certs(cafile)[0])
    assert any(e["content"] == msg for e in up.wait_envelopes(1))


# --------------------------------------------------------------------------
# the mode matrix (smtplib as the client)

# upstream-tls setting -> the aiosmtpd upstream it talks to, and the TLS mode
# the upstream leg must end up in
UPSTREAMS = {
    "off": ("starttls", None),        # offered STARTTLS, told not to use it
    "starttls": ("starttls", "starttls"),
    "implicit": ("implicit", "implicit"),
    "auto": ("starttls", "starttls"),
    "auto-plain": ("plain", None),    # auto against a server without STARTTLS
}


@pytest.mark.parametrize("upstream_tls", list(UPSTREAMS))
@pytest.mark.parametrize("client_tls", ["off", "starttls", "implicit"])
def test_mode_matrix(client_tls, upstream_tls, tls_proxy, tls_upstream, pki):
    """Every client-tls x upstream-tls pair relays the message byte for byte
    and records both legs (including 'legacy app in plaintext, smtptap
    implicit TLS to a 465 upstream' and 'implicit client, STARTTLS
    upstream')."""
    server_mode, leg_mode = UPSTREAMS[upstream_tls]
    up = tls_upstream(server_mode)
    p = tls_proxy(upstream=up.addr, client_tls=client_tls, upstream_tls=upstream_tls.split("-")[0])
    msg = sample_message("matrix-%s-%s" % (client_tls, upstream_tls))
    sent = smtplib_send(p.host, p.port, client_tls, msg, ctx=p.ctx())
    upstream_got(up, msg)

    # what the client saw
    assert "starttls" not in sent.ehlo_after, "STARTTLS offered again after TLS / with client-tls off"
    if client_tls == "starttls":
        assert "starttls" in sent.ehlo_before
    if client_tls != "off":
        # An implicit-TLS client's handshake waits until the upstream's
        # certificate is known (after the STARTTLS prelude), so it is
        # mirrored too.
        check_forged(sent.peer_cert, p, pki.leaf_cert() if leg_mode else None, sni="localhost")

    # what the upstream saw
    conns = up.connections()
    assert len(conns) == 1, conns
    assert conns[0]["mode"] == leg_mode, conns[0]
    if leg_mode == "starttls":
        before = [l for tls, l in conns[0]["commands"] if not tls]
        assert [l.split()[0].upper() for l in before] == [b"EHLO", b"STARTTLS"], before

    # what smtptap recorded
    ss, doc = session_doc(p)
    sess = doc["session"]
    assert sess["outcome"] == "quit", sess
    assert export_eml(p.db, ss[0]["id"]) == msg
    if client_tls == "off":
        assert sess["client_tls"] is None, sess["client_tls"]
    else:
        check_client_leg(sess["client_tls"], client_tls, sent, sni="localhost")
    if leg_mode is None:
        assert sess["upstream_tls"] is None, sess["upstream_tls"]
    else:
        check_upstream_leg(sess["upstream_tls"], leg_mode, up, pki.leaf_cert())
    ev = tls_upgrade_events(doc)
    assert sorted(tls_event_leg(e) for e in ev) == sorted((["client"] if client_tls != "off" else []) +
                                                          (["upstream"] if leg_mode else [])), ev
    if client_tls == "starttls" and leg_mode == "starttls":
        # the upstream leg is upgraded first, then the client's STARTTLS answered
        assert [tls_event_leg(e) for e in ev] == ["upstream", "client"], ev
    if client_tls == "implicit" and leg_mode == "implicit":
        # nothing in plaintext on either leg: the first recorded command is
        # already under TLS, after both handshakes
        first_cmd = min(e["seq"] for e in doc["events"] if e["kind"] == "command")
        assert all(e["seq"] < first_cmd for e in ev), ev


def test_default_client_tls_follows_upstream(tls_proxy, tls_upstream, pki):
    """Relay defaults: STARTTLS is offered to the client exactly when the
    upstream offers it; the upstream leg uses it when offered."""
    up = tls_upstream("starttls")
    p = tls_proxy(upstream=up.addr)
    msg = sample_message("default-tls")
    sent = smtplib_send(p.host, p.port, "starttls", msg, ctx=p.ctx())
    check_forged(sent.peer_cert, p, pki.leaf_cert(), sni="localhost")
    upstream_got(up, msg)
    _, doc = session_doc(p)
    check_client_leg(doc["session"]["client_tls"], "starttls", sent)
    check_upstream_leg(doc["session"]["upstream_tls"], "starttls", up, pki.leaf_cert())

    plain = tls_upstream("plain")
    p2 = tls_proxy(upstream=plain.addr)
    msg2 = sample_message("default-plain")
    sent2 = smtplib_send(p2.host, p2.port, "off", msg2)
    assert "starttls" not in sent2.ehlo_after, "STARTTLS offered although the upstream does not offer it"
    upstream_got(plain, msg2)
    _, doc2 = session_doc(p2)
    assert doc2["session"]["client_tls"] is None and doc2["session"]["upstream_tls"] is None


# --------------------------------------------------------------------------
# STARTTLS command injection (RFC 3207 section 5)


def test_plaintext_pipelined_after_starttls_is_dropped(tls_proxy, tls_upstream, pki):
    """`STARTTLS\\r\\nRSET\\r\\n` in one packet: the RSET is discarded and
    recorded as dropped; it never reaches the upstream; the session goes on
    under TLS."""
    up = tls_upstream("starttls")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="starttls")
    c = RawClient(p.host, p.port)
    try:
        assert c.reply()[0] == 220
        assert c.cmd("EHLO inject.example")[0] == 250
        c.send(b"STARTTLS\r\nRSET\r\n")
        code, lines, _ = c.reply()
        assert code == 220, lines
        assert c.buf == b"", "smtptap answered the injected plaintext: %r" % c.buf
        tls = p.ctx().wrap_socket(c.sock, server_hostname="localhost")
        tls.settimeout(30)
        f = tls.makefile("rwb")

        def cmd(line):
            f.write(line + b"\r\n")
            f.flush()
            out = []
            for _ in range(100):
                l = f.readline()
                assert l, "closed"
                out.append(l)
                if l[3:4] != b"-":
                    return out
            raise AssertionError("reply too long")

        ehlo = cmd(b"EHLO inject.example")
        # the first reply under TLS answers EHLO (a multi-line 250), not an
        # injected RSET
        assert len(ehlo) > 1 and ehlo[0].startswith(b"250-"), ehlo
        assert cmd(b"MAIL FROM:<%s>" % FROM.encode())[0].startswith(b"250")
        assert cmd(b"RCPT TO:<%s>" % TO.encode())[0].startswith(b"250")
        assert cmd(b"DATA")[0].startswith(b"354")
        msg = sample_message("inject")
        f.write(stuff_data(msg))
        f.flush()
        assert f.readline().startswith(b"250")
        assert cmd(b"QUIT")[0].startswith(b"221")
        tls.close()
    finally:
        c.close()
    upstream_got(up, msg)
    assert not [l for l in up.all_commands() if l.strip().upper() == b"RSET"], up.all_commands()
    _, doc = session_doc(p)
    rset = [e for e in doc["events"] if e["side"] == "client" and "RSET" in (e.get("text") or "").upper()]
    assert rset, "the discarded RSET is not recorded"
    assert all("dropped" in e["flags"] for e in rset), rset


# --------------------------------------------------------------------------
# upstream verification


@pytest.mark.parametrize("cert,reason", [("selfsigned", "self-signed"), ("expired", "expired")])
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_upstream_verify_failure_421(mode, cert, reason, tls_proxy, tls_upstream):
    """Verification on (the default): an upstream certificate that does not
    verify gets the client a 421 4.7.0 naming the reason; outcome
    upstream-tls-error; no mail reaches the upstream; the proxy goes on."""
    up = tls_upstream(mode, cert=cert)
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls=mode)
    c = RawClient(p.host, p.port)
    try:
        code, text = raw_until_421(c, [None, "EHLO verify.example", "STARTTLS"])
        assert text.startswith("4.7.0"), text
        assert reason in text.lower(), "421 does not say why: %r" % text
    finally:
        c.close()
    ss, doc = session_doc(p)
    assert ss[0]["outcome"] == "upstream-tls-error", ss[0]
    assert reason in (doc["session"]["detail"] or "").lower(), doc["session"]
    assert not up.envelopes
    assert p.running()


def test_upstream_name_mismatch_421(tls_proxy, tls_upstream):
    """A certificate from a trusted CA that names another host (nothing for
    127.0.0.1): verification fails on the name, 421 4.7.0, and the
    session says so."""
    up = tls_upstream("implicit", cert="wrongname")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="implicit")
    c = RawClient(p.host, p.port)
    try:
        code, text = raw_until_421(c, [None, "EHLO name.example", "STARTTLS"])
        assert text.startswith("4.7.0"), text
        assert "mismatch" in text.lower() or "name" in text.lower(), text
    finally:
        c.close()
    ss = wait_sessions(p.db, 1)
    assert ss[0]["outcome"] == "upstream-tls-error", ss[0]
    assert not up.envelopes


def test_client_sni_added_to_mirrored_certificate(tls_proxy, tls_upstream, pki):
    """A client asking (SNI) for a name the upstream certificate does not
    carry gets a certificate with the upstream's names plus that one."""
    up = tls_upstream("starttls")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="starttls")
    msg = sample_message("sni-added")
    sent = smtplib_send(p.host, p.port, "starttls", msg, ctx=p.ctx(), server_hostname="smtp.asked-for.test")
    check_forged(sent.peer_cert, p, pki.leaf_cert(), sni="smtp.asked-for.test")
    upstream_got(up, msg)
    _, doc = session_doc(p)
    check_client_leg(doc["session"]["client_tls"], "starttls", sent, sni="smtp.asked-for.test")


def test_upstream_unknown_ca_without_upstream_ca(tls_proxy, tls_upstream):
    """Without --upstream-ca the system store is used: the test PKI is not in
    it, so even a good chain is refused (421, upstream-tls-error)."""
    up = tls_upstream("implicit")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="implicit", upstream_ca=None)
    c = RawClient(p.host, p.port)
    try:
        code, text = raw_until_421(c, [None, "EHLO verify.example", "STARTTLS"])
        # the leaf comes with its chain, so OpenSSL names the untrusted root
        # ("self-signed certificate in certificate chain"); without the
        # chain it would say "unable to get local issuer certificate"
        assert text.startswith("4.7.0"), text
        assert "certificate chain" in text.lower() or "issuer" in text.lower(), text
    finally:
        c.close()
    ss = wait_sessions(p.db, 1)
    assert ss[0]["outcome"] == "upstream-tls-error", ss[0]


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_upstream_verify_off_relays_and_records(mode, tls_proxy, tls_upstream, pki):
    """--upstream-verify off: a self-signed upstream is relayed; the record
    says verified false and why."""
    up = tls_upstream(mode, cert="selfsigned")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls=mode, verify="off")
    msg = sample_message("verify-off-" + mode)
    sent = smtplib_send(p.host, p.port, "starttls", msg, ctx=p.ctx())
    upstream_got(up, msg)
    selfsigned = pem_certs(pki.selfsigned)[0]
    check_forged(sent.peer_cert, p, selfsigned, sni="localhost")
    _, doc = session_doc(p)
    leg = doc["session"]["upstream_tls"]
    check_upstream_leg(leg, mode, up, selfsigned, verified=False)
    assert "self-signed" in leg["verify_error"].lower(), leg
    assert doc["session"]["outcome"] == "quit"


def test_upstream_ca_and_sni(tls_proxy, tls_upstream, pki):
    """--upstream-ca trusting the test CA: verified true.  --upstream-sni:
    the upstream is sent that name and it is recorded; without it, an
    address-literal upstream is sent no SNI."""
    up = tls_upstream("implicit")
    p = tls_proxy(upstream=up.addr, client_tls="off", upstream_tls="implicit",
                  args=["--upstream-sni", "mail.example.test"])
    msg = sample_message("sni")
    smtplib_send(p.host, p.port, "off", msg)
    upstream_got(up, msg)
    assert "mail.example.test" in up.sni, up.sni
    _, doc = session_doc(p)
    leg = doc["session"]["upstream_tls"]
    check_upstream_leg(leg, "implicit", up, pki.leaf_cert(), verified=True)
    assert leg["sni"] == "mail.example.test", leg

    up2 = tls_upstream("implicit")
    p2 = tls_proxy(upstream=up2.addr, client_tls="off", upstream_tls="implicit")
    msg2 = sample_message("nosni")
    smtplib_send(p2.host, p2.port, "off", msg2)
    upstream_got(up2, msg2)
    # the aiosmtpd controller's own start-up probe sends no SNI either: only
    # what came after it counts
    assert up2.sni and all(n is None for n in up2.sni), up2.sni
    _, doc2 = session_doc(p2)
    assert not doc2["session"]["upstream_tls"]["sni"], doc2["session"]["upstream_tls"]
    assert doc2["session"]["upstream_tls"]["verified"] is True


# --------------------------------------------------------------------------
# client handshake failures


@pytest.mark.parametrize("client_tls", ["starttls", "implicit"])
def test_client_rejects_forged_certificate(client_tls, tls_proxy, tls_upstream):
    """A client that does not trust smtptap's CA (Python's default store):
    its handshake fails, the session ends as client-tls-error with a hint to
    `smtptap ca show`, no mail moves, and the next client is served."""
    up = tls_upstream("starttls")
    p = tls_proxy(upstream=up.addr, client_tls=client_tls, upstream_tls="starttls")
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib_send(p.host, p.port, client_tls, sample_message("untrusting"), ctx=client_context(None))
    ss = wait_sessions(p.db, 1)
    assert ss[0]["outcome"] == "client-tls-error", ss[0]
    doc = show_json(p.db, ss[0]["id"])
    assert "ca show" in (doc["session"]["detail"] or ""), doc["session"]
    assert not up.envelopes
    serves_next_client(p, up, "after-untrusting", client_tls)


def _garbage_after_starttls(c):
    assert c.reply()[0] == 220
    assert c.cmd("EHLO garbage.example")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    c.send(b"this is not a TLS record at all\r\n" * 4)


def _half_handshake_then_close(c):
    assert c.reply()[0] == 220
    assert c.cmd("EHLO half.example")[0] == 250
    assert c.cmd("STARTTLS")[0] == 220
    hello = client_hello_bytes()
    c.send(hello[:len(hello) // 2])


@pytest.mark.parametrize("fault", ["garbage", "half-handshake"])
def test_client_handshake_faults(fault, tls_proxy, tls_upstream):
    """Garbage instead of a ClientHello, or half a ClientHello and a close:
    that session ends with a recorded reason, the proxy serves others."""
    up = tls_upstream("starttls")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="starttls")
    c = RawClient(p.host, p.port)
    try:
        if fault == "garbage":
            _garbage_after_starttls(c)
            # smtptap gives up on this client (an alert, then close)
            assert c.closed_by_peer()
        else:
            _half_handshake_then_close(c)
    finally:
        c.close()
    ss = wait_sessions(p.db, 1)
    s = ss[0]
    if fault == "garbage":
        assert s["outcome"] == "client-tls-error", s
    else:
        assert s["outcome"] in ("client-tls-error", "client-closed"), s
    doc = show_json(p.db, s["id"])
    assert doc["session"]["detail"], doc["session"]
    assert not up.envelopes
    serves_next_client(p, up, "after-" + fault)


def test_client_protocol_too_old(tls_proxy, tls_upstream):
    """A client that speaks at most TLS 1.1: no handshake (OpenSSL 3's
    default security level), client-tls-error, the next client is served."""
    up = tls_upstream("starttls")
    p = tls_proxy(upstream=up.addr, client_tls="implicit", upstream_tls="starttls")
    ctx = p.ctx(max_version=ssl.TLSVersion.TLSv1_1, min_version=ssl.TLSVersion.TLSv1)
    with pytest.raises((ssl.SSLError, OSError)):
        smtplib_send(p.host, p.port, "implicit", sample_message("old-client"), ctx=ctx)
    ss = wait_sessions(p.db, 1)
    assert ss[0]["outcome"] == "client-tls-error", ss[0]
    assert show_json(p.db, ss[0]["id"])["session"]["detail"]
    serves_next_client(p, up, "after-old-client", "implicit")


def test_upstream_protocol_too_old(tls_proxy, tls_upstream):
    """An upstream that speaks at most TLS 1.1: the upstream handshake
    fails, the client gets 421 4.7.0, outcome upstream-tls-error."""
    up = tls_upstream("implicit", max_version=ssl.TLSVersion.TLSv1_1, min_version=ssl.TLSVersion.TLSv1)
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="implicit")
    c = RawClient(p.host, p.port)
    try:
        code, text = raw_until_421(c, [None, "EHLO old.example", "STARTTLS"])
        assert text.startswith("4.7.0"), text
    finally:
        c.close()
    ss = wait_sessions(p.db, 1)
    assert ss[0]["outcome"] == "upstream-tls-error", ss[0]
    assert ss[0].get("detail") or show_json(p.db, ss[0]["id"])["session"]["detail"]


# --------------------------------------------------------------------------
# listeners, key log, sink mode


def test_two_listeners_own_modes_and_upstreams(tls_proxy, tls_upstream, pki):
    """One process, two listeners: STARTTLS to upstream A, implicit TLS to
    upstream B (implicit); each message lands at its own upstream."""
    a = tls_upstream("starttls")
    b = tls_upstream("implicit")
    p = tls_proxy(listen=("127.0.0.1:0,client-tls=starttls,upstream=%s,upstream-tls=starttls" % a.addr,
                          "127.0.0.1:0,client-tls=implicit,upstream=%s,upstream-tls=implicit" % b.addr))
    assert len(p.addrs) == 2, p.addrs
    (h1, p1), (h2, p2) = p.addrs
    ma, mb = sample_message("listener-a"), sample_message("listener-b")
    sa = smtplib_send(h1, p1, "starttls", ma, ctx=p.ctx())
    sb = smtplib_send(h2, p2, "implicit", mb, ctx=p.ctx())
    check_forged(sa.peer_cert, p, pki.leaf_cert())
    check_forged(sb.peer_cert, p, pki.leaf_cert())
    assert [e["content"] for e in a.wait_envelopes(1)] == [ma]
    assert [e["content"] for e in b.wait_envelopes(1)] == [mb]
    ss = wait_sessions(p.db, 2)
    by_listener = {s["listener"]: show_json(p.db, s["id"])["session"] for s in ss}
    sa_doc = by_listener["127.0.0.1:%d" % p1]
    sb_doc = by_listener["127.0.0.1:%d" % p2]
    assert sa_doc["upstream"] == a.addr and sb_doc["upstream"] == b.addr
    check_client_leg(sa_doc["client_tls"], "starttls", sa)
    check_client_leg(sb_doc["client_tls"], "implicit", sb)
    check_upstream_leg(sa_doc["upstream_tls"], "starttls", a, pki.leaf_cert())
    check_upstream_leg(sb_doc["upstream_tls"], "implicit", b, pki.leaf_cert())


def _randoms(path):
    """{label: set(client_random hex)} from an NSS key log file."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and not line.startswith("#"):
                out.setdefault(parts[0], set()).add(parts[1].lower())
    return out


def test_keylog_has_both_legs(tls_proxy, tls_upstream, pki, tmp_path):
    """--keylog: NSS key log lines for the client leg and the upstream leg
    (the client_random of each handshake, as the peers themselves log it)."""
    uplog = str(tmp_path / "upstream.keylog")
    up = tls_upstream("starttls", keylog=uplog)
    keylog = str(tmp_path / "smtptap.keylog")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="starttls", args=["--keylog", keylog])
    clog = str(tmp_path / "client.keylog")
    ctx = p.ctx()
    ctx.keylog_filename = clog
    msg = sample_message("keylog")
    smtplib_send(p.host, p.port, "starttls", msg, ctx=ctx)
    upstream_got(up, msg)
    wait_sessions(p.db, 1)
    ours = _randoms(keylog)
    assert ours, "empty key log"
    assert set(ours) <= {"CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                         "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0", "EXPORTER_SECRET",
                         "CLIENT_EARLY_TRAFFIC_SECRET", "EARLY_EXPORTER_SECRET"}, ours
    all_ours = set().union(*ours.values())
    client_side = set().union(*_randoms(clog).values())
    upstream_side = set().union(*_randoms(uplog).values())
    assert client_side and client_side <= all_ours, "the client leg's handshake is not in the key log"
    assert upstream_side and upstream_side <= all_ours, "the upstream leg's handshake is not in the key log"
    assert len(all_ours) >= 2


def test_keylog_file_not_readable_by_others(tls_proxy, tls_upstream, tmp_path):
    """The key log decrypts every recorded session: like the database and
    the CA key, it is created without access for group and others."""
    up = tls_upstream("starttls")
    keylog = str(tmp_path / "private.keylog")
    p = tls_proxy(upstream=up.addr, client_tls="starttls", upstream_tls="starttls", args=["--keylog", keylog])
    smtplib_send(p.host, p.port, "starttls", sample_message("keylog-mode"), ctx=p.ctx())
    wait_sessions(p.db, 1)
    assert os.path.getsize(keylog) > 0
    assert os.stat(keylog).st_mode & 0o077 == 0, oct(os.stat(keylog).st_mode)


@pytest.mark.parametrize("client_tls", ["starttls", "implicit"])
@pytest.mark.parametrize("sni", ["localhost", None])
def test_sink_mode_tls(client_tls, sni, tls_proxy):
    """Sink mode with --client-tls: the certificate is forged from the SNI,
    or without one from the listener address; the message is captured."""
    p = tls_proxy(sink=True, client_tls=client_tls)
    msg = sample_message("sink-%s-%s" % (client_tls, sni))
    # no SNI: Python sends none for an address literal and checks the IP SAN
    sent = smtplib_send(p.host, p.port, client_tls, msg, ctx=p.ctx(), server_hostname=sni or "127.0.0.1")
    if sni:
        check_forged(sent.peer_cert, p, sni=sni)
    else:
        check_forged(sent.peer_cert, p, ip="127.0.0.1")
    ss, doc = session_doc(p)
    assert export_eml(p.db, ss[0]["id"]) == msg
    check_client_leg(doc["session"]["client_tls"], client_tls, sent, sni=sni if sni else None)
    assert doc["session"]["upstream_tls"] is None
    assert doc["session"]["mode"] == "sink"


def test_sink_mode_default_no_starttls(tls_proxy):
    """Sink mode without --client-tls offers no STARTTLS (and refuses it)."""
    p = tls_proxy(sink=True)
    c = RawClient(p.host, p.port)
    try:
        assert c.reply()[0] == 220
        code, lines, _ = c.cmd("EHLO nostarttls.example")
        assert code == 250 and not any(l.upper().startswith("STARTTLS") for l in lines), lines
        assert c.cmd("STARTTLS")[0] == 454
        assert c.cmd("QUIT")[0] == 221
    finally:
        c.close()


# --------------------------------------------------------------------------
# real clients
#
# Each client function sends one message to localhost:PORT in `mode`
# ("starttls" or "implicit"), verifying the server against `cafile` only,
# and returns (rc, output, expected upstream bytes or None when the client
# composes its own message).  test_real_client_direct runs each one straight
# against the TLS upstream trusting the test PKI (so a failure through
# smtptap is smtptap's); test_real_client runs it through smtptap.


def _msgfile(tmp_path, tag):
    msg = sample_message(tag)
    path = str(tmp_path / ("%s.eml" % tag))
    with open(path, "wb") as f:
        f.write(msg)
    return msg, path


def client_swaks(port, mode, cafile, tmp_path):
    msg, path = _msgfile(tmp_path, "swaks-" + mode)
    argv = ["swaks", "--server", "localhost:%d" % port, "--from", FROM, "--to", TO, "--data", "@" + path,
            "--timeout", "30", "--helo", "swaks.example", "--tls-verify", "--tls-ca-path", cafile,
            "--tls-sni", "localhost"]
    argv.append("--tls" if mode == "starttls" else "--tls-on-connect")
    rc, out, err = run(argv)
    # swaks ends DATA with CRLF . CRLF after the file's own last line ending
    return rc, out + err, msg + b"\r\n"


def client_openssl(port, mode, cafile, tmp_path):
    """openssl s_client, driven one command at a time (it would otherwise
    send all of stdin at once, pipelining DATA content before the 354)."""
    msg = sample_message("s_client-" + mode)
    argv = ["openssl", "s_client", "-connect", "localhost:%d" % port, "-CAfile", cafile, "-verify_return_error",
            "-verify_hostname", "localhost", "-servername", "localhost", "-crlf", "-quiet"]
    if mode == "starttls":
        argv += ["-starttls", "smtp"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = queue.Queue()

    def reader():
        for l in iter(proc.stdout.readline, b""):
            lines.put(l)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    transcript = []

    def reply(multiline=False):
        """Lines up to a final reply line; returns its code (0: closed).
        multiline: skip final lines until one that ends a multi-line reply
        (after -starttls, s_client prints the last line of its own EHLO
        reply once TLS is up)."""
        cont = False
        for _ in range(1000):
            l = lines.get(timeout=30)
            if l is None:
                return 0
            s = l.decode("utf-8", "replace").rstrip("\r\n")
            transcript.append(s)
            if re.match(r"^\d{3}-", s):
                cont = True
            elif re.match(r"^\d{3} ", s) and (cont or not multiline):
                return int(s[:3])
        return 0

    def cmd(line, multiline=False):
        proc.stdin.write(line + b"\n")
        proc.stdin.flush()
        return reply(multiline)

    try:
        ok = True
        if mode == "implicit":
            ok = reply() == 220
        # (with -starttls, s_client read the greeting and did EHLO and
        # STARTTLS itself before the handshake)
        ok = ok and cmd(b"EHLO sclient.example", multiline=True) == 250
        ok = ok and cmd(b"MAIL FROM:<%s>" % FROM.encode()) == 250
        ok = ok and cmd(b"RCPT TO:<%s>" % TO.encode()) == 250
        ok = ok and cmd(b"DATA") == 354
        # -crlf makes each LF a CRLF on the wire
        ok = ok and cmd(stuff_data(msg).replace(b"\r\n", b"\n")[:-1]) == 250
        ok = ok and cmd(b"QUIT") == 221
    except queue.Empty:
        ok = False
        transcript.append("(no reply within 30 s)")
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    return (0 if ok else 1), "\n".join(transcript), msg


def client_curl(port, mode, cafile, tmp_path):
    msg, path = _msgfile(tmp_path, "curl-" + mode)
    url = ("smtp://localhost:%d/curl.example" if mode == "starttls" else "smtps://localhost:%d/curl.example") % port
    argv = ["curl", "-sS", "-v", "--max-time", "60", url, "--resolve", "localhost:%d:127.0.0.1" % port,
            "--cacert", cafile, "--mail-from", FROM, "--mail-rcpt", TO, "--upload-file", path]
    if mode == "starttls":
        argv.append("--ssl-reqd")
    rc, out, err = run(argv)
    return rc, out + err, msg


def client_msmtp(port, mode, cafile, tmp_path):
    msg = sample_message("msmtp-" + mode)
    rc, out, err = run(["msmtp", "--debug", "--host=localhost", "--port=%d" % port, "--from=%s" % FROM,
                        "--auth=off", "--tls=on", "--tls-starttls=%s" % ("on" if mode == "starttls" else "off"),
                        "--tls-trust-file=%s" % cafile, "--domain=msmtp.example", "--timeout=30", "--", TO],
                       stdin=msg)
    return rc, out + err, msg


PHPMAILER_TLS = r"""<?php
// PHPMailer with TLS and AUTH, as WordPress's SMTP plugins use it.
// usage: php phpmailer_tls.php PORT starttls|implicit FROM TO CAFILE USER PASS
require '/usr/share/php/libphp-phpmailer/autoload.php';
use PHPMailer\PHPMailer\PHPMailer;
use PHPMailer\PHPMailer\SMTP;
[$self, $port, $how, $from, $to, $cafile, $user, $pass] = $argv;
$mail = new PHPMailer(true);
$mail->isSMTP();
$mail->Host = 'localhost';
$mail->Port = (int)$port;
$mail->SMTPSecure = $how === 'implicit' ? PHPMailer::ENCRYPTION_SMTPS : PHPMailer::ENCRYPTION_STARTTLS;
$mail->SMTPOptions = ['ssl' => ['cafile' => $cafile, 'verify_peer' => true, 'verify_peer_name' => true,
                                'peer_name' => 'localhost', 'allow_self_signed' => false]];
$mail->SMTPAuth = true;
$mail->Username = $user;
$mail->Password = $pass;
$mail->Timeout = 30;
$mail->CharSet = 'UTF-8';
$mail->SMTPDebug = SMTP::DEBUG_SERVER;
$mail->Debugoutput = function ($str, $level) { echo $str; };
$mail->setFrom($from, 'PHPMailer TLS');
$mail->addAddress($to);
$mail->Subject = 'PHPMailer over TLS';
$mail->Body = "Hello from PHPMailer over TLS.\n";
try {
    $mail->send();
    echo "RESULT: sent\n";
    exit(0);
} catch (Exception $e) {
    echo "RESULT: failed: ", $mail->ErrorInfo, "\n";
    exit(1);
}
"""


def client_phpmailer(port, mode, cafile, tmp_path):
    """PHPMailer (the WordPress path): TLS verified against cafile, then
    AUTH LOGIN/PLAIN with AUTH_USER/AUTH_PASS."""
    script = tmp_path / "phpmailer_tls.php"
    script.write_text(PHPMAILER_TLS)
    rc, out, err = run(["php", str(script), str(port), mode, FROM, TO, cafile, AUTH_USER, AUTH_PASS])
    return rc, out + err, None


NODEMAILER_TLS = r"""'use strict';
// Nodemailer with TLS: node nodemailer_tls.js PORT implicit|starttls FROM TO CAFILE
const fs = require('fs');
const nodemailer = require('/usr/share/nodejs/nodemailer');
const [port, how, from, to, cafile] = process.argv.slice(2);
const transport = nodemailer.createTransport({
    host: 'localhost', port: Number(port), secure: how === 'implicit', requireTLS: how === 'starttls',
    tls: { ca: [fs.readFileSync(cafile)], rejectUnauthorized: true, servername: 'localhost' },
    connectionTimeout: 30000, greetingTimeout: 30000, socketTimeout: 30000, name: 'nodemailer.test',
});
transport.sendMail({ from, to, subject: 'Nodemailer over TLS', text: 'Hello from Nodemailer over TLS.\n' })
    .then(info => { console.log('RESULT: sent ' + info.response); transport.close(); process.exit(0); },
          err => { console.log('RESULT: failed ' + err.message); transport.close(); process.exit(1); });
"""


def client_nodemailer(port, mode, cafile, tmp_path):
    """Nodemailer: port-465 style (secure: true) or port-587 style
    (requireTLS), trusting cafile through the ca option."""
    script = tmp_path / "nodemailer_tls.js"
    script.write_text(NODEMAILER_TLS)
    rc, out, err = run(["node", str(script), str(port), mode, FROM, TO, cafile])
    return rc, out + err, None


def client_smtplib(port, mode, cafile, tmp_path):
    msg = sample_message("smtplib-" + mode)
    smtplib_send("127.0.0.1", port, mode, msg, ctx=client_context(cafile), server_hostname="localhost")
    return 0, "", msg


REAL_CLIENTS = {
    "swaks": (client_swaks, "swaks", None),
    "openssl": (client_openssl, "openssl", None),
    "curl": (client_curl, "curl", None),
    "msmtp": (client_msmtp, "msmtp", None),
    "phpmailer": (client_phpmailer, "php", "/usr/share/php/libphp-phpmailer/autoload.php"),
    "nodemailer": (client_nodemailer, "node", "/usr/share/nodejs/nodemailer"),
    "smtplib": (client_smtplib, None, None),
}


def _need_client(name, tools_required):
    fn, tool, path = REAL_CLIENTS[name]
    if tool:
        tools_required(tool)
    if path and not os.path.exists(path):
        fail_missing("%s is not installed (%s; tools/install-deps.sh installs it)" % (name, path))
    return fn


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("client", list(REAL_CLIENTS))
def test_real_client_direct(client, mode, tls_upstream, pki, tmp_path, tools_required):
    """Baseline without smtptap: the client and the TLS upstream work
    together when the client trusts the test PKI."""
    fn = _need_client(client, tools_required)
    up = tls_upstream(mode, auth=(client == "phpmailer"))
    rc, out, expect = fn(up.port, mode, pki.ca, tmp_path)
    assert rc == 0, "%s (%s) failed directly against the TLS upstream:\n%s" % (client, mode, out)
    env = up.wait_envelopes(1)[-1]
    if expect is not None:
        assert env["content"] == expect
    assert up.connections()[-1]["mode"] == mode


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
@pytest.mark.parametrize("client", list(REAL_CLIENTS))
def test_real_client(client, mode, tls_proxy, tls_upstream, pki, tmp_path, tools_required):
    """Each real client through smtptap, trusting only smtptap's CA: the
    handshake verifies (certificate forged by smtptap's CA for localhost),
    the upstream gets exactly the client's bytes, both legs are recorded.
    The upstream leg is STARTTLS for a STARTTLS client and implicit for an
    implicit one; PHPMailer also authenticates through the TLS tunnel."""
    fn = _need_client(client, tools_required)
    up = tls_upstream(mode, auth=(client == "phpmailer"))
    p = tls_proxy(upstream=up.addr, client_tls=mode, upstream_tls=mode)
    rc, out, expect = fn(p.port, mode, p.cafile, tmp_path)
    assert rc == 0, "%s (%s) failed through smtptap:\n%s\nproxy stderr:\n%s" % (client, mode, out, p.stderr())
    env = up.wait_envelopes(1)[-1]
    ss, doc = session_doc(p)
    eml = export_eml(p.db, ss[0]["id"])
    assert env["content"] == eml, "the upstream got other bytes than smtptap recorded"
    if expect is not None:
        assert eml == expect, "the upstream got other bytes than the client sent"
    else:
        assert b"over TLS." in eml
    assert env["mail_from"] == FROM and env["rcpt_tos"] == [TO], env
    sess = doc["session"]
    check_client_leg(sess["client_tls"], mode, sni="localhost")
    # the certificate the client accepted mirrors the upstream's subject
    assert cert_cn(pki.leaf_cert().subject)[0] in sess["client_tls"]["cert_subject"], sess["client_tls"]
    check_upstream_leg(sess["upstream_tls"], mode, up, pki.leaf_cert())
    assert up.connections()[-1]["mode"] == mode
    if client == "phpmailer":
        assert up.auth_seen and up.auth_seen[-1][1:] == (AUTH_USER.encode(), AUTH_PASS.encode()), up.auth_seen
        assert [e for e in doc["events"] if e["kind"] == "auth"], "AUTH under TLS is not recorded"


def test_phpmailer_default_relay_settings(tls_proxy, tls_upstream, pki, tmp_path, tools_required):
    """The WordPress case with smtptap unconfigured (client-tls and
    upstream-tls at their defaults): PHPMailer's STARTTLS + AUTH works when
    it trusts smtptap's CA."""
    fn = _need_client("phpmailer", tools_required)
    up = tls_upstream("starttls", auth=True)
    p = tls_proxy(upstream=up.addr)
    rc, out, _ = fn(p.port, "starttls", p.cafile, tmp_path)
    assert rc == 0, "PHPMailer failed through smtptap:\n%s\nproxy stderr:\n%s" % (out, p.stderr())
    assert up.auth_seen[-1][1:] == (AUTH_USER.encode(), AUTH_PASS.encode())
    _, doc = session_doc(p)
    check_client_leg(doc["session"]["client_tls"], "starttls")
    check_upstream_leg(doc["session"]["upstream_tls"], "starttls", up, pki.leaf_cert())


# --------------------------------------------------------------------------
# a real Postfix upstream


def _postfix_body(delivered):
    """A delivered message without the Received: header Postfix put on top
    (pipe(8) hands it over with LF line ends)."""
    lines = delivered.split(b"\n")
    assert lines[0].startswith(b"Received: "), delivered[:200]
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_postfix_direct(mode, postfix_upstream, pki):
    """Baseline without smtptap: the private Postfix takes STARTTLS and
    implicit TLS with the test PKI and delivers the message as sent."""
    pf = postfix_upstream
    port = pf.port if mode == "starttls" else pf.implicit_port
    msg = sample_message("postfix-direct-" + mode)
    smtplib_send("127.0.0.1", port, mode, msg, ctx=client_context(pki.ca))
    got = pf.wait_delivered(1)
    assert _postfix_body(got[0]) == msg.replace(b"\r\n", b"\n")
    assert b"with ESMTPS" in got[0]


@pytest.mark.parametrize("client_tls,upstream_tls", [("starttls", "starttls"), ("implicit", "implicit"),
                                                     ("off", "implicit"), ("implicit", "starttls")])
def test_postfix_upstream(client_tls, upstream_tls, tls_proxy, postfix_upstream, pki):
    """A real Postfix behind smtptap: STARTTLS on its smtpd port, implicit TLS
    on its wrapper-mode port; the delivered message is the client's."""
    pf = postfix_upstream
    addr = pf.addr if upstream_tls == "starttls" else pf.implicit_addr
    p = tls_proxy(upstream=addr, client_tls=client_tls, upstream_tls=upstream_tls)
    msg = sample_message("postfix-%s-%s" % (client_tls, upstream_tls))
    sent = smtplib_send(p.host, p.port, client_tls, msg, ctx=p.ctx())
    if client_tls != "off":
        check_forged(sent.peer_cert, p, pki.leaf_cert(), sni="localhost")
    got = pf.wait_delivered(1)
    assert _postfix_body(got[0]) == msg.replace(b"\r\n", b"\n"), "Postfix delivered other bytes"
    assert b"with ESMTPS" in got[0], got[0][:300]  # Postfix saw TLS on its side
    ss, doc = session_doc(p)
    sess = doc["session"]
    assert sess["outcome"] == "quit", sess
    leg = sess["upstream_tls"]
    assert leg and leg["mode"] == upstream_tls and leg["verified"] is True, leg
    assert hexfp(leg["cert_sha256"]) == hexfp(sha256_colon(pki.leaf_cert())), leg
    if client_tls != "off":
        check_client_leg(sess["client_tls"], client_tls, sent)
    else:
        assert sess["client_tls"] is None
