/*
 * Unit tests of cache/: a real LMDB env in a fresh temporary directory per
 * test, real processes (fork) for the sharing and crash cases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"

struct fixture {
	char base[PATH_MAX / 2]; /* the mkdtemp dir, removed at teardown */
	char dir[PATH_MAX];	/* the cache dir inside it */
	struct cache *cache;
	void *buf;		/* a test's big buffer, freed at teardown */
	char mnt[PATH_MAX];	/* a tmpfs mounted by the test, or "" */
};

static int rm_entry(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");

	assert_non_null(f);
	snprintf(f->base, sizeof(f->base), "%s/test_cache.XXXXXX",
		 tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(f->base));
	snprintf(f->dir, sizeof(f->dir), "%s/cache", f->base);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	cache_close(f->cache);
	if (f->mnt[0])
		umount2(f->mnt, MNT_DETACH);
	nftw(f->base, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f->buf);
	free(f);
	return 0;
}

static struct cache *open_cache(struct fixture *f, uint64_t max_bytes)
{
	assert_int_equal(cache_open(f->dir, max_bytes, &f->cache), 0);
	assert_non_null(f->cache);
	return f->cache;
}

/* ---- a deterministic JSONL stream cut into pages ---------------------- */

#define STREAM_PAGES 400
#define PAGE_CAP 1024

struct stream {
	char *bytes;
	size_t off[STREAM_PAGES + 1];	/* off[i]: start of page i */
};

/* Page i: (i % 7) + 1 lines, each naming the page and line. */
static size_t page_text(unsigned i, char *buf, size_t cap)
{
	size_t n = 0;

	for (unsigned j = 0; j <= i % 7; j++) {
		int w = snprintf(buf + n, cap - n,
				 "{\"k\":\"%u-%u\",\"v\":%u}\n", i, j,
				 i * 31 + j);
		assert_true(w > 0 && (size_t)w < cap - n);
		n += (size_t)w;
	}
	return n;
}

static void stream_init(struct stream *s)
{
	char buf[PAGE_CAP];

	s->bytes = malloc((size_t)STREAM_PAGES * PAGE_CAP);
	assert_non_null(s->bytes);
	s->off[0] = 0;
	for (unsigned i = 0; i < STREAM_PAGES; i++) {
		size_t n = page_text(i, buf, sizeof(buf));

		memcpy(s->bytes + s->off[i], buf, n);
		s->off[i + 1] = s->off[i] + n;
	}
}

static size_t page_rows(unsigned i)
{
	return i % 7 + 1;
}

/* Append page i of the stream; a NULL cursor when it is the last. */
static int append_stream_page(struct cache *c, const char *table,
			      uint64_t gen, const struct stream *s, unsigned i,
			      unsigned last, struct cache_meta *m)
{
	char cursor[32];

	snprintf(cursor, sizeof(cursor), "c%u", i + 1);
	return cache_append_page(c, table, gen, i, s->off[i],
				 s->bytes + s->off[i],
				 s->off[i + 1] - s->off[i], page_rows(i),
				 i == last ? NULL : cursor, m);
}

/* Read [0, bytes) in pieces of `step` and compare with the stream; with
 * at_end, bytes must be the frontier. */
static int check_stream_to(struct cache *c, const char *table, uint64_t gen,
			   const struct stream *s, uint64_t bytes, size_t step,
			   bool at_end)
{
	char *buf = malloc(step);
	uint64_t off = 0;
	size_t n;
	int rc = 0;

	if (!buf)
		return -ENOMEM;
	while (off < bytes) {
		size_t want = bytes - off < step ? (size_t)(bytes - off) : step;

		rc = cache_read(c, table, gen, off, buf, want, &n);
		if (rc)
			break;
		if (n != want ||
		    memcmp(buf, s->bytes + off, n) != 0) {
			rc = -EBADMSG;
			break;
		}
		off += n;
	}
	if (rc == 0 && at_end &&
	    (cache_read(c, table, gen, bytes, buf, step, &n) || n != 0))
		rc = -EBADMSG;
	free(buf);
	return rc;
}

static int check_stream(struct cache *c, const char *table, uint64_t gen,
			const struct stream *s, uint64_t bytes, size_t step)
{
	return check_stream_to(c, table, gen, s, bytes, step, true);
}

/* ---- a full file system (docs/cache.md, "A full disk") ----------------- */

#define FULL_PAGE (64 * 1024)
#define FULL_PAGES 64		/* 4 MiB: twice the file system */

/* Put the cache on a 2 MiB tmpfs of its own; false when this process may
 * not mount (not root), and the test is skipped. */
static bool cache_on_small_fs(struct fixture *f)
{
	char fs[PATH_MAX / 2 + 8];

	snprintf(fs, sizeof(fs), "%s/fs", f->base);
	assert_int_equal(mkdir(fs, 0700), 0);
	if (mount("tmpfs", fs, "tmpfs", 0, "size=2m") != 0)
		return false;
	snprintf(f->mnt, sizeof(f->mnt), "%s", fs);
	snprintf(f->dir, sizeof(f->dir), "%s/cache", fs);
	return true;
}

/* FULL_PAGES pages of bytes no two pages share. */
static char *full_stream(struct fixture *f)
{
	uint64_t x = 0x9e3779b97f4a7c15u;
	char *p = malloc((size_t)FULL_PAGE * FULL_PAGES);

	assert_non_null(p);
	for (size_t i = 0; i < (size_t)FULL_PAGE * FULL_PAGES; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (char)('a' + x % 26);
	}
	f->buf = p;
	return p;
}

static int append_full(struct cache *c, const char *table, uint64_t gen,
		       const char *s, unsigned i, struct cache_meta *m)
{
	char cursor[32];

	snprintf(cursor, sizeof(cursor), "c%u", i + 1);
	return cache_append_page(c, table, gen, i, (uint64_t)i * FULL_PAGE,
				 s + (size_t)i * FULL_PAGE, FULL_PAGE, 1,
				 i + 1 == FULL_PAGES ? NULL : cursor, m);
}

static void check_full(struct cache *c, const char *table, uint64_t gen,
		       const char *s, uint64_t bytes)
{
	char *buf = malloc(100000);
	uint64_t off = 0;
	size_t n;

	assert_non_null(buf);
	while (off < bytes) {
		assert_int_equal(cache_read(c, table, gen, off, buf, 100000,
					    &n), 0);
		assert_true(n > 0 && off + n <= bytes);
		assert_memory_equal(buf, s + off, n);
		off += n;
	}
	assert_int_equal(cache_read(c, table, gen, off, buf, 100000, &n), 0);
	assert_int_equal(n, 0);
	free(buf);
}

/* A table twice the size of the file system is cached whole: once the
 * disk is full it goes on in memory, with every byte, its meta and its
 * proof; the disk is freed for other tables, and a later version goes
 * back to the disk. */
static void test_full_fs_holds_in_memory(void **state)
{
	struct fixture *f = *state;
	struct cache_stats st;
	struct cache_meta m, b;
	const char *s;
	char one[1];
	size_t n;
	bool moved = false;
	uint64_t epoch;
	struct cache *c;

	if (!cache_on_small_fs(f))
		skip();
	c = open_cache(f, 0);
	s = full_stream(f);
	assert_int_equal(cache_begin_version(c, "A", "v1", &m), 0);
	assert_false(m.in_memory);
	for (unsigned i = 0; i < FULL_PAGES; i++) {
		assert_int_equal(append_full(c, "A", m.gen, s, i, &m), 0);
		if (m.in_memory && !moved) {
			moved = true;
			/* what was on disk came along */
			check_full(c, "A", m.gen, s, m.bytes);
		}
	}
	assert_true(moved);
	assert_true(m.complete);
	assert_int_equal(m.pages, FULL_PAGES);
	assert_int_equal(m.rows, FULL_PAGES);
	check_full(c, "A", m.gen, s, (uint64_t)FULL_PAGE * FULL_PAGES);
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.held_tables, 1);
	assert_int_equal(st.held_bytes, (uint64_t)FULL_PAGE * FULL_PAGES);

	/* the proof follows the epoch, as on disk */
	assert_int_equal(cache_get_epoch(c, "A", &epoch), 0);
	assert_int_equal(cache_set_validated_under(c, "A", m.gen, 1000,
						   epoch), 0);
	assert_int_equal(cache_get_meta(c, "A", &m), 0);
	assert_int_equal(m.validated_at, 1000);
	assert_int_equal(cache_bump_epoch(c, "A"), 0);
	assert_int_equal(cache_get_meta(c, "A", &m), 0);
	assert_int_equal(m.validated_at, 0);
	assert_int_equal(cache_set_validated_under(c, "A", m.gen, 2000,
						   epoch), 0);
	assert_int_equal(cache_get_meta(c, "A", &m), 0);
	assert_int_equal(m.validated_at, 0);	/* invalidated meanwhile */
	/* the same version begun again is kept; an old gen is stale */
	assert_int_equal(cache_begin_version(c, "A", "v1", &b), 0);
	assert_int_equal(b.gen, m.gen);
	assert_true(b.in_memory);
	assert_int_equal(cache_read(c, "A", m.gen + 1, 0, one, 1, &n),
			 -ESTALE);

	/* the disk took nothing of A: another table fits there */
	assert_int_equal(cache_begin_version(c, "B", "b1", &b), 0);
	assert_false(b.in_memory);
	for (unsigned i = 0; i < 8; i++)
		assert_int_equal(append_full(c, "B", b.gen, s, i, &b), 0);
	assert_false(b.in_memory);
	check_full(c, "B", b.gen, s, 8 * FULL_PAGE);

	/* forgetting A frees the memory; its next version is on disk */
	assert_int_equal(cache_invalidate(c, "A"), 0);
	assert_int_equal(cache_get_meta(c, "A", &m), -ENOENT);
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.held_tables, 0);
	assert_int_equal(st.held_bytes, 0);
	assert_int_equal(cache_begin_version(c, "A", "v2", &m), 0);
	assert_false(m.in_memory);
	assert_int_equal(append_full(c, "A", m.gen, s, 0, &m), 0);
	assert_false(m.in_memory);
}

/* A size derived from a generation (rows.csv's) is kept per generation
 * and form, across a reopen, and goes with the generation. */
static void test_derived_size(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m, m2;
	uint64_t size;

	assert_int_equal(cache_get_derived_size(c, "T", 1, 7, &size), -ENOENT);
	assert_int_equal(cache_put_derived_size(c, "T", 1, 7, 100), -ESTALE);
	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	assert_int_equal(cache_begin_version(c, "T2", "v1", &m2), 0);
	assert_int_equal(cache_put_derived_size(c, "T", m.gen, 7, 1234), 0);
	assert_int_equal(cache_put_derived_size(c, "T2", m2.gen, 7, 99), 0);
	assert_int_equal(cache_put_derived_size(c, "T", m.gen, 7, 0), -EINVAL);
	assert_int_equal(cache_get_derived_size(c, "T", m.gen, 7, &size), 0);
	assert_int_equal(size, 1234);
	/* another form (schema) is another size */
	assert_int_equal(cache_get_derived_size(c, "T", m.gen, 8, &size),
			 -ENOENT);
	cache_close(c);
	f->cache = NULL;
	c = open_cache(f, 0);
	assert_int_equal(cache_get_derived_size(c, "T", m.gen, 7, &size), 0);
	assert_int_equal(size, 1234);
	/* a new version drops it; another table (whose name T is a prefix
	 * of) keeps its own */
	assert_int_equal(cache_begin_version(c, "T", "v2", &m2), 0);
	assert_int_equal(cache_get_derived_size(c, "T", m.gen, 7, &size),
			 -ENOENT);
	assert_int_equal(cache_invalidate(c, "T"), 0);
	assert_int_equal(cache_get_meta(c, "T2", &m), 0);
	assert_int_equal(cache_get_derived_size(c, "T2", m.gen, 7, &size), 0);
	assert_int_equal(size, 99);
}

/* A full file system before the cache exists: ENOSPC, not SIGBUS (LMDB
 * maps its lock file sparse and the first touch of it faulted). */
static void test_full_fs_at_open(void **state)
{
	struct fixture *f = *state;
	char filler[PATH_MAX + 16];
	static char block[65536];
	FILE *fp;

	if (!cache_on_small_fs(f))
		skip();
	snprintf(filler, sizeof(filler), "%s/filler", f->mnt);
	fp = fopen(filler, "w");
	assert_non_null(fp);
	while (fwrite(block, 1, sizeof(block), fp) == sizeof(block))
		;
	fclose(fp);
	assert_int_equal(cache_open(f->dir, 0, &f->cache), -ENOSPC);
	assert_null(f->cache);
	/* room again: the same directory opens */
	assert_int_equal(unlink(filler), 0);
	open_cache(f, 0);
}

/* Memory is capped too (max_bytes here): a table too big for both fails
 * with -ENOSPC, keeping what it had, and never evicts into corruption. */
static void test_full_fs_memory_capped(void **state)
{
	struct fixture *f = *state;
	struct cache_meta m;
	const char *s;
	unsigned i;
	int rc = 0;
	struct cache *c;

	if (!cache_on_small_fs(f))
		skip();
	c = open_cache(f, 3 * 1024 * 1024);
	s = full_stream(f);
	assert_int_equal(cache_begin_version(c, "A", "v1", &m), 0);
	for (i = 0; i < FULL_PAGES; i++) {
		rc = append_full(c, "A", m.gen, s, i, &m);
		if (rc)
			break;
	}
	assert_int_equal(rc, -ENOSPC);
	assert_true(i < FULL_PAGES);
	assert_int_equal(cache_get_meta(c, "A", &m), 0);
	assert_int_equal(m.pages, i);
	check_full(c, "A", m.gen, s, m.bytes);
}

/* ---- tests ------------------------------------------------------------ */

static void test_dir_created_0700(void **state)
{
	struct fixture *f = *state;
	char parent[PATH_MAX + 8];
	struct stat st;

	snprintf(parent, sizeof(parent), "%s/a", f->base);
	snprintf(f->dir, sizeof(f->dir), "%s/a/b/cache", f->base);
	open_cache(f, 0);
	assert_int_equal(stat(f->dir, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0700);
	assert_int_equal(stat(parent, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	cache_close(f->cache);
	f->cache = NULL;

	/* an existing cache dir open to others is made private */
	assert_int_equal(chmod(f->dir, 0755), 0);
	open_cache(f, 0);
	assert_int_equal(stat(f->dir, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
}

static void test_open_not_a_dir(void **state)
{
	struct fixture *f = *state;
	struct cache *c = NULL;
	FILE *fp = fopen(f->dir, "w");

	assert_non_null(fp);
	fclose(fp);
	assert_int_not_equal(cache_open(f->dir, 0, &c), 0);
	assert_null(c);
}

/*
 * Pages of 5, 1, 7, 3, 9, 2 and 4 bytes: after each append, every read
 * (offset, size) over and past the frontier returns exactly the bytes.
 */
static void test_read_every_offset(void **state)
{
	static const size_t lens[] = { 5, 1, 7, 3, 9, 2, 4 };
	static const char *const cursors[] = { "c1", "c2", "c3", "c4", "c5",
					       "c6" };
	const size_t npages = sizeof(lens) / sizeof(lens[0]);
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m;
	char all[64], buf[80];
	size_t total = 0, frontier = 0, n;

	for (size_t i = 0; i < npages; i++)
		total += lens[i];
	assert_true(total <= sizeof(all));
	for (size_t i = 0; i < total; i++)
		all[i] = (char)('a' + i % 26);

	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	assert_int_equal(m.pages, 0);
	for (size_t p = 0; p < npages; p++) {
		assert_int_equal(cache_append_page(c, "T", m.gen, p, frontier,
						   all + frontier, lens[p], 1,
						   p + 1 < npages ? cursors[p] :
								    NULL,
						   NULL),
				 0);
		frontier += lens[p];
		for (size_t off = 0; off <= total + 2; off++) {
			for (size_t size = 0; size <= total + 3; size++) {
				size_t want = off >= frontier ? 0 :
					      frontier - off < size ?
							frontier - off :
							size;

				memset(buf, '#', sizeof(buf));
				assert_int_equal(cache_read(c, "T", m.gen, off,
							    buf, size, &n),
						 0);
				assert_int_equal(n, want);
				assert_memory_equal(buf, all + off, want);
				assert_int_equal(buf[want], '#');
			}
		}
	}
	/* one read over three pages: last byte of page 0 to first of 3 */
	assert_int_equal(cache_read(c, "T", m.gen, 4, buf, 10, &n), 0);
	assert_int_equal(n, 10);
	assert_memory_equal(buf, all + 4, 10);
}

static void test_begin_same_version_keeps_pages(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct stream s;
	struct cache_meta m1, m2;

	stream_init(&s);
	assert_int_equal(cache_begin_version(c, "T", "\"etag-1\"", &m1), 0);
	assert_true(m1.gen > 0);
	assert_string_equal(m1.version, "\"etag-1\"");
	assert_false(m1.complete);
	assert_true(m1.validated_at > 0);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(append_stream_page(c, "T", m1.gen, &s, i, 9,
						    &m1),
				 0);
	assert_int_equal(cache_begin_version(c, "T", "\"etag-1\"", &m2), 0);
	assert_int_equal(m2.gen, m1.gen);
	assert_int_equal(m2.pages, 3);
	assert_int_equal(m2.bytes, s.off[3]);
	assert_string_equal(m2.cursor, "c3");
	assert_int_equal(check_stream(c, "T", m1.gen, &s, s.off[3], 11), 0);
	free(s.bytes);
}

static void test_new_version_drops_old(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct stream s;
	struct cache_meta m1, m2, m;
	struct cache_stats st;
	char buf[16];
	size_t n = 99;

	stream_init(&s);
	assert_int_equal(cache_begin_version(c, "T", "v1", &m1), 0);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(append_stream_page(c, "T", m1.gen, &s, i, 9,
						    NULL),
				 0);
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.bytes, s.off[4]);

	assert_int_equal(cache_begin_version(c, "T", "v2", &m2), 0);
	assert_true(m2.gen > m1.gen);
	assert_string_equal(m2.version, "v2");
	assert_int_equal(m2.pages, 0);
	assert_int_equal(m2.bytes, 0);
	assert_int_equal(m2.rows, 0);
	assert_string_equal(m2.cursor, "");
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.tables, 1);

	assert_int_equal(cache_read(c, "T", m1.gen, 0, buf, sizeof(buf), &n),
			 -ESTALE);
	assert_int_equal(n, 0);
	assert_int_equal(append_stream_page(c, "T", m1.gen, &s, 4, 9, NULL),
			 -ESTALE);
	assert_int_equal(cache_set_validated(c, "T", m1.gen, 5), -ESTALE);
	/* the new generation starts at offset 0, none of the old bytes */
	assert_int_equal(cache_read(c, "T", m2.gen, 0, buf, sizeof(buf), &n),
			 0);
	assert_int_equal(n, 0);
	assert_int_equal(append_stream_page(c, "T", m2.gen, &s, 0, 9, &m), 0);
	assert_int_equal(check_stream(c, "T", m2.gen, &s, s.off[1], 7), 0);
	/* a table never cached: any generation is stale */
	assert_int_equal(cache_read(c, "U", 1, 0, buf, sizeof(buf), &n),
			 -ESTALE);
	free(s.bytes);
}

static void test_append_errors(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m, m2;
	char longstr[CACHE_CURSOR_MAX + 1];

	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 0, "ab\n", 3, 1,
					   "c1", NULL),
			 0);
	/* another reader appended the same page first */
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 0, "ab\n", 3, 1,
					   "c1", NULL),
			 -EEXIST);
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 2, "b\n", 2, 1,
					   "c1", NULL),
			 -EEXIST);
	/* a gap */
	assert_int_equal(cache_append_page(c, "T", m.gen, 2, 4, "cd\n", 3, 1,
					   "c2", NULL),
			 -EINVAL);
	assert_int_equal(cache_append_page(c, "T", m.gen + 1, 1, 3, "cd\n", 3,
					   1, "c2", NULL),
			 -ESTALE);
	assert_int_equal(cache_append_page(c, "nope", m.gen, 0, 0, "x\n", 2, 1,
					   NULL, NULL),
			 -ESTALE);

	memset(longstr, 'x', sizeof(longstr) - 1);
	longstr[sizeof(longstr) - 1] = '\0';
	longstr[CACHE_CURSOR_MAX] = '\0';	/* CURSOR_MAX chars: too long */
	assert_int_equal(cache_append_page(c, "T", m.gen, 1, 3, "cd\n", 3, 1,
					   longstr, NULL),
			 -ENAMETOOLONG);
	longstr[CACHE_CURSOR_MAX - 1] = '\0';	/* the longest that fits */
	assert_int_equal(cache_append_page(c, "T", m.gen, 1, 3, "cd\n", 3, 1,
					   longstr, &m2),
			 0);
	assert_string_equal(m2.cursor, longstr);
	longstr[CACHE_VERSION_MAX] = '\0';
	assert_int_equal(cache_begin_version(c, "T", longstr, NULL),
			 -ENAMETOOLONG);
	longstr[CACHE_VERSION_MAX - 1] = '\0';
	assert_int_equal(cache_begin_version(c, "T", longstr, &m2), 0);
	assert_string_equal(m2.version, longstr);

	memset(longstr, 't', CACHE_TABLE_MAX + 1);
	longstr[CACHE_TABLE_MAX + 1] = '\0';
	assert_int_equal(cache_begin_version(c, longstr, "v", NULL),
			 -ENAMETOOLONG);
	longstr[CACHE_TABLE_MAX] = '\0';
	assert_int_equal(cache_begin_version(c, longstr, "v", &m2), 0);
	assert_int_equal(cache_append_page(c, longstr, m2.gen, 0, 0, "ab\n", 3,
					   1, NULL, NULL),
			 0);
	assert_int_equal(cache_begin_version(c, "", "v", NULL), -EINVAL);
}

/*
 * Pages of equal length: a writer whose meta is a page behind (another
 * process appended meanwhile) offers page 1 again at the frontier's
 * offset, or page 2 at page 1's offset. The offset alone cannot tell them
 * apart; the page number does: no row is ever stored twice.
 */
static void test_append_page_twice_refused(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m;
	char buf[16];
	size_t n;

	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 0, "a1\n", 3, 1,
					   "n:2", &m), 0);
	assert_int_equal(cache_append_page(c, "T", m.gen, 1, 3, "b2\n", 3, 1,
					   "n:3", &m), 0);
	/* page 1 (index 1) again, where page 2 would go */
	assert_int_equal(cache_append_page(c, "T", m.gen, 1, 6, "b2\n", 3, 1,
					   "n:3'", NULL), -EEXIST);
	/* page 0 again at the frontier */
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 6, "a1\n", 3, 1,
					   "n:2'", NULL), -EEXIST);
	/* page 2 at page 1's offset: a stale offset, refused */
	assert_int_equal(cache_append_page(c, "T", m.gen, 2, 3, "c3\n", 3, 1,
					   NULL, NULL), -EINVAL);
	assert_int_equal(cache_get_meta(c, "T", &m), 0);
	assert_int_equal(m.pages, 2);
	assert_int_equal(m.bytes, 6);
	assert_int_equal(m.rows, 2);
	assert_string_equal(m.cursor, "n:3");
	assert_int_equal(cache_append_page(c, "T", m.gen, 2, 6, "c3\n", 3, 1,
					   NULL, &m), 0);
	assert_true(m.complete);
	assert_int_equal(cache_read(c, "T", m.gen, 0, buf, sizeof(buf), &n),
			 0);
	assert_int_equal(n, 9);
	assert_memory_equal(buf, "a1\nb2\nc3\n", 9);
	/* two copies of an empty page: one offset, told apart by number */
	assert_int_equal(cache_begin_version(c, "E", "v1", &m), 0);
	assert_int_equal(cache_append_page(c, "E", m.gen, 0, 0, NULL, 0, 0,
					   "n:2", NULL), 0);
	assert_int_equal(cache_append_page(c, "E", m.gen, 0, 0, NULL, 0, 0,
					   "n:2'", NULL), -EEXIST);
	assert_int_equal(cache_get_meta(c, "E", &m), 0);
	assert_int_equal(m.pages, 1);
}

static void test_complete_and_totals(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct stream s;
	struct cache_meta m, got;
	size_t rows = 0;

	stream_init(&s);
	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	for (unsigned i = 0; i < 10; i++) {
		assert_int_equal(append_stream_page(c, "T", m.gen, &s, i, 9,
						    &got),
				 0);
		rows += page_rows(i);
		assert_int_equal(got.pages, i + 1);
		assert_int_equal(got.rows, rows);
		assert_int_equal(got.bytes, s.off[i + 1]);
		assert_int_equal(got.complete, i == 9);
		if (i < 9) {
			char want[32];

			snprintf(want, sizeof(want), "c%u", i + 1);
			assert_string_equal(got.cursor, want);
		} else {
			assert_string_equal(got.cursor, "");
		}
	}
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_true(got.complete);
	assert_int_equal(got.bytes, s.off[10]);
	assert_int_equal(got.rows, rows);
	assert_int_equal(got.pages, 10);
	assert_string_equal(got.version, "v1");
	assert_true(got.used_at > 0);
	assert_int_equal(check_stream(c, "T", m.gen, &s, s.off[10], 4096), 0);
	/* once complete, a late copy of the last page is a duplicate */
	assert_int_equal(cache_append_page(c, "T", m.gen, 10, s.off[10],
					   "x\n", 2, 1, NULL, NULL),
			 -EEXIST);

	/* an empty table: one empty last page, complete with 0 bytes */
	assert_int_equal(cache_begin_version(c, "E", "", &m), 0);
	assert_string_equal(m.version, "");
	assert_int_equal(cache_append_page(c, "E", m.gen, 0, 0, NULL, 0, 0,
					   NULL, &got),
			 0);
	assert_true(got.complete);
	assert_int_equal(got.bytes, 0);
	assert_int_equal(got.pages, 1);
	assert_int_equal(cache_get_meta(c, "missing", &got), -ENOENT);
	free(s.bytes);
}

static void test_validated_and_invalidate(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m, got;
	struct cache_stats st;
	char *ver = NULL, *json = NULL;
	size_t len, n;
	char buf[8];

	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 0, "ab\n", 3, 1,
					   NULL, NULL),
			 0);
	assert_int_equal(cache_set_validated(c, "T", m.gen, 1234567), 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.validated_at, 1234567);
	assert_int_equal(cache_set_validated(c, "T", m.gen + 7, 1), -ESTALE);
	assert_int_equal(cache_set_validated(c, "U", m.gen, 1), -ESTALE);

	assert_int_equal(cache_put_schema(c, "T", "s1", "{}\n", 3), 0);
	assert_int_equal(cache_invalidate(c, "T"), 0);
	assert_int_equal(cache_get_meta(c, "T", &got), -ENOENT);
	assert_int_equal(cache_read(c, "T", m.gen, 0, buf, sizeof(buf), &n),
			 -ESTALE);
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.tables, 0);
	assert_int_equal(cache_invalidate(c, "T"), 0);	/* nothing cached */
	/* the schema is kept */
	assert_int_equal(cache_get_schema(c, "T", &ver, &json, &len), 0);
	assert_string_equal(json, "{}\n");
	free(ver);
	free(json);
	/* the next version gets a fresh generation */
	assert_int_equal(cache_begin_version(c, "T", "v1", &got), 0);
	assert_true(got.gen > m.gen);
}

static void test_schema_roundtrip(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	static const char schema[] = "{\n  \"name\": \"T\",\n  \"x\": \"\\u00e9\"\n}\n";
	char *ver = NULL, *json = NULL;
	size_t len = 0;

	assert_int_equal(cache_get_schema(c, "T", &ver, &json, &len), -ENOENT);
	assert_null(ver);
	assert_null(json);
	assert_int_equal(cache_put_schema(c, "T", "\"s-1\"", schema,
					  strlen(schema)),
			 0);
	assert_int_equal(cache_get_schema(c, "T", &ver, &json, &len), 0);
	assert_string_equal(ver, "\"s-1\"");
	assert_int_equal(len, strlen(schema));
	assert_string_equal(json, schema);
	free(ver);
	free(json);
	/* replaced, with no version */
	assert_int_equal(cache_put_schema(c, "T", NULL, "[]", 2), 0);
	assert_int_equal(cache_get_schema(c, "T", &ver, &json, &len), 0);
	assert_string_equal(ver, "");
	assert_string_equal(json, "[]");
	assert_int_equal(len, 2);
	free(ver);
	free(json);
}

static void test_spool_dedupe(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	const char *k1[] = { "b", "a", "b", "c" };
	const char *r1[] = { "{\"k\":\"b\",\"v\":1}", "{\"k\":\"a\"}",
			     "{\"k\":\"b\",\"v\":2}", "{\"k\":\"c\"}" };
	const char *k2[] = { "c", "" };
	const char *r2[] = { "{\"k\":\"c\",\"v\":3}", "{\"k\":\"\"}" };
	/* without a length prefix "T"+"Tx" would be "TT"+"x" */
	const char *k3[] = { "x" };
	const char *r3[] = { "other table" };
	const char *k4[] = { "Tx" };
	const char *r4[] = { "yet another" };
	struct cache_spool_batch b;
	size_t n;

	assert_int_equal(cache_spool_count(c, "T", &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_spool_put(c, "T", 4, k1, r1), 0);
	assert_int_equal(cache_spool_put(c, "T", 2, k2, r2), 0);
	assert_int_equal(cache_spool_put(c, "TT", 1, k3, r3), 0);
	assert_int_equal(cache_spool_put(c, "T", 1, k4, r4), 0);
	assert_int_equal(cache_spool_count(c, "T", &n), 0);
	assert_int_equal(n, 5);
	assert_int_equal(cache_spool_count(c, "TT", &n), 0);
	assert_int_equal(n, 1);

	assert_int_equal(cache_spool_next(c, "T", NULL, 100, &b), 0);
	assert_int_equal(b.n, 5);
	/* byte order: "" < "Tx" < "a" < "b" < "c" */
	assert_string_equal(b.rows[0], "{\"k\":\"\"}");
	assert_string_equal(b.rows[1], "yet another");
	assert_string_equal(b.rows[2], "{\"k\":\"a\"}");
	assert_string_equal(b.rows[3], "{\"k\":\"b\",\"v\":2}");
	assert_string_equal(b.rows[4], "{\"k\":\"c\",\"v\":3}");
	assert_string_equal(b.last_key, "c");
	cache_spool_batch_release(&b);
	assert_int_equal(cache_spool_next(c, "T", "Tx", 2, &b), 0);
	assert_int_equal(b.n, 2);
	assert_string_equal(b.rows[0], "{\"k\":\"a\"}");
	assert_string_equal(b.rows[1], "{\"k\":\"b\",\"v\":2}");
	assert_string_equal(b.last_key, "b");
	cache_spool_batch_release(&b);
	/* after a key that is not spooled: from the next one */
	assert_int_equal(cache_spool_next(c, "T", "bb", 2, &b), 0);
	assert_int_equal(b.n, 1);
	assert_string_equal(b.rows[0], "{\"k\":\"c\",\"v\":3}");
	cache_spool_batch_release(&b);
	assert_int_equal(cache_spool_next(c, "T", "c", 2, &b), 0);
	assert_int_equal(b.n, 0);
	assert_null(b.last_key);
	cache_spool_batch_release(&b);
	assert_int_equal(cache_spool_next(c, "T", NULL, 0, &b), -EINVAL);

	assert_int_equal(cache_spool_clear(c, "T"), 0);
	assert_int_equal(cache_spool_count(c, "T", &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_spool_next(c, "T", NULL, 10, &b), 0);
	assert_int_equal(b.n, 0);
	cache_spool_batch_release(&b);
	assert_int_equal(cache_spool_count(c, "TT", &n), 0);
	assert_int_equal(n, 1);
}

/* 10k rows put in shuffled batches of 700 with 1k repeats, then read back
 * in key order in batches of 333; then cleared (several clear chunks'
 * worth would be 10k+, so clear also crosses its chunk boundary). */
static void test_spool_10k_batches(void **state)
{
	enum { N = 12000, PUT = 700, GET = 333 };
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	static char keys[N][16], rows[N][48];
	const char *kp[PUT], *rp[PUT];
	unsigned *order = malloc(N * sizeof(*order));
	struct cache_spool_batch b;
	char *after = NULL;
	size_t n, seen = 0;

	assert_non_null(order);
	for (unsigned i = 0; i < N; i++) {
		snprintf(keys[i], sizeof(keys[i]), "k%06u", i % 10000);
		snprintf(rows[i], sizeof(rows[i]), "{\"k\":\"k%06u\",\"n\":%u}",
			 i % 10000, i);
		order[i] = i;
	}
	srand(42);
	for (unsigned i = N - 1; i > 0; i--) {
		unsigned j = (unsigned)rand() % (i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	/* i and i + 10000 share a key: the later put must win, so put the
	 * rows i >= 10000 last */
	for (unsigned pass = 0; pass < 2; pass++) {
		size_t k = 0;

		for (unsigned i = 0; i < N; i++) {
			unsigned r = order[i];

			if ((r >= 10000) != (pass == 1))
				continue;
			kp[k] = keys[r];
			rp[k] = rows[r];
			if (++k == PUT) {
				assert_int_equal(cache_spool_put(c, "T", k, kp,
								 rp),
						 0);
				k = 0;
			}
		}
		if (k)
			assert_int_equal(cache_spool_put(c, "T", k, kp, rp), 0);
	}
	assert_int_equal(cache_spool_count(c, "T", &n), 0);
	assert_int_equal(n, 10000);

	for (;;) {
		assert_int_equal(cache_spool_next(c, "T", after, GET, &b), 0);
		if (b.n == 0) {
			cache_spool_batch_release(&b);
			break;
		}
		assert_true(b.n <= GET);
		for (size_t i = 0; i < b.n; i++) {
			char want[64];
			size_t id = seen + i;

			snprintf(want, sizeof(want),
				 "{\"k\":\"k%06zu\",\"n\":%zu}", id,
				 id < N - 10000 ? id + 10000 : id);
			assert_string_equal(b.rows[i], want);
		}
		seen += b.n;
		free(after);
		after = strdup(b.last_key);
		assert_non_null(after);
		cache_spool_batch_release(&b);
	}
	free(after);
	assert_int_equal(seen, 10000);
	assert_int_equal(cache_spool_clear(c, "T"), 0);
	assert_int_equal(cache_spool_count(c, "T", &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cache_spool_next(c, "T", NULL, GET, &b), 0);
	assert_int_equal(b.n, 0);
	cache_spool_batch_release(&b);
	free(order);
}

static void fill_table(struct cache *c, const char *table, unsigned pages,
		       size_t page_len, struct cache_meta *m)
{
	char *buf = malloc(page_len);

	assert_non_null(buf);
	memset(buf, table[0], page_len);
	assert_int_equal(cache_begin_version(c, table, "v", m), 0);
	for (unsigned i = 0; i < pages; i++) {
		char cursor[32];

		snprintf(cursor, sizeof(cursor), "more-%u", i);
		assert_int_equal(cache_append_page(c, table, m->gen, i,
						   (uint64_t)i * page_len, buf,
						   page_len, 1, cursor, m),
				 0);
	}
	free(buf);
}

static void sleep_to_next_second(void)
{
	time_t t0 = time(NULL);

	while (time(NULL) == t0)
		usleep(20000);
}

/*
 * max_bytes 3000, pages of 1000 bytes. A and B are filled, then A is read
 * a second later (A more recent), then C grows: B goes first although it
 * sorts after A, then A; C alone over the cap is never evicted.
 */
static void test_eviction_lru(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 3000);
	struct cache_meta a, b, cm, got;
	struct cache_stats st;
	char buf[1000];
	size_t n;

	fill_table(c, "A", 1, 1000, &a);
	fill_table(c, "B", 1, 1000, &b);
	sleep_to_next_second();
	assert_int_equal(cache_read(c, "A", a.gen, 0, buf, 10, &n), 0);
	assert_int_equal(n, 10);
	sleep_to_next_second();
	fill_table(c, "C", 1, 1000, &cm);	/* 3000: fits exactly */
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.evictions, 0);
	assert_int_equal(st.tables, 3);
	assert_int_equal(st.bytes, 3000);

	memset(buf, 'C', sizeof(buf));
	assert_int_equal(cache_append_page(c, "C", cm.gen, 1, 1000, buf,
					   1000, 1, "more-a", NULL),
			 0);
	assert_int_equal(cache_get_meta(c, "B", &got), -ENOENT);
	assert_int_equal(cache_get_meta(c, "A", &got), 0);
	assert_int_equal(cache_read(c, "B", b.gen, 0, buf, 10, &n), -ESTALE);
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(st.bytes, 3000);

	memset(buf, 'C', sizeof(buf));
	assert_int_equal(cache_append_page(c, "C", cm.gen, 2, 2000, buf,
					   1000, 1, "more-b", NULL),
			 0);
	assert_int_equal(cache_get_meta(c, "A", &got), -ENOENT);
	/* C alone is over the cap: it stays whole */
	assert_int_equal(cache_append_page(c, "C", cm.gen, 3, 3000, buf,
					   1000, 1, NULL, &got),
			 0);
	assert_true(got.complete);
	assert_int_equal(got.bytes, 4000);
	assert_int_equal(cache_get_stats(c, &st), 0);
	assert_int_equal(st.evictions, 2);
	assert_int_equal(st.tables, 1);
	assert_int_equal(st.bytes, 4000);
	for (uint64_t off = 0; off < 4000; off += 1000) {
		assert_int_equal(cache_read(c, "C", cm.gen, off, buf,
					    sizeof(buf), &n),
				 0);
		assert_int_equal(n, 1000);
		assert_int_equal(buf[0], 'C');
		assert_int_equal(buf[999], 'C');
	}
}

/*
 * A reader that finds the frontier and appends the next page; both
 * processes run it on the same table, so about half their appends are
 * -EEXIST. Returns 0 or a negative errno / -EBADMSG on a mismatch.
 */
static int race_stream(const char *dir, const struct stream *s)
{
	struct cache *c = NULL;
	struct cache_meta m;
	int rc;

	rc = cache_open(dir, 0, &c);
	if (rc)
		return rc;
	for (;;) {
		rc = cache_get_meta(c, "T", &m);
		if (rc)
			break;
		if (m.complete)
			break;
		if (m.pages >= STREAM_PAGES || m.bytes != s->off[m.pages]) {
			rc = -EBADMSG;
			break;
		}
		rc = append_stream_page(c, "T", m.gen, s, (unsigned)m.pages,
					STREAM_PAGES - 1, NULL);
		if (rc && rc != -EEXIST)
			break;
		/* the other process may have appended more since */
		rc = check_stream_to(c, "T", m.gen, s, m.bytes, 1500, false);
		if (rc)
			break;
	}
	if (rc == 0)
		rc = check_stream(c, "T", m.gen, s, m.bytes, 4096);
	cache_close(c);
	return rc;
}

/* Bump T's epoch from another process (a dtfsctl import). */
static int bump_elsewhere(const char *dir)
{
	struct cache *c = NULL;
	int rc;

	rc = cache_open(dir, 0, &c);
	if (rc)
		return rc;
	rc = cache_bump_epoch(c, "T");
	cache_close(c);
	return rc;
}

static void test_epoch_compare_and_set(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m, got;
	uint64_t e0, e1, e2;
	pid_t pid;
	int status;

	assert_int_equal(cache_get_epoch(c, "T", &e0), 0);
	assert_int_equal(e0, 0);
	/* a revalidation under e0 with nothing in between is stored fresh */
	assert_int_equal(cache_begin_version_under(c, "T", "v1", e0, &m), 0);
	assert_true(m.validated_at > 0);
	assert_int_equal(cache_append_page(c, "T", m.gen, 0, 0, "ab\n", 3, 1,
					   NULL, NULL),
			 0);
	assert_int_equal(cache_set_validated_under(c, "T", m.gen, 1000, e0),
			 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.validated_at, 1000);

	/* an import in another process bumps the counter: the proof is
	 * void at once, and a revalidation begun under e0 cannot restore it */
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(bump_elsewhere(f->dir) == 0 ? 0 : 1);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(cache_get_epoch(c, "T", &e1), 0);
	assert_int_equal(e1, e0 + 1);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.validated_at, 0);
	assert_int_equal(got.gen, m.gen);	/* pages kept for readers */
	assert_int_equal(got.bytes, 3);
	assert_int_equal(cache_set_validated_under(c, "T", m.gen, 2000, e0),
			 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.validated_at, 0);
	/* a new version fetched under e0 is cached but unproved */
	assert_int_equal(cache_begin_version_under(c, "T", "v2", e0, &m), 0);
	assert_int_equal(m.validated_at, 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_string_equal(got.version, "v2");
	assert_int_equal(got.validated_at, 0);

	/* the import's second bump: e1 is stale too; under e2 all is fresh */
	assert_int_equal(cache_bump_epoch(c, "T"), 0);
	assert_int_equal(cache_get_epoch(c, "T", &e2), 0);
	assert_int_equal(e2, e1 + 1);
	assert_int_equal(cache_set_validated_under(c, "T", m.gen, 3000, e1),
			 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.validated_at, 0);
	assert_int_equal(cache_set_validated_under(c, "T", m.gen, 4000, e2),
			 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.validated_at, 4000);
	/* a gen check still comes first */
	assert_int_equal(cache_set_validated_under(c, "T", m.gen + 9, 1, e2),
			 -ESTALE);
	/* counters are per table; bumping a table never cached works */
	assert_int_equal(cache_bump_epoch(c, "U"), 0);
	assert_int_equal(cache_get_epoch(c, "U", &e0), 0);
	assert_int_equal(e0, 1);
	assert_int_equal(cache_get_epoch(c, "T", &e1), 0);
	assert_int_equal(e1, e2);
	assert_int_equal(cache_get_meta(c, "U", &got), -ENOENT);
	/* the counter survives a reopen (it is in LMDB, not in memory) */
	cache_close(c);
	c = open_cache(f, 0);
	assert_int_equal(cache_get_epoch(c, "T", &e1), 0);
	assert_int_equal(e1, e2);
}

static void test_two_processes(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct stream s;
	struct cache_meta m;
	pid_t pid;
	int status;

	stream_init(&s);
	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(race_stream(f->dir, &s) == 0 ? 0 : 1);
	assert_int_equal(race_stream(f->dir, &s), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);

	assert_int_equal(cache_get_meta(c, "T", &m), 0);
	assert_true(m.complete);
	assert_int_equal(m.pages, STREAM_PAGES);
	assert_int_equal(m.bytes, s.off[STREAM_PAGES]);
	assert_int_equal(check_stream(c, "T", m.gen, &s, m.bytes, 777), 0);
	free(s.bytes);
}

/* Forever: new versions of K, appended page by page, and spooled rows. */
static void writer_forever(const char *dir, const struct stream *s)
{
	struct cache *c = NULL;
	struct cache_meta m;
	char key[32], row[64];
	const char *kp[1] = { key }, *rp[1] = { row };

	if (cache_open(dir, 5000, &c))
		_exit(1);
	for (unsigned v = 0;; v++) {
		char ver[32];

		snprintf(ver, sizeof(ver), "v%u", v);
		if (cache_begin_version(c, "K", ver, &m))
			_exit(2);
		for (unsigned i = 0; i < 60; i++) {
			if (append_stream_page(c, "K", m.gen, s, i, 59, NULL))
				_exit(3);
			snprintf(key, sizeof(key), "%u", (v * 60 + i) % 500);
			snprintf(row, sizeof(row), "{\"v\":%u}", v);
			if (cache_spool_put(c, "K", 1, kp, rp))
				_exit(4);
		}
		/* other tables so that eviction runs too */
		snprintf(ver, sizeof(ver), "O%u", v % 5);
		/* (still there from 5 rounds ago: the page is too) */
		if (cache_begin_version(c, ver, "x", &m))
			_exit(5);
		if (!m.complete &&
		    append_stream_page(c, ver, m.gen, s, 0, 0, NULL))
			_exit(6);
	}
}

static void test_kill9_mid_writes(void **state)
{
	struct fixture *f = *state;
	struct stream s;

	stream_init(&s);
	for (int round = 0; round < 4; round++) {
		struct cache *c = NULL;
		struct cache_meta m;
		struct cache_stats st;
		struct cache_spool_batch b;
		uint64_t sum = 0;
		size_t n;
		pid_t pid;
		int status;

		fflush(NULL);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0)
			writer_forever(f->dir, &s);
		usleep(50000 + 40000 * round);
		assert_int_equal(kill(pid, SIGKILL), 0);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (!WIFSIGNALED(status))
			fail_msg("writer exited with %d", WEXITSTATUS(status));

		assert_int_equal(cache_open(f->dir, 5000, &c), 0);
		if (cache_get_meta(c, "K", &m) == 0) {
			assert_true(m.pages <= 60);
			assert_int_equal(m.bytes, s.off[m.pages]);
			assert_int_equal(check_stream(c, "K", m.gen, &s,
						      m.bytes, 999),
					 0);
			sum += m.bytes;
			/* and it goes on where the dead writer stopped */
			if (!m.complete)
				assert_int_equal(
					append_stream_page(c, "K", m.gen, &s,
							   (unsigned)m.pages,
							   59, NULL),
					0);
			sum += m.complete ? 0 :
				s.off[m.pages + 1] - s.off[m.pages];
		}
		for (int o = 0; o < 5; o++) {
			char name[8];

			snprintf(name, sizeof(name), "O%d", o);
			if (cache_get_meta(c, name, &m) == 0)
				sum += m.bytes;
		}
		assert_int_equal(cache_get_stats(c, &st), 0);
		assert_int_equal(st.bytes, sum);
		assert_int_equal(cache_spool_count(c, "K", &n), 0);
		assert_true(n <= 500);
		assert_int_equal(cache_spool_next(c, "K", NULL, 1000, &b), 0);
		assert_int_equal(b.n, n);
		cache_spool_batch_release(&b);
		cache_close(c);
	}
	free(s.bytes);
}

static void test_reopen_persistence(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct stream s;
	struct cache_meta m, got;
	char *ver = NULL, *json = NULL;
	const char *k[] = { "a" }, *r[] = { "row a" };
	size_t len, n;
	time_t t0;

	stream_init(&s);
	t0 = time(NULL);
	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	assert_true(m.began_at >= t0 && m.began_at <= time(NULL));
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(append_stream_page(c, "T", m.gen, &s, i, 4,
						    NULL),
				 0);
	assert_int_equal(cache_set_validated(c, "T", m.gen, m.began_at + 50),
			 0);
	assert_int_equal(cache_put_schema(c, "T", "s", "{}", 2), 0);
	assert_int_equal(cache_spool_put(c, "T", 1, k, r), 0);
	cache_close(c);
	f->cache = NULL;

	c = open_cache(f, 0);
	assert_int_equal(cache_get_meta(c, "T", &got), 0);
	assert_int_equal(got.gen, m.gen);
	assert_true(got.complete);
	assert_int_equal(got.bytes, s.off[5]);
	/* when the version began: kept by appends, proofs and reopens */
	assert_int_equal(got.began_at, m.began_at);
	assert_int_equal(check_stream(c, "T", m.gen, &s, s.off[5], 100), 0);
	assert_int_equal(cache_get_schema(c, "T", &ver, &json, &len), 0);
	assert_string_equal(ver, "s");
	assert_string_equal(json, "{}");
	free(ver);
	free(json);
	assert_int_equal(cache_spool_count(c, "T", &n), 0);
	assert_int_equal(n, 1);
	/* generations keep growing across opens */
	assert_int_equal(cache_begin_version(c, "U", "v1", &got), 0);
	assert_true(got.gen > m.gen);
	free(s.bytes);
}

/* A data file LMDB cannot read (an OS crash under MDB_NOSYNC, a stray
 * file) is started afresh rather than refusing to mount. */
static void test_corrupt_env_started_afresh(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 16], junk[8192];
	struct cache_meta m;
	FILE *fp;

	open_cache(f, 0);
	assert_int_equal(cache_begin_version(f->cache, "T", "v", &m), 0);
	cache_close(f->cache);
	f->cache = NULL;
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	fp = fopen(path, "w");
	assert_non_null(fp);
	memset(junk, 0x5a, sizeof(junk));
	assert_int_equal(fwrite(junk, 1, sizeof(junk), fp), sizeof(junk));
	fclose(fp);
	open_cache(f, 0);
	assert_int_equal(cache_get_meta(f->cache, "T", &m), -ENOENT);
	assert_int_equal(cache_begin_version(f->cache, "T", "v", &m), 0);
}

/* ---- damage: a damaged cache is a cache miss ---------------------------- */

/* Read the whole file at path into a malloc'ed buffer. */
static char *slurp(const char *path, size_t *len)
{
	struct stat st;
	char *buf;
	FILE *fp = fopen(path, "rb");

	assert_non_null(fp);
	assert_int_equal(fstat(fileno(fp), &st), 0);
	buf = malloc((size_t)st.st_size + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)st.st_size, fp),
			 (size_t)st.st_size);
	fclose(fp);
	*len = (size_t)st.st_size;
	return buf;
}

static void spit(const char *path, const char *buf, size_t len)
{
	FILE *fp = fopen(path, "r+b");

	assert_non_null(fp);
	assert_int_equal(fwrite(buf, 1, len, fp), len);
	fclose(fp);
}

/* Cache every page of the stream as table T, version v1; close. */
static void fill_and_close(struct fixture *f, struct stream *s,
			   struct cache_meta *m)
{
	struct cache *c = open_cache(f, 0);

	stream_init(s);
	assert_int_equal(cache_begin_version(c, "T", "v1", m), 0);
	for (unsigned i = 0; i < STREAM_PAGES; i++)
		assert_int_equal(append_stream_page(c, "T", m->gen, s, i,
						    STREAM_PAGES - 1, NULL),
				 0);
	cache_close(c);
	f->cache = NULL;
}

/* Read the table in a child: whatever the damage, the child must not die
 * of a signal, and every byte it is given must be the stream's. Exits 0
 * (all bytes), 2 (-EBADMSG/-ESTALE/-ENOENT: a miss), 1 (wrong bytes or
 * another error). */
static int read_in_child(struct fixture *f, const struct stream *s,
			 uint64_t gen)
{
	pid_t pid = fork();
	int status;

	assert_true(pid >= 0);
	if (pid == 0) {
		struct cache *c;
		char buf[777];
		uint64_t off = 0;
		size_t n;
		int rc;

		if (cache_open(f->dir, 0, &c))
			_exit(1);
		for (;;) {
			rc = cache_read(c, "T", gen, off, buf, sizeof(buf), &n);
			if (rc == -EBADMSG || rc == -ESTALE || rc == -ENOENT)
				_exit(2);
			if (rc || memcmp(buf, s->bytes + off, n))
				_exit(1);
			if (n == 0)
				break;
			off += n;
		}
		cache_close(c);
		_exit(off == s->off[STREAM_PAGES] ? 0 : 1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));	/* never SIGBUS or SIGSEGV */
	return WEXITSTATUS(status);
}

/* data.mdb cut to half its size: LMDB would map it and die of SIGBUS at
 * the first read past the end. It is started afresh instead. */
static void test_truncated_env_started_afresh(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 16];
	struct stream s;
	struct cache_meta m;
	struct stat st;

	fill_and_close(f, &s, &m);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(truncate(path, st.st_size / 2), 0);
	assert_int_equal(read_in_child(f, &s, m.gen), 2);
	open_cache(f, 0);
	assert_int_equal(cache_get_meta(f->cache, "T", &m), -ENOENT);
	/* and the cache works again */
	assert_int_equal(cache_begin_version(f->cache, "T", "v2", &m), 0);
	assert_int_equal(append_stream_page(f->cache, "T", m.gen, &s, 0, 0,
					    NULL), 0);
	assert_int_equal(check_stream(f->cache, "T", m.gen, &s, s.off[1], 5),
			 0);
	free(s.bytes);
}

/* A byte changed inside a cached page's payload: the read that meets it
 * fails with -EBADMSG (never the damaged bytes) and the version is
 * dropped, so the next open fetches it again. */
static void test_damaged_page_is_a_miss(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 16], *data, *hit;
	struct stream s;
	struct cache_meta m;
	size_t len;

	fill_and_close(f, &s, &m);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	data = slurp(path, &len);
	hit = memmem(data, len, "{\"k\":\"300-2\"", 12);
	assert_non_null(hit);
	hit[7] = '9';	/* "300-2" → "300-9": still valid JSON */
	spit(path, data, len);
	free(data);
	assert_int_equal(read_in_child(f, &s, m.gen), 2);
	open_cache(f, 0);
	assert_int_equal(cache_get_meta(f->cache, "T", &m), -ENOENT);
	free(s.bytes);
}

/* A damaged meta record reads as nothing cached (dropped), not -EIO
 * forever. */
static void test_damaged_meta_is_a_miss(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX + 16], *data, *hit;
	static const char magic[] = { 0x31, 0x6d, 0x74, 0x64 };
	struct stream s;
	struct cache_meta m;
	size_t len;

	fill_and_close(f, &s, &m);
	snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	data = slurp(path, &len);
	hit = memmem(data, len, magic, sizeof(magic));
	assert_non_null(hit);
	hit[0] ^= 0x40;
	spit(path, data, len);
	free(data);
	open_cache(f, 0);
	assert_int_equal(cache_get_meta(f->cache, "T", &m), -ENOENT);
	assert_int_equal(cache_begin_version(f->cache, "T", "v1", &m), 0);
	assert_false(m.complete);
	free(s.bytes);
}

static void test_errno_mapping(void **state)
{
	(void)state;
	assert_int_equal(cache_errno(0), 0);
	assert_int_equal(cache_errno(-30798 /* MDB_NOTFOUND */), -ENOENT);
	assert_int_equal(cache_errno(-30792 /* MDB_MAP_FULL */), -ENOSPC);
	assert_int_equal(cache_errno(-30796 /* MDB_CORRUPTED */), -EIO);
	assert_int_equal(cache_errno(EACCES), -EACCES);
	assert_int_equal(cache_errno(EINVAL), -EIO);
}

struct reader_arg {
	struct cache *cache;
	const struct stream *s;
	uint64_t gen;
	volatile int *stop;
	int bad;
};

static void *reader_thread(void *p)
{
	struct reader_arg *a = p;
	unsigned seed = (unsigned)(uintptr_t)p;
	char buf[3000];

	while (!*a->stop) {
		uint64_t off = (uint64_t)rand_r(&seed) %
			       (a->s->off[STREAM_PAGES] + 10);
		size_t size = (size_t)rand_r(&seed) % sizeof(buf), n;

		if (cache_read(a->cache, "T", a->gen, off, buf, size, &n) ||
		    n > size || (n && memcmp(buf, a->s->bytes + off, n)))
			a->bad++;
	}
	return NULL;
}

/* Threads of one process read while another appends (MDB_NOTLS). */
static void test_threads(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct stream s;
	struct cache_meta m;
	struct reader_arg args[4];
	pthread_t th[4];
	volatile int stop = 0;

	stream_init(&s);
	assert_int_equal(cache_begin_version(c, "T", "v1", &m), 0);
	for (int i = 0; i < 4; i++) {
		args[i] = (struct reader_arg){ .cache = c, .s = &s,
					       .gen = m.gen, .stop = &stop };
		assert_int_equal(pthread_create(&th[i], NULL, reader_thread,
						&args[i]),
				 0);
	}
	for (unsigned i = 0; i < STREAM_PAGES; i++)
		assert_int_equal(append_stream_page(c, "T", m.gen, &s, i,
						    STREAM_PAGES - 1, NULL),
				 0);
	stop = 1;
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(args[i].bad, 0);
	}
	free(s.bytes);
}

/* ---- forgetting the map ------------------------------------------------
 * The cache drops this process's mapping of the LMDB pages it read or
 * deleted (madvise MADV_DONTNEED). These tests read the process's own
 * /proc/self/status: the peak RSS of a table read three times, deleted or
 * spooled must stay far below its size, and every byte read back, also by
 * threads racing with drops, must be right. The bounds are generous: the
 * cache keeps about 8 MiB mapped; without the drops the growth is the
 * table's size.
 */

#define BIG_PAGE (128 * 1024 + 123)	/* records not page-aligned */
#define BIG_PAGES 512			/* 64 MiB */
#define BIG_BYTES ((uint64_t)BIG_PAGE * BIG_PAGES)
#define MAP_BOUND_KIB (24 * 1024)

/* The byte at offset off of the big table: differs page to page, so a
 * dropped page read back as zeros or as another page is caught. */
static uint8_t big_byte(uint64_t off)
{
	return (uint8_t)((off * 0x9E3779B1u) >> 24);
}

static void fill_big(struct cache *c, const char *table, const char *version,
		     unsigned pages, struct cache_meta *m)
{
	uint8_t *buf = malloc(BIG_PAGE);

	assert_non_null(buf);
	assert_int_equal(cache_begin_version(c, table, version, m), 0);
	for (unsigned i = 0; i < pages; i++) {
		uint64_t off = (uint64_t)i * BIG_PAGE;
		char cursor[32];

		snprintf(cursor, sizeof(cursor), "more-%u", i);
		for (size_t j = 0; j < BIG_PAGE; j++)
			buf[j] = big_byte(off + j);
		assert_int_equal(cache_append_page(c, table, m->gen, i, off,
						   buf, BIG_PAGE, 1,
						   i + 1 == pages ? NULL :
								    cursor,
						   m),
				 0);
	}
	free(buf);
}

/* A field of /proc/self/status in KiB, or -1 when it is not there. */
static long status_kib(const char *field)
{
	FILE *f = fopen("/proc/self/status", "re");
	size_t n = strlen(field);
	char line[256];
	long v = -1;

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

/* ASan keeps freed memory in a quarantine it recycles: the heap rises and
 * falls under it, so VmHWM there says little about the map. */
#if defined(__SANITIZE_ADDRESS__)
#define HEAP_QUARANTINE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HEAP_QUARANTINE 1
#endif
#endif
#ifndef HEAP_QUARANTINE
#define HEAP_QUARANTINE 0
#endif

/*
 * How much the map grows from here on, two ways:
 *   - the file-backed RSS (RssFile, + RssShmem for a cache on tmpfs)
 *     sampled by peak_sample() after calls;
 *   - with /proc/self/clear_refs (writing 5 resets VmHWM to the current
 *     RSS), the growth of VmHWM, which also sees the peak inside a call,
 *     less what the heap grew by (LMDB's dirty pages are not the map).
 */
struct peak {
	bool hwm;	/* VmHWM was reset */
	long rss;	/* VmRSS at the start, KiB */
	long anon;	/* RssAnon at the start, KiB */
	long file;	/* file-backed RSS at the start, KiB */
	long file_max;	/* ... and its highest sample */
};

static long file_rss_kib(void)
{
	long file = status_kib("RssFile"), shmem = status_kib("RssShmem");

	if (file < 0 || shmem < 0)
		return -1;
	return file + shmem;
}

static void peak_start(struct peak *p)
{
	int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);

	p->hwm = fd >= 0 && write(fd, "5", 1) == 1;
	if (fd >= 0)
		close(fd);
	p->rss = status_kib("VmRSS");
	p->anon = status_kib("RssAnon");
	p->file = file_rss_kib();
	p->file_max = p->file;
}

static void peak_sample(struct peak *p)
{
	long v = file_rss_kib();

	if (v > p->file_max)
		p->file_max = v;
}

static void check_growth(long kib, long bound_kib, const char *what,
			 const char *how)
{
	if (kib >= bound_kib || getenv("TEST_CACHE_VERBOSE"))
		fprintf(stderr, "# %s: %s grew by %ld KiB (bound %ld)\n", what,
			how, kib, bound_kib);
	assert_true(kib < bound_kib);
}

static void assert_peak_below(struct peak *p, long bound_kib,
			      const char *what)
{
	long hwm = status_kib("VmHWM"), anon = status_kib("RssAnon");

	peak_sample(p);
	if (p->file < 0) {
		fprintf(stderr, "# %s: no RssFile in /proc/self/status, bound "
			"not checked\n", what);
		return;
	}
	check_growth(p->file_max - p->file, bound_kib, what,
		     "file-backed RSS");
	if (p->hwm && !HEAP_QUARANTINE && hwm >= 0 && p->rss >= 0 &&
	    anon >= 0 && p->anon >= 0)
		check_growth(hwm - p->rss - (anon > p->anon ? anon - p->anon :
							       0),
			     bound_kib, what, "VmHWM less the heap");
}

/* Read [0, bytes) in pieces of step bytes into buf and check every
 * byte. */
static void read_big(struct cache *c, const char *table, uint64_t gen,
		     uint64_t bytes, uint8_t *buf, size_t step,
		     struct peak *p)
{
	uint64_t off = 0;
	size_t n;

	while (off < bytes) {
		assert_int_equal(cache_read(c, table, gen, off, buf, step, &n),
				 0);
		assert_true(n > 0);
		for (size_t j = 0; j < n; j++)
			if (buf[j] != big_byte(off + j))
				fail_msg("byte %llu of '%s' is wrong",
					 (unsigned long long)(off + j), table);
		off += n;
		if (p)
			peak_sample(p);
	}
	assert_int_equal(off, bytes);
}

/* A 64 MiB table read three times, in pieces that straddle its records:
 * right bytes, and the map is not kept. */
static void test_map_reads_bounded(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	uint8_t *buf = f->buf = malloc((size_t)BIG_BYTES);
	struct cache_meta m;
	struct peak p;

	assert_non_null(buf);
	memset(buf, 0, (size_t)BIG_BYTES);	/* its pages are no growth */
	fill_big(c, "Big", "v1", BIG_PAGES, &m);
	peak_start(&p);
	for (int pass = 0; pass < 3; pass++)
		read_big(c, "Big", m.gen, BIG_BYTES, buf, 100000 + 31 * pass,
			 &p);
	assert_peak_below(&p, MAP_BOUND_KIB, "reading 64 MiB three times");
	/* one read as large as the table: dropped as it goes */
	peak_start(&p);
	read_big(c, "Big", m.gen, BIG_BYTES, buf, (size_t)BIG_BYTES, &p);
	assert_peak_below(&p, MAP_BOUND_KIB, "one read of 64 MiB");
}

/* Deleting 512 large records (a new version, then an invalidate) reads
 * the head of each (64 KiB with fault-around): that is dropped too. Each
 * starts on a fresh map (reopened), as after a restart. */
static void test_map_deletes_bounded(void **state)
{
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct cache_meta m;
	struct peak p;

	fill_big(c, "Big", "v1", BIG_PAGES, &m);
	cache_close(c);
	c = open_cache(f, 0);
	peak_start(&p);
	assert_int_equal(cache_begin_version(c, "Big", "v2", &m), 0);
	peak_sample(&p);
	assert_peak_below(&p, MAP_BOUND_KIB / 2, "dropping a version");
	assert_int_equal(m.bytes, 0);

	fill_big(c, "Big", "v3", BIG_PAGES, &m);
	cache_close(c);
	c = open_cache(f, 0);
	peak_start(&p);
	assert_int_equal(cache_invalidate(c, "Big"), 0);
	peak_sample(&p);
	assert_peak_below(&p, MAP_BOUND_KIB / 2, "invalidating a table");
	assert_int_equal(cache_get_meta(c, "Big", &m), -ENOENT);
}

/* Row i of the spool test: its key and 300 bytes that differ row to row.
 * Returns the row's length. */
static size_t spool_row(unsigned i, char *key, size_t klen, char *row,
			size_t rlen)
{
	int n;

	snprintf(key, klen, "k%07u", i);
	n = snprintf(row, rlen, "{\"k\":\"k%07u\",\"pad\":\"", i);
	assert_true(n > 0 && (size_t)n < rlen);
	for (; (size_t)n < rlen - 3; n++)
		row[n] = (char)('a' + (i * 7 + (unsigned)n) % 26);
	row[n++] = '"';
	row[n++] = '}';
	row[n] = '\0';
	return (size_t)n;
}

/* Spool a 50 MB import in shuffled batches, read it back, clear it: the
 * spool B-tree is not kept mapped, and the rows come back whole. */
static void test_map_spool_bounded(void **state)
{
	enum { N = 150000, PUT = 500, GET = 1000, KEY = 16, ROW = 301 };
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	unsigned *order = malloc(N * sizeof(*order));
	static char keys[PUT][KEY], rows[PUT][ROW];
	const char *kp[PUT], *rp[PUT];
	unsigned seed = 7;
	struct cache_spool_batch b;
	struct peak p;
	char *after = NULL, want_key[KEY], want[ROW];
	size_t seen = 0;

	assert_non_null(order);
	for (unsigned i = 0; i < N; i++)
		order[i] = i;
	for (unsigned i = N - 1; i > 0; i--) {
		unsigned j = (unsigned)rand_r(&seed) % (i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (unsigned j = 0; j < PUT; j++) {
		kp[j] = keys[j];
		rp[j] = rows[j];
	}
	peak_start(&p);
	for (unsigned i = 0; i < N; i += PUT) {
		for (unsigned j = 0; j < PUT; j++)
			spool_row(order[i + j], keys[j], KEY, rows[j], ROW);
		assert_int_equal(cache_spool_put(c, "T", PUT, kp, rp), 0);
		peak_sample(&p);
	}
	for (;;) {
		assert_int_equal(cache_spool_next(c, "T", after, GET, &b), 0);
		peak_sample(&p);
		if (b.n == 0) {
			cache_spool_batch_release(&b);
			break;
		}
		for (size_t i = 0; i < b.n; i++) {
			spool_row((unsigned)(seen + i), want_key, KEY, want,
				  ROW);
			assert_string_equal(b.rows[i], want);
		}
		seen += b.n;
		free(after);
		after = strdup(b.last_key);
		assert_non_null(after);
		cache_spool_batch_release(&b);
	}
	free(after);
	free(order);
	assert_int_equal(seen, N);
	assert_int_equal(cache_spool_clear(c, "T"), 0);
	peak_sample(&p);
	assert_peak_below(&p, MAP_BOUND_KIB, "spooling 150k rows of 300 bytes");
}

struct big_reader_arg {
	struct cache *cache;
	uint64_t gen;
	volatile int *stop;
	unsigned reads;
	int bad;
};

/* Random reads of the big table, each checked byte by byte. */
static void *big_reader_thread(void *p)
{
	struct big_reader_arg *a = p;
	unsigned seed = (unsigned)(uintptr_t)p;
	size_t cap = 3 * BIG_PAGE;
	uint8_t *buf = malloc(cap);

	if (!buf) {
		a->bad++;
		return NULL;
	}
	while (!*a->stop || a->reads < 50) {
		uint64_t off = (uint64_t)rand_r(&seed) % (BIG_BYTES / 16);
		size_t size = (size_t)rand_r(&seed) % cap, n;

		if (cache_read(a->cache, "Big", a->gen, off, buf, size, &n) ||
		    n != size) {
			a->bad++;
			continue;
		}
		for (size_t j = 0; j < n; j++)
			if (buf[j] != big_byte(off + j)) {
				a->bad++;
				break;
			}
		a->reads++;
	}
	free(buf);
	return NULL;
}

/*
 * Threads copy from the same records while others drop them: readers of
 * one table race with a thread that fills and deletes another (dropping
 * runs and, past the fault budget, the whole map) and spools. A drop
 * under a live transaction only unmaps; the next access maps the same
 * bytes again, so every read must still be right.
 */
static void test_map_drop_races_readers(void **state)
{
	enum { READERS = 3, ROUNDS = 6, SPOOL = 2000 };
	struct fixture *f = *state;
	struct cache *c = open_cache(f, 0);
	struct big_reader_arg args[READERS];
	pthread_t th[READERS];
	struct cache_meta m, w;
	volatile int stop = 0;
	static char keys[SPOOL][16], rows[SPOOL][300];
	const char *kp[SPOOL], *rp[SPOOL];

	/* only the first 1/16 is read: 32 records, hot in every thread */
	fill_big(c, "Big", "v1", BIG_PAGES / 16 + 4, &m);
	for (unsigned i = 0; i < SPOOL; i++) {
		snprintf(keys[i], sizeof(keys[i]), "k%05u", i);
		memset(rows[i], 'a' + i % 26, sizeof(rows[i]) - 1);
		rows[i][sizeof(rows[i]) - 1] = '\0';
		kp[i] = keys[i];
		rp[i] = rows[i];
	}
	for (int i = 0; i < READERS; i++) {
		args[i] = (struct big_reader_arg){ .cache = c, .gen = m.gen,
						   .stop = &stop };
		assert_int_equal(pthread_create(&th[i], NULL,
						big_reader_thread, &args[i]),
				 0);
	}
	for (int r = 0; r < ROUNDS; r++) {
		size_t n;

		fill_big(c, "W", r % 2 ? "odd" : "even", 64, &w);
		assert_int_equal(cache_spool_put(c, "S", SPOOL, kp, rp), 0);
		assert_int_equal(cache_spool_count(c, "S", &n), 0);
		assert_int_equal(n, SPOOL);
		assert_int_equal(cache_invalidate(c, "W"), 0);
		assert_int_equal(cache_spool_clear(c, "S"), 0);
	}
	stop = 1;
	for (int i = 0; i < READERS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(args[i].bad, 0);
		assert_true(args[i].reads >= 50);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
		T(test_dir_created_0700),
		T(test_open_not_a_dir),
		T(test_read_every_offset),
		T(test_begin_same_version_keeps_pages),
		T(test_new_version_drops_old),
		T(test_append_errors),
		T(test_append_page_twice_refused),
		T(test_complete_and_totals),
		T(test_validated_and_invalidate),
		T(test_schema_roundtrip),
		T(test_spool_dedupe),
		T(test_spool_10k_batches),
		T(test_eviction_lru),
		T(test_epoch_compare_and_set),
		T(test_two_processes),
		T(test_kill9_mid_writes),
		T(test_reopen_persistence),
		T(test_threads),
		T(test_corrupt_env_started_afresh),
		T(test_truncated_env_started_afresh),
		T(test_damaged_page_is_a_miss),
		T(test_damaged_meta_is_a_miss),
		T(test_errno_mapping),
		T(test_map_reads_bounded),
		T(test_map_deletes_bounded),
		T(test_map_spool_bounded),
		T(test_map_drop_races_readers),
		T(test_full_fs_holds_in_memory),
		T(test_full_fs_memory_capped),
		T(test_full_fs_at_open),
		T(test_derived_size),
#undef T
	};

	/* expected failures log errors: quiet unless asked */
	log_init("test_cache", getenv("TEST_CACHE_VERBOSE") ? LOG_DEBUG :
							       LOG_CRIT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
