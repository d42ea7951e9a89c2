/*
 * log.c - see log.h.  stderr is line-buffered by default on a TTY but not
 * on a pipe; each message is built whole and written with one call so lines
 * from the writer thread and the event loop never interleave.
 */
#include "smtptap/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int log_level;

static void log_emit(const char *fmt, va_list ap, int err) LOG_PRINTF(1, 0);

void
log_init(int verbosity)
{
	log_level = verbosity;
}

int
log_verbosity(void)
{
	return log_level;
}

static void
log_emit(const char *fmt, va_list ap, int err)
{
	char buf[2048];
	int n = snprintf(buf, sizeof(buf), "smtptap: ");
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);

	if (len > sizeof(buf) - 2)
		len = sizeof(buf) - 2;
	if (err) {
		int k = snprintf(buf + len, sizeof(buf) - len, ": %s", strerror(err));
		len += k < 0 ? 0 : (size_t)k;
		if (len > sizeof(buf) - 2)
			len = sizeof(buf) - 2;
	}
	buf[len++] = '\n';
	/* A failed write to stderr has nowhere to be reported. */
	if (write(STDERR_FILENO, buf, len) < 0)
		return;
}

void
log_info(const char *fmt, ...)
{
	va_list ap;

	if (log_level < 0)
		return;
	va_start(ap, fmt);
	log_emit(fmt, ap, 0);
	va_end(ap);
}

void
log_debug(const char *fmt, ...)
{
	va_list ap;

	if (log_level < 2)
		return;
	va_start(ap, fmt);
	log_emit(fmt, ap, 0);
	va_end(ap);
}

void
log_warn(const char *fmt, ...)
{
	va_list ap;
	int err = errno;

	va_start(ap, fmt);
	log_emit(fmt, ap, err);
	va_end(ap);
}

void
log_warnx(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_emit(fmt, ap, 0);
	va_end(ap);
}

bool
log_color_enabled(int fd)
{
	const char *nc = getenv("NO_COLOR");

	if (nc != NULL && nc[0] != '\0')
		return false;
	return isatty(fd) == 1;
}
