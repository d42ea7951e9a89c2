/*
 * recording.c - see recording.h: a recorded session cut into the client's
 * units, their pipelining groups and the replies that answered them.
 *
 * The builder is pure but for the spool, an unlinked temporary file that
 * keeps message bytes out of memory; recording_load.c feeds it from the
 * store.
 */
#include "smtptap/recording.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "smtptap/jsonread.h"

static void rec_fail(struct recording *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static struct rec_unit *rec_unit_new(struct recording *r, const struct reader_event *ev,
				     enum rec_unit_kind kind);
static int rec_spool(struct recording *r, const void *p, size_t len);
static int rec_add_reply(struct recording *r, const struct reader_event *ev);
static int rec_add_data(struct recording *r, const struct reader_event *ev);
static void rec_tls_mode(const char *json, char *out, size_t outsz);
static char *rec_strdup(struct recording *r, const char *s);
static void rec_link(struct recording *r);
static int rec_find_unit(const struct recording *r, int64_t seq);
static int rec_server_rank(const struct rec_reply *rp);
static int rec_client_rank(const struct rec_reply *rp);
static size_t rec_escape(char *buf, size_t bufsz, size_t n, const char *p, size_t len);

static void
rec_fail(struct recording *r, const char *fmt, ...)
{
	va_list ap;

	if (r->failed)
		return;
	r->failed = true;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
}

/* ------------------------------------------------------------------------
 * the builder
 */

struct recording *
recording_new(int64_t session_id, unsigned flags)
{
	struct recording *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->session_id = session_id;
	r->with_data = (flags & REC_WITH_DATA) != 0;
	r->spool_fd = -1;
	r->greeting = r->greeting_client = -1;
	return r;
}

void
recording_free(struct recording *r)
{
	size_t i;

	if (r == NULL)
		return;
	for (i = 0; i < r->nunits; i++)
		free(r->units[i].line);
	for (i = 0; i < r->nreplies; i++)
		free(r->replies[i].raw);
	free(r->units);
	free(r->replies);
	free(r->groups);
	free(r->mode);
	free(r->client);
	free(r->upstream);
	free(r->outcome);
	if (r->spool_fd >= 0)
		close(r->spool_fd);
	free(r);
}

static char *
rec_strdup(struct recording *r, const char *s)
{
	char *d;

	if (s == NULL)
		return NULL;
	if ((d = strdup(s)) == NULL)
		rec_fail(r, "out of memory");
	return d;
}

/* The "mode" member of a leg's TLS record (tls_info_json): "starttls" or
 * "implicit"; "" for a plaintext leg or a record that does not say. */
static void
rec_tls_mode(const char *json, char *out, size_t outsz)
{
	struct jsonread_obj o;
	const char *m;

	out[0] = '\0';
	if (json == NULL || jsonread_object(&o, json, strlen(json)) != JSONREAD_OK)
		return;
	m = jsonread_get_string(&o, "mode", NULL);
	if (m != NULL && (strcmp(m, "starttls") == 0 || strcmp(m, "implicit") == 0))
		snprintf(out, outsz, "%s", m);
	jsonread_free(&o);
}

int
recording_session(struct recording *r, const struct reader_session *row)
{
	r->mode = rec_strdup(r, row->mode);
	r->client = rec_strdup(r, row->client);
	r->upstream = rec_strdup(r, row->upstream);
	r->outcome = rec_strdup(r, row->outcome);
	rec_tls_mode(row->client_tls, r->client_tls, sizeof(r->client_tls));
	rec_tls_mode(row->upstream_tls, r->upstream_tls, sizeof(r->upstream_tls));
	return r->failed ? -1 : 0;
}

/* Append len bytes to the spool (created on first use). */
static int
rec_spool(struct recording *r, const void *p, size_t len)
{
	const char *c = p;

	if (!r->with_data || len == 0)
		return 0;
	if (r->spool_fd < 0) {
		char path[] = "/tmp/smtptap-replay-XXXXXX";
		const char *dir = getenv("TMPDIR");
		char buf[4096];

		if (dir != NULL && dir[0] != '\0' && snprintf(buf, sizeof(buf), "%s/smtptap-replay-XXXXXX", dir) <
								  (int)sizeof(buf))
			r->spool_fd = mkstemp(buf);
		else
			r->spool_fd = mkstemp(path);
		if (r->spool_fd < 0) {
			rec_fail(r, "cannot create a temporary file for the message bytes: %s", strerror(errno));
			return -1;
		}
		/* Nobody else needs to see it: gone when closed, or if we die. */
		unlink(dir != NULL && dir[0] != '\0' ? buf : path);
	}
	while (len > 0) {
		ssize_t n = pwrite(r->spool_fd, c, len, (off_t)r->spool_len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rec_fail(r, "cannot write the message bytes to a temporary file: %s",
				 n < 0 ? strerror(errno) : "short write");
			return -1;
		}
		r->spool_len += (uint64_t)n;
		c += n;
		len -= (size_t)n;
	}
	return 0;
}

int
recording_data_read(const struct recording *r, uint64_t off, void *buf, size_t len)
{
	char *c = buf;

	if (r->spool_fd < 0 || off + len > r->spool_len)
		return -1;
	while (len > 0) {
		ssize_t n = pread(r->spool_fd, c, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		c += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* A new unit for client event ev; NULL when out of memory. */
static struct rec_unit *
rec_unit_new(struct recording *r, const struct reader_event *ev, enum rec_unit_kind kind)
{
	struct rec_unit *u;
	bool new_group;

	if (r->nunits == r->ucap) {
		size_t cap = r->ucap ? r->ucap * 2 : 32;
		struct rec_unit *n = realloc(r->units, cap * sizeof(*n));

		if (n == NULL) {
			rec_fail(r, "out of memory");
			return NULL;
		}
		r->units = n;
		r->ucap = cap;
	}
	/* The client heard something since its last unit and did not say it
	 * sent this one without waiting: it waited. */
	new_group = r->nunits == 0 || (r->reply_since_client && !(ev->flags & STORE_F_PIPELINED));
	if (new_group) {
		if (r->ngroups == r->gcap) {
			size_t cap = r->gcap ? r->gcap * 2 : 16;
			struct rec_group *g = realloc(r->groups, cap * sizeof(*g));

			if (g == NULL) {
				rec_fail(r, "out of memory");
				return NULL;
			}
			r->groups = g;
			r->gcap = cap;
		}
		r->groups[r->ngroups] = (struct rec_group){
			.first = r->nunits,
			.t_us = ev->t_us,
			.think_us = r->last_reply_t > 0 && ev->t_us > r->last_reply_t ? ev->t_us - r->last_reply_t : 0,
		};
		r->ngroups++;
	}
	u = &r->units[r->nunits++];
	memset(u, 0, sizeof(*u));
	u->kind = kind;
	u->seq = u->last_seq = ev->seq;
	u->t_us = ev->t_us;
	u->flags = ev->flags;
	u->group = r->ngroups - 1;
	u->reply = u->client_reply = -1;
	r->groups[u->group].count++;
	/* After STARTTLS in one batch: bytes the server discards. */
	if (r->groups[u->group].count > 1) {
		const struct rec_unit *prev = u - 1;

		u->after_starttls = prev->after_starttls ||
				    (prev->kind == REC_UNIT_COMMAND && prev->verb == SMTP_VERB_STARTTLS);
	}
	r->reply_since_client = false;
	r->bdat_open = r->data_open = false;
	return u;
}

static int
rec_add_reply(struct recording *r, const struct reader_event *ev)
{
	struct rec_reply *rp;

	if (r->nreplies == r->rcap) {
		size_t cap = r->rcap ? r->rcap * 2 : 32;
		struct rec_reply *n = realloc(r->replies, cap * sizeof(*n));

		if (n == NULL) {
			rec_fail(r, "out of memory");
			return -1;
		}
		r->replies = n;
		r->rcap = cap;
	}
	rp = &r->replies[r->nreplies];
	memset(rp, 0, sizeof(*rp));
	rp->seq = ev->seq;
	rp->t_us = ev->t_us;
	rp->answers_seq = ev->answers_seq;
	rp->side = ev->side;
	rp->flags = ev->flags;
	rp->len = ev->raw != NULL ? ev->raw_len : 0;
	if ((rp->raw = malloc(rp->len + 1)) == NULL) {
		rec_fail(r, "out of memory");
		return -1;
	}
	if (rp->len > 0)
		memcpy(rp->raw, ev->raw, rp->len);
	rp->raw[rp->len] = '\0';
	recording_code(rp->raw, rp->len, &rp->c);
	r->nreplies++;
	if (ev->answers_seq > 0)
		r->links = true;
	r->last_reply_t = ev->t_us;
	r->reply_since_client = true;
	return 0;
}

/* Message bytes: the rest of a BDAT chunk, or a DATA stream. */
static int
rec_add_data(struct recording *r, const struct reader_event *ev)
{
	struct rec_unit *u = r->nunits > 0 ? &r->units[r->nunits - 1] : NULL;
	size_t len = ev->raw != NULL ? ev->raw_len : 0;

	if (len == 0)
		return 0;
	if (u != NULL && r->bdat_open) {
		/* A chunk is exactly its announced size (a server may answer
		 * before all of it is in: the bytes still belong to it). */
		if (len > r->bdat_left)
			len = (size_t)r->bdat_left;
	} else if (u != NULL && r->data_open && u->message_row == ev->message_row) {
		/* the stream goes on */
	} else {
		if ((u = rec_unit_new(r, ev, REC_UNIT_DATA)) == NULL)
			return -1;
		u->message_row = ev->message_row;
		r->data_open = true;
		smtp_data_init(&r->dscan);
	}
	if (u->data_len == 0)
		u->data_off = r->spool_len;
	if (rec_spool(r, ev->raw, len) < 0)
		return -1;
	u->data_len += len;
	u->last_seq = ev->seq;
	if (u->message_row == 0)
		u->message_row = ev->message_row;
	if (u->kind == REC_UNIT_COMMAND) {
		r->bdat_left -= len;
		if (r->bdat_left == 0) {
			u->complete = true;
			r->bdat_open = false;
		}
	} else {
		const char *p = ev->raw;
		size_t done = 0;

		while (done < len && r->dscan.st != SMTP_DATA_DONE)
			done += smtp_data_scan(&r->dscan, p + done, len - done, NULL, NULL);
		if (r->dscan.st == SMTP_DATA_DONE) {
			u->complete = true;
			r->data_open = false;
		}
	}
	return 0;
}

int
recording_add(struct recording *r, const struct reader_event *ev)
{
	struct rec_unit *u;
	struct smtp_cmd cmd;

	if (r->failed)
		return -1;
	if (ev->kind == STORE_KIND_CONNECT && r->connect_seq == 0) {
		r->connect_seq = ev->seq; /* the client's: the greeting answers it */
		return 0;
	}
	if (ev->kind == STORE_KIND_REPLY)
		return rec_add_reply(r, ev);
	if (ev->side != STORE_SIDE_CLIENT)
		return 0; /* notes, smtptap's own commands */
	if (ev->kind == STORE_KIND_DATA)
		return rec_add_data(r, ev);
	if (ev->kind != STORE_KIND_COMMAND && ev->kind != STORE_KIND_AUTH)
		return 0;
	if ((u = rec_unit_new(r, ev, ev->kind == STORE_KIND_AUTH ? REC_UNIT_AUTH : REC_UNIT_COMMAND)) == NULL)
		return -1;
	u->len = ev->raw != NULL ? ev->raw_len : 0;
	if ((u->line = malloc(u->len + 1)) == NULL) {
		rec_fail(r, "out of memory");
		return -1;
	}
	if (u->len > 0)
		memcpy(u->line, ev->raw, u->len);
	u->line[u->len] = '\0';
	u->complete = u->len > 0 && u->line[u->len - 1] == '\n' && !(ev->flags & STORE_F_INCOMPLETE);
	if (ev->flags & STORE_F_REDACTED)
		r->redacted = true;
	if (u->kind != REC_UNIT_COMMAND || smtp_parse_command(u->line, u->len, &cmd) < 0)
		return 0;
	u->verb = cmd.verb;
	if (cmd.verb == SMTP_VERB_STARTTLS && u->complete)
		r->client_starttls = true;
	if (cmd.verb == SMTP_VERB_AUTH && r->auth_mech[0] == '\0') {
		size_t i, n = cmd.auth_mech.len < sizeof(r->auth_mech) - 1 ? cmd.auth_mech.len : sizeof(r->auth_mech) - 1;

		for (i = 0; i < n; i++) {
			char c = cmd.auth_mech.p[i];

			r->auth_mech[i] = c >= 'a' && c <= 'z' ? (char)(c - 32) : c;
		}
		r->auth_mech[n] = '\0';
	}
	if (cmd.verb == SMTP_VERB_BDAT && cmd.bdat_ok && u->complete) {
		u->bdat = true;
		u->bdat_size = cmd.bdat_size;
		u->bdat_last = cmd.bdat_last;
		/* the chunk follows; an empty one is complete already */
		u->complete = cmd.bdat_size == 0;
		r->bdat_left = cmd.bdat_size;
		r->bdat_open = cmd.bdat_size > 0;
	}
	return 0;
}

/* The unit whose events include seq, or -1. */
static int
rec_find_unit(const struct recording *r, int64_t seq)
{
	size_t lo = 0, hi = r->nunits;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (r->units[mid].seq <= seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || seq > r->units[lo - 1].last_seq)
		return -1;
	return (int)(lo - 1);
}

/* Which reply to compare with (lower is better, -1 never): the server's
 * own, else smtptap's answer in its place. */
static int
rec_server_rank(const struct rec_reply *rp)
{
	if (rp->side == STORE_SIDE_UPSTREAM)
		return 0;
	if (rp->side == STORE_SIDE_PROXY)
		return 1;
	return -1;
}

/* Which reply the client was told: smtptap's, when it sent one in place
 * of the server's, else the server's as passed on. */
static int
rec_client_rank(const struct rec_reply *rp)
{
	if (rp->side == STORE_SIDE_PROXY && (rp->flags & STORE_F_TO_CLIENT) && !(rp->flags & STORE_F_DROPPED))
		return 0;
	if (rp->side == STORE_SIDE_UPSTREAM && !(rp->flags & (STORE_F_ALTERED | STORE_F_DROPPED)))
		return 1;
	return -1;
}

static void
rec_pick(const struct recording *r, int *best, int cand, int (*rank)(const struct rec_reply *))
{
	int rk = rank(&r->replies[cand]);

	if (rk < 0)
		return;
	if (*best < 0 || rk < rank(&r->replies[*best]))
		*best = cand;
}

static void
rec_link(struct recording *r)
{
	size_t i;

	for (i = 0; i < r->nreplies; i++) {
		const struct rec_reply *rp = &r->replies[i];
		int k;

		if (rp->answers_seq <= 0)
			continue;
		if (rp->answers_seq == r->connect_seq) {
			rec_pick(r, &r->greeting, (int)i, rec_server_rank);
			rec_pick(r, &r->greeting_client, (int)i, rec_client_rank);
			continue;
		}
		if ((k = rec_find_unit(r, rp->answers_seq)) < 0)
			continue; /* it answers smtptap's own command */
		rec_pick(r, &r->units[k].reply, (int)i, rec_server_rank);
		rec_pick(r, &r->units[k].client_reply, (int)i, rec_client_rank);
	}
}

void
recording_finish(struct recording *r)
{
	size_t i;

	for (i = 0; i < r->nunits; i++) {
		struct rec_unit *u = &r->units[i];

		u->expects_reply = u->complete && !u->after_starttls;
	}
	if (r->links) {
		rec_link(r);
		return;
	}
	/* Schema 1: no links.  The greeting is the first reply at least. */
	if (r->nreplies > 0 && (r->nunits == 0 || r->replies[0].seq < r->units[0].seq))
		r->greeting = r->greeting_client = 0;
}

/* ------------------------------------------------------------------------
 * replies
 */

void
recording_code(const char *raw, size_t len, struct rec_code *out)
{
	struct smtp_reply_line rl;
	size_t n = 0;

	memset(out, 0, sizeof(*out));
	while (n < len && raw[n] != '\n')
		n++;
	if (smtp_parse_reply_line(raw, n < len ? n + 1 : n, &rl) < 0)
		return;
	out->code = rl.code;
	out->has_enh = rl.has_enhanced;
	out->enh_class = rl.enh_class;
	out->enh_subject = rl.enh_subject;
	out->enh_detail = rl.enh_detail;
}

/* The next line of raw at *pos: its text after the code (what
 * smtp_parse_reply_line calls text) and code.  false at the end. */
static bool
rec_next_line(const char *raw, size_t len, size_t *pos, struct smtp_reply_line *rl)
{
	size_t start = *pos, n = start;

	if (start >= len)
		return false;
	while (n < len && raw[n] != '\n')
		n++;
	if (n < len)
		n++;
	*pos = n;
	if (smtp_parse_reply_line(raw + start, n - start, rl) < 0) {
		/* a malformed line compares as its bytes */
		rl->text.p = raw + start;
		rl->text.len = n - start;
		while (rl->text.len > 0 && (rl->text.p[rl->text.len - 1] == '\n' || rl->text.p[rl->text.len - 1] == '\r'))
			rl->text.len--;
	}
	return true;
}

unsigned
recording_compare(const char *a, size_t alen, const char *b, size_t blen, bool strict)
{
	struct rec_code ca, cb;
	unsigned d = 0;

	recording_code(a, alen, &ca);
	recording_code(b, blen, &cb);
	if (ca.code != cb.code)
		d |= REC_DIFF_CODE;
	if (ca.has_enh != cb.has_enh ||
	    (ca.has_enh && (ca.enh_class != cb.enh_class || ca.enh_subject != cb.enh_subject ||
			    ca.enh_detail != cb.enh_detail)))
		d |= REC_DIFF_ENH;
	if (strict) {
		size_t pa = 0, pb = 0;
		struct smtp_reply_line la, lb;
		bool ma, mb;

		for (;;) {
			ma = rec_next_line(a, alen, &pa, &la);
			mb = rec_next_line(b, blen, &pb, &lb);
			if (!ma || !mb)
				break;
			if (la.code != lb.code || la.text.len != lb.text.len ||
			    (la.text.len > 0 && memcmp(la.text.p, lb.text.p, la.text.len) != 0)) {
				d |= REC_DIFF_TEXT;
				break;
			}
		}
		if (ma != mb)
			d |= REC_DIFF_TEXT;
	}
	return d;
}

/* Append p[0..len) to buf at n, cut with "..." when it does not fit;
 * returns the new n.  The bytes stay as they are (a NUL aside): whoever
 * prints the label escapes it for its output. */
static size_t
rec_escape(char *buf, size_t bufsz, size_t n, const char *p, size_t len)
{
	size_t i;

	for (i = 0; i < len && n + 4 < bufsz; i++)
		buf[n++] = p[i] != '\0' ? p[i] : '?';
	if (i < len && n + 4 <= bufsz) {
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n] = '\0';
	return n;
}

char *
recording_unit_label(const struct rec_unit *u, char *buf, size_t bufsz)
{
	size_t n = 0, len = u->len;

	if (bufsz == 0)
		return buf;
	buf[0] = '\0';
	if (u->kind == REC_UNIT_DATA) {
		snprintf(buf, bufsz, "message content (%llu bytes%s)", (unsigned long long)u->data_len,
			 u->complete ? "" : ", cut short");
		return buf;
	}
	while (len > 0 && (u->line[len - 1] == '\n' || u->line[len - 1] == '\r'))
		len--;
	n = rec_escape(buf, bufsz, 0, u->line, len);
	if (u->bdat && n + 1 < bufsz)
		snprintf(buf + n, bufsz - n, " (+%llu bytes)", (unsigned long long)u->data_len);
	return buf;
}

char *
recording_reply_label(const char *raw, size_t len, char *buf, size_t bufsz)
{
	size_t n = 0;

	if (bufsz == 0)
		return buf;
	buf[0] = '\0';
	if (raw == NULL)
		return buf;
	while (n < len && raw[n] != '\n')
		n++;
	while (n > 0 && (raw[n - 1] == '\r' || raw[n - 1] == '\n'))
		n--;
	rec_escape(buf, bufsz, 0, raw, n);
	return buf;
}
