"""The scripted peer itself (scripted.py), peer against peer, no proxy: a
test built on it can only be as honest as its steps."""

import socket
import ssl
import subprocess

from scripted import (client_hello, close, expect, expect_closed, half_tls, read_all, reset, send, stall,
                      starttls, wait)


def test_dialogue_both_ways(scripted):
    srv = scripted.server([send(b"220 s\r\n"), expect(rb"EHLO [^\r\n]*\r\n", name="ehlo"),
                           send(b"250-a\r\n", b"250 b\r\n"), expect(rb"QUIT\r\n"), send(b"221 bye\r\n"), close(),
                           expect_closed()])
    cl = scripted.client(srv.port, [expect(rb"220 [^\r\n]*\r\n"), send(b"EHLO me\r\n"), expect(rb"250 b\r\n"),
                                    send(b"QUIT\r\n"), read_all(name="rest"), close()])
    cl.wait()
    srv.wait()
    assert cl.done and srv[0].done
    assert cl.received == srv[0].sent == b"220 s\r\n250-a\r\n250 b\r\n221 bye\r\n"
    assert srv[0].received == cl.sent == b"EHLO me\r\nQUIT\r\n"
    assert srv[0].got["ehlo"] == b"EHLO me\r\n"
    assert cl.got["rest"] == b"221 bye\r\n"
    assert cl.peer_closed


def test_expect_timeout_names_the_step_and_what_came(scripted):
    srv = scripted.server([send(b"220 wrong greeting\r\n"), stall()])
    cl = scripted.client(srv.port, [expect(rb"250 [^\r\n]*\r\n", timeout=0.5)])
    try:
        cl.wait()
    except AssertionError as e:
        msg = str(e)
    else:
        raise AssertionError("a step that timed out did not fail the script")
    assert "step 1 expect(b'250 [^\\\\r\\\\n]*\\\\r\\\\n')" in msg, msg
    assert "timed out" in msg and "220 wrong greeting" in msg, msg
    assert not cl.done


def test_expect_fails_when_the_peer_closes(scripted):
    srv = scripted.server([send(b"220 s\r\n"), close()])
    cl = scripted.client(srv.port, [expect(rb"250 ")])
    try:
        cl.wait()
    except AssertionError as e:
        assert "closed the connection" in str(e), e
    else:
        raise AssertionError("expect() passed although the peer closed")


def test_reset_is_seen_as_a_close(scripted):
    srv = scripted.server([expect(rb"hello"), wait(0.1), reset()])
    cl = scripted.client(srv.port, [send(b"hello"), expect_closed()])
    cl.wait()
    srv.wait()
    assert cl.peer_closed and cl.received == b""


def test_segments_are_separate_writes(scripted):
    """Each segment is written on its own, after a pause: a reader that
    reads as soon as bytes come sees them apart (usually; this asserts only
    that nothing is merged or lost)."""
    srv = scripted.server([send(b"250-a\r\n", b"250-b\r\n", b"250 c\r\n"), close()])
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    try:
        got = b""
        for _ in range(100):
            d = s.recv(1000)
            if not d:
                break
            got += d
    finally:
        s.close()
    assert got == b"250-a\r\n250-b\r\n250 c\r\n"


def test_half_tls_sends_part_of_a_client_hello(scripted):
    srv = scripted.server([read_all(name="all", timeout=60)])
    cl = scripted.client(srv.port, [half_tls()])
    cl.wait()
    assert cl.stalled and cl.done
    hello = client_hello()
    assert hello[:3] in (b"\x16\x03\x01", b"\x16\x03\x03")
    cl.stop()  # the stalled client closes: the server's read_all ends
    srv.wait()
    assert srv[0].got["all"] == cl.sent and 0 < len(cl.sent) < len(hello)


def test_starttls_both_sides(scripted, tmp_path, tools_required):
    tools_required("openssl")
    key, crt = str(tmp_path / "k.pem"), str(tmp_path / "c.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "1", "-subj", "/CN=localhost"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=60)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(crt)
    srv = scripted.server([send(b"220 s\r\n"), expect(rb"STARTTLS\r\n"), send(b"220 go ahead\r\n"), starttls(sctx),
                           expect(rb"EHLO [^\r\n]*\r\n"), send(b"250 secret\r\n"), close(), expect_closed()])
    cl = scripted.client(srv.port, [expect(rb"220 s\r\n"), send(b"STARTTLS\r\n"), expect(rb"220 go[^\r\n]*\r\n"),
                                    starttls(cctx, server_hostname="localhost"), send(b"EHLO me\r\n"),
                                    expect(rb"250 secret\r\n"), read_all(), close()])
    cl.wait()
    srv.wait()
    assert isinstance(cl.sock, ssl.SSLSocket) and cl.sock.version() is not None
    assert srv[0].received == b"STARTTLS\r\nEHLO me\r\n"
    assert srv[0].plaintext_before_tls == b""
