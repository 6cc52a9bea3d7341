#include "names.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static const char hex[] = "0123456789ABCDEF";

static int put(char *buf, size_t size, size_t *pos, char c)
{
	if (*pos + 1 >= size)
		return -ENAMETOOLONG;
	buf[(*pos)++] = c;
	buf[*pos] = '\0';
	return 0;
}

static int put_escape(char *buf, size_t size, size_t *pos, unsigned char c)
{
	if (put(buf, size, pos, '%') || put(buf, size, pos, hex[c >> 4]) ||
	    put(buf, size, pos, hex[c & 15]))
		return -ENAMETOOLONG;
	return 0;
}

static int all_escaped(const char *name)
{
	return !strcmp(name, ".") || !strcmp(name, "..");
}

int fs_name_encode(const char *name, char *buf, size_t size)
{
	size_t pos = 0;
	int all = all_escaped(name);
	const unsigned char *p;

	if (size == 0)
		return -ENAMETOOLONG;
	buf[0] = '\0';
	/* "" is no file name (a readdir entry without one fails the whole
	 * listing with EIO): spell it as an escaped NUL */
	if (!*name)
		return put_escape(buf, size, &pos, 0);
	for (p = (const unsigned char *)name; *p; p++) {
		int rc;

		/* control characters (newline, tab, …) never appear raw */
		if (all || *p == '%' || *p == '/' || *p < 0x20 || *p == 0x7f)
			rc = put_escape(buf, size, &pos, *p);
		else
			rc = put(buf, size, &pos, (char)*p);
		if (rc)
			return rc;
	}
	/* a file name is at most 255 bytes */
	return pos > 255 ? -ENAMETOOLONG : 0;
}

static int unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int fs_name_decode(const char *file, char *buf, size_t size)
{
	char check[512];
	size_t pos = 0;
	const char *p;
	int rc;

	if (size == 0)
		return -ENAMETOOLONG;
	buf[0] = '\0';
	for (p = file; *p; p++) {
		char c = *p;

		if (c == '%') {
			int hi = unhex(p[1]), lo = hi < 0 ? -1 : unhex(p[2]);

			if (hi < 0 || lo < 0)
				return -EINVAL;
			c = (char)(hi << 4 | lo);
			p += 2;
			if (c == '\0') {
				/* only "%00" alone, the empty name */
				if (p[1] || p != file + 2)
					return -EINVAL;
				return 0;
			}
		}
		rc = put(buf, size, &pos, c);
		if (rc)
			return rc;
	}
	/* exactly one spelling per table: re-encode and compare */
	rc = fs_name_encode(buf, check, sizeof(check));
	if (rc || strcmp(check, file))
		return -EINVAL;
	return 0;
}

int fs_json_string(char *buf, size_t size, size_t *pos, const char *s)
{
	const unsigned char *p;
	char esc[8];

	if (*pos + 1 >= size)
		return -ENOSPC;
	buf[(*pos)++] = '"';
	for (p = (const unsigned char *)s; *p; p++) {
		const char *out = NULL;
		size_t n;

		switch (*p) {
		case '"': out = "\\\""; break;
		case '\\': out = "\\\\"; break;
		case '\n': out = "\\n"; break;
		case '\r': out = "\\r"; break;
		case '\t': out = "\\t"; break;
		default:
			if (*p < 0x20) {
				snprintf(esc, sizeof(esc), "\\u%04x", *p);
				out = esc;
			}
		}
		n = out ? strlen(out) : 1;
		if (*pos + n + 2 >= size)
			return -ENOSPC;
		if (out)
			memcpy(buf + *pos, out, n);
		else
			buf[*pos] = (char)*p;
		*pos += n;
	}
	buf[(*pos)++] = '"';
	buf[*pos] = '\0';
	return 0;
}
