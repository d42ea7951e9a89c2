/*
 * store_fn.c - what the writer derives from the records it writes (a
 * client's IP without its port, the HELO name of a command) and the SQL
 * functions that give the schema migrations the very same code, so that a
 * session recorded live and one migrated from an older schema get the
 * same summary columns.
 *
 * The SQL functions are registered SQLITE_DIRECTONLY: a migration may call
 * them, but no view or trigger can, so the schema never depends on
 * smtptap and stays readable by the sqlite3 shell.
 */
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "smtptap/smtp.h"
#include "smtptap/store_int.h"
#include "smtptap/util.h"

static void store_fn_client_ip(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void store_fn_helo(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void store_fn_auth_mech(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static void store_fn_auth_user(sqlite3_context *ctx, int argc, sqlite3_value **argv);
static bool store_fn_auth_cmd(sqlite3_value *v, struct smtp_cmd *cmd);

int
store_client_ip(const char *client, char *out, size_t outsz)
{
	char port[16];

	if (client == NULL || outsz == 0)
		return -1;
	if (util_split_hostport(client, out, outsz, port, sizeof(port), NULL, 0) < 0 || out[0] == '\0') {
		out[0] = '\0';
		return -1;
	}
	return 0;
}

bool
store_helo_name(const void *raw, size_t len, const char **name, size_t *namelen)
{
	const char *p = raw;
	struct smtp_str s;

	/* Most commands are not HELO/EHLO/LHLO: look before parsing. */
	if (p == NULL || len < 4 || ((p[1] | 0x20) != 'e' && (p[1] | 0x20) != 'h') || (p[2] | 0x20) != 'l' ||
	    (p[3] | 0x20) != 'o')
		return false;
	if (smtp_helo_name(p, len, &s) < 0)
		return false;
	*name = s.p;
	*namelen = s.len;
	return true;
}

/* smtptap_client_ip(client TEXT) -> the address without its port, or NULL */
static void
store_fn_client_ip(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	char ip[UTIL_ADDR_MAX];

	(void)argc;
	if (store_client_ip((const char *)sqlite3_value_text(argv[0]), ip, sizeof(ip)) == 0)
		sqlite3_result_text(ctx, ip, -1, SQLITE_TRANSIENT);
	else
		sqlite3_result_null(ctx);
}

/* smtptap_helo(raw BLOB) -> the name a HELO/EHLO/LHLO command gives, or
 * NULL for any other command */
static void
store_fn_helo(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	const char *name;
	size_t len;

	(void)argc;
	if (store_helo_name(sqlite3_value_blob(argv[0]), (size_t)sqlite3_value_bytes(argv[0]), &name, &len))
		sqlite3_result_text(ctx, name, (int)len, SQLITE_TRANSIENT);
	else
		sqlite3_result_null(ctx);
}

/* An AUTH command line with a mechanism, parsed into *cmd (its slices
 * point into the value, valid until it changes). */
static bool
store_fn_auth_cmd(sqlite3_value *v, struct smtp_cmd *cmd)
{
	const char *p = sqlite3_value_blob(v);
	size_t len = (size_t)sqlite3_value_bytes(v);

	if (p == NULL || len < 5 || (p[0] | 0x20) != 'a' || smtp_parse_command(p, len, cmd) < 0)
		return false;
	return cmd->verb == SMTP_VERB_AUTH && cmd->auth_mech.len > 0;
}

/* smtptap_auth_mech(raw BLOB) -> the mechanism of an AUTH command, upper
 * case, or NULL for any other command */
static void
store_fn_auth_mech(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct smtp_cmd cmd;
	char mech[STORE_AUTH_MECH_MAX];

	(void)argc;
	if (!store_fn_auth_cmd(argv[0], &cmd)) {
		sqlite3_result_null(ctx);
		return;
	}
	store_auth_mech_upper(cmd.auth_mech.p, cmd.auth_mech.len, mech, sizeof(mech));
	sqlite3_result_text(ctx, mech, -1, SQLITE_TRANSIENT);
}

/* smtptap_auth_user(command BLOB, line BLOB or NULL) -> the user name of
 * an AUTH exchange: from the command's initial response when line is
 * NULL, else from that first response line; NULL when it has none */
static void
store_fn_auth_user(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
	struct smtp_cmd cmd;
	char user[STORE_AUTH_USER_MAX];
	const char *resp;
	size_t len;

	(void)argc;
	if (!store_fn_auth_cmd(argv[0], &cmd)) {
		sqlite3_result_null(ctx);
		return;
	}
	if (sqlite3_value_type(argv[1]) == SQLITE_NULL) {
		resp = cmd.auth_initial.p;
		len = cmd.auth_initial.len;
	} else {
		resp = sqlite3_value_blob(argv[1]);
		len = (size_t)sqlite3_value_bytes(argv[1]);
	}
	if (resp != NULL && smtp_auth_user(cmd.auth_mech, resp, len, user, sizeof(user)) > 0)
		sqlite3_result_text(ctx, user, -1, SQLITE_TRANSIENT);
	else
		sqlite3_result_null(ctx);
}

void
store_auth_mech_upper(const char *p, size_t len, char *out, size_t outsz)
{
	size_t i;

	if (outsz == 0)
		return;
	if (len > outsz - 1)
		len = outsz - 1;
	for (i = 0; i < len; i++)
		out[i] = p[i] >= 'a' && p[i] <= 'z' ? (char)(p[i] - 'a' + 'A') : p[i];
	out[len] = '\0';
}

int
store_register_functions(sqlite3 *db)
{
	static const struct {
		const char *name;
		int nargs;
		void (*fn)(sqlite3_context *, int, sqlite3_value **);
	} fns[] = {
		{ "smtptap_client_ip", 1, store_fn_client_ip },
		{ "smtptap_helo", 1, store_fn_helo },
		{ "smtptap_auth_mech", 1, store_fn_auth_mech },
		{ "smtptap_auth_user", 2, store_fn_auth_user },
	};
	size_t i;

	for (i = 0; i < sizeof(fns) / sizeof(fns[0]); i++) {
		if (sqlite3_create_function(db, fns[i].name, fns[i].nargs,
					    SQLITE_UTF8 | SQLITE_DETERMINISTIC | SQLITE_DIRECTONLY, NULL, fns[i].fn,
					    NULL, NULL) != SQLITE_OK)
			return -1;
	}
	return 0;
}
