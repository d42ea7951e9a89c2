/*
 * util.c - see util.h.
 */
#include "smtptap/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t
util_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

char *
util_format_addr(const struct sockaddr *sa, char *buf, size_t bufsz)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)(const void *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, bufsz, "%s:%u", host, ntohs(sin->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)(const void *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, bufsz, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, bufsz, "?");
	}
	return buf;
}

int
util_split_hostport(const char *spec, char *host, size_t hostsz, char *port, size_t portsz, char *err,
		    size_t errsz)
{
	const char *colon, *h = spec;
	size_t hlen;

	if (spec[0] == '[') {
		const char *close = strchr(spec, ']');

		if (close == NULL || close[1] != ':') {
			snprintf(err, errsz, "'%s': expected [IPv6]:PORT", spec);
			return -1;
		}
		h = spec + 1;
		hlen = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(spec, ':');
		if (colon == NULL) {
			snprintf(err, errsz, "'%s': expected HOST:PORT", spec);
			return -1;
		}
		if (memchr(spec, ':', (size_t)(colon - spec)) != NULL) {
			snprintf(err, errsz, "'%s': put an IPv6 address in brackets, e.g. [::1]:2525", spec);
			return -1;
		}
		hlen = (size_t)(colon - spec);
	}
	if (hlen >= hostsz) {
		snprintf(err, errsz, "'%s': host name too long", spec);
		return -1;
	}
	long p;
	if (util_parse_int(colon + 1, 0, 65535, &p) < 0) {
		snprintf(err, errsz, "'%s': port must be a number from 0 to 65535", spec);
		return -1;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	snprintf(port, portsz, "%ld", p);
	return 0;
}

int
util_parse_int(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (s == NULL || *s == '\0')
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return -1;
	*out = v;
	return 0;
}

int
util_parse_age(const char *s, int64_t *out_us)
{
	static const struct {
		char unit;
		int64_t us;
	} units[] = {
		{ 's', 1000000LL }, { 'm', 60LL * 1000000 }, { 'h', 3600LL * 1000000 },
		{ 'd', 86400LL * 1000000 }, { 'w', 7LL * 86400 * 1000000 },
	};
	int64_t total = 0, v;
	size_t i;

	if (s == NULL || *s == '\0')
		return -1;
	while (*s != '\0') {
		if (*s < '0' || *s > '9')
			return -1;
		for (v = 0; *s >= '0' && *s <= '9'; s++) {
			if (v > (INT64_MAX - 9) / 10)
				return -1;
			v = v * 10 + (*s - '0');
		}
		for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
			if (*s == units[i].unit)
				break;
		if (i == sizeof(units) / sizeof(units[0]))
			return -1; /* a number needs its unit */
		if (v > (INT64_MAX - total) / units[i].us)
			return -1;
		total += v * units[i].us;
		s++;
	}
	*out_us = total;
	return 0;
}

int
util_parse_size(const char *s, uint64_t *out)
{
	uint64_t v = 0, mul = 1;
	const char *p = s;

	if (s == NULL || *p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	switch (*p | 0x20) {
	case 'k':
		mul = 1ULL << 10;
		break;
	case 'm':
		mul = 1ULL << 20;
		break;
	case 'g':
		mul = 1ULL << 30;
		break;
	case 't':
		mul = 1ULL << 40;
		break;
	default:
		break;
	}
	if (mul > 1) {
		p++;
		if ((*p | 0x20) == 'i')
			p++;
		if (*p == 'B' || *p == 'b')
			p++;
	} else if (*p == 'B' || *p == 'b') {
		p++;
	}
	if (*p != '\0' || v > UINT64_MAX / mul)
		return -1;
	*out = v * mul;
	return 0;
}

/* An address in text into family and bytes, IPv4-mapped IPv6 as IPv4.
 * Returns 0 or -1. */
static int
util_parse_ip(const char *s, size_t len, int *family, uint8_t addr[16])
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	char buf[INET6_ADDRSTRLEN + 1];

	if (len > 0 && s[0] == '[' && s[len - 1] == ']') {
		s++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, buf, addr) == 1) {
		*family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, buf, addr) != 1)
		return -1;
	*family = AF_INET6;
	if (memcmp(addr, mapped, sizeof(mapped)) == 0) {
		memmove(addr, addr + 12, 4);
		memset(addr + 4, 0, 12);
		*family = AF_INET;
	}
	return 0;
}

int
util_parse_cidr(const char *s, struct util_cidr *out, const char **why)
{
	const char *slash = strchr(s, '/');
	size_t alen = slash != NULL ? (size_t)(slash - s) : strlen(s);
	unsigned max;
	bool mapped;
	long pfx;

	if (util_parse_ip(s, alen, &out->family, out->addr) < 0) {
		*why = "expected an IP address or a block such as 192.0.2.1, 10.0.0.0/8, ::1 or 2001:db8::/32";
		return -1;
	}
	/* "::ffff:10.0.0.0/104" is 10.0.0.0/8: a v6 prefix over the mapping */
	mapped = out->family == AF_INET && memchr(s, ':', alen) != NULL;
	max = out->family == AF_INET && !mapped ? 32 : 128;
	out->prefix = out->family == AF_INET ? 32 : 128;
	if (slash == NULL)
		return 0;
	if (util_parse_int(slash + 1, 0, max, &pfx) < 0 || slash[1] < '0' || slash[1] > '9') {
		*why = max == 32 ? "an IPv4 prefix runs from 0 to 32" : "an IPv6 prefix runs from 0 to 128";
		return -1;
	}
	if (mapped) {
		if (pfx < 96) {
			*why = "an IPv4-mapped block needs a prefix from 96 to 128";
			return -1;
		}
		pfx -= 96;
	}
	out->prefix = (unsigned)pfx;
	return 0;
}

int
util_cidr_match(const struct util_cidr *c, const char *ip)
{
	uint8_t a[16];
	unsigned full, rest;
	int family;

	if (ip == NULL || util_parse_ip(ip, strlen(ip), &family, a) < 0 || family != c->family)
		return 0;
	full = c->prefix / 8;
	rest = c->prefix % 8;
	if (memcmp(a, c->addr, full) != 0)
		return 0;
	return rest == 0 || ((a[full] ^ c->addr[full]) & (uint8_t)(0xff << (8 - rest))) == 0;
}

/* RFC 3339 in UTC with microseconds: "2024-05-01T12:02:03.123456Z". */
void
util_fmt_rfc3339(char *buf, size_t bufsz, int64_t us)
{
	int64_t sec, frac;
	time_t t;
	struct tm tm;

	sec = us / 1000000;
	frac = us % 1000000;
	if (frac < 0) {
		frac += 1000000;
		sec--;
	}
	t = (time_t)sec;
	if (gmtime_r(&t, &tm) == NULL)
		memset(&tm, 0, sizeof(tm));
	snprintf(buf, bufsz, "%04d-%02d-%02dT%02d:%02d:%02d.%06" PRId64 "Z", tm.tm_year + 1900, tm.tm_mon + 1,
		 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

void
util_fmt_bytes(char *buf, size_t bufsz, int64_t n)
{
	static const char *const units[] = { "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	int i = -1;

	if (n < 1024 && n > -1024) {
		snprintf(buf, bufsz, "%" PRId64 " B", n);
		return;
	}
	while ((v >= 1024 || v <= -1024) && i < 3) {
		v /= 1024;
		i++;
	}
	snprintf(buf, bufsz, "%.1f %s", v, units[i]);
}

void
util_errf(char *err, size_t errsz, const char *fmt, ...)
{
	va_list ap;

	if (errsz == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errsz, fmt, ap);
	va_end(ap);
}
