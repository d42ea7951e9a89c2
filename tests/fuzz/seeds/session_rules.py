#!/usr/bin/env python3
"""Seeds for fuzz_session's rules path (header bit 4): whole SMTP exchanges
as fuzz_session scripts, for a spread of session numbers (byte 1), so the
fuzzer starts from inputs where the rules' triggers all occur.

    python3 tests/fuzz/seeds/session_rules.py OUTDIR

Writes one file per seed, named rules-<what>-s<session>.  See the header
of tests/fuzz/fuzz_session.c for the script format.
"""
import os
import sys

SINK, TLS, RULES = 1, 8, 16
WAIT = bytes([(30 << 3) | 5])      # with rules: 25 ms of virtual time
TURNS = bytes([(3 << 3) | 5])      # 4 loop turns
CLIENT_TLS = bytes([(31 << 3) | 5])  # the client starts TLS


def send(op, data):
    out = b""
    while data:
        part, data = data[:8192], data[8192:]
        n = len(part) - 1
        out += bytes([((n >> 8) << 3) | op, n & 0xFF]) + part
    return out


def c(data):
    return send(0, data)


def u(data):
    return send(3, data)


EHLO_REPLY = (b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n"
              b"250-CHUNKING\r\n250-AUTH PLAIN LOGIN\r\n250 STARTTLS\r\n")
BODY = (b"From: a@example\r\nTo: b@example\r\nSubject: hello x\r\nX-Fuzz: 1\r\n\r\n"
        b"line one\r\n..dot-stuffed\r\nline three\r\n")


def relay_plain():
    return (u(b"220 mx.example ESMTP\r\n") + TURNS + c(b"EHLO alpha.example\r\n") + TURNS + u(EHLO_REPLY)
            + TURNS + c(b"MAIL FROM:<a@example>\r\n") + u(b"250 2.1.0 OK\r\n")
            + c(b"RCPT TO:<bob@example>\r\n") + u(b"550 5.1.1 no\r\n")
            + c(b"RCPT TO:<carol@example>\r\n") + u(b"250 2.1.5 OK\r\n")
            + c(b"DATA\r\n") + TURNS + u(b"354 go ahead\r\n") + TURNS + c(BODY + b".\r\n") + WAIT
            + u(b"250 2.0.0 queued\r\n") + TURNS + c(b"NOOP\r\n") + u(b"250 OK\r\n")
            + c(b"RSET\r\n") + u(b"250 OK\r\n") + c(b"VRFY bob\r\n") + u(b"252 maybe\r\n")
            + c(b"QUIT\r\n") + WAIT + u(b"221 bye\r\n") + TURNS)


def relay_pipelined():
    return (u(b"220 mx.example ESMTP\r\n") + c(b"EHLO b.example\r\n") + u(EHLO_REPLY)
            + c(b"MAIL FROM:<x@example> SIZE=100\r\nRCPT TO:<y@example>\r\nRCPT TO:<bad@example>\r\nDATA\r\n")
            + u(b"250 OK\r\n250 OK\r\n550 5.1.1 no\r\n354 go\r\n") + c(BODY + b".\r\n")
            + u(b"250 queued\r\n") + c(b"MAIL FROM:<>\r\nRCPT TO:<z@example>\r\nDATA\r\n")
            + u(b"250 OK\r\n250 OK\r\n354 go\r\n") + c(b"Subject: y\r\n\r\n" + b"x" * 1500 + b"\r\n.\r\n")
            + u(b"250 queued\r\n") + c(b"QUIT\r\n") + u(b"221 bye\r\n"))


def relay_bdat():
    return (u(b"220 mx.example ESMTP\r\n") + c(b"EHLO c.example\r\n") + u(EHLO_REPLY)
            + c(b"MAIL FROM:<a@example>\r\n") + u(b"250 OK\r\n") + c(b"RCPT TO:<c@example>\r\n")
            + u(b"250 OK\r\n") + c(b"BDAT 10\r\n0123456789") + u(b"250 2.0.0 10 octets\r\n")
            + c(b"BDAT 5 LAST\r\nabcde") + WAIT + u(b"250 2.0.0 queued\r\n") + c(b"QUIT\r\n") + u(b"221 bye\r\n"))


def relay_auth():
    return (u(b"220 mx.example ESMTP\r\n") + c(b"EHLO d.example\r\n") + u(EHLO_REPLY)
            + c(b"AUTH PLAIN\r\n") + u(b"334 \r\n") + c(b"AHVzZXIAcGFzcw==\r\n") + u(b"235 2.7.0 OK\r\n")
            + c(b"AUTH LOGIN dXNlcg==\r\n") + u(b"334 UGFzc3dvcmQ6\r\n") + c(b"cGFzcw==\r\n")
            + u(b"535 5.7.8 no\r\n") + c(b"HELP\r\nEXPN list\r\n") + u(b"214 help\r\n502 no\r\n")
            + c(b"HELO e.example\r\n") + u(b"250 mx.example\r\n") + c(b"QUIT\r\n") + u(b"221 bye\r\n"))


def relay_starttls():
    # the session answers STARTTLS itself (--client-tls starttls)
    return (u(b"220 mx.example ESMTP\r\n") + c(b"EHLO f.example\r\n") + u(EHLO_REPLY) + TURNS
            + c(b"STARTTLS\r\n") + TURNS + CLIENT_TLS + WAIT + c(b"EHLO f.example\r\n") + u(EHLO_REPLY)
            + c(b"MAIL FROM:<a@example>\r\nRCPT TO:<g@example>\r\nDATA\r\n")
            + u(b"250 OK\r\n250 OK\r\n354 go\r\n") + c(BODY + b".\r\n") + u(b"250 queued\r\n")
            + c(b"QUIT\r\n") + u(b"221 bye\r\n"))


def sink_plain():
    return (TURNS + c(b"EHLO h.example\r\n") + TURNS + c(b"MAIL FROM:<a@example>\r\n")
            + c(b"RCPT TO:<b@example>\r\nRCPT TO:<i@example>\r\n") + c(b"DATA\r\n") + TURNS
            + c(BODY + b".\r\n") + WAIT + c(b"BDAT 3 LAST\r\nabc") + c(b"LHLO x\r\nNOOP\r\nQUIT\r\n") + TURNS)


SEEDS = [
    ("relay", 0, relay_plain),
    ("pipelined", 0, relay_pipelined),
    ("bdat", 0, relay_bdat),
    ("auth", 0, relay_auth),
    ("starttls", TLS, relay_starttls),
    ("sink", SINK, sink_plain),
    ("sink-starttls", SINK | TLS, relay_starttls),
]
SESSIONS = list(range(1, 14)) + [20, 33, 45, 50, 61, 77, 100, 150, 201, 256]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    os.makedirs(out, exist_ok=True)
    for name, flags, make in SEEDS:
        script = make()
        for sess in SESSIONS:
            with open(os.path.join(out, "rules-%s-s%d" % (name, sess)), "wb") as f:
                f.write(bytes([RULES | flags, sess - 1]) + script)


if __name__ == "__main__":
    main()
