/*
 * util.h - small helpers shared by the proxy and the CLI.
 */
#ifndef SMTPTAP_UTIL_H
#define SMTPTAP_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* Wall-clock time in microseconds since the epoch. */
int64_t util_now_us(void);

/* "127.0.0.1:25" or "[::1]:25" into buf (at least UTIL_ADDR_MAX bytes);
 * returns buf.  Unknown families give "?". */
#define UTIL_ADDR_MAX 64
char *util_format_addr(const struct sockaddr *sa, char *buf, size_t bufsz);

/*
 * Split "host:port", "[v6]:port" into host and port.  The host may be
 * empty (":2525").  Returns 0, or -1 with a reason in err.
 */
int util_split_hostport(const char *spec, char *host, size_t hostsz, char *port, size_t portsz, char *err,
			size_t errsz);

/* Format a one-line reason into err (errsz may be 0: nothing written),
 * the way every "char *err, size_t errsz" out-parameter is filled. */
void util_errf(char *err, size_t errsz, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Parse a decimal integer in [min, max]; returns 0 or -1. */
int util_parse_int(const char *s, long min, long max, long *out);

/*
 * A duration: one or more NUMBER UNIT pairs, unit s, m, h, d or w
 * ("30m", "12h", "7d", "2w", "1d12h"), into microseconds.  Returns 0, or
 * -1 (no unit, unknown unit, empty, overflow).
 */
int util_parse_age(const char *s, int64_t *out_us);
/*
 * A size: a number with an optional K, M, G or T (powers of 1024; "KB",
 * "KiB" and lower case too): "500M", "2G", "1048576".  Returns 0, or -1.
 */
int util_parse_size(const char *s, uint64_t *out);
/*
 * An address block: "10.0.0.0/8", "2001:db8::/32", or one address
 * ("192.0.2.1", "::1", "[::1]": prefix 32 or 128).  An IPv4-mapped IPv6
 * address ("::ffff:192.0.2.1") counts as its IPv4 address, so a v4 block
 * matches v4 clients of a dual-stack listener too.  Host bits past the
 * prefix are ignored.
 */
struct util_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	unsigned prefix;
};
/* Returns 0, or -1 with a reason in why (static text). */
int util_parse_cidr(const char *s, struct util_cidr *out, const char **why);
/* Is the address written in ip (as inet_ntop writes it) inside c? */
int util_cidr_match(const struct util_cidr *c, const char *ip);

/* RFC 3339 in UTC with microseconds: "2024-05-01T12:02:03.123456Z"
 * (what --json prints for a time). */
void util_fmt_rfc3339(char *buf, size_t bufsz, int64_t us);
/* "1.2 MiB", "512 B": for people. */
void util_fmt_bytes(char *buf, size_t bufsz, int64_t n);

#endif
