"""`smtptap rules check FILE`: a valid file, broken files with the exact
line and column of each error, --explain, --json, --help, exit codes.

The rules language itself is unit-tested (tests/unit/test_rules.c); here it
is the command a user runs, as they run it."""

import os
import re
import subprocess

import pytest

from conftest import BIN, REPO, run_cli


@pytest.fixture(autouse=True)
def _need_binary():
    if not os.access(BIN, os.X_OK):
        pytest.fail("smtptap binary not found or not executable: %s" % BIN)


GOOD = """\
# The examples of issue 6, and one of each kind
on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"
on mail session 1-2 reply 451 4.3.0 "Try again later"
on data-end probability 0.25 seed 7 reply 452 4.3.1 "Insufficient storage"
on ehlo strip STARTTLS,PIPELINING
on connect delay 5s

ON REPLY DATA-END CODE 250 REWRITE 451 4.4.2 "Connection lost" # comment
on data-end header X-Test ~* "fail" \\
    size > 1M probability 25% reply 552
on tls client fail-tls
"""


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def errors_of(res):
    """The FILE:LINE:COL: message lines on stderr, as (line, col, message)."""
    out = []
    for line in res.err.splitlines():
        m = re.match(r"^(.*):(\d+):(\d+): (.*)$", line)
        if m:
            out.append((int(m.group(2)), int(m.group(3)), m.group(4)))
    return out


def test_good_file(tmp_path):
    path = write(tmp_path, "good.rules", GOOD)
    r = run_cli("rules", "check", path)
    assert r.text == "%s: 8 rules ok\n" % path
    assert r.err == ""


def test_bench_rules_file_is_valid():
    # make bench runs smtptap-rules with this file: a rule the checker
    # came to refuse stopped the whole benchmark at its start
    path = os.path.join(REPO, "tools", "bench", "nomatch.rules")
    r = run_cli("rules", "check", path)
    assert r.text == "%s: 100 rules ok\n" % path
    assert r.err == ""


def test_one_rule_says_rule(tmp_path):
    path = write(tmp_path, "one.rules", "on quit close\n")
    assert run_cli("rules", "check", path).text == "%s: 1 rule ok\n" % path


def test_empty_file_is_valid(tmp_path):
    path = write(tmp_path, "empty.rules", "# nothing yet\n")
    assert run_cli("rules", "check", path).text == "%s: 0 rules ok\n" % path


def test_broken_file_every_error_with_line_and_column(tmp_path):
    text = ("on rcpt reply 550\n"                       # 1 fine
            "on rcptt to ~ \"x\" reply 550\n"             # 2
            "# a comment\n"                             # 3
            "on connect size > 1M reply 554\n"          # 4
            "on rcpt reply 550 rewrite 451\n"           # 5
            "on mail \\\n"                              # 6
            "    reply 650\n"                           # 7 (the continuation)
            "on rcpt to ~ \"(\" reply 550\n"              # 8
            "on rcpt reply 550 No such user\n"          # 9
            "on rcpt reply 550 \"unterminated\n"        # 10
            "rcpt reply 550\n")                         # 11
    path = write(tmp_path, "broken.rules", text)
    r = run_cli("rules", "check", path, expect=1)
    assert r.text == ""
    for line in r.err.splitlines():
        assert line.startswith(path + ":"), line
    assert errors_of(r) == [
        (2, 4, "unknown trigger 'rcptt' (did you mean 'rcpt'?)"),
        (4, 12, "size applies to data-end only, not to connect"),
        (5, 19, "rewrite cannot be combined with reply (reply answers instead of forwarding, "
                "rewrite forwards and replaces the answer: choose one)"),
        (7, 11, "expected a reply code after 'reply' (three digits from 200 to 599), found '650'"),
        (8, 14, "bad regular expression \"(\": Unmatched ( or \\("),
        (9, 19, "expected an action or the reply's text, found 'No' (the text goes in double quotes: "
                "\"No such user\")"),
        (10, 19, "unterminated string (the closing \" is missing)"),
        (11, 1, "a rule starts with 'on' (on rcpt ...)"),
    ]


def test_at_most_20_errors_then_how_many_more(tmp_path):
    path = write(tmp_path, "many.rules", "".join("on rcpt reply %d\n" % (700 + i) for i in range(23)))
    r = run_cli("rules", "check", path, expect=1)
    lines = r.err.splitlines()
    assert len(lines) == 21
    assert [e[0] for e in errors_of(r)] == list(range(1, 21))
    assert lines[-1] == "... and 3 more errors"


def test_crlf_and_bom(tmp_path):
    path = write(tmp_path, "dos.rules", b"\xef\xbb\xbfon rcpt reply 550\r\non rcptt reply 550\r\n", "wb")
    r = run_cli("rules", "check", path, expect=1)
    assert errors_of(r) == [(2, 4, "unknown trigger 'rcptt' (did you mean 'rcpt'?)")]


def test_unreadable(tmp_path):
    missing = str(tmp_path / "missing.rules")
    r = run_cli("rules", "check", missing, expect=1)
    assert r.err == "%s: No such file or directory\n" % missing
    r = run_cli("rules", "check", str(tmp_path), expect=1)
    assert r.err == "%s: Is a directory\n" % tmp_path


def test_explain(tmp_path):
    path = write(tmp_path, "good.rules", GOOD)
    r = run_cli("rules", "check", path, "--explain")
    lines = r.text.splitlines()
    assert lines[0] == "%s: 8 rules ok" % path
    explained = [re.match(r"^ *(\d+)  (.*)$", l).groups() for l in lines[1:]]
    assert [int(n) for n, _ in explained] == [2, 3, 4, 5, 6, 8, 9, 11]
    rules = dict((int(n), t) for n, t in explained)
    assert rules[4] == 'on data-end probability 0.25 seed 7 reply 452 4.3.1 "Insufficient storage"'
    assert rules[8] == 'on reply data-end code 250 rewrite 451 4.4.2 "Connection lost"'
    assert rules[9] == 'on data-end header X-Test ~* "fail" size > 1M probability 0.25 reply 552 "smtptap rule 9"'
    # the normalised form is itself a valid file, and explains to itself
    again = write(tmp_path, "again.rules", "".join(t + "\n" for _, t in explained))
    r2 = run_cli("rules", "check", again, "--explain")
    assert [re.match(r"^ *\d+  (.*)$", l).group(1) for l in r2.text.splitlines()[1:]] == [t for _, t in explained]


def test_json(tmp_path):
    path = write(tmp_path, "good.rules", GOOD)
    doc = run_cli("rules", "check", path, "--json").json()
    assert doc == {"file": path, "errors": [], "ok": True, "rules": 8}
    doc = run_cli("rules", "check", "--json", "--explain", path).json()
    assert len(doc["explain"]) == 8
    assert doc["explain"][0] == {"line": 2, "text": 'on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"',
                                 "normalised": 'on rcpt to ~ "^bad@" reply 550 5.1.1 "No such user"'}
    # every error, beyond the 20 of the text form
    bad = write(tmp_path, "bad.rules", "".join("on rcptt reply 550\n" for _ in range(25)))
    r = run_cli("rules", "check", bad, "--json", expect=1)
    doc = r.json()
    assert doc["ok"] is False and doc["rules"] == 0 and len(doc["errors"]) == 25
    assert doc["errors"][24] == {"line": 25, "column": 4, "message": "unknown trigger 'rcptt' (did you mean 'rcpt'?)"}
    assert r.err == ""


@pytest.mark.parametrize("cmd", [["rules", "--help"], ["rules", "check", "--help"], ["rules", "--help", "check"]])
def test_help(cmd):
    r = run_cli(*cmd)
    assert r.text.startswith("usage: smtptap rules check FILE")
    assert "--json" in r.text and "docs/rules.md" in r.text


def test_listed_in_main_help():
    assert re.search(r"^  rules +", run_cli("--help").text, re.M)


@pytest.mark.parametrize("args", [
    ["rules"],
    ["rules", "check"],
    ["rules", "verify", "x.rules"],
    ["rules", "check", "a.rules", "b.rules"],
    ["rules", "check", ""],
    ["rules", "check", "--frobnicate", "x.rules"],
])
def test_usage_errors_exit_2(args, tmp_path):
    p = subprocess.run([BIN] + args, cwd=str(tmp_path), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2, "%r exited %s, stderr: %s" % (args, p.returncode, err)
    assert err.strip() and "help" in err, "%r: a usage error must say what to try: %s" % (args, err)


def test_seed_corpus_and_doc_examples_check(tmp_path):
    """The kept fuzz seeds (real rules files) and every rule in
    docs/rules.md are valid, except the file of errors on purpose."""
    corpus = os.path.join(REPO, "tests", "fuzz", "corpus", "rules")
    for name in sorted(os.listdir(corpus)):
        if not name.endswith(".rules"):
            continue
        path = os.path.join(corpus, name)
        run_cli("rules", "check", path, expect=1 if name == "errors.rules" else 0)
    with open(os.path.join(REPO, "docs", "rules.md")) as f:
        doc = f.read()
    rules = [l.strip() for block in re.findall(r"```\n(.*?)```", doc, re.S) for l in block.splitlines()
             if re.match(r"\s*on [a-z]", l)]
    assert len(rules) > 25
    path = write(tmp_path, "doc.rules", "".join(r + "\n" for r in rules))
    assert run_cli("rules", "check", path).text == "%s: %d rules ok\n" % (path, len(rules))
