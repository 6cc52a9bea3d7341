/*
 * api_i.h: what the files of api/ share, and nothing else includes.
 *
 * Layers, bottom up:
 *   json.c    a strict span scanner (struct jdoc) for row pages and import
 *             lines, json-c compatible compact output;
 *   rows.c    rows pages to JSONL, RFC 3339 dates, row validation;
 *   schema.c  schema parsing (both dialects' shapes);
 *   csv.c     RFC 4180 CSV to and from JSONL rows;
 *   budget.c  our own request budget, shared between processes by a file;
 *   pacer.c   the shared rate-limit pacer;
 *   token.c   the shared OAuth token;
 *   http.c    curl handle pool, one request with retries (api_http);
 *   cursor.c  the cursor dialect (struct api_dialect);
 *   flows.c   the production dialect;
 *   api.c     api_new/api_free, configuration, the public entry points
 *             that dispatch to the dialect, small helpers.
 * See docs/api.md for the design.
 */
#ifndef DTFS_API_I_H
#define DTFS_API_I_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"

/* ---- small growable buffer ------------------------------------------- */

struct abuf {
	char *p;
	size_t len, cap;
	bool oom; /* an append failed: the content is incomplete */
};

void abuf_init(struct abuf *b);
void abuf_release(struct abuf *b);
bool abuf_reserve(struct abuf *b, size_t extra);
void abuf_add(struct abuf *b, const void *p, size_t n);
void abuf_addc(struct abuf *b, char c);
void abuf_adds(struct abuf *b, const char *s);
/* Hand over the bytes, NUL-terminated (len excludes the NUL); NULL on OOM. */
char *abuf_detach(struct abuf *b, size_t *len);

/* ---- the span scanner (json.c) --------------------------------------- */

enum jtype {
	JT_NULL,
	JT_FALSE,
	JT_TRUE,
	JT_NUMBER,
	JT_STRING,
	JT_ARRAY,
	JT_OBJECT,
};

#define JF_ESCAPED 0x01 /* string: has a backslash escape */
#define JF_FRACEXP 0x02 /* number: has '.', 'e' or 'E' */
/* The text is what jdoc_emit() writes for the value: strings whose escapes
 * are all as json-c writes them (none of "\/", "\u00e9", "\u000a", …),
 * numbers and literals, containers with no whitespace inside and only
 * such values. */
#define JF_VERBATIM 0x04

/* One value. Strings: off/len is the text between the quotes. Numbers and
 * literals: their text. Arrays/objects: from the bracket to the bracket.
 * Object members are a string node (the key) followed by the value. */
struct jnode {
	uint8_t type;
	uint8_t flags;
	uint32_t off, len;
	uint32_t end; /* index of the first node after this subtree */
	uint32_t n;   /* array: elements; object: members */
};

struct jdoc {
	const char *text;
	size_t len;
	struct jnode *nodes;
	size_t count, cap;
	char err[96]; /* why parsing failed */
};

#define JDOC_VALIDATE_UTF8 0x01

void jdoc_init(struct jdoc *d);
void jdoc_release(struct jdoc *d);
/* Parse text strictly (RFC 8259, one value, whitespace around it allowed).
 * Returns 0, -EINVAL (d->err says why) or -ENOMEM. The nodes of an earlier
 * parse are reused (a first array is sized from len). d->text is
 * borrowed. */
int jdoc_parse(struct jdoc *d, const char *text, size_t len, int flags);
/* First child of a container (or the key of its first member). */
static inline uint32_t jdoc_child(uint32_t i)
{
	return i + 1;
}
static inline uint32_t jdoc_next(const struct jdoc *d, uint32_t i)
{
	return d->nodes[i].end;
}
/* Value of member `name` of object node obj, or UINT32_MAX. */
uint32_t jdoc_member(const struct jdoc *d, uint32_t obj, const char *name);
/* Does string node i decode to exactly name[0..nlen)? */
bool jdoc_str_eq(const struct jdoc *d, uint32_t i, const char *name,
		 size_t nlen);
/* Decode string node i into out (appended, not NUL-terminated). */
void jdoc_str_decode(const struct jdoc *d, uint32_t i, struct abuf *out);
/* Decoded string node i, malloc'ed and NUL-terminated, or NULL (OOM). */
char *jdoc_str_dup(const struct jdoc *d, uint32_t i);
/* Append value i compactly, as json-c's JSON_C_TO_STRING_PLAIN |
 * JSON_C_TO_STRING_NOSLASHESCAPE would, except that numbers keep their
 * text exactly (json-c rewrites -0 and clamps big integers). Values
 * flagged JF_VERBATIM are copied as they are. */
void jdoc_emit(const struct jdoc *d, uint32_t i, struct abuf *out);
/* The same bytes the long way: every string decoded and re-escaped, no
 * copy of JF_VERBATIM text (the reference the copies are tested with). */
void jdoc_emit_decoded(const struct jdoc *d, uint32_t i, struct abuf *out);
/* Append s as a JSON string in json-c's escaping. */
void json_emit_string(struct abuf *out, const char *s, size_t len);
const char *jtype_name(enum jtype t);

/* Serialize a rows array (node rows of d: cursor {"columns": {...}} rows, or
 * flat flows rows with API_JSONL_FLAT) as JSONL into out,
 * keys in schema order (schema may be NULL: server order). A columns
 * object already in that form (compact, JF_VERBATIM, known keys spelled
 * as json-c writes them, in schema order) is copied as it is, and counted
 * in *ncopied (may be NULL); flags API_JSONL_DECODE rebuilds every line
 * value by value instead, with the same bytes (tests compare the two).
 * Returns 0, -EPROTO (a row is not {"columns": {...}}) or -ENOMEM. */
#define API_JSONL_DECODE 0x01
/* the rows are the columns objects themselves (flows: flat rows) */
#define API_JSONL_FLAT 0x02
int api_rows_to_jsonl(const struct api_schema *schema, const struct jdoc *d,
		      uint32_t rows, struct abuf *out, size_t *nrows,
		      size_t *ncopied, int flags);

/* Is s[0..len) an RFC 3339 date-time? */
bool api_date_valid(const char *s, size_t len);

/* Parse a schema body: cursor {"columns": [...]} or flows JSON Schema
 * {"properties": {...}}. json-c is used; json/json_len get the pretty
 * form. Returns 0, -EPROTO, -ENOMEM. */
int api_schema_from_json(const char *json, size_t len, const char *version,
			 struct api_schema *out);

/* ---- our own budget (budget.c) ---------------------------------------- */

/* The most requests per window the ring tracks (a larger budget is
 * clamped: fewer never exceeds it). */
#define API_BUDGET_SLOTS 4096

struct api_budget;

/* At most n requests in any window_s seconds; file NULL: this process's
 * alone, else shared through that file (created 0600). n 0: *out = NULL,
 * no budget. Returns 0, -ENOMEM, or the file's -errno (logged). */
int budget_new(unsigned n, double window_s, const char *file,
	       struct api_budget **out);
void budget_free(struct api_budget *b);
/* Reserve the next slot at or after `earliest` (monotonic seconds) and
 * return its start time; a slot that would start after `latest` is not
 * taken (its start is returned all the same): a request that gives up
 * must not hold a place others wait behind. */
double budget_reserve(struct api_budget *b, double earliest, double latest);
/* Nobody (no thread, no process sharing the file) starts before until. */
void budget_pause(struct api_budget *b, double until);
/* Requests still free in the window ending now; *paused while a 429 pause
 * lasts. */
unsigned budget_left(struct api_budget *b, double now, bool *paused);
double budget_rate(const struct api_budget *b);
unsigned budget_size(const struct api_budget *b);

/* ---- pacer (pacer.c) -------------------------------------------------- */

#define API_BUDGET_LOW 20

struct api_pacer {
	pthread_mutex_t mu;
	double pause_until; /* monotonic: a 429 stops every thread */
	double reset_at;    /* monotonic end of the current window */
	long remaining;	    /* as last reported, -1 unknown */
	long estimate;	    /* remaining minus requests sent since */
	long max_seen;	    /* largest remaining or limit seen */
	double next_slot;   /* earliest start of the next paced request */
	long inflight;	    /* reserved and not answered yet */
	struct api_budget *budget; /* our own budget, or NULL */
};

void pacer_init(struct api_pacer *p);
void pacer_destroy(struct api_pacer *p);
/* Seconds the caller must wait before sending (0: go now). Reserves a slot:
 * call once per request, then sleep the returned time. A budget slot is
 * taken only when it starts by `latest` (the caller gives up otherwise). */
double pacer_reserve(struct api_pacer *p, double now, double latest);
/* A request reserved with pacer_reserve() ended: feed the rate-limit
 * headers of its response (-1: absent, or no response). */
void pacer_update(struct api_pacer *p, double now, long remaining,
		  long reset_s);
/* A 429 said to wait `seconds`: every thread waits. */
void pacer_pause(struct api_pacer *p, double now, double seconds);
bool pacer_low(struct api_pacer *p, double now);
/* Requests per second allowed now, 0 unknown. */
double pacer_rate(struct api_pacer *p, double now);

/* ---- token (token.c) -------------------------------------------------- */

struct api_token {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char *value;	    /* bearer token, NULL when none */
	double fetched_at;  /* monotonic, when the request was sent */
	double expires_at;  /* monotonic */
	double refresh_at;  /* monotonic: fetch a new one from here on */
	uint64_t gen;	    /* bumped on each new token */
	uint64_t fetch_seq; /* bumped when a fetch ends */
	int fetch_err;	    /* result of the last fetch */
	bool fetching;
};

void token_init(struct api_token *t);
void token_destroy(struct api_token *t);
/* A copy of a valid token (malloc'ed; caller frees, after wiping) and its
 * generation. Fetches one when needed; one thread fetches, others wait.
 * Returns 0, -EACCES, -EHOSTUNREACH, -ETIMEDOUT, -EIO, -ENOMEM, -EPROTO. */
int token_get(struct api *api, char **out, uint64_t *gen);
/* The token of generation gen was refused: forget it (unless a newer one
 * replaced it already). */
void token_invalidate(struct api *api, uint64_t gen);
/* Seconds before expiry when a token of this lifetime is refreshed. */
double token_margin(double lifetime_s);

/* ---- HTTP (http.c) ---------------------------------------------------- */

struct api_http_pool;

struct api_req {
	const char *method; /* "GET", "POST", "PUT", "DELETE" */
	const char *url;    /* absolute */
	const char *body;   /* NULL: none */
	size_t body_len;
	const char *content_type;
	const char *if_match;
	const char *if_none_match;
	const char *what;    /* for logs: "get schema" */
	const char *subject; /* for logs: the table id, quoted */
	bool token_request;  /* POST to the token endpoint, basic auth */
	bool gone_ok;	     /* DELETE: a 404 after an attempt that may
				have been carried out is success */
	/* Not the API (an upload or a signed download URL): no bearer
	 * token, no Accept header, not paced, not a 401 retry. */
	bool external;
	/* Extra "Name: value" header lines, NULL-terminated, or NULL. */
	const char *const *headers;
	/* A 3xx answer is returned as success (resp->location set) instead
	 * of an error: the caller follows it (never with the token). */
	bool redirect_ok;
	/* A final answer of this status is the caller's to handle and log
	 * (row exists, row missing, page size refused): debug level. */
	long quiet_status;
};

struct api_resp {
	long status;
	struct abuf body;
	struct jdoc doc; /* for the caller's scan of body */
	char *etag;
	char correlation[96];
	char retry_after[64];
	char code[96];	   /* error code from the body, or "" */
	char message[256]; /* "message" of an error body, or "" */
	char *location;	   /* Location header, or NULL */
	long rl_remaining, rl_reset, rl_limit, rl_count; /* -1 absent */
	unsigned attempts;
	unsigned throttled;
	bool too_big;	 /* the body passed body_max: refused */
	size_t body_max; /* set per attempt */
	double sent_at; /* monotonic start of the last attempt */
	/* where body's and doc's arrays go back, NULL: freed */
	struct api_http_pool *pool;
};

void api_resp_init(struct api_resp *r);
/* Frees the headers; body's and doc's arrays go back to the pool they
 * came from, for the next request to fill without growing them again. */
void api_resp_release(struct api_resp *r);

/* Send a request with the token, retries, pacing and 401 handling.
 * Returns 0 for 2xx and 304 (resp->status says which), else a negative
 * errno; resp keeps the last answer (status, body, code) either way and
 * the final failure has been logged. Unless it is a token request, an
 * empty resp gets the body and node arrays of an earlier response: the
 * pool keeps arrays of up to API_SPARE_MAX bytes each, API_SPARE_TOTAL in
 * all. */
int api_http(struct api *api, const struct api_req *req, struct api_resp *resp);

/* The largest response body accepted (a 1000-row page is a few MB; a
 * token answer far less): a body that never ends fails with -EPROTO. */
#define API_BODY_MAX ((size_t)64 << 20)
#define API_TOKEN_BODY_MAX ((size_t)64 << 10)
/* a whole table as CSV, from a signed URL */
#define API_EXTERNAL_BODY_MAX ((size_t)1 << 30)

#define API_SPARE_MAX ((size_t)8 << 20)
#define API_SPARE_TOTAL ((size_t)32 << 20)

int api_http_init(struct api *api);
void api_http_release(struct api *api);

/* Map a curl code to a negative errno; *retry tells whether it is
 * transient. */
int api_errno_from_curl(int code, bool *retry);

/* Add a table to a listing (cap: its allocated entries). Returns 0 or
 * -ENOMEM. */
int api_table_list_add(struct api_table_list *out, size_t *cap, const char *id,
		       const char *name);

struct json_object;
/*
 * One page of a table listing: GET url and add the page's entities
 * (objects with string "id" and "name") to out (cap: its allocated
 * entries); a table whose name or id holds a NUL is skipped, logged. *root
 * gets the parsed answer for the caller's paging fields (the one there is
 * put first), *n the number of entities on the page. Returns 0, -EPROTO
 * (logged), -ENOMEM or api_http()'s error.
 */
int api_list_page(struct api *api, const char *url, struct api_resp *resp,
		  struct json_object **root, struct api_table_list *out,
		  size_t *cap, size_t *n);
/*
 * The rows of a page answer (resp's body, a JSON object) into out->data as
 * JSONL (api_rows_to_jsonl() with flags, from its member `member`),
 * out->len and out->nrows; resp->doc keeps the parse for the dialect's
 * own fields. Text an import would refuse (invalid UTF-8, a lone
 * surrogate) is exported as sent, with a warning. Returns 0, -EPROTO
 * (logged) or -ENOMEM.
 */
int api_page_rows(struct api *api, const char *table_id,
		  const struct api_schema *schema, struct api_resp *resp,
		  const char *member, int flags, struct api_page *out);
/* resp's body parsed by json-c when it is a JSON object (json_object_put()
 * it), else NULL. */
struct json_object *api_resp_json(const struct api_resp *resp);
/* Log "<what> '<subject>' failed: unexpected answer: <why> (HTTP …,
 * correlation …)", the subject (a table id) by its name. */
void api_log_unexpected(struct api *api, const char *what,
			const char *subject, const struct api_resp *resp,
			const char *why);

/* URL-escape s (malloc'ed) or NULL. */
char *api_escape(const char *s);
/* "<api_url><base>[/<escaped id>]<suffix>[<escaped item>]" (malloc'ed), or
 * NULL (out of memory). id, suffix and item may be NULL. */
char *api_url(struct api *api, const char *base, const char *id,
	      const char *suffix, const char *item);

/* ---- dialects --------------------------------------------------------- */

struct api_dialect {
	const char *name;
	const char *scope; /* token scope to ask for, or NULL */
	unsigned max_page_size;
	/* our own request budget by default, 0: none (pace by headers) */
	unsigned rate_requests;
	double rate_window_s;
	int (*list_tables)(struct api *api, struct api_table_list *out);
	int (*get_schema)(struct api *api, const char *table_id,
			  struct api_schema *out);
	int (*put_schema)(struct api *api, const char *table_id,
			  const char *json, size_t len, const char *if_match,
			  struct api_schema *out);
	int (*get_rows)(struct api *api, const char *table_id,
			const struct api_schema *schema, const char *cursor,
			unsigned page_size, const char *if_none_match,
			struct api_page *out);
	int (*upsert)(struct api *api, const char *table_id,
		      const char *const *rows, size_t nrows,
		      struct api_upsert_result *out);
	int (*delete_row)(struct api *api, const char *table_id,
			  const char *row_id);
	/* NULL where the dialect lacks the operation (-ENOSYS) */
	int (*get_page)(struct api *api, const char *table_id,
			const struct api_schema *schema, unsigned page_number,
			unsigned page_size, struct api_page *out);
	int (*row_create)(struct api *api, const char *table_id,
			  const char *row, size_t len);
	int (*row_update)(struct api *api, const char *table_id,
			  const char *key, const char *row, size_t len);
	int (*row_delete_key)(struct api *api, const char *table_id,
			      const char *key);
	int (*import_csv)(struct api *api, const char *table_id,
			  const char *csv, size_t len, bool replace_all,
			  struct api_job *out);
	int (*export_csv)(struct api *api, const char *table_id, char **csv,
			  size_t *len);
	void (*get_caps)(struct api *api, struct api_caps *out);
	int (*create_table)(struct api *api, const char *name,
			    const char *json, size_t len, char **id);
	int (*delete_table)(struct api *api, const char *table_id,
			    bool force);
};

extern const struct api_dialect api_dialect_cursor;
extern const struct api_dialect api_dialect_flows;

/* ---- the client ------------------------------------------------------- */

struct api {
	const struct api_dialect *dialect;
	char *api_url; /* no trailing slash */
	char *login_url;
	char *client_id;
	char *client_secret;
	unsigned max_attempts;
	double retry_budget_s;
	double connect_timeout_s;
	double stall_timeout_s;

	struct api_token token;
	struct api_pacer pacer;
	struct api_http_pool *pool;
	/* numbered pages: the largest page size not refused so far */
	_Atomic unsigned max_page;
	/* the token endpoint refused the dialect's scope: ask without */
	_Atomic bool scope_refused;

	_Atomic uint64_t n_requests, n_retries, n_throttled, n_server_errors,
	    n_unauthorized, n_tokens;
};

/* Remember the names of the tables listed (api_list_tables), so that
 * messages about a table name it rather than its id. */
void api_http_learn_names(struct api *api, const struct api_table_list *list);
/* A table as messages show it: its name (copied into buf) once a listing
 * named it, else id itself; NULL for a NULL id. */
const char *api_table_name(struct api *api, const char *id, char *buf,
			   size_t size);
/* For the buffer of api_table_name() (names of up to 256 characters). */
#define API_NAME_BUF 1100

/* Monotonic seconds. */
double api_now(void);
/* Sleep, not interrupted by signals. */
void api_sleep(double seconds);
/* Uniform in [0, 1), thread-safe. */
double api_random(void);

/* Read a credentials file (refused when group/other have any permission).
 * *id / *secret are set only for keys present (malloc'ed). */
int api_read_credentials(const char *path, char **id, char **secret);
/* Is the URL acceptable (https, or http to a loopback host)? */
int api_check_url(const char *url, const char *what);

#define API_BACKOFF_BASE_S 0.2
#define API_BACKOFF_CAP_S 10.0

#endif
