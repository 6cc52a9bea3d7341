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
/* Parse a whole buffer as strict JSON; NULL if invalid or trailing junk. */
struct json_object *emu_json_parse(const char *s, size_t len);

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
};

struct emu_store {
	pthread_rwlock_t lock;
	struct emu_table **tables; /* sorted by name */
	size_t ntables;
	uint64_t instance; /* random per process, part of every ETag */
	uint64_t next_version;
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

const char *emu_type_name(enum emu_type t);
int emu_type_parse(const char *s, enum emu_type *out);

void emu_store_init(struct emu_store *s);
void emu_store_release(struct emu_store *s);
/* Add a table (the store owns it); -EEXIST on a duplicate name. */
int emu_store_add(struct emu_store *s, struct emu_table *t);
/* Sort tables by name; call once after loading. */
void emu_store_sort(struct emu_store *s);
struct emu_table *emu_store_find(struct emu_store *s, const char *id);

struct emu_table *emu_table_new(const char *name, const char *description);
void emu_table_free(struct emu_table *t);
/* Parse {"columns": [...]} into out; 0 or -EINVAL with msg filled. */
int emu_schema_parse(struct json_object *o, struct emu_schema *out, char *msg,
		     size_t msgsz);
void emu_schema_release(struct emu_schema *s);
/* Emit the schema as {"columns": [...]} text. */
void emu_schema_json(const struct emu_schema *s, struct emu_buf *b);
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
};

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
	EMU_R_COUNT
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
};

/* Start the HTTP daemon on an already bound, listening socket. */
struct MHD_Daemon;
struct MHD_Daemon *emu_http_start(struct emu *e, int listen_fd);
void emu_http_stop(struct MHD_Daemon *d);
void emu_tokens_init(struct emu *e);
void emu_free_tokens(struct emu *e);

#endif
