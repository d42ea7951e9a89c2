/*
 * tools/bench/segment_write.c - what appending 1 MiB to a content segment
 * costs the writer thread, three ways (docs/performance.md, notes part
 * "small"):
 *
 *   0  pwrite() + fdatasync(), as content.c did until 2026-12-02
 *   1  the same, then posix_fadvise(DONTNEED) on the synced range (kept)
 *   2  O_DIRECT from an aligned buffer + fdatasync() (not kept: aligned
 *      staging copies, padding between batches, no O_DIRECT on tmpfs)
 *
 *   cc -O2 -o /tmp/segment_write tools/bench/segment_write.c
 *   /tmp/segment_write MODE COUNT FILE      (FILE is created and removed)
 *
 * Prints the wall-clock and thread-CPU time per MiB, the CPU split into
 * the write and the sync.  COUNT is capped at 4096 (4 GiB).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)

static double
clock_s(clockid_t id)
{
	struct timespec t;

	clock_gettime(id, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	double t0, c0, a, b, wcpu = 0, scpu = 0;
	int mode, count, fd, i;
	off_t off = 0;
	char *buf;

	if (argc != 4 || (mode = atoi(argv[1])) < 0 || mode > 2 || (count = atoi(argv[2])) < 1 || count > 4096) {
		fprintf(stderr, "usage: %s 0|1|2 COUNT FILE\n", argv[0]);
		return 2;
	}
	if ((buf = aligned_alloc(4096, MIB)) == NULL)
		return 1;
	memset(buf, 'x', MIB);
	fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (mode == 2 ? O_DIRECT : 0), 0600);
	if (fd < 0) {
		perror(argv[3]);
		return 1;
	}
	t0 = clock_s(CLOCK_MONOTONIC);
	c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
	for (i = 0; i < count; i++, off += MIB) {
		a = clock_s(CLOCK_THREAD_CPUTIME_ID);
		if (pwrite(fd, buf, MIB, off) != MIB) {
			perror("pwrite");
			return 1;
		}
		b = clock_s(CLOCK_THREAD_CPUTIME_ID);
		if (fdatasync(fd) < 0) {
			perror("fdatasync");
			return 1;
		}
		wcpu += b - a;
		scpu += clock_s(CLOCK_THREAD_CPUTIME_ID) - b;
		if (mode == 1)
			(void)posix_fadvise(fd, off, MIB, POSIX_FADV_DONTNEED);
	}
	printf("mode %d: %.0f us/MiB wall, %.0f us/MiB cpu (write %.0f, sync %.0f)\n", mode,
	       (clock_s(CLOCK_MONOTONIC) - t0) / count * 1e6, (clock_s(CLOCK_THREAD_CPUTIME_ID) - c0) / count * 1e6,
	       wcpu / count * 1e6, scpu / count * 1e6);
	close(fd);
	unlink(argv[3]);
	free(buf);
	return 0;
}
