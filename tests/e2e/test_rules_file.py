"""The rules file as a user meets it: a broken file refused at start with
FILE:LINE:COL (the same lines `smtptap rules check` prints) and a non-zero
exit; SIGHUP with a good file changes what new sessions get (a session
already open keeps its rules); SIGHUP with a broken file keeps the rules
in force and logs where the error is; -v prints each firing live.
"""

import re
import signal
import subprocess

from conftest import BIN, START_TIMEOUT, run_cli, sanitizer_findings, wait_until
from rulekit import GOOD, check_fired, mail, rules
from rulekit import rules_ca, rules_env, shared_upstreams  # noqa: F401

BROKEN = rules('on mail reply 451 4.3.0 "fine"',
               'on rcpt to ~ "^bad@" reply 55 5.1.1 "No"',
               "on data-end sise > 2k reply 552")
# where the errors are: the code on line 4, the misspelt condition on line 5
BROKEN_AT = [(4, 28), (5, 13)]


def test_broken_file_refused_at_start(tmp_path):
    """`smtptap proxy --rules BROKEN` does not start: exit status non-zero,
    each error as FILE:LINE:COL on stderr, as `rules check` says it."""
    path = str(tmp_path / "broken.rules")
    with open(path, "w") as f:
        f.write(BROKEN)
    check = run_cli("rules", "check", path, expect=1)
    p = subprocess.run([BIN, "proxy", "--sink", "--listen", "127.0.0.1:0", "--db", str(tmp_path / "t.db"),
                        "--rules", path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=START_TIMEOUT * 3)
    err = p.stderr.decode("utf-8", "replace")
    assert not sanitizer_findings(err), err
    assert p.returncode not in (0, None), (p.returncode, err)
    assert "listening" not in err, err
    for line, col in BROKEN_AT:
        where = "%s:%d:%d: " % (path, line, col)
        assert where in err, (where, err)
        assert where in check.err, (where, check.err)
    for l in check.err.splitlines():
        assert l in err, (l, err)  # the very same messages


def reloaded(p, n):
    """Wait for the n-th SIGHUP line on the proxy's stderr; returns it."""
    def seen():
        lines = [l for l in p.stderr().splitlines() if "SIGHUP" in l]
        return lines[n - 1] if len(lines) >= n else None
    return wait_until(seen, 10, what="the proxy's SIGHUP line")


def test_sighup_reload(rules_env):
    """SIGHUP with a good file: new sessions get the new rules, a session
    that began before keeps the old ones.  SIGHUP with a broken file: the
    rules in force stay, and the log names the line and column."""
    env = rules_env(rules('on mail reply 451 4.3.0 "old rules"'), "sink", "plain")
    before = env.session()  # begins under the old rules

    env.write_rules(rules('on mail reply 452 4.3.1 "new rules"'))
    env.p.send_signal(signal.SIGHUP)
    assert "1 rules reloaded" in reloaded(env.p, 1)
    c = env.session()
    got = c.cmd("MAIL FROM:<alice@example.com>")
    assert (got.code, got.lines) == (452, ["4.3.1 new rules"]), got
    c.close()
    got = before.cmd("MAIL FROM:<alice@example.com>")
    assert (got.code, got.lines) == (451, ["4.3.0 old rules"]), got
    before.close()

    env.write_rules(BROKEN)
    env.p.send_signal(signal.SIGHUP)
    line = reloaded(env.p, 2)
    assert "has errors" in line and "stay in force" in line, line
    err = env.p.stderr()
    for ln, col in BROKEN_AT:
        assert "%s:%d:%d: " % (env.rules_path, ln, col) in err, err[-2000:]
    c = env.session()
    got = c.cmd("MAIL FROM:<alice@example.com>")
    assert (got.code, got.lines) == (452, ["4.3.1 new rules"]), got
    c.expect("QUIT", 221)
    assert env.p.running()


def test_verbose_prints_firing_live(rules_env):
    """-v: each firing is on stderr while the session is still open, with
    the rule's line and text, next to the injected reply."""
    r = rules('on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"')
    env = rules_env(r, "relay", "plain", args=["-v"])
    c = env.session()
    mail(c)
    assert c.cmd("RCPT TO:<bad@example.org>").code == 550
    pat = re.compile(r"s=1 \*\* rule 3 fired on rcpt \(event \d+\): " + re.escape(r.splitlines()[2]))
    line = wait_until(lambda: [l for l in env.p.stderr().splitlines() if pat.search(l)], 10,
                      what="the firing on stderr")[0]
    err = env.p.stderr()
    after = err[err.index(line):]
    assert "<~ 550 5.1.1 No such user" in after, after[:500]
    # still open: the firing was printed live, not at the session's end
    c.expect("RCPT TO:<%s>" % GOOD, 250)
    c.expect("QUIT", 221)
    check_fired(env.doc(), r, 3, "rcpt", "command")
