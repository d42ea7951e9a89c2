/*
 * test_rules.c - the rule engine (rules.c, rules_parse.c): the language,
 * every error with its line and column, and what rules_decide decides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include "smtptap/rules.h"
#include "smtptap/rules_int.h"

/* ------------------------------------------------------------------------
 * Helpers.
 */

#define MAX_ERRS 64

struct errs {
	size_t n;
	unsigned line[MAX_ERRS], col[MAX_ERRS];
	char msg[MAX_ERRS][640];
};

static void
errs_add(void *arg, unsigned line, unsigned col, const char *msg)
{
	struct errs *e = arg;

	if (e->n < MAX_ERRS) {
		e->line[e->n] = line;
		e->col[e->n] = col;
		snprintf(e->msg[e->n], sizeof(e->msg[0]), "%s", msg);
	}
	e->n++;
}

static struct rules *
parse_ok(const char *text)
{
	char err[4096];
	struct rules *r = rules_parse("t.rules", text, strlen(text), 42, err, sizeof(err));

	if (r == NULL)
		fail_msg("parse failed: %s\n--- text:\n%s", err, text);
	return r;
}

/* The one error a one-rule text gives: at line:col, its message holding want. */
static void
assert_error(const char *text, unsigned line, unsigned col, const char *want)
{
	struct errs e;
	struct rules *r;

	memset(&e, 0, sizeof(e));
	r = rules_parse_cb(text, strlen(text), 0, errs_add, &e);
	if (r != NULL) {
		rules_unref(r);
		fail_msg("no error for: %s", text);
	}
	if (e.n != 1)
		fail_msg("%zu errors for: %s (first: %u:%u: %s)", e.n, text, e.line[0], e.col[0], e.msg[0]);
	if (e.line[0] != line || e.col[0] != col || strstr(e.msg[0], want) == NULL)
		fail_msg("for %s\n got %u:%u: %s\nwant %u:%u: ...%s...", text, e.line[0], e.col[0], e.msg[0], line, col,
			 want);
}

static const struct rule *
only_rule(struct rules *r)
{
	assert_int_equal(rules_count(r), 1);
	return rules_at(r, 0);
}

static struct sockaddr_in client4;
static struct sockaddr_in6 client6;

static struct rules_facts
facts(uint64_t session_no)
{
	struct rules_facts f;

	memset(&f, 0, sizeof(f));
	f.session_no = session_no;
	f.client = (const struct sockaddr *)&client4;
	f.listener = "127.0.0.1:2525";
	f.sink = false;
	return f;
}

static struct rules_unit
unit_cmd(enum smtp_verb verb, const char *verb_text, const char *arg)
{
	struct rules_unit u;

	memset(&u, 0, sizeof(u));
	u.trigger = RULES_ON_COMMAND;
	u.verb = verb;
	u.verb_text = verb_text;
	u.verb_text_len = verb_text != NULL ? strlen(verb_text) : 0;
	u.arg = arg;
	u.arg_len = arg != NULL ? strlen(arg) : 0;
	return u;
}

static struct rules_unit
unit_of(enum rules_trigger t)
{
	struct rules_unit u;

	memset(&u, 0, sizeof(u));
	u.trigger = t;
	return u;
}

static struct rules_unit
unit_reply(enum rules_answer answers, enum smtp_verb verb, int code)
{
	struct rules_unit u = unit_of(RULES_ON_REPLY);

	u.answers = answers;
	u.verb = verb;
	u.code = code;
	return u;
}

static struct rules_decision dec;

/* The line of the rule that fired, 0 for none. */
static unsigned
fire(struct rules *r, struct rules_session *rs, const struct rules_unit *u, const struct rules_facts *f)
{
	bool b = rules_decide(r, rs, u, f, &dec);

	assert_true(b == (dec.rule != NULL));
	if (!b) {
		assert_int_equal(dec.actions, 0);
		return 0;
	}
	assert_int_equal(dec.line, rule_line(dec.rule));
	assert_ptr_equal(dec.text, rule_text(dec.rule));
	return dec.line;
}

/* Parse, one session, one unit: which line fired. */
static unsigned
fire1(const char *text, const struct rules_unit *u, const struct rules_facts *f)
{
	struct rules *r = parse_ok(text);
	struct rules_session *rs = rules_session_new(r);
	unsigned line;

	assert_non_null(rs);
	line = fire(r, rs, u, f);
	rules_session_free(rs);
	rules_unref(r);
	return line;
}

static int
setup(void **state)
{
	(void)state;
	memset(&client4, 0, sizeof(client4));
	client4.sin_family = AF_INET;
	client4.sin_port = htons(40000);
	inet_pton(AF_INET, "127.0.0.1", &client4.sin_addr);
	memset(&client6, 0, sizeof(client6));
	client6.sin6_family = AF_INET6;
	client6.sin6_port = htons(40000);
	inet_pton(AF_INET6, "2001:db8::5", &client6.sin6_addr);
	return 0;
}

/* ------------------------------------------------------------------------
 * The language.
 */

static void
test_issue_examples(void **state)
{
	static const char text[] = "on rcpt to ~ \"^bad@\" reply 550 5.1.1 \"No such user\"\n"
				   "on mail session 1-2 reply 451 4.3.0 \"Try again later\"\n"
				   "on data-end probability 0.25 seed 7 reply 452 4.3.1 \"Insufficient storage\"\n"
				   "on ehlo strip STARTTLS,PIPELINING\n"
				   "on connect delay 5s\n";
	struct rules *r;
	const struct rule *ru;

	(void)state;
	r = parse_ok(text);
	assert_int_equal(rules_count(r), 5);
	assert_int_equal(rules_seed(r), 42);
	ru = rules_at(r, 0);
	assert_int_equal(rule_line(ru), 1);
	assert_string_equal(rule_text(ru), "on rcpt to ~ \"^bad@\" reply 550 5.1.1 \"No such user\"");
	assert_int_equal(ru->trigger, RULES_ON_COMMAND);
	assert_int_equal(ru->verb, SMTP_VERB_RCPT);
	assert_int_equal(ru->actions, RULES_A_REPLY);
	assert_string_equal(ru->reply, "550 5.1.1 No such user\r\n");
	ru = rules_at(r, 1);
	assert_int_equal(ru->sess_lo, 1);
	assert_int_equal(ru->sess_hi, 2);
	ru = rules_at(r, 2);
	assert_int_equal(ru->trigger, RULES_ON_DATA_END);
	assert_true(ru->prob == 0.25);
	assert_int_equal(ru->seed, 7);
	ru = rules_at(r, 3);
	assert_int_equal(ru->actions, RULES_A_STRIP);
	assert_int_equal(ru->nstrip, 2);
	assert_string_equal(ru->strip[0], "STARTTLS");
	assert_string_equal(ru->strip[1], "PIPELINING");
	ru = rules_at(r, 4);
	assert_int_equal(ru->trigger, RULES_ON_CONNECT);
	assert_int_equal(ru->delay_ms, 5000);
	assert_null(rules_at(r, 5));
	rules_unref(r);
}

static void
test_lines_comments_continuations(void **state)
{
	static const char text[] = "\xef\xbb\xbf# a comment\r\n"
				   "\r\n"
				   "   \t\n"
				   "ON RCPT TO ~ \"#not-a-comment\" REPLY 550   # a comment\r\n"
				   "on mail \\\n"
				   "   from ~ \"x\" \\  \n"
				   "   reply 451 # a comment\n"
				   "# a comment does not continue \\\n"
				   "on quit close\n"
				   "on noop reply 250 \"a \\\" quote, a \\\\ backslash, a \\. kept\"";
	struct rules *r;
	const struct rule *ru;

	(void)state;
	r = parse_ok(text);
	assert_int_equal(rules_count(r), 4);
	ru = rules_at(r, 0);
	assert_int_equal(rule_line(ru), 4);
	assert_string_equal(rule_text(ru), "ON RCPT TO ~ \"#not-a-comment\" REPLY 550");
	assert_string_equal(ru->field[RULES_F_TO].src, "#not-a-comment");
	assert_string_equal(ru->reply, "550 smtptap rule 4\r\n");
	ru = rules_at(r, 1);
	assert_int_equal(rule_line(ru), 5);
	assert_string_equal(rule_text(ru), "on mail from ~ \"x\" reply 451");
	ru = rules_at(r, 2);
	assert_int_equal(rule_line(ru), 9);
	ru = rules_at(r, 3);
	assert_string_equal(ru->reply, "250 a \" quote, a \\ backslash, a \\. kept\r\n");
	rules_unref(r);

	/* a continued rule is one rule: its line is the first, its text joined */
	r = parse_ok("\non rcpt \\\n  to ~ \"a\" \\\n\treply 550 \"x\"\n");
	ru = only_rule(r);
	assert_int_equal(rule_line(ru), 2);
	assert_string_equal(rule_text(ru), "on rcpt to ~ \"a\" reply 550 \"x\"");
	rules_unref(r);

	/* operators need no spaces around them */
	r = parse_ok("on rcpt to~\"a\" reply 550\non data-end size>=1M reply 552\n");
	assert_int_equal(rules_count(r), 2);
	assert_int_equal(rules_at(r, 1)->size_cmp, RULES_CMP_GE);
	assert_int_equal(rules_at(r, 1)->size, 1024 * 1024);
	rules_unref(r);

	/* an empty file, and only comments: no rules, and valid */
	r = parse_ok("");
	assert_int_equal(rules_count(r), 0);
	rules_unref(r);
	r = parse_ok("# nothing\n\n");
	assert_int_equal(rules_count(r), 0);
	rules_unref(r);
}

static void
test_triggers(void **state)
{
	static const struct {
		const char *text;
		enum rules_trigger t;
		int verb; /* -1 any */
	} cases[] = {
		{ "on connect close", RULES_ON_CONNECT, 0 },
		{ "on greeting reply 554", RULES_ON_GREETING, 0 },
		{ "on data-end reply 554", RULES_ON_DATA_END, 0 },
		{ "on eom reply 554", RULES_ON_DATA_END, 0 },
		{ "on command reply 502", RULES_ON_COMMAND, -1 },
		{ "on any reply 502", RULES_ON_COMMAND, -1 },
		{ "on ehlo reply 502", RULES_ON_COMMAND, SMTP_VERB_EHLO },
		{ "on helo reply 502", RULES_ON_COMMAND, SMTP_VERB_HELO },
		{ "on lhlo reply 502", RULES_ON_COMMAND, SMTP_VERB_LHLO },
		{ "on mail reply 451", RULES_ON_COMMAND, SMTP_VERB_MAIL },
		{ "on rcpt reply 451", RULES_ON_COMMAND, SMTP_VERB_RCPT },
		{ "on data reply 451", RULES_ON_COMMAND, SMTP_VERB_DATA },
		{ "on bdat reply 451", RULES_ON_COMMAND, SMTP_VERB_BDAT },
		{ "on rset reply 451", RULES_ON_COMMAND, SMTP_VERB_RSET },
		{ "on noop reply 451", RULES_ON_COMMAND, SMTP_VERB_NOOP },
		{ "on vrfy reply 252", RULES_ON_COMMAND, SMTP_VERB_VRFY },
		{ "on expn reply 502", RULES_ON_COMMAND, SMTP_VERB_EXPN },
		{ "on help reply 214", RULES_ON_COMMAND, SMTP_VERB_HELP },
		{ "on auth reply 535", RULES_ON_COMMAND, SMTP_VERB_AUTH },
		{ "on starttls reply 454", RULES_ON_COMMAND, SMTP_VERB_STARTTLS },
		{ "on quit reply 221", RULES_ON_COMMAND, SMTP_VERB_QUIT },
		{ "on tls fail-tls", RULES_ON_TLS, 0 },
		{ "on reply rewrite 451", RULES_ON_REPLY, 0 },
	};
	struct rules *r;
	const struct rule *ru;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		r = parse_ok(cases[i].text);
		ru = only_rule(r);
		assert_int_equal(ru->trigger, cases[i].t);
		if (cases[i].t == RULES_ON_COMMAND) {
			assert_true(ru->any_verb == (cases[i].verb < 0));
			if (cases[i].verb >= 0)
				assert_int_equal(ru->verb, cases[i].verb);
		}
		rules_unref(r);
	}

	r = parse_ok("on tls client fail-tls\non tls upstream fail-tls\non tls delay 1s\n"
		     "on tls client 10.0.0.0/8 fail-tls\non tls client client 10.0.0.0/8 fail-tls\n");
	assert_int_equal(rules_at(r, 0)->leg, RULES_LEG_CLIENT);
	assert_int_equal(rules_at(r, 1)->leg, RULES_LEG_UPSTREAM);
	assert_int_equal(rules_at(r, 2)->leg, RULES_LEG_ANY);
	/* "client" followed by a value is the condition, on either leg */
	assert_int_equal(rules_at(r, 3)->leg, RULES_LEG_ANY);
	assert_true(rules_at(r, 3)->conds & RULES_C_CLIENT);
	assert_int_equal(rules_at(r, 4)->leg, RULES_LEG_CLIENT);
	assert_true(rules_at(r, 4)->conds & RULES_C_CLIENT);
	rules_unref(r);

	r = parse_ok("on reply rcpt code 250 rewrite 451\n"
		     "on reply greeting rewrite 554\n"
		     "on reply data-end code 2xx rewrite 451\n"
		     "on reply eom rewrite 451\n"
		     "on reply code 4xx,5xx delay 1s\n"
		     "on reply code 25x, 421 delay 1s\n"
		     "on reply helo ~ \"x\" delay 1s\n");
	ru = rules_at(r, 0);
	assert_int_equal(ru->answers, RULES_ANSWERS_COMMAND);
	assert_int_equal(ru->answers_verb, SMTP_VERB_RCPT);
	assert_true(ru->has_codes);
	assert_int_equal(rules_at(r, 1)->answers, RULES_ANSWERS_GREETING);
	assert_int_equal(rules_at(r, 2)->answers, RULES_ANSWERS_DATA_END);
	assert_int_equal(rules_at(r, 3)->answers, RULES_ANSWERS_DATA_END);
	assert_int_equal(rules_at(r, 4)->answers, RULES_ANSWERS_ANY);
	assert_string_equal(rules_at(r, 5)->codes_src, "25x,421");
	/* "helo" followed by an operator is the field, not the answered verb */
	assert_int_equal(rules_at(r, 6)->answers, RULES_ANSWERS_ANY);
	assert_true(rules_at(r, 6)->conds & (1u << RULES_F_HELO));
	rules_unref(r);

	assert_string_equal(rules_trigger_name(RULES_ON_CONNECT, SMTP_VERB_UNKNOWN), "connect");
	assert_string_equal(rules_trigger_name(RULES_ON_COMMAND, SMTP_VERB_RCPT), "rcpt");
	assert_string_equal(rules_trigger_name(RULES_ON_COMMAND, SMTP_VERB_UNKNOWN), "command");
	assert_string_equal(rules_trigger_name(RULES_ON_DATA_END, SMTP_VERB_UNKNOWN), "data-end");
	assert_string_equal(rules_trigger_name(RULES_ON_REPLY, SMTP_VERB_UNKNOWN), "reply");
	assert_string_equal(rules_trigger_name(RULES_ON_TLS, SMTP_VERB_UNKNOWN), "tls");
	assert_string_equal(rules_trigger_name(RULES_ON_GREETING, SMTP_VERB_UNKNOWN), "greeting");
}

static void
test_conditions_parsed(void **state)
{
	struct rules *r;
	const struct rule *ru;
	char a[16];

	(void)state;
	r = parse_ok("on data-end from ~* \"@A\" to !~ \"b\" helo !~* \"c\" subject ~ \"d\" "
		     "header X-Test ~ \"e\" header from ~ \"f\" size <= 10k session 5- occurrence -3 "
		     "client 10.1.0.0/16 listener 127.0.0.1:2525 mode sink probability 25% limit 2 reply 452\n");
	ru = only_rule(r);
	assert_true(ru->field[RULES_F_FROM].icase && !ru->field[RULES_F_FROM].neg);
	assert_true(!ru->field[RULES_F_TO].icase && ru->field[RULES_F_TO].neg);
	assert_true(ru->field[RULES_F_HELO].icase && ru->field[RULES_F_HELO].neg);
	assert_int_equal(ru->nhdrs, 2);
	assert_string_equal(ru->hdrs[0].name, "X-Test");
	assert_int_equal(ru->size_cmp, RULES_CMP_LE);
	assert_int_equal(ru->size, 10240);
	assert_int_equal(ru->sess_lo, 5);
	assert_true(ru->sess_hi == UINT64_MAX);
	assert_int_equal(ru->occ_lo, 1);
	assert_int_equal(ru->occ_hi, 3);
	assert_int_equal(ru->cl_family, AF_INET);
	assert_int_equal(ru->cl_prefix, 16);
	assert_string_equal(inet_ntop(AF_INET, ru->cl_addr, a, sizeof(a)), "10.1.0.0");
	assert_int_equal(ru->lst_family, AF_INET);
	assert_int_equal(ru->lst_port, 2525);
	assert_true(ru->mode_sink);
	assert_true(ru->prob == 0.25);
	assert_int_equal(ru->seed, 42); /* the set's */
	assert_int_equal(ru->limit, 2);
	rules_unref(r);

}

static void
test_conditions_parsed_more(void **state)
{
	struct rules *r;
	const struct rule *ru;

	(void)state;
	r = parse_ok("on command arg ~ \"x\" verb ~* \"^xclient$\" reply 502\n"
		     "on auth mechanism ~ \"PLAIN\" user ~ \"bob\" reply 535\n"
		     "on rcpt client ::ffff:192.0.2.0/120 listener :25 reply 451\n"
		     "on rcpt client [2001:db8::]/32 listener [::1]:2525 reply 451\n"
		     "on rcpt client 192.0.2.7 probability 1 reply 451\n"
		     "on data-end size > 2G probability .5 reply 451\n");
	assert_int_equal(rules_count(r), 6);
	ru = rules_at(r, 2);
	/* an IPv4-mapped prefix is an IPv4 one */
	assert_int_equal(ru->cl_family, AF_INET);
	assert_int_equal(ru->cl_prefix, 24);
	assert_int_equal(ru->lst_family, 0);
	assert_int_equal(ru->lst_port, 25);
	ru = rules_at(r, 3);
	assert_int_equal(ru->cl_family, AF_INET6);
	assert_int_equal(ru->cl_prefix, 32);
	assert_int_equal(ru->lst_family, AF_INET6);
	ru = rules_at(r, 4);
	assert_int_equal(ru->cl_prefix, 32);
	assert_true(ru->prob_always);
	ru = rules_at(r, 5);
	assert_true(ru->size == 2ULL << 30);
	assert_true(ru->prob == 0.5);
	assert_false(ru->prob_always);
	rules_unref(r);
}

static void
test_actions_parsed(void **state)
{
	struct rules *r;
	const struct rule *ru;

	(void)state;
	r = parse_ok("on rcpt reply 550 5.1.1 \"first\" \"\" \"last\"\n"	     /* 1 */
		     "on rcpt reply 550\n"					     /* 2 */
		     "on rcpt reply 421 \"bye\" close\n"			     /* 3 */
		     "on data-end rewrite 451 4.3.0 \"lost\"\n"		     /* 4 */
		     "on mail delay 500ms reply 451\n"			     /* 5 */
		     "on mail delay 2m\n"					     /* 6 */
		     "on mail delay 7\n"					     /* 7 */
		     "on data stall\n"					     /* 8 */
		     "on rcpt reset\n"					     /* 9 */
		     "on rcpt reply 550 reset\n"				     /* 10 */
		     "on connect throttle 2kB/s to-client\n"		     /* 11 */
		     "on connect throttle 1M to-upstream\n"		     /* 12 */
		     "on connect throttle 100 both\n"			     /* 13 */
		     "on data-end truncate\n"				     /* 14 */
		     "on data-end truncate 5 close\n"			     /* 15 */
		     "on reply ehlo strip starttls, 8bitmime,SIZE\n"	     /* 16 */
		     "on starttls fail-tls\n"				     /* 17 */
		     "on connect delay 1h fail-tls\n"			     /* 18 */
		     "on reply rcpt reply 550\n"				     /* 19 */
		     "on rcpt reply 250 2.1.5 \"\"\n"			     /* 20 */
		     "on greeting rewrite 554 \"no\"\n");			     /* 21 */
	assert_int_equal(rules_count(r), 21);
	ru = rules_at(r, 0);
	assert_string_equal(ru->reply, "550-5.1.1 first\r\n550-5.1.1\r\n550 5.1.1 last\r\n");
	assert_int_equal(ru->code, 550);
	assert_string_equal(rules_at(r, 1)->reply, "550 smtptap rule 2\r\n");
	ru = rules_at(r, 2);
	assert_int_equal(ru->actions, RULES_A_REPLY | RULES_A_CLOSE);
	assert_string_equal(ru->reply, "421 bye\r\n");
	ru = rules_at(r, 3);
	assert_int_equal(ru->actions, RULES_A_REWRITE);
	assert_true(ru->wrote_rewrite);
	assert_int_equal(rules_at(r, 4)->delay_ms, 500);
	assert_int_equal(rules_at(r, 4)->actions, RULES_A_DELAY | RULES_A_REPLY);
	assert_int_equal(rules_at(r, 5)->delay_ms, 120000);
	assert_int_equal(rules_at(r, 6)->delay_ms, 7000);
	assert_int_equal(rules_at(r, 7)->actions, RULES_A_STALL);
	assert_int_equal(rules_at(r, 8)->actions, RULES_A_RESET);
	assert_int_equal(rules_at(r, 9)->actions, RULES_A_RESET | RULES_A_REPLY);
	ru = rules_at(r, 10);
	assert_int_equal(ru->throttle_bps, 2048);
	assert_int_equal(ru->throttle_dir, RULES_DIR_TO_CLIENT);
	ru = rules_at(r, 11);
	assert_int_equal(ru->throttle_bps, 1024 * 1024);
	assert_int_equal(ru->throttle_dir, RULES_DIR_TO_UPSTREAM);
	ru = rules_at(r, 12);
	assert_int_equal(ru->throttle_bps, 100);
	assert_int_equal(ru->throttle_dir, RULES_DIR_BOTH);
	assert_int_equal(rules_at(r, 13)->truncate_at, 0);
	assert_int_equal(rules_at(r, 13)->actions, RULES_A_TRUNCATE);
	assert_int_equal(rules_at(r, 14)->truncate_at, 5);
	assert_int_equal(rules_at(r, 14)->actions, RULES_A_TRUNCATE | RULES_A_CLOSE);
	ru = rules_at(r, 15);
	assert_int_equal(ru->nstrip, 3);
	assert_string_equal(ru->strip[0], "STARTTLS");
	assert_string_equal(ru->strip[1], "8BITMIME");
	assert_string_equal(ru->strip[2], "SIZE");
	assert_int_equal(rules_at(r, 16)->actions, RULES_A_FAIL_TLS);
	assert_int_equal(rules_at(r, 17)->delay_ms, 3600000);
	/* reply on the reply trigger is a rewrite */
	assert_int_equal(rules_at(r, 18)->actions, RULES_A_REWRITE);
	assert_false(rules_at(r, 18)->wrote_rewrite);
	assert_string_equal(rules_at(r, 19)->reply, "250 2.1.5\r\n");
	assert_int_equal(rules_at(r, 20)->actions, RULES_A_REWRITE);
	rules_unref(r);
}

static void
test_reply_bounds(void **state)
{
	char text[4096], line[600];
	struct rules *r;
	size_t k;

	(void)state;
	/* 512 bytes with code, separator and CRLF: 506 of text */
	memset(line, 'a', 507);
	line[506] = '\0';
	snprintf(text, sizeof(text), "on rcpt reply 550 \"%s\"", line);
	r = parse_ok(text);
	assert_int_equal(only_rule(r)->reply_len, 512);
	rules_unref(r);
	line[506] = 'a';
	line[507] = '\0';
	snprintf(text, sizeof(text), "on rcpt reply 550 \"%s\"", line);
	assert_error(text, 1, 19, "reply line of 513 bytes, more than 512");
	/* with the enhanced code: 550 5.1.1 TEXT\r\n */
	line[500] = '\0';
	snprintf(text, sizeof(text), "on rcpt reply 550 5.1.1 \"%s\"", line);
	r = parse_ok(text);
	assert_int_equal(only_rule(r)->reply_len, 512);
	rules_unref(r);
	/* the whole reply below RULES_REPLY_MAX */
	line[450] = '\0';
	k = (size_t)snprintf(text, sizeof(text), "on rcpt reply 550");
	k += (size_t)snprintf(text + k, sizeof(text) - k, " \"%s\" \"%s\" \"%s\" \"%s\"", line, line, line, line);
	r = parse_ok(text);
	assert_true(only_rule(r)->reply_len < RULES_REPLY_MAX);
	rules_unref(r);
	snprintf(text + k, sizeof(text) - k, " \"%s\"", line);
	assert_error(text, 1, 1 + (unsigned)k + 1, "reply longer than 2047 bytes");
}

/* Every error, with its line and column. */
static void
test_errors(void **state)
{
	static const struct {
		const char *text;
		unsigned line, col;
		const char *msg;
	} cases[] = {
		/* structure */
		{ "rcpt reply 550", 1, 1, "a rule starts with 'on' (on rcpt ...)" },
		{ "no rcpt reply 550", 1, 1, "a rule starts with 'on', not 'no' (did you mean 'on'?)" },
		{ "\"on\" rcpt reply 550", 1, 1, "a rule starts with 'on', not \"on\"" },
		{ "on", 1, 3, "'on' needs a trigger" },
		{ "on rcptt reply 550", 1, 4, "unknown trigger 'rcptt' (did you mean 'rcpt'?)" },
		{ "on rpct reply 550", 1, 4, "unknown trigger 'rpct' (did you mean 'rcpt'?)" },
		{ "on conect close", 1, 4, "(did you mean 'connect'?)" },
		{ "on frobnicate close", 1, 4, "unknown trigger 'frobnicate' (expected connect" },
		{ "on rcpt", 1, 8, "the rule has no action" },
		{ "on rcpt to ~ \"x\"", 1, 17, "the rule has no action" },
		{ "on rcpt rely 550", 1, 9, "unknown condition or action 'rely' (did you mean 'reply'?)" },
		{ "on rcpt reply 550 clsoe", 1, 19, "(did you mean 'close'?)" },
		{ "on rcpt reply 550 No such user", 1, 19, "the text goes in double quotes" },
		{ "on rcpt \"x\" reply 550", 1, 9, "expected a condition (to, from, session, ...) or an action" },
		{ "on rcpt close to ~ \"x\"", 1, 15, "condition 'to' after an action" },
		{ "on rcpt reply 550 \"x\" ~", 1, 23, "expected an action" },
		/* lexical */
		{ "on rcpt reply 550 \"open", 1, 19, "unterminated string" },
		{ "on rcpt reply 550 \"a\tb\x01\"", 1, 23, "control character 0x01 in a string" },
		{ "on rcpt\x02 reply 550", 1, 8, "control character 0x02" },
		{ "on rcpt \\ reply 550", 1, 9, "unexpected '\\'" },
		{ "on rcpt reply 550 \"a\x7f\"", 1, 21, "control character 0x7f" },
		/* regular expressions */
		{ "on rcpt to \"x\" reply 550", 1, 12, "expected ~, ~*, !~ or !~* after 'to', found \"x\"" },
		{ "on rcpt to = \"x\" reply 550", 1, 12, "expected ~, ~*, !~ or !~* after 'to'" },
		{ "on rcpt to ~ x reply 550", 1, 14, "expected a regular expression in double quotes after '~', found 'x'" },
		{ "on rcpt to ~", 1, 13, "expected a regular expression in double quotes" },
		{ "on rcpt to ~ \"(a\" reply 550", 1, 14, "bad regular expression \"(a\": Unmatched ( or \\(" },
		{ "on rcpt to ~ \"a{2,1}\" reply 550", 1, 14, "bad regular expression" },
		{ "on rcpt to ~ \"(a)\\1\" reply 550", 1, 14, "back-references" },
		{ "on rcpt to ~ \"((a{100}){100}){100}\" reply 550", 1, 14, "too large once its repetitions are unrolled" },
		{ "on rcpt to ~ \"^(a*)*x\" reply 550", 1, 14, "it repeats something that can match nothing (such as" },
		{ "on rcpt to ~ \"a**\" reply 550", 1, 14, "two repetition operators in a row" },
		{ "on rcpt to ~ \"a{300}\" reply 550", 1, 14, "a repetition count above 255" },
		{ "on rcpt to ~ \"a\" to ~ \"b\" reply 550", 1, 18, "'to' given twice in one rule" },
		/* conditions that cannot apply */
		{ "on connect size > 1M reply 554", 1, 12, "size applies to data-end only, not to connect" },
		{ "on rcpt subject ~ \"x\" reply 554", 1, 9, "subject applies to data-end only, not to rcpt" },
		{ "on mail header X ~ \"x\" reply 554", 1, 9, "header applies to data-end only" },
		{ "on ehlo from ~ \"x\" reply 554", 1, 9, "from applies to mail, rcpt, data, bdat, command, data-end and "
						       "replies to them, not to ehlo" },
		{ "on mail to ~ \"x\" reply 554", 1, 9, "to applies to rcpt, data, bdat, command, data-end" },
		{ "on data-end arg ~ \"x\" reply 554", 1, 13, "arg applies to commands, not to data-end" },
		{ "on reply verb ~ \"x\" delay 1s", 1, 10, "verb applies to commands, not to reply" },
		{ "on connect helo ~ \"x\" close", 1, 12, "helo applies to commands, replies to them, data-end and tls" },
		{ "on reply greeting helo ~ \"x\" close", 1, 19, "not to reply greeting" },
		{ "on rcpt mechanism ~ \"x\" reply 554", 1, 9, "mechanism applies to auth, command and replies to auth" },
		{ "on reply mail user ~ \"x\" delay 1s", 1, 15, "not to reply mail" },
		/* condition values */
		{ "on data-end size 5 reply 552", 1, 18, "expected >, >=, <, <= or = after 'size'" },
		{ "on data-end size => 5 reply 552", 1, 18, "expected >, >=, <, <= or = after 'size'" },
		{ "on data-end size > 5T reply 552", 1, 20, "expected a size after '>'" },
		{ "on data-end size > reply 552", 1, 20, "expected a size after '>'" },
		{ "on data-end header \"X\" ~ \"a\" reply 552", 1, 20, "expected a header name after 'header'" },
		{ "on data-end header Subject: ~ \"a\" reply 552", 1, 20, "write it without the colon" },
		{ "on data-end header X-A = \"a\" reply 552", 1, 24, "expected ~, ~*, !~ or !~* after 'X-A'" },
		{ "on rcpt session reply 550", 1, 17, "bad range 'reply'" },
		{ "on rcpt session", 1, 16, "expected a number or range after 'session'" },
		{ "on rcpt session 0 reply 550", 1, 17, "sessions are counted from 1, not 0" },
		{ "on rcpt session 0-2 reply 550", 1, 17, "sessions are counted from 1" },
		{ "on rcpt occurrence 3-1 reply 550", 1, 20, "range '3-1' ends before it starts" },
		{ "on rcpt occurrence 0 reply 550", 1, 20, "occurrences are counted from 1" },
		{ "on rcpt occurrence - reply 550", 1, 20, "bad range '-'" },
		{ "on rcpt session 1-2-3 reply 550", 1, 17, "bad range '1-2-3'" },
		{ "on rcpt session 99999999999999999999 reply 550", 1, 17, "bad range" },
		{ "on rcpt session 1 session 2 reply 550", 1, 19, "'session' given twice" },
		{ "on rcpt client 10.0.0.0/33 reply 550", 1, 16, "an IPv4 prefix runs from 0 to 32" },
		{ "on rcpt client ::/129 reply 550", 1, 16, "an IPv6 prefix runs from 0 to 128" },
		{ "on rcpt client example.com reply 550", 1, 16, "bad address 'example.com' after 'client'" },
		{ "on rcpt client 10.0.0.1/ reply 550", 1, 16, "bad address" },
		{ "on rcpt listener 2525 reply 550", 1, 18, "bad listener '2525'" },
		{ "on rcpt listener localhost:2525 reply 550", 1, 18, "bad listener" },
		{ "on rcpt listener ::1:2525 reply 550", 1, 18, "bad listener" },
		{ "on rcpt listener :0 reply 550", 1, 18, "bad listener" },
		{ "on rcpt listener :65536 reply 550", 1, 18, "bad listener" },
		{ "on rcpt mode proxy reply 550", 1, 14, "expected relay or sink after 'mode'" },
		{ "on rcpt probability 0 reply 550", 1, 21, "a probability is more than 0" },
		{ "on rcpt probability 0% reply 550", 1, 21, "a probability is more than 0" },
		{ "on rcpt probability 1.5 reply 550", 1, 21, "a probability is at most 1" },
		{ "on rcpt probability 101% reply 550", 1, 21, "at most 1" },
		{ "on rcpt probability half reply 550", 1, 21, "bad probability 'half'" },
		{ "on rcpt probability 1e-3 reply 550", 1, 21, "bad probability" },
		{ "on rcpt probability 0.5.5 reply 550", 1, 21, "bad probability" },
		{ "on rcpt probability . reply 550", 1, 21, "bad probability" },
		{ "on rcpt probability 0.5 seed -1 reply 550", 1, 30, "expected a number after 'seed'" },
		{ "on rcpt probability 0.5 seed 18446744073709551616 reply 550", 1, 30, "expected a number after 'seed'" },
		{ "on rcpt seed 3 reply 550", 1, 9, "seed without probability" },
		{ "on rcpt limit 0 reply 550", 1, 15, "expected a number of times after 'limit' (1 or more)" },
		{ "on rcpt limit many reply 550", 1, 15, "expected a number of times" },
		/* actions */
		{ "on rcpt reply", 1, 14, "expected a reply code after 'reply'" },
		{ "on rcpt reply 55 \"x\"", 1, 15, "three digits from 200 to 599" },
		{ "on rcpt reply 199", 1, 15, "three digits from 200 to 599" },
		{ "on rcpt reply 600", 1, 15, "three digits from 200 to 599" },
		{ "on rcpt reply abc", 1, 15, "found 'abc'" },
		{ "on rcpt reply 550 4.1.1 \"x\"", 1, 19, "enhanced status code 4.1.1 does not match reply code 550 (its "
							   "class must be 5)" },
		{ "on rcpt reply 550 3.1.1", 1, 19, "bad enhanced status code" },
		{ "on rcpt reply 550 5.1", 1, 19, "bad enhanced status code '5.1'" },
		{ "on rcpt reply 550 5.1.1000", 1, 19, "bad enhanced status code" },
		{ "on rcpt reply 550 55.1.1", 1, 19, "bad enhanced status code" },
		{ "on data reply 354 \"go ahead\"", 1, 15, "a rule cannot answer 354" },
		{ "on reply rcpt rewrite 334", 1, 23, "a rule cannot answer 334" },
		{ "on rcpt reply 550 rewrite 451", 1, 19, "rewrite cannot be combined with reply (reply answers instead" },
		{ "on rcpt rewrite 451 reply 550", 1, 21, "reply cannot be combined with rewrite" },
		{ "on reply reply 451 rewrite 452", 1, 20, "rewrite cannot be combined with reply" },
		{ "on rcpt reply 550 reply 551", 1, 19, "'reply' given twice in one rule" },
		{ "on reply rewrite 550 rewrite 551", 1, 22, "'rewrite' given twice" },
		{ "on rcpt stall close", 1, 15, "close cannot be combined with stall (stall never answers" },
		{ "on rcpt delay 1s stall", 1, 18, "stall cannot be combined with delay" },
		{ "on rcpt reply 550 stall", 1, 19, "stall cannot be combined with reply" },
		{ "on rcpt reset close", 1, 15, "close cannot be combined with reset (reset already closes" },
		{ "on rcpt close reset", 1, 15, "reset cannot be combined with close" },
		{ "on rcpt truncate reset", 1, 18, "reset cannot be combined with truncate" },
		{ "on ehlo strip STARTTLS close", 1, 24, "close cannot be combined with strip" },
		{ "on ehlo reply 250 strip STARTTLS", 1, 19, "strip cannot be combined with reply" },
		{ "on tls fail-tls close", 1, 17, "close cannot be combined with fail-tls" },
		{ "on rcpt throttle 1k truncate", 1, 21, "truncate cannot be combined with throttle" },
		{ "on connect rewrite 554", 1, 12, "rewrite does not apply to connect: nothing is forwarded there" },
		{ "on tls rewrite 554", 1, 8, "rewrite does not apply to tls" },
		{ "on starttls rewrite 454", 1, 13, "use reply" },
		{ "on tls client reply 454", 1, 15, "reply does not apply to tls client: a TLS handshake has no SMTP reply" },
		{ "on tls truncate", 1, 8, "truncate does not apply to tls" },
		{ "on connect truncate", 1, 12, "use it on greeting" },
		{ "on mail strip STARTTLS", 1, 9, "strip does not apply to mail: it applies to ehlo, lhlo, reply ehlo, reply "
						"lhlo and reply only" },
		{ "on reply rcpt strip STARTTLS", 1, 15, "strip does not apply to reply rcpt" },
		{ "on rcpt fail-tls", 1, 9, "fail-tls does not apply to rcpt: it applies to tls, starttls and connect only" },
		{ "on ehlo strip", 1, 14, "expected EHLO keywords after 'strip'" },
		{ "on ehlo strip STARTTLS,,SIZE", 1, 15, "empty keyword" },
		{ "on ehlo strip START_TLS", 1, 15, "bad EHLO keyword 'START_TLS'" },
		{ "on ehlo strip -X", 1, 15, "bad EHLO keyword '-X'" },
		{ "on rcpt delay", 1, 14, "expected a duration after 'delay'" },
		{ "on rcpt delay 5x", 1, 15, "bad duration '5x'" },
		{ "on rcpt delay 1.5s", 1, 15, "bad duration '1.5s'" },
		{ "on rcpt delay 0s", 1, 15, "out of range" },
		{ "on rcpt delay 61m", 1, 15, "delay '61m' out of range (more than 0, at most 1h)" },
		{ "on rcpt delay 3601", 1, 15, "out of range" },
		{ "on rcpt delay 99999999999999999999ms", 1, 15, "bad duration" },
		{ "on rcpt throttle", 1, 17, "expected a rate after 'throttle'" },
		{ "on rcpt throttle 0", 1, 18, "bad rate '0'" },
		{ "on rcpt throttle 2G", 1, 18, "bad rate '2G'" },
		{ "on rcpt throttle 2kb", 1, 18, "bad rate" },
		{ "on rcpt throttle fast", 1, 18, "bad rate" },
		{ "on rcpt truncate 0", 1, 18, "truncate 0 sends nothing of the reply: use close" },
		{ "on rcpt truncate 262145", 1, 18, "bad byte count" },
		{ "on reply code 250 delay 1s", 1, 15, "" /* valid: checked below not to be here */ },
		{ "on reply code 650 delay 1s", 1, 15, "bad reply code '650' in '650'" },
		{ "on reply code 2x5 delay 1s", 1, 15, "bad reply code '2x5'" },
		{ "on reply code 250,,251 delay 1s", 1, 15, "bad reply code ''" },
		{ "on reply code 2500 delay 1s", 1, 15, "bad reply code" },
		{ "on reply code", 1, 14, "expected reply codes after 'code'" },
		{ "on reply code ~ delay 1s", 1, 15, "expected reply codes after 'code'" },
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (cases[i].msg[0] == '\0') {
			rules_unref(parse_ok(cases[i].text));
			continue;
		}
		assert_error(cases[i].text, cases[i].line, cases[i].col, cases[i].msg);
	}
}

/* Errors are found in every rule, on the right line, and counted. */
static void
test_errors_every_line(void **state)
{
	static const char text[] = "on rcpt reply 550\n"
				   "on rcptt reply 550\n"
				   "# fine\n"
				   "on mail \\\n"
				   "   reply 650\n"
				   "on connect size > 1 rewrite 554\n"
				   "on quit close\n";
	char err[4096], big[8192];
	struct errs e;
	struct rules *r;
	size_t k, n;

	(void)state;
	memset(&e, 0, sizeof(e));
	assert_null(rules_parse_cb(text, strlen(text), 0, errs_add, &e));
	assert_int_equal(e.n, 4);
	assert_int_equal(e.line[0], 2);
	assert_int_equal(e.col[0], 4);
	assert_int_equal(e.line[1], 5); /* the continuation line, at its own column */
	assert_int_equal(e.col[1], 10);
	/* two independent errors in one rule are both reported */
	assert_int_equal(e.line[2], 6);
	assert_int_equal(e.col[2], 12);
	assert_non_null(strstr(e.msg[2], "size applies to data-end only"));
	assert_int_equal(e.line[3], 6);
	assert_int_equal(e.col[3], 21);
	assert_non_null(strstr(e.msg[3], "rewrite does not apply to connect"));

	assert_null(rules_parse("rules.conf", text, strlen(text), 0, err, sizeof(err)));
	assert_non_null(strstr(err, "rules.conf:2:4: unknown trigger 'rcptt' (did you mean 'rcpt'?)\n"));
	assert_non_null(strstr(err, "\nrules.conf:5:10: expected a reply code"));
	assert_null(strchr(err + strlen(err) - 1, '\n'));

	/* at most 20, then how many more */
	for (k = 0, n = 0; k < 25; k++)
		n += (size_t)snprintf(big + n, sizeof(big) - n, "on rcpt reply %zu\n", 700 + k);
	assert_null(rules_parse("f", big, n, 0, err, sizeof(err)));
	for (k = 0, n = 0; err[k] != '\0'; k++)
		n += err[k] == '\n';
	assert_int_equal(n, 20);
	assert_non_null(strstr(err, "f:20:15: expected a reply code"));
	assert_null(strstr(err, "f:21:"));
	assert_non_null(strstr(err, "\n... and 5 more errors"));

	/* a small err buffer is cut, NUL-terminated */
	assert_null(rules_parse("f", big, strlen(big), 0, err, 10));
	assert_true(strlen(err) < 10);
	assert_null(rules_parse("f", big, strlen(big), 0, NULL, 0));

	/* the error callback may be NULL */
	assert_null(rules_parse_cb(big, strlen(big), 0, NULL, NULL));
	r = rules_parse_cb("on quit close", 13, 0, NULL, NULL);
	assert_non_null(r);
	rules_unref(r);
}

static void
test_bounds(void **state)
{
	char *text;
	size_t n, k;
	struct rules *r;

	(void)state;
	text = malloc(RULES_MAX * 24 + 100000);
	assert_non_null(text);

	/* a line of 8192 bytes is fine, 8193 is not */
	n = (size_t)sprintf(text, "on rcpt reply 550 \"");
	memset(text + n, 'a', RULES_LINE_MAX - n - 1);
	n = RULES_LINE_MAX - 1;
	text[n++] = '"';
	text[n] = '\0';
	/* (the reply line itself is too long, which is another error) */
	assert_error(text, 1, 19, "reply line of");
	text[n++] = ' ';
	text[n] = '\0';
	assert_error(text, 1, RULES_LINE_MAX + 1, "line longer than 8192 bytes");

	/* words per rule */
	n = (size_t)sprintf(text, "on data-end");
	for (k = 0; k < RULES_TOKENS_MAX; k++)
		n += (size_t)sprintf(text + n, " size");
	assert_error(text, 1, 13 + 5 * (RULES_TOKENS_MAX - 2), "more than 512 words in one rule");

	/* a rule over several lines is bounded as a whole */
	n = 0;
	for (k = 0; k < 20; k++) {
		n += (size_t)sprintf(text + n, "on rcpt to ~ \"");
		memset(text + n, 'b', 4000);
		n += 4000;
		n += (size_t)sprintf(text + n, "\" \\\n");
	}
	n += (size_t)sprintf(text + n, "reply 550\n");
	assert_error(text, 17, 1, "rule longer than 65536 bytes");

	/* a regular expression is at most 1024 bytes */
	n = (size_t)sprintf(text, "on rcpt to ~ \"");
	memset(text + n, 'c', 1025);
	n += 1025;
	sprintf(text + n, "\" reply 550");
	assert_error(text, 1, 14, "regular expression longer than 1024 bytes");

	/* 10000 rules are fine, 10001 are not */
	n = 0;
	for (k = 0; k < RULES_MAX; k++)
		n += (size_t)sprintf(text + n, "on noop delay 1\n");
	r = parse_ok(text);
	assert_int_equal(rules_count(r), RULES_MAX);
	rules_unref(r);
	sprintf(text + n, "on noop delay 1\n");
	assert_error(text, RULES_MAX + 1, 1, "more than 10000 rules in one file");

	/* the whole file's regular expressions: at most 50000 positions
	 * unrolled, said once, at the one that crosses it */
	n = 0;
	for (k = 0; k < 30; k++)
		n += (size_t)sprintf(text + n, "on rcpt to ~ \"(x{97}){20}\" reply 550\n");
	{
		struct errs e;

		memset(&e, 0, sizeof(e));
		assert_null(rules_parse_cb(text, n, 0, errs_add, &e));
		assert_int_equal(e.n, 1);
		assert_int_equal(e.line[0], 26);
		assert_int_equal(e.col[0], 14);
		assert_non_null(strstr(e.msg[0], "the file's regular expressions add up to more than 50000 positions"));
	}

	/* header conditions per rule */
	n = (size_t)sprintf(text, "on data-end");
	for (k = 0; k <= RULES_HEADERS_MAX; k++)
		n += (size_t)sprintf(text + n, " header X ~ \"a\"");
	sprintf(text + n, " reply 550");
	assert_error(text, 1, 13 + 15 * RULES_HEADERS_MAX, "more than 16 header conditions");

	/* keywords to strip */
	n = (size_t)sprintf(text, "on ehlo strip A");
	for (k = 0; k < RULES_STRIP_MAX; k++)
		n += (size_t)sprintf(text + n, ",B%zu", k);
	assert_error(text, 1, 15, "more than 16 keywords to strip");
	free(text);
}

/* The normalised form parses back to itself. */
static void
test_format_roundtrip(void **state)
{
	static const struct {
		const char *in, *out;
	} cases[] = {
		{ "on rcpt to ~ \"^bad@\" reply 550 5.1.1 \"No such user\"",
		  "on rcpt to ~ \"^bad@\" reply 550 5.1.1 \"No such user\"" },
		{ "ON MAIL Session 1-2 REPLY 451 4.3.0 \"Try again later\"",
		  "on mail session 1-2 reply 451 4.3.0 \"Try again later\"" },
		{ "on data-end probability 25% seed 7 reply 452", "on data-end probability 0.25 seed 7 reply 452 \"smtptap rule 1\"" },
		{ "on ehlo strip starttls,pipelining", "on ehlo strip STARTTLS,PIPELINING" },
		{ "on connect delay 5000ms", "on connect delay 5s" },
		{ "on connect delay 120", "on connect delay 2m" },
		{ "on connect delay 1500ms throttle 2kB/s to-client", "on connect delay 1500ms throttle 2k to-client" },
		{ "on eom rewrite 451 \"a\" \"\" \"b\" close", "on data-end rewrite 451 \"a\" \"\" \"b\" close" },
		{ "on reply rcpt code 25X, 421 reply 451", "on reply rcpt code 25x,421 reply 451 \"smtptap rule 1\"" },
		{ "on rcpt occurrence -3 session 5- reply 451 \"x\"",
		  "on rcpt session 5- occurrence 1-3 reply 451 \"x\"" },
		{ "on rcpt to !~* \"a\\\"b\\\\c\\.d\" reply 550 \"q\\\"\"",
		  "on rcpt to !~* \"a\\\"b\\c\\.d\" reply 550 \"q\\\"\"" },
		{ "on data-end header subject ~ \"x\" size >= 10485760 limit 3 truncate 7",
		  "on data-end header subject ~ \"x\" size >= 10M limit 3 truncate 7" },
		{ "on rcpt client ::ffff:10.0.0.0/104 listener [::1]:25 mode sink reset",
		  "on rcpt client 10.0.0.0/8 listener [::1]:25 mode sink reset" },
		{ "on rcpt client 2001:db8::1 listener 0.0.0.0:25 stall",
		  "on rcpt client [2001:db8::1]/128 listener 0.0.0.0:25 stall" },
		{ "on tls upstream delay 1h fail-tls", "on tls upstream delay 1h fail-tls" },
		{ "on noop probability 33.3333333333333333333333333% delay 1s",
		  "on noop probability 0.333333333333333333333333333 delay 1s" },
		{ "on noop probability 0.00000000000000000000000000000000000000000001 delay 1s",
		  "on noop probability 0.00000000000000000000000000000000000000000001 delay 1s" },
		{ "on noop probability 000.50% delay 1s", "on noop probability 0.005 delay 1s" },
		{ "on noop probability 100% delay 1s", "on noop probability 1 delay 1s" },
		{ "on noop probability 1.000 delay 1s", "on noop probability 1 delay 1s" },
		{ "on noop probability .5 delay 1s", "on noop probability 0.5 delay 1s" },
		{ "on noop probability 50.% delay 1s", "on noop probability 0.5 delay 1s" },
		{ "on any verb ~ \"X\" reply 502", "on command verb ~ \"X\" reply 502 \"smtptap rule 1\"" },
		{ "on reply helo ~ \"x\" delay 1s", "on reply helo ~ \"x\" delay 1s" },
		{ "on rcpt reply 550 \"a\\\\\" \"\"", "on rcpt reply 550 \"a\\\\\" \"\"" },
	};
	char a[4096], b[4096];
	struct rules *r;
	size_t i, n;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		r = parse_ok(cases[i].in);
		n = rule_format(only_rule(r), a, sizeof(a));
		assert_int_equal(n, strlen(a));
		if (strcmp(a, cases[i].out) != 0)
			fail_msg("format of %s\n got %s\nwant %s", cases[i].in, a, cases[i].out);
		rules_unref(r);
		r = parse_ok(a);
		rule_format(only_rule(r), b, sizeof(b));
		assert_string_equal(a, b);
		rules_unref(r);
	}
	/* snprintf-style: the length needed, cut output NUL-terminated */
	r = parse_ok("on rcpt reply 550 \"0123456789\"");
	n = rule_format(only_rule(r), a, 10);
	assert_int_equal(n, strlen("on rcpt reply 550 \"0123456789\""));
	assert_string_equal(a, "on rcpt r");
	assert_int_equal(rule_format(only_rule(r), NULL, 0), n);
	rules_unref(r);
}

static void
test_load(void **state)
{
	char dir[] = "/tmp/test_rules.XXXXXX", path[128], err[512];
	struct rules *r;
	char *text;
	size_t len;
	FILE *f;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/missing.rules", dir);
	assert_null(rules_load(path, 1, err, sizeof(err)));
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_string_equal(err + strlen(path), ": No such file or directory");
	assert_null(rules_load(dir, 1, err, sizeof(err)));
	assert_non_null(strstr(err, ": Is a directory"));

	snprintf(path, sizeof(path), "%s/ok.rules", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("on rcpt reply 550\non mail reply 451\n", f);
	fclose(f);
	r = rules_load(path, 9, err, sizeof(err));
	assert_non_null(r);
	assert_int_equal(rules_count(r), 2);
	assert_int_equal(rules_seed(r), 9);
	rules_unref(r);
	assert_int_equal(rules_read_file(path, &text, &len, err, sizeof(err)), 0);
	assert_int_equal(len, 36);
	assert_int_equal(text[len], '\0');
	free(text);

	f = fopen(path, "w");
	assert_non_null(f);
	fputs("on rcpt reply 550\non mail reply 4510\n", f);
	fclose(f);
	assert_null(rules_load(path, 9, err, sizeof(err)));
	assert_true(strncmp(err, path, strlen(path)) == 0);
	assert_string_equal(err + strlen(path), ":2:15: expected a reply code after 'reply' (three digits from 200 to "
						"599), found '4510'");
	unlink(path);
	rmdir(dir);
}

/* ------------------------------------------------------------------------
 * Decisions.
 */

static void
test_decide_triggers(void **state)
{
	static const char text[] = "on connect delay 1s\n"		     /* 1 */
				   "on greeting rewrite 554\n"	     /* 2 */
				   "on rcpt reply 550\n"		     /* 3 */
				   "on data-end reply 552\n"		     /* 4 */
				   "on tls client fail-tls\n"		     /* 5 */
				   "on tls fail-tls\n"		     /* 6 */
				   "on reply rcpt code 250 rewrite 451\n" /* 7 */
				   "on reply greeting rewrite 421\n"	     /* 8 */
				   "on reply data-end code 2xx rewrite 451\n" /* 9 */
				   "on reply code 5xx rewrite 421\n"	     /* 10 */
				   "on command reply 502\n";		     /* 11 */
	struct rules *r = parse_ok(text);
	struct rules_session *rs = rules_session_new(r);
	struct rules_facts f = facts(1);
	struct rules_unit u;

	(void)state;
	u = unit_of(RULES_ON_CONNECT);
	assert_int_equal(fire(r, rs, &u, &f), 1);
	assert_int_equal(dec.actions, RULES_A_DELAY);
	assert_int_equal(dec.delay_ms, 1000);
	u = unit_of(RULES_ON_GREETING);
	assert_int_equal(fire(r, rs, &u, &f), 2);
	u = unit_cmd(SMTP_VERB_RCPT, "RCPT", "TO:<a@b>");
	assert_int_equal(fire(r, rs, &u, &f), 3);
	u = unit_cmd(SMTP_VERB_MAIL, "MAIL", "FROM:<a@b>");
	assert_int_equal(fire(r, rs, &u, &f), 11);
	u = unit_cmd(SMTP_VERB_UNKNOWN, "XCLIENT", "NAME=x");
	assert_int_equal(fire(r, rs, &u, &f), 11);
	u = unit_of(RULES_ON_DATA_END);
	assert_int_equal(fire(r, rs, &u, &f), 4);
	u = unit_of(RULES_ON_TLS);
	u.leg = RULES_LEG_CLIENT;
	assert_int_equal(fire(r, rs, &u, &f), 5);
	u.leg = RULES_LEG_UPSTREAM;
	assert_int_equal(fire(r, rs, &u, &f), 6);
	u = unit_reply(RULES_ANSWERS_COMMAND, SMTP_VERB_RCPT, 250);
	assert_int_equal(fire(r, rs, &u, &f), 7);
	u = unit_reply(RULES_ANSWERS_COMMAND, SMTP_VERB_RCPT, 251);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u = unit_reply(RULES_ANSWERS_COMMAND, SMTP_VERB_RCPT, 550);
	assert_int_equal(fire(r, rs, &u, &f), 10);
	u = unit_reply(RULES_ANSWERS_GREETING, SMTP_VERB_UNKNOWN, 220);
	assert_int_equal(fire(r, rs, &u, &f), 8);
	u = unit_reply(RULES_ANSWERS_DATA_END, SMTP_VERB_UNKNOWN, 250);
	assert_int_equal(fire(r, rs, &u, &f), 9);
	u = unit_reply(RULES_ANSWERS_DATA_END, SMTP_VERB_UNKNOWN, 451);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u = unit_reply(RULES_ANSWERS_COMMAND, SMTP_VERB_MAIL, 0); /* malformed reply: no code */
	assert_int_equal(fire(r, rs, &u, &f), 0);
	/* out-of-range enums never fire */
	u = unit_of((enum rules_trigger)77);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u = unit_cmd((enum smtp_verb)99, "X", NULL);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u = unit_of(RULES_ON_TLS);
	u.leg = (enum rules_leg)5;
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u = unit_reply((enum rules_answer)9, SMTP_VERB_RCPT, 250);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	rules_session_free(rs);
	rules_unref(r);
}

static void
test_decide_fields(void **state)
{
	static const char *const rcpts[] = { "a@x.org", "bad@y.org" };
	static const char *const one[] = { "good@y.org" };
	struct rules_facts f = facts(1);
	struct rules_unit u;

	(void)state;
	/* arg, verb */
	u = unit_cmd(SMTP_VERB_RCPT, "rcpt", "TO:<bad@example.com> NOTIFY=NEVER");
	assert_int_equal(fire1("on rcpt arg ~ \"NOTIFY=NEVER$\" reply 550", &u, &f), 1);
	assert_int_equal(fire1("on rcpt arg ~ \"notify\" reply 550", &u, &f), 0);
	assert_int_equal(fire1("on rcpt arg ~* \"notify\" reply 550", &u, &f), 1);
	assert_int_equal(fire1("on rcpt arg !~ \"notify\" reply 550", &u, &f), 1);
	assert_int_equal(fire1("on rcpt arg !~* \"notify\" reply 550", &u, &f), 0);
	assert_int_equal(fire1("on rcpt verb ~ \"^rcpt$\" reply 550", &u, &f), 1);
	assert_int_equal(fire1("on rcpt verb ~ \"^RCPT$\" reply 550", &u, &f), 0);
	u.verb_text = NULL; /* a known verb without its text: the canonical name */
	assert_int_equal(fire1("on rcpt verb ~ \"^RCPT$\" reply 550", &u, &f), 1);
	u = unit_cmd(SMTP_VERB_NOOP, "NOOP", NULL); /* no argument: not known */
	assert_int_equal(fire1("on noop arg ~ \"\" reply 250", &u, &f), 0);
	assert_int_equal(fire1("on noop arg !~ \"x\" reply 250", &u, &f), 0);
	u.arg = "";
	assert_int_equal(fire1("on noop arg ~ \"^$\" reply 250", &u, &f), 1);

	/* a value longer than SMTP_LINE_MAX is matched on its first
	 * SMTP_LINE_MAX bytes, by regexec and literal search alike */
	{
		char *big = malloc(SMTP_LINE_MAX + 100);

		assert_non_null(big);
		memset(big, 'a', SMTP_LINE_MAX + 99);
		big[SMTP_LINE_MAX + 99] = '\0';
		big[SMTP_LINE_MAX + 50] = 'z';
		u = unit_cmd(SMTP_VERB_AUTH, "AUTH", big);
		assert_int_equal(fire1("on auth arg ~ \"^a+$\" reply 535", &u, &f), 1);
		assert_int_equal(fire1("on auth arg ~ \"a(b|z)\" reply 535", &u, &f), 0);
		assert_int_equal(fire1("on auth arg ~ \"az\" reply 535", &u, &f), 0);
		assert_int_equal(fire1("on auth arg ~ \"a$\" reply 535", &u, &f), 1);
		big[SMTP_LINE_MAX - 1] = 'y';
		assert_int_equal(fire1("on auth arg ~ \"ay\" reply 535", &u, &f), 1);
		assert_int_equal(fire1("on auth arg ~ \"y$\" reply 535", &u, &f), 1);
		assert_int_equal(fire1("on auth arg ~ \"y(a|b)\" reply 535", &u, &f), 0);
		free(big);
	}

	/* from: the null sender is known and empty */
	u = unit_cmd(SMTP_VERB_MAIL, "MAIL", "FROM:<>");
	assert_int_equal(fire1("on mail from ~ \"^$\" reply 550", &u, &f), 0);
	u.mail_from = "";
	u.mail_from_len = 0;
	assert_int_equal(fire1("on mail from ~ \"^$\" reply 550", &u, &f), 1);
	u.mail_from = "Alice@Example.COM";
	u.mail_from_len = strlen(u.mail_from);
	assert_int_equal(fire1("on mail from ~* \"@example\\.com$\" reply 550", &u, &f), 1);
	assert_int_equal(fire1("on mail from ~ \"@example\\.com$\" reply 550", &u, &f), 0);
	u.mail_from_len = 5; /* the length bounds the string */
	assert_int_equal(fire1("on mail from ~ \"^Alice$\" reply 550", &u, &f), 1);

	/* to: any recipient; negated, there is one and none matches */
	u = unit_cmd(SMTP_VERB_DATA, "DATA", NULL);
	assert_int_equal(fire1("on data to ~ \"^bad@\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data to !~ \"^bad@\" reply 554", &u, &f), 0);
	u.rcpts = rcpts;
	u.nrcpts = 2;
	assert_int_equal(fire1("on data to ~ \"^bad@\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data to !~ \"^bad@\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data to !~ \"^nobody@\" reply 554", &u, &f), 1);
	u = unit_cmd(SMTP_VERB_RCPT, "RCPT", "TO:<good@y.org>");
	u.rcpts = one;
	u.nrcpts = 1;
	assert_int_equal(fire1("on rcpt to ~ \"^bad@\" reply 550", &u, &f), 0);
	assert_int_equal(fire1("on rcpt to !~ \"^bad@\" reply 550", &u, &f), 1);

	/* helo, mechanism, user */
	u = unit_cmd(SMTP_VERB_EHLO, "EHLO", "client.example");
	assert_int_equal(fire1("on ehlo helo ~ \"^client\\.\" reply 550", &u, &f), 0);
	u.helo = "client.example";
	assert_int_equal(fire1("on ehlo helo ~ \"^client\\.\" reply 550", &u, &f), 1);
	assert_int_equal(fire1("on ehlo helo !~ \"^client\\.\" reply 550", &u, &f), 0);
	u = unit_cmd(SMTP_VERB_AUTH, "AUTH", "PLAIN AGJvYgBz");
	u.auth_mech = "PLAIN";
	assert_int_equal(fire1("on auth mechanism ~* \"^plain$\" reply 535", &u, &f), 1);
	assert_int_equal(fire1("on auth user ~ \"bob\" reply 535", &u, &f), 0);
	assert_int_equal(fire1("on auth user !~ \"bob\" reply 535", &u, &f), 0);
	u.auth_user = "bob";
	assert_int_equal(fire1("on auth user ~ \"^bob$\" reply 535", &u, &f), 1);
	/* all conditions must hold */
	assert_int_equal(fire1("on auth user ~ \"^bob$\" mechanism ~ \"LOGIN\" reply 535", &u, &f), 0);
	assert_int_equal(fire1("on command user ~ \"^bob$\" mechanism ~ \"PLAIN\" reply 535", &u, &f), 1);
}

static void
test_decide_headers(void **state)
{
	static const char hdrs[] = "Received: from x\r\n"
				   "\tby y; Mon, 1 Jan 2024\r\n"
				   "garbage line without a colon\r\n"
				   "Subject:  Hello\r\n"
				   "  folded   world  \r\n"
				   "X-Test: one\r\n"
				   "x-test : two\n"
				   "X-Bin: a\0b\r\n"
				   "X-Empty:\r\n"
				   "\r\n"
				   "X-Body: not a header\r\n";
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_of(RULES_ON_DATA_END);

	(void)state;
	assert_int_equal(fire1("on data-end subject ~ \".\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data-end subject !~ \".\" reply 554", &u, &f), 0);
	u.headers = hdrs;
	u.headers_len = sizeof(hdrs) - 1;
	/* unfolded: the line break goes, the blanks stay; trimmed at both ends */
	assert_int_equal(fire1("on data-end subject ~ \"^Hello  folded   world$\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end header SUBJECT ~ \"^Hello  folded   world$\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end subject !~ \"Hello\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data-end subject !~ \"Goodbye\" reply 554", &u, &f), 1);
	/* any of several fields; the name case-insensitive, "name :" too */
	assert_int_equal(fire1("on data-end header X-Test ~ \"^two$\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end header x-TEST ~ \"^one$\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end header X-Test !~ \"^(one|two)$\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data-end header X-Test !~ \"^three$\" reply 554", &u, &f), 1);
	/* a field that is not there matches nothing, negated either */
	assert_int_equal(fire1("on data-end header X-Missing ~ \"\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data-end header X-Missing !~ \"x\" reply 554", &u, &f), 0);
	/* the header block ends at the empty line */
	assert_int_equal(fire1("on data-end header X-Body ~ \"\" reply 554", &u, &f), 0);
	assert_int_equal(fire1("on data-end header Received ~ \"^from x\tby y;\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end header X-Empty ~ \"^$\" reply 554", &u, &f), 1);
	/* a NUL byte does not end the value */
	assert_int_equal(fire1("on data-end header X-Bin ~ \"b$\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end header X-Bin ~ \"^a\" reply 554", &u, &f), 1);
	/* several header conditions: all must hold */
	assert_int_equal(fire1("on data-end header X-Test ~ \"one\" header Subject ~ \"Hello\" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end header X-Test ~ \"one\" header Subject ~ \"Bye\" reply 554", &u, &f), 0);
	/* a block with no final line break, no colon, only garbage */
	u.headers = "Subject: tail";
	u.headers_len = 13;
	assert_int_equal(fire1("on data-end subject ~ \"^tail$\" reply 554", &u, &f), 1);
	u.headers = "\r\n\r\nSubject: x";
	u.headers_len = 15;
	assert_int_equal(fire1("on data-end subject ~ \"\" reply 554", &u, &f), 0);
	u.headers = "  Subject: x\r\n:\r\n\t\r\n";
	u.headers_len = strlen(u.headers);
	assert_int_equal(fire1("on data-end subject ~ \"\" reply 554", &u, &f), 0);
}

static void
test_decide_long_folded_header(void **state)
{
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_of(RULES_ON_DATA_END);
	char *h = malloc(3 * RULES_UNFOLD_MAX);
	size_t n = 0, k;

	(void)state;
	assert_non_null(h);
	n += (size_t)sprintf(h, "Subject: start");
	for (k = 0; n < 2 * RULES_UNFOLD_MAX; k++)
		n += (size_t)sprintf(h + n, "\r\n fold%zu", k);
	n += (size_t)sprintf(h + n, "\r\n END\r\n\r\n");
	u.headers = h;
	u.headers_len = n;
	/* matched on its first RULES_UNFOLD_MAX bytes */
	assert_int_equal(fire1("on data-end subject ~ \"^start fold0 fold1 \" reply 554", &u, &f), 1);
	assert_int_equal(fire1("on data-end subject ~ \"END$\" reply 554", &u, &f), 0);
	free(h);
}

static void
test_decide_size_session_mode_client_listener(void **state)
{
	struct rules_facts f = facts(3);
	struct rules_unit u = unit_of(RULES_ON_DATA_END);

	(void)state;
	/* size: not known, then each comparison */
	assert_int_equal(fire1("on data-end size < 1G reply 552", &u, &f), 0);
	u.has_size = true;
	u.size = 1024 * 1024;
	assert_int_equal(fire1("on data-end size > 1M reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end size >= 1M reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end size = 1048576 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end size <= 1023k reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end size < 1025K reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end size > 1048575 reply 552", &u, &f), 1);

	/* session ranges */
	assert_int_equal(fire1("on data-end session 3 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end session 1-2 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end session 2-4 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end session 3- reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end session 4- reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end session -3 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end session -2 reply 552", &u, &f), 0);

	/* mode */
	assert_int_equal(fire1("on data-end mode relay reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end mode sink reply 552", &u, &f), 0);
	f.sink = true;
	assert_int_equal(fire1("on data-end mode sink reply 552", &u, &f), 1);

	/* client: v4, v6, IPv4-mapped v6 matching v4 rules, unknown */
	assert_int_equal(fire1("on data-end client 127.0.0.1 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 127.0.0.0/8 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 127.0.0.2 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end client 126.0.0.0/8 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end client 127.0.0.1/31 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 0.0.0.0/0 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client ::/0 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end client 127.0.0.100/25 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 127.0.0.255/25 reply 552", &u, &f), 0);
	f.client = (const struct sockaddr *)&client6;
	assert_int_equal(fire1("on data-end client 2001:db8::/32 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client [2001:db8::5] reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 2001:db8::4/127 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 2001:db8::6/127 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end client 2001:db9::/32 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end client 0.0.0.0/0 reply 552", &u, &f), 0);
	inet_pton(AF_INET6, "::ffff:192.0.2.9", &client6.sin6_addr);
	assert_int_equal(fire1("on data-end client 192.0.2.0/24 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client ::ffff:192.0.2.9 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end client 2001:db8::/32 reply 552", &u, &f), 0);
	inet_pton(AF_INET6, "2001:db8::5", &client6.sin6_addr);
	f.client = NULL;
	assert_int_equal(fire1("on data-end client 0.0.0.0/0 reply 552", &u, &f), 0);

	/* listener */
	f = facts(3);
	assert_int_equal(fire1("on data-end listener :2525 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end listener :2526 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end listener 127.0.0.1:2525 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end listener 127.0.0.2:2525 reply 552", &u, &f), 0);
	assert_int_equal(fire1("on data-end listener [::ffff:127.0.0.1]:2525 reply 552", &u, &f), 1);
	f.listener = "[::1]:2465";
	assert_int_equal(fire1("on data-end listener [::1]:2465 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end listener [0:0::1]:2465 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end listener :2465 reply 552", &u, &f), 1);
	assert_int_equal(fire1("on data-end listener 127.0.0.1:2465 reply 552", &u, &f), 0);
	f.listener = "garbage";
	assert_int_equal(fire1("on data-end listener :2465 reply 552", &u, &f), 0);
	f.listener = "host:99999999999999999999";
	assert_int_equal(fire1("on data-end listener :2465 reply 552", &u, &f), 0);
	f.listener = NULL;
	assert_int_equal(fire1("on data-end listener :2465 reply 552", &u, &f), 0);
}

/* The first rule whose trigger and conditions match decides. */
static void
test_first_match_and_limit(void **state)
{
	static const char text[] = "on rcpt to ~ \"^vip@\" delay 1s\n"	      /* 1 */
				   "on rcpt to ~ \"^bad@\" limit 2 reply 550\n" /* 2 */
				   "on rcpt reply 451\n"			      /* 3 */
				   "on rcpt reply 452\n";			      /* 4 */
	static const char *const vip[] = { "vip@x" }, *const bad[] = { "bad@x" }, *const other[] = { "o@x" };
	struct rules *r = parse_ok(text);
	struct rules_session *rs = rules_session_new(r), *rs2 = rules_session_new(r);
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_cmd(SMTP_VERB_RCPT, "RCPT", "x");

	(void)state;
	u.nrcpts = 1;
	u.rcpts = vip;
	assert_int_equal(fire(r, rs, &u, &f), 1);
	u.rcpts = bad;
	assert_int_equal(fire(r, rs, &u, &f), 2);
	assert_int_equal(dec.actions, RULES_A_REPLY);
	assert_string_equal(dec.reply, "550 smtptap rule 2\r\n");
	assert_int_equal(dec.reply_len, strlen(dec.reply));
	assert_int_equal(dec.code, 550);
	/* the limit is the set's, across sessions */
	assert_int_equal(fire(r, rs2, &u, &f), 2);
	assert_int_equal(fire(r, rs, &u, &f), 3);
	assert_int_equal(fire(r, rs2, &u, &f), 3);
	u.rcpts = other;
	assert_int_equal(fire(r, rs, &u, &f), 3);
	assert_int_equal(dec.code, 451);
	rules_session_free(rs);
	rules_session_free(rs2);
	rules_unref(r);

	/* a limit counts only when the rule fires: the probability draw
	 * failing, or an earlier rule deciding, does not use it up */
	r = parse_ok("on rcpt occurrence 1 reply 421\n"
		     "on rcpt limit 1 reply 550\n");
	rs = rules_session_new(r);
	assert_int_equal(fire(r, rs, &u, &f), 1);
	assert_int_equal(fire(r, rs, &u, &f), 2);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	rules_session_free(rs);
	rules_unref(r);
}

static void
test_occurrence(void **state)
{
	static const char *const x[] = { "a@x" }, *const y[] = { "a@y" };
	struct rules *r;
	struct rules_session *rs, *rs2;
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_cmd(SMTP_VERB_RCPT, "RCPT", "x");
	unsigned got[8];
	size_t k;

	(void)state;
	/* the second RCPT to @x in the session, whatever came between */
	r = parse_ok("on rcpt to ~ \"@x$\" occurrence 2 reply 550\n");
	rs = rules_session_new(r);
	u.nrcpts = 1;
	u.rcpts = x;
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u.rcpts = y;
	assert_int_equal(fire(r, rs, &u, &f), 0);
	u.rcpts = x;
	assert_int_equal(fire(r, rs, &u, &f), 1);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	/* per session */
	rs2 = rules_session_new(r);
	assert_int_equal(fire(r, rs2, &u, &f), 0);
	assert_int_equal(fire(r, rs2, &u, &f), 1);
	rules_session_free(rs);
	rules_session_free(rs2);
	rules_unref(r);

	/* counted for every rule, even when one above it fired */
	r = parse_ok("on rcpt occurrence 1 reply 451\n"
		     "on rcpt occurrence 2 reply 452\n"
		     "on rcpt occurrence 3- reply 453\n"
		     "on mail occurrence 2 reply 454\n");
	rs = rules_session_new(r);
	for (k = 0; k < 4; k++)
		got[k] = fire(r, rs, &u, &f);
	assert_int_equal(got[0], 1);
	assert_int_equal(got[1], 2);
	assert_int_equal(got[2], 3);
	assert_int_equal(got[3], 3);
	u = unit_cmd(SMTP_VERB_MAIL, "MAIL", "x");
	assert_int_equal(fire(r, rs, &u, &f), 0);
	assert_int_equal(fire(r, rs, &u, &f), 4);
	rules_session_free(rs);
	rules_unref(r);

	/* ... and counted even when the draw or the limit stop it */
	r = parse_ok("on noop occurrence 2-3 limit 1 reply 250 \"x\"\n");
	rs = rules_session_new(r);
	u = unit_cmd(SMTP_VERB_NOOP, "NOOP", NULL);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	assert_int_equal(fire(r, rs, &u, &f), 1);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	assert_int_equal(fire(r, rs, &u, &f), 0);
	rules_session_free(rs);
	rules_unref(r);
}

/* Which noops of sessions 1..nsess fire, evaluated session after session
 * (interleave false) or round-robin (true). */
static void
probability_pattern(const char *text, uint64_t seed, bool interleave, uint8_t out[8][64])
{
	struct rules *r = rules_parse("p", text, strlen(text), seed, NULL, 0);
	struct rules_session *rs[8];
	struct rules_facts f;
	struct rules_unit u = unit_cmd(SMTP_VERB_NOOP, "NOOP", NULL), m = unit_cmd(SMTP_VERB_MAIL, "MAIL", "x");
	size_t s, k;

	assert_non_null(r);
	for (s = 0; s < 8; s++)
		assert_non_null(rs[s] = rules_session_new(r));
	if (!interleave) {
		for (s = 0; s < 8; s++) {
			f = facts(s + 1);
			for (k = 0; k < 64; k++) {
				out[s][k] = (uint8_t)fire(r, rs[s], &u, &f);
				/* other units between do not disturb the noop draws */
				fire(r, rs[s], &m, &f);
			}
		}
	} else {
		for (k = 0; k < 64; k++)
			for (s = 8; s-- > 0;) {
				f = facts(s + 1);
				out[s][k] = (uint8_t)fire(r, rs[s], &u, &f);
			}
	}
	for (s = 0; s < 8; s++)
		rules_session_free(rs[s]);
	rules_unref(r);
}

static void
test_probability(void **state)
{
	static uint8_t a[8][64], b[8][64], c[8][64];
	struct rules *r;
	struct rules_session *rs;
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_cmd(SMTP_VERB_NOOP, "NOOP", NULL);
	size_t s, k, fired = 0;

	(void)state;
	/* same seed: the same faults, whatever the order sessions run in */
	probability_pattern("on noop probability 0.5 reply 250 \"x\"", 7, false, a);
	probability_pattern("on noop probability 0.5 reply 250 \"x\"", 7, true, b);
	assert_memory_equal(a, b, sizeof(a));
	/* the rule's own seed wins over the set's */
	probability_pattern("on noop probability 0.5 seed 7 reply 250 \"x\"", 1234, true, c);
	assert_memory_equal(a, c, sizeof(a));
	/* another seed, other faults */
	probability_pattern("on noop probability 0.5 reply 250 \"x\"", 8, false, b);
	assert_memory_not_equal(a, b, sizeof(a));
	/* sessions differ from each other, and some fire, some not */
	assert_memory_not_equal(a[0], a[1], sizeof(a[0]));
	for (s = 0; s < 8; s++)
		for (k = 0; k < 64; k++)
			fired += a[s][k] != 0;
	assert_true(fired > 128 && fired < 384);

	/* the proportion is P (deterministic: no flakiness) */
	r = parse_ok("on noop probability 25% reply 250 \"x\"");
	rs = rules_session_new(r);
	for (fired = 0, k = 0; k < 20000; k++)
		fired += fire(r, rs, &u, &f) != 0;
	assert_true(fired > 4600 && fired < 5400);
	/* decision.seed says which seed drew */
	assert_int_equal(dec.seed, 42);
	rules_session_free(rs);
	rules_unref(r);

	r = parse_ok("on noop probability 1 seed 99 reply 250\non quit close");
	rs = rules_session_new(r);
	assert_int_equal(fire(r, rs, &u, &f), 1);
	assert_int_equal(dec.seed, 99);
	u = unit_cmd(SMTP_VERB_QUIT, "QUIT", NULL);
	assert_int_equal(fire(r, rs, &u, &f), 2);
	assert_int_equal(dec.seed, 0);
	rules_session_free(rs);
	rules_unref(r);

	/* the draw itself: a pure function, every input counts */
	assert_true(rules_draw(1, 2, 3, 4) == rules_draw(1, 2, 3, 4));
	assert_true(rules_draw(1, 2, 3, 4) != rules_draw(2, 2, 3, 4));
	assert_true(rules_draw(1, 2, 3, 4) != rules_draw(1, 3, 3, 4));
	assert_true(rules_draw(1, 2, 3, 4) != rules_draw(1, 2, 4, 4));
	assert_true(rules_draw(1, 2, 3, 4) != rules_draw(1, 2, 3, 5));
}

static void
test_decision_fields(void **state)
{
	struct rules *r = parse_ok("on ehlo delay 250ms strip starttls,chunking throttle 10k to-upstream\n"
				   "on reply rcpt reply 550 5.1.1 \"a\" \"b\"\n"
				   "on data-end truncate 12\n");
	struct rules_session *rs = rules_session_new(r);
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_cmd(SMTP_VERB_EHLO, "EHLO", "x");

	(void)state;
	assert_int_equal(fire(r, rs, &u, &f), 1);
	assert_int_equal(dec.actions, RULES_A_DELAY | RULES_A_STRIP | RULES_A_THROTTLE);
	assert_int_equal(dec.delay_ms, 250);
	assert_int_equal(dec.nstrip, 2);
	assert_string_equal(dec.strip[0], "STARTTLS");
	assert_string_equal(dec.strip[1], "CHUNKING");
	assert_int_equal(dec.throttle_bps, 10240);
	assert_int_equal(dec.throttle_dir, RULES_DIR_TO_UPSTREAM);
	assert_int_equal(dec.reply_len, 0);
	assert_int_equal(dec.code, 0);
	u = unit_reply(RULES_ANSWERS_COMMAND, SMTP_VERB_RCPT, 250);
	assert_int_equal(fire(r, rs, &u, &f), 2);
	/* reply on the reply trigger is carried out as a rewrite */
	assert_int_equal(dec.actions, RULES_A_REWRITE);
	assert_string_equal(dec.reply, "550-5.1.1 a\r\n550 5.1.1 b\r\n");
	assert_int_equal(dec.code, 550);
	u = unit_of(RULES_ON_DATA_END);
	assert_int_equal(fire(r, rs, &u, &f), 3);
	assert_int_equal(dec.actions, RULES_A_TRUNCATE);
	assert_int_equal(dec.truncate_at, 12);
	rules_session_free(rs);
	rules_unref(r);
}

static void
test_sessions_and_refs(void **state)
{
	struct rules *r = parse_ok("on quit close"), *other = parse_ok("on quit close");
	struct rules_session *rs;
	struct rules_facts f = facts(1);
	struct rules_unit u = unit_cmd(SMTP_VERB_QUIT, "QUIT", NULL);

	(void)state;
	assert_null(rules_session_new(NULL));
	rs = rules_session_new(r);
	/* no session, or another set's: nothing fires */
	assert_false(rules_decide(r, NULL, &u, &f, &dec));
	assert_null(dec.rule);
	assert_false(rules_decide(other, rs, &u, &f, &dec));
	assert_false(rules_decide(NULL, rs, &u, &f, &dec));
	assert_false(rules_decide(r, rs, NULL, &f, &dec));
	assert_false(rules_decide(r, rs, &u, NULL, &dec));
	/* the session keeps its set alive after the owner lets go (reload) */
	assert_ptr_equal(rules_ref(r), r);
	rules_unref(r);
	rules_unref(r);
	assert_true(rules_decide(r, rs, &u, &f, &dec));
	rules_session_free(rs);
	rules_session_free(NULL);
	rules_unref(other);
	rules_unref(NULL);
	assert_int_equal(rules_count(NULL), 0);
	assert_null(rules_at(NULL, 0));
}

/* ------------------------------------------------------------------------
 * The regex prefilter: decides exactly as regexec would.
 */

static void
test_prefilter_agrees(void **state)
{
	static const char *const res[] = {
		"^bad@", "@example\\.com$", "^exact$", "", "^", "$", "^$", "abc", "a.c", "ab*c", "ab+c", "ab?c", "a{2}b",
		"(ab)+c", "[abc]def", "x[]]y", "x[^]a]y", "[[:alpha:]]+@x", "a|b", "^(a|b)c$", "\\.\\*\\[", "\\w+@",
		"ab\\", "a\\$", "^a\\^b", "caf\xc3\xa9", "(", "x{1,}y", "no+pe", "NOPE", "x*", "^a*$", "[",
		"\\(a\\)", "a{0}b", "(a)(b)(c)d", "^(a|b)c", "(x|(y|z))+ab", "a(b|c)d|e", "([|]a)b", "\\|b",
		"^[0-9]{2}x", "^[^a-c]b", "^[[:upper:]]+", "^[]a]", "^[a-]x", "^\\.x", "^[[:digit:][:space:]]",
		"^[[:punct:]]", "^a+b", "^a|b", "^(a)b", "^[^[:alpha:]]", "^[A-Z]", "^[a-z]*x", "^[xyz]?a", "^[[:cntrl:]]",
		"^[[:xdigit:]]{2}", "^[^]a]", "^[[:alnum:]_-]+@", "^\\[", "^[\\]x", "[0-9]{3}[A-Z]", "(ab|c){2}d?",
		"x{0}", "(a|bc)(d|ef)",
	};
	static const char *const subjects[] = {
		"", "bad@x", "BAD@x", "x@example.com", "x@EXAMPLE.COM", "x@exampleXcom", "exact", "EXACT", "exactly",
		"abc", "ABC", "aXc", "ac", "abbbc", "aabc", "ababc", "adef", "x]y", "xby", "user@x", "a", "bc", ".*[",
		"a$", "a^b", "caf\xc3\xa9", "CAF\xc3\xa9", "xy", "xxy", "nope", "nooope", "aaaa", "b", "(a)", "abcd",
		"0x", "12x", "Ab", "db", "]x", "-x", ".x", " x", "!x", "Z", "z", "\x01x", "\xc3\xa9", "Fe", "_a@", "[", "\\x",
		"\tx", "xa",
	};
	struct rules_re re;
	size_t i, j, k;
	int icase, neg;

	(void)state;
	for (i = 0; i < sizeof(res) / sizeof(res[0]); i++) {
		for (k = 0; k < 4; k++) {
			icase = (int)(k & 1);
			neg = (int)(k >> 1);
			memset(&re, 0, sizeof(re));
			re.icase = icase;
			re.neg = neg;
			re.src = strdup(res[i]);
			assert_non_null(re.src);
			if (rules_re_refuse(res[i], &(uint64_t){ 0 }) != NULL ||
			    regcomp(&re.re, res[i], REG_EXTENDED | REG_NOSUB | (icase ? REG_ICASE : 0)) != 0) {
				rules_re_free(&re);
				continue;
			}
			re.compiled = true;
			assert_int_equal(rules_re_analyse(&re), 0);
			for (j = 0; j < sizeof(subjects) / sizeof(subjects[0]); j++) {
				size_t len = strlen(subjects[j]);

				if (rules_re_match(&re, subjects[j], len) != rules_re_match_slow(&re, subjects[j], len))
					fail_msg("/%s/%s%s on \"%s\": prefilter says %d", res[i], icase ? "i" : "",
						 neg ? " negated" : "", subjects[j], rules_re_match(&re, subjects[j], len));
			}
			rules_re_free(&re);
		}
	}

	/* what the analysis finds */
	memset(&re, 0, sizeof(re));
	re.src = strdup("^bad@");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_true(re.pure && re.bol && !re.eol);
	assert_string_equal(re.lit, "bad@");
	free(re.src);
	re.src = strdup("@example\\.com$");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_true(re.pure && !re.bol && re.eol);
	assert_string_equal(re.lit, "@example.com");
	free(re.src);
	re.src = strdup("^nobody-[0-9]+@example\\.org$");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_false(re.pure);
	assert_string_equal(re.lit, "@example.org");
	free(re.src);
	re.src = strdup("ab?cd*");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_false(re.pure);
	assert_string_equal(re.lit, "a");
	free(re.src);
	re.src = strdup("a|bcd");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_null(re.lit);
	free(re.src);
	/* "^X": the bytes a match starts with */
	re.src = strdup("^[0-9]{2}x");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_true(re.has_first);
	assert_true(re.first['0' >> 3] & (1u << ('0' & 7)));
	assert_false(re.first['a' >> 3] & (1u << ('a' & 7)));
	free(re.src);
	free(re.lit);
	re.lit = NULL;
	re.src = strdup("^a*x");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_false(re.has_first);
	free(re.src);
	free(re.lit);
	re.lit = NULL;
	/* the fewest bytes a match spans */
	{
		static const struct {
			const char *re;
			size_t min;
		} mins[] = {
			{ "abc", 3 }, { "^a*b?c+$", 1 }, { "[0-9]{3}-x", 5 }, { "(ab|c)d", 2 }, { "(ab|cde)", 2 },
			{ "a|bcd", 1 }, { "((a{2}){3})b", 7 }, { "\\bx\\>", 1 }, { "a{0,5}", 0 }, { "(a(b|cd)e)+", 3 },
			{ "", 0 }, { "^$", 0 }, { "x(y", 0 }, { "[]a]{2}", 2 }, { ".{4,}", 4 },
		};
		size_t q;

		for (q = 0; q < sizeof(mins) / sizeof(mins[0]); q++) {
			re.src = strdup(mins[q].re);
			assert_int_equal(rules_re_analyse(&re), 0);
			if (re.minlen != mins[q].min)
				fail_msg("minlen of /%s/ is %zu, want %zu", mins[q].re, re.minlen, mins[q].min);
			free(re.src);
			free(re.lit);
			re.lit = NULL;
		}
	}
	/* alternatives inside a group leave what follows it required */
	re.src = strdup("^(a|b)nobody42$");
	assert_int_equal(rules_re_analyse(&re), 0);
	assert_false(re.pure);
	assert_string_equal(re.lit, "nobody42");
	free(re.src);
	free(re.lit);

	/* what is refused, and what is not */
	{
		static const char *const ok[] = {
			"^[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}$", "([0-9]{1,3}\\.){3}[0-9]{1,3}",
			"^([a-z0-9-]+\\.)+[a-z]{2,}$", "(a{10}){10}", "a{255}", "x{0,255}", "(a*)?", "(ab*)*", "(a|b*c)+",
			"[\\1]", "(a*b)*", "a*b*c*", "^(a|b)+$", "a?", "(a?)", "a{0,2}", "((a+)+)+", "()",
			"(|a)", "(a|)", "a{2,}",
		};
		static const char *const no[] = {
			"\\1", "(a)\\2", "a**", "a*+", "a+*", "a??", "a{2}*", "a*{2}", "m***++++++",
			"(a*)*", "(a*)+", "(a?)*", "(a|)+", "(|a)*", "(a*b*)+", "(a|b*){1,9}", "(a*){2,}", "()*",
			"(^)*", "(\\b)+", "(a*){1,3}", "(a{0,1}){2}", "a{256}", "a{1,256}", "(a{100}){100}", "a{2001}",
			"((a|b){0,45}){0,45}", "(((a|b){0,12}){0,12}){0,12}",
			"((((((((((((((((((((((((((((((((((a))))))))))))))))))))))))))))))))))",
		};
		uint64_t cost;
		size_t q;

		for (q = 0; q < sizeof(ok) / sizeof(ok[0]); q++)
			if (rules_re_refuse(ok[q], &cost) != NULL)
				fail_msg("refused /%s/: %s", ok[q], rules_re_refuse(ok[q], &cost));
		for (q = 0; q < sizeof(no) / sizeof(no[0]); q++)
			if (rules_re_refuse(no[q], &cost) == NULL)
				fail_msg("accepted /%s/ (cost %llu)", no[q], (unsigned long long)cost);
		assert_null(rules_re_refuse("(a{10}){10}", &cost));
		assert_true(cost >= 100 && cost < 200);
	}
}

/* The fast path (per-call caches, prefilter, bigram filter, header index)
 * decides exactly as the slow one, over a grid of rules and units. */
static void
test_fast_equals_slow(void **state)
{
	static const char text[] =
		"on command arg ~ \"NOTIFY\" delay 1s\n"
		"on command arg ~* \"notify=never\" delay 1s\n"
		"on command arg !~* \"x-nope\" delay 1s\n"
		"on command arg ~ \"^TO:<[a-z]+@ex(ample|ampel)\\.org>\" delay 1s\n"
		"on command from ~ \"@example\\.com$\" delay 1s\n"
		"on command from !~* \"SPAM\" delay 1s\n"
		"on command to ~ \"bad\" delay 1s\n"
		"on command to !~ \"bad\" delay 1s\n"
		"on command to ~* \"^B.D@\" delay 1s\n"
		"on command helo ~* \"CLIENT\" verb ~ \"^R\" delay 1s\n"
		"on command user ~ \"bob\" mechanism !~ \"LOGIN\" delay 1s\n"
		"on data-end subject ~* \"hello +folded\" delay 1s\n"
		"on data-end subject !~ \"nothing\" delay 1s\n"
		"on data-end header x-test ~ \"^t(wo|hree)$\" header Received !~* \"nowhere\" delay 1s\n"
		"on data-end header X-Missing !~ \"a\" delay 1s\n";
	static const char hdrs[] = "Received: from x\r\n\tby y\r\nSubject: Hello\r\n  folded\r\nX-Test: one\r\n"
				   "x-test: two\r\n\r\n";
	static const char *const r1[] = { "bad@example.org", "good@example.org" }, *const r2[] = { "ok@x" };
	static const char *const args[] = { NULL, "", "TO:<bad@example.org> NOTIFY=NEVER", "TO:<bob@example.org>",
					    "FROM:<a@example.com>" };
	static const char *const froms[] = { NULL, "", "a@example.com", "SPAM@x", "a@example.com.evil" };
	struct rules *r = parse_ok(text);
	struct rules_facts f = facts(1);
	struct rules_unit u;
	size_t i, a, b, k, checked = 0, matched = 0;

	(void)state;
	for (a = 0; a < sizeof(args) / sizeof(args[0]); a++) {
		for (b = 0; b < sizeof(froms) / sizeof(froms[0]); b++) {
			for (k = 0; k < 3; k++) {
				u = unit_cmd(SMTP_VERB_RCPT, "RCPT", args[a]);
				u.mail_from = froms[b];
				u.mail_from_len = froms[b] != NULL ? strlen(froms[b]) : 0;
				u.rcpts = k == 0 ? NULL : k == 1 ? r1 : r2;
				u.nrcpts = k == 0 ? 0 : k == 1 ? 2 : 1;
				u.helo = k == 1 ? "client.example" : NULL;
				u.auth_user = k == 2 ? "bob" : NULL;
				u.auth_mech = k == 2 ? "PLAIN" : NULL;
				for (i = 0; i < rules_count(r); i++) {
					bool fast = rules_rule_matches(rules_at(r, i), &u, &f, false);

					assert_true(fast == rules_rule_matches(rules_at(r, i), &u, &f, true));
					checked++;
					matched += fast;
				}
				u.trigger = RULES_ON_DATA_END;
				u.headers = k == 0 ? NULL : hdrs;
				u.headers_len = k == 0 ? 0 : sizeof(hdrs) - 1;
				for (i = 0; i < rules_count(r); i++) {
					bool fast = rules_rule_matches(rules_at(r, i), &u, &f, false);

					assert_true(fast == rules_rule_matches(rules_at(r, i), &u, &f, true));
					checked++;
					matched += fast;
				}
			}
		}
	}
	/* both outcomes were seen, often */
	assert_true(matched > checked / 10 && matched < checked - checked / 10);
	rules_unref(r);
}

static void
test_edit_distance(void **state)
{
	(void)state;
	assert_int_equal(rules_edit_distance("rcpt", 4, "rcpt", 4), 0);
	assert_int_equal(rules_edit_distance("rcptt", 5, "rcpt", 4), 1);
	assert_int_equal(rules_edit_distance("rpct", 4, "rcpt", 4), 1);
	assert_int_equal(rules_edit_distance("RCPT", 4, "rcpt", 4), 0);
	assert_int_equal(rules_edit_distance("", 0, "abc", 3), 3);
	assert_int_equal(rules_edit_distance("kitten", 6, "sitting", 7), 3);
	assert_int_equal(rules_edit_distance("x", 1, "0123456789012345678901234567890123", 34), 99);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_issue_examples),
		cmocka_unit_test(test_lines_comments_continuations),
		cmocka_unit_test(test_triggers),
		cmocka_unit_test(test_conditions_parsed),
		cmocka_unit_test(test_conditions_parsed_more),
		cmocka_unit_test(test_actions_parsed),
		cmocka_unit_test(test_reply_bounds),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_errors_every_line),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_format_roundtrip),
		cmocka_unit_test(test_load),
		cmocka_unit_test(test_decide_triggers),
		cmocka_unit_test(test_decide_fields),
		cmocka_unit_test(test_decide_headers),
		cmocka_unit_test(test_decide_long_folded_header),
		cmocka_unit_test(test_decide_size_session_mode_client_listener),
		cmocka_unit_test(test_first_match_and_limit),
		cmocka_unit_test(test_occurrence),
		cmocka_unit_test(test_probability),
		cmocka_unit_test(test_decision_fields),
		cmocka_unit_test(test_sessions_and_refs),
		cmocka_unit_test(test_prefilter_agrees),
		cmocka_unit_test(test_fast_equals_slow),
		cmocka_unit_test(test_edit_distance),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
