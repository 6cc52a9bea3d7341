/*
 * api: the Data Tables REST client of dtfs and dtfsctl.
 *
 * One struct api per process holds the settings, the OAuth token, the
 * rate-limit pacer and the curl handles. Every function here is safe to call
 * from many threads at once on the same struct api: the token is shared and
 * refreshed ahead of expiry by whichever thread notices first, the pacer is
 * shared, and each call borrows a curl handle from a pool (connections are
 * reused).
 *
 * Dialects: the wire format lives behind struct api_dialect (api_i.h). Only
 * the cursor API (../shared/spec/cursor-api.md) exists today; the production
 * /api/v2/flows/datatables API is meant to be a second dialect. Callers only
 * see tables, schemas, pages of rows as JSONL bytes, upsert results and an
 * opaque version string (the ETag, or NULL where a dialect has none).
 *
 * Errors: every fallible function returns 0 or a negative errno:
 *   -ENOENT     404 (table or row does not exist)
 *   -EACCES     401 after a fresh token, or 403 (credentials or scope)
 *   -EINVAL     400 or 413 that is the caller's fault (bad request)
 *   -EPROTO     the server sent something that is not the JSON we expect
 *   -EIO        5xx or 429 after the retry budget is spent, other statuses
 *   -ETIMEDOUT  the server did not answer in time after the retry budget
 *   -ENOTCONN   the server cannot be reached (connect refused, DNS)
 *   -ENOMEM     out of memory
 *   -EEXIST     409 (insert-only upsert hit an existing key)
 *   -ESTALE     412 (If-Match version mismatch)
 * Every failure is logged once: what failed, the subject, HTTP status, the
 * error code of the body and the correlation id. Secrets, tokens and
 * Authorization headers never reach a log.
 *
 * JSON (json-c) never leaves this module: rows are exchanged as bytes.
 */
#ifndef DTFS_API_H
#define DTFS_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define API_WARN_UNUSED __attribute__((warn_unused_result))

struct api;

/* Settings. Strings are borrowed for the duration of api_new() only. */
struct api_config {
	const char *dialect;	/* "cursor" (default) or "flows" */
	const char *region;	/* "us-east-1", … (or GENESYSCLOUD_REGION) */
	const char *api_url;	/* overrides region: "http://127.0.0.1:8080" */
	const char *login_url;	/* defaults to api_url when that is set */
	const char *client_id;	/* NULL: GENESYSCLOUD_OAUTHCLIENT_ID */
	const char *client_secret; /* NULL: GENESYSCLOUD_OAUTHCLIENT_SECRET */
	const char *credentials; /* file with client_id=… and client_secret=…
				    lines; refused if group/other may read */
	unsigned max_attempts;	/* per request, 0: default 8 */
	double retry_budget_s;	/* per request, 0: default 120 s */
	double connect_timeout_s; /* 0: default 10 s */
	double stall_timeout_s;	/* no byte for this long: 0 = default 60 s */
};

/*
 * Create a client. Resolves the region, reads the credentials (file or
 * environment) and checks the URLs; does no network I/O.
 * Returns 0, -EINVAL (unknown region/dialect, bad URL, missing credentials:
 * logged), -EACCES (credentials file readable by others), -ENOMEM.
 */
int api_new(const struct api_config *cfg, struct api **out) API_WARN_UNUSED;
void api_free(struct api *api);

/* Fetch a token now: proves the credentials and that the API is reachable.
 * Returns 0, -EACCES, -ENOTCONN, -ETIMEDOUT, -EIO (also -EPROTO when the
 * answer holds no token, -ENOMEM). */
int api_check(struct api *api) API_WARN_UNUSED;

/* ---- tables ---------------------------------------------------------- */

struct api_table {
	char *id;	/* owned by the list */
	char *name;	/* owned by the list */
};

struct api_table_list {
	struct api_table *tables;
	size_t count;
};

/* All tables, every listing page walked. Release with
 * api_table_list_release(). */
int api_list_tables(struct api *api, struct api_table_list *out)
	API_WARN_UNUSED;
void api_table_list_release(struct api_table_list *list);

/* ---- schemas --------------------------------------------------------- */

enum api_type {
	API_TYPE_STRING,
	API_TYPE_NUMBER,
	API_TYPE_INTEGER,
	API_TYPE_BOOLEAN,
	API_TYPE_DATE,
};

struct api_column {
	char *name;
	enum api_type type;
	bool key;
};

struct api_schema {
	struct api_column *columns; /* in schema (display) order */
	size_t ncolumns;
	char *version;	/* schema ETag, or NULL */
	char *json;	/* the schema as the API returns it, pretty-printed,
			   with a trailing newline: schema.json's bytes */
	size_t json_len;
};

/* GET the schema. Release with api_schema_release(). */
int api_get_schema(struct api *api, const char *table_id,
		   struct api_schema *out) API_WARN_UNUSED;

/* Build a schema from the bytes of api_schema.json (as cached earlier).
 * Returns 0 or -EPROTO. version is copied when not NULL. */
int api_schema_parse(const char *json, size_t len, const char *version,
		     struct api_schema *out) API_WARN_UNUSED;
void api_schema_release(struct api_schema *schema);

/* Replace the schema; if_match is the schema version (required by the
 * cursor API). On success *out is the new schema (with its new version);
 * out is written, never released first: pass an empty struct, not the
 * schema you hold, and release that one yourself. On failure *out is
 * zeroed. Returns 0, -ESTALE (412), -EINVAL (change not allowed / 428), … */
int api_put_schema(struct api *api, const char *table_id,
		   const char *json, size_t len, const char *if_match,
		   struct api_schema *out) API_WARN_UNUSED;

/* ---- rows: export ---------------------------------------------------- */

struct api_page {
	bool not_modified;	/* 304: nothing else below is set */
	char *data;		/* the page's rows as JSONL: one compact
				   columns object per line, keys in schema
				   order, numbers' text exactly as sent,
				   strings escaped as json-c writes them
				   ("\u00e9" → "é", "\/" → "/");
				   "" (not NULL) for an empty page */
	size_t len;
	size_t nrows;
	char *next_cursor;	/* NULL on the last page */
	char *version;		/* the table version (ETag) or NULL */
};

/*
 * GET one page of rows. cursor NULL is the first page. if_none_match (may be
 * NULL) is a version: when the table still has it, the result is
 * not_modified and no rows. page_size 0 means the dialect's maximum (1000).
 * The schema orders the keys of each line; a column the schema does not
 * know is appended after the known ones in the order the server sent it.
 * Release with api_page_release().
 */
int api_get_rows(struct api *api, const char *table_id,
		 const struct api_schema *schema, const char *cursor,
		 unsigned page_size, const char *if_none_match,
		 struct api_page *out) API_WARN_UNUSED;
void api_page_release(struct api_page *page);

/* ---- rows: import ---------------------------------------------------- */

/*
 * Validate one line of an import against a schema, without coercion:
 * a JSON object; every key column present and not null; each value of the
 * column's type (string; number; integer = number with no fraction or
 * exponent; true/false; date = RFC 3339 string); null allowed for non-key
 * columns; valid UTF-8. Blank lines are the caller's business.
 *
 * Returns:
 *   0        valid: *row_out is the canonical compact row (schema order,
 *            values' text kept, no newline) and *key_out the primary key
 *            encoded as one string that is equal for equal keys (both
 *            malloc'ed, caller frees);
 *   -EINVAL  quarantine: *error_out says why ("loyalty_tier: expected
 *            number, got string"), malloc'ed;
 *   -ENOENT  schema drift: the object has a column the schema lacks;
 *            *error_out names it ("unknown column 'segment'").
 */
int api_row_validate(const struct api_schema *schema, const char *line,
		     size_t len, char **row_out, char **key_out,
		     char **error_out) API_WARN_UNUSED;

struct api_row_error {
	size_t row;		/* index in the chunk, from 0 */
	char *field;		/* may be NULL */
	char *code;		/* "type.mismatch", … may be NULL */
};

struct api_upsert_result {
	size_t inserted;
	size_t updated;
	struct api_row_error *errors; /* on -EINVAL from a 400 invalid.row */
	size_t nerrors;
	char *version;		/* the table's new version, or NULL */
	unsigned attempts;	/* requests sent for this chunk */
	unsigned throttled;	/* of which answered 429 */
};

/*
 * Upsert a chunk of rows, each a canonical row from api_row_validate()
 * (a compact JSON object of column values). nrows is 1..1000.
 * Returns 0, -EINVAL (400: out->errors says which rows), -EACCES (403 no
 * write scope), -EIO, … Release with api_upsert_result_release().
 */
int api_upsert(struct api *api, const char *table_id,
	       const char *const *rows, size_t nrows,
	       struct api_upsert_result *out) API_WARN_UNUSED;
void api_upsert_result_release(struct api_upsert_result *res);

/* DELETE one row by the server's row id. Returns 0, -ENOENT, … */
int api_delete_row(struct api *api, const char *table_id,
		   const char *row_id) API_WARN_UNUSED;

/*
 * A hook asked (from the thread of a request, about once a second and
 * between retries) whether the caller gave up on the request: non-zero
 * makes the request fail at once with -EINTR. The mount sets
 * fuse_interrupted; NULL (the default) never interrupts. Set it before any
 * request runs.
 */
void api_set_interrupt_check(int (*check)(void));

/* ---- pacing and counters --------------------------------------------- */

/* True while the rate-limit budget is low (fewer than 20 requests left in
 * the window): importers shrink their chunks to 50 rows. */
bool api_budget_low(struct api *api);

struct api_stats {
	uint64_t requests;	/* HTTP requests sent, tokens included */
	uint64_t retries;	/* requests that were retries */
	uint64_t throttled;	/* 429 answers */
	uint64_t server_errors;	/* 5xx answers */
	uint64_t unauthorized;	/* 401 answers */
	uint64_t tokens;	/* tokens fetched */
};

void api_get_stats(struct api *api, struct api_stats *out);

/* ---- helpers exposed for tests and the other face --------------------- */

/* The API base URL of a region name ("us-east-1" → https://api.mypurecloud.com)
 * or NULL when unknown. Borrowed, static. login is the login base. */
const char *api_region_api_url(const char *region);
const char *api_region_login_url(const char *region);

/* Parse a Retry-After value (delta seconds, or an HTTP date) into seconds
 * from now; -1 when absent or unparseable. */
double api_parse_retry_after(const char *value);

/* Map an HTTP status to a negative errno as described above (0 for 2xx,
 * 304). */
int api_errno_from_http(long status);

/* Full-jitter backoff for retry number `attempt` (0-based): a uniformly
 * random delay in [0, min(cap, base * 2^attempt)]. */
double api_backoff_delay(unsigned attempt, double base_s, double cap_s);

#endif
