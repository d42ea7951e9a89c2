/*
 * content.h - message content in append-only segment files beside the
 * database.
 *
 * Message data (DATA streams, BDAT chunks) is the bulk of what smtptap
 * records.  Kept inside SQLite, every byte was written twice (WAL, then
 * the checkpoint into the main file) and cut into overflow pages; here it
 * is written once, sequentially, to a file, and the event row keeps only
 * where it is: (segment, offset, length).  See docs/architecture.md,
 * "Where message content lives".
 *
 * Layout: for the database PATH, the directory PATH-content/ (mode 0700)
 * holds segments named NNNNNNNNNN.seg (decimal, 10 digits; mode 0600).
 * A writer appends to the highest-numbered segment and starts the next
 * one past CONTENT_SEGMENT_MAX bytes, so every segment but the newest is
 * immutable.
 *
 * Crash safety: content_writer_sync() writes every byte handed out so far
 * and fdatasync()s it; the store calls it before the COMMIT that makes
 * rows point at those bytes.  A row therefore never refers to bytes that
 * are not on disk, after a SIGKILL or a power cut alike.  Bytes written
 * by a transaction that never committed are orphans: unreferenced, never
 * read, reclaimed with their segment.
 *
 * Threads: a content_writer belongs to the store's writer thread; a
 * content_reader to whoever opened it.  Neither is shared.
 */
#ifndef SMTPTAP_CONTENT_H
#define SMTPTAP_CONTENT_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

/* A segment is closed (and the next one started) once it holds this much. */
#define CONTENT_SEGMENT_MAX (64u * 1024 * 1024)
/* Readers hand content out in pieces of at most this many bytes. */
#define CONTENT_READ_CHUNK (64u * 1024)
/* Longest path of a segment, directory included. */
#define CONTENT_PATH_MAX 4096

/* Where one event's bytes are. */
struct content_loc {
	int64_t segment; /* >= 1 */
	int64_t offset;
	int64_t length;
};

/* The content directory of database `db_path` ("PATH-content") into out.
 * Returns 0, or -1 if it does not fit. */
int content_dir_path(const char *db_path, char *out, size_t outsz);

/* ---- writing (the store's writer thread) ---- */

struct content_writer;

/*
 * Open the content directory of `db_path` for appending, creating it if
 * needed.  Returns NULL with a one-line reason in err.
 */
struct content_writer *content_writer_open(const char *db_path, char *err, size_t errsz);

/*
 * Hand out a place for `len` bytes at `p` and remember them.  Nothing is
 * written yet: `p` must stay valid until the next content_writer_sync()
 * or content_writer_discard().  Returns 0, or -1 with err (a new segment
 * could not be made).
 */
int content_writer_append(struct content_writer *w, const void *p, size_t len, struct content_loc *loc,
			  char *err, size_t errsz);

/*
 * Write everything appended since the last sync and make it durable.
 * Returns 0: every location handed out is on disk; or -1 with err: the
 * locations handed out since the last successful sync must not be
 * committed (the file is cut back to where they started).
 */
int content_writer_sync(struct content_writer *w, char *err, size_t errsz);

/* Forget what was appended since the last sync (its transaction rolled
 * back): those locations will be handed out again. */
void content_writer_discard(struct content_writer *w);

void content_writer_close(struct content_writer *w);

/* ---- reading (any thread, read-only) ---- */

struct content_reader;
typedef int (*content_chunk_cb)(const void *data, size_t len, void *arg);

/* Nothing is opened until the first read: a database whose content all
 * lives inline has no directory.  NULL only when memory is short. */
struct content_reader *content_reader_open(const char *db_path);
void content_reader_close(struct content_reader *r);

/*
 * Hand the bytes at `loc` to cb in pieces of at most CONTENT_READ_CHUNK.
 * Returns 0, cb's non-zero value if it stopped, or -1 with err (missing
 * segment, short file, I/O error), naming the file.
 */
int content_reader_read(struct content_reader *r, const struct content_loc *loc, content_chunk_cb cb, void *arg,
			char *err, size_t errsz);

/* ---- reclaiming space (prune) ---- */

/*
 * Delete the segments of `db_path` outside every session's segment range
 * (sessions.content_seg_first/_last, kept by the writer: so no event of
 * `db` refers to them), except the newest (a proxy may be appending to
 * it).  Call it inside a write
 * transaction on `db` (BEGIN IMMEDIATE): no writer can then be between
 * appending bytes and committing the rows that refer to them.  Returns
 * the number of segments deleted (0 when there is no directory), or -1
 * with err.  Sets *bytes_freed if not NULL.
 */
int content_sweep(sqlite3 *db, const char *db_path, uint64_t *bytes_freed, char *err, size_t errsz);

#endif
