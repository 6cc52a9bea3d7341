/*
 * mem: versions held in process memory when the disk cache cannot take
 * them. The contract is in cache_i.h; when it is used, in docs/cache.md
 * ("A full disk").
 */
#include "cache_i.h"
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* As CACHE_PAGES_MAX in cache.c: a server that keeps sending cursors. */
#define MEM_PAGES_MAX (UINT64_C(10) << 20)
/* Generations of versions begun in memory: far above LMDB's counter. */
#define MEM_GEN_BASE (UINT64_C(1) << 62)

struct mem_chunk {
	uint64_t end;		/* offset just past its last byte */
	size_t len;
	char *data;
};

struct mem_table {
	char name[CACHE_TABLE_MAX];
	size_t tlen;
	struct cache_meta meta;
	uint64_t epoch;		/* the LMDB epoch the proof holds under */
	struct mem_chunk *chunks;
	size_t nchunks, cap;
	uint64_t *cursors;	/* digests of the cursors seen (a loop) */
	size_t ncursors, cursors_cap;	/* cursors_cap: 0 or a power of 2 */
	struct mem_table *next;
};

struct cache_mem {
	pthread_mutex_t lock;
	struct mem_table *tables;
	size_t ntables;		/* __atomic: read without the lock */
	uint64_t bytes;		/* held, all tables */
	uint64_t cap;
	uint64_t next_gen;
};

int cache_mem_new(uint64_t cap, struct cache_mem **out)
{
	struct cache_mem *mem = calloc(1, sizeof(*mem));

	*out = NULL;
	if (!mem)
		return -ENOMEM;
	if (pthread_mutex_init(&mem->lock, NULL)) {
		free(mem);
		return -ENOMEM;
	}
	mem->cap = cap;
	mem->next_gen = MEM_GEN_BASE;
	*out = mem;
	return 0;
}

static void table_free(struct cache_mem *mem, struct mem_table *t)
{
	for (size_t i = 0; i < t->nchunks; i++) {
		mem->bytes -= t->chunks[i].len;
		free(t->chunks[i].data);
	}
	free(t->chunks);
	free(t->cursors);
	free(t);
}

void cache_mem_free(struct cache_mem *mem)
{
	if (!mem)
		return;
	while (mem->tables) {
		struct mem_table *t = mem->tables;

		mem->tables = t->next;
		table_free(mem, t);
	}
	pthread_mutex_destroy(&mem->lock);
	free(mem);
}

uint64_t cache_mem_next_gen(struct cache_mem *mem)
{
	uint64_t gen;

	pthread_mutex_lock(&mem->lock);
	gen = mem->next_gen++;
	pthread_mutex_unlock(&mem->lock);
	return gen;
}

/* mem->lock held. */
static struct mem_table **find(struct cache_mem *mem, const char *table,
			       size_t tlen)
{
	struct mem_table **p;

	for (p = &mem->tables; *p; p = &(*p)->next)
		if ((*p)->tlen == tlen && !memcmp((*p)->name, table, tlen))
			return p;
	return NULL;
}

/* The held version of table if it is generation gen: 0, -ENOENT (none
 * held) or -ESTALE (another generation). mem->lock held. */
static int find_gen(struct cache_mem *mem, const char *table, size_t tlen,
		    uint64_t gen, struct mem_table **out)
{
	struct mem_table **p = find(mem, table, tlen);

	*out = p ? *p : NULL;
	if (!p)
		return -ENOENT;
	return (*p)->meta.gen == gen ? 0 : -ESTALE;
}

static void unlink_free(struct cache_mem *mem, struct mem_table **p)
{
	struct mem_table *t = *p;

	*p = t->next;
	table_free(mem, t);
	__atomic_sub_fetch(&mem->ntables, 1, __ATOMIC_RELEASE);
}

/* Make room for `need` more bytes of `keep` by dropping other tables,
 * least recently used first. mem->lock held. Returns 0 or -ENOSPC. */
static int make_room(struct cache_mem *mem, const struct mem_table *keep,
		     uint64_t need)
{
	uint64_t own = 0;

	for (size_t i = 0; i < keep->nchunks; i++)
		own += keep->chunks[i].len;
	if (own + need > mem->cap || own + need < need)
		return -ENOSPC;	/* dropping the others would not do */
	while (mem->bytes + need > mem->cap || mem->bytes + need < need) {
		struct mem_table **p, **lru = NULL;

		for (p = &mem->tables; *p; p = &(*p)->next)
			if (*p != keep && (*p)->nchunks &&
			    (!lru || (*p)->meta.used_at < (*lru)->meta.used_at))
				lru = p;
		if (!lru)
			return -ENOSPC;
		log_info("cache: dropped the rows of '%.*s' held in memory "
			 "to hold those of '%.*s'", (int)(*lru)->tlen,
			 (*lru)->name, (int)keep->tlen, keep->name);
		unlink_free(mem, lru);
	}
	return 0;
}

/* Append len bytes to t: `own` (malloc'ed, taken over: freed on failure
 * too) or, when own is NULL, a copy of data. */
static int add_chunk(struct cache_mem *mem, struct mem_table *t,
		     const void *data, char *own, size_t len)
{
	int rc = 0;

	if (len == 0)
		goto out;
	rc = make_room(mem, t, len);
	if (rc)
		goto out;
	if (t->nchunks == t->cap) {
		size_t cap = t->cap ? 2 * t->cap : 16;
		struct mem_chunk *c = realloc(t->chunks, cap * sizeof(*c));

		if (!c) {
			rc = -ENOMEM;
			goto out;
		}
		t->chunks = c;
		t->cap = cap;
	}
	if (!own) {
		own = malloc(len);
		if (!own)
			return -ENOMEM;
		memcpy(own, data, len);
	}
	t->chunks[t->nchunks].data = own;
	own = NULL;
	t->chunks[t->nchunks].len = len;
	t->chunks[t->nchunks].end = t->meta.bytes + len;
	t->nchunks++;
	mem->bytes += len;
out:
	free(own);
	return rc;
}

static uint64_t cursor_digest(const char *s)
{
	uint64_t h = 14695981039346656037u;

	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 1099511628211u;
	return h ? h : 1;	/* 0 marks an empty slot */
}

/* Add the cursor's digest; -EEXIST when it was seen before. */
static int cursor_add(struct mem_table *t, const char *cursor)
{
	uint64_t h = cursor_digest(cursor);
	size_t i;

	if (2 * (t->ncursors + 1) > t->cursors_cap) {
		size_t cap = t->cursors_cap ? 2 * t->cursors_cap : 64;
		uint64_t *set = calloc(cap, sizeof(*set));

		if (!set)
			return -ENOMEM;
		for (size_t j = 0; j < t->cursors_cap; j++) {
			uint64_t v = t->cursors[j];

			if (!v)
				continue;
			for (i = v & (cap - 1); set[i]; i = (i + 1) & (cap - 1))
				;
			set[i] = v;
		}
		free(t->cursors);
		t->cursors = set;
		t->cursors_cap = cap;
	}
	for (i = h & (t->cursors_cap - 1); t->cursors[i];
	     i = (i + 1) & (t->cursors_cap - 1))
		if (t->cursors[i] == h)
			return -EEXIST;
	t->cursors[i] = h;
	t->ncursors++;
	return 0;
}

bool cache_mem_holds(struct cache_mem *mem, const char *table, size_t tlen)
{
	bool held;

	/* the common case, nothing held: no lock on the read path */
	if (__atomic_load_n(&mem->ntables, __ATOMIC_ACQUIRE) == 0)
		return false;
	pthread_mutex_lock(&mem->lock);
	held = find(mem, table, tlen) != NULL;
	pthread_mutex_unlock(&mem->lock);
	return held;
}

int cache_mem_get_meta(struct cache_mem *mem, const char *table, size_t tlen,
		       uint64_t epoch, struct cache_meta *out)
{
	struct mem_table **p;

	pthread_mutex_lock(&mem->lock);
	p = find(mem, table, tlen);
	if (p) {
		if ((*p)->epoch != epoch)
			(*p)->meta.validated_at = 0;
		*out = (*p)->meta;
	}
	pthread_mutex_unlock(&mem->lock);
	return p ? 0 : -ENOENT;
}

int cache_mem_hold(struct cache_mem *mem, const char *table, size_t tlen,
		   const struct cache_meta *m, uint64_t epoch, char *data)
{
	struct mem_table *t, **p;
	int rc;

	t = tlen <= CACHE_TABLE_MAX ? calloc(1, sizeof(*t)) : NULL;
	if (!t) {
		free(data);
		return tlen <= CACHE_TABLE_MAX ? -ENOMEM : -ENAMETOOLONG;
	}
	memcpy(t->name, table, tlen);
	t->tlen = tlen;
	t->epoch = epoch;
	pthread_mutex_lock(&mem->lock);
	p = find(mem, table, tlen);
	if (p)
		unlink_free(mem, p);
	rc = add_chunk(mem, t, NULL, data, (size_t)m->bytes);
	if (rc) {
		pthread_mutex_unlock(&mem->lock);
		table_free(mem, t);
		return rc;
	}
	t->meta = *m;
	t->meta.in_memory = true;
	t->next = mem->tables;
	mem->tables = t;
	__atomic_add_fetch(&mem->ntables, 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&mem->lock);
	return 0;
}

int cache_mem_append(struct cache_mem *mem, const char *table, size_t tlen,
		     uint64_t gen, uint64_t page, uint64_t offset,
		     const void *data, size_t len, size_t nrows,
		     const char *next_cursor, struct cache_meta *out)
{
	struct mem_table *t;
	struct cache_meta *m;
	int rc;

	pthread_mutex_lock(&mem->lock);
	rc = find_gen(mem, table, tlen, gen, &t);
	if (rc)
		goto out;
	m = &t->meta;
	if (page < m->pages || m->complete) {
		rc = -EEXIST;
		goto out;
	}
	if (page > m->pages || offset != m->bytes) {
		rc = -EINVAL;
		goto out;
	}
	if (m->pages >= MEM_PAGES_MAX) {
		log_err("cache: append page of '%.*s' failed: more pages than "
			"any table has: the API keeps sending cursors",
			(int)tlen, table);
		rc = -EPROTO;
		goto out;
	}
	if (next_cursor) {
		rc = cursor_add(t, next_cursor);
		if (rc == -EEXIST) {
			log_err("cache: append page of '%.*s' failed: the API "
				"sent a cursor it had sent before for this "
				"version (a cursor loop)", (int)tlen, table);
			rc = -EPROTO;
		}
		if (rc)
			goto out;
	}
	rc = add_chunk(mem, t, data, NULL, len);
	if (rc == -ENOSPC)
		log_err("cache: '%.*s' is too big to hold in memory (%llu "
			"bytes at most) while the disk cache cannot take it",
			(int)tlen, table, (unsigned long long)mem->cap);
	if (rc)
		goto out;
	m->bytes += len;
	m->rows += nrows;
	m->pages++;
	m->complete = next_cursor == NULL;
	memset(m->cursor, 0, sizeof(m->cursor));
	if (next_cursor)
		strncpy(m->cursor, next_cursor, sizeof(m->cursor) - 1);
	m->used_at = (int64_t)time(NULL);
	if (out)
		*out = *m;
out:
	pthread_mutex_unlock(&mem->lock);
	return rc;
}

int cache_mem_read(struct cache_mem *mem, const char *table, size_t tlen,
		   uint64_t gen, uint64_t offset, void *buf, size_t size,
		   size_t *nread)
{
	struct mem_table *t;
	size_t lo, hi, copied = 0;
	int rc;

	*nread = 0;
	pthread_mutex_lock(&mem->lock);
	rc = find_gen(mem, table, tlen, gen, &t);
	if (rc)
		goto out;
	/* the first chunk ending past offset */
	lo = 0;
	hi = t->nchunks;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (t->chunks[mid].end <= offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (; lo < t->nchunks && copied < size; lo++) {
		const struct mem_chunk *c = &t->chunks[lo];
		uint64_t start = c->end - c->len, pos = offset + copied;
		size_t n = (size_t)(c->end - pos);

		if (n > size - copied)
			n = size - copied;
		memcpy((char *)buf + copied, c->data + (pos - start), n);
		copied += n;
	}
	*nread = copied;
	t->meta.used_at = (int64_t)time(NULL);
out:
	pthread_mutex_unlock(&mem->lock);
	return rc;
}

int cache_mem_set_validated(struct cache_mem *mem, const char *table,
			    size_t tlen, uint64_t gen, int64_t when,
			    uint64_t epoch)
{
	struct mem_table *t;
	int rc;

	pthread_mutex_lock(&mem->lock);
	rc = find_gen(mem, table, tlen, gen, &t);
	if (rc == 0) {
		t->meta.validated_at = when;
		t->epoch = epoch;
	}
	pthread_mutex_unlock(&mem->lock);
	return rc;
}

void cache_mem_unprove(struct cache_mem *mem, const char *table, size_t tlen)
{
	struct mem_table **p;

	pthread_mutex_lock(&mem->lock);
	p = find(mem, table, tlen);
	if (p)
		(*p)->meta.validated_at = 0;
	pthread_mutex_unlock(&mem->lock);
}

void cache_mem_drop(struct cache_mem *mem, const char *table, size_t tlen)
{
	struct mem_table **p;

	pthread_mutex_lock(&mem->lock);
	p = find(mem, table, tlen);
	if (p)
		unlink_free(mem, p);
	pthread_mutex_unlock(&mem->lock);
}

void cache_mem_stats(struct cache_mem *mem, uint64_t *tables,
		     uint64_t *bytes)
{
	pthread_mutex_lock(&mem->lock);
	*tables = mem->ntables;
	*bytes = mem->bytes;
	pthread_mutex_unlock(&mem->lock);
}
