/*
 * Small helpers of dtfs-emu: buffers, hashing, base64, number parsing and
 * the open-addressing hash index used for keys, row ids and tokens.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "emu_i.h"
#include "log.h"

static void oom(void)
{
	log_err("out of memory");
	abort();
}

void *emu_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		oom();
	return p;
}

void *emu_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (!p)
		oom();
	return p;
}

void *emu_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (!q)
		oom();
	return q;
}

char *emu_xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		oom();
	return p;
}

void emu_buf_init(struct emu_buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void emu_buf_release(struct emu_buf *b)
{
	free(b->data);
	emu_buf_init(b);
}

static void buf_grow(struct emu_buf *b, size_t extra)
{
	size_t need = b->len + extra + 1;

	if (need <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need)
		cap *= 2;
	b->data = emu_xrealloc(b->data, cap);
	b->cap = cap;
}

void emu_buf_add(struct emu_buf *b, const void *p, size_t n)
{
	buf_grow(b, n);
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

void emu_buf_adds(struct emu_buf *b, const char *s)
{
	emu_buf_add(b, s, strlen(s));
}

void emu_buf_addf(struct emu_buf *b, const char *fmt, ...)
{
	va_list ap;
	char small[256];

	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n < sizeof(small)) {
		emu_buf_add(b, small, (size_t)n);
		return;
	}
	buf_grow(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

char *emu_buf_detach(struct emu_buf *b, size_t *len)
{
	if (!b->data)
		emu_buf_add(b, "", 0);
	char *p = b->data;

	if (len)
		*len = b->len;
	emu_buf_init(b);
	return p;
}

uint64_t emu_mix64(uint64_t x)
{
	/* splitmix64 finalizer */
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

uint64_t emu_hash64(const void *p, size_t n, uint64_t seed)
{
	/* FNV-1a, then a strong finalizer so low bits are usable as is */
	const unsigned char *s = p;
	uint64_t h = 0xcbf29ce484222325ULL ^ emu_mix64(seed);

	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 0x100000001b3ULL;
	}
	return emu_mix64(h ^ n);
}

void emu_uuid_format(uint64_t hi, uint64_t lo, char out[37])
{
	snprintf(out, 37, "%08x-%04x-%04x-%04x-%012llx", (unsigned)(hi >> 32),
		 (unsigned)((hi >> 16) & 0xffff), (unsigned)(hi & 0xffff),
		 (unsigned)(lo >> 48),
		 (unsigned long long)(lo & 0xffffffffffffULL));
}

static _Thread_local uint64_t rng_state;

uint64_t emu_random64(void)
{
	if (!rng_state) {
		uint64_t seed = 0;

		if (getrandom(&seed, sizeof(seed), 0) != sizeof(seed))
			seed =
			    (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&seed;
		rng_state = seed | 1;
	}
	rng_state += 0x9e3779b97f4a7c15ULL;
	return emu_mix64(rng_state);
}

uint64_t emu_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void emu_b64url_encode(const unsigned char *in, size_t n, char *out)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		size_t left = n - i;

		if (left > 1)
			v |= (uint32_t)in[i + 1] << 8;
		if (left > 2)
			v |= in[i + 2];
		out[o++] = b64url[(v >> 18) & 63];
		out[o++] = b64url[(v >> 12) & 63];
		if (left > 1)
			out[o++] = b64url[(v >> 6) & 63];
		if (left > 2)
			out[o++] = b64url[v & 63];
	}
	out[o] = '\0';
}

static int b64_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

long emu_b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;

	while (n > 0 && in[n - 1] == '=')
		n--;
	if (n % 4 == 1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		int v = b64_value(in[i]);

		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= cap)
				return -1;
			out[o++] = (unsigned char)((acc >> bits) & 0xff);
		}
	}
	/* leftover bits must be zero for a canonical encoding */
	if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
		return -1;
	return (long)o;
}

int emu_parse_long(const char *s, long min, long max, long *out)
{
	char *end;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	long v = strtol(s, &end, 10);

	if (errno || *end || end == s || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int emu_parse_double(const char *s, double min, double max, double *out)
{
	char *end;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);

	if (errno || *end || end == s || !isfinite(v) || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

char *emu_percent_decode(const char *s, bool plus_is_space)
{
	size_t n = strlen(s);
	char *out = emu_xmalloc(n + 1);
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == '%') {
			int a = i + 1 < n ? hexval(s[i + 1]) : -1;
			int b = i + 2 < n ? hexval(s[i + 2]) : -1;

			if (a < 0 || b < 0) {
				free(out);
				return NULL;
			}
			out[o++] = (char)(a * 16 + b);
			i += 2;
		} else if (plus_is_space && s[i] == '+') {
			out[o++] = ' ';
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
	return out;
}

const char *emu_json_text(struct json_object *o)
{
	return json_object_to_json_string_ext(
	    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
}

/* ---- hash index ---- */

void emu_map_init(struct emu_map *m, const char *(*key)(const void *item))
{
	m->mask = 15;
	m->count = 0;
	m->slots = emu_xcalloc(m->mask + 1, sizeof(*m->slots));
	m->key = key;
}

void emu_map_release(struct emu_map *m)
{
	free(m->slots);
	m->slots = NULL;
	m->count = 0;
	m->mask = 0;
}

static uint64_t map_hash(const char *key)
{
	return emu_hash64(key, strlen(key), 0x51ed);
}

static size_t map_find(const struct emu_map *m, const char *key, uint64_t h)
{
	size_t i = h & m->mask;

	for (;;) {
		const struct emu_map_slot *s = &m->slots[i];

		if (!s->item)
			return i;
		if (s->hash == h && strcmp(m->key(s->item), key) == 0)
			return i;
		i = (i + 1) & m->mask;
	}
}

void *emu_map_get(const struct emu_map *m, const char *key)
{
	return m->slots[map_find(m, key, map_hash(key))].item;
}

static void map_grow(struct emu_map *m)
{
	struct emu_map_slot *old = m->slots;
	size_t oldcap = m->mask + 1;

	m->mask = oldcap * 2 - 1;
	m->slots = emu_xcalloc(m->mask + 1, sizeof(*m->slots));
	for (size_t i = 0; i < oldcap; i++) {
		if (!old[i].item)
			continue;
		size_t j = old[i].hash & m->mask;

		while (m->slots[j].item)
			j = (j + 1) & m->mask;
		m->slots[j] = old[i];
	}
	free(old);
}

void *emu_map_put(struct emu_map *m, void *item)
{
	const char *key = m->key(item);
	uint64_t h = map_hash(key);
	size_t i = map_find(m, key, h);
	void *old = m->slots[i].item;

	if (old) {
		m->slots[i].item = item;
		return old;
	}
	if ((m->count + 1) * 10 > (m->mask + 1) * 7) {
		map_grow(m);
		i = map_find(m, key, h);
	}
	m->slots[i].hash = h;
	m->slots[i].item = item;
	m->count++;
	return NULL;
}

void *emu_map_del(struct emu_map *m, const char *key)
{
	size_t i = map_find(m, key, map_hash(key));
	void *old = m->slots[i].item;

	if (!old)
		return NULL;
	/* backward-shift deletion keeps linear probing correct without
	 * tombstones */
	size_t j = i;

	for (;;) {
		j = (j + 1) & m->mask;
		if (!m->slots[j].item)
			break;
		size_t k = m->slots[j].hash & m->mask;
		bool stays = (i <= j) ? (i < k && k <= j) : (i < k || k <= j);

		if (stays)
			continue;
		m->slots[i] = m->slots[j];
		i = j;
	}
	m->slots[i].item = NULL;
	m->slots[i].hash = 0;
	m->count--;
	return old;
}

/* ---- OAuth scopes ---- */

static const struct {
	const char *name;
	unsigned bits;
} scope_table[] = {
    {"data-table:read", EMU_SCOPE_READ},
    {"data-table:write", EMU_SCOPE_WRITE},
    {"architect", EMU_SCOPE_ARCH_READ | EMU_SCOPE_ARCH_WRITE},
    {"architect:readonly", EMU_SCOPE_ARCH_READ},
};

unsigned emu_scope_bits(const char *s, size_t n)
{
	for (size_t i = 0; i < sizeof(scope_table) / sizeof(scope_table[0]);
	     i++)
		if (strlen(scope_table[i].name) == n &&
		    strncmp(s, scope_table[i].name, n) == 0)
			return scope_table[i].bits;
	return 0;
}

void emu_scope_names(unsigned scopes, char *out, size_t outsz)
{
	size_t o = 0;

	out[0] = '\0';
	for (size_t i = 0; i < sizeof(scope_table) / sizeof(scope_table[0]);
	     i++) {
		unsigned b = scope_table[i].bits;

		/* architect:readonly only when architect is not granted */
		if ((scopes & b) != b || (b == EMU_SCOPE_ARCH_READ &&
					  (scopes & EMU_SCOPE_ARCH_WRITE)))
			continue;
		int n = snprintf(out + o, outsz - o, "%s%s", o ? " " : "",
				 scope_table[i].name);

		if (n < 0 || (size_t)n >= outsz - o)
			break;
		o += (size_t)n;
	}
}
