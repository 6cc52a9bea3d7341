/*
 * engine: what dtfs and dtfsctl do with tables, below both faces.
 *
 * One struct fs_engine per process joins the API client (api/) and the
 * LMDB cache (cache/): it keeps the table listing, each table's schema, and
 * reads rows.jsonl as snapshots of one table version, page by page through
 * the cache, with one page prefetched ahead of the reader.
 *
 * Invariants:
 *   - a reader sees one table version (generation); when a page it still
 *     needs arrives with another version, its reads fail with -ESTALE and
 *     the log says the table changed during export;
 *   - bytes served for a version are the cache's, written once by the one
 *     JSONL serializer of api/, so offsets are stable for the version;
 *   - st_size is exact (the version is complete in the cache) or 0.
 *
 * Threads: every function may be called from many threads at once. A table's
 * frontier page is fetched by one thread at a time (others wait for it and
 * read it from the cache); reads of cached ranges take no lock. Tables live
 * as long as the engine (a table deleted remotely is marked gone, never
 * freed while a file handle may point at it).
 *
 * Errors: 0 or a negative errno, as api.h and cache.h describe, plus -ESTALE
 * (snapshot broken) and -ENOENT (no such table).
 */
#ifndef DTFS_FS_ENGINE_H
#define DTFS_FS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define FS_WARN_UNUSED __attribute__((warn_unused_result))

struct fs_engine;
struct fs_table;
struct fs_reader;

/*
 * Create the engine with its API client (no network I/O, no threads, no
 * cache yet). cfg is copied. Returns 0, -EINVAL (bad settings, logged),
 * -EACCES (credentials file readable by others), -ENOMEM.
 */
int fs_engine_new(const struct fs_config *cfg, struct fs_engine **out)
	FS_WARN_UNUSED;

/*
 * Open the cache (created under cache_dir, mode 0700) and start the
 * prefetch thread; everything below needs it. Separate from _new so that a
 * daemon forks before it: LMDB envs and threads do not survive fork().
 * Returns 0, -EACCES, -EIO, -ENOMEM.
 */
int fs_engine_start(struct fs_engine *eng) FS_WARN_UNUSED;

/* Stop the threads and close the cache (fs_engine_free does it too). */
void fs_engine_stop(struct fs_engine *eng);
void fs_engine_free(struct fs_engine *eng);

/*
 * Forget every proof of freshness: the next lookup walks the listing again,
 * the next open of any file revalidates, and tables the API refused writes
 * into may be tried again. Only atomic stores, so a SIGHUP handler may
 * call it.
 */
void fs_engine_expire(struct fs_engine *eng);

/* The settings in use (borrowed, valid until fs_engine_free). */
const struct fs_config *fs_engine_config(struct fs_engine *eng);

/* Prove the credentials and that the API answers: a token and a table
 * listing. Returns 0, -EACCES, -EHOSTUNREACH, -ETIMEDOUT, -EIO. */
int fs_engine_check(struct fs_engine *eng) FS_WARN_UNUSED;

/*
 * The tables, from a listing at most list_ttl seconds old (walked again
 * when older). *tables is a malloc'ed array the caller frees; the tables
 * themselves are borrowed (they live as long as the engine).
 */
int fs_engine_list(struct fs_engine *eng, struct fs_table ***tables,
		   size_t *count) FS_WARN_UNUSED;

/* The table named `name` (its API name, not the file name), from the same
 * listing. Returns 0 or -ENOENT. */
int fs_engine_lookup(struct fs_engine *eng, const char *name,
		     struct fs_table **out) FS_WARN_UNUSED;

const char *fs_table_name(const struct fs_table *t);
const char *fs_table_id(const struct fs_table *t);

/* What the face remembers about rows.jsonl in the kernel: the generation
 * whose exact size getattr reported last, and the one whose bytes the page
 * cache may hold; how many handles read `kernel` through the page cache and
 * its size (while any is open, getattr keeps reporting that size: the
 * kernel ends page-cache reads at st_size). Guarded by the face. */
struct fs_face_gens {
	uint64_t attr;
	uint64_t kernel;
	unsigned cached_handles;
	uint64_t kernel_size;
};
struct fs_face_gens *fs_table_face(struct fs_table *t);

/* ---- schema.json ---------------------------------------------------- */

/* The bytes of schema.json, refetched when older than `revalidate`
 * seconds (served from the cache when the API cannot be reached). *json is
 * malloc'ed. */
int fs_table_schema_json(struct fs_engine *eng, struct fs_table *t,
			 char **json, size_t *len) FS_WARN_UNUSED;

/* Length of the schema.json bytes known without network I/O, 0 if none. */
size_t fs_table_schema_size(struct fs_engine *eng, struct fs_table *t);

/*
 * Replace t's schema with json (a whole schema, as schema.json shows it).
 * Only additions are allowed: a column missing (removed or renamed),
 * retyped, or joining or leaving the key is -EINVAL, logged with the
 * column, and nothing is sent. The same schema again sends nothing.
 * Cursor: PUT …/schema with If-Match; flows: PUT the whole table. On
 * success the cached schema and rows.csv follow at once and rows.jsonl is
 * revalidated at its next open. Returns 0, -EINVAL, -EAGAIN (412: the
 * schema changed on the server meanwhile; the server's is fetched again),
 * -EROFS, or the API's error.
 */
int fs_table_put_schema(struct fs_engine *eng, struct fs_table *t,
			const char *json, size_t len) FS_WARN_UNUSED;

/* A schema file whole, from offset 0 (*buf malloc'ed). Returns 0, -EFBIG
 * (over 1 MiB: no schema), -ENOMEM, or the read's error. */
int fs_schema_read_fd(int fd, char **buf, size_t *len) FS_WARN_UNUSED;

/* ---- new tables (flows only) ----------------------------------------- */

/*
 * mkdir: a pending table name, existing only in this process until
 * fs_engine_create() is called for it. Returns 0, -EEXIST, -EROFS, -EPERM
 * (the cursor API has no table creation: logged).
 */
int fs_engine_mkdir(struct fs_engine *eng, const char *name) FS_WARN_UNUSED;
/* Whether mkdir can make tables here (flows, not ro). */
bool fs_engine_can_create(struct fs_engine *eng);
bool fs_engine_is_pending(struct fs_engine *eng, const char *name);
/* The pending names (malloc'ed array of malloc'ed strings). */
int fs_engine_pending_list(struct fs_engine *eng, char ***names,
			   size_t *count) FS_WARN_UNUSED;

/*
 * Create the table name with the schema json (POST /api/v2/flows/
 * datatables); a pending name stops being pending. *out (may be NULL) is
 * the new table. Returns 0, -EINVAL (not a schema, or refused), -EPERM
 * (cursor), -EEXIST (the name is taken), -EROFS, or the API's error.
 */
int fs_engine_create(struct fs_engine *eng, const char *name,
		     const char *json, size_t len,
		     struct fs_table **out) FS_WARN_UNUSED;

/*
 * rmdir: a pending name is forgotten; a table is deleted only with the
 * allow_delete option (flows: ?force=true with allow_delete=force).
 * Returns 0, -ENOENT, -EPERM (no allow_delete, or cursor: logged), -EROFS,
 * or the API's error.
 */
int fs_engine_rmdir(struct fs_engine *eng, const char *name) FS_WARN_UNUSED;

/* ---- rows.jsonl: reading -------------------------------------------- */

/*
 * Size of rows.jsonl known without network I/O: the exact size when the
 * cached version is complete (*gen set to its generation), else 0 (and
 * *gen = 0).
 */
uint64_t fs_table_rows_size(struct fs_engine *eng, struct fs_table *t,
			    uint64_t *gen);

/*
 * When the cached version of the table's rows began (unix seconds): the
 * mtime of rows.jsonl and rows.csv, so a new version is a newer file to
 * rsync's quick check, make and find -newer, and an unchanged one keeps
 * its time across revalidations and remounts. 0 when nothing is cached.
 */
int64_t fs_table_rows_mtime(struct fs_engine *eng, struct fs_table *t);

/*
 * The exact size of rows.jsonl: as fs_table_rows_size() when a complete
 * version is cached, else the table is read whole into the cache first
 * (size.c; with lazy_size, 0 at once). *gen is the version's generation,
 * 0 when the size is not that of a cached complete version. Returns 0 or
 * the reader's error (-ENOTCONN, -EIO, -ESTALE, …).
 */
int fs_table_rows_exact_size(struct fs_engine *eng, struct fs_table *t,
			     uint64_t *size, uint64_t *gen) FS_WARN_UNUSED;

/*
 * Open a snapshot: revalidate the cached version with If-None-Match (at
 * most once per `revalidate` seconds), or fetch the first page when
 * nothing valid is cached. Release with fs_reader_close().
 */
int fs_reader_open(struct fs_engine *eng, struct fs_table *t,
		   struct fs_reader **out) FS_WARN_UNUSED;

/* Read up to size bytes at off, fetching pages up to the one needed.
 * *nread < size only at end of file. Returns 0, -ESTALE, or the API's
 * error (-EIO, -EACCES, …) when a needed page cannot be fetched. */
int fs_reader_read(struct fs_reader *rd, uint64_t off, void *buf,
		   size_t size, size_t *nread) FS_WARN_UNUSED;

/* The generation the reader is bound to, and whether that version is
 * completely cached (then *size is the file's exact size). */
uint64_t fs_reader_gen(const struct fs_reader *rd);
bool fs_reader_complete(struct fs_reader *rd, uint64_t *size);

void fs_reader_close(struct fs_reader *rd);

/* ---- rows.csv: reading ---------------------------------------------- */

struct fs_csv_reader;

/*
 * rows.csv: the snapshot fs_reader_open() gives, as RFC 4180 CSV (a header
 * of the column names, then one record per row, CRLF line ends), made from
 * the cached JSONL as it is read. Same errors as the fs_reader functions
 * (-ESTALE included); -EIO when a row does not fit the schema.
 */
int fs_csv_open(struct fs_engine *eng, struct fs_table *t,
		struct fs_csv_reader **out) FS_WARN_UNUSED;
int fs_csv_read(struct fs_csv_reader *cr, uint64_t off, void *buf,
		size_t size, size_t *nread) FS_WARN_UNUSED;
void fs_csv_close(struct fs_csv_reader *cr);

/* rows.csv's exact size when the current version is complete in the cache
 * and a reader has converted it to the end, else 0 (no network I/O). */
uint64_t fs_table_csv_size(struct fs_engine *eng, struct fs_table *t);

/*
 * rows.csv's exact size, for tools that copy by st_size (tar, rsync): as
 * fs_table_csv_size() when known, else rows.jsonl's exact size is made
 * sure of (fs_table_rows_exact_size) and the version converted to its end
 * once, which records the size for its generation. With lazy_size, 0 at
 * once. Returns 0 or the reader's error.
 */
int fs_table_csv_exact_size(struct fs_engine *eng, struct fs_table *t,
			    uint64_t *size) FS_WARN_UNUSED;

/* ---- rows.jsonl: writing (import) ----------------------------------- */

struct fs_import;

/*
 * Start an import into a table: one per table at a time. Loads the schema
 * and empties the table's spool; nothing a user sees changes until bytes
 * are written (status.json then shows this import, and rejects.jsonl is
 * replaced when an import quarantines lines). Returns 0, -EBUSY (another import is open), -EROFS
 * (a ro mount), -EACCES (the API already refused these credentials a
 * write), or the error of fetching the schema.
 */
int fs_import_begin(struct fs_engine *eng, struct fs_table *t,
		    struct fs_import **out) FS_WARN_UNUSED;

/*
 * Take the next bytes of the written stream (any split into lines).
 * Complete lines are validated as they arrive: bad ones go to
 * rejects.jsonl, good ones to the spool. Returns 0; -EINVAL when a line
 * carries a column the schema lacks (schema drift: the import stops, nothing
 * will be sent, and later calls fail too); the latched error of a failed
 * upload; -EIO/-ENOSPC when the spool cannot be written.
 */
int fs_import_write(struct fs_import *im, const void *buf, size_t len)
	FS_WARN_UNUSED;

/*
 * Read the written stream as CSV (rows.csv) rather than JSONL: call right
 * after fs_import_begin(). A header of column names is required; a header
 * column the schema lacks is drift (the write fails with -EINVAL, nothing
 * is sent), as is a header the reader refuses; a bad record is
 * quarantined under its record number. Returns 0 or -ENOMEM.
 */
int fs_import_use_csv(struct fs_import *im) FS_WARN_UNUSED;

/*
 * How the writer ended, for status.json's "writer" (how: NULL or "" for an
 * explicit close(), which shows as "closed"; else e.g. "killed by signal
 * 9"). Call before fs_import_finish().
 */
void fs_import_set_writer(struct fs_import *im, const char *how);

/* Whether bytes were written since the last fs_import_finish(). */
bool fs_import_dirty(const struct fs_import *im);

/*
 * End of the written stream: validate a last unterminated line, send the
 * spooled rows as upsert chunks (chunk_rows, upload_workers in flight,
 * 50-row chunks while the rate budget is low) and wait for every chunk.
 * Returns 0 when every line landed, -EINVAL when lines were quarantined or
 * drift stopped the import, -EIO when chunks failed after the retry budget,
 * -EACCES when write access was refused. The result is latched: later
 * writes and finishes on this import fail with it. A call with nothing
 * written since the previous one sends nothing and returns that result.
 */
int fs_import_finish(struct fs_import *im) FS_WARN_UNUSED;

/*
 * Send the complete lines written since the last finish or commit now,
 * keeping an unterminated last line for later bytes: what a write()
 * through an O_APPEND descriptor does, so that the shell's `>>`, which
 * ignores close(), sees the failure in write(). Returns as
 * fs_import_finish(); 0 at once when no line was completed since.
 */
int fs_import_commit(struct fs_import *im) FS_WARN_UNUSED;

/*
 * Whether the stream is the whole table (written from an O_TRUNC open, or
 * a file renamed onto rows.jsonl, with the mount's `replace` option): its
 * finish then also deletes the rows the stream lacks, unless a line was
 * quarantined. Imports are upserts otherwise.
 */
void fs_import_set_replace(struct fs_import *im, bool replace);

/*
 * One whole import of the bytes of fd, read with pread from offset 0
 * (begin, write, finish, end): what a rename onto rows.jsonl does (csv:
 * the bytes are CSV, a rename onto rows.csv). Returns
 * as fs_import_begin() and fs_import_finish(), or the read's error.
 */
int fs_import_fd(struct fs_engine *eng, struct fs_table *t, int fd,
		 bool replace, bool csv) FS_WARN_UNUSED;

/* Release the import (call fs_import_finish first when dirty). */
void fs_import_end(struct fs_import *im);

/* What an import has done so far, for a progress display; the same counts
 * as status.json's "import". Safe while the import runs (atomics). */
struct fs_import_progress {
	uint64_t bytes;		/* bytes written into the import */
	uint64_t lines;		/* lines taken (blank ones included) */
	uint64_t valid;		/* rows that passed validation */
	uint64_t quarantined;	/* lines in rejects.jsonl */
	uint64_t unchanged;	/* rows the table already holds as given:
				   not sent */
	uint64_t rows_planned;	/* distinct rows to send (0 until the
				   upload starts); repeated keys merge */
	uint64_t rows_landed;	/* rows the API acknowledged */
	uint64_t chunks_planned, chunks_sent, chunks_acked;
	bool drift;		/* schema drift stopped it: nothing sent */
};
void fs_import_progress(struct fs_import *im, struct fs_import_progress *p);

/* Path of the table's rejects.jsonl in the cache directory (malloc'ed). */
char *fs_table_rejects_path(struct fs_engine *eng, struct fs_table *t);

/* ---- status.json ----------------------------------------------------- */

/* The bytes of status.json (cache and import state). *json malloc'ed. */
int fs_table_status_json(struct fs_engine *eng, struct fs_table *t,
			 char **json, size_t *len) FS_WARN_UNUSED;

#endif
