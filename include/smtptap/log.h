/*
 * log.h - diagnostics on stderr.
 *
 * One line per message: "smtptap: " then the text.  Session lines start
 * with the session id ("s=42 ...") followed by key=value fields, so they
 * can be grepped.  log_warn() appends strerror(errno); log_warnx() does not.
 */
#ifndef SMTPTAP_LOG_H
#define SMTPTAP_LOG_H

#include <stdbool.h>

#define LOG_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* verbosity: -1 = errors only (a batch replay), 0 = errors and one line per
 * session, 1 = -v, 2 = -vv */
void log_init(int verbosity);
int log_verbosity(void);

void log_info(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_debug(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warn(const char *fmt, ...) LOG_PRINTF(1, 2);
void log_warnx(const char *fmt, ...) LOG_PRINTF(1, 2);

/* Should output to this stream be coloured?  (a TTY and NO_COLOR unset) */
bool log_color_enabled(int fd);

#endif
