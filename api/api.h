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
 * Dialects: the wire format lives behind struct api_dialect (api_i.h):
 * "cursor" (../shared/spec/cursor-api.md: cursor pages, ETags, batched
 * upserts, rate-limit headers) and "flows" (the production
 * /api/v2/flows/datatables API: numbered pages, single-row writes, CSV
 * import/export jobs, no versions, paced by a configured budget). Callers
 * only see tables, schemas, pages of rows as JSONL bytes, write results and
 * an opaque version string (the ETag, or NULL where a dialect has none);
 * api_get_caps() says which operations the dialect has. An operation the
 * dialect lacks returns -ENOSYS.
 *
 * Errors: every fallible function returns 0 or a negative errno:
 *   -ENOENT     404 (table or row does not exist)
 *   -EACCES     401 after a fresh token, or 403 (credentials or scope)
 *   -EINVAL     400 or 413 that is the caller's fault (bad request)
 *   -EPROTO     the server sent something that is not the JSON we expect
 *   -EIO        5xx or 429 after the retry budget is spent, other statuses
 *   -ETIMEDOUT  the server did not answer in time after the retry budget
 *   -EHOSTUNREACH the server cannot be reached (connect refused, DNS),
 *               or the circuit breaker holds while it is known down
 *   -ENOMEM     out of memory
 *   -EEXIST     409 (insert-only upsert hit an existing key)
 *   -ESTALE     412 (If-Match version mismatch)
 *   -ENOSYS     the dialect has no such operation
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
	/* Our own request budget: at most rate_requests requests in any
	 * rate_window_s seconds, never exceeded on our own. 0: the dialect's
	 * default (flows: 300 per 60 s; cursor: none, pace by the server's
	 * rate-limit headers). */
	unsigned rate_requests;
	double rate_window_s;
	/* NULL: the budget is this process's. Otherwise a file (created 0600)
	 * through which every process on this host naming the same file
	 * shares the budget and the 429 pauses. */
	const char *budget_file;
};

/*
 * Create a client. Resolves the region, reads the credentials (file or
 * environment), checks the URLs and opens the budget file (creating it);
 * does no network I/O.
 * Returns 0, -EINVAL (unknown region/dialect, bad URL, missing credentials,
 * a rate count without a window or the reverse: logged), -EACCES
 * (credentials file readable by others, budget file not this user's),
 * -ENOMEM, or the budget file's -errno (logged).
 */
int api_new(const struct api_config *cfg, struct api **out) API_WARN_UNUSED;
void api_free(struct api *api);

struct api_caps {
	bool numbered_pages;	/* flows: pages by number, independent,
				   parallel-safe (api_get_page) */
	bool versions;		/* cursor: ETag/If-None-Match exist; flows: none */
	bool row_ops;		/* single-row create/update/delete by key */
	bool csv_jobs;		/* CSV import/export jobs */
	unsigned max_page_size;	/* current best known (flows: 500, halved on
				   400) */
	unsigned max_rows;	/* per table, 0 = none (flows: 5000) */
};

/* What the client's dialect can do. */
void api_get_caps(struct api *api, struct api_caps *out);

/* Fetch a token now: proves the credentials and that the API is reachable.
 * Returns 0, -EACCES, -EHOSTUNREACH, -ETIMEDOUT, -EIO (also -EPROTO when the
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
	/* strings: characters (code points) allowed, 0 = no bound (flows:
	 * the key is 1 to 256) */
	unsigned min_chars, max_chars;
};

struct api_schema {
	struct api_column *columns; /* in schema (display) order */
	size_t ncolumns;
	char *version;	/* schema ETag, or NULL */
	char *json;	/* the schema as the API returns it, pretty-printed,
			   with a trailing newline: schema.json's bytes */
	size_t json_len;
};

/* A column type as the cursor API spells it ("string", "number",
 * "integer", "boolean", "date"); static. */
const char *api_type_name(enum api_type t);

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

/* ---- tables: create and delete (flows; -ENOSYS for cursor) ---------- */

/*
 * Create a table named name with the schema json (a schema as
 * api_schema_parse() reads it). *id is the new table's id (malloc'ed).
 * Returns 0, -EINVAL (not a schema, or refused by the server: logged),
 * -EEXIST (409: the name is taken), -ENOSYS, …
 */
int api_create_table(struct api *api, const char *name, const char *json,
		     size_t len, char **id) API_WARN_UNUSED;

/* Delete a table; force: even if in use (flows ?force=true).
 * Returns 0, -ENOENT, -ENOSYS, … */
int api_delete_table(struct api *api, const char *table_id,
		     bool force) API_WARN_UNUSED;

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
	uint64_t total;		/* rows the server says the table has,
				   UINT64_MAX unknown (numbered pages) */
	unsigned page_count;	/* pages the server says there are, 0
				   unknown (numbered pages) */
	unsigned page_size;	/* rows per page used for this request */
	char **ids;		/* cursor dialect: the server's id of each
				   row (nrows entries, NULL where a row has
				   none), what api_delete_row() takes; NULL
				   for other dialects. One block with the
				   strings: free(ids) alone frees them */
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

/*
 * GET page page_number (from 1) of a numbered-pages dialect (flows; -ENOSYS
 * for cursor), always with the full rows (showbrief=false). page_size 0
 * means the largest the server accepts: a 400 for the size halves it,
 * retries, and remembers the smaller maximum for later calls;
 * out->page_size says what was used (keep it for a whole pass, or page
 * numbers shift). data is JSONL as for api_get_rows(): `key` first, then the
 * properties in schema (displayOrder) order, numbers' text kept, the same
 * bytes for the same content. version is NULL; total and page_count are
 * the server's. A page past the end has 0 rows (not an error).
 */
int api_get_page(struct api *api, const char *table_id,
		 const struct api_schema *schema, unsigned page_number,
		 unsigned page_size, struct api_page *out) API_WARN_UNUSED;

/* ---- rows: import ---------------------------------------------------- */

/*
 * Validate one line of an import against a schema, without coercion:
 * a JSON object; every key column present and not null; each value of the
 * column's type (string, within the column's min_chars..max_chars when
 * set; number; integer = number with no fraction or exponent; true/false;
 * date = RFC 3339 string); null allowed for non-key columns; valid UTF-8.
 * Blank lines are the caller's business.
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

/* The key of a single-key row as the API names it: the one string of a
 * key encoded by api_row_validate() (["…"]), unescaped, malloc'ed.
 * Returns 0, -EINVAL (not one string, or one holding a NUL), -ENOMEM. */
int api_key_string(const char *key, size_t klen, char **out)
	API_WARN_UNUSED;

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

/*
 * Single-row writes (row_ops dialects: flows; -ENOSYS for cursor). row is a
 * canonical compact JSON object from api_row_validate() (len bytes); key is
 * the row's key (URL-encoded here). Errors besides the common ones:
 *   api_row_create: -EEXIST  the key exists (POST is not an upsert);
 *   api_row_update: -ENOENT  no row with that key;
 *   api_row_delete_key: -ENOENT no row with that key (a 404 after an
 *                   attempt whose outcome is unknown counts as done);
 *   -EINVAL  the server refuses the row (400 syntax error: logged with the
 *            platform's message);
 *   -ENOSPC  the table is at its row limit.
 */
int api_row_create(struct api *api, const char *table_id, const char *row,
		   size_t len) API_WARN_UNUSED;
int api_row_update(struct api *api, const char *table_id, const char *key,
		   const char *row, size_t len) API_WARN_UNUSED;
int api_row_delete_key(struct api *api, const char *table_id,
		       const char *key) API_WARN_UNUSED;

/* ---- CSV jobs (csv_jobs dialects: flows; -ENOSYS for cursor) ---------- */

struct api_job {
	char *id;
	char *status;		/* "Succeeded", "Failed", … */
	uint64_t updated, deleted, failed; /* countRecords* */
	char *error;		/* errorInformation.message, or NULL */
};

void api_job_release(struct api_job *job);

/*
 * Import a CSV (header row of property names): POST an import job
 * (importMode ReplaceAll or Append), PUT the CSV to its uploadURI with
 * exactly its uploadHeaders (never the bearer token), poll with back-off
 * until Succeeded or Failed. Returns 0 when Succeeded (out->failed may be
 * > 0), -EIO when Failed (out->error says why; logged), or the request's
 * error. out is set as far as known either way; release it.
 */
int api_import_csv(struct api *api, const char *table_id, const char *csv,
		   size_t len, bool replace_all,
		   struct api_job *out) API_WARN_UNUSED;

/*
 * Export a table as CSV: POST an export job, poll until done, GET its
 * downloadURI with the bearer token and follow the redirect to the signed
 * URL without it. *csv is malloc'ed (NUL-terminated, *len excludes the NUL).
 * Returns 0, -EIO (job Failed: logged), or the request's error.
 */
int api_export_csv(struct api *api, const char *table_id, char **csv,
		   size_t *len) API_WARN_UNUSED;

/* ---- CSV conversion (no client needed) ------------------------------- */

/*
 * Canonical rows (compact JSON objects in schema order, as from
 * api_row_validate() or a page's lines) to an RFC 4180 CSV: a header row of
 * the column names in schema order, then one record per row; CRLF line
 * ends; booleans true/false, numbers' text kept, strings quoted when they
 * hold a comma, quote, CR or LF, start or end with a space or tab, or are
 * empty (""), an empty field
 * for a null or missing value. *csv NULL: a new CSV, header first
 * (malloc'ed, NUL-terminated, *len bytes); otherwise the records are
 * appended to the CSV an earlier call returned (for chunks), with no
 * header. On failure *csv and *len are as they were. Returns 0, -EINVAL
 * (a row is not an object of the schema's columns, or holds an array or
 * object: logged) or -ENOMEM.
 */
int api_csv_encode(const struct api_schema *schema, const char *const *rows,
		   const size_t *lens, size_t nrows, char **csv,
		   size_t *len) API_WARN_UNUSED;

/*
 * The lines of rows.jsonl (JSONL as api_get_rows() writes it: compact
 * objects, keys in schema order; blank lines skipped, a last line without
 * its newline taken) to CSV records, the same bytes api_csv_encode()
 * writes, without a header, appended to the buffer *csv of *csv_len bytes
 * and *csv_cap allocated (all three may start 0/NULL; grown as needed,
 * NUL-terminated). The lines rows.jsonl holds take a fast path with no
 * parsing. On failure the buffer holds the records before the bad line.
 * Returns 0, -EINVAL (a line is not an object of the schema's columns:
 * logged), -ENOMEM.
 */
int api_csv_encode_lines(const struct api_schema *schema, const char *jsonl,
			 size_t len, char **csv, size_t *csv_len,
			 size_t *csv_cap) API_WARN_UNUSED;

/*
 * One CSV (header row required; UTF-8; a BOM, CRLF or LF line ends, and
 * quoted fields holding commas, quotes and newlines accepted) to JSONL:
 * one compact object per record, keys in schema order, values typed by the
 * schema (strings as they are; integer/number text kept when it is a JSON
 * number; booleans in any letter case). An empty field of a string
 * column is "" (the platform has no null); of another column it is left
 * out of the row. A header need not name every column, but must name the
 * key. *jsonl malloc'ed. Returns 0, -EINVAL (malformed CSV, a header
 * column the schema lacks or repeats, a record with another number of
 * fields, a value not of its column's type: logged with the line number),
 * -ENOMEM.
 */
int api_csv_to_jsonl(const struct api_schema *schema, const char *csv,
		     size_t len, char **jsonl,
		     size_t *jsonl_len) API_WARN_UNUSED;

/*
 * The same reader, streaming: bytes in any pieces (a write() at a time),
 * each complete record handed to a callback as it ends. A record the
 * reader refuses (malformed, wrong number of fields, a value not of its
 * column's type, not UTF-8, longer than max_record bytes) is handed over
 * with its error instead of a row, and reading goes on at the next line
 * end outside quotes. Blank lines are skipped. Only the header is fatal.
 */
struct api_csv_reader;

struct api_csv_record {
	uint64_t record;	/* from 1, the header not counted */
	uint64_t line;		/* line of the input where it starts, from 1 */
	const char *row;	/* the row as api_csv_to_jsonl() writes it (no
				   newline), or NULL when refused */
	size_t row_len;
	const char *error;	/* why it was refused ("line 7: score: not a
				   number"), or NULL */
	const char *text;	/* the record as written, without its line end
				   (truncated to max_record) */
	size_t text_len;
};

/* Called for each record; the pointers are valid during the call only.
 * A non-zero return stops the reader and is returned by _feed/_end. */
typedef int (*api_csv_record_fn)(void *arg, const struct api_csv_record *rec);

/* An unquoted empty field is no value (left out of the row) in every
 * column, strings too ("" is the quoted empty string): for a dialect with
 * nulls (cursor), so that what api_csv_encode() wrote reads back the
 * same. Without it, the platform's way: an empty string field is "". */
#define API_CSV_EMPTY_ABSENT 0x01

/* schema is borrowed for the reader's life; max_record 0 = no bound;
 * flags API_CSV_*. Returns 0 or -ENOMEM. */
int api_csv_reader_new(const struct api_schema *schema, size_t max_record,
		       int flags, struct api_csv_reader **out) API_WARN_UNUSED;
/* Returns 0, the callback's error, -ENOMEM, or a header error (latched:
 * later calls return it too; api_csv_reader_error() says why): -ENOENT a
 * header column the schema lacks (schema drift), -EINVAL any other bad
 * header (repeated column, no key column, malformed, not UTF-8). */
int api_csv_reader_feed(struct api_csv_reader *r, const char *buf,
			size_t len, api_csv_record_fn fn,
			void *arg) API_WARN_UNUSED;
/* End of input: the last record without a line end is handed over.
 * -EINVAL when no header was ever read ("no header row"). The reader may
 * be fed again afterwards: more records under the same header. */
int api_csv_reader_end(struct api_csv_reader *r, api_csv_record_fn fn,
		       void *arg) API_WARN_UNUSED;
/* Whether bytes of an unfinished record are held (_end would hand it
 * over). */
bool api_csv_reader_pending(const struct api_csv_reader *r);
/* Why the header was refused (borrowed), or NULL. */
const char *api_csv_reader_error(const struct api_csv_reader *r);
void api_csv_reader_free(struct api_csv_reader *r);

/* ---- pacing and counters --------------------------------------------- */

/* True while the rate-limit budget is low (fewer than 20 requests left in
 * the window): importers shrink their chunks to 50 rows. */
bool api_budget_low(struct api *api);

/* Requests per second the budget allows now (the configured budget, or
 * what the rate-limit headers leave), 0 when unknown or unbounded. */
double api_budget_rate(struct api *api);

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
