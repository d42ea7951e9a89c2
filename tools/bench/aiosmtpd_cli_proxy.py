"""aiosmtpd's stock Proxy handler, made usable from aiosmtpd's command line.

aiosmtpd 1.4.3's `python3 -m aiosmtpd -c aiosmtpd.handlers.Proxy HOST PORT`
fails with "Handler class aiosmtpd.handlers takes no arguments": Proxy has no
from_cli() classmethod, so the CLI refuses CLASSARGS.  This subclass adds only
that method; the SMTP server, the event loop and Proxy.handle_DATA (one
blocking smtplib delivery per message) are aiosmtpd's own, unchanged.

    PYTHONPATH=tools/bench /usr/bin/python3 -m aiosmtpd -n -l 127.0.0.1:P \
        -c aiosmtpd_cli_proxy.CliProxy 127.0.0.1 SINKPORT
"""
from aiosmtpd.handlers import Proxy


class CliProxy(Proxy):
    @classmethod
    def from_cli(cls, parser, *args):
        if len(args) != 2:
            parser.error("CliProxy needs: REMOTE_HOST REMOTE_PORT")
        try:
            port = int(args[1])
        except ValueError:
            parser.error("CliProxy: REMOTE_PORT must be a number")
        return cls(args[0], port)
