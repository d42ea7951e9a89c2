/*
 * export.c - .eml and mboxrd writers, see export.h.
 *
 * The message comes from the reader already as the client meant it
 * (reader_message_content, READER_CONTENT_MESSAGE: a DATA stream
 * dot-unstuffed, BDAT chunks as they are), in pieces, and goes straight
 * to the file or through the mboxrd quoting filter.
 */
#include "smtptap/export.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "smtptap/reader.h"

/* One export in progress: where the bytes go. */
struct export_ctx {
	FILE *out;		 /* .eml: written straight here */
	struct export_mboxrd *q; /* mbox: written through the quoting filter */
	int werr;		 /* errno of the failed write */
};

struct export_list {
	struct export_message *v;
	size_t n, cap;
	bool nomem;
};

static int export_list_cb(const struct reader_message *row, void *arg);
static int export_chunk_cb(const void *data, size_t len, void *arg);
static int export_stream(struct reader *rd, const struct export_message *m, struct export_ctx *x, char *err,
			 size_t errsz);
static int export_mboxrd_emit(struct export_mboxrd *q, const void *p, size_t len);
static int export_mboxrd_release(struct export_mboxrd *q);

static const char export_from[] = "From ";
#define EXPORT_FROM_LEN (sizeof(export_from) - 1)

/* ------------------------------------------------------------------------
 * Message list.
 */

static int
export_list_cb(const struct reader_message *row, void *arg)
{
	struct export_list *l = arg;
	struct export_message *m, *nv;
	size_t ncap;

	if (l->n == l->cap) {
		ncap = l->cap == 0 ? 8 : l->cap * 2;
		nv = realloc(l->v, ncap * sizeof(*nv));
		if (nv == NULL) {
			l->nomem = true;
			return 1;
		}
		l->v = nv;
		l->cap = ncap;
	}
	m = &l->v[l->n];
	memset(m, 0, sizeof(*m));
	m->id = row->id;
	m->session_id = row->session_id;
	m->idx = row->idx;
	m->started_us = row->started_us;
	m->ended_us = row->ended_us;
	m->size = row->size;
	m->complete = row->complete;
	m->mail_from = strdup(row->mail_from != NULL ? row->mail_from : "");
	m->transport = strdup(row->transport != NULL ? row->transport : "data");
	/* Counted even when half-built so the free below sees it. */
	l->n++;
	if (m->mail_from == NULL || m->transport == NULL) {
		l->nomem = true;
		return 1;
	}
	return 0;
}

int
export_message_list(struct reader *rd, int64_t session_id, struct export_message **out, size_t *n, char *err,
		    size_t errsz)
{
	struct export_list l;
	int r;

	memset(&l, 0, sizeof(l));
	r = reader_messages(rd, session_id, export_list_cb, &l, err, errsz);
	if (r != 0 || l.nomem) {
		if (l.nomem)
			snprintf(err, errsz, "out of memory listing the messages");
		export_message_list_free(l.v, l.n);
		return -1;
	}
	*out = l.v;
	*n = l.n;
	return 0;
}

void
export_message_list_free(struct export_message *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free(v[i].mail_from);
		free(v[i].transport);
	}
	free(v);
}

/* ------------------------------------------------------------------------
 * Streaming the message.
 */

/* Returns 0, or 1 to stop the stream after a failed write. */
static int
export_chunk_cb(const void *data, size_t len, void *arg)
{
	struct export_ctx *x = arg;

	if (x->q != NULL) {
		if (export_mboxrd_write(x->q, data, len) < 0) {
			x->werr = x->q->err;
			return 1;
		}
		return 0;
	}
	if (len > 0 && fwrite(data, 1, len, x->out) != len) {
		x->werr = errno != 0 ? errno : EIO;
		return 1;
	}
	return 0;
}

static int
export_stream(struct reader *rd, const struct export_message *m, struct export_ctx *x, char *err, size_t errsz)
{
	int r;

	r = reader_message_content(rd, m->id, READER_CONTENT_MESSAGE, export_chunk_cb, x, err, errsz);
	if (r == 1) {
		snprintf(err, errsz, "%s", strerror(x->werr));
		return EXPORT_EWRITE;
	}
	/* A message listed a moment ago is there (the caller's request). */
	if (r == READER_NOTFOUND)
		snprintf(err, errsz, "message %d is gone (pruned meanwhile?)", m->idx);
	return r == READER_OK ? EXPORT_OK : EXPORT_EDB;
}

int
export_write_eml(struct reader *rd, const struct export_message *m, FILE *out, char *err, size_t errsz)
{
	struct export_ctx x;

	memset(&x, 0, sizeof(x));
	x.out = out;
	return export_stream(rd, m, &x, err, errsz);
}

int
export_write_mbox(struct reader *rd, const struct export_message *m, FILE *out, char *err, size_t errsz)
{
	struct export_ctx x;
	struct export_mboxrd q;
	char line[1024];
	size_t n;
	int r;

	export_mbox_from_line(line, sizeof(line) - 1, m->mail_from, m->started_us);
	n = strlen(line);
	line[n++] = '\n';
	if (fwrite(line, 1, n, out) != n)
		goto werr;
	memset(&x, 0, sizeof(x));
	export_mboxrd_init(&q, out);
	x.out = out;
	x.q = &q;
	if ((r = export_stream(rd, m, &x, err, errsz)) != EXPORT_OK)
		return r;
	if (export_mboxrd_finish(&q) < 0) {
		errno = q.err;
		goto werr;
	}
	/* The empty line that separates messages (RFC 4155). */
	if (fputc('\n', out) == EOF)
		goto werr;
	return EXPORT_OK;
werr:
	snprintf(err, errsz, "%s", strerror(errno != 0 ? errno : EIO));
	return EXPORT_EWRITE;
}

/* ------------------------------------------------------------------------
 * mboxrd quoting.
 */

void
export_mboxrd_init(struct export_mboxrd *q, FILE *out)
{
	memset(q, 0, sizeof(*q));
	q->out = out;
	q->line_start = true;
	q->ends_nl = true; /* nothing written: no newline to add */
}

static int
export_mboxrd_emit(struct export_mboxrd *q, const void *p, size_t len)
{
	if (q->err != 0)
		return -1;
	if (len == 0)
		return 0;
	if (fwrite(p, 1, len, q->out) != len) {
		q->err = errno != 0 ? errno : EIO;
		return -1;
	}
	q->ends_nl = ((const char *)p)[len - 1] == '\n';
	return 0;
}

/* Write out the held-back prefix unchanged (it turned out not to be a
 * "From " line). */
static int
export_mboxrd_release(struct export_mboxrd *q)
{
	static const char gts[] = ">>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>";
	size_t n;

	while (q->ngt > 0) {
		n = q->ngt < sizeof(gts) - 1 ? (size_t)q->ngt : sizeof(gts) - 1;
		if (export_mboxrd_emit(q, gts, n) < 0)
			return -1;
		q->ngt -= n;
	}
	if (export_mboxrd_emit(q, export_from, q->nfrom) < 0)
		return -1;
	q->nfrom = 0;
	return 0;
}

int
export_mboxrd_write(struct export_mboxrd *q, const void *buf, size_t len)
{
	const char *p = buf, *nl;
	size_t i = 0, end;

	if (q->err != 0)
		return -1;
	while (i < len) {
		if (!q->line_start) {
			/* Inside a line: copy through its end in one go. */
			nl = memchr(p + i, '\n', len - i);
			end = nl == NULL ? len : (size_t)(nl - p) + 1;
			if (export_mboxrd_emit(q, p + i, end - i) < 0)
				return -1;
			q->line_start = nl != NULL;
			i = end;
			continue;
		}
		if (q->nfrom == 0 && p[i] == '>') {
			q->ngt++;
			i++;
		} else if (p[i] == export_from[q->nfrom]) {
			i++;
			if (++q->nfrom == EXPORT_FROM_LEN) {
				/* ^>*From : one more '>' in front. */
				if (export_mboxrd_emit(q, ">", 1) < 0 || export_mboxrd_release(q) < 0)
					return -1;
				q->line_start = false;
			}
		} else {
			if (export_mboxrd_release(q) < 0)
				return -1;
			/* This byte starts (or, if '\n', is) the line's rest. */
			q->line_start = false;
		}
	}
	return 0;
}

int
export_mboxrd_finish(struct export_mboxrd *q)
{
	if (export_mboxrd_release(q) < 0)
		return -1;
	if (!q->ends_nl && export_mboxrd_emit(q, "\n", 1) < 0)
		return -1;
	q->line_start = true;
	return 0;
}

void
export_mbox_from_line(char *buf, size_t bufsz, const char *mail_from, int64_t when_us)
{
	static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					"Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = (time_t)(when_us / 1000000);
	struct tm tm;
	size_t n, i;

	if (gmtime_r(&t, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	n = (size_t)snprintf(buf, bufsz, "From ");
	if (mail_from == NULL || mail_from[0] == '\0')
		mail_from = "MAILER-DAEMON";
	/* The sender is one word on this line (readers split on spaces): a
	 * quoted local part's white space or control bytes become '_'. */
	for (i = 0; mail_from[i] != '\0' && n + 1 < bufsz; i++, n++) {
		unsigned char c = (unsigned char)mail_from[i];

		buf[n] = c <= ' ' || c == 0x7f ? '_' : (char)c;
	}
	if (n < bufsz)
		buf[n] = '\0';
	if (n < bufsz)
		snprintf(buf + n, bufsz - n, " %s %s %2d %02d:%02d:%02d %d", days[tm.tm_wday % 7],
			 months[tm.tm_mon % 12], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, tm.tm_year + 1900);
}
