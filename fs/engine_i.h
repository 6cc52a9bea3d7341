/*
 * Internals shared by the engine's files (engine.c, import.c).
 */
#ifndef DTFS_FS_ENGINE_I_H
#define DTFS_FS_ENGINE_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "cache.h"
#include "config.h"
#include "engine.h"

struct fs_import;

struct fs_table {
	char *id;		/* API id: the cache's key */
	char *name;		/* API name */
	bool listed;		/* in the latest listing; eng->lock */

	/* t->lock: the frontier page fetch, the schema */
	pthread_mutex_t lock;
	uint64_t epoch;		/* cache epoch the running snapshot began
				   under (cache_get_epoch) */
	struct api_schema schema;
	bool have_schema;
	int64_t schema_at;	/* when fetched from the API; 0 = from cache */
	_Atomic uint64_t stale_gen; /* generation known broken by a change */
	_Atomic size_t schema_len; /* schema.json's length for getattr, which
				      must not wait for t->lock */
	_Atomic int64_t offline_at; /* last revalidation that could not reach
				       the API (the cache was served) */
	_Atomic int64_t write_refused_at; /* the API refused a write (403) */

	/* t->lock: the next cursor page, fetched ahead while the last one
	 * is cached (engine.c), by one thread kept for the table */
	struct {
		bool active;	/* a fetch was handed over, not taken yet */
		bool running;	/* tid started (mu and cv initialized) */
		pthread_t tid;
		pthread_mutex_t mu; /* job, done, quit */
		pthread_cond_t cv;
		bool job, done, quit;
		uint64_t gen;
		char *cursor;
		struct api_page page;
		int rc;
		struct api_schema schema; /* the thread's own copy */
		bool have_schema;
		struct fs_engine *eng;
	} ahead;

	/* t->lock: keys seen by the pass over generation keys_gen
	 * (numbered.c), an open-addressing set of key digests */
	uint64_t keys_gen;
	uint64_t *keys;
	size_t nkeys, keys_cap;

	/* eng->pf_lock: the prefetch queue */
	bool pf_queued;
	uint64_t pf_gen;
	uint64_t pf_seen;	/* the frontier when it was queued */
	struct fs_table *pf_next;

	struct fs_face_gens face;

	/* eng->import_lock: the current or last import that received bytes
	 * (status.json shows it), and the one open now (it may have
	 * received nothing yet: then it has no visible effect) */
	struct fs_import *import;
	struct fs_import *import_open;

	struct fs_csvidx *csv;	/* csvview.c: rows.csv's offsets */
};

struct fs_engine {
	struct fs_config cfg;
	struct api *api;
	struct api_caps caps;	/* what the dialect can do */
	struct cache *cache;

	pthread_mutex_t lock;	/* tables[] and each table's `listed` */
	struct fs_table **tables;
	size_t ntables;
	char **old_names;	/* names replaced by a rename: readers may
				   still hold them, so freed only at the end */
	size_t nold_names;

	char **pending;		/* mkdir'ed names without a table yet
				   (schema_write.c); eng->lock */
	size_t npending;

	pthread_mutex_t list_lock; /* one listing walk at a time */
	_Atomic int64_t listed_at; /* read without list_lock */
	_Atomic int64_t expired_at; /* fs_engine_expire(): proofs made at or
				       before it are void */

	pthread_mutex_t pf_lock;
	pthread_cond_t pf_cond;
	struct fs_table *pf_head, *pf_tail;
	pthread_t pf_thread;
	bool pf_started, pf_stop;

	pthread_mutex_t import_lock;
	char *rejects_dir;	/* cache_dir/rejects */
};

/* Load t->schema from memory, the cache or the API; t->lock held. */
int fs_table_load_schema(struct fs_engine *eng, struct fs_table *t)
	FS_WARN_UNUSED;
/* Keep s as t's schema, fresh now (memory and cache); s is taken over
 * (zeroed). t->lock held. */
void fs_table_set_schema(struct fs_engine *eng, struct fs_table *t,
			 struct api_schema *s);
/* Make t->schema at most `revalidate` seconds old (the cached one when the
 * API cannot be reached); t->lock held. */
int fs_table_fresh_schema(struct fs_engine *eng, struct fs_table *t)
	FS_WARN_UNUSED;
/* The same without network I/O (-ENOENT when not cached); t->lock held. */
int fs_table_load_schema_cached(struct fs_engine *eng, struct fs_table *t)
	FS_WARN_UNUSED;

/* A schema fetched on a thread of its own, beside a first page. */
struct fs_schema_fetch {
	struct fs_engine *eng;
	struct fs_table *t;
	pthread_t tid;
	bool started, active;
	struct api_schema s;
	int rc;
};
/* Start fetching t's schema (runs at _finish when no thread starts). */
void fs_schema_fetch_start(struct fs_engine *eng, struct fs_table *t,
			   struct fs_schema_fetch *f);
/* Wait for it and keep it as t's (t->lock held); 0 when none was
 * started. *changed: whether it differs from the one t had. */
int fs_schema_fetch_finish(struct fs_schema_fetch *f, bool *changed)
	FS_WARN_UNUSED;
/* Put each line of a page in schema order (api_row_validate's canonical
 * row): for a page fetched before its schema was known. Returns 0,
 * -EINVAL (a line the schema cannot read: fetch the page again with it),
 * -ENOMEM. */
int fs_page_reorder(const struct api_schema *schema, struct api_page *p)
	FS_WARN_UNUSED;

/* Make the next open of t's rows revalidate (an import changed the table).
 * Under t->lock, so a revalidation in flight cannot store what it fetched
 * before the change as fresh after this. */
int fs_table_invalidate(struct fs_engine *eng, struct fs_table *t)
	FS_WARN_UNUSED;

/* Whether a proof of freshness made at `at` has run out: older than
 * `revalidate` seconds, or made before the last fs_engine_expire(). */
bool fs_engine_expired(struct fs_engine *eng, int64_t at);

/* The API could not be reached or kept failing: not an answer about the
 * table (as 404 or 403 would be). */
bool fs_unreachable(int rc);

/* Open a reader on the current version of t: revalidated now, whatever
 * `revalidate` allows (an import compares with it). */
int fs_reader_open_current(struct fs_engine *eng, struct fs_table *t,
			   struct fs_reader **out) FS_WARN_UNUSED;

/* ---- numbered.c: numbered pages (the production dialect) ---- */

/* Revalidate (re-read whole, compare digests) or start the version of t;
 * m is its cached meta, `have` whether it is usable. t->lock held. */
int fs_numbered_snapshot(struct fs_engine *eng, struct fs_table *t,
			 struct cache_meta *m, bool have, bool force)
	FS_WARN_UNUSED;
/* Fetch and append the next pages of the unfinished version m (up to a
 * window, page_workers in flight). Returns 0, -ESTALE (the table changed:
 * the generation is marked stale), or the API's error. t->lock held. */
int fs_numbered_fetch(struct fs_engine *eng, struct fs_table *t,
		      struct cache_meta *m) FS_WARN_UNUSED;

/* ---- diff.c: only what changed is sent ---- */

/* One spooled row, "LINE\tF\tKEY\tROW"; pointers into the value. */
struct fs_spooled {
	uint64_t line;		/* line of the import, 0 for the table's */
	char flag;		/* '-' none, 'u' key in the table, 'n' new */
	const char *key;	/* encoded key (api_row_validate), klen bytes */
	size_t klen;
	const char *row;	/* canonical row, NUL-terminated */
};

/* Format / parse a spool value (malloc'ed; -EPROTO when malformed). */
char *fs_spooled_format(uint64_t line, char flag, const char *key,
			const char *row);
int fs_spooled_parse(const char *val, struct fs_spooled *out)
	FS_WARN_UNUSED;

/* Walk every value of a spool in key order, parsed (values that do not
 * parse are skipped); fn's first nonzero result stops the walk and is
 * returned, as is an error of reading the spool. *s is borrowed for the
 * call only. */
int fs_spool_walk(struct fs_engine *eng, const char *spool,
		  int (*fn)(void *arg, const struct fs_spooled *s), void *arg)
	FS_WARN_UNUSED;

/* The name of t's spool `what` in the cache ("" is the import spool). */
char *fs_spool_name(const struct fs_table *t, const char *what);

struct fs_diff {
	uint64_t current;	/* rows of the current version */
	uint64_t unreadable;	/* of which the schema could not read */
	uint64_t same;		/* spooled rows identical: not sent */
	uint64_t changed;	/* spooled rows whose key the version has */
	uint64_t added;		/* spooled rows with a key it lacks */
	uint64_t absent;	/* keys of the version not spooled */
};

/*
 * Compare the spool `in` with t's current version (revalidated now, read
 * whole, each line made canonical by `schema`): rows that differ go to the
 * spool `out` flagged 'u' (key in the version) or 'n' (new key); the
 * version's keys missing from `in` go to `absent` when not NULL. Both
 * outputs are emptied first. Returns 0, or the error of reading the
 * version (-ESTALE when it kept changing while read) or of the cache.
 */
int fs_diff_spool(struct fs_engine *eng, struct fs_table *t,
		  const struct api_schema *schema, const char *in,
		  const char *out, const char *absent, struct fs_diff *d)
	FS_WARN_UNUSED;

/* Call each(arg, x, y) for every key spooled in both a (x) and b (y), in
 * key order; stops at the first non-0 it returns. Returns 0, that value,
 * or the cache's error. */
int fs_diff_join(struct fs_engine *eng, const char *a, const char *b,
		 int (*each)(void *arg, const struct fs_spooled *x,
			     const struct fs_spooled *y),
		 void *arg) FS_WARN_UNUSED;

/* replace.c: delete the rows of t whose keys are spooled in `absent`
 * (fs_diff_spool's), by key (row_ops dialects) or by row id; *deleted
 * says how many went. Returns 0 or the first failed delete's error. */
int fs_replace_delete(struct fs_engine *eng, struct fs_table *t,
		      const struct api_schema *schema, const char *absent,
		      uint64_t *deleted) FS_WARN_UNUSED;
/* Find or add the table id (named name) and mark it listed or not (a
 * table created or deleted here). NULL when out of memory. */
struct fs_table *fs_engine_add_table(struct fs_engine *eng, const char *id,
				     const char *name, bool listed);

/* schema_write.c */
void fs_pending_release(struct fs_engine *eng);

/* csvview.c */
void fs_csvidx_free(struct fs_csvidx *x);
/* Forget rows.csv's index and size (the schema changed). */
void fs_csv_forget(struct fs_table *t);

/* import.c */
int fs_import_init(struct fs_engine *eng) FS_WARN_UNUSED;
void fs_import_release(struct fs_engine *eng);
void fs_import_table_release(struct fs_table *t);
/* Append `,\n  "import": {…}` to buf at *pos (nothing if none ran). */
int fs_import_status_json(struct fs_engine *eng, struct fs_table *t,
			  char *buf, size_t size, size_t *pos) FS_WARN_UNUSED;

#endif
