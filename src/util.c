/*
 * util.c - see util.h.
 */
#include "smtptap/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
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
