/*
 * dtfs-emu internals: the in-memory store of tables and rows, the HTTP face
 * (libmicrohttpd) and the small helpers both share.
 *
 * Threads: MHD runs one thread per connection. The store is guarded by one
 * rwlock (readers serve pages, writers upsert, delete and change schemas);
 * run-time state (config, tokens, rate-limit windows, counters) by one mutex.
 *
 * Rows: each row is kept as the compact text of its columns object, columns
 * in schema order, values' text exactly as received. Rows live in an array
 * (position = insertion order, a cursor is a position) with two hash indexes
 * (primary key -> row, row id -> row), so serving a page costs O(page size).
 */
#ifndef DTFS_EMU_I_H
#define DTFS_EMU_I_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <json-c/json.h>

/* ---- growable byte buffer ---- */

struct emu_buf {
	char *data;
	size_t len;
	size_t cap;
};

void emu_buf_init(struct emu_buf *b);
void emu_buf_release(struct emu_buf *b);
/* Append n bytes; aborts the process on out-of-memory (emulator only). */
void emu_buf_add(struct emu_buf *b, const void *p, size_t n);
void emu_buf_adds(struct emu_buf *b, const char *s);
void emu_buf_addf(struct emu_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Hand the buffer's bytes to the caller (NUL-terminated, free with free()). */
char *emu_buf_detach(struct emu_buf *b, size_t *len);

/* ---- helpers ---- */

void *emu_xmalloc(size_t n);
void *emu_xcalloc(size_t n, size_t size);
void *emu_xrealloc(void *p, size_t n);
char *emu_xstrdup(const char *s);

uint64_t emu_hash64(const void *p, size_t n, uint64_t seed);
uint64_t emu_mix64(uint64_t x);
/* Format 128 bits as 8-4-4-4-12 lower-case hex into out[37]. */
void emu_uuid_format(uint64_t hi, uint64_t lo, char out[37]);
/* Process-wide random 64-bit value (getrandom, then a per-thread PRNG). */
uint64_t emu_random64(void);
/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t emu_now_ms(void);

/* base64url without padding; out must hold 4*ceil(n/3)+1 bytes. */
void emu_b64url_encode(const unsigned char *in, size_t n, char *out);
/* Decode standard or url-safe base64 (padding optional) into out (cap
 * bytes). Returns the decoded length or -1 on invalid input. */
long emu_b64_decode(const char *in, size_t n, unsigned char *out, size_t cap);

/* Checked number parsing: the whole string must be a number in range. */
int emu_parse_long(const char *s, long min, long max, long *out);
int emu_parse_double(const char *s, double min, double max, double *out);

/* Percent-decode a folder name; returns a malloc'd string or NULL. */
char *emu_percent_decode(const char *s, bool plus_is_space);

/* Compact JSON text of a json-c value (values' text kept as parsed). */
const char *emu_json_text(struct json_object *o);
/* Parse a whole buffer as strict JSON (json.c); NULL if invalid, trailing
 * junk, or the JSON null. Numbers keep their text: emu_json_text writes
 * them back exactly as received. */
struct json_object *emu_json_parse(const char *s, size_t len);
/* The same; *ok tells a JSON null (NULL, ok) from an error. */
struct json_object *emu_json_parse_ex(const char *s, size_t len, bool *ok);
/* A number object written back as `text` (len bytes); NULL if the text is
 * not a JSON number. */
struct json_object *emu_json_number(const char *text, size_t len);
/* Length of the JSON number at the start of s (0 if none); *integer tells
 * whether it has neither fraction nor exponent. */
size_t emu_json_number_len(const char *s, size_t n, bool *integer);

/* ---- open-addressing hash index of items by a string key ---- */

struct emu_map_slot {
	uint64_t hash;
	void *item;
};

struct emu_map {
	struct emu_map_slot *slots;
	size_t mask; /* capacity - 1 (capacity a power of two) */
	size_t count;
	const char *(*key)(const void *item);
};

void emu_map_init(struct emu_map *m, const char *(*key)(const void *item));
void emu_map_release(struct emu_map *m);
void *emu_map_get(const struct emu_map *m, const char *key);
/* Insert or replace the item with the same key; returns the old one. */
void *emu_map_put(struct emu_map *m, void *item);
/* Remove and return the item with this key (NULL if absent). */
void *emu_map_del(struct emu_map *m, const char *key);

/* ---- store ---- */

enum emu_type {
	EMU_T_STRING,
	EMU_T_NUMBER,
	EMU_T_INTEGER,
	EMU_T_BOOLEAN,
	EMU_T_DATE,
};

struct emu_column {
	char *name;
	char *json_name; /* "name" as escaped JSON text, with the quotes */
	enum emu_type type;
	bool key;
	/* production view: title (NULL: the name), default as JSON text
	 * (NULL: none) and displayOrder */
	char *title;
	char *def;
	long display;
};

struct emu_schema {
	struct emu_column *cols;
	size_t ncols;
};

struct emu_row {
	size_t pos; /* index in table->rows */
	uint32_t key_len;
	uint32_t json_len;
	char id[37];
	char data[]; /* key text '\0' columns json '\0' */
};

static inline const char *emu_row_key(const struct emu_row *r)
{
	return r->data;
}

static inline const char *emu_row_json(const struct emu_row *r)
{
	return r->data + r->key_len + 1;
}

struct emu_table {
	char id[37];
	uint64_t id_hash;
	char *name;
	char *description;
	struct emu_schema schema;
	uint64_t version;	 /* table version: changes on every write */
	uint64_t schema_version; /* changes on every schema PUT */
	struct emu_row **rows;
	size_t nrows;
	size_t cap;
	struct emu_map by_key;
	struct emu_map by_id;
	char *division; /* production division id */
	bool deleted;	/* removed from the store, freed at exit */
};

struct emu_store {
	pthread_rwlock_t lock;
	struct emu_table **tables; /* sorted by name */
	size_t ntables;
	uint64_t instance; /* random per process, part of every ETag */
	uint64_t next_version;
	/* deleted tables: handlers may still hold pointers to them */
	struct emu_table **graveyard;
	size_t ngraveyard;
};

/* One problem with one row of a batch. */
struct emu_row_error {
	size_t row;
	const char *field; /* borrowed from the schema or the request */
	const char *code;
};

struct emu_row_errors {
	struct emu_row_error *v;
	size_t n;
	size_t cap;
};

/* A validated row waiting to be written. */
struct emu_pending {
	char *key;
	char *json;
	size_t key_len;
	size_t json_len;
};

/* The home division of every table created without one. */
#define EMU_HOME_DIVISION "b3f1c5a2-7d4e-4c1b-9e0a-5f6d2c8a1e90"
#define EMU_HOME_DIVISION_NAME "Home"

const char *emu_type_name(enum emu_type t);
int emu_type_parse(const char *s, enum emu_type *out);

void emu_store_init(struct emu_store *s);
void emu_store_release(struct emu_store *s);
/* Add a table (the store owns it); -EEXIST on a duplicate name. */
int emu_store_add(struct emu_store *s, struct emu_table *t);
/* Sort tables by name; call once after loading. */
void emu_store_sort(struct emu_store *s);
/* The table with this id; callers hold the store lock (either kind). */
struct emu_table *emu_store_find(struct emu_store *s, const char *id);
/* Add a table at its place in name order (write lock held); -EEXIST. */
int emu_store_insert(struct emu_store *s, struct emu_table *t);
/* Give a table a new name, keeping the store in name order (write lock
 * held; the caller checked the name is free). */
void emu_store_rename(struct emu_store *s, struct emu_table *t,
		      const char *name);
/* Take a table out of the store (write lock held). The table stays
 * allocated, marked deleted, until emu_store_release. */
void emu_store_remove(struct emu_store *s, struct emu_table *t);
/* The column that is the production property `key`: the table's one
 * primary key column when it is a string and no other column is named
 * "key"; -1 when the table is not visible in the production dialect. */
int emu_table_prod_key(const struct emu_table *t);
/* Production name of column i: "key" for the key column. */
const char *emu_prod_name(const struct emu_table *t, int keycol, size_t i);
/* Columns in production display order (displayOrder, then position);
 * returns a malloc'd array of ncols indexes. */
size_t *emu_display_order(const struct emu_schema *s);
/* Parse a production JSON Schema ({"properties": {...}}) into out; the key
 * property `key` becomes a string primary-key column named "key". 0 or
 * -EINVAL with msg filled. */
int emu_schema_parse_prod(struct json_object *o, struct emu_schema *out,
			  char *msg, size_t msgsz);
/* Emit the production JSON Schema of a table (keycol from
 * emu_table_prod_key). */
void emu_schema_prod_json(const struct emu_table *t, int keycol,
			  struct emu_buf *b);
/* JSON text of the value a create gives an omitted column: its default,
 * else false, "" or 0; NULL for a date column (left without a value). */
const char *emu_column_fill(const struct emu_column *c);
/* Delete every row (write lock held); returns how many. */
size_t emu_table_clear(struct emu_table *t);
/* Remove this row (write lock held). */
void emu_table_remove_row(struct emu_table *t, struct emu_row *r);

struct emu_table *emu_table_new(const char *name, const char *description);
void emu_table_free(struct emu_table *t);
/* Parse {"columns": [...]} into out; 0 or -EINVAL with msg filled. */
int emu_schema_parse(struct json_object *o, struct emu_schema *out, char *msg,
		     size_t msgsz);
void emu_schema_release(struct emu_schema *s);
/* Emit the schema as {"columns": [...]} text. */
void emu_schema_json(const struct emu_schema *s, struct emu_buf *b);
/* Give the columns of next that cur has too cur's title, default and
 * displayOrder; new columns get displayOrders after the largest. */
void emu_schema_carry(const struct emu_schema *cur, struct emu_schema *next);
/* 0 if `next` only adds non-key columns to `cur`, else -EINVAL. */
int emu_schema_check_additive(const struct emu_schema *cur,
			      const struct emu_schema *next, char *msg,
			      size_t msgsz);

/* Validate one columns object against the schema. On success fills p
 * (malloc'd key and json text) and returns 0; otherwise appends errors
 * (row index `row`) and returns -EINVAL. */
int emu_row_build(const struct emu_schema *s, struct json_object *cols,
		  size_t row, struct emu_pending *p,
		  struct emu_row_errors *errs);
void emu_pending_release(struct emu_pending *p);
void emu_row_errors_add(struct emu_row_errors *e, size_t row, const char *field,
			const char *code);

/* Write a pending row (caller holds the write lock); consumes p.
 * *inserted tells whether it was new. */
void emu_table_put(struct emu_table *t, struct emu_pending *p, bool *inserted);
/* Is v valid for a column of type t (no coercion)? */
bool emu_type_ok(enum emu_type t, struct json_object *v);
/* Remove the row with this id; -ENOENT if absent. Write lock held. */
int emu_table_delete(struct emu_table *t, const char *row_id);
/* Give the table a new version (write lock held). */
void emu_table_touch(struct emu_store *s, struct emu_table *t);
/* Format the quoted ETag of the table ("..."), or of its schema. */
void emu_table_etag(const struct emu_store *s, const struct emu_table *t,
		    char *out, size_t outsz);
void emu_schema_etag(const struct emu_store *s, const struct emu_table *t,
		     char *out, size_t outsz);

/* Loading: --data DIR and --generate NAME:ROWS. */
int emu_load_dir(struct emu_store *s, const char *dir);
int emu_generate(struct emu_store *s, const char *name, size_t nrows);

/* ---- run-time configuration and clients ---- */

#define EMU_SCOPE_READ 1u
#define EMU_SCOPE_WRITE 2u
#define EMU_SCOPE_ARCH_READ 4u	/* architect:readonly (and architect) */
#define EMU_SCOPE_ARCH_WRITE 8u /* architect */
#define EMU_SCOPE_ALL 15u

/* Scope bits of one scope name (n bytes); 0 if unknown. */
unsigned emu_scope_bits(const char *s, size_t n);
/* The granted scope names, space separated. */
void emu_scope_names(unsigned scopes, char *out, size_t outsz);

struct emu_client {
	char *id;
	char *secret;
	unsigned scopes;
	/* fixed rate-limit window */
	uint64_t window_start_ms;
	long window_count;
};

struct emu_config {
	long latency_ms;
	double fail_rate;
	long fail_next; /* the next N API requests fail with fail_next_status */
	long fail_next_status;
	long rate_limit;
	long rate_window_s;
	long token_ttl_s;
	long max_page_size;
	/* production dialect */
	long job_delay_ms;	  /* how long a job stays Processing */
	long max_rows;		  /* rows per table (production inserts) */
	long max_properties;	  /* properties per table */
	long max_tables;	  /* tables in the store */
	long max_name_length;	  /* table names and row keys, characters */
	long max_flows_page_size; /* largest rows pageSize */
	long download_status;	  /* 302 or 303: the download redirect */
};

/* The integer settings of struct emu_config: the /_emu/config key, the
 * command-line flag that also sets it (opt its getopt value, 0: none of
 * its own), the field and the range accepted. fail_rate, a number, is
 * not among them. */
struct emu_setting {
	const char *key;
	const char *flag;
	int opt;
	size_t off;
	long min, max;
};

extern const struct emu_setting emu_settings[];
extern const size_t emu_nsettings;

static inline long *emu_setting_field(struct emu_config *c,
				      const struct emu_setting *s)
{
	return (long *)(void *)((char *)c + s->off);
}

struct emu_token {
	char token[65];
	struct emu_client *client;
	unsigned scopes;
	uint64_t expires_ms;
};

enum emu_route {
	EMU_R_TOKEN,
	EMU_R_LIST,
	EMU_R_SCHEMA,
	EMU_R_SCHEMA_PUT,
	EMU_R_ROWS_GET,
	EMU_R_ROWS_UPSERT,
	EMU_R_ROW_DELETE,
	EMU_R_FLOWS_LIST,
	EMU_R_FLOWS_TABLE,
	EMU_R_FLOWS_ROWS_GET,
	EMU_R_FLOWS_ROW_GET,
	EMU_R_FLOWS_ROW_POST,
	EMU_R_FLOWS_ROW_PUT,
	EMU_R_FLOWS_ROW_DELETE,
	EMU_R_IMPORT_JOB,
	EMU_R_UPLOAD,
	EMU_R_EXPORT_JOB,
	EMU_R_DOWNLOAD,
	EMU_R_DOWNLOAD_SIGNED,
	EMU_R_COUNT
};

/* What a request addresses. */
struct emu_target {
	int route; /* enum emu_route, or -1 */
	bool bad_method;
	bool prod; /* a production route (/api/v2/flows/, /api/v2/downloads/) */
	char table[64];
	char row[128];
	char job[64];
	char *key; /* production row key, percent-decoded (malloc'd) */
};

enum emu_job_status {
	EMU_JOB_WAITING,
	EMU_JOB_PROCESSING,
	EMU_JOB_FAILED,
	EMU_JOB_SUCCEEDED,
};

/* An import or export job of the production dialect. */
struct emu_job {
	char id[37];
	char table_id[37];
	char owner[37];
	bool is_export;
	bool replace_all;
	bool running; /* taken by the worker */
	enum emu_job_status status;
	char created[32];
	char completed[32];
	char session[33]; /* the per-upload header value */
	char base[256];	  /* http://host:port of the request that made it */
	uint64_t seq;
	uint64_t start_ms; /* when it began Processing */
	long updated, deleted, failed, processed;
	char *error_json; /* errorInformation as JSON text, or NULL */
	char *data;	  /* uploaded or exported CSV */
	size_t len;
};

struct emu_jobs {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct emu_job **v;
	size_t n;
	uint64_t seq;
	bool stop;
	bool running;
	pthread_t worker;
	uint64_t secret; /* signs download URLs */
};

struct emu_stats {
	uint64_t requests_total;
	uint64_t by_route[EMU_R_COUNT];
	uint64_t by_status[600];
	uint64_t rows_served;
	uint64_t rows_written;
	uint64_t rows_deleted;
	uint64_t max_in_flight; /* most requests waiting out latency at once */
};

/* The race hook (/_emu/race): one row change made just before the
 * request that brings a route's counter in /_emu/stats (by_route) to nth
 * is served, so that a test can change the table between a client's
 * comparison and its send. Fires once. Under emu.lock. */
struct emu_race {
	int route;	/* enum emu_route; -1: none armed */
	uint64_t nth;
	char table[64];
	char *del_key;	/* malloc'd: delete the row with this key, or */
	char *insert;	/* malloc'd JSON text: create this row */
	uint64_t fired; /* how many have fired since the start */
};

struct emu {
	struct emu_store store;
	pthread_mutex_t lock; /* config, clients' windows, tokens, stats */
	struct emu_config config;
	struct emu_client *clients;
	size_t nclients;
	struct emu_client anonymous; /* rate window of unauthenticated calls */
	struct emu_map tokens;	     /* token string -> struct emu_token */
	struct emu_stats stats;
	uint64_t in_flight; /* requests waiting out latency now */
	uint64_t cursor_secret;
	struct emu_jobs jobs;
	struct emu_race race;
};

/* One request being answered, as the handlers of flows.c see it. */
struct emu_ctx {
	struct emu *e;
	struct MHD_Connection *conn;
	const char *method;
	struct emu_req *rq;
	struct emu_reply *rp;
	const char *client_id;
};

/* ---- the production dialect (flows.c) ---- */

/* Classify a path under /api/v2/ (raw, not percent-decoded) as a
 * production route; false if it is not one. */
bool emu_flows_classify(const char *method, const char *path,
			struct emu_target *r);
/* Answer a production API request that passed auth, limits and faults. */
void emu_flows_handle(struct emu_ctx *c, const struct emu_target *r);
/* Classify /uploads/... and /signed/... (served without a token). */
bool emu_transfer_classify(const char *method, const char *path,
			   struct emu_target *r);
void emu_transfer_handle(struct emu_ctx *c, const struct emu_target *r);
/* Make the row change of a fired race (delete del_key, or create the row
 * of the JSON text insert) in table, as a production DELETE or POST would.
 * Returns 0, or -EIO (logged) when the change was refused. */
int emu_flows_race_apply(struct emu *e, const char *table,
			 const char *del_key, const char *insert);
/* The job worker: start after the store is loaded, stop before release. */
int emu_jobs_start(struct emu *e);
void emu_jobs_stop(struct emu *e);
/* Wake the worker (the job delay changed). */
void emu_jobs_kick(struct emu *e);

/* ---- HTTP requests and replies (http.c) ---- */

/* One request: its body, accumulated over MHD's calls. */
struct emu_req {
	struct emu_buf body;
	bool too_large;
	bool started;
	char *raw_path; /* the request path before percent-decoding */
};

struct emu_reply {
	unsigned status;
	char *body; /* malloc'd, NULL for none */
	size_t len;
	const char *content_type;
	char etag[64];
	long retry_after; /* -1: none */
	bool ratelimit;
	long rl_remaining;
	long rl_reset;
	bool counted;	/* an API or token request: goes into the stats */
	bool prod;	/* a production route: the platform's error shape */
	char *location; /* malloc'd Location header, NULL for none */
	char corr[37];
};

/* Reply with a JSON value (consumed), a buffer (detached) or nothing. */
void emu_reply_json(struct emu_reply *rp, unsigned status,
		    struct json_object *o);
void emu_reply_buf(struct emu_reply *rp, unsigned status, struct emu_buf *b);
void emu_reply_empty(struct emu_reply *rp, unsigned status);
/* The platform's error body; takes ownership of details (may be NULL). On
 * a production route it has every field of the SDK's ErrorBody. */
void emu_reply_error(struct emu_reply *rp, unsigned status, const char *code,
		     struct json_object *details, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/* Start the HTTP daemon on an already bound, listening socket. */
struct MHD_Daemon;
struct MHD_Daemon *emu_http_start(struct emu *e, int listen_fd);
void emu_http_stop(struct MHD_Daemon *d);
void emu_tokens_init(struct emu *e);
void emu_free_tokens(struct emu *e);

#endif
