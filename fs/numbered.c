/*
 * numbered: reading tables of a dialect with numbered pages (the
 * production API), where pages are independent and may be fetched in
 * parallel, and where versions have no ETag.
 *
 * A pass reads one version: page 1 (with page 2 beside it, the one
 * prefetch `head` may cost) gives total, pageCount and the page size the
 * server used; the rest are fetched up to PASS_WINDOW at a time with
 * page_workers in flight and appended to the cache in order. The cache's
 * cursor of an unfinished pass is "n:NEXT:COUNT:TOTAL:SIZE", so any reader
 * (or another process sharing the cache) continues it.
 *
 * A change seen while one version is read (a page whose total, pageCount or
 * page size differs from the pass's, a page with another number of rows
 * than its place says, a key seen twice) breaks the pass: the generation is
 * marked stale; a reader that consumed nothing of it starts a new pass
 * (fs_reader_read), one that did gets ESTALE. What such checks cannot see is
 * in docs/fs.md.
 *
 * Versions are identified by a digest of their bytes (common/hash.h):
 * revalidating a complete version re-reads the table whole and keeps the
 * cached generation when the digest is the same (so keep_cache and st_size
 * stay valid), else caches the new bytes as a new generation at once.
 *
 * Every function here runs with t->lock held.
 */
#include "engine_i.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hash.h"
#include "log.h"

#define PASS_WINDOW 32		/* pages fetched per call: bounds memory */
#define PASS_TRIES 3		/* passes started before giving up */
#define NPAGE_MAX 1000000

/* ---- the pass's shape ----------------------------------------------- */

struct shape {
	unsigned count;		/* pageCount (at least 1) */
	uint64_t total;
	unsigned size;		/* rows per page */
};

static void cursor_format(char *buf, size_t n, unsigned next,
			  const struct shape *s)
{
	snprintf(buf, n, "n:%u:%u:%" PRIu64 ":%u", next, s->count, s->total,
		 s->size);
}

static int cursor_parse(const char *c, unsigned *next, struct shape *s)
{
	unsigned long long total;

	if (sscanf(c, "n:%u:%u:%llu:%u", next, &s->count, &total,
		   &s->size) != 4 || *next < 2 || *next > s->count ||
	    s->size == 0)
		return -EPROTO;
	s->total = total;
	return 0;
}

static void shape_of(const struct api_page *p, struct shape *s)
{
	s->size = p->page_size;
	s->total = p->total;
	s->count = p->page_count ? p->page_count : 1;
}

/* Rows page k must hold in a version of this shape. */
static uint64_t rows_expected(const struct shape *s, unsigned k)
{
	uint64_t before = (uint64_t)(k - 1) * s->size;

	if (s->total == UINT64_MAX)
		return UINT64_MAX;
	if (before >= s->total)
		return 0;
	return s->total - before < s->size ? s->total - before : s->size;
}

/* Why page k does not belong to the version of shape s, or NULL. */
static const char *page_mismatch(const struct shape *s, unsigned k,
				 const struct api_page *p)
{
	uint64_t want = rows_expected(s, k);

	if (p->page_count && p->page_count != s->count)
		return "pageCount changed";
	if (p->total != s->total)
		return "total changed";
	if (p->page_size != s->size)
		return "page size changed";
	if (want != UINT64_MAX && p->nrows != want)
		return "a page holds another number of rows";
	return NULL;
}

/* ---- keys seen in the pass -------------------------------------------- */

/* The bytes of a line's key: lines start {"key":"…" (api.h). */
static uint64_t line_key(const char *s, size_t n)
{
	static const char pre[] = "{\"key\":\"";
	size_t i = sizeof(pre) - 1;

	if (n < i || memcmp(s, pre, i))
		return hash_add(HASH_INIT, s, n);
	for (; i < n && s[i] != '"'; i++)
		if (s[i] == '\\')
			i++;
	return hash_add(HASH_INIT, s, i < n ? i : n);
}

static void keys_reset(struct fs_table *t, uint64_t gen)
{
	t->keys_gen = gen;
	t->nkeys = 0;
	if (t->keys)
		memset(t->keys, 0, t->keys_cap * sizeof(*t->keys));
}

/* Add h to the open-addressing set; 1 when it was there already. */
static int keys_add(struct fs_table *t, uint64_t h)
{
	size_t i, mask;

	h |= 1;		/* 0 marks a free slot */
	if ((t->nkeys + 1) * 2 > t->keys_cap) {
		size_t cap = t->keys_cap ? t->keys_cap * 2 : 1024;
		uint64_t *old = t->keys, *k = calloc(cap, sizeof(*k));
		size_t ocap = t->keys_cap, j;

		if (!k)
			return -ENOMEM;
		t->keys = k;
		t->keys_cap = cap;
		t->nkeys = 0;
		for (j = 0; j < ocap; j++)
			if (old[j])
				(void)keys_add(t, old[j]);
		free(old);
	}
	mask = t->keys_cap - 1;
	for (i = h & mask; t->keys[i]; i = (i + 1) & mask)
		if (t->keys[i] == h)
			return 1;
	t->keys[i] = h;
	t->nkeys++;
	return 0;
}

/* Add the keys of one page to t's set; 1 when one was seen before. */
static int page_keys(struct fs_table *t, const struct api_page *p)
{
	const char *s = p->data, *end = p->data + p->len, *nl;
	int rc;

	while (s < end) {
		nl = memchr(s, '\n', (size_t)(end - s));
		if (!nl)
			nl = end;
		if (nl > s) {
			rc = keys_add(t, line_key(s, (size_t)(nl - s)));
			if (rc)
				return rc;
		}
		s = nl + 1;
	}
	return 0;
}

/* ---- pages in parallel ------------------------------------------------ */

struct fetch {
	struct fs_engine *eng;
	struct fs_table *t;
	const struct api_schema *schema;
	unsigned first, n, size;
	struct api_page *pages;
	int *rcs;
	atomic_uint next;
};

static void *fetch_main(void *arg)
{
	struct fetch *f = arg;
	unsigned i;

	while ((i = atomic_fetch_add(&f->next, 1)) < f->n)
		f->rcs[i] = api_get_page(f->eng->api, f->t->id, f->schema,
					 f->first + i, f->size, &f->pages[i]);
	return NULL;
}

/* Fetch pages first..first+n-1 (size rows each, 0: the largest) with up to
 * page_workers in flight. pages[] and rcs[] have n slots. */
static void fetch_pages(struct fs_engine *eng, struct fs_table *t,
			unsigned first, unsigned n, unsigned size,
			struct api_page *pages, int *rcs)
{
	static const struct api_schema none;
	struct fetch f = { .eng = eng, .t = t, .schema = &t->schema,
			   .first = first, .n = n, .size = size,
			   .pages = pages, .rcs = rcs };
	pthread_t tids[32];
	unsigned w = eng->cfg.page_workers, started = 0, i;

	atomic_init(&f.next, 0);
	if (!t->have_schema)	/* it is being fetched beside these pages */
		f.schema = &none;
	if (w > n)
		w = n;
	if (w > 32)
		w = 32;
	for (i = 1; i < w; i++) {
		if (pthread_create(&tids[started], NULL, fetch_main, &f))
			break;
		started++;
	}
	fetch_main(&f);
	for (i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
}

static void pages_release(struct api_page *pages, unsigned n)
{
	unsigned i;

	for (i = 0; i < n; i++)
		api_page_release(&pages[i]);
}

/* ---- appending --------------------------------------------------------- */

/* The page the cached frontier of m expects next: 1 for none cached,
 * UINT_MAX when the version is complete, 0 when the cursor is bad. */
static unsigned frontier_page(const struct cache_meta *m)
{
	struct shape s;
	unsigned next;

	if (m->complete)
		return UINT_MAX;
	if (m->pages == 0)
		return 1;
	return cursor_parse(m->cursor, &next, &s) ? 0 : next;
}

/*
 * Append page k of shape s to generation gen; m is updated. Another
 * process (or a reader of this one) sharing the cache may have appended
 * it, or pages after it, meanwhile: the page goes in only where the
 * frontier expects page k, else it is already there and is skipped (never
 * appended after pages that follow it).
 */
static int append(struct fs_engine *eng, struct fs_table *t, uint64_t gen,
		  unsigned k, const struct shape *s, const struct api_page *p,
		  struct cache_meta *m)
{
	char cur[96];
	unsigned want;
	int rc, tries;

	/* Another process on this cache may have appended page k already
	 * (the meta was refreshed after an -EEXIST on an earlier page):
	 * appending it at the frontier would store its rows twice. */
	if (m->pages >= k)
		return 0;
	if (k < s->count)
		cursor_format(cur, sizeof(cur), k + 1, s);
	for (tries = 0; tries < 2; tries++) {
		want = frontier_page(m);
		if (want == 0)
			return -EPROTO;
		if (want > k)
			return 0;	/* appended by someone else */
		if (want < k)
			return -EPROTO;	/* a gap: pages are fetched in order */
		rc = cache_append_page(eng->cache, t->id, gen, k - 1, m->bytes,
				       p->data, p->len, p->nrows,
				       k < s->count ? cur : NULL, m);
		if (rc != -EEXIST)
			return rc;
		/* m was behind the frontier: look again */
		rc = cache_get_meta(eng->cache, t->id, m);
		if (rc)
			return rc;
		if (m->gen != gen)
			return -ESTALE;
	}
	return frontier_page(m) > k ? 0 : -EPROTO;
}

static void changed_log(struct fs_table *t, const char *why, unsigned k)
{
	log_warn("table '%s' changed while it was read (page %u: %s)",
		 t->name, k, why);
}

static int unique_version(char *buf, size_t n)
{
	static atomic_uint seq;
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(buf, n, "pass:%ld.%09ld:%d:%u", (long)ts.tv_sec,
		 ts.tv_nsec, (int)getpid(), atomic_fetch_add(&seq, 1));
	return 0;
}

/* ---- a cold pass: page 1 (and 2) -------------------------------------- */

/*
 * Whether the unfinished cached version `old` still is the table's: the
 * same shape and page 1 byte for byte its first bytes (later pages are
 * checked against the shape as they come). Then the pass goes on there,
 * and a process reading it is not cut off by another one's open.
 */
static bool same_unfinished(struct fs_engine *eng, struct fs_table *t,
			    const struct cache_meta *old,
			    const struct shape *s, const struct api_page *p1)
{
	struct shape os;
	unsigned next;
	char *buf;
	size_t n = 0;
	bool same;

	if (cursor_parse(old->cursor, &next, &os) || os.count != s->count ||
	    os.total != s->total || os.size != s->size || old->bytes < p1->len)
		return false;
	buf = malloc(p1->len + 1);
	if (!buf)
		return false;
	same = cache_read(eng->cache, t->id, old->gen, 0, buf, p1->len, &n) ==
		       0 &&
	       n == p1->len && !memcmp(buf, p1->data, n);
	free(buf);
	return same;
}

/*
 * Start a new version: pages 1 and 2 side by side (2 only when the
 * previous version had more than one page or is unknown, and page_workers
 * allows), both appended when they agree; or go on with the unfinished
 * cached version `old` (may be NULL) when page 1 shows it is still the
 * table's. Returns 0 with *m the generation, 1 when the pages disagree (a
 * change: try again), or an error.
 */
static int cold_pass(struct fs_engine *eng, struct fs_table *t,
		     struct cache_meta *m, unsigned prev_pages,
		     const struct cache_meta *old)
{
	struct api_page p[2];
	int rcs[2] = { 0, 0 };
	unsigned n = eng->cfg.page_workers > 1 && prev_pages != 1 ? 2 : 1;
	char version[CACHE_VERSION_MAX];
	struct fs_schema_fetch sf = { 0 };
	bool had = t->have_schema, changed = false;
	struct shape s;
	uint64_t gen;
	int rc;

	memset(p, 0, sizeof(p));
	/* a schema to prove fresh is fetched beside pages 1 and 2, and
	 * their lines put in its order after (one round trip, not two) */
	if (!t->have_schema || fs_engine_expired(eng, t->schema_at))
		fs_schema_fetch_start(eng, t, &sf);
	fetch_pages(eng, t, 1, n, eng->cfg.page_size, p, rcs);
	rc = fs_schema_fetch_finish(&sf, &changed);
	if (!rc && (changed || !had)) {
		unsigned i;

		for (i = 0; i < n && !rc; i++)
			if (!rcs[i] && fs_page_reorder(&t->schema, &p[i]))
				rc = 1;	/* not orderable: ask again */
	}
	if (!rc)
		rc = rcs[0];
	if (rc)
		goto out;
	shape_of(&p[0], &s);
	if (s.size == 0 || s.count > NPAGE_MAX) {
		rc = -EPROTO;
		goto out;
	}
	if (n == 2 && (rcs[1] || s.count < 2 ||
		       page_mismatch(&s, 2, &p[1]))) {
		/* a page 2 that does not fit is only a hint of a change:
		 * page 1 stands alone, the next fetch checks again */
		if (!rcs[1] && s.count >= 2 && p[1].page_size == s.size)
			changed_log(t, page_mismatch(&s, 2, &p[1]), 2);
		n = 1;
	}
	if (page_mismatch(&s, 1, &p[0])) {
		changed_log(t, page_mismatch(&s, 1, &p[0]), 1);
		rc = 1;
		goto out;
	}
	if (old && same_unfinished(eng, t, old, &s, &p[0])) {
		rc = cache_set_validated_under(eng->cache, t->id, old->gen,
					       (int64_t)time(NULL), t->epoch);
		if (rc == 0)
			rc = cache_get_meta(eng->cache, t->id, m);
		if (rc == 0 && m->gen == old->gen)
			goto out;	/* page 2 on, as the pass goes */
		if (rc && rc != -ESTALE)
			goto out;
	}
	/*
	 * The pass's name: page 1's digest and the shape, so that processes
	 * sharing the cache that start the same version at once meet in one
	 * generation (cache_begin_version keeps an existing one of that
	 * name) instead of dropping each other's. A generation of that name
	 * this process saw broken gets a name of its own.
	 */
	{
		char hex[17];
		struct cache_meta cur;

		hash_hex(hash_add(HASH_INIT, p[0].data, p[0].len), hex);
		snprintf(version, sizeof(version),
			 "p1:%s:%u:%" PRIu64 ":%u", hex, s.count, s.total,
			 s.size);
		if (cache_get_meta(eng->cache, t->id, &cur) == 0 &&
		    cur.gen == t->stale_gen && !strcmp(cur.version, version))
			unique_version(version, sizeof(version));
	}
	rc = cache_begin_version_under(eng->cache, t->id, version, t->epoch,
				       m);
	if (rc)
		goto out;
	gen = m->gen;
	if (m->pages > 0) {
		/* another process began it: go on with its pages */
		if (n == 2 && m->pages == 1 && !m->complete) {
			rc = append(eng, t, gen, 2, &s, &p[1], m);
			if (rc == -EINVAL)
				rc = 0;
		}
		goto out;
	}
	keys_reset(t, gen);
	if (page_keys(t, &p[0]) == 1 || (n == 2 && page_keys(t, &p[1]) == 1)) {
		changed_log(t, "a key seen twice", n);
		rc = 1;
		goto out;
	}
	rc = append(eng, t, gen, 1, &s, &p[0], m);
	if (!rc && n == 2)
		rc = append(eng, t, gen, 2, &s, &p[1], m);
out:
	pages_release(p, 2);
	return rc;
}

/* ---- continuing a pass --------------------------------------------------- */

int fs_numbered_fetch(struct fs_engine *eng, struct fs_table *t,
		      struct cache_meta *m)
{
	struct api_page *pages = NULL;
	int *rcs = NULL, rc = 0;
	unsigned next, n, i;
	uint64_t gen = m->gen;
	struct shape s;

	if (cursor_parse(m->cursor, &next, &s)) {
		log_err("cached rows of '%s' have a bad page cursor '%s'",
			t->name, m->cursor);
		return -EPROTO;
	}
	n = s.count - next + 1;
	if (n > PASS_WINDOW)
		n = PASS_WINDOW;
	pages = calloc(n, sizeof(*pages));
	rcs = calloc(n, sizeof(*rcs));
	if (!pages || !rcs) {
		rc = -ENOMEM;
		goto out;
	}
	if (t->keys_gen != gen)	/* a pass another process began */
		keys_reset(t, gen);
	fetch_pages(eng, t, next, n, s.size, pages, rcs);
	for (i = 0; i < n && !rc; i++) {
		const char *why = NULL;

		if (rcs[i]) {
			rc = rcs[i];
			/* pages before it are appended: the reader gets them */
			break;
		}
		why = page_mismatch(&s, next + i, &pages[i]);
		if (!why && page_keys(t, &pages[i]) == 1)
			why = "a key seen twice";
		if (why) {
			changed_log(t, why, next + i);
			t->stale_gen = gen;
			rc = -ESTALE;
			break;
		}
		rc = append(eng, t, gen, next + i, &s, &pages[i], m);
		if (rc == 0 && m->gen != gen)
			rc = -ESTALE;
	}
out:
	if (pages)
		pages_release(pages, n);
	free(pages);
	free(rcs);
	return rc;
}

/* ---- revalidation: the whole table and its digest ------------------------- */

/* Digest of generation gen's cached bytes (its length: m->bytes). */
static int cached_digest(struct fs_engine *eng, struct fs_table *t,
			 const struct cache_meta *m, uint64_t *out)
{
	char *buf = malloc(1 << 16);
	uint64_t off = 0, h = HASH_INIT;
	size_t n;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	while (off < m->bytes) {
		rc = cache_read(eng->cache, t->id, m->gen, off, buf, 1 << 16,
				&n);
		if (rc)
			break;
		if (n == 0) {
			rc = -ESTALE;
			break;
		}
		h = hash_add(h, buf, n);
		off += n;
	}
	free(buf);
	*out = h;
	return rc;
}

/*
 * Read the table whole (page 1, then the rest in parallel) and compare
 * its digest with the cached complete version m: the same keeps the
 * generation (proved current now), another caches the new version whole.
 * Returns 0, 1 (the table changed while read: try again), or an error.
 */
static int revalidate_whole(struct fs_engine *eng, struct fs_table *t,
			    struct cache_meta *m)
{
	struct api_page first = { 0 }, *pages = NULL;
	int *rcs = NULL, rc;
	unsigned n = 0, i;
	uint64_t h = HASH_INIT, old;
	char version[CACHE_VERSION_MAX], hex[17];
	const char *why = NULL;
	struct shape s;
	uint64_t gen;

	rc = api_get_page(eng->api, t->id, &t->schema, 1, eng->cfg.page_size,
			  &first);
	if (rc)
		return rc;
	shape_of(&first, &s);
	if (s.size == 0 || s.count > NPAGE_MAX) {
		rc = -EPROTO;
		goto out;
	}
	n = s.count - 1;
	pages = calloc(n + 1, sizeof(*pages));
	rcs = calloc(n + 1, sizeof(*rcs));
	if (!pages || !rcs) {
		rc = -ENOMEM;
		goto out;
	}
	if (n)
		fetch_pages(eng, t, 2, n, s.size, pages, rcs);
	keys_reset(t, 0);
	why = page_mismatch(&s, 1, &first);
	if (!why && page_keys(t, &first) == 1)
		why = "a key seen twice";
	h = hash_add(h, first.data, first.len);
	for (i = 0; i < n && !why; i++) {
		if (rcs[i]) {
			rc = rcs[i];
			goto out;
		}
		why = page_mismatch(&s, 2 + i, &pages[i]);
		if (!why && page_keys(t, &pages[i]) == 1)
			why = "a key seen twice";
		h = hash_add(h, pages[i].data, pages[i].len);
	}
	if (why) {
		changed_log(t, why, 0);
		rc = 1;
		goto out;
	}
	hash_hex(h, hex);
	snprintf(version, sizeof(version), "fnv:%s", hex);
	if (!strcmp(m->version, version)) {
		old = h;
	} else {
		rc = cached_digest(eng, t, m, &old);
		if (rc == -ESTALE)
			old = ~h;	/* dropped meanwhile: a new version */
		else if (rc)
			goto out;
	}
	if (old == h) {
		rc = cache_set_validated_under(eng->cache, t->id, m->gen,
					       (int64_t)time(NULL), t->epoch);
		if (rc == 0)
			rc = cache_get_meta(eng->cache, t->id, m);
		if (rc != -ESTALE)
			goto out;
	}
	/* another version: cache it whole, now */
	rc = cache_begin_version_under(eng->cache, t->id, version, t->epoch,
				       m);
	if (rc || m->complete || m->pages)
		goto out;
	gen = m->gen;
	rc = append(eng, t, gen, 1, &s, &first, m);
	for (i = 0; i < n && !rc; i++)
		rc = append(eng, t, gen, 2 + i, &s, &pages[i], m);
	keys_reset(t, gen);
out:
	api_page_release(&first);
	if (pages)
		pages_release(pages, n);
	free(pages);
	free(rcs);
	return rc;
}

/* ---- opening ------------------------------------------------------------ */

int fs_numbered_snapshot(struct fs_engine *eng, struct fs_table *t,
			 struct cache_meta *m, bool have, bool force)
{
	unsigned prev_pages = have && m->complete ? (unsigned)m->pages : 0;
	struct cache_meta old = *m;
	int rc, tries;

	(void)force;
	for (tries = 0; tries < PASS_TRIES; tries++) {
		if (have && m->complete)
			rc = revalidate_whole(eng, t, m);
		else
			rc = cold_pass(eng, t, m, prev_pages,
				       have && tries == 0 ? &old : NULL);
		if (rc != 1)
			break;
	}
	if (rc == 1) {
		log_err("table '%s' kept changing while it was read (%d "
			"tries)", t->name, PASS_TRIES);
		return -EAGAIN;
	}
	if (rc && !force && have && m->complete && fs_unreachable(rc)) {
		atomic_store(&t->offline_at, (int64_t)time(NULL));
		log_warn("cannot revalidate '%s' (%s): serving the cached "
			 "version", t->name, strerror(-rc));
		return cache_get_meta(eng->cache, t->id, m);
	}
	if (rc)
		log_err("reading rows of '%s' failed: %s", t->name,
			strerror(-rc));
	return rc;
}
