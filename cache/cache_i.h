/*
 * Internals shared by the cache's files (cache.c, mem.c).
 *
 * mem: the versions this process holds in memory because the disk cache
 * could not take them (a full file system, a full map, a failed write).
 * A held version shadows whatever LMDB has for its table in this process
 * only: other processes sharing the cache never see it. Each held version
 * keeps the meta the public calls return (cache_meta) and its bytes as
 * chunks with their end offsets; a chunk need not be one API page (a
 * version moved off the disk arrives as one chunk), the meta's page count
 * is what appends are checked against.
 *
 * Proof: a held version records the table's LMDB epoch it was proved
 * under; the caller passes the table's current epoch (UINT64_MAX when it
 * cannot be read) and a version whose epoch moved reads as unproved
 * (validated_at 0), as a bump does to a version on disk.
 *
 * Memory: the held bytes are capped (mem_new's cap); an append that would
 * pass it drops other tables' versions, least recently used first, and
 * fails with -ENOSPC when the table alone is too big.
 *
 * Threads: every function may be called from any thread (one mutex); data
 * is copied in and out, nothing returned points into the store.
 * Tables are given as (name, length) as struct op carries them.
 */
#ifndef DTFS_CACHE_I_H
#define DTFS_CACHE_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

struct cache_mem;

int cache_mem_new(uint64_t cap, struct cache_mem **out);
void cache_mem_free(struct cache_mem *mem);

/* A generation for a version begun in memory, never one LMDB hands out. */
uint64_t cache_mem_next_gen(struct cache_mem *mem);

bool cache_mem_holds(struct cache_mem *mem, const char *table, size_t tlen);

/* The held meta of table, proved only if its epoch is still `epoch`.
 * Returns 0 or -ENOENT (not held). */
int cache_mem_get_meta(struct cache_mem *mem, const char *table, size_t tlen,
		       uint64_t epoch, struct cache_meta *out);

/* Hold a version of table: meta m (its gen, version, proof and, for a
 * version moved off the disk, its pages so far) with the bytes [0,
 * m->bytes) in `data` (malloc'ed and taken over, also on failure; NULL
 * when there are none), proved under `epoch`. Replaces what was held.
 * Returns 0 or -ENOMEM/-ENOSPC/-ENAMETOOLONG. */
int cache_mem_hold(struct cache_mem *mem, const char *table, size_t tlen,
		   const struct cache_meta *m, uint64_t epoch, char *data);

/* As cache_append_page, on a held version; -ENOENT when table is not
 * held. */
int cache_mem_append(struct cache_mem *mem, const char *table, size_t tlen,
		     uint64_t gen, uint64_t page, uint64_t offset,
		     const void *data, size_t len, size_t nrows,
		     const char *next_cursor, struct cache_meta *out);

/* As cache_read, on a held version; -ENOENT when table is not held. */
int cache_mem_read(struct cache_mem *mem, const char *table, size_t tlen,
		   uint64_t gen, uint64_t offset, void *buf, size_t size,
		   size_t *nread);

/* Record the proof of gen at `when` if the epoch is still `epoch` (the
 * caller checked it against LMDB). Returns 0, -ESTALE or -ENOENT. */
int cache_mem_set_validated(struct cache_mem *mem, const char *table,
			    size_t tlen, uint64_t gen, int64_t when,
			    uint64_t epoch);

/* Void the proof of the held version (an invalidation). */
void cache_mem_unprove(struct cache_mem *mem, const char *table, size_t tlen);

/* Forget the held version of table (no-op when none). */
void cache_mem_drop(struct cache_mem *mem, const char *table, size_t tlen);

void cache_mem_stats(struct cache_mem *mem, uint64_t *tables,
		     uint64_t *bytes);

#endif
