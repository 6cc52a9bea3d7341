/*
 * cache: the LMDB store of dtfs and dtfsctl.
 *
 * One LMDB environment under a cache directory (created 0700), opened once
 * per process and shared safely by several dtfs and dtfsctl processes
 * (LMDB's own locking). It survives restarts and kill -9: every change is
 * one short write transaction, so a crash leaves the last committed state.
 * The env is opened with MDB_NOSYNC (this is a cache: commits skip fsync and
 * stay durable across process crashes; an OS crash may lose recent pages,
 * and an env LMDB then finds unreadable is started afresh at open).
 *
 * What it stores, per table (a table is named by its API id):
 *   - meta: the generation of the cached version, its version string (the
 *     ETag), whether it is complete, its total bytes/rows/pages, the cursor to
 *     continue from, when it was last revalidated and last used;
 *   - pages: the JSONL bytes of each fetched page, keyed by (table,
 *     generation, end offset) so the page holding any byte offset is found
 *     with one B-tree lookup (MDB_SET_RANGE);
 *   - schema: the schema.json bytes and the schema version;
 *   - spool: rows of an import in progress, keyed by primary key (so the
 *     last line with a key wins), each a canonical row;
 *   - epoch: an invalidation counter that imports bump (see below).
 * Only one version of a table is kept: starting a new one drops the pages of
 * the old one. A reader holding an older generation gets -ESTALE.
 *
 * Size cap: when the pages stored exceed max_bytes, whole tables other than
 * the one being written are evicted, least recently used first.
 *
 * Processes: open the cache after any fork() (daemonizing included); an
 * LMDB env must not be used across fork().
 *
 * Threads: every function may be called from any thread. Each call uses its
 * own short transaction; read transactions are MDB_RDONLY and nothing
 * returned points into LMDB memory (data is copied out before the
 * transaction ends).
 *
 * Memory: LMDB reads through a shared, read-only map of data.mdb, whose
 * pages count in the process's RSS once touched. The cache drops its own
 * mappings (madvise MADV_DONTNEED) of what its transactions read or
 * deleted, so the RSS of the map stays about 8 MiB whatever the table size.
 * A drop only unmaps: the pages stay in the page cache and any thread's
 * next access maps the same bytes again (docs/cache.md).
 *
 * Errors: 0 or a negative errno; LMDB codes map through one function
 * (MDB_NOTFOUND → -ENOENT, MDB_MAP_FULL → -ENOSPC, others → -EIO).
 * Every function also returns -EINVAL for a NULL/empty table name and
 * -ENAMETOOLONG for a table name longer than CACHE_TABLE_MAX bytes, a
 * version of CACHE_VERSION_MAX bytes or more, a cursor of CACHE_CURSOR_MAX
 * bytes or more (they are stored whole, never truncated), or a spool key too
 * long for an LMDB key (about 500 bytes minus the table name).
 */
#ifndef DTFS_CACHE_H
#define DTFS_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CACHE_WARN_UNUSED __attribute__((warn_unused_result))

#define CACHE_VERSION_MAX 256	/* longest version (ETag) stored */
#define CACHE_CURSOR_MAX 1024	/* longest cursor stored */
#define CACHE_TABLE_MAX 256	/* longest table name (API id), in bytes */

struct cache;

struct cache_meta {
	uint64_t gen;		/* generation of the cached version, > 0 */
	char version[CACHE_VERSION_MAX]; /* "" when the dialect has none */
	bool complete;		/* every page of this version is cached */
	uint64_t bytes;		/* bytes cached (the total when complete) */
	uint64_t rows;
	uint64_t pages;
	char cursor[CACHE_CURSOR_MAX]; /* where to continue; "" = first page
					  (when pages == 0) or none (complete) */
	int64_t validated_at;	/* unix seconds of the last 200/304 proving
				   `version` current; 0 = never/invalidated */
	int64_t used_at;	/* unix seconds of the last read (LRU) */
	int64_t began_at;	/* unix seconds when this generation began:
				   when these bytes were first seen (0 for
				   a record from before it was kept) */
	bool in_memory;		/* held in this process's memory: the disk
				   could not take it (docs/cache.md) */
};

/*
 * Open (creating) the cache in dir. max_bytes caps the pages stored (0: no
 * cap); the LMDB map is sized generously above it. Returns 0, -EACCES,
 * -ENOMEM, -EIO.
 */
int cache_open(const char *dir, uint64_t max_bytes, struct cache **out)
	CACHE_WARN_UNUSED;
void cache_close(struct cache *cache);

/* The meta of a table. Returns 0 or -ENOENT (nothing cached). */
int cache_get_meta(struct cache *cache, const char *table,
		   struct cache_meta *out) CACHE_WARN_UNUSED;

/*
 * Start caching a new version of a table: a fresh generation, no pages,
 * incomplete, validated_at = now. Drops the pages of the previous
 * generation. If the table already has this exact version (another process
 * started it first), keeps it unchanged. *out is the resulting meta.
 */
int cache_begin_version(struct cache *cache, const char *table,
			const char *version, struct cache_meta *out)
	CACHE_WARN_UNUSED;

/*
 * Append page number `page` (0 for the first) of generation `gen`, which
 * starts at byte `offset`. A page goes in only as the generation's next
 * one: `page` equal to its page count and `offset` to its byte count, both
 * checked in the append's own transaction. So no page is ever stored twice
 * nor out of place, whatever callers in any process sharing the cache do
 * (pages of equal length cannot pass for one another).
 * next_cursor NULL marks the last page (the version becomes complete).
 * Returns:
 *   0        appended; *out (may be NULL) is the new meta;
 *   -EEXIST  page `page` is already there (another reader appended it
 *            first; not an error: read it back), or the version is
 *            complete;
 *   -ESTALE  gen is no longer the table's generation;
 *   -EINVAL  page is past the cached frontier (a gap), or offset is not
 *            where that page starts;
 *   -ENAMETOOLONG  next_cursor is CACHE_CURSOR_MAX bytes or longer;
 *   -ENOSPC  the map is full even after eviction.
 * An empty page (len 0) stores no bytes but counts as a page.
 */
int cache_append_page(struct cache *cache, const char *table, uint64_t gen,
		      uint64_t page, uint64_t offset, const void *data,
		      size_t len, size_t nrows, const char *next_cursor,
		      struct cache_meta *out) CACHE_WARN_UNUSED;

/*
 * Copy up to size cached bytes of generation gen starting at offset into
 * buf, across page boundaries. *nread < size when the cached frontier is
 * reached (0 at or past it). Returns 0, or -ESTALE when gen is no longer
 * the table's generation. Updates used_at at most once a second.
 */
int cache_read(struct cache *cache, const char *table, uint64_t gen,
	       uint64_t offset, void *buf, size_t size, size_t *nread)
	CACHE_WARN_UNUSED;

/* Record that gen's version was proved current at `when` (a 304). Returns
 * 0 or -ESTALE. */
int cache_set_validated(struct cache *cache, const char *table, uint64_t gen,
			int64_t when) CACHE_WARN_UNUSED;

/* ---- invalidation counter ------------------------------------------- */

/*
 * Each table has an invalidation counter (its epoch, 0 until first bumped)
 * shared by every process on the cache. An import bumps it when it starts
 * sending and again when it has finished; a revalidation reads it before
 * asking the API and passes it to the _under calls below, which store the
 * result as proved current only if the counter is unchanged, checked in
 * the same write transaction (so a revalidation racing an import in any
 * process never keeps the old rows as fresh). CACHE_EPOCH_ANY skips the
 * check.
 */
#define CACHE_EPOCH_ANY UINT64_MAX

int cache_get_epoch(struct cache *cache, const char *table, uint64_t *out)
	CACHE_WARN_UNUSED;

/* Bump the counter and void the proof of the cached version (validated_at
 * = 0, pages kept) in one transaction. */
int cache_bump_epoch(struct cache *cache, const char *table)
	CACHE_WARN_UNUSED;

/* cache_begin_version whose new version gets validated_at = 0 (cached but
 * unproved) when the counter is no longer `epoch`. */
int cache_begin_version_under(struct cache *cache, const char *table,
			      const char *version, uint64_t epoch,
			      struct cache_meta *out) CACHE_WARN_UNUSED;

/* cache_set_validated that stores nothing (and returns 0) when the counter
 * is no longer `epoch`. */
int cache_set_validated_under(struct cache *cache, const char *table,
			      uint64_t gen, int64_t when, uint64_t epoch)
	CACHE_WARN_UNUSED;

/* Forget the cached rows of a table (after an import changed it). Schema
 * and spool are kept. Returns 0 (also when nothing was cached). */
int cache_invalidate(struct cache *cache, const char *table)
	CACHE_WARN_UNUSED;

/* ---- sizes derived from a generation ---------------------------------- */

/*
 * The size of something made from generation gen's bytes (rows.csv), under
 * `form`, the caller's identity of what else it was made with (the
 * schema): kept beside the pages, shared by every process on the cache,
 * dropped with the generation. So a rendering is measured once per
 * version, not once per process. size must be > 0.
 * put returns 0, -ESTALE (gen is not the table's cached generation on
 * disk) or -ENOSPC; get returns 0 or -ENOENT.
 */
int cache_put_derived_size(struct cache *cache, const char *table,
			   uint64_t gen, uint64_t form, uint64_t size)
	CACHE_WARN_UNUSED;
int cache_get_derived_size(struct cache *cache, const char *table,
			   uint64_t gen, uint64_t form, uint64_t *size)
	CACHE_WARN_UNUSED;

/* ---- schema --------------------------------------------------------- */

/* Store schema.json's bytes with the schema version (may be NULL). */
int cache_put_schema(struct cache *cache, const char *table,
		     const char *version, const char *json, size_t len)
	CACHE_WARN_UNUSED;

/* The stored schema: *json (NUL-terminated, length *len) and *version
 * ("" when none) are malloc'ed, caller frees. Returns 0 or -ENOENT. */
int cache_get_schema(struct cache *cache, const char *table, char **version,
		     char **json, size_t *len) CACHE_WARN_UNUSED;

/* ---- import spool --------------------------------------------------- */

/* Drop every spooled row of a table. */
int cache_spool_clear(struct cache *cache, const char *table)
	CACHE_WARN_UNUSED;

/* Put n rows in one transaction; a key already spooled is replaced (the
 * last line wins). keys[i] and rows[i] are NUL-terminated. */
int cache_spool_put(struct cache *cache, const char *table, size_t n,
		    const char *const *keys, const char *const *rows)
	CACHE_WARN_UNUSED;

/* Number of distinct keys spooled. */
int cache_spool_count(struct cache *cache, const char *table, size_t *out)
	CACHE_WARN_UNUSED;

struct cache_spool_batch {
	char **rows;		/* n malloc'ed rows */
	size_t n;
	char *last_key;		/* pass as `after` to get the next batch */
};

/*
 * Up to max rows in key order, starting after the key `after` (NULL: from
 * the first). out->n == 0 at the end. Release with
 * cache_spool_batch_release(). Returns 0, or -EINVAL when max is 0.
 */
int cache_spool_next(struct cache *cache, const char *table,
		     const char *after, size_t max,
		     struct cache_spool_batch *out) CACHE_WARN_UNUSED;
void cache_spool_batch_release(struct cache_spool_batch *batch);

/* ---- housekeeping --------------------------------------------------- */

struct cache_stats {
	uint64_t tables;	/* tables with cached rows */
	uint64_t bytes;		/* page bytes stored */
	uint64_t evictions;	/* tables evicted by this process */
	uint64_t held_tables;	/* tables this process holds in memory */
	uint64_t held_bytes;	/* because the disk could not take them */
};

int cache_get_stats(struct cache *cache, struct cache_stats *out)
	CACHE_WARN_UNUSED;

/* Map an LMDB return code to a negative errno (0 stays 0). */
int cache_errno(int mdb_rc);

#endif
