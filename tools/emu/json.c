/*
 * The strict JSON reader of dtfs-emu. json-c's own tokener turns every
 * number into a C number, so an integer beyond 64 bits came back clamped
 * (400 nines as 18446744073709551615). This reader builds the same json-c
 * objects but gives every number a serializer that writes the number's text
 * exactly as it was received, so values keep their text in both dialects.
 *
 * Strict: RFC 8259 grammar, UTF-8 only, no duplicate member names, nesting
 * at most EMU_JSON_DEPTH deep. A lone surrogate escape becomes U+FFFD, as
 * json-c does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_i.h"
#include "utf8.h"

#define EMU_JSON_DEPTH 64

struct jp {
	const char *s;
	size_t n;
	size_t i;
	struct emu_buf tmp;
};

static void skip_ws(struct jp *p)
{
	while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' ||
			       p->s[p->i] == '\r' || p->s[p->i] == '\n'))
		p->i++;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

size_t emu_json_number_len(const char *s, size_t n, bool *integer)
{
	size_t i = 0;

	*integer = true;
	if (i < n && s[i] == '-')
		i++;
	if (i >= n || !is_digit(s[i]))
		return 0;
	if (s[i] == '0')
		i++;
	else
		while (i < n && is_digit(s[i]))
			i++;
	if (i < n && s[i] == '.') {
		size_t j = ++i;

		while (i < n && is_digit(s[i]))
			i++;
		if (i == j)
			return 0;
		*integer = false;
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < n && (s[i] == '+' || s[i] == '-'))
			i++;
		size_t j = i;

		while (i < n && is_digit(s[i]))
			i++;
		if (i == j)
			return 0;
		*integer = false;
	}
	return i;
}

struct json_object *emu_json_number(const char *text, size_t len)
{
	bool integer;
	char *t;
	struct json_object *o;

	if (emu_json_number_len(text, len, &integer) != len)
		return NULL;
	t = emu_xmalloc(len + 1);
	memcpy(t, text, len);
	t[len] = '\0';
	if (integer) {
		errno = 0;
		long long v = strtoll(t, NULL, 10);

		o = json_object_new_int64(v);
	} else {
		o = json_object_new_double(strtod(t, NULL));
	}
	/* the text is what is written back, whatever C made of it */
	json_object_set_serializer(o, json_object_userdata_to_json_string, t,
				   json_object_free_userdata);
	return o;
}

static int hex4(const char *s, unsigned *out)
{
	unsigned v = 0;

	for (int k = 0; k < 4; k++) {
		char c = s[k];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

static void put_utf8(struct emu_buf *b, unsigned cp)
{
	char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	emu_buf_add(b, u, n);
}

/* A string at p->i (the opening quote); the decoded text goes to p->tmp. */
static int parse_string(struct jp *p)
{
	p->tmp.len = 0;
	emu_buf_add(&p->tmp, "", 0);
	p->i++;
	while (p->i < p->n) {
		unsigned char c = (unsigned char)p->s[p->i];

		if (c == '"') {
			p->i++;
			return 0;
		}
		if (c < 0x20)
			return -EINVAL;
		if (c == '\\') {
			if (p->i + 1 >= p->n)
				return -EINVAL;
			char e = p->s[p->i + 1];
			static const char from[] = "\"\\/bfnrt";
			static const char to[] = "\"\\/\b\f\n\r\t";
			const char *at = strchr(from, e);

			if (e && at) {
				emu_buf_add(&p->tmp, &to[at - from], 1);
				p->i += 2;
				continue;
			}
			if (e != 'u' || p->i + 6 > p->n)
				return -EINVAL;
			unsigned cp, lo;

			if (hex4(p->s + p->i + 2, &cp))
				return -EINVAL;
			p->i += 6;
			if (cp >= 0xd800 && cp <= 0xdbff && p->i + 6 <= p->n &&
			    p->s[p->i] == '\\' && p->s[p->i + 1] == 'u' &&
			    hex4(p->s + p->i + 2, &lo) == 0 && lo >= 0xdc00 &&
			    lo <= 0xdfff) {
				cp = 0x10000 + ((cp - 0xd800) << 10) +
				     (lo - 0xdc00);
				p->i += 6;
			} else if (cp >= 0xd800 && cp <= 0xdfff) {
				cp = 0xfffd;
			}
			put_utf8(&p->tmp, cp);
			continue;
		}
		size_t len = utf8_seq_len((const unsigned char *)p->s + p->i,
					  p->n - p->i);

		if (!len)
			return -EINVAL;
		emu_buf_add(&p->tmp, p->s + p->i, len);
		p->i += len;
	}
	return -EINVAL;
}

static struct json_object *parse_value(struct jp *p, int depth);

static int parse_literal(struct jp *p, const char *word)
{
	size_t n = strlen(word);

	if (p->n - p->i < n || memcmp(p->s + p->i, word, n) != 0)
		return -EINVAL;
	p->i += n;
	return 0;
}

static struct json_object *parse_object(struct jp *p, int depth)
{
	struct json_object *o = json_object_new_object();

	p->i++;
	skip_ws(p);
	if (p->i < p->n && p->s[p->i] == '}') {
		p->i++;
		return o;
	}
	for (;;) {
		skip_ws(p);
		if (p->i >= p->n || p->s[p->i] != '"' || parse_string(p))
			goto fail;
		/* member names may hold NUL bytes only as text json-c cannot
		 * key on: refuse them */
		if (strlen(p->tmp.data) != p->tmp.len)
			goto fail;
		char *name = emu_xstrdup(p->tmp.data);

		if (json_object_object_get_ex(o, name, NULL)) {
			free(name);
			goto fail;
		}
		skip_ws(p);
		if (p->i >= p->n || p->s[p->i] != ':') {
			free(name);
			goto fail;
		}
		p->i++;
		struct json_object *v = parse_value(p, depth + 1);

		if (p->i == (size_t)-1) {
			free(name);
			goto fail;
		}
		json_object_object_add(o, name, v);
		free(name);
		skip_ws(p);
		if (p->i < p->n && p->s[p->i] == ',') {
			p->i++;
			continue;
		}
		if (p->i < p->n && p->s[p->i] == '}') {
			p->i++;
			return o;
		}
		goto fail;
	}
fail:
	json_object_put(o);
	p->i = (size_t)-1;
	return NULL;
}

static struct json_object *parse_array(struct jp *p, int depth)
{
	struct json_object *a = json_object_new_array();

	p->i++;
	skip_ws(p);
	if (p->i < p->n && p->s[p->i] == ']') {
		p->i++;
		return a;
	}
	for (;;) {
		struct json_object *v = parse_value(p, depth + 1);

		if (p->i == (size_t)-1)
			goto fail;
		json_object_array_add(a, v);
		skip_ws(p);
		if (p->i < p->n && p->s[p->i] == ',') {
			p->i++;
			continue;
		}
		if (p->i < p->n && p->s[p->i] == ']') {
			p->i++;
			return a;
		}
		goto fail;
	}
fail:
	json_object_put(a);
	p->i = (size_t)-1;
	return NULL;
}

/* A value at p->i; on error p->i becomes (size_t)-1. NULL is also the
 * value of a JSON null. */
static struct json_object *parse_value(struct jp *p, int depth)
{
	struct json_object *o = NULL;

	skip_ws(p);
	if (depth > EMU_JSON_DEPTH || p->i >= p->n)
		goto fail;
	switch (p->s[p->i]) {
	case '{':
		return parse_object(p, depth);
	case '[':
		return parse_array(p, depth);
	case '"':
		if (parse_string(p))
			goto fail;
		return json_object_new_string_len(p->tmp.data, (int)p->tmp.len);
	case 't':
		if (parse_literal(p, "true"))
			goto fail;
		return json_object_new_boolean(1);
	case 'f':
		if (parse_literal(p, "false"))
			goto fail;
		return json_object_new_boolean(0);
	case 'n':
		if (parse_literal(p, "null"))
			goto fail;
		return NULL;
	default: {
		bool integer;
		size_t len =
		    emu_json_number_len(p->s + p->i, p->n - p->i, &integer);

		if (!len)
			goto fail;
		o = emu_json_number(p->s + p->i, len);
		p->i += len;
		return o;
	}
	}
fail:
	p->i = (size_t)-1;
	return NULL;
}

struct json_object *emu_json_parse_ex(const char *s, size_t len, bool *ok)
{
	struct jp p = {s, len, 0, {NULL, 0, 0}};
	struct json_object *o;

	o = parse_value(&p, 0);
	if (p.i != (size_t)-1)
		skip_ws(&p);
	emu_buf_release(&p.tmp);
	*ok = p.i == len;
	if (!*ok) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

struct json_object *emu_json_parse(const char *s, size_t len)
{
	bool ok;

	return emu_json_parse_ex(s, len, &ok);
}
