/*
 * cache: the LMDB store. Key layout, eviction and concurrency are described
 * in docs/cache.md; the contract is cache.h.
 */
#include "cache.h"
#include "cache_i.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* 2: page values carry a checksum (PAGE_SUM_SIZE bytes, then the data) */
#define CACHE_FORMAT 2u
#define PAGE_SUM_SIZE 8
#define CACHE_MAX_DBS 8
/* More pages than a version can have (ten million rows of 1-row pages):
 * a server that keeps sending new cursors. */
#define CACHE_PAGES_MAX (UINT64_C(10) << 20)
#define CACHE_MAX_READERS 1022	/* FUSE workers × mounts, NOTLS */
#define TOUCH_SLOTS 64
#define SPOOL_CLEAR_CHUNK 10000
#define GIB (UINT64_C(1) << 30)
/* Rows held in memory when the disk cannot take them (cache_i.h): at most
 * this, or max_bytes when smaller. */
#define MEM_HELD_MAX (UINT64_C(256) << 20)
/* A commit that fails with EIO while the file system has less free than
 * this was a short write to a full disk (LMDB reports those as EIO). */
#define DISK_FULL_MARGIN (UINT64_C(16) << 20)

/*
 * Forgetting the map (docs/cache.md, "Memory: forgetting the map"). The
 * whole map is dropped once the transactions of this process have taken
 * MAP_DROP_FAULTS page faults since the last whole drop: about 8 MiB
 * mapped with the kernel's default 64 KiB fault-around. Loops over many
 * records count their faults every MAP_CHECK_EVERY records. Besides, the
 * pages of adjacent values of MAP_DROP_MIN bytes or more that one call
 * copied or deleted are dropped in runs of MAP_RUN_MAX bytes; deletes
 * also drop the rest of the run at the end, reads leave it to the next
 * whole drop.
 */
#define MAP_DROP_FAULTS 128
#define MAP_CHECK_EVERY 16
#define MAP_RUN_MAX (4 * 1024 * 1024)
#define MAP_DROP_MIN (64 * 1024)

/* Byte sizes of the key parts: u16 table length, table, u64 gen, u64 end. */
#define PREFIX_MAX (2 + CACHE_TABLE_MAX)
#define PAGE_KEY_MAX (PREFIX_MAX + 16)
#define KEY_BUF 512		/* LMDB's default MDB_MAXKEYSIZE is 511 */

struct touch_slot {
	int64_t at;
	size_t len;
	char table[CACHE_TABLE_MAX];
};

struct cache {
	MDB_env *env;
	char *dir;
	struct cache_mem *mem;	/* versions the disk could not take */
	MDB_dbi info;		/* "format", "next_gen", "bytes", spool counts */
	MDB_dbi meta;		/* table → meta record */
	MDB_dbi pages;		/* (table, gen, end offset) → checksum, bytes */
	MDB_dbi schema;		/* table → version length, version, json */
	MDB_dbi spool;		/* (table, primary key) → row */
	MDB_dbi cursors;	/* (table, gen, cursor checksum) → "" */
	uint64_t max_bytes;
	size_t max_key;
	uint64_t evictions;	/* __atomic */
	/* Held shared by every transaction, exclusive while the map is
	 * resized: mdb_env_set_mapsize needs no live txn in the process. */
	pthread_rwlock_t resize;
	/* This process's map of data.mdb, [map_lo, map_hi); both 0 when it
	 * is not known (nothing is dropped then). Written at open and under
	 * `resize` held exclusively (the map moves when it is resized); read
	 * only with `resize` held. */
	uintptr_t map_lo;
	uintptr_t map_hi;
	uintptr_t os_page;	/* the OS page size, a power of two */
	uint64_t map_faults;	/* __atomic: faults since the last drop */
	pthread_mutex_t touch_lock;
	struct touch_slot touch[TOUCH_SLOTS];
};

/* One public call: what it does and to which table, for log lines. */
struct op {
	struct cache *c;
	const char *what;
	const char *table;
	size_t tlen;
	uint64_t evicted;	/* tables evicted by the running txn */
	bool quiet_full;	/* the caller handles a full cache itself */
};

/* The on-disk meta record: this header, then version and cursor bytes
 * (no NULs). Native byte order: the cache never leaves the machine. */
struct meta_hdr {
	uint64_t gen;
	uint64_t bytes;
	uint64_t rows;
	uint64_t pages;
	int64_t validated_at;
	int64_t used_at;
	uint32_t magic;
	uint32_t flags;
	uint16_t version_len;
	uint16_t cursor_len;
	uint32_t began_at;	/* unix seconds; 0 in records written before
				   it was kept */
};

#define META_MAGIC 0x64746d31u	/* "dtm1" */
#define META_COMPLETE 1u
#define META_BUF (sizeof(struct meta_hdr) + CACHE_VERSION_MAX + CACHE_CURSOR_MAX)

static const char info_format[] = "format";
static const char info_next_gen[] = "next_gen";
static const char info_bytes[] = "bytes";
static const char info_epoch[] = "epoch:";	/* + table: its counter */
/* + u16 length, table, gen, form: a derived size (cache_put_derived_size) */
static const char info_dsize[] = "dsize:";

int cache_errno(int mdb_rc)
{
	switch (mdb_rc) {
	case 0:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_MAP_FULL:
	case ENOSPC:
		return -ENOSPC;
	case EACCES:
		return -EACCES;
	case ENOMEM:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

/* Log an LMDB (or errno) failure of op and map it. A full map is logged
 * by the caller only if eviction and the retry do not help. */
static int op_fail(const struct op *op, int rc)
{
	if (rc != MDB_MAP_FULL)
		log_err("cache: %s of '%s' failed: %s", op->what, op->table,
			mdb_strerror(rc));
	return cache_errno(rc);
}

static int op_fail_msg(const struct op *op, int err, const char *why)
{
	log_err("cache: %s of '%s' failed: %s", op->what, op->table, why);
	return err;
}

static int op_init(struct op *op, struct cache *c, const char *what,
		   const char *table)
{
	op->c = c;
	op->what = what;
	op->table = table ? table : "(null)";
	op->tlen = table ? strlen(table) : 0;
	op->evicted = 0;
	op->quiet_full = false;
	if (!c)
		return op_fail_msg(op, -EINVAL, "no cache");
	if (op->tlen == 0)
		return op_fail_msg(op, -EINVAL, "no table name");
	if (op->tlen > CACHE_TABLE_MAX)
		return op_fail_msg(op, -ENAMETOOLONG, "table name too long");
	return 0;
}

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

/* ---- keys ------------------------------------------------------------- */

static void put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

static uint64_t get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

/* u16 big-endian length then the table bytes: no table's prefix is a
 * prefix of another table's. Returns the length written. */
static size_t key_prefix(uint8_t *buf, const struct op *op)
{
	buf[0] = (uint8_t)(op->tlen >> 8);
	buf[1] = (uint8_t)op->tlen;
	memcpy(buf + 2, op->table, op->tlen);
	return 2 + op->tlen;
}

static size_t key_page(uint8_t *buf, const struct op *op, uint64_t gen,
		       uint64_t end)
{
	size_t n = key_prefix(buf, op);

	put_be64(buf + n, gen);
	put_be64(buf + n + 8, end);
	return n + 16;
}

static bool has_prefix(const MDB_val *key, const uint8_t *prefix, size_t n)
{
	return key->mv_size >= n && memcmp(key->mv_data, prefix, n) == 0;
}

static MDB_val val(const void *data, size_t size)
{
	MDB_val v = { .mv_size = size, .mv_data = (void *)data };

	return v;
}

/* ---- page checksums --------------------------------------------------- */

#define SUM_P1 UINT64_C(0x9E3779B185EBCA87)
#define SUM_P2 UINT64_C(0xC2B2AE3D27D4EB4F)
#define SUM_P3 UINT64_C(0x165667B19E3779F9)
#define SUM_P4 UINT64_C(0x85EBCA77C2B2AE63)
#define SUM_P5 UINT64_C(0x27D4EB2F165667C5)

static uint64_t rotl64(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

static uint64_t sum_round(uint64_t acc, uint64_t in)
{
	return rotl64(acc + in * SUM_P2, 31) * SUM_P1;
}

/*
 * The checksum of a page record (XXH64's structure: four lanes of 8-byte
 * words, a few GB/s, so verifying every page a read touches costs little
 * next to the copy). Seeded with the page's generation and end offset, so
 * a value moved under another key does not verify either.
 */
static uint64_t page_sum(uint64_t gen, uint64_t end, const uint8_t *p,
			 size_t len)
{
	uint64_t seed = gen * SUM_P3 ^ end, h;
	const uint8_t *e = p + len;

	if (len >= 32) {
		uint64_t v1 = seed + SUM_P1 + SUM_P2, v2 = seed + SUM_P2;
		uint64_t v3 = seed, v4 = seed - SUM_P1;

		for (; e - p >= 32; p += 32) {
			v1 = sum_round(v1, load64(p));
			v2 = sum_round(v2, load64(p + 8));
			v3 = sum_round(v3, load64(p + 16));
			v4 = sum_round(v4, load64(p + 24));
		}
		h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) +
		    rotl64(v4, 18);
		h = (h ^ sum_round(0, v1)) * SUM_P1 + SUM_P4;
		h = (h ^ sum_round(0, v2)) * SUM_P1 + SUM_P4;
		h = (h ^ sum_round(0, v3)) * SUM_P1 + SUM_P4;
		h = (h ^ sum_round(0, v4)) * SUM_P1 + SUM_P4;
	} else {
		h = seed + SUM_P5;
	}
	h += (uint64_t)len;
	for (; e - p >= 8; p += 8)
		h = rotl64(h ^ sum_round(0, load64(p)), 27) * SUM_P1 + SUM_P4;
	for (; p < e; p++)
		h = rotl64(h ^ (*p * SUM_P5), 11) * SUM_P1;
	h ^= h >> 33;
	h *= SUM_P2;
	h ^= h >> 29;
	h *= SUM_P3;
	h ^= h >> 32;
	return h;
}

/* ---- forgetting the map ----------------------------------------------- */

/*
 * LMDB reads through a shared, read-only map of data.mdb, and each page of
 * it this process touches stays in its RSS (RssFile, VmHWM) until the
 * mapping of that page is dropped. madvise(MADV_DONTNEED) on such a mapping
 * removes only this process's page-table entries: the page stays in the
 * page cache and the next access maps the same bytes again. That is why a
 * drop is safe at any moment, even while another thread copies from the
 * same page inside its transaction (docs/cache.md gives the reasoning).
 */

/* The calling thread's page faults when they were last counted. */
static __thread uint64_t map_mark;

/* The calling thread's page faults so far, minor and major. */
static uint64_t thread_faults(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru))
		return map_mark + 1;	/* cannot count: one per check */
	return (uint64_t)ru.ru_minflt + (uint64_t)ru.ru_majflt;
}

static void map_drop(uintptr_t lo, uintptr_t hi)
{
	/* EINVAL/ENOMEM cannot happen for a range of a mapping we hold, and
	 * a failed drop only leaves the pages mapped */
	if (lo < hi && madvise((void *)lo, hi - lo, MADV_DONTNEED))
		log_debug("cache: dropping %zu bytes of the map failed: %s",
			  (size_t)(hi - lo), strerror(errno));
}

/*
 * Drop the whole pages inside [data, data + size), bytes of values this
 * transaction copied or deleted, when they are MAP_DROP_MIN or more:
 * rounded inwards, never beyond those bytes, and only when they lie in the
 * map. (A value of a write transaction may sit on a dirty page on the
 * heap: MADV_DONTNEED would zero it.) Call with `resize` held.
 */
static void map_drop_val(const struct cache *c, const void *data,
			 size_t size)
{
	uintptr_t lo = (uintptr_t)data, hi = lo + size;

	if (size < MAP_DROP_MIN || hi < lo || lo < c->map_lo ||
	    hi > c->map_hi)
		return;
	lo = (lo + c->os_page - 1) & ~(c->os_page - 1);
	hi &= ~(c->os_page - 1);
	map_drop(lo, hi);
}

/*
 * Bytes of the map a transaction has copied or deleted, as one run of
 * adjacent pages [lo, hi): every page between its ends holds some of
 * those bytes. Consecutive records are mostly adjacent in data.mdb (pages
 * are appended in order), so one madvise covers many records. Each call
 * flushes TLBs: one per FUSE read made warm reads 7-8% slower.
 */
struct map_run {
	uintptr_t lo;
	uintptr_t hi;
};

/* Drop the whole pages inside the run (map_drop_val) and empty it. */
static void map_run_drop(const struct cache *c, struct map_run *r)
{
	if (r->hi > r->lo)
		map_drop_val(c, (const void *)r->lo, r->hi - r->lo);
	r->lo = 0;
	r->hi = 0;
}

/*
 * Add [data, data + size) to the run when it starts on the run's last page
 * or the next one. Otherwise start a new run; the old one is dropped when
 * `drop_short`, else left to the next whole drop. A run that reaches
 * MAP_RUN_MAX bytes is dropped.
 */
static void map_run_add(const struct cache *c, struct map_run *r,
			const void *data, size_t size, bool drop_short)
{
	uintptr_t lo = (uintptr_t)data, mask = ~(c->os_page - 1);

	if (r->hi > r->lo && lo >= r->hi &&
	    (lo & mask) <= ((r->hi - 1) & mask) + c->os_page) {
		r->hi = lo + size;
	} else {
		if (drop_short)
			map_run_drop(c, r);
		r->lo = lo;
		r->hi = lo + size;
	}
	if (r->hi - r->lo >= MAP_RUN_MAX)
		map_run_drop(c, r);
}

/* Start counting the faults of this thread's transaction. */
static void map_mark_faults(void)
{
	map_mark = thread_faults();
}

/*
 * Add the faults this thread took since the last count to the process's;
 * once they reach MAP_DROP_FAULTS, drop the whole map. The faults of a
 * transaction are nearly all pages of the map (and fault-around maps up to
 * 16 pages per fault); heap faults only make drops a little more frequent.
 * Call with `resize` held: the map does not move meanwhile.
 */
static void map_check(struct cache *c)
{
	uint64_t now = thread_faults();
	uint64_t n = now > map_mark ? now - map_mark : 0;

	map_mark = now;
	if (n == 0 || c->map_hi == 0)
		return;
	if (__atomic_add_fetch(&c->map_faults, n, __ATOMIC_RELAXED) <
	    MAP_DROP_FAULTS)
		return;
	/* of the threads over the budget, the one that resets it drops */
	if (__atomic_exchange_n(&c->map_faults, 0, __ATOMIC_RELAXED) <
	    MAP_DROP_FAULTS)
		return;
	map_drop(c->map_lo, c->map_hi);
}

/*
 * Find this process's map of data.mdb in /proc/self/maps: the mapping that
 * holds `inside`, a pointer LMDB returned from the map. It must be shared
 * and read-only, start at file offset 0 and be as long as the map; anything
 * else leaves the map unknown. (A pointer names the map without trusting
 * the device and inode numbers there to match fstat(), which stacked file
 * systems do not promise.)
 */
static void map_find(struct cache *c, uintptr_t inside, size_t mapsize)
{
	uintptr_t size = ((uintptr_t)mapsize + c->os_page - 1) &
			 ~(c->os_page - 1);
	FILE *f = fopen("/proc/self/maps", "re");
	char *line = NULL;
	size_t cap = 0;

	if (!f)
		return;
	while (getline(&line, &cap, f) > 0) {
		unsigned long long lo, hi, off;
		char perms[8];

		if (sscanf(line, "%llx-%llx %7s %llx", &lo, &hi, perms,
			   &off) != 4 ||
		    inside < lo || inside >= hi)
			continue;
		if (strcmp(perms, "r--s") == 0 && off == 0 &&
		    hi - lo == size) {
			c->map_lo = (uintptr_t)lo;
			c->map_hi = (uintptr_t)hi;
		}
		break;
	}
	free(line);
	fclose(f);
}

/*
 * Learn where the map is: at open and after each resize, never per
 * transaction. Call with no transaction of this process live (at open, or
 * with `resize` held exclusively).
 */
static void map_locate(struct cache *c)
{
	MDB_envinfo info;
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_dbi main_dbi;
	MDB_val k, v;
	uintptr_t inside = 0;
	unsigned flags;

	c->map_lo = 0;
	c->map_hi = 0;
	__atomic_store_n(&c->map_faults, 0, __ATOMIC_RELAXED);
	/* A writable map (MDB_WRITEMAP, never set here) would hold the
	 * writer's pages: it is left alone. */
	if (mdb_env_get_flags(c->env, &flags) || (flags & MDB_WRITEMAP) ||
	    mdb_env_info(c->env, &info))
		goto out;
	if (mdb_txn_begin(c->env, NULL, MDB_RDONLY, &txn))
		goto out;
	/* the first key of the main DB (a DB name) is on a page of the map */
	if (mdb_dbi_open(txn, NULL, 0, &main_dbi) == 0 &&
	    mdb_cursor_open(txn, main_dbi, &cur) == 0) {
		if (mdb_cursor_get(cur, &k, &v, MDB_FIRST) == 0)
			inside = (uintptr_t)k.mv_data;
		mdb_cursor_close(cur);
	}
	mdb_txn_abort(txn);
	if (inside)
		map_find(c, inside, info.me_mapsize);
out:
	if (c->map_hi == 0)
		log_debug("cache: the map of data.mdb was not found: pages "
			  "read stay mapped");
}

/* ---- transactions ----------------------------------------------------- */

static void rwlock_rd(pthread_rwlock_t *l)
{
	int rc = pthread_rwlock_rdlock(l);

	(void)rc;	/* cannot fail: no recursion, bounded readers */
}

static int txn_begin(struct cache *c, unsigned flags, MDB_txn **txn)
{
	int rc;

	map_mark_faults();
	rwlock_rd(&c->resize);
	rc = mdb_txn_begin(c->env, NULL, flags, txn);
	if (rc != MDB_MAP_RESIZED)
		goto out;
	/* Another process grew the map past ours: adopt its size. The map
	 * moves, so find it again. */
	pthread_rwlock_unlock(&c->resize);
	pthread_rwlock_wrlock(&c->resize);
	rc = mdb_env_set_mapsize(c->env, 0);
	if (rc == 0) {
		map_locate(c);
	} else {
		c->map_lo = 0;
		c->map_hi = 0;
	}
	pthread_rwlock_unlock(&c->resize);
	if (rc)
		return rc;
	rwlock_rd(&c->resize);
	rc = mdb_txn_begin(c->env, NULL, flags, txn);
out:
	if (rc) {
		*txn = NULL;
		pthread_rwlock_unlock(&c->resize);
	}
	return rc;
}

static int txn_commit(struct cache *c, MDB_txn *txn)
{
	int rc = mdb_txn_commit(txn);

	map_check(c);
	pthread_rwlock_unlock(&c->resize);
	return rc;
}

static void txn_abort(struct cache *c, MDB_txn *txn)
{
	if (!txn)
		return;
	mdb_txn_abort(txn);
	map_check(c);
	pthread_rwlock_unlock(&c->resize);
}

/* ---- records ---------------------------------------------------------- */

static int info_get(MDB_txn *txn, struct cache *c, const void *key,
		    size_t klen, uint64_t *out)
{
	MDB_val k = val(key, klen), v;
	int rc;

	*out = 0;
	rc = mdb_get(txn, c->info, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return rc;
	if (v.mv_size != sizeof(*out))
		return MDB_CORRUPTED;
	memcpy(out, v.mv_data, sizeof(*out));
	return 0;
}

static int info_put(MDB_txn *txn, struct cache *c, const void *key,
		    size_t klen, uint64_t value)
{
	MDB_val k = val(key, klen), v = val(&value, sizeof(value));

	return mdb_put(txn, c->info, &k, &v, 0);
}

static int meta_decode(const MDB_val *v, struct cache_meta *m)
{
	struct meta_hdr h;
	const char *p;

	if (v->mv_size < sizeof(h))
		return MDB_CORRUPTED;
	memcpy(&h, v->mv_data, sizeof(h));
	if (h.magic != META_MAGIC || h.version_len >= CACHE_VERSION_MAX ||
	    h.cursor_len >= CACHE_CURSOR_MAX ||
	    v->mv_size != sizeof(h) + h.version_len + h.cursor_len)
		return MDB_CORRUPTED;
	memset(m, 0, sizeof(*m));
	m->gen = h.gen;
	m->bytes = h.bytes;
	m->rows = h.rows;
	m->pages = h.pages;
	m->validated_at = h.validated_at;
	m->used_at = h.used_at;
	m->began_at = h.began_at;
	m->complete = h.flags & META_COMPLETE;
	p = (const char *)v->mv_data + sizeof(h);
	memcpy(m->version, p, h.version_len);
	memcpy(m->cursor, p + h.version_len, h.cursor_len);
	return 0;
}

static int meta_load(MDB_txn *txn, const struct op *op, struct cache_meta *m)
{
	MDB_val k = val(op->table, op->tlen), v;
	int rc = mdb_get(txn, op->c->meta, &k, &v);

	if (rc)
		return rc;
	return meta_decode(&v, m);
}

static int meta_store(MDB_txn *txn, const struct op *op,
		      const struct cache_meta *m)
{
	uint8_t buf[META_BUF];
	struct meta_hdr h;
	size_t vl = strnlen(m->version, CACHE_VERSION_MAX - 1);
	size_t cl = strnlen(m->cursor, CACHE_CURSOR_MAX - 1);
	MDB_val k = val(op->table, op->tlen), v;

	memset(&h, 0, sizeof(h));
	h.gen = m->gen;
	h.bytes = m->bytes;
	h.rows = m->rows;
	h.pages = m->pages;
	h.validated_at = m->validated_at;
	h.used_at = m->used_at;
	h.began_at = m->began_at > 0 && m->began_at <= UINT32_MAX ?
		     (uint32_t)m->began_at : 0;
	h.magic = META_MAGIC;
	h.flags = m->complete ? META_COMPLETE : 0;
	h.version_len = (uint16_t)vl;
	h.cursor_len = (uint16_t)cl;
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), m->version, vl);
	memcpy(buf + sizeof(h) + vl, m->cursor, cl);
	v = val(buf, sizeof(h) + vl + cl);
	return mdb_put(txn, op->c->meta, &k, &v, 0);
}

/* The table's invalidation counter (0: never bumped), in txn. */
static int epoch_get(MDB_txn *txn, const struct op *op, uint64_t *out)
{
	uint8_t key[sizeof(info_epoch) - 1 + CACHE_TABLE_MAX];

	memcpy(key, info_epoch, sizeof(info_epoch) - 1);
	memcpy(key + sizeof(info_epoch) - 1, op->table, op->tlen);
	return info_get(txn, op->c, key, sizeof(info_epoch) - 1 + op->tlen,
			out);
}

/* Whether a result obtained under `epoch` may be stored as fresh. */
static int epoch_holds(MDB_txn *txn, const struct op *op, uint64_t epoch,
		       bool *holds)
{
	uint64_t cur;
	int rc;

	*holds = true;
	if (epoch == CACHE_EPOCH_ANY)
		return 0;
	rc = epoch_get(txn, op, &cur);
	if (rc)
		return rc;
	*holds = cur == epoch;
	return 0;
}

/* Delete every key of dbi starting with prefix, at most max of them (0: no
 * limit). *deleted counts them. Deleting a large value reads its first
 * page (with fault-around, 64 KiB): the mappings are dropped as it goes. */
static int delete_prefix(MDB_txn *txn, struct cache *c, MDB_dbi dbi,
			 const uint8_t *prefix, size_t n, size_t max,
			 size_t *deleted)
{
	MDB_cursor *cur = NULL;
	MDB_val k = val(prefix, n), v;
	struct map_run run = { 0, 0 };
	int rc;

	*deleted = 0;
	rc = mdb_cursor_open(txn, dbi, &cur);
	if (rc)
		return rc;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0 && has_prefix(&k, prefix, n) &&
	       (max == 0 || *deleted < max)) {
		const void *data = v.mv_data;
		size_t size = v.mv_size;

		rc = mdb_cursor_del(cur, 0);
		if (rc)
			break;
		(*deleted)++;
		if (size >= MAP_DROP_MIN)
			map_run_add(c, &run, data, size, true);
		if (*deleted % MAP_CHECK_EVERY == 0)
			map_check(c);
		/* After a delete the cursor already sits on the next key;
		 * LMDB's MDB_NEXT knows not to skip it. */
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	map_run_drop(c, &run);
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/* "dsize:" and op's table prefix, then gen and form when gen is not 0.
 * Returns the length. */
static size_t key_dsize(uint8_t *buf, const struct op *op, uint64_t gen,
			uint64_t form)
{
	size_t n = sizeof(info_dsize) - 1;

	memcpy(buf, info_dsize, n);
	n += key_prefix(buf + n, op);
	if (gen) {
		put_be64(buf + n, gen);
		put_be64(buf + n + 8, form);
		n += 16;
	}
	return n;
}

#define DSIZE_KEY_MAX (sizeof(info_dsize) - 1 + PREFIX_MAX + 16)

/* Drop the pages of a table (and what was derived from them) and subtract
 * them from the global count. */
static int drop_pages(MDB_txn *txn, const struct op *op, uint64_t bytes)
{
	uint8_t prefix[PREFIX_MAX], dkey[DSIZE_KEY_MAX];
	size_t n = key_prefix(prefix, op), deleted;
	uint64_t total;
	int rc;

	rc = delete_prefix(txn, op->c, op->c->pages, prefix, n, 0, &deleted);
	if (rc == 0)
		rc = delete_prefix(txn, op->c, op->c->cursors, prefix, n, 0,
				   &deleted);
	if (rc == 0)
		rc = delete_prefix(txn, op->c, op->c->info, dkey,
				   key_dsize(dkey, op, 0, 0), 0, &deleted);
	if (rc)
		return rc;
	rc = info_get(txn, op->c, info_bytes, sizeof(info_bytes) - 1, &total);
	if (rc)
		return rc;
	total = total > bytes ? total - bytes : 0;
	return info_put(txn, op->c, info_bytes, sizeof(info_bytes) - 1, total);
}

/* Drop meta and pages of op's table. Returns 0 also when none was cached. */
static int drop_table(MDB_txn *txn, const struct op *op)
{
	struct cache_meta m;
	MDB_val k = val(op->table, op->tlen);
	int rc;

	rc = meta_load(txn, op, &m);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc == MDB_CORRUPTED)
		m.bytes = 0;	/* still drop it: that is the repair */
	else if (rc)
		return rc;
	rc = drop_pages(txn, op, m.bytes);
	if (rc)
		return rc;
	return mdb_del(txn, op->c->meta, &k, NULL);
}

static int invalidate_fn(MDB_txn *txn, struct op *op, void *arg)
{
	int rc = drop_table(txn, op);

	(void)arg;
	return rc ? op_fail(op, rc) : 0;
}

/* Find the least recently used table with pages, other than op's. */
static int find_victim(MDB_txn *txn, const struct op *op, char *name,
		       size_t *len)
{
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	struct cache_meta m;
	int64_t best = 0, at;
	int rc;

	*len = 0;
	rc = mdb_cursor_open(txn, op->c->meta, &cur);
	if (rc)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size == 0 || k.mv_size > CACHE_TABLE_MAX)
			continue;
		if (k.mv_size == op->tlen &&
		    memcmp(k.mv_data, op->table, op->tlen) == 0)
			continue;
		if (meta_decode(&v, &m) != 0)
			at = INT64_MIN;	/* a corrupt record goes first */
		else if (m.bytes == 0)
			continue;	/* evicting it frees nothing */
		else
			at = m.used_at;
		if (*len > 0 && at >= best)
			continue;
		best = at;
		memcpy(name, k.mv_data, k.mv_size);
		*len = k.mv_size;
	}
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Evict whole tables, least recently used first, never op's table, until
 * the page bytes plus need fit in limit or nothing else can go. */
static int evict_lru(MDB_txn *txn, struct op *op, uint64_t limit,
		     uint64_t need)
{
	char name[CACHE_TABLE_MAX + 1];
	uint64_t bytes;
	size_t len;
	int rc;

	for (;;) {
		struct op victim;

		rc = info_get(txn, op->c, info_bytes, sizeof(info_bytes) - 1,
			      &bytes);
		if (rc)
			return rc;
		if (bytes <= limit && need <= limit - bytes)
			return 0;
		rc = find_victim(txn, op, name, &len);
		if (rc || len == 0)
			return rc;
		name[len] = '\0';
		victim = *op;
		victim.table = name;
		victim.tlen = len;
		rc = drop_table(txn, &victim);
		if (rc)
			return rc;
		op->evicted++;
		log_info("cache: evicted '%s' to make room for '%s'", name,
			 op->table);
	}
}

/* ---- the write runner ------------------------------------------------- */

typedef int (*write_fn)(MDB_txn *txn, struct op *op, void *arg);

/*
 * What a failed commit means. LMDB writes the pages of a commit with
 * pwrite: a full file system reports ENOSPC (or EDQUOT), or, when part of
 * a write went in, a short write that LMDB reports as EIO. Both are a full
 * cache (MDB_MAP_FULL), as a full map is.
 */
static int commit_rc(struct cache *c, int rc)
{
	struct statvfs sv;

	if (rc == ENOSPC || rc == EDQUOT)
		return MDB_MAP_FULL;
	if (rc == EIO && statvfs(c->dir, &sv) == 0 &&
	    (uint64_t)sv.f_bavail * sv.f_frsize < DISK_FULL_MARGIN)
		return MDB_MAP_FULL;
	return rc;
}

/* A full cache: evict about half the page bytes (least recently used
 * first, never op's table) in a transaction of its own, so the space is
 * free for the retry. Returns 0 when something was evicted. */
static int make_room(struct op *op)
{
	struct cache *c = op->c;
	MDB_txn *txn = NULL;
	uint64_t bytes;
	int dead = 0, rc;

	/* A reader killed mid-transaction pins old pages: free them first. */
	if (mdb_reader_check(c->env, &dead) == 0 && dead)
		log_info("cache: cleared %d stale readers", dead);
	op->evicted = 0;
	rc = txn_begin(c, 0, &txn);
	if (rc)
		return rc;
	rc = info_get(txn, c, info_bytes, sizeof(info_bytes) - 1, &bytes);
	if (rc == 0)
		rc = evict_lru(txn, op, bytes / 2, 0);
	if (rc || op->evicted == 0) {
		txn_abort(c, txn);
		return rc ? rc : MDB_MAP_FULL;
	}
	rc = commit_rc(c, txn_commit(c, txn));
	if (rc == 0)
		__atomic_add_fetch(&c->evictions, op->evicted, __ATOMIC_RELAXED);
	return rc;
}

/*
 * Run fn in one write transaction and commit it. fn returns 0 or a
 * negative errno (LMDB failures already logged through op_fail). A full
 * cache (-ENOSPC: the map or the file system) evicts and retries once;
 * when that does not help, -ENOSPC is logged unless op->quiet_full.
 */
static int run_write(struct op *op, write_fn fn, void *arg)
{
	struct cache *c = op->c;
	int rc;

	for (int attempt = 0;; attempt++) {
		MDB_txn *txn = NULL;

		op->evicted = 0;
		rc = txn_begin(c, 0, &txn);
		if (rc)
			return op_fail(op, rc);
		rc = fn(txn, op, arg);
		if (rc) {
			txn_abort(c, txn);
		} else {
			rc = commit_rc(c, txn_commit(c, txn));
			if (rc)
				rc = op_fail(op, rc);
			else if (op->evicted)
				__atomic_add_fetch(&c->evictions, op->evicted,
						   __ATOMIC_RELAXED);
		}
		if (rc != -ENOSPC)
			return rc;
		if (attempt > 0)
			break;
		rc = make_room(op);
		if (rc) {
			if (rc != MDB_MAP_FULL)
				op_fail(op, rc);
			break;
		}
	}
	if (op->quiet_full)
		return -ENOSPC;
	return op_fail_msg(op, -ENOSPC, "no room in the cache (its map or "
			   "its file system is full)");
}

/* ---- open / close ----------------------------------------------------- */

static int errno_open(int err)
{
	return err == EACCES || err == EPERM ? -EACCES :
	       err == ENOMEM ? -ENOMEM : -EIO;
}

/* mkdir -p with mode 0700, then make sure dir is ours and private. */
static int prepare_dir(const char *dir)
{
	char *path = strdup(dir);
	struct stat st;
	int rc = 0;

	if (!path)
		return -ENOMEM;
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) && errno != EEXIST) {
			rc = errno;
			log_err("cache: create directory '%s' failed: %s",
				path, strerror(rc));
			goto out;
		}
		*p = '/';
	}
	if (mkdir(path, 0700) && errno != EEXIST) {
		rc = errno;
		log_err("cache: create directory '%s' failed: %s", path,
			strerror(rc));
		goto out;
	}
	if (stat(path, &st)) {
		rc = errno;
		log_err("cache: open directory '%s' failed: %s", path,
			strerror(rc));
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		rc = ENOTDIR;
		log_err("cache: open directory '%s' failed: not a directory",
			path);
		goto out;
	}
	if (st.st_uid != geteuid()) {
		rc = EACCES;
		log_err("cache: open directory '%s' failed: owned by uid %u",
			path, (unsigned)st.st_uid);
		goto out;
	}
	if ((st.st_mode & 0777) != 0700) {
		log_warn("cache: directory '%s' had mode %03o, setting 0700",
			 path, (unsigned)(st.st_mode & 0777));
		if (chmod(path, 0700)) {
			rc = errno;
			log_err("cache: chmod '%s' failed: %s", path,
				strerror(rc));
			goto out;
		}
	}
out:
	free(path);
	return rc ? errno_open(rc) : 0;
}

static size_t map_size(uint64_t max_bytes)
{
	uint64_t size;

	if (SIZE_MAX <= UINT32_MAX)	/* 32-bit address space */
		return (size_t)GIB;
	if (max_bytes == 0)
		return (size_t)(64 * GIB);
	size = max_bytes > UINT64_C(1) << 60 ? UINT64_C(1) << 62 :
					       4 * max_bytes;
	if (size < 4 * GIB)
		size = 4 * GIB;
	/* round to 1 MiB, a multiple of any page size */
	size = (size + (UINT64_C(1) << 20) - 1) & ~((UINT64_C(1) << 20) - 1);
	return (size_t)size;
}

/*
 * LMDB maps lock.mdb shared after sizing it with ftruncate, which on a
 * full file system leaves it sparse: the first touch of its reader table
 * then kills the process with SIGBUS (seen on a full tmpfs). So its blocks
 * are allocated first; a full disk is then ENOSPC, an error. LOCK_BYTES
 * covers LMDB's table for CACHE_MAX_READERS (64 KiB); LMDB takes a bigger
 * file as room for more readers.
 */
#define LOCK_BYTES (128 * 1024)

static int lock_alloc(const char *dir)
{
	char path[4096];
	int fd, rc, n = snprintf(path, sizeof(path), "%s/lock.mdb", dir);

	if (n < 0 || (size_t)n >= sizeof(path))
		return ENAMETOOLONG;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return errno;
	rc = posix_fallocate(fd, 0, LOCK_BYTES);
	close(fd);
	/* a file system without fallocate: LMDB's own way, as before */
	return rc == EOPNOTSUPP || rc == EINVAL ? 0 : rc;
}

static int env_open(struct cache *c, const char *dir, size_t mapsize)
{
	int rc;

	rc = lock_alloc(dir);
	if (rc)
		return rc;
	rc = mdb_env_create(&c->env);
	if (rc)
		return rc;
	rc = mdb_env_set_maxdbs(c->env, CACHE_MAX_DBS);
	if (rc == 0)
		rc = mdb_env_set_maxreaders(c->env, CACHE_MAX_READERS);
	if (rc == 0)
		rc = mdb_env_set_mapsize(c->env, mapsize);
	/* Never MDB_WRITEMAP: a read-only map is what makes dropping its
	 * pages safe (map_locate checks). */
	if (rc == 0)
		rc = mdb_env_open(c->env, dir, MDB_NOSYNC | MDB_NOTLS, 0600);
	if (rc) {
		mdb_env_close(c->env);
		c->env = NULL;
	}
	return rc;
}

/* The files of an env LMDB cannot read: a cache can start afresh. */
static void wipe_env(const char *dir)
{
	static const char *const files[] = { "data.mdb", "lock.mdb" };
	char path[4096];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		int n = snprintf(path, sizeof(path), "%s/%s", dir, files[i]);

		if (n > 0 && (size_t)n < sizeof(path) && unlink(path) &&
		    errno != ENOENT)
			log_warn("cache: remove '%s' failed: %s", path,
				 strerror(errno));
	}
}

/*
 * A data.mdb shorter than the pages LMDB's meta says were written: a
 * truncated file (an OS crash without ordered writes, a full disk, a
 * damaged copy) or, harmlessly, free pages at the end that were never
 * written. LMDB maps it anyway and the first access past the end kills the
 * process with SIGBUS. Only looks at the file size and the meta (no access
 * to the map). Returns true and the sizes when it is short.
 */
static bool env_short(struct cache *c, const char *path, uint64_t *size,
		      uint64_t *want)
{
	MDB_envinfo info;
	MDB_stat st;
	struct stat fs;

	if (mdb_env_info(c->env, &info) || mdb_env_stat(c->env, &st) ||
	    stat(path, &fs))
		return false;
	*size = (uint64_t)fs.st_size;
	*want = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
	return *size < *want;
}

/* Grow data.mdb to `want` bytes of zeros (posix_fallocate never shrinks,
 * so a writer in another process growing it meanwhile loses nothing):
 * nothing in the map is past the end any more, and a lost page reads as
 * zeros, which LMDB reports as MDB_CORRUPTED or the page checksums catch. */
static int env_extend(const char *path, uint64_t want)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	int rc;

	if (fd < 0)
		return -errno;
	rc = posix_fallocate(fd, 0, (off_t)want);
	close(fd);
	return -rc;
}

/* Walk every record of every database, touching each value's first and
 * last byte: MDB_CORRUPTED (a page lost to truncation) shows up here, not
 * in the middle of a read. Returns 0 or the LMDB error. */
static int env_walk(struct cache *c)
{
	MDB_dbi dbis[] = { 0, 1, c->info, c->meta, c->pages, c->schema,
			   c->spool, c->cursors };
	MDB_txn *txn = NULL;
	int rc;

	rc = txn_begin(c, MDB_RDONLY, &txn);
	if (rc)
		return rc;
	for (size_t i = 0; rc == 0 && i < sizeof(dbis) / sizeof(dbis[0]);
	     i++) {
		MDB_cursor *cur = NULL;
		MDB_val k, v;
		volatile uint8_t sink = 0;

		rc = mdb_cursor_open(txn, dbis[i], &cur);
		if (rc)
			break;
		while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
			if (v.mv_size) {
				sink ^= ((const uint8_t *)v.mv_data)[0];
				sink ^= ((const uint8_t *)
					 v.mv_data)[v.mv_size - 1];
			}
		}
		(void)sink;
		mdb_cursor_close(cur);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	txn_abort(c, txn);
	return rc;
}

static int open_dbis(struct cache *c)
{
	static const char *const names[] = { "info", "meta", "pages",
					     "schema", "spool", "cursors" };
	MDB_dbi *dbis[] = { &c->info, &c->meta, &c->pages, &c->schema,
			    &c->spool, &c->cursors };
	MDB_txn *txn = NULL;
	uint64_t format;
	int rc;

	rc = txn_begin(c, 0, &txn);
	if (rc)
		return rc;
	for (size_t i = 0; i < sizeof(dbis) / sizeof(dbis[0]); i++) {
		rc = mdb_dbi_open(txn, names[i], MDB_CREATE, dbis[i]);
		if (rc)
			goto out;
	}
	rc = info_get(txn, c, info_format, sizeof(info_format) - 1, &format);
	if (rc)
		goto out;
	if (format != CACHE_FORMAT) {
		if (format != 0) {
			log_warn("cache: format %llu is not %u, emptying it",
				 (unsigned long long)format, CACHE_FORMAT);
			for (size_t i = 0; i < sizeof(dbis) / sizeof(dbis[0]);
			     i++) {
				rc = mdb_drop(txn, *dbis[i], 0);
				if (rc)
					goto out;
			}
		}
		rc = info_put(txn, c, info_format, sizeof(info_format) - 1,
			      CACHE_FORMAT);
		if (rc)
			goto out;
	}
	rc = txn_commit(c, txn);
	txn = NULL;
out:
	txn_abort(c, txn);
	return rc;
}

int cache_open(const char *dir, uint64_t max_bytes, struct cache **out)
{
	pthread_rwlockattr_t attr;
	struct cache *c = NULL;
	bool lock_init = false, mutex_init = false;
	bool shortened = false, damaged = false;
	uint64_t size = 0, want = 0;
	char path[4096];
	int dead = 0, n, rc;

	if (!out || !dir || !*dir)
		return -EINVAL;
	*out = NULL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->max_bytes = max_bytes;
	c->os_page = (uintptr_t)sysconf(_SC_PAGESIZE);
	if (c->os_page == 0 || (c->os_page & (c->os_page - 1)))
		c->os_page = 4096;	/* not a power of two: cannot be */
	pthread_rwlockattr_init(&attr);
	/* a waiting resize must not starve behind a stream of readers */
	pthread_rwlockattr_setkind_np(&attr,
		PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	rc = pthread_rwlock_init(&c->resize, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc) {
		rc = -ENOMEM;
		goto out;
	}
	lock_init = true;
	if (pthread_mutex_init(&c->touch_lock, NULL)) {
		rc = -ENOMEM;
		goto out;
	}
	mutex_init = true;

	c->dir = strdup(dir);
	if (!c->dir) {
		rc = -ENOMEM;
		goto out;
	}
	rc = cache_mem_new(max_bytes && max_bytes < MEM_HELD_MAX ? max_bytes :
			   MEM_HELD_MAX, &c->mem);
	if (rc)
		goto out;
	rc = prepare_dir(dir);
	if (rc)
		goto out;
	rc = env_open(c, dir, map_size(max_bytes));
	if (rc == MDB_INVALID || rc == MDB_CORRUPTED ||
	    rc == MDB_VERSION_MISMATCH) {
		log_warn("cache: '%s' is unreadable (%s), starting afresh", dir,
			 mdb_strerror(rc));
		wipe_env(dir);
		rc = env_open(c, dir, map_size(max_bytes));
	}
	if (rc == 0) {
		n = snprintf(path, sizeof(path), "%s/data.mdb", dir);
		if (n > 0 && (size_t)n < sizeof(path) &&
		    env_short(c, path, &size, &want)) {
			log_warn("cache: '%s' is truncated (%llu bytes, %llu "
				 "expected): checking it", path,
				 (unsigned long long)size,
				 (unsigned long long)want);
			shortened = true;
			if (env_extend(path, want))
				damaged = true;
		}
		if (damaged) {
			mdb_env_close(c->env);
			c->env = NULL;
			wipe_env(dir);
			rc = env_open(c, dir, map_size(max_bytes));
		}
	}
	if (rc) {
		log_err("cache: open '%s' failed: %s%s", dir, mdb_strerror(rc),
			rc == ENOSPC || rc == EDQUOT ?
			": free room there or choose another cache_dir=" : "");
		rc = rc == EACCES || rc == EPERM ? -EACCES :
		     rc == EDQUOT ? -ENOSPC : cache_errno(rc);
		goto out;
	}
	/* Free the reader slots of processes that died (kill -9). */
	rc = mdb_reader_check(c->env, &dead);
	if (rc) {
		log_err("cache: reader check of '%s' failed: %s", dir,
			mdb_strerror(rc));
		rc = cache_errno(rc);
		goto out;
	}
	if (dead)
		log_info("cache: cleared %d stale readers in '%s'", dead, dir);
	c->max_key = (size_t)mdb_env_get_maxkeysize(c->env);
	rc = open_dbis(c);
	if (shortened && (rc == MDB_CORRUPTED || (rc == 0 && env_walk(c)))) {
		/* pages the B-tree reaches were lost: start afresh */
		log_warn("cache: '%s' lost pages in use, starting afresh",
			 path);
		mdb_env_close(c->env);
		c->env = NULL;
		wipe_env(dir);
		rc = env_open(c, dir, map_size(max_bytes));
		if (rc == 0)
			rc = open_dbis(c);
	}
	if (rc) {
		log_err("cache: open databases of '%s' failed: %s", dir,
			mdb_strerror(rc));
		rc = cache_errno(rc);
		goto out;
	}
	/* after open_dbis: the main DB has a key to point into the map */
	map_locate(c);
	*out = c;
	return 0;
out:
	if (c->env)
		mdb_env_close(c->env);
	if (mutex_init)
		pthread_mutex_destroy(&c->touch_lock);
	if (lock_init)
		pthread_rwlock_destroy(&c->resize);
	cache_mem_free(c->mem);
	free(c->dir);
	free(c);
	return rc;
}

void cache_close(struct cache *cache)
{
	int rc;

	if (!cache)
		return;
	/* MDB_NOSYNC: flush once here so a clean stop is durable. */
	rc = mdb_env_sync(cache->env, 1);
	if (rc)
		log_warn("cache: sync failed: %s", mdb_strerror(rc));
	mdb_env_close(cache->env);
	pthread_mutex_destroy(&cache->touch_lock);
	pthread_rwlock_destroy(&cache->resize);
	cache_mem_free(cache->mem);
	free(cache->dir);
	free(cache);
}

/* ---- rows held in memory (cache_i.h) ----------------------------------- */

static int read_pages(MDB_txn *txn, const struct op *op, uint64_t gen,
		      uint64_t offset, uint8_t *buf, size_t want,
		      size_t *copied);

static bool held(const struct op *op)
{
	return cache_mem_holds(op->c->mem, op->table, op->tlen);
}

/* The table's epoch, in a read transaction of its own. Returns 0 or the
 * LMDB error. */
static int epoch_read(const struct op *op, uint64_t *out)
{
	MDB_txn *txn = NULL;
	int rc;

	rc = txn_begin(op->c, MDB_RDONLY, &txn);
	if (rc)
		return rc;
	rc = epoch_get(txn, op, out);
	txn_abort(op->c, txn);
	return rc;
}

/* The table's epoch now; UINT64_MAX when it cannot be read (what memory
 * holds then reads as unproved). */
static uint64_t epoch_now(const struct op *op)
{
	uint64_t epoch;

	return epoch_read(op, &epoch) ? UINT64_MAX : epoch;
}

/* Memory holds op's table now: forget it on disk, which frees room for
 * other tables and keeps an older version there from being served once
 * memory lets the table go. */
static void drop_disk(const struct op *op)
{
	struct op d = *op;

	d.what = "drop rows moved to memory";
	d.quiet_full = true;
	if (run_write(&d, invalidate_fn, NULL))
		log_warn("cache: older rows of '%s' stay on disk", op->table);
}

/*
 * The disk cannot take more of op's table: move its generation gen, as
 * cached so far, into memory, where the version goes on. Returns 0,
 * -ESTALE (gen is no longer the table's, or its pages were damaged and
 * are dropped), -ENOSPC (too big for memory) or another error.
 */
static int spill(struct op *op, uint64_t gen)
{
	struct cache *c = op->c;
	struct cache_meta m;
	MDB_txn *txn = NULL;
	uint8_t *buf = NULL;
	uint64_t epoch = 0;
	size_t copied = 0;
	int rc;

	rc = txn_begin(c, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(op, rc);
	rc = meta_load(txn, op, &m);
	if (rc == MDB_NOTFOUND || (rc == 0 && m.gen != gen)) {
		rc = -ESTALE;
		goto out;
	}
	if (rc == 0)
		rc = epoch_get(txn, op, &epoch);
	if (rc == 0 && m.bytes >= SIZE_MAX)
		rc = ENOMEM;
	if (rc == 0) {
		buf = malloc(m.bytes ? (size_t)m.bytes : 1);
		rc = buf ? read_pages(txn, op, gen, 0, buf, (size_t)m.bytes,
				      &copied) : ENOMEM;
		if (rc == 0 && copied < m.bytes)
			rc = MDB_CORRUPTED;
	}
	txn_abort(c, txn);
	txn = NULL;
	if (rc == MDB_CORRUPTED) {
		log_warn("cache: the cached rows of '%s' are damaged: "
			 "dropping them", op->table);
		drop_disk(op);
		rc = -ESTALE;
		goto out;
	}
	if (rc) {
		rc = op_fail(op, rc);
		goto out;
	}
	m.used_at = now_s();
	/* the buffer becomes the held bytes: no second copy */
	rc = cache_mem_hold(c->mem, op->table, op->tlen, &m, epoch,
			    (char *)buf);
	buf = NULL;
	if (rc) {
		rc = op_fail_msg(op, rc, "no room on disk nor in memory");
		goto out;
	}
	log_warn("cache: no room on disk for the rows of '%s': holding them "
		 "in memory (%llu bytes so far)", op->table,
		 (unsigned long long)m.bytes);
	drop_disk(op);
out:
	txn_abort(c, txn);
	free(buf);
	return rc;
}

/* ---- meta ------------------------------------------------------------- */

int cache_get_meta(struct cache *cache, const char *table,
		   struct cache_meta *out)
{
	struct op op;
	MDB_txn *txn = NULL;
	int rc;

	rc = op_init(&op, cache, "get meta", table);
	if (rc)
		return rc;
	if (!out)
		return op_fail_msg(&op, -EINVAL, "no output");
	if (held(&op) && cache_mem_get_meta(cache->mem, op.table, op.tlen,
					    epoch_now(&op), out) == 0)
		return 0;
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	rc = meta_load(txn, &op, out);
	txn_abort(cache, txn);
	if (rc == MDB_CORRUPTED) {
		log_warn("cache: the meta record of '%s' is damaged: "
			 "dropping the cached rows", table);
		op.what = "drop damaged meta";
		rc = run_write(&op, invalidate_fn, NULL);
		return rc ? rc : -ENOENT;
	}
	/* moved into memory meanwhile (spill holds it before the drop) */
	if (rc == MDB_NOTFOUND &&
	    (!held(&op) || cache_mem_get_meta(cache->mem, op.table, op.tlen,
					      epoch_now(&op), out)))
		return -ENOENT;
	return rc && rc != MDB_NOTFOUND ? op_fail(&op, rc) : 0;
}

struct begin_arg {
	const char *version;
	size_t vlen;
	uint64_t epoch;
	struct cache_meta *out;
};

static int begin_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct begin_arg *a = arg;
	struct cache_meta *m = a->out;
	uint64_t gen;
	bool fresh;
	int rc;

	rc = epoch_holds(txn, op, a->epoch, &fresh);
	if (rc)
		return op_fail(op, rc);
	rc = meta_load(txn, op, m);
	if (rc == 0 && strcmp(m->version, a->version) == 0)
		return 0;	/* another process started it first */
	if (rc == 0)
		rc = drop_pages(txn, op, m->bytes);
	else if (rc == MDB_NOTFOUND || rc == MDB_CORRUPTED)
		rc = drop_pages(txn, op, 0);
	if (rc)
		return op_fail(op, rc);
	rc = info_get(txn, op->c, info_next_gen, sizeof(info_next_gen) - 1,
		      &gen);
	if (rc)
		return op_fail(op, rc);
	if (gen == 0)
		gen = 1;
	rc = info_put(txn, op->c, info_next_gen, sizeof(info_next_gen) - 1,
		      gen + 1);
	if (rc)
		return op_fail(op, rc);
	memset(m, 0, sizeof(*m));
	m->gen = gen;
	memcpy(m->version, a->version, a->vlen);
	m->used_at = now_s();
	m->began_at = m->used_at;
	/* started before an invalidation: cached, but not proved current */
	m->validated_at = fresh ? m->used_at : 0;
	rc = meta_store(txn, op, m);
	return rc ? op_fail(op, rc) : 0;
}

/* begin_fn in memory: the disk cannot take a new version of op's table. */
static int begin_held(struct op *op, const struct begin_arg *a,
		      struct cache_meta *m)
{
	uint64_t cur = epoch_now(op);
	int rc;

	memset(m, 0, sizeof(*m));
	m->gen = cache_mem_next_gen(op->c->mem);
	memcpy(m->version, a->version, a->vlen);
	m->used_at = now_s();
	m->began_at = m->used_at;
	if (a->epoch == CACHE_EPOCH_ANY || a->epoch == cur)
		m->validated_at = m->used_at;
	rc = cache_mem_hold(op->c->mem, op->table, op->tlen, m, cur, NULL);
	if (rc)
		return op_fail_msg(op, rc, "no room on disk nor in memory");
	log_warn("cache: no room on disk for a new version of '%s': holding "
		 "its rows in memory", op->table);
	drop_disk(op);
	return 0;
}

int cache_begin_version(struct cache *cache, const char *table,
			const char *version, struct cache_meta *out)
{
	return cache_begin_version_under(cache, table, version,
					 CACHE_EPOCH_ANY, out);
}

int cache_begin_version_under(struct cache *cache, const char *table,
			      const char *version, uint64_t epoch,
			      struct cache_meta *out)
{
	struct cache_meta m;
	struct begin_arg a = { .version = version ? version : "",
			       .epoch = epoch, .out = &m };
	struct op op;
	int rc;

	rc = op_init(&op, cache, "begin version", table);
	if (rc)
		return rc;
	a.vlen = strlen(a.version);
	if (a.vlen >= CACHE_VERSION_MAX)
		return op_fail_msg(&op, -ENAMETOOLONG, "version too long");
	/* held in memory: as on disk, the same version is kept */
	if (held(&op) && cache_mem_get_meta(cache->mem, op.table, op.tlen,
					    epoch_now(&op), &m) == 0 &&
	    strcmp(m.version, a.version) == 0)
		goto out;
	op.quiet_full = true;
	rc = run_write(&op, begin_fn, &a);
	if (rc == 0)
		cache_mem_drop(cache->mem, op.table, op.tlen);
	else if (rc == -ENOSPC)
		rc = begin_held(&op, &a, &m);
	if (rc)
		return rc;
out:
	if (out)
		*out = m;
	return 0;
}

struct append_arg {
	uint64_t gen;
	uint64_t page;
	uint64_t offset;
	const void *data;
	size_t len;
	size_t nrows;
	const char *next_cursor;
	size_t clen;
	struct cache_meta *out;
};

static int append_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct append_arg *a = arg;
	struct cache_meta *m = a->out;
	uint8_t key[PAGE_KEY_MAX];
	uint64_t total;
	MDB_val k, v;
	int rc;

	rc = meta_load(txn, op, m);
	if (rc == MDB_NOTFOUND)
		return -ESTALE;
	if (rc)
		return op_fail(op, rc);
	if (m->gen != a->gen)
		return -ESTALE;
	/* the one place a page's place is decided: by its number, then its
	 * offset (equal lengths make offsets alone ambiguous) */
	if (a->page < m->pages || m->complete)
		return -EEXIST;
	if (a->page > m->pages || a->offset != m->bytes) {
		log_debug("cache: page %" PRIu64 " at byte %" PRIu64 " of "
			  "'%s' refused: the frontier is page %" PRIu64
			  " at byte %" PRIu64, a->page, a->offset, op->table,
			  m->pages, m->bytes);
		return -EINVAL;
	}
	if (m->pages >= CACHE_PAGES_MAX)
		return op_fail_msg(op, -EPROTO, "more pages than any table "
				   "has: the API keeps sending cursors");
	if (a->next_cursor) {
		/* a cursor sent before for this version is a loop (A → B →
		 * A): following it would fetch and cache forever */
		uint64_t sum = page_sum(a->gen, 0, (const uint8_t *)
					a->next_cursor, a->clen);

		k = val(key, key_page(key, op, a->gen, sum));
		v = val("", 0);
		rc = mdb_put(txn, op->c->cursors, &k, &v, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST)
			return op_fail_msg(op, -EPROTO, "the API sent a "
					   "cursor it had sent before for "
					   "this version (a cursor loop)");
		if (rc)
			return op_fail(op, rc);
	}
	if (op->c->max_bytes) {
		rc = evict_lru(txn, op, op->c->max_bytes, a->len);
		if (rc)
			return op_fail(op, rc);
	}
	if (a->len > 0) {
		/* An empty page (an empty table) adds no record: its end
		 * offset would be the previous page's. */
		uint64_t sum = page_sum(a->gen, a->offset + a->len,
					a->data, a->len);

		k = val(key, key_page(key, op, a->gen, a->offset + a->len));
		v = val(NULL, PAGE_SUM_SIZE + a->len);
		rc = mdb_put(txn, op->c->pages, &k, &v,
			     MDB_NOOVERWRITE | MDB_RESERVE);
		if (rc == MDB_KEYEXIST)
			return op_fail_msg(op, -EIO, "page record exists "
					   "beyond the frontier");
		if (rc)
			return op_fail(op, rc);
		memcpy(v.mv_data, &sum, PAGE_SUM_SIZE);
		memcpy((uint8_t *)v.mv_data + PAGE_SUM_SIZE, a->data, a->len);
		rc = info_get(txn, op->c, info_bytes, sizeof(info_bytes) - 1,
			      &total);
		if (rc == 0)
			rc = info_put(txn, op->c, info_bytes,
				      sizeof(info_bytes) - 1, total + a->len);
		if (rc)
			return op_fail(op, rc);
	}
	m->bytes += a->len;
	m->rows += a->nrows;
	m->pages++;
	m->complete = a->next_cursor == NULL;
	memset(m->cursor, 0, sizeof(m->cursor));
	if (a->next_cursor)
		memcpy(m->cursor, a->next_cursor, a->clen);
	m->used_at = now_s();
	rc = meta_store(txn, op, m);
	return rc ? op_fail(op, rc) : 0;
}

int cache_append_page(struct cache *cache, const char *table, uint64_t gen,
		      uint64_t page, uint64_t offset, const void *data,
		      size_t len, size_t nrows, const char *next_cursor,
		      struct cache_meta *out)
{
	struct cache_meta m;
	struct append_arg a = {
		.gen = gen, .page = page, .offset = offset, .data = data,
		.len = len, .nrows = nrows, .next_cursor = next_cursor,
		.out = &m,
	};
	struct op op;
	int rc;

	rc = op_init(&op, cache, "append page", table);
	if (rc)
		return rc;
	if (len > 0 && !data)
		return op_fail_msg(&op, -EINVAL, "no data");
	if (offset > UINT64_MAX - len)
		return op_fail_msg(&op, -EINVAL, "offset overflows");
	if (next_cursor) {
		a.clen = strlen(next_cursor);
		if (a.clen >= CACHE_CURSOR_MAX)
			return op_fail_msg(&op, -ENAMETOOLONG,
					   "cursor too long");
	}
	if (held(&op)) {
		rc = cache_mem_append(cache->mem, op.table, op.tlen, gen, page,
				      offset, data, len, nrows, next_cursor,
				      &m);
		if (rc != -ENOENT)
			goto out;
	}
	op.quiet_full = true;
	rc = run_write(&op, append_fn, &a);
	if (rc == -ESTALE && held(&op))	/* moved into memory meanwhile */
		rc = cache_mem_append(cache->mem, op.table, op.tlen, gen, page,
				      offset, data, len, nrows, next_cursor,
				      &m);
	if (rc == -ENOSPC) {
		rc = spill(&op, gen);
		if (rc == 0)
			rc = cache_mem_append(cache->mem, op.table, op.tlen,
					      gen, page, offset, data, len,
					      nrows, next_cursor, &m);
		if (rc == -ENOENT)	/* memory let it go meanwhile */
			rc = -ESTALE;
	}
out:
	if (rc == 0 && out)
		*out = m;
	return rc;
}

/* ---- reads ------------------------------------------------------------ */

/* Whether this process should record a read of table at now: at most once
 * a second per table, so reads rarely take a write transaction. */
static bool touch_due(struct cache *c, const struct op *op, int64_t now)
{
	uint32_t h = 2166136261u;
	struct touch_slot *s;
	bool due;

	for (size_t i = 0; i < op->tlen; i++)
		h = (h ^ (uint8_t)op->table[i]) * 16777619u;
	s = &c->touch[h % TOUCH_SLOTS];
	pthread_mutex_lock(&c->touch_lock);
	due = s->len != op->tlen || memcmp(s->table, op->table, op->tlen) ||
	      s->at < now;
	if (due) {
		s->at = now;
		s->len = op->tlen;
		memcpy(s->table, op->table, op->tlen);
	}
	pthread_mutex_unlock(&c->touch_lock);
	return due;
}

struct touch_arg {
	uint64_t gen;
	int64_t now;
};

static int touch_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct touch_arg *a = arg;
	struct cache_meta m;
	int rc;

	rc = meta_load(txn, op, &m);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc)
		return op_fail(op, rc);
	if (m.gen != a->gen || m.used_at >= a->now)
		return 0;
	m.used_at = a->now;
	rc = meta_store(txn, op, &m);
	return rc ? op_fail(op, rc) : 0;
}

/* Copy [offset, offset + want) of gen's pages into buf. */
static int read_pages(MDB_txn *txn, const struct op *op, uint64_t gen,
		      uint64_t offset, uint8_t *buf, size_t want,
		      size_t *copied)
{
	uint8_t key[PAGE_KEY_MAX];
	size_t plen = key_page(key, op, gen, offset + 1) - 8;
	MDB_cursor *cur = NULL;
	MDB_val k = val(key, plen + 8), v;
	struct map_run run = { 0, 0 };
	uint64_t pos = offset;
	int rc;

	*copied = 0;
	rc = mdb_cursor_open(txn, op->c->pages, &cur);
	if (rc)
		return rc;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	     rc == 0 && *copied < want;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const uint8_t *src, *data;
		uint64_t end, start, sum;
		size_t n, len;

		if (k.mv_size != plen + 8 || !has_prefix(&k, key, plen))
			break;
		end = get_be64((const uint8_t *)k.mv_data + plen);
		if (v.mv_size < PAGE_SUM_SIZE) {
			rc = MDB_CORRUPTED;
			break;
		}
		len = v.mv_size - PAGE_SUM_SIZE;
		data = (const uint8_t *)v.mv_data + PAGE_SUM_SIZE;
		if (len > end)
			break;
		start = end - len;
		if (start > pos || end <= pos)
			break;
		/* every page a read touches is verified whole: damaged
		 * bytes are never served */
		memcpy(&sum, v.mv_data, PAGE_SUM_SIZE);
		if (sum != page_sum(gen, end, data, len)) {
			rc = MDB_CORRUPTED;
			break;
		}
		n = end - pos < want - *copied ? (size_t)(end - pos) :
						 want - *copied;
		src = data + (pos - start);
		memcpy(buf + *copied, src, n);
		/* copied out: this process need not keep it mapped */
		map_run_add(op->c, &run, src, n, false);
		*copied += n;
		pos += n;
	}
	/* The rest of the run is left to the next whole drop, which zaps
	 * the same pages in one call per ~8 MiB: a madvise (and TLB flush)
	 * per read made warm FUSE reads 7-8% slower. */
	mdb_cursor_close(cur);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

int cache_read(struct cache *cache, const char *table, uint64_t gen,
	       uint64_t offset, void *buf, size_t size, size_t *nread)
{
	struct cache_meta m = { 0 };
	struct op op;
	MDB_txn *txn = NULL;
	size_t want = 0, copied = 0;
	int64_t now;
	int rc;

	if (nread)
		*nread = 0;
	rc = op_init(&op, cache, "read", table);
	if (rc)
		return rc;
	if (!nread || (size > 0 && !buf))
		return op_fail_msg(&op, -EINVAL, "no buffer");
	if (held(&op)) {
		rc = cache_mem_read(cache->mem, op.table, op.tlen, gen, offset,
				    buf, size, nread);
		if (rc != -ENOENT)
			return rc;
	}
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	rc = meta_load(txn, &op, &m);
	if (rc == MDB_NOTFOUND || (rc == 0 && m.gen != gen)) {
		rc = -ESTALE;
		goto out;
	}
	if (rc == MDB_CORRUPTED) {
		rc = -EBADMSG;
		goto out;
	}
	if (rc) {
		rc = op_fail(&op, rc);
		goto out;
	}
	if (offset < m.bytes)
		want = m.bytes - offset < size ? (size_t)(m.bytes - offset) :
						 size;
	if (want > 0) {
		rc = read_pages(txn, &op, gen, offset, buf, want, &copied);
		if (rc == 0 && copied < want)
			rc = MDB_CORRUPTED;	/* a page is missing */
		if (rc == MDB_CORRUPTED) {
			rc = -EBADMSG;
			goto out;
		}
		if (rc) {
			rc = op_fail(&op, rc);
			goto out;
		}
	}
	*nread = copied;
out:
	txn_abort(cache, txn);
	if (rc == -ESTALE && held(&op)) {
		/* moved into memory meanwhile (spill holds it first) */
		int mrc = cache_mem_read(cache->mem, op.table, op.tlen, gen,
					 offset, buf, size, nread);

		if (mrc != -ENOENT)
			return mrc;
	}
	if (rc == -EBADMSG) {
		/* a damaged cache is a cache miss: forget the version */
		log_warn("cache: the cached rows of '%s' are damaged "
			 "(checksum, missing page or bad record): dropping "
			 "them", table);
		op.what = "drop damaged rows";
		if (run_write(&op, invalidate_fn, NULL))
			log_err("cache: cannot drop the damaged rows of '%s'",
				table);
		if (nread)
			*nread = 0;
		return -EBADMSG;
	}
	if (rc)
		return rc;
	now = now_s();
	if (m.used_at < now && touch_due(cache, &op, now)) {
		struct touch_arg a = { .gen = gen, .now = now };
		struct op top = op;

		top.what = "record use";
		top.quiet_full = true;
		/* the read succeeded; a failed LRU update is only logged */
		rc = run_write(&top, touch_fn, &a);
		if (rc && rc != -ENOSPC)
			log_warn("cache: use of '%s' not recorded", table);
	}
	return 0;
}

struct validated_arg {
	uint64_t gen;
	int64_t when;
	uint64_t epoch;
};

static int validated_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct validated_arg *a = arg;
	struct cache_meta m;
	bool fresh;
	int rc;

	rc = meta_load(txn, op, &m);
	if (rc == MDB_NOTFOUND)
		return -ESTALE;
	if (rc)
		return op_fail(op, rc);
	if (m.gen != a->gen)
		return -ESTALE;
	rc = epoch_holds(txn, op, a->epoch, &fresh);
	if (rc)
		return op_fail(op, rc);
	if (!fresh)
		return 0;	/* invalidated meanwhile: no proof */
	m.validated_at = a->when;
	rc = meta_store(txn, op, &m);
	return rc ? op_fail(op, rc) : 0;
}

int cache_set_validated(struct cache *cache, const char *table, uint64_t gen,
			int64_t when)
{
	return cache_set_validated_under(cache, table, gen, when,
					 CACHE_EPOCH_ANY);
}

int cache_set_validated_under(struct cache *cache, const char *table,
			      uint64_t gen, int64_t when, uint64_t epoch)
{
	struct validated_arg a = { .gen = gen, .when = when, .epoch = epoch };
	struct op op;
	uint64_t cur;
	int rc;

	rc = op_init(&op, cache, "set validated", table);
	if (rc)
		return rc;
	if (held(&op))
		goto held;
	op.quiet_full = true;
	rc = run_write(&op, validated_fn, &a);
	if (rc == -ESTALE && held(&op))	/* moved into memory meanwhile */
		goto held;
	if (rc != -ENOSPC)
		return rc;
	rc = spill(&op, gen);
	if (rc == -ESTALE)
		return rc;
	if (rc) {
		/* the version is served all the same; the next open asks
		 * the API again */
		log_warn("cache: the proof of '%s' is not recorded: no room",
			 table);
		return 0;
	}
held:
	cur = epoch_now(&op);
	if (epoch != CACHE_EPOCH_ANY && cur != epoch)
		return 0;	/* invalidated meanwhile: no proof */
	rc = cache_mem_set_validated(cache->mem, op.table, op.tlen, gen, when,
				     cur);
	return rc == -ENOENT ? -ESTALE : rc;
}

int cache_get_epoch(struct cache *cache, const char *table, uint64_t *out)
{
	struct op op;
	int rc;

	rc = op_init(&op, cache, "get epoch", table);
	if (rc)
		return rc;
	if (!out)
		return op_fail_msg(&op, -EINVAL, "no output");
	rc = epoch_read(&op, out);
	return rc ? op_fail(&op, rc) : 0;
}

static int bump_fn(MDB_txn *txn, struct op *op, void *arg)
{
	uint8_t key[sizeof(info_epoch) - 1 + CACHE_TABLE_MAX];
	struct cache_meta m;
	uint64_t epoch;
	int rc;

	(void)arg;
	rc = epoch_get(txn, op, &epoch);
	if (rc)
		return op_fail(op, rc);
	memcpy(key, info_epoch, sizeof(info_epoch) - 1);
	memcpy(key + sizeof(info_epoch) - 1, op->table, op->tlen);
	rc = info_put(txn, op->c, key, sizeof(info_epoch) - 1 + op->tlen,
		      epoch + 1);
	if (rc)
		return op_fail(op, rc);
	rc = meta_load(txn, op, &m);
	if (rc == MDB_NOTFOUND || rc == MDB_CORRUPTED)
		return 0;	/* nothing cached to unprove */
	if (rc)
		return op_fail(op, rc);
	m.validated_at = 0;
	rc = meta_store(txn, op, &m);
	return rc ? op_fail(op, rc) : 0;
}

int cache_bump_epoch(struct cache *cache, const char *table)
{
	struct op op;
	int rc;

	rc = op_init(&op, cache, "bump epoch", table);
	if (rc)
		return rc;
	cache_mem_unprove(cache->mem, op.table, op.tlen);
	return run_write(&op, bump_fn, NULL);
}

int cache_invalidate(struct cache *cache, const char *table)
{
	struct op op;
	int rc;

	rc = op_init(&op, cache, "invalidate", table);
	if (rc)
		return rc;
	cache_mem_drop(cache->mem, op.table, op.tlen);
	return run_write(&op, invalidate_fn, NULL);
}

/* ---- sizes derived from a generation -------------------------------- */

struct dsize_arg {
	uint64_t gen, form, size;
};

static int dsize_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct dsize_arg *a = arg;
	uint8_t key[DSIZE_KEY_MAX];
	struct cache_meta m;
	int rc;

	rc = meta_load(txn, op, &m);
	if (rc == MDB_NOTFOUND || (rc == 0 && m.gen != a->gen))
		return -ESTALE;	/* a size of nothing cached is kept nowhere */
	if (rc)
		return op_fail(op, rc);
	rc = info_put(txn, op->c, key, key_dsize(key, op, a->gen, a->form),
		      a->size);
	return rc ? op_fail(op, rc) : 0;
}

int cache_put_derived_size(struct cache *cache, const char *table,
			   uint64_t gen, uint64_t form, uint64_t size)
{
	struct dsize_arg a = { .gen = gen, .form = form, .size = size };
	struct op op;
	int rc;

	rc = op_init(&op, cache, "record derived size", table);
	if (rc)
		return rc;
	if (!gen || !size)
		return op_fail_msg(&op, -EINVAL, "no generation or size");
	op.quiet_full = true;	/* worth a retry, not an error */
	return run_write(&op, dsize_fn, &a);
}

int cache_get_derived_size(struct cache *cache, const char *table,
			   uint64_t gen, uint64_t form, uint64_t *size)
{
	uint8_t key[DSIZE_KEY_MAX];
	struct op op;
	MDB_txn *txn = NULL;
	int rc;

	rc = op_init(&op, cache, "get derived size", table);
	if (rc)
		return rc;
	if (!size)
		return op_fail_msg(&op, -EINVAL, "no output");
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	rc = info_get(txn, cache, key, key_dsize(key, &op, gen, form), size);
	txn_abort(cache, txn);
	if (rc)
		return op_fail(&op, rc);
	return *size ? 0 : -ENOENT;
}

/* ---- schema ----------------------------------------------------------- */

struct schema_arg {
	const char *version;
	size_t vlen;
	const char *json;
	size_t len;
};

static int schema_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct schema_arg *a = arg;
	MDB_val k = val(op->table, op->tlen), v;
	uint8_t *p;
	int rc;

	v.mv_size = 2 + a->vlen + a->len;
	v.mv_data = NULL;
	rc = mdb_put(txn, op->c->schema, &k, &v, MDB_RESERVE);
	if (rc)
		return op_fail(op, rc);
	p = v.mv_data;
	p[0] = (uint8_t)(a->vlen >> 8);
	p[1] = (uint8_t)a->vlen;
	memcpy(p + 2, a->version, a->vlen);
	if (a->len)
		memcpy(p + 2 + a->vlen, a->json, a->len);
	return 0;
}

int cache_put_schema(struct cache *cache, const char *table,
		     const char *version, const char *json, size_t len)
{
	struct schema_arg a = { .version = version ? version : "",
				.json = json, .len = len };
	struct op op;
	int rc;

	rc = op_init(&op, cache, "put schema", table);
	if (rc)
		return rc;
	if (len > 0 && !json)
		return op_fail_msg(&op, -EINVAL, "no schema");
	a.vlen = strlen(a.version);
	if (a.vlen >= CACHE_VERSION_MAX)
		return op_fail_msg(&op, -ENAMETOOLONG, "version too long");
	return run_write(&op, schema_fn, &a);
}

int cache_get_schema(struct cache *cache, const char *table, char **version,
		     char **json, size_t *len)
{
	struct op op;
	MDB_txn *txn = NULL;
	MDB_val k, v;
	char *ver = NULL, *js = NULL;
	const uint8_t *p;
	size_t vlen, jlen = 0;
	int rc;

	rc = op_init(&op, cache, "get schema", table);
	if (rc)
		return rc;
	if (!version || !json || !len)
		return op_fail_msg(&op, -EINVAL, "no output");
	*version = NULL;
	*json = NULL;
	*len = 0;
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	k = val(op.table, op.tlen);
	rc = mdb_get(txn, cache->schema, &k, &v);
	if (rc == MDB_NOTFOUND) {
		rc = -ENOENT;
		goto out;
	}
	if (rc == 0 && v.mv_size < 2)
		rc = MDB_CORRUPTED;
	if (rc == 0) {
		p = v.mv_data;
		vlen = (size_t)p[0] << 8 | p[1];
		if (vlen > v.mv_size - 2)
			rc = MDB_CORRUPTED;
	}
	if (rc) {
		rc = op_fail(&op, rc);
		goto out;
	}
	jlen = v.mv_size - 2 - vlen;
	ver = malloc(vlen + 1);
	js = malloc(jlen + 1);
	if (!ver || !js) {
		rc = op_fail_msg(&op, -ENOMEM, "out of memory");
		goto out;
	}
	memcpy(ver, p + 2, vlen);
	ver[vlen] = '\0';
	memcpy(js, p + 2 + vlen, jlen);
	js[jlen] = '\0';
out:
	txn_abort(cache, txn);
	if (rc) {
		free(ver);
		free(js);
		return rc;
	}
	*version = ver;
	*json = js;
	*len = jlen;
	return 0;
}

/* ---- import spool ----------------------------------------------------- */

/* The info key of a table's spool count: "s" then the key prefix. */
static size_t key_spool_count(uint8_t *buf, const struct op *op)
{
	buf[0] = 's';
	return 1 + key_prefix(buf + 1, op);
}

static int spool_count_add(MDB_txn *txn, const struct op *op, int64_t delta)
{
	uint8_t key[1 + PREFIX_MAX];
	size_t n = key_spool_count(key, op);
	uint64_t count;
	MDB_val k;
	int rc;

	rc = info_get(txn, op->c, key, n, &count);
	if (rc)
		return rc;
	if (delta < 0 && count <= (uint64_t)-delta) {
		k = val(key, n);
		rc = mdb_del(txn, op->c->info, &k, NULL);
		return rc == MDB_NOTFOUND ? 0 : rc;
	}
	return info_put(txn, op->c, key, n, count + (uint64_t)delta);
}

struct spool_clear_arg {
	size_t deleted;
};

static int spool_clear_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct spool_clear_arg *a = arg;
	uint8_t prefix[PREFIX_MAX];
	size_t n = key_prefix(prefix, op);
	int rc;

	/* in chunks: a million deletes in one txn would dirty too much */
	rc = delete_prefix(txn, op->c, op->c->spool, prefix, n,
			   SPOOL_CLEAR_CHUNK, &a->deleted);
	if (rc == 0)
		rc = spool_count_add(txn, op, a->deleted < SPOOL_CLEAR_CHUNK ?
					      INT64_MIN + 1 :
					      -(int64_t)a->deleted);
	return rc ? op_fail(op, rc) : 0;
}

int cache_spool_clear(struct cache *cache, const char *table)
{
	struct spool_clear_arg a;
	struct op op;
	int rc;

	rc = op_init(&op, cache, "clear spool", table);
	if (rc)
		return rc;
	do {
		a.deleted = 0;
		rc = run_write(&op, spool_clear_fn, &a);
	} while (rc == 0 && a.deleted == SPOOL_CLEAR_CHUNK);
	return rc;
}

struct spool_put_arg {
	size_t n;
	const char *const *keys;
	const char *const *rows;
};

static int spool_put_fn(MDB_txn *txn, struct op *op, void *arg)
{
	struct spool_put_arg *a = arg;
	uint8_t key[KEY_BUF];
	size_t plen = key_prefix(key, op);
	int64_t added = 0;
	int rc;

	for (size_t i = 0; i < a->n; i++) {
		size_t klen = strlen(a->keys[i]);
		MDB_val k, v = val(a->rows[i], strlen(a->rows[i]));

		if (plen + klen > op->c->max_key || plen + klen > sizeof(key))
			return op_fail_msg(op, -ENAMETOOLONG,
					   "primary key too long");
		memcpy(key + plen, a->keys[i], klen);
		k = val(key, plen + klen);
		rc = mdb_put(txn, op->c->spool, &k, &v, MDB_NOOVERWRITE);
		if (rc == MDB_KEYEXIST) {
			/* the last line with a key wins */
			k = val(key, plen + klen);
			v = val(a->rows[i], strlen(a->rows[i]));
			rc = mdb_put(txn, op->c->spool, &k, &v, 0);
		} else if (rc == 0) {
			added++;
		}
		if (rc)
			return op_fail(op, rc);
		/* each put reads a leaf of the spool from the map */
		if ((i + 1) % MAP_CHECK_EVERY == 0)
			map_check(op->c);
	}
	rc = added ? spool_count_add(txn, op, added) : 0;
	return rc ? op_fail(op, rc) : 0;
}

int cache_spool_put(struct cache *cache, const char *table, size_t n,
		    const char *const *keys, const char *const *rows)
{
	struct spool_put_arg a = { .n = n, .keys = keys, .rows = rows };
	struct op op;
	int rc;

	rc = op_init(&op, cache, "spool rows", table);
	if (rc)
		return rc;
	if (n == 0)
		return 0;
	if (!keys || !rows)
		return op_fail_msg(&op, -EINVAL, "no rows");
	for (size_t i = 0; i < n; i++)
		if (!keys[i] || !rows[i])
			return op_fail_msg(&op, -EINVAL, "a NULL row or key");
	return run_write(&op, spool_put_fn, &a);
}

int cache_spool_count(struct cache *cache, const char *table, size_t *out)
{
	uint8_t key[1 + PREFIX_MAX];
	struct op op;
	MDB_txn *txn = NULL;
	uint64_t count;
	int rc;

	rc = op_init(&op, cache, "count spool", table);
	if (rc)
		return rc;
	if (!out)
		return op_fail_msg(&op, -EINVAL, "no output");
	*out = 0;
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	rc = info_get(txn, cache, key, key_spool_count(key, &op), &count);
	txn_abort(cache, txn);
	if (rc)
		return op_fail(&op, rc);
	*out = (size_t)count;
	return 0;
}

void cache_spool_batch_release(struct cache_spool_batch *batch)
{
	if (!batch)
		return;
	for (size_t i = 0; i < batch->n; i++)
		free(batch->rows[i]);
	free(batch->rows);
	free(batch->last_key);
	memset(batch, 0, sizeof(*batch));
}

static char *dup_val(const MDB_val *v, size_t skip)
{
	char *s = malloc(v->mv_size - skip + 1);

	if (!s)
		return NULL;
	memcpy(s, (const char *)v->mv_data + skip, v->mv_size - skip);
	s[v->mv_size - skip] = '\0';
	return s;
}

int cache_spool_next(struct cache *cache, const char *table,
		     const char *after, size_t max,
		     struct cache_spool_batch *out)
{
	uint8_t key[KEY_BUF];
	struct cache_spool_batch b = { 0 };
	struct op op;
	MDB_txn *txn = NULL;
	MDB_cursor *cur = NULL;
	MDB_val k, v, last = { 0 };
	struct map_run run = { 0, 0 };
	size_t plen, alen = after ? strlen(after) : 0, cap = 0;
	int rc;

	rc = op_init(&op, cache, "read spool", table);
	if (rc)
		return rc;
	if (!out || max == 0)
		return op_fail_msg(&op, -EINVAL, "no output");
	memset(out, 0, sizeof(*out));
	plen = key_prefix(key, &op);
	if (plen + alen > sizeof(key))
		return op_fail_msg(&op, -ENAMETOOLONG, "primary key too long");
	if (alen)
		memcpy(key + plen, after, alen);
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	rc = mdb_cursor_open(txn, cache->spool, &cur);
	if (rc)
		goto fail;
	k = val(key, plen + alen);
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	if (rc == 0 && after && k.mv_size == plen + alen &&
	    memcmp(k.mv_data, key, plen + alen) == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	for (; rc == 0 && b.n < max && has_prefix(&k, key, plen);
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (b.n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			char **rows;

			if (ncap > max)
				ncap = max;
			rows = realloc(b.rows, ncap * sizeof(*rows));
			if (!rows) {
				rc = ENOMEM;
				goto fail;
			}
			b.rows = rows;
			cap = ncap;
		}
		b.rows[b.n] = dup_val(&v, 0);
		if (!b.rows[b.n]) {
			rc = ENOMEM;
			goto fail;
		}
		/* rows this big are rare; small ones go with whole drops */
		if (v.mv_size >= MAP_DROP_MIN)
			map_run_add(cache, &run, v.mv_data, v.mv_size,
				    false);
		b.n++;
		if (b.n % MAP_CHECK_EVERY == 0)
			map_check(cache);
		last = k;
	}
	if (rc && rc != MDB_NOTFOUND)
		goto fail;
	rc = 0;
	if (b.n) {
		b.last_key = dup_val(&last, plen);
		if (!b.last_key) {
			rc = ENOMEM;
			goto fail;
		}
	}
	mdb_cursor_close(cur);
	txn_abort(cache, txn);
	*out = b;
	return 0;
fail:
	if (cur)
		mdb_cursor_close(cur);
	txn_abort(cache, txn);
	cache_spool_batch_release(&b);
	return op_fail(&op, rc);
}

/* ---- housekeeping ----------------------------------------------------- */

int cache_get_stats(struct cache *cache, struct cache_stats *out)
{
	struct op op = { .c = cache, .what = "get stats", .table = "*" };
	MDB_txn *txn = NULL;
	MDB_stat st;
	int rc;

	if (!cache || !out)
		return -EINVAL;
	memset(out, 0, sizeof(*out));
	rc = txn_begin(cache, MDB_RDONLY, &txn);
	if (rc)
		return op_fail(&op, rc);
	rc = mdb_stat(txn, cache->meta, &st);
	if (rc == 0)
		rc = info_get(txn, cache, info_bytes, sizeof(info_bytes) - 1,
			      &out->bytes);
	txn_abort(cache, txn);
	if (rc)
		return op_fail(&op, rc);
	out->tables = st.ms_entries;
	out->evictions = __atomic_load_n(&cache->evictions, __ATOMIC_RELAXED);
	cache_mem_stats(cache->mem, &out->held_tables, &out->held_bytes);
	return 0;
}
