"""TLS peers and fixtures for smtptap's end-to-end TLS tests (test_tls.py).

- TestPKI: a throw-away PKI made at run time with python3-cryptography: a
  test "public" CA, an upstream leaf signed by it (SAN DNS:localhost,
  IP:127.0.0.1, DNS:mail.example.test), a self-signed leaf, an expired leaf.
- TlsUpstream: aiosmtpd offering STARTTLS, implicit TLS (port-465 style) or
  plaintext, recording each message's exact bytes, every command line it read
  (and whether it came under TLS), and the TLS facts of each connection
  (version, cipher, SNI).
- PostfixUpstream: a real Postfix (master + smtpd) under a temporary
  directory on 127.0.0.1, STARTTLS on one port and implicit TLS
  (smtpd_tls_wrappermode) on another, delivering to a file we read back.
- Client helpers: smtplib over STARTTLS or implicit TLS returning the
  certificate it was served; reading smtptap's CA with `smtptap ca show`.

Nothing here listens anywhere but 127.0.0.1; every process is ended by PID.
"""

import datetime
import ipaddress
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings

import pytest

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aiosmtpd.smtp import SMTP as AioSMTP, AuthResult, LoginPassword

from conftest import (RECORD_TIMEOUT, STOP_TIMEOUT, RecordingHandler, _BoundController, run_cli, fail_missing,
                      wait_until)

UPSTREAM_NAMES = ("localhost", "mail.example.test")
UPSTREAM_IPS = ("127.0.0.1",)
AUTH_USER, AUTH_PASS = "wp-user", "s3cret-Pa55"


# --------------------------------------------------------------------------
# the test PKI


def _name(cn, org="smtptap e2e test PKI"):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names, ips):
    return x509.SubjectAlternativeName([x509.DNSName(n) for n in names] +
                                       [x509.IPAddress(ipaddress.ip_address(i)) for i in ips])


class TestPKI:
    """Files under `dir`: ca.pem (the test public CA), leaf.pem/leaf.key
    (signed by it; leaf-chain.pem = leaf + CA), selfsigned.pem/.key,
    expired.pem/.key (signed by the CA, validity over), wrongname.pem/.key
    (signed by the CA, valid, for other.example.test only)."""

    __test__ = False  # not a pytest test class

    def __init__(self, dir):
        self.dir = str(dir)
        os.makedirs(self.dir, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = (x509.CertificateBuilder()
                        .subject_name(_name("smtptap e2e Public Test CA"))
                        .issuer_name(_name("smtptap e2e Public Test CA"))
                        .public_key(self.ca_key.public_key())
                        .serial_number(x509.random_serial_number())
                        .not_valid_before(now - datetime.timedelta(days=1))
                        .not_valid_after(now + datetime.timedelta(days=30))
                        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                     content_commitment=False, key_encipherment=False,
                                                     data_encipherment=False, key_agreement=False,
                                                     encipher_only=False, decipher_only=False), critical=True)
                        .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()),
                                       critical=False)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca = self._write("ca", self.ca_cert, self.ca_key)
        self.leaf, self.leaf_key = self._leaf("leaf", "mail.example.test", now - datetime.timedelta(days=1),
                                              now + datetime.timedelta(days=30))
        self.expired, self.expired_key = self._leaf("expired", "expired.example.test",
                                                    now - datetime.timedelta(days=30),
                                                    now - datetime.timedelta(days=2))
        self.selfsigned, self.selfsigned_key = self._leaf("selfsigned", "selfsigned.example.test",
                                                          now - datetime.timedelta(days=1),
                                                          now + datetime.timedelta(days=30), selfsigned=True)
        # signed by the CA, valid, but for another name and no address
        self.wrongname, self.wrongname_key = self._leaf("wrongname", "other.example.test",
                                                        now - datetime.timedelta(days=1),
                                                        now + datetime.timedelta(days=30),
                                                        names=("other.example.test",), ips=())
        with open(os.path.join(self.dir, "leaf-chain.pem"), "wb") as f:
            f.write(open(self.leaf, "rb").read() + open(self.ca, "rb").read())
        self.leaf_chain = os.path.join(self.dir, "leaf-chain.pem")

    def _write(self, stem, cert, key):
        cpath = os.path.join(self.dir, stem + ".pem")
        kpath = os.path.join(self.dir, stem + ".key")
        with open(cpath, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(kpath, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        os.chmod(kpath, 0o600)
        return cpath

    def _leaf(self, stem, cn, nbf, naf, selfsigned=False, names=UPSTREAM_NAMES, ips=UPSTREAM_IPS):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(cn, "smtptap e2e mail server")
        b = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(subject if selfsigned else self.ca_cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(nbf)
             .not_valid_after(naf)
             .add_extension(_san(names, ips), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        cert = b.sign(key if selfsigned else self.ca_key, hashes.SHA256())
        cpath = self._write(stem, cert, key)
        return cpath, os.path.join(self.dir, stem + ".key")

    def cert_key(self, kind):
        """(certfile, keyfile) for kind 'leaf' (served with its chain),
        'selfsigned', 'expired' or 'wrongname'."""
        if kind == "leaf":
            return self.leaf_chain, self.leaf_key
        if kind == "selfsigned":
            return self.selfsigned, self.selfsigned_key
        if kind == "expired":
            return self.expired, self.expired_key
        if kind == "wrongname":
            return self.wrongname, self.wrongname_key
        raise ValueError(kind)

    def server_context(self, kind="leaf", min_version=None, max_version=None, sni_log=None, keylog=None):
        """A server SSLContext for an upstream.  sni_log: a list that gets
        each SNI the server is sent (None appended when there is none)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*self.cert_key(kind))
        if min_version is not None or max_version is not None:
            # old protocol versions need the lowest security level
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            # TLS 1.0/1.1 are deprecated: that is the point of these peers
            warnings.simplefilter("ignore", DeprecationWarning)
            if min_version is not None:
                ctx.minimum_version = min_version
            if max_version is not None:
                ctx.maximum_version = max_version
        if keylog is not None:
            ctx.keylog_filename = keylog
        if sni_log is not None:
            def cb(sslobj, name, context):
                sni_log.append(name)
            ctx.sni_callback = cb
        return ctx

    def leaf_cert(self):
        with open(self.leaf, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())


def cert_names(cert):
    """(sorted DNS names, sorted IP strings) of a cryptography certificate."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return (sorted(san.get_values_for_type(x509.DNSName)),
            sorted(str(i) for i in san.get_values_for_type(x509.IPAddress)))


def cert_cn(name):
    return [a.value for a in name.get_attributes_for_oid(NameOID.COMMON_NAME)]


def der_cert(der):
    return x509.load_der_x509_certificate(der)


def pem_certs(path):
    with open(path, "rb") as f:
        data = f.read()
    out = []
    marker = b"-----END CERTIFICATE-----"
    for part in data.split(marker)[:-1]:
        out.append(x509.load_pem_x509_certificate(part.strip() + b"\n" + marker + b"\n"))
    return out


def sha256_colon(cert):
    return ":".join("%02X" % b for b in cert.fingerprint(hashes.SHA256()))


def issued_by(cert, ca_cert):
    """True if ca_cert's key signed cert (and the names chain)."""
    if cert.issuer != ca_cert.subject:
        return False
    key = ca_cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        else:
            key.verify(cert.signature, cert.tbs_certificate_bytes)  # Ed25519 / Ed448
        return True
    except InvalidSignature:
        return False


# --------------------------------------------------------------------------
# upstream: aiosmtpd with TLS, recording commands and TLS facts


def _ssl_facts(sslobj):
    if sslobj is None:
        return None
    c = sslobj.cipher()
    return {"version": sslobj.version(), "cipher": c[0] if c else None}


class _RecSMTP(AioSMTP):
    """aiosmtpd that records every command line it reads, per connection,
    with whether TLS was on, and the connection's TLS facts."""

    line_length_limit = 1024 * 1024

    def __init__(self, handler, upstream, **kw):
        super().__init__(handler, **kw)
        self._up = upstream
        self._rec = None

    def connection_made(self, transport):
        first = self._rec is None
        super().connection_made(transport)
        sslobj = transport.get_extra_info("ssl_object")
        if first:
            self._rec = {"commands": [], "tls": _ssl_facts(sslobj), "mode": "implicit" if sslobj else None,
                         "peer": transport.get_extra_info("peername")}
            with self._up.lock:
                self._up.conns.append(self._rec)
            reader = self._reader
            orig = reader.readuntil
            rec = self._rec
            me = self

            async def readuntil(separator=b"\n"):
                line = await orig(separator)
                rec["commands"].append((me._rec["tls"] is not None, bytes(line)))
                return line

            reader.readuntil = readuntil
        else:
            # the STARTTLS upgrade completed: same connection, now under TLS
            self._rec["tls"] = _ssl_facts(sslobj)
            self._rec["mode"] = "starttls"


class _RecController(_BoundController):
    def __init__(self, handler, upstream, **kw):
        self._up = upstream
        super().__init__(handler, **kw)

    def factory(self):
        return _RecSMTP(self.handler, self._up, **self.SMTP_kwargs)

    def _trigger_server(self):
        # aiosmtpd's probe would do a TLS handshake with default client
        # settings, which fails for the deliberately old-protocol upstreams;
        # a bare connect is enough to create the first protocol instance.
        with socket.create_connection((self.hostname, self.port), 2.0) as s:
            if not self.ssl_context:
                s.settimeout(5)
                s.recv(1024)


class TlsUpstream:
    """aiosmtpd upstream.  mode: 'starttls' (offers STARTTLS), 'implicit'
    (TLS from the first byte), 'plain' (no TLS at all).  cert: which PKI
    certificate it serves.  auth: AUTH PLAIN/LOGIN accepting AUTH_PASS.
    keylog: the upstream's own NSS key log file."""

    def __init__(self, pki, mode="starttls", cert="leaf", auth=False, min_version=None, max_version=None,
                 ident=None, reject=(), keylog=None):
        self.mode = mode
        self.lock = threading.Lock()
        self.conns = []
        self.sni = []
        self.auth_seen = []
        self.handler = RecordingHandler(reject)
        kw = dict(enable_SMTPUTF8=True, data_size_limit=0)
        if ident:
            kw["ident"] = ident
        if auth:
            kw.update(auth_require_tls=False, authenticator=self._authenticator)
        ssl_context = None
        if mode != "plain":
            ctx = pki.server_context(cert, min_version=min_version, max_version=max_version, sni_log=self.sni,
                                     keylog=keylog)
            if mode == "starttls":
                kw.update(tls_context=ctx, require_starttls=False)
            elif mode == "implicit":
                ssl_context = ctx
            else:
                raise ValueError(mode)
        self.controller = _RecController(self.handler, self, ssl_context=ssl_context, **kw)
        self.controller.start()
        self.host, self.port = "127.0.0.1", self.controller.port
        self.addr = "127.0.0.1:%d" % self.port

    def _authenticator(self, server, session, envelope, mechanism, auth_data):
        if isinstance(auth_data, LoginPassword):
            self.auth_seen.append((mechanism, auth_data.login, auth_data.password))
            ok = auth_data.password == AUTH_PASS.encode()
            return AuthResult(success=ok, handled=False)
        return AuthResult(success=False, handled=False)

    @property
    def envelopes(self):
        with self.handler.lock:
            return list(self.handler.envelopes)

    def wait_envelopes(self, n, timeout=RECORD_TIMEOUT):
        return wait_until(lambda: self.envelopes if len(self.envelopes) >= n else None, timeout,
                          what="%d messages at the TLS upstream" % n)

    def connections(self):
        """Connections that sent at least one command (the controller's
        start-up probe and bare connects are left out)."""
        with self.lock:
            return [dict(c, commands=list(c["commands"])) for c in self.conns if c["commands"]]

    def all_commands(self):
        return [line for c in self.connections() for _, line in c["commands"]]

    def stop(self):
        try:
            self.controller.stop()
        except Exception:
            pass


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_upstream(pki):
    """Factory: tls_upstream(mode='starttls'|'implicit'|'plain', cert=...)."""
    servers = []

    def make(mode="starttls", **kw):
        s = TlsUpstream(pki, mode, **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


# --------------------------------------------------------------------------
# smtptap's CA


def smtptap_ca(ca_dir):
    """(cert path, fingerprint) from `smtptap ca show --ca-dir DIR --json`."""
    doc = run_cli("ca", "show", "--ca-dir", ca_dir, "--json").json()
    assert set(doc) >= {"ca_dir", "cert", "fingerprint_sha256"}, doc
    assert os.path.isfile(doc["cert"]), doc
    return doc["cert"], doc["fingerprint_sha256"]


def client_context(cafile=None, min_version=None, max_version=None, check_hostname=True):
    """A client SSLContext trusting only cafile (None: the system store)."""
    if cafile is None:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.create_default_context(cafile=cafile)
        # only that CA: create_default_context(cafile=) loads no system store
    ctx.check_hostname = check_hostname
    if min_version is not None or max_version is not None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if min_version is not None:
            ctx.minimum_version = min_version
        if max_version is not None:
            ctx.maximum_version = max_version
    return ctx


class SentResult:
    def __init__(self):
        self.replies = []      # (step, code, text)
        self.peer_cert = None  # cryptography certificate the client was served
        self.tls_version = None
        self.cipher = None
        self.ehlo_before = None  # EHLO keywords before TLS (STARTTLS mode)
        self.ehlo_after = None


def smtplib_send(host, port, client_tls, msg, ctx=None, server_hostname="localhost", mail_from="alice@example.com",
                 rcpts=("bob@example.org",), auth=None, timeout=30):
    """Send one message with smtplib.  client_tls: 'off' (plaintext),
    'starttls', 'implicit'.  Returns a SentResult; smtplib exceptions
    propagate."""
    r = SentResult()
    if client_tls == "implicit":
        s = smtplib.SMTP_SSL(timeout=timeout, context=ctx)
        # SMTP_SSL wraps with server_hostname=self._host, set by connect()
        s._host = server_hostname
        code, text = s.connect(host, port)
        s._host = server_hostname
    else:
        s = smtplib.SMTP(timeout=timeout)
        code, text = s.connect(host, port)
    r.replies.append(("connect", code, text))
    try:
        r.replies.append(("ehlo",) + s.ehlo("client.example"))
        if client_tls == "starttls":
            r.ehlo_before = dict(s.esmtp_features)
            s._host = server_hostname
            r.replies.append(("starttls",) + s.starttls(context=ctx))
            r.replies.append(("ehlo",) + s.ehlo("client.example"))
        r.ehlo_after = dict(s.esmtp_features)
        if client_tls != "off":
            r.peer_cert = der_cert(s.sock.getpeercert(binary_form=True))
            r.tls_version = s.sock.version()
            r.cipher = s.sock.cipher()[0]
        if auth:
            s.login(*auth)
            r.replies.append(("auth", 235, b""))
        r.replies.append(("mail",) + s.mail(mail_from))
        for rc in rcpts:
            r.replies.append(("rcpt",) + s.rcpt(rc))
        r.replies.append(("data",) + s.data(msg))
        r.replies.append(("quit",) + s.quit())
    finally:
        s.close()
    return r


# --------------------------------------------------------------------------
# upstream: a real Postfix under a temporary directory

POSTFIX_LIBEXEC = "/usr/lib/postfix/sbin"


class PostfixUpstream:
    """Postfix master + smtpd on 127.0.0.1: `port` offers STARTTLS,
    `implicit_port` is TLS from the first byte (smtpd_tls_wrappermode).
    Mail for any recipient is delivered by the pipe(8) transport into
    files under `maildir`, one per message (the exact content Postfix
    queued, with its Received: header on top)."""

    def __init__(self, tmpdir, pki, cert="leaf"):
        # Postfix's daemons run as the postfix user and must reach their
        # directories: pytest's tmp_path sits under a 0700 directory, so the
        # instance lives in its own traversable one (removed at stop).
        self.dir = tempfile.mkdtemp(prefix="smtptap-e2e-postfix-")
        os.chmod(self.dir, 0o755)
        self.tmpdir = str(tmpdir)
        self.conf = os.path.join(self.dir, "etc")
        self.queue = os.path.join(self.dir, "queue")
        self.data = os.path.join(self.dir, "data")
        self.maildir = os.path.join(self.dir, "mail")
        for d in (self.conf, self.queue, self.data, self.maildir):
            os.makedirs(d, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        os.chmod(self.maildir, 0o777)
        certfile, keyfile = pki.cert_key(cert)
        for src, dst in ((certfile, "cert.pem"), (keyfile, "key.pem")):
            shutil.copyfile(src, os.path.join(self.conf, dst))
        os.chmod(os.path.join(self.conf, "key.pem"), 0o600)
        certfile, keyfile = os.path.join(self.conf, "cert.pem"), os.path.join(self.conf, "key.pem")
        self.proc = None
        self.errpath = os.path.join(self.dir, "master.log")
        for attempt in range(10):
            self.port, self.implicit_port = _free_port(), _free_port()
            self._write_config(certfile, keyfile)
            if self._start():
                self.addr = "127.0.0.1:%d" % self.port
                self.implicit_addr = "127.0.0.1:%d" % self.implicit_port
                return
        log = self.log()
        self.cleanup()
        raise AssertionError("Postfix did not start; log:\n%s" % log[-3000:])

    def _write_config(self, certfile, keyfile):
        deliver = os.path.join(self.dir, "deliver.sh")
        with open(deliver, "w") as f:
            # pipe(8) runs this as `nobody` with the message on stdin; the
            # .eml name appears only once the message is whole (a reader
            # polling the directory saw an empty file on a loaded machine)
            f.write("#!/bin/sh\nf=\"%s/msg.$$.$(date +%%s%%N)\"\ncat > \"$f.part\" && mv \"$f.part\" \"$f.eml\"\n"
                    % self.maildir)
        os.chmod(deliver, 0o755)
        main = {
            "compatibility_level": "3.6",
            "config_directory": self.conf,
            "queue_directory": self.queue,
            "data_directory": self.data,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.example.test",
            "mydomain": "example.test",
            "myorigin": "example.test",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            # every address goes to our pipe transport
            "default_transport": "filedrop",
            "relay_transport": "filedrop",
            "local_transport": "filedrop",
            "filedrop_destination_recipient_limit": "1",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtpd_tls_cert_file": certfile,
            "smtpd_tls_key_file": keyfile,
            "smtpd_tls_security_level": "may",
            "smtpd_tls_loglevel": "1",
            "smtp_tls_security_level": "none",
            "maillog_file": os.path.join(self.dir, "maillog"),
            "maillog_file_prefixes": self.dir,
            "smtputf8_enable": "no",
            "biff": "no",
            "message_size_limit": "0",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": POSTFIX_LIBEXEC,
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
            "manpage_directory": "/usr/share/man",
            "html_directory": "no",
            "readme_directory": "no",
            "sample_directory": "/etc/postfix",
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
            "syslog_name": "postfix-smtptap-e2e",
        }
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        master = [
            "127.0.0.1:%d inet n - n - - smtpd" % self.port,
            "127.0.0.1:%d inet n - n - - smtpd" % self.implicit_port,
            "  -o smtpd_tls_wrappermode=yes",
            "  -o smtpd_tls_security_level=encrypt",
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
            "local unix - n n - - local",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
            "tlsmgr unix - - n 1000? 1 tlsmgr",
            "filedrop unix - n n - - pipe",
            "  flags=q user=nobody argv=%s" % deliver,
        ]
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write("\n".join(master) + "\n")

    def _start(self):
        env = dict(os.environ, MAIL_CONFIG=self.conf)
        # postfix check/set-permissions equivalent: create the queue layout
        subprocess.run(["/usr/sbin/postfix", "-c", self.conf, "check"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
        self._err = open(self.errpath, "ab")
        # -d: stay in the foreground, so we own the PID; -c: our config
        self.proc = subprocess.Popen([os.path.join(POSTFIX_LIBEXEC, "master"), "-d", "-c", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self._err, stderr=self._err, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(10)
                    if s.recv(100).startswith(b"220"):
                        return True
            except OSError:
                time.sleep(0.1)
        self.stop()
        return False

    def log(self):
        out = ""
        for p in (self.errpath, os.path.join(self.dir, "maillog")):
            if os.path.exists(p):
                with open(p, "rb") as f:
                    out += f.read().decode("utf-8", "replace")
        return out

    def delivered(self):
        """The delivered messages' bytes (in delivery order)."""
        files = [os.path.join(self.maildir, n) for n in os.listdir(self.maildir) if n.endswith(".eml")]
        files.sort(key=os.path.getmtime)
        out = []
        for p in files:
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def wait_delivered(self, n, timeout=60):
        return wait_until(lambda: self.delivered() if len(self.delivered()) >= n else None, timeout, interval=0.2,
                          what="%d messages delivered by Postfix (log: %s)" % (n, self.errpath))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            # master ends its children on SIGTERM
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # its own session (start_new_session): the group is master's
                # PID, so this also ends the daemons it started
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(STOP_TIMEOUT)
            # master does not wait for its daemons: end any that is left in
            # its process group (the kernel keeps the group's ID from being
            # reused while a member lives, so this reaches only them)
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if getattr(self, "_err", None) and not self._err.closed:
            self._err.close()

    def cleanup(self):
        """Keep the log next to the test's files, then remove the instance."""
        try:
            shutil.copyfile(self.errpath, os.path.join(self.tmpdir, "postfix-master.log"))
            if os.path.exists(os.path.join(self.dir, "maillog")):
                shutil.copyfile(os.path.join(self.dir, "maillog"), os.path.join(self.tmpdir, "postfix-maillog"))
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postfix_upstream(tmp_path, pki):
    if not os.access(os.path.join(POSTFIX_LIBEXEC, "master"), os.X_OK):
        fail_missing("Postfix is not installed (tools/install-deps.sh installs postfix)")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root (its daemons drop privileges to the postfix user)")
    p = PostfixUpstream(tmp_path, pki)
    yield p
    p.stop()
    p.cleanup()
