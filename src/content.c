/*
 * content.c - see content.h.  Segment files: appending (the store's writer
 * thread), reading in chunks (the CLI), and deleting the ones nothing
 * refers to any more (prune).
 *
 * The writer does not copy the bytes it is given: it keeps an iovec per
 * append, pointing into the store's queued record, and writes them all
 * with pwritev() when the batch is about to commit.  So recording a
 * message costs one copy into the page cache and one fdatasync() per
 * batch, not the WAL write, the checkpoint and the overflow-page work of
 * a blob.
 */
#include "smtptap/content.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "smtptap/util.h"

#define CONTENT_DIR_SUFFIX "-content"
#define CONTENT_SEG_FMT "%010" PRId64 ".seg"
#define CONTENT_SEG_NAME_LEN 14 /* 10 digits + ".seg" */
#define CONTENT_IOV_BATCH 512	/* iovecs per pwritev() (IOV_MAX is 1024 on Linux) */

struct content_writer {
	char dir[CONTENT_PATH_MAX];
	int dirfd;
	int fd;		 /* the segment being appended to, or -1 */
	int64_t segment; /* its number */
	int64_t base;	 /* its size at the last sync: bytes up to here are durable */
	int64_t end;	 /* bytes up to here are written */
	int64_t pos;	 /* end + the pending bytes: where the next append goes */
	bool dirty;	 /* written since the last fdatasync() */
	struct iovec *iov; /* pending bytes, in file order from `end` */
	size_t niov, cap;
};

struct content_reader {
	char dir[CONTENT_PATH_MAX];
	int fd;		 /* the segment last read, or -1 */
	int64_t segment; /* its number */
	unsigned char *buf; /* CONTENT_READ_CHUNK bytes, allocated on first read */
};

static int64_t content_seg_number(const char *name);
static int content_newest(const char *dir, int64_t *newest, char *err, size_t errsz);
static int content_writer_open_segment(struct content_writer *w, int64_t segment, bool create, char *err,
				       size_t errsz);
static int content_writer_flush(struct content_writer *w, char *err, size_t errsz);
static int content_writer_roll(struct content_writer *w, char *err, size_t errsz);

int
content_dir_path(const char *db_path, char *out, size_t outsz)
{
	int n = snprintf(out, outsz, "%s" CONTENT_DIR_SUFFIX, db_path);

	return n < 0 || (size_t)n >= outsz ? -1 : 0;
}

/* The number of segment file `name`, or 0 if it is not one. */
static int64_t
content_seg_number(const char *name)
{
	int64_t n = 0;
	int i;

	if (strlen(name) != CONTENT_SEG_NAME_LEN || strcmp(name + 10, ".seg") != 0)
		return 0;
	for (i = 0; i < 10; i++) {
		if (name[i] < '0' || name[i] > '9')
			return 0;
		n = n * 10 + (name[i] - '0');
	}
	return n;
}

/* The highest segment number in dir (0: none, or no directory). */
static int
content_newest(const char *dir, int64_t *newest, char *err, size_t errsz)
{
	struct dirent *de;
	int64_t n;
	DIR *d;

	*newest = 0;
	if ((d = opendir(dir)) == NULL) {
		if (errno == ENOENT)
			return 0;
		util_errf(err, errsz, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if ((n = content_seg_number(de->d_name)) > *newest)
			*newest = n;
	}
	closedir(d);
	return 0;
}

/* ------------------------------------------------------------------------
 * writing
 */

struct content_writer *
content_writer_open(const char *db_path, char *err, size_t errsz)
{
	struct content_writer *w;
	int64_t newest;

	if ((w = calloc(1, sizeof(*w))) == NULL) {
		util_errf(err, errsz, "out of memory");
		return NULL;
	}
	w->dirfd = -1;
	w->fd = -1;
	if (content_dir_path(db_path, w->dir, sizeof(w->dir)) < 0) {
		util_errf(err, errsz, "%s: path too long for its content directory", db_path);
		goto fail;
	}
	/* 0700 whatever the umask: recorded mail is for its owner only. */
	if (mkdir(w->dir, 0700) < 0 && errno != EEXIST) {
		util_errf(err, errsz, "cannot create %s: %s", w->dir, strerror(errno));
		goto fail;
	}
	if ((w->dirfd = open(w->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		util_errf(err, errsz, "cannot open %s: %s", w->dir, strerror(errno));
		goto fail;
	}
	if (content_newest(w->dir, &newest, err, errsz) < 0)
		goto fail;
	/* Go on appending to the newest segment (a crash may have left
	 * orphan bytes at its end: they stay unreferenced). */
	if (content_writer_open_segment(w, newest > 0 ? newest : 1, newest == 0, err, errsz) < 0)
		goto fail;
	return w;

fail:
	content_writer_close(w);
	return NULL;
}

/* Make `segment` the one appended to; create: it must not exist yet. */
static int
content_writer_open_segment(struct content_writer *w, int64_t segment, bool create, char *err, size_t errsz)
{
	char name[32];
	struct stat sb;
	int fd;

	snprintf(name, sizeof(name), CONTENT_SEG_FMT, segment);
	fd = openat(w->dirfd, name, O_WRONLY | O_CLOEXEC | O_NOCTTY | (create ? O_CREAT | O_EXCL : 0), 0600);
	if (fd < 0) {
		util_errf(err, errsz, "cannot %s %s/%s: %s", create ? "create" : "open", w->dir, name, strerror(errno));
		return -1;
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode)) {
		util_errf(err, errsz, "%s/%s: not a regular file", w->dir, name);
		close(fd);
		return -1;
	}
	/* A new file's name must be durable before any row names it. */
	if (create && fsync(w->dirfd) < 0) {
		util_errf(err, errsz, "cannot sync %s: %s", w->dir, strerror(errno));
		close(fd);
		return -1;
	}
	if (w->fd >= 0)
		close(w->fd);
	w->fd = fd;
	w->segment = segment;
	w->base = w->end = w->pos = (int64_t)sb.st_size;
	w->dirty = false;
	return 0;
}

int
content_writer_append(struct content_writer *w, const void *p, size_t len, struct content_loc *loc, char *err,
		      size_t errsz)
{
	/* A chunk bigger than a whole segment still goes in one piece, into
	 * a segment of its own. */
	if (w->pos > 0 && (uint64_t)w->pos + len > CONTENT_SEGMENT_MAX && content_writer_roll(w, err, errsz) < 0)
		return -1;
	if (w->niov == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 256;
		struct iovec *iov = realloc(w->iov, cap * sizeof(*iov));

		if (iov == NULL) {
			util_errf(err, errsz, "out of memory");
			return -1;
		}
		w->iov = iov;
		w->cap = cap;
	}
	w->iov[w->niov].iov_base = (void *)(uintptr_t)p;
	w->iov[w->niov].iov_len = len;
	w->niov++;
	loc->segment = w->segment;
	loc->offset = w->pos;
	loc->length = (int64_t)len;
	w->pos += (int64_t)len;
	return 0;
}

/* Write the pending bytes at `end` (no fdatasync).  On failure the
 * caller discards the batch. */
static int
content_writer_flush(struct content_writer *w, char *err, size_t errsz)
{
	size_t i = 0, n;
	ssize_t r;

	while (i < w->niov) {
		n = w->niov - i;
		if (n > CONTENT_IOV_BATCH)
			n = CONTENT_IOV_BATCH;
		r = pwritev(w->fd, &w->iov[i], (int)n, (off_t)w->end);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			util_errf(err, errsz, "cannot write %s/" CONTENT_SEG_FMT ": %s", w->dir, w->segment,
				  strerror(errno));
			return -1;
		}
		if (r == 0) {
			util_errf(err, errsz, "cannot write %s/" CONTENT_SEG_FMT ": no progress", w->dir, w->segment);
			return -1;
		}
		w->end += r;
		w->dirty = true;
		/* Skip what went out; a partial write resumes mid-iovec. */
		while (r > 0 && i < w->niov) {
			if ((size_t)r >= w->iov[i].iov_len) {
				r -= (ssize_t)w->iov[i].iov_len;
				i++;
			} else {
				w->iov[i].iov_base = (char *)w->iov[i].iov_base + r;
				w->iov[i].iov_len -= (size_t)r;
				r = 0;
			}
		}
	}
	w->niov = 0;
	return 0;
}

/* Finish the current segment (written and synced) and start the next. */
static int
content_writer_roll(struct content_writer *w, char *err, size_t errsz)
{
	if (content_writer_sync(w, err, errsz) < 0)
		return -1;
	if (content_writer_open_segment(w, w->segment + 1, true, err, errsz) < 0) {
		content_writer_discard(w);
		return -1;
	}
	return 0;
}

/*
 * Drop the just-synced pages [from, to) from the page cache.  Recorded
 * content is read rarely and much later (show, export, replay), so keeping
 * it cached only pushes out pages other programs use; and a page-cache
 * write that always lands on a newly allocated page costs several times
 * the copy itself (measured: ~1.3 ms of CPU per MiB appended, ~0.3 ms
 * with the pages dropped after each sync, because the freed pages are
 * reused at once; docs/performance.md, notes part "small").  The
 * pages are clean once fdatasync() has returned, so this loses nothing;
 * the partial page at `to` is kept (the advice covers whole pages only),
 * and the next append fills it.  Advice only: a failure changes nothing
 * that matters.
 */
static void
content_writer_drop_cache(struct content_writer *w, int64_t from, int64_t to)
{
	if (to > from)
		(void)posix_fadvise(w->fd, (off_t)from, (off_t)(to - from), POSIX_FADV_DONTNEED);
}

int
content_writer_sync(struct content_writer *w, char *err, size_t errsz)
{
	if (content_writer_flush(w, err, errsz) < 0)
		goto fail;
	if (w->dirty && fdatasync(w->fd) < 0) {
		util_errf(err, errsz, "cannot sync %s/" CONTENT_SEG_FMT ": %s", w->dir, w->segment, strerror(errno));
		goto fail;
	}
	w->dirty = false;
	content_writer_drop_cache(w, w->base, w->end);
	w->base = w->end;
	return 0;

fail:
	/* Nothing written since the last sync may be trusted: cut it off. */
	content_writer_discard(w);
	return -1;
}

void
content_writer_discard(struct content_writer *w)
{
	w->niov = 0;
	w->dirty = false;
	/* Best effort: bytes past `base` are orphans either way, and the
	 * next append goes after whatever could not be cut. */
	w->end = w->base;
	if (w->fd >= 0 && ftruncate(w->fd, (off_t)w->base) < 0) {
		struct stat sb;

		if (fstat(w->fd, &sb) == 0 && sb.st_size > w->end)
			w->end = (int64_t)sb.st_size;
	}
	w->pos = w->end;
}

void
content_writer_close(struct content_writer *w)
{
	if (w == NULL)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (w->dirfd >= 0)
		close(w->dirfd);
	free(w->iov);
	free(w);
}

/* ------------------------------------------------------------------------
 * reading
 */

struct content_reader *
content_reader_open(const char *db_path)
{
	struct content_reader *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->fd = -1;
	if (content_dir_path(db_path, r->dir, sizeof(r->dir)) < 0)
		r->dir[0] = '\0'; /* reported at the first read */
	return r;
}

void
content_reader_close(struct content_reader *r)
{
	if (r == NULL)
		return;
	if (r->fd >= 0)
		close(r->fd);
	free(r->buf);
	free(r);
}

int
content_reader_read(struct content_reader *r, const struct content_loc *loc, content_chunk_cb cb, void *arg,
		    char *err, size_t errsz)
{
	int64_t off, left;
	size_t want;
	ssize_t got;
	int ret;

	if (r->dir[0] == '\0') {
		util_errf(err, errsz, "the database path is too long to find its content directory");
		return -1;
	}
	if (loc->segment < 1 || loc->offset < 0 || loc->length < 0 || loc->offset > INT64_MAX - loc->length) {
		util_errf(err, errsz, "a content reference is invalid (segment %" PRId64 ", offset %" PRId64
			  ", length %" PRId64 ")", loc->segment, loc->offset, loc->length);
		return -1;
	}
	if (r->buf == NULL && (r->buf = malloc(CONTENT_READ_CHUNK)) == NULL) {
		util_errf(err, errsz, "out of memory");
		return -1;
	}
	if (r->fd < 0 || r->segment != loc->segment) {
		char path[CONTENT_PATH_MAX + 32];

		if (r->fd >= 0)
			close(r->fd);
		r->fd = -1;
		snprintf(path, sizeof(path), "%s/" CONTENT_SEG_FMT, r->dir, loc->segment);
		if ((r->fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
			util_errf(err, errsz, "cannot read message content from %s: %s%s", path, strerror(errno),
				  errno == ENOENT ? " (the database was copied or moved without its -content directory?)"
						  : "");
			return -1;
		}
		r->segment = loc->segment;
	}
	for (off = loc->offset, left = loc->length; left > 0; off += got, left -= got) {
		want = left > (int64_t)CONTENT_READ_CHUNK ? CONTENT_READ_CHUNK : (size_t)left;
		got = pread(r->fd, r->buf, want, (off_t)off);
		if (got < 0 && errno == EINTR) {
			got = 0;
			continue;
		}
		if (got <= 0) {
			util_errf(err, errsz, "cannot read message content from %s/" CONTENT_SEG_FMT " at %" PRId64 ": %s",
				  r->dir, loc->segment, off, got < 0 ? strerror(errno) : "the file is shorter than the database says");
			return -1;
		}
		if ((ret = cb(r->buf, (size_t)got, arg)) != 0)
			return ret;
	}
	return 0;
}

/* ------------------------------------------------------------------------
 * reclaiming
 */

static int
content_cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* The numbers of the segments in dir below `below`, sorted, into *out
 * (malloc'ed, the caller frees it).  Returns how many, or -1 with err. */
static ssize_t
content_list_below(const char *dir, int64_t below, int64_t **out, char *err, size_t errsz)
{
	int64_t *v = NULL, *nv, n;
	size_t len = 0, cap = 0;
	struct dirent *de;
	DIR *d;

	*out = NULL;
	if ((d = opendir(dir)) == NULL) {
		util_errf(err, errsz, "%s: %s", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) != NULL) {
		if ((n = content_seg_number(de->d_name)) == 0 || n >= below)
			continue;
		if (len == cap) {
			cap = cap ? 2 * cap : 64;
			if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
				util_errf(err, errsz, "out of memory");
				free(v);
				closedir(d);
				return -1;
			}
			v = nv;
		}
		v[len++] = n;
	}
	closedir(d);
	if (len > 1)
		qsort(v, len, sizeof(*v), content_cmp_i64);
	*out = v;
	return (ssize_t)len;
}

int
content_sweep(sqlite3 *db, const char *db_path, uint64_t *bytes_freed, char *err, size_t errsz)
{
	char dir[CONTENT_PATH_MAX], path[CONTENT_PATH_MAX + 300];
	sqlite3_stmt *stmt = NULL;
	int64_t newest, *segs = NULL, lo, hi;
	bool *keep = NULL;
	ssize_t nsegs;
	size_t i = 0, k;
	struct stat sb;
	int deleted = 0, rc = SQLITE_DONE;

	if (bytes_freed != NULL)
		*bytes_freed = 0;
	if (content_dir_path(db_path, dir, sizeof(dir)) < 0) {
		util_errf(err, errsz, "%s: path too long for its content directory", db_path);
		return -1;
	}
	if (content_newest(dir, &newest, err, errsz) < 0)
		return -1;
	if (newest == 0)
		return 0;
	if ((nsegs = content_list_below(dir, newest, &segs, err, errsz)) <= 0)
		return nsegs < 0 ? -1 : 0;
	if ((keep = calloc((size_t)nsegs, sizeof(*keep))) == NULL) {
		util_errf(err, errsz, "out of memory");
		free(segs);
		return -1;
	}
	/*
	 * Keep every segment inside some session's range.  The ranges come
	 * in order of their start (the index sessions_content), so one walk
	 * through the sorted segments does: one below the current range's
	 * start is below every later start too.
	 */
	if (sqlite3_prepare_v2(db,
			       "SELECT content_seg_first, content_seg_last FROM sessions "
			       "WHERE content_seg_first IS NOT NULL ORDER BY content_seg_first, content_seg_last",
			       -1, &stmt, NULL) != SQLITE_OK) {
		util_errf(err, errsz, "cannot look up content references: %s", sqlite3_errmsg(db));
		deleted = -1;
		goto out;
	}
	while (i < (size_t)nsegs && (rc = sqlite3_step(stmt)) == SQLITE_ROW) {
		lo = sqlite3_column_int64(stmt, 0);
		hi = sqlite3_column_int64(stmt, 1);
		while (i < (size_t)nsegs && segs[i] < lo)
			i++;
		/* Segments up to an earlier, overlapping range's end are
		 * behind i already: kept. */
		for (k = i; k < (size_t)nsegs && segs[k] <= hi; k++)
			keep[k] = true;
		i = k;
	}
	if (i < (size_t)nsegs && rc != SQLITE_DONE) {
		util_errf(err, errsz, "cannot look up content references: %s", sqlite3_errmsg(db));
		deleted = -1;
		goto out;
	}
	for (k = 0; k < (size_t)nsegs; k++) {
		if (keep[k])
			continue;
		snprintf(path, sizeof(path), "%s/" CONTENT_SEG_FMT, dir, segs[k]);
		if (stat(path, &sb) == 0 && bytes_freed != NULL)
			*bytes_freed += (uint64_t)sb.st_size;
		if (unlink(path) < 0 && errno != ENOENT) {
			util_errf(err, errsz, "cannot delete %s: %s", path, strerror(errno));
			deleted = -1;
			break;
		}
		deleted++;
	}
out:
	sqlite3_finalize(stmt);
	free(keep);
	free(segs);
	return deleted;
}
