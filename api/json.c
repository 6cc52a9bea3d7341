/*
 * json.c: the bytes of rows.
 *
 * Rows pages and import lines go through a small strict scanner of our own
 * (struct jdoc) instead of json-c: it keeps every number's text exactly
 * (json-c turns -0 into 0 and clamps integers beyond 64 bits), allocates
 * one node array per page instead of one object per value, and makes a
 * 1000-row page a single pass. Its output is byte-for-byte what json-c's
 * JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE writes for the
 * same document, numbers aside (tests/unit/test_api.c checks this). The
 * scan flags the values whose text already is that output (JF_VERBATIM),
 * so a row's columns object can be copied rather than rebuilt.
 * Schemas and small bodies use json-c.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "api_i.h"
#include "utf8.h"

#define JDOC_MAX_DEPTH 128

/* The scanner's small steps, inlined into the loop of jp_container():
 * a page is ~15 values per row, and calls cost as much as the scanning. */
#define JP_INLINE static inline __attribute__((always_inline))

/* ---- abuf ------------------------------------------------------------- */

void abuf_init(struct abuf *b)
{
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
	b->oom = false;
}

void abuf_release(struct abuf *b)
{
	free(b->p);
	abuf_init(b);
}

bool abuf_reserve(struct abuf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (b->oom)
		return false;
	if (extra > SIZE_MAX - b->len - 1)
		goto fail;
	need = b->len + extra + 1;
	if (need <= b->cap)
		return true;
	cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap = cap > SIZE_MAX / 2 ? need : cap * 2;
	p = realloc(b->p, cap);
	if (!p)
		goto fail;
	b->p = p;
	b->cap = cap;
	b->p[b->len] = '\0';
	return true;
fail:
	b->oom = true;
	return false;
}

void abuf_add(struct abuf *b, const void *p, size_t n)
{
	if (!n || !abuf_reserve(b, n))
		return;
	memcpy(b->p + b->len, p, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void abuf_addc(struct abuf *b, char c)
{
	if (!abuf_reserve(b, 1))
		return;
	b->p[b->len++] = c;
	b->p[b->len] = '\0';
}

void abuf_adds(struct abuf *b, const char *s)
{
	abuf_add(b, s, strlen(s));
}

char *abuf_detach(struct abuf *b, size_t *len)
{
	char *p;

	if (b->oom || !abuf_reserve(b, 0)) {
		abuf_release(b);
		return NULL;
	}
	p = b->p;
	if (len)
		*len = b->len;
	abuf_init(b);
	return p;
}

/* ---- scanner ---------------------------------------------------------- */

struct jparser {
	struct jdoc *d;
	const char *s;
	size_t n, pos;
	int flags;
	int depth;
	uint32_t nonverb; /* whitespace runs and non-json-c escapes so far */
};

void jdoc_init(struct jdoc *d)
{
	memset(d, 0, sizeof(*d));
}

void jdoc_release(struct jdoc *d)
{
	free(d->nodes);
	jdoc_init(d);
}

static int jp_fail(struct jparser *p, const char *why)
{
	snprintf(p->d->err, sizeof(p->d->err), "%s at byte %zu", why, p->pos);
	return -EINVAL;
}

static int jp_grow(struct jparser *p)
{
	struct jdoc *d = p->d;
	struct jnode *nn;
	size_t cap = d->cap ? d->cap * 2 : 64;

	/* a first guess from the text: a rows page has a node per 12 bytes
	 * or so, so one allocation usually does */
	if (cap < p->n / 8)
		cap = p->n / 8;
	if (cap > UINT32_MAX - 1)
		return jp_fail(p, "document too large");
	nn = realloc(d->nodes, cap * sizeof(*nn));
	if (!nn)
		return -ENOMEM;
	d->nodes = nn;
	d->cap = cap;
	return 0;
}

JP_INLINE int jp_push(struct jparser *p, enum jtype t, size_t off,
		      uint32_t *idx)
{
	struct jdoc *d = p->d;
	struct jnode *nn;

	if (__builtin_expect(d->count == d->cap, 0)) {
		int rc = jp_grow(p);

		if (rc)
			return rc;
	}
	*idx = (uint32_t)d->count;
	nn = &d->nodes[d->count++];
	nn->type = (uint8_t)t;
	nn->flags = 0;
	nn->off = (uint32_t)off;
	nn->len = 0;
	nn->end = 0;
	nn->n = 0;
	return 0;
}

/* Whitespace between tokens; inside a container it makes the container's
 * text differ from its compact form, which p->nonverb counts. */
JP_INLINE void jp_ws(struct jparser *p)
{
	size_t i = p->pos;

	if (i >= p->n || (unsigned char)p->s[i] > ' ')
		return;
	while (i < p->n) {
		char c = p->s[i];

		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		i++;
	}
	if (i != p->pos)
		p->nonverb++;
	p->pos = i;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * String scanning skips plain bytes a block at a time and stops at the
 * first byte it must look at: '"', '\\', a control, and when validating
 * UTF-8 any byte >= 0x80. SSE2 takes 16 bytes at a time where the
 * compiler has it (every x86-64); the portable loop takes 8 (SWAR): its
 * has-zero-byte trick can mark false bytes, but only above a true one
 * (borrows run upwards), so the lowest mark, in address order, is exact.
 */
#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGHS 0x8080808080808080ULL

static inline uint64_t swar_load(const unsigned char *s)
{
	uint64_t x;

	memcpy(&x, s, sizeof(x));
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	x = __builtin_bswap64(x); /* lowest address in the low byte */
#endif
	return x;
}

/* The top bit of each byte to look at set (and maybe of bytes above). */
static inline uint64_t swar_stops(uint64_t x, uint64_t high)
{
	uint64_t q = x ^ (SWAR_ONES * '"'), b = x ^ (SWAR_ONES * '\\');

	return (((q - SWAR_ONES) & ~q) | ((b - SWAR_ONES) & ~b) |
		((x - SWAR_ONES * 0x20) & ~x) | (x & high)) &
	       SWAR_HIGHS;
}

/* The first byte to look at from s[i] on, or a byte among the last 7 of
 * s[0..n) (which the caller checks one by one), or n. */
static inline size_t str_skip(const unsigned char *s, size_t i, size_t n,
			      bool utf8)
{
#ifdef __SSE2__
	const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\');
	const __m128i c1f = _mm_set1_epi8(0x1f), c20 = _mm_set1_epi8(0x20);

	while (i + 16 <= n) {
		__m128i v = _mm_loadu_si128((const __m128i *)(s + i));
		__m128i stop = _mm_or_si128(_mm_cmpeq_epi8(v, quote),
					    _mm_cmpeq_epi8(v, bslash));
		unsigned m;

		/* signed compare: < 0x20 or >= 0x80; min: < 0x20 */
		if (utf8)
			stop = _mm_or_si128(stop, _mm_cmplt_epi8(v, c20));
		else
			stop = _mm_or_si128(
			    stop, _mm_cmpeq_epi8(_mm_min_epu8(v, c1f), v));
		m = (unsigned)_mm_movemask_epi8(stop);
		if (m)
			return i + (size_t)__builtin_ctz(m);
		i += 16;
	}
#endif
	while (i + 8 <= n) {
		uint64_t m =
		    swar_stops(swar_load(s + i), utf8 ? SWAR_HIGHS : 0);

		if (m)
			return i + ((size_t)__builtin_ctzll(m) >> 3);
		i += 8;
	}
	return i;
}

/* Does \uXXXX at h (the 4 hex digits) read exactly as json-c writes the
 * character it stands for? json-c escapes only controls that have no
 * short form, as \u00xx in lower case; every other \u escape decodes to
 * something it writes differently. */
static bool u_escape_canonical(const unsigned char *h)
{
	int v;

	if (h[0] != '0' || h[1] != '0' || (h[2] != '0' && h[2] != '1') ||
	    !((h[3] >= '0' && h[3] <= '9') || (h[3] >= 'a' && h[3] <= 'f')))
		return false;
	v = (h[2] - '0') << 4 | hexval(h[3]);
	return v != '\b' && v != '\t' && v != '\n' && v != '\f' && v != '\r';
}

/* The code unit of the checked \uXXXX escape at s[i]. */
static unsigned u_escape_value(const unsigned char *s, size_t i)
{
	return (unsigned)(hexval(s[i + 2]) << 12 | hexval(s[i + 3]) << 8 |
			  hexval(s[i + 4]) << 4 | hexval(s[i + 5]));
}

/* Is the checked \uXXXX escape at s[i] half of a surrogate pair without
 * its other half (a high one not followed by a low one, or a low one)? */
static bool jp_lone_surrogate(const unsigned char *s, size_t i, size_t n)
{
	unsigned cp = u_escape_value(s, i), lo;

	if (cp >= 0xdc00 && cp <= 0xdfff)
		return true;
	if (cp < 0xd800 || cp > 0xdbff)
		return false;
	if (i + 12 > n || s[i + 6] != '\\' || s[i + 7] != 'u' ||
	    hexval(s[i + 8]) < 0 || hexval(s[i + 9]) < 0 ||
	    hexval(s[i + 10]) < 0 || hexval(s[i + 11]) < 0)
		return true;
	lo = u_escape_value(s, i + 6);
	return lo < 0xdc00 || lo > 0xdfff;
}

/* The rest of a string from s[*pos], the first byte str_skip() stopped
 * at: escapes, UTF-8, errors. On success *pos is the closing quote. */
static int jp_string_rest(struct jparser *p, size_t *pos, uint8_t *flags)
{
	const unsigned char *s = (const unsigned char *)p->s;
	const size_t n = p->n;
	const bool utf8 = p->flags & JDOC_VALIDATE_UTF8;
	size_t i = *pos;

	for (;; i = str_skip(s, i, n, utf8)) {
		unsigned char c;

		if (i >= n) {
			p->pos = i;
			return jp_fail(p, "unterminated string");
		}
		c = s[i];
		if (c == '"')
			break;
		if (c == '\\') {
			*flags |= JF_ESCAPED;
			if (i + 1 >= n) {
				p->pos = i;
				return jp_fail(p, "unterminated string");
			}
			c = s[i + 1];
			if (c == 'u') {
				if (i + 6 > n || hexval(s[i + 2]) < 0 ||
				    hexval(s[i + 3]) < 0 ||
				    hexval(s[i + 4]) < 0 ||
				    hexval(s[i + 5]) < 0) {
					p->pos = i;
					return jp_fail(p, "bad \\u escape");
				}
				if (!u_escape_canonical(s + i + 2))
					*flags &= (uint8_t)~JF_VERBATIM;
				/* strict: a surrogate must be a pair, or
				 * two keys would both decode to U+FFFD */
				if (utf8 && jp_lone_surrogate(s, i, n)) {
					p->pos = i;
					return jp_fail(p, "lone surrogate "
						       "\\u escape");
				}
				if (utf8 && u_escape_value(s, i) >= 0xd800 &&
				    u_escape_value(s, i) <= 0xdbff)
					i += 6; /* the high half of a pair */
				i += 6;
				continue;
			}
			switch (c) {
			case '/': /* json-c (NOSLASHESCAPE) writes '/' */
				*flags &= (uint8_t)~JF_VERBATIM;
				break;
			case '"':
			case '\\':
			case 'b':
			case 'f':
			case 'n':
			case 'r':
			case 't':
				break;
			default:
				p->pos = i;
				return jp_fail(p, "bad escape");
			}
			i += 2;
			continue;
		}
		if (c < 0x20) {
			p->pos = i;
			return jp_fail(p, "control character in string");
		}
		if (c >= 0x80 && utf8) {
			size_t l = utf8_seq_len(s + i, n - i);

			if (!l) {
				p->pos = i;
				return jp_fail(p, "invalid UTF-8");
			}
			i += l;
			continue;
		}
		i++; /* a plain byte among the last 7 */
	}
	*pos = i;
	return 0;
}

/* p->pos is at the opening quote. Most strings end at the first byte
 * str_skip() stops at, so this part is inlined where strings are read. */
JP_INLINE int jp_string(struct jparser *p, uint32_t *idx)
{
	const unsigned char *s = (const unsigned char *)p->s;
	size_t start = p->pos + 1;
	size_t i = str_skip(s, start, p->n, p->flags & JDOC_VALIDATE_UTF8);
	uint8_t flags = JF_VERBATIM;
	struct jnode *nd;
	int rc;

	if (i >= p->n || s[i] != '"') {
		rc = jp_string_rest(p, &i, &flags);
		if (rc)
			return rc;
		if (!(flags & JF_VERBATIM))
			p->nonverb++;
	}
	rc = jp_push(p, JT_STRING, start, idx);
	if (rc)
		return rc;
	nd = &p->d->nodes[*idx];
	nd->len = (uint32_t)(i - start);
	nd->flags = flags;
	nd->end = (uint32_t)p->d->count;
	p->pos = i + 1;
	return 0;
}

static bool isdig(char c)
{
	return c >= '0' && c <= '9';
}

JP_INLINE int jp_number(struct jparser *p, uint32_t *idx)
{
	const char *s = p->s;
	size_t start = p->pos, i = start;
	uint8_t flags = JF_VERBATIM;
	int rc;

	if (i < p->n && s[i] == '-')
		i++;
	if (i < p->n && s[i] == '0') {
		i++;
	} else if (i < p->n && s[i] >= '1' && s[i] <= '9') {
		while (i < p->n && isdig(s[i]))
			i++;
	} else {
		p->pos = i;
		return jp_fail(p, "bad number");
	}
	if (i < p->n && s[i] == '.') {
		flags |= JF_FRACEXP;
		i++;
		if (i >= p->n || !isdig(s[i])) {
			p->pos = i;
			return jp_fail(p, "bad number");
		}
		while (i < p->n && isdig(s[i]))
			i++;
	}
	if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
		flags |= JF_FRACEXP;
		i++;
		if (i < p->n && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i >= p->n || !isdig(s[i])) {
			p->pos = i;
			return jp_fail(p, "bad number");
		}
		while (i < p->n && isdig(s[i]))
			i++;
	}
	rc = jp_push(p, JT_NUMBER, start, idx);
	if (rc)
		return rc;
	p->d->nodes[*idx].len = (uint32_t)(i - start);
	p->d->nodes[*idx].flags = flags;
	p->d->nodes[*idx].end = (uint32_t)p->d->count;
	p->pos = i;
	return 0;
}

JP_INLINE int jp_literal(struct jparser *p, const char *word, enum jtype t,
			 uint32_t *idx)
{
	size_t l = strlen(word);
	int rc;

	if (p->n - p->pos < l || memcmp(p->s + p->pos, word, l) != 0)
		return jp_fail(p, "unexpected character");
	rc = jp_push(p, t, p->pos, idx);
	if (rc)
		return rc;
	p->d->nodes[*idx].len = (uint32_t)l;
	p->d->nodes[*idx].flags = JF_VERBATIM;
	p->d->nodes[*idx].end = (uint32_t)p->d->count;
	p->pos += l;
	return 0;
}

JP_INLINE int jp_value(struct jparser *p, uint32_t *idx);

static int jp_container(struct jparser *p, bool object, uint32_t *idx)
{
	char close = object ? '}' : ']';
	uint32_t me, child, n = 0, nonverb = p->nonverb;
	int rc;

	if (++p->depth > JDOC_MAX_DEPTH)
		return jp_fail(p, "nested too deeply");
	rc = jp_push(p, object ? JT_OBJECT : JT_ARRAY, p->pos, &me);
	if (rc)
		return rc;
	p->pos++;
	jp_ws(p);
	if (p->pos < p->n && p->s[p->pos] == close) {
		p->pos++;
		goto done;
	}
	for (;;) {
		if (object) {
			if (p->pos >= p->n || p->s[p->pos] != '"')
				return jp_fail(p, "expected a member name");
			rc = jp_string(p, &child);
			if (rc)
				return rc;
			jp_ws(p);
			if (p->pos >= p->n || p->s[p->pos] != ':')
				return jp_fail(p, "expected ':'");
			p->pos++;
			jp_ws(p);
		}
		rc = jp_value(p, &child);
		if (rc)
			return rc;
		n++;
		jp_ws(p);
		if (p->pos >= p->n)
			return jp_fail(p, "unexpected end");
		if (p->s[p->pos] == ',') {
			p->pos++;
			jp_ws(p);
			continue;
		}
		if (p->s[p->pos] == close) {
			p->pos++;
			break;
		}
		return jp_fail(p, object ? "expected ',' or '}'"
					 : "expected ',' or ']'");
	}
done:
	p->depth--;
	/* compact, and every string inside as json-c writes it */
	if (p->nonverb == nonverb)
		p->d->nodes[me].flags = JF_VERBATIM;
	p->d->nodes[me].n = n;
	p->d->nodes[me].len = (uint32_t)(p->pos - p->d->nodes[me].off);
	p->d->nodes[me].end = (uint32_t)p->d->count;
	*idx = me;
	return 0;
}

JP_INLINE int jp_value(struct jparser *p, uint32_t *idx)
{
	if (p->pos >= p->n)
		return jp_fail(p, "unexpected end");
	switch (p->s[p->pos]) {
	case '{':
		return jp_container(p, true, idx);
	case '[':
		return jp_container(p, false, idx);
	case '"':
		return jp_string(p, idx);
	case 't':
		return jp_literal(p, "true", JT_TRUE, idx);
	case 'f':
		return jp_literal(p, "false", JT_FALSE, idx);
	case 'n':
		return jp_literal(p, "null", JT_NULL, idx);
	default:
		return jp_number(p, idx);
	}
}

int jdoc_parse(struct jdoc *d, const char *text, size_t len, int flags)
{
	struct jparser p = {.d = d, .s = text, .n = len, .flags = flags};
	uint32_t root;
	int rc;

	d->text = text;
	d->len = len;
	d->count = 0;
	d->err[0] = '\0';
	if (len >= UINT32_MAX)
		return jp_fail(&p, "document too large");
	jp_ws(&p);
	rc = jp_value(&p, &root);
	if (rc)
		return rc;
	jp_ws(&p);
	if (p.pos != p.n)
		return jp_fail(&p, "trailing characters");
	return 0;
}

uint32_t jdoc_member(const struct jdoc *d, uint32_t obj, const char *name)
{
	size_t nlen = strlen(name);
	uint32_t k, m;

	if (d->nodes[obj].type != JT_OBJECT)
		return UINT32_MAX;
	k = jdoc_child(obj);
	for (m = 0; m < d->nodes[obj].n; m++) {
		uint32_t v = jdoc_next(d, k);

		if (jdoc_str_eq(d, k, name, nlen))
			return v;
		k = jdoc_next(d, v);
	}
	return UINT32_MAX;
}

static void utf8_put(struct abuf *out, uint32_t cp)
{
	char b[4];

	if (cp < 0x80) {
		abuf_addc(out, (char)cp);
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | (cp >> 6));
		b[1] = (char)(0x80 | (cp & 0x3f));
		abuf_add(out, b, 2);
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | (cp >> 12));
		b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		abuf_add(out, b, 3);
	} else {
		b[0] = (char)(0xf0 | (cp >> 18));
		b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		abuf_add(out, b, 4);
	}
}

static uint32_t hex4(const unsigned char *s)
{
	return (uint32_t)(hexval(s[0]) << 12 | hexval(s[1]) << 8 |
			  hexval(s[2]) << 4 | hexval(s[3]));
}

void jdoc_str_decode(const struct jdoc *d, uint32_t i, struct abuf *out)
{
	const struct jnode *nd = &d->nodes[i];
	const unsigned char *s = (const unsigned char *)d->text + nd->off;
	size_t n = nd->len, k = 0, run;

	if (!(nd->flags & JF_ESCAPED)) {
		abuf_add(out, s, n);
		return;
	}
	while (k < n) {
		uint32_t cp;

		for (run = k; run < n && s[run] != '\\'; run++)
			;
		abuf_add(out, s + k, run - k);
		k = run;
		if (k >= n)
			break;
		/* s[k] == '\\'; the scanner checked the escape */
		switch (s[k + 1]) {
		case 'b':
			abuf_addc(out, '\b');
			k += 2;
			continue;
		case 'f':
			abuf_addc(out, '\f');
			k += 2;
			continue;
		case 'n':
			abuf_addc(out, '\n');
			k += 2;
			continue;
		case 'r':
			abuf_addc(out, '\r');
			k += 2;
			continue;
		case 't':
			abuf_addc(out, '\t');
			k += 2;
			continue;
		case 'u':
			break;
		default:
			abuf_addc(out, (char)s[k + 1]);
			k += 2;
			continue;
		}
		cp = hex4(s + k + 2);
		k += 6;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (k + 6 <= n && s[k] == '\\' && s[k + 1] == 'u') {
				uint32_t lo = hex4(s + k + 2);

				if (lo >= 0xdc00 && lo <= 0xdfff) {
					cp = 0x10000 + ((cp - 0xd800) << 10) +
					     (lo - 0xdc00);
					k += 6;
				} else {
					cp = 0xfffd;
				}
			} else {
				cp = 0xfffd;
			}
		} else if (cp >= 0xdc00 && cp <= 0xdfff) {
			cp = 0xfffd;
		}
		utf8_put(out, cp);
	}
}

char *jdoc_str_dup(const struct jdoc *d, uint32_t i)
{
	struct abuf b;

	abuf_init(&b);
	jdoc_str_decode(d, i, &b);
	if (!abuf_reserve(&b, 0)) {
		abuf_release(&b);
		return NULL;
	}
	b.p[b.len] = '\0';
	return abuf_detach(&b, NULL);
}

bool jdoc_str_eq(const struct jdoc *d, uint32_t i, const char *name,
		 size_t nlen)
{
	const struct jnode *nd = &d->nodes[i];
	struct abuf b;
	bool eq;

	if (nd->type != JT_STRING)
		return false;
	if (!(nd->flags & JF_ESCAPED))
		return nd->len == nlen &&
		       memcmp(d->text + nd->off, name, nlen) == 0;
	abuf_init(&b);
	jdoc_str_decode(d, i, &b);
	eq = !b.oom && b.len == nlen && memcmp(b.p ? b.p : "", name, nlen) == 0;
	abuf_release(&b);
	return eq;
}

void json_emit_string(struct abuf *out, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, run = 0;

	abuf_addc(out, '"');
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *esc = NULL;
		char u[7];

		switch (c) {
		case '\b':
			esc = "\\b";
			break;
		case '\n':
			esc = "\\n";
			break;
		case '\r':
			esc = "\\r";
			break;
		case '\t':
			esc = "\\t";
			break;
		case '\f':
			esc = "\\f";
			break;
		case '"':
			esc = "\\\"";
			break;
		case '\\':
			esc = "\\\\";
			break;
		default:
			if (c >= 0x20)
				continue;
			u[0] = '\\';
			u[1] = 'u';
			u[2] = '0';
			u[3] = '0';
			u[4] = hex[c >> 4];
			u[5] = hex[c & 0xf];
			u[6] = '\0';
			esc = u;
		}
		abuf_add(out, s + run, i - run);
		abuf_adds(out, esc);
		run = i + 1;
	}
	abuf_add(out, s + run, len - run);
	abuf_addc(out, '"');
}

/* verbatim: copy the text of values the scanner found in json-c's form
 * (JF_VERBATIM); otherwise decode and re-escape every string. */
static void emit(const struct jdoc *d, uint32_t i, struct abuf *out,
		 bool verbatim)
{
	const struct jnode *nd = &d->nodes[i];
	uint32_t k, m;

	if (verbatim && (nd->flags & JF_VERBATIM)) {
		if (nd->type == JT_STRING) /* the quotes too */
			abuf_add(out, d->text + nd->off - 1, nd->len + 2);
		else
			abuf_add(out, d->text + nd->off, nd->len);
		return;
	}
	switch ((enum jtype)nd->type) {
	case JT_STRING:
		if (!(nd->flags & JF_ESCAPED)) {
			/* no escape: no '"', '\\' or control byte inside,
			 * so json-c would write the same bytes */
			if (!abuf_reserve(out, nd->len + 2))
				return;
			out->p[out->len++] = '"';
			memcpy(out->p + out->len, d->text + nd->off, nd->len);
			out->len += nd->len;
			out->p[out->len++] = '"';
			out->p[out->len] = '\0';
		} else {
			struct abuf tmp;

			abuf_init(&tmp);
			jdoc_str_decode(d, i, &tmp);
			if (tmp.oom)
				out->oom = true;
			else
				json_emit_string(out, tmp.p ? tmp.p : "",
						 tmp.len);
			abuf_release(&tmp);
		}
		return;
	case JT_ARRAY:
		abuf_addc(out, '[');
		k = jdoc_child(i);
		for (m = 0; m < nd->n; m++) {
			if (m)
				abuf_addc(out, ',');
			emit(d, k, out, verbatim);
			k = jdoc_next(d, k);
		}
		abuf_addc(out, ']');
		return;
	case JT_OBJECT:
		abuf_addc(out, '{');
		k = jdoc_child(i);
		for (m = 0; m < nd->n; m++) {
			uint32_t v = jdoc_next(d, k);

			if (m)
				abuf_addc(out, ',');
			emit(d, k, out, verbatim);
			abuf_addc(out, ':');
			emit(d, v, out, verbatim);
			k = jdoc_next(d, v);
		}
		abuf_addc(out, '}');
		return;
	default:
		abuf_add(out, d->text + nd->off, nd->len);
		return;
	}
}

void jdoc_emit(const struct jdoc *d, uint32_t i, struct abuf *out)
{
	emit(d, i, out, true);
}

void jdoc_emit_decoded(const struct jdoc *d, uint32_t i, struct abuf *out)
{
	emit(d, i, out, false);
}

const char *jtype_name(enum jtype t)
{
	switch (t) {
	case JT_NULL:
		return "null";
	case JT_FALSE:
	case JT_TRUE:
		return "boolean";
	case JT_NUMBER:
		return "number";
	case JT_STRING:
		return "string";
	case JT_ARRAY:
		return "array";
	case JT_OBJECT:
		return "object";
	}
	return "?";
}

/* ---- rows -> JSONL ---------------------------------------------------- */

struct colmap {
	size_t ncol;
	size_t *name_len;
	uint32_t *slot;	  /* value node per column, UINT32_MAX none */
	size_t *key_off;  /* offsets of "name": in keys */
	struct abuf keys; /* every column's "name": as json-c writes it */
	uint32_t *extra;  /* key nodes of columns the schema lacks */
	size_t nextra, extra_cap;
	bool unique; /* no two columns share a name */
};

static void colmap_release(struct colmap *m)
{
	free(m->name_len);
	free(m->slot);
	free(m->key_off);
	free(m->extra);
	abuf_release(&m->keys);
}

static int colmap_init(struct colmap *m, const struct api_schema *schema)
{
	size_t c;

	memset(m, 0, sizeof(*m));
	abuf_init(&m->keys);
	m->unique = true;
	m->ncol = schema ? schema->ncolumns : 0;
	if (!m->ncol)
		return 0;
	m->name_len = calloc(m->ncol, sizeof(*m->name_len));
	m->slot = calloc(m->ncol, sizeof(*m->slot));
	m->key_off = calloc(m->ncol + 1, sizeof(*m->key_off));
	if (!m->name_len || !m->slot || !m->key_off)
		goto oom;
	for (c = 0; c < m->ncol; c++) {
		const char *name = schema->columns[c].name;

		m->name_len[c] = strlen(name);
		m->key_off[c] = m->keys.len;
		json_emit_string(&m->keys, name, m->name_len[c]);
		abuf_addc(&m->keys, ':');
	}
	m->key_off[m->ncol] = m->keys.len;
	if (m->keys.oom)
		goto oom;
	/* a schema never repeats a name, but colmap_verbatim() relies on
	 * it, so make sure */
	for (c = 1; c < m->ncol && m->unique; c++)
		for (size_t c2 = 0; c2 < c; c2++)
			if (!strcmp(schema->columns[c].name,
				    schema->columns[c2].name)) {
				m->unique = false;
				break;
			}
	return 0;
oom:
	colmap_release(m);
	return -ENOMEM;
}

/* Column index of key node k, or SIZE_MAX. hint: the likely index. */
static size_t colmap_find(const struct colmap *m,
			  const struct api_schema *schema, const struct jdoc *d,
			  uint32_t k, size_t hint)
{
	size_t c;

	if (hint < m->ncol &&
	    jdoc_str_eq(d, k, schema->columns[hint].name, m->name_len[hint]))
		return hint;
	for (c = 0; c < m->ncol; c++)
		if (c != hint &&
		    jdoc_str_eq(d, k, schema->columns[c].name, m->name_len[c]))
			return c;
	return SIZE_MAX;
}

static int colmap_add_extra(struct colmap *m, uint32_t k)
{
	if (m->nextra == m->extra_cap) {
		size_t cap = m->extra_cap ? m->extra_cap * 2 : 8;
		uint32_t *e = realloc(m->extra, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		m->extra = e;
		m->extra_cap = cap;
	}
	m->extra[m->nextra++] = k;
	return 0;
}

/* Fill the map from object node obj: each member's value in its column's
 * slot; members the schema lacks in extra. Returns 0 or -ENOMEM; *dup is
 * set to the key node of a repeated known column (the last one wins). */
static int colmap_fill(struct colmap *m, const struct api_schema *schema,
		       const struct jdoc *d, uint32_t obj, uint32_t *dup)
{
	uint32_t k, mem;
	size_t hint = 0;

	for (size_t c = 0; c < m->ncol; c++)
		m->slot[c] = UINT32_MAX;
	m->nextra = 0;
	if (dup)
		*dup = UINT32_MAX;
	k = jdoc_child(obj);
	for (mem = 0; mem < d->nodes[obj].n; mem++) {
		uint32_t v = jdoc_next(d, k);
		size_t c = colmap_find(m, schema, d, k, hint);

		if (c != SIZE_MAX) {
			if (m->slot[c] != UINT32_MAX && dup)
				*dup = k;
			m->slot[c] = v;
			hint = c + 1;
		} else if (colmap_add_extra(m, k)) {
			return -ENOMEM;
		}
		k = jdoc_next(d, v);
	}
	return 0;
}

/*
 * Is the text of columns object obj exactly what colmap_fill() and
 * colmap_emit() would write for it? It is when the object is compact with
 * every string in json-c's form (JF_VERBATIM) and its keys are known
 * columns, each spelled as json-c writes it, in schema order without
 * repeats: then every member lands in its own slot, emission in schema
 * order is the server's order and each value is written as it came.
 * Absent columns are fine (they are skipped). Without columns every member
 * is an "extra", written in server order: also the text itself.
 */
static bool colmap_verbatim(const struct colmap *m, const struct jdoc *d,
			    uint32_t obj)
{
	const struct jnode *on = &d->nodes[obj];
	uint32_t k = jdoc_child(obj), mem;
	size_t c = 0;

	if (!(on->flags & JF_VERBATIM) || !m->unique)
		return false;
	if (!m->ncol)
		return true;
	for (mem = 0; mem < on->n; mem++) {
		const struct jnode *kn = &d->nodes[k];
		/* "key": -- compact, so the colon follows the quote */
		const char *raw = d->text + kn->off - 1;
		size_t rlen = (size_t)kn->len + 3;

		for (;; c++) {
			if (c == m->ncol)
				return false; /* unknown, repeated or early */
			if (m->key_off[c + 1] - m->key_off[c] == rlen &&
			    !memcmp(m->keys.p + m->key_off[c], raw, rlen))
				break;
		}
		c++;
		k = jdoc_next(d, jdoc_next(d, k));
	}
	return true;
}

static void colmap_emit(const struct colmap *m, const struct jdoc *d,
			struct abuf *out, bool verbatim)
{
	bool first = true;
	size_t c, e;

	abuf_addc(out, '{');
	for (c = 0; c < m->ncol; c++) {
		if (m->slot[c] == UINT32_MAX)
			continue;
		if (!first)
			abuf_addc(out, ',');
		first = false;
		abuf_add(out, m->keys.p + m->key_off[c],
			 m->key_off[c + 1] - m->key_off[c]);
		emit(d, m->slot[c], out, verbatim);
	}
	for (e = 0; e < m->nextra; e++) {
		if (!first)
			abuf_addc(out, ',');
		first = false;
		emit(d, m->extra[e], out, verbatim);
		abuf_addc(out, ':');
		emit(d, jdoc_next(d, m->extra[e]), out, verbatim);
	}
	abuf_addc(out, '}');
}

int api_rows_to_jsonl(const struct api_schema *schema, const struct jdoc *d,
		      uint32_t rows, struct abuf *out, size_t *nrows,
		      size_t *ncopied, int flags)
{
	bool verbatim = !(flags & API_JSONL_DECODE);
	struct colmap m;
	uint32_t r, i;
	int rc;

	*nrows = 0;
	if (ncopied)
		*ncopied = 0;
	if (d->nodes[rows].type != JT_ARRAY)
		return -EPROTO;
	rc = colmap_init(&m, schema);
	if (rc)
		return rc;
	/* the lines never take more bytes than the rows' text (json-c's
	 * form of a string is its shortest, and each row drops at least
	 * {"columns":}), so this is the only allocation */
	abuf_reserve(out, d->nodes[rows].len);
	r = jdoc_child(rows);
	for (i = 0; i < d->nodes[rows].n; i++) {
		uint32_t cols = jdoc_member(d, r, "columns");

		if (cols == UINT32_MAX || d->nodes[cols].type != JT_OBJECT) {
			rc = -EPROTO;
			goto out;
		}
		if (verbatim && colmap_verbatim(&m, d, cols)) {
			/* the common case: servers send columns so */
			abuf_add(out, d->text + d->nodes[cols].off,
				 d->nodes[cols].len);
			if (ncopied)
				(*ncopied)++;
		} else {
			rc = colmap_fill(&m, schema, d, cols, NULL);
			if (rc)
				goto out;
			colmap_emit(&m, d, out, verbatim);
		}
		abuf_addc(out, '\n');
		r = jdoc_next(d, r);
	}
	*nrows = d->nodes[rows].n;
	rc = out->oom ? -ENOMEM : 0;
out:
	colmap_release(&m);
	return rc;
}

/* ---- RFC 3339 --------------------------------------------------------- */

static bool digits(const char *s, size_t n, int *val)
{
	int v = 0;

	for (size_t i = 0; i < n; i++) {
		if (!isdig(s[i]))
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*val = v;
	return true;
}

/* date-time = full-date "T" partial-time time-offset, RFC 3339 §5.6; a
 * space for the "T" as its note allows (the API accepts it too) */
bool api_date_valid(const char *s, size_t len)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30,
				    31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, oh, om;
	size_t i;

	if (len < 20)
		return false;
	if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
	    s[7] != '-' || !digits(s + 8, 2, &d))
		return false;
	if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
		return false;
	if (!digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) ||
	    s[16] != ':' || !digits(s + 17, 2, &sec))
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
		return false;
	if (mo == 2 && d == 29 &&
	    !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return false;
	if (h > 23 || mi > 59 || sec > 60)
		return false;
	i = 19;
	if (s[i] == '.') {
		size_t f = ++i;

		while (i < len && isdig(s[i]))
			i++;
		if (i == f)
			return false;
	}
	if (i >= len)
		return false;
	if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len)
		return true;
	if ((s[i] != '+' && s[i] != '-') || len - i != 6)
		return false;
	if (!digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
	    !digits(s + i + 4, 2, &om))
		return false;
	return oh <= 23 && om <= 59;
}

/* ---- import lines ----------------------------------------------------- */

static const char *type_name(enum api_type t)
{
	switch (t) {
	case API_TYPE_STRING:
		return "string";
	case API_TYPE_NUMBER:
		return "number";
	case API_TYPE_INTEGER:
		return "integer";
	case API_TYPE_BOOLEAN:
		return "boolean";
	case API_TYPE_DATE:
		return "date";
	}
	return "?";
}

static char *msgf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *msgf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

/* Why value v does not fit column col, or NULL when it does. */
static char *check_value(const struct api_column *col, const struct jdoc *d,
			 uint32_t v)
{
	const struct jnode *nd = &d->nodes[v];
	enum jtype t = (enum jtype)nd->type;

	if (t == JT_NULL) {
		if (col->key)
			return msgf("%s: key column is null", col->name);
		return NULL;
	}
	switch (col->type) {
	case API_TYPE_STRING:
		if (t == JT_STRING)
			return NULL;
		break;
	case API_TYPE_NUMBER:
		if (t == JT_NUMBER)
			return NULL;
		break;
	case API_TYPE_INTEGER:
		if (t == JT_NUMBER && !(nd->flags & JF_FRACEXP))
			return NULL;
		if (t == JT_NUMBER)
			return msgf("%s: expected integer, got a number with "
				    "a fraction or exponent",
				    col->name);
		break;
	case API_TYPE_BOOLEAN:
		if (t == JT_TRUE || t == JT_FALSE)
			return NULL;
		break;
	case API_TYPE_DATE:
		if (t == JT_STRING) {
			struct abuf b;
			bool ok;

			/* the decoded length: an escaped NUL must not end
			 * the date early */
			abuf_init(&b);
			jdoc_str_decode(d, v, &b);
			ok = !b.oom && api_date_valid(b.p ? b.p : "", b.len);
			abuf_release(&b);
			if (ok)
				return NULL;
			return msgf("%s: expected date, got a string that is "
				    "not an RFC 3339 date-time",
				    col->name);
		}
		break;
	}
	return msgf("%s: expected %s, got %s", col->name, type_name(col->type),
		    jtype_name(t));
}

int api_row_validate(const struct api_schema *schema, const char *line,
		     size_t len, char **row_out, char **key_out,
		     char **error_out)
{
	struct jdoc d;
	struct colmap m;
	struct abuf row, key;
	uint32_t dup;
	bool have_map = false, first;
	char *err = NULL;
	size_t c;
	int rc;

	*row_out = NULL;
	*key_out = NULL;
	*error_out = NULL;
	jdoc_init(&d);
	abuf_init(&row);
	abuf_init(&key);

	/* without a key column every row would upsert onto one */
	for (c = 0; c < schema->ncolumns && !schema->columns[c].key; c++)
		;
	if (c == schema->ncolumns) {
		err = msgf("the table's schema has no primary-key column: "
			   "rows cannot be upserted");
		goto invalid;
	}
	rc = jdoc_parse(&d, line, len, JDOC_VALIDATE_UTF8);
	if (rc == -ENOMEM)
		goto out;
	if (rc) {
		err = msgf("invalid JSON: %s", d.err);
		goto invalid;
	}
	if (d.nodes[0].type != JT_OBJECT) {
		err = msgf("not a JSON object (got %s)",
			   jtype_name((enum jtype)d.nodes[0].type));
		goto invalid;
	}
	rc = colmap_init(&m, schema);
	if (rc)
		goto out;
	have_map = true;
	rc = colmap_fill(&m, schema, &d, 0, &dup);
	if (rc)
		goto out;
	/* drift first: after a schema refresh the other checks run again */
	if (m.nextra) {
		char *name = jdoc_str_dup(&d, m.extra[0]);

		if (!name) {
			rc = -ENOMEM;
			goto out;
		}
		err = msgf("unknown column '%s'", name);
		free(name);
		rc = -ENOENT;
		goto fail;
	}
	if (dup != UINT32_MAX) {
		char *name = jdoc_str_dup(&d, dup);

		err = name ? msgf("%s: column given twice", name) : NULL;
		free(name);
		goto invalid;
	}
	for (c = 0; c < m.ncol; c++) {
		const struct api_column *col = &schema->columns[c];

		if (m.slot[c] == UINT32_MAX) {
			if (col->key) {
				err = msgf("%s: missing key column", col->name);
				goto invalid;
			}
			continue;
		}
		err = check_value(col, &d, m.slot[c]);
		if (err)
			goto invalid;
	}

	colmap_emit(&m, &d, &row, true);
	abuf_addc(&key, '[');
	first = true;
	for (c = 0; c < m.ncol; c++) {
		if (!schema->columns[c].key)
			continue;
		if (!first)
			abuf_addc(&key, ',');
		first = false;
		jdoc_emit(&d, m.slot[c], &key);
	}
	abuf_addc(&key, ']');
	*row_out = abuf_detach(&row, NULL);
	*key_out = abuf_detach(&key, NULL);
	if (!*row_out || !*key_out) {
		free(*row_out);
		free(*key_out);
		*row_out = NULL;
		*key_out = NULL;
		rc = -ENOMEM;
		goto out;
	}
	rc = 0;
	goto out;

invalid:
	rc = -EINVAL;
fail:
	if (!err) {
		rc = -ENOMEM;
		goto out;
	}
	*error_out = err;
out:
	if (have_map)
		colmap_release(&m);
	abuf_release(&row);
	abuf_release(&key);
	jdoc_release(&d);
	return rc;
}

/* ---- schemas (json-c) ------------------------------------------------- */

static int type_from_name(const char *s, enum api_type *t)
{
	static const struct {
		const char *name;
		enum api_type type;
	} types[] = {
	    {"string", API_TYPE_STRING},   {"number", API_TYPE_NUMBER},
	    {"integer", API_TYPE_INTEGER}, {"boolean", API_TYPE_BOOLEAN},
	    {"date", API_TYPE_DATE},
	};

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (strcmp(s, types[i].name) == 0) {
			*t = types[i].type;
			return 0;
		}
	}
	return -EPROTO;
}

static int schema_cursor_columns(struct json_object *cols,
				 struct api_schema *out)
{
	size_t n = json_object_array_length(cols);

	out->columns = calloc(n ? n : 1, sizeof(*out->columns));
	if (!out->columns)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(cols, i);
		struct json_object *name, *type, *pk;
		struct api_column *col = &out->columns[i];

		if (!json_object_is_type(c, json_type_object) ||
		    !json_object_object_get_ex(c, "name", &name) ||
		    !json_object_is_type(name, json_type_string) ||
		    !json_object_object_get_ex(c, "type", &type) ||
		    !json_object_is_type(type, json_type_string) ||
		    type_from_name(json_object_get_string(type), &col->type))
			return -EPROTO;
		if (json_object_object_get_ex(c, "isPrimaryKey", &pk)) {
			if (!json_object_is_type(pk, json_type_boolean))
				return -EPROTO;
			col->key = json_object_get_boolean(pk);
		}
		col->name = strdup(json_object_get_string(name));
		if (!col->name)
			return -ENOMEM;
		out->ncolumns = i + 1;
		for (size_t j = 0; j < i; j++)
			if (strcmp(out->columns[j].name, col->name) == 0)
				return -EPROTO;
	}
	return 0;
}

struct flows_prop {
	const char *name;
	int64_t order;
	size_t pos;
	enum api_type type;
};

static int flows_prop_cmp(const void *a, const void *b)
{
	const struct flows_prop *x = a, *y = b;

	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The production dialect's JSON Schema: properties ordered by displayOrder,
 * the key is the property "key". */
static int schema_flows_properties(struct json_object *props,
				   struct api_schema *out)
{
	size_t n = (size_t)json_object_object_length(props), i = 0;
	struct flows_prop *fp;
	int rc = -EPROTO;

	fp = calloc(n ? n : 1, sizeof(*fp));
	if (!fp)
		return -ENOMEM;
	json_object_object_foreach(props, key, val)
	{
		struct json_object *type, *order;

		if (!json_object_is_type(val, json_type_object) ||
		    !json_object_object_get_ex(val, "type", &type) ||
		    !json_object_is_type(type, json_type_string) ||
		    type_from_name(json_object_get_string(type), &fp[i].type))
			goto out;
		fp[i].name = key;
		fp[i].pos = i;
		fp[i].order = INT64_MAX;
		if (json_object_object_get_ex(val, "displayOrder", &order) &&
		    json_object_is_type(order, json_type_int))
			fp[i].order = json_object_get_int64(order);
		i++;
	}
	qsort(fp, n, sizeof(*fp), flows_prop_cmp);
	out->columns = calloc(n ? n : 1, sizeof(*out->columns));
	if (!out->columns) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		out->columns[i].name = strdup(fp[i].name);
		if (!out->columns[i].name) {
			rc = -ENOMEM;
			goto out;
		}
		out->columns[i].type = fp[i].type;
		out->columns[i].key = strcmp(fp[i].name, "key") == 0;
		out->ncolumns = i + 1;
	}
	rc = 0;
out:
	free(fp);
	return rc;
}

int api_schema_from_json(const char *json, size_t len, const char *version,
			 struct api_schema *out)
{
	struct json_tokener *tok = NULL;
	struct json_object *root = NULL, *cols;
	const char *pretty;
	size_t plen;
	int rc = -EPROTO;

	memset(out, 0, sizeof(*out));
	if (len > INT32_MAX)
		return -EPROTO;
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, json, (int)len);
	if (!root || json_tokener_get_error(tok) != json_tokener_success ||
	    (size_t)json_tokener_get_parse_end(tok) != len) {
		/* trailing whitespace is fine */
		size_t end = root ? json_tokener_get_parse_end(tok) : 0;

		if (!root)
			goto out;
		while (end < len && strchr(" \t\r\n", json[end]))
			end++;
		if (end != len)
			goto out;
	}
	if (!json_object_is_type(root, json_type_object))
		goto out;
	if (json_object_object_get_ex(root, "columns", &cols) &&
	    json_object_is_type(cols, json_type_array))
		rc = schema_cursor_columns(cols, out);
	else if (json_object_object_get_ex(root, "properties", &cols) &&
		 json_object_is_type(cols, json_type_object))
		rc = schema_flows_properties(cols, out);
	if (rc)
		goto out;
	pretty = json_object_to_json_string_length(
	    root,
	    JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
		JSON_C_TO_STRING_NOSLASHESCAPE,
	    &plen);
	out->json = malloc(plen + 2);
	if (!pretty || !out->json) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(out->json, pretty, plen);
	out->json[plen] = '\n';
	out->json[plen + 1] = '\0';
	out->json_len = plen + 1;
	if (version) {
		out->version = strdup(version);
		if (!out->version)
			rc = -ENOMEM;
	}
out:
	if (rc)
		api_schema_release(out);
	json_object_put(root);
	json_tokener_free(tok);
	return rc;
}

void api_schema_release(struct api_schema *schema)
{
	if (!schema)
		return;
	for (size_t i = 0; i < schema->ncolumns; i++)
		free(schema->columns[i].name);
	free(schema->columns);
	free(schema->version);
	free(schema->json);
	memset(schema, 0, sizeof(*schema));
}

int api_schema_parse(const char *json, size_t len, const char *version,
		     struct api_schema *out)
{
	int rc = api_schema_from_json(json, len, version, out);

	return rc == -ENOMEM ? rc : rc ? -EPROTO : 0;
}
