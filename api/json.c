/*
 * json.c: the span scanner and its json-c compatible output.
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
 * Schemas and small bodies use json-c (schema.c); the dialects' row shapes
 * are in rows.c.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
