/*
 * flows.c: the production dialect, /api/v2/flows/datatables
 * (../shared/spec/genesys-flows-api.md and genesys-flows-facts.md).
 *
 * Tables are listed by page number; a schema is the table's JSON Schema
 * (GET ?expand=schema), replaced by a PUT of the whole table. Rows come in
 * numbered pages of flat objects (showbrief=false, or the server sends keys
 * only), independent of each other, so callers may fetch several at once.
 * Writes are one row per request (POST creates, PUT by key updates, DELETE
 * by key) or a CSV import job; reads of a whole table may use an export job.
 * There are no versions and no rate-limit headers: the client paces itself
 * by its own budget (300 requests per 60 s unless configured, budget.c).
 *
 * The platform's error codes for "row exists", "row missing" and "table
 * full" are unverified (genesys-flows-facts.md, section 6): statuses map as
 * everywhere (409 -EEXIST, 404 -ENOENT), and a 400 whose code or message
 * names an existing key or a limit maps to -EEXIST or -ENOSPC.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "api_i.h"
#include "log.h"

#define FLOWS_MAX_PAGE 500
#define FLOWS_MAX_ROWS 5000
#define FLOWS_TABLES_PAGE 100
#define FLOWS_MAX_TABLE_PAGES 10000
#define FLOWS_MAX_REDIRECTS 5
/* polling a job: first after 0.25 s, then ×1.5 up to 5 s, for at most
 * 30 minutes */
#define FLOWS_POLL_FIRST_S 0.25
#define FLOWS_POLL_MAX_S 5.0
#define FLOWS_JOB_TIMEOUT_S 1800.0

static const char *corr(const struct api_resp *resp)
{
	return resp->correlation[0] ? resp->correlation : "none";
}

/* "<api_url>/api/v2/flows/datatables[/<escaped id>]<suffix>[<escaped
 * item>]" */
static char *flows_url(struct api *api, const char *table_id,
		       const char *suffix, const char *item)
{
	return api_url(api, "/api/v2/flows/datatables", table_id, suffix, item);
}

static const char *get_str(struct json_object *o, const char *name)
{
	struct json_object *v;

	if (o && json_object_object_get_ex(o, name, &v) &&
	    json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return NULL;
}

static bool get_u64(struct json_object *o, const char *name, uint64_t *out)
{
	struct json_object *v;
	int64_t x;

	if (!o || !json_object_object_get_ex(o, name, &v) ||
	    !json_object_is_type(v, json_type_int))
		return false;
	x = json_object_get_int64(v);
	if (x < 0)
		return false;
	*out = (uint64_t)x;
	return true;
}

/* ---- tables ----------------------------------------------------------- */

static bool listed_before(const struct api_table_list *l, size_t before,
			  const char *id)
{
	for (size_t i = 0; i < before; i++)
		if (!strcmp(l->tables[i].id, id))
			return true;
	return false;
}

/* A page whose first and last tables were both on earlier pages is a
 * page sent again (a server that ignores pageNumber): following it would
 * walk for FLOWS_MAX_TABLE_PAGES pages. A table created or deleted during
 * the walk shifts a page by a few entries, which leaves its last one new. */
static int page_repeats(const struct api_table_list *l, size_t before,
			unsigned page, const struct api_resp *resp)
{
	if (l->count == before || before == 0)
		return 0;
	if (!listed_before(l, before, l->tables[before].id) ||
	    !listed_before(l, before, l->tables[l->count - 1].id))
		return 0;
	log_err("list tables failed: page %u repeats the tables of an "
		"earlier page (the server ignores pageNumber?) (correlation "
		"%s)", page, corr(resp));
	return -EPROTO;
}

static int flows_list_tables(struct api *api, struct api_table_list *out)
{
	struct api_resp resp;
	struct json_object *root = NULL;
	char *url = NULL;
	size_t cap = 0;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	for (unsigned page = 1; page <= FLOWS_MAX_TABLE_PAGES; page++) {
		uint64_t count = 0;
		size_t before;
		char suffix[80];
		size_t n;

		snprintf(suffix, sizeof(suffix),
			 "?pageNumber=%u&pageSize=%d&sortBy=id", page,
			 FLOWS_TABLES_PAGE);
		free(url);
		url = flows_url(api, NULL, suffix, NULL);
		if (!url) {
			rc = -ENOMEM;
			goto out;
		}
		before = out->count;
		rc = api_list_page(api, url, &resp, &root, out, &cap, &n);
		if (rc)
			goto out;
		rc = page_repeats(out, before, page, &resp);
		if (rc)
			goto out;
		/* pageCount when given, else until an empty page (as the
		 * platform's own CLI does) */
		if (!n || (get_u64(root, "pageCount", &count) && page >= count))
			break;
		if (page == FLOWS_MAX_TABLE_PAGES) {
			log_err("list tables failed: more than %d pages of "
				"%d (correlation %s)", FLOWS_MAX_TABLE_PAGES,
				FLOWS_TABLES_PAGE, corr(&resp));
			rc = -EPROTO;
		}
	}
out:
	if (rc)
		api_table_list_release(out);
	json_object_put(root);
	api_resp_release(&resp);
	free(url);
	return rc;
}

/* ---- schema ----------------------------------------------------------- */

/* The schema member of a DataTable answer into out (pretty bytes). */
static int schema_from_table(struct json_object *table, struct api_schema *out)
{
	struct json_object *schema;
	const char *text;
	size_t len;

	if (!table || !json_object_object_get_ex(table, "schema", &schema) ||
	    !json_object_is_type(schema, json_type_object))
		return -EPROTO;
	text = json_object_to_json_string_length(
	    schema, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
	    &len);
	if (!text)
		return -ENOMEM;
	return api_schema_from_json(text, len, NULL, out);
}

/* GET the table (with its schema or not). *table: the parsed answer. */
static int get_table(struct api *api, const char *table_id, bool schema,
		     const char *what, struct json_object **table)
{
	struct api_req req = {
	    .method = "GET", .what = what, .subject = table_id};
	struct api_resp resp;
	int rc;

	*table = NULL;
	api_resp_init(&resp);
	req.url =
	    flows_url(api, table_id, schema ? "?expand=schema" : "", NULL);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	rc = api_http(api, &req, &resp);
	if (rc)
		goto out;
	*table = api_resp_json(&resp);
	if (!*table) {
		api_log_unexpected(api, what, table_id, &resp,
				   "not a JSON object");
		rc = -EPROTO;
	}
out:
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

static int flows_get_schema(struct api *api, const char *table_id,
			    struct api_schema *out)
{
	struct json_object *table = NULL;
	char tname[API_NAME_BUF];
	int rc;

	memset(out, 0, sizeof(*out));
	rc = get_table(api, table_id, true, "get schema of", &table);
	if (rc)
		goto out;
	rc = schema_from_table(table, out);
	if (rc == -EPROTO)
		log_err("get schema of '%s' failed: unexpected answer: no "
			"JSON Schema of string key 'key' and typed "
			"properties",
			api_table_name(api, table_id, tname, sizeof(tname)));
out:
	json_object_put(table);
	return rc;
}

/* Parse a schema the caller wants to PUT; -EINVAL when it is none. */
static int parse_new_schema(const char *table_id, const char *json, size_t len,
			    struct json_object **out)
{
	struct json_tokener *tok;
	struct json_object *o = NULL;
	struct api_schema check;
	size_t end;
	int rc;

	*out = NULL;
	rc = api_schema_parse(json, len, NULL, &check);
	api_schema_release(&check);
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		log_err("put schema of '%s' failed: not a JSON Schema with "
			"typed properties and a string 'key'",
			table_id);
		return -EINVAL;
	}
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	o = json_tokener_parse_ex(tok, json, (int)len);
	end = o ? (size_t)json_tokener_get_parse_end(tok) : 0;
	json_tokener_free(tok);
	while (o && end < len && strchr(" \t\r\n", json[end]))
		end++;
	if (!o || end != len) {
		json_object_put(o);
		return -EINVAL;
	}
	*out = o;
	return 0;
}

/* Send req with body (JSON, compact) as its body. */
static int http_json(struct api *api, struct api_req *req,
		     struct json_object *body, struct api_resp *resp)
{
	size_t tlen;
	const char *text = json_object_to_json_string_length(
	    body, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
	    &tlen);

	if (!text || !req->url)
		return -ENOMEM;
	req->body = text;
	req->body_len = tlen;
	return api_http(api, req, resp);
}

/* PUT the whole table: id, name, description, division{id} as they are,
 * the new schema. The platform only lets the schema gain properties (and
 * change titles, defaults and displayOrder); its refusal is -EINVAL with
 * its message logged. if_match is ignored: there are no versions. */
static int flows_put_schema(struct api *api, const char *table_id,
			    const char *json, size_t len, const char *if_match,
			    struct api_schema *out)
{
	struct api_req req = {.method = "PUT",
			      .what = "put schema of",
			      .subject = table_id,
			      .content_type = "application/json"};
	struct api_resp resp;
	struct json_object *table = NULL, *schema = NULL, *body = NULL,
			   *answer = NULL, *v;
	int rc;

	(void)if_match;
	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	rc = parse_new_schema(table_id, json, len, &schema);
	if (rc)
		goto out;
	rc = get_table(api, table_id, false, "put schema of", &table);
	if (rc)
		goto out;
	body = json_object_new_object();
	if (!body) {
		rc = -ENOMEM;
		goto out;
	}
	json_object_object_add(body, "id", json_object_new_string(table_id));
	if (json_object_object_get_ex(table, "name", &v))
		json_object_object_add(body, "name", json_object_get(v));
	if (json_object_object_get_ex(table, "description", &v))
		json_object_object_add(body, "description", json_object_get(v));
	if (json_object_object_get_ex(table, "division", &v) &&
	    get_str(v, "id")) {
		struct json_object *div = json_object_new_object();

		if (!div) {
			rc = -ENOMEM;
			goto out;
		}
		json_object_object_add(
		    div, "id", json_object_new_string(get_str(v, "id")));
		json_object_object_add(body, "division", div);
	}
	json_object_object_add(body, "schema", schema);
	schema = NULL;
	req.url = flows_url(api, table_id, "?expand=schema", NULL);
	rc = http_json(api, &req, body, &resp);
	if (rc)
		goto out;
	answer = api_resp_json(&resp);
	if (answer && json_object_object_get_ex(answer, "schema", &v))
		rc = schema_from_table(answer, out);
	else /* no schema in the answer: what we sent is the schema now */
		rc = api_schema_from_json(json, len, NULL, out);
	if (rc == -EPROTO)
		api_log_unexpected(api, "put schema of", table_id, &resp,
				   "not a schema");
out:
	json_object_put(answer);
	json_object_put(body);
	json_object_put(schema);
	json_object_put(table);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* POST a new table: name, the schema (its title set to the name, as the
 * platform does), no division (the home division). */
static int flows_create_table(struct api *api, const char *name,
			      const char *json, size_t len, char **id)
{
	struct api_req req = {.method = "POST",
			      .what = "create table",
			      .subject = name,
			      .content_type = "application/json"};
	struct api_resp resp;
	struct json_object *schema = NULL, *body = NULL, *answer = NULL;
	const char *got;
	int rc;

	*id = NULL;
	api_resp_init(&resp);
	rc = parse_new_schema(name, json, len, &schema);
	if (rc)
		goto out;
	body = json_object_new_object();
	if (!body) {
		rc = -ENOMEM;
		goto out;
	}
	json_object_object_add(body, "name", json_object_new_string(name));
	json_object_object_add(schema, "title", json_object_new_string(name));
	json_object_object_add(body, "schema", schema);
	schema = NULL;
	req.url = flows_url(api, NULL, "", NULL);
	rc = http_json(api, &req, body, &resp);
	if (rc)
		goto out;
	answer = api_resp_json(&resp);
	got = get_str(answer, "id");
	if (!got) {
		api_log_unexpected(api, "create table", name, &resp, "no id");
		rc = -EPROTO;
		goto out;
	}
	*id = strdup(got);
	if (!*id)
		rc = -ENOMEM;
out:
	json_object_put(answer);
	json_object_put(body);
	json_object_put(schema);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

static int flows_delete_table(struct api *api, const char *table_id,
			      bool force)
{
	struct api_req req = {.method = "DELETE",
			      .what = "delete table",
			      .subject = table_id};
	struct api_resp resp;
	int rc;

	api_resp_init(&resp);
	req.url = flows_url(api, table_id, force ? "?force=true" : "", NULL);
	if (!req.url)
		return -ENOMEM;
	rc = api_http(api, &req, &resp);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* ---- rows: numbered pages --------------------------------------------- */

/* The unsigned number in node i (an integer), or false. */
static bool node_u64(const struct jdoc *d, uint32_t i, uint64_t *out)
{
	char buf[32];
	char *end;
	unsigned long long x;

	if (i == UINT32_MAX || d->nodes[i].type != JT_NUMBER ||
	    (d->nodes[i].flags & JF_FRACEXP) || d->nodes[i].len >= sizeof(buf))
		return false;
	memcpy(buf, d->text + d->nodes[i].off, d->nodes[i].len);
	buf[d->nodes[i].len] = '\0';
	if (buf[0] == '-')
		return false;
	errno = 0;
	x = strtoull(buf, &end, 10);
	if (errno || *end)
		return false;
	*out = x;
	return true;
}

/* Lower the remembered largest page size to size (never raise it). */
static void max_page_lower(struct api *api, unsigned size)
{
	unsigned cur = atomic_load(&api->max_page);

	while (size < cur &&
	       !atomic_compare_exchange_weak(&api->max_page, &cur, size))
		;
}

static int flows_get_page(struct api *api, const char *table_id,
			  const struct api_schema *schema, unsigned page_number,
			  unsigned page_size, struct api_page *out)
{
	struct api_req req = {.method = "GET",
			      .what = "get rows page of",
			      .subject = table_id,
			      .quiet_status = 400};
	struct api_resp resp;
	struct jdoc *d = &resp.doc;
	unsigned max = atomic_load(&api->max_page), size;
	uint64_t count;
	char tname[API_NAME_BUF];
	int rc;

	api_resp_init(&resp);
	if (page_number == 0) {
		log_err("get rows page of '%s' failed: page numbers start "
			"at 1",
			api_table_name(api, table_id, tname, sizeof(tname)));
		rc = -EINVAL;
		goto out;
	}
	size = page_size && page_size < max ? page_size : max;
	for (;;) {
		char suffix[96];

		snprintf(suffix, sizeof(suffix),
			 "/rows?pageNumber=%u&pageSize=%u&showbrief=false",
			 page_number, size);
		free((char *)req.url);
		req.url = flows_url(api, table_id, suffix, NULL);
		if (!req.url) {
			rc = -ENOMEM;
			goto out;
		}
		rc = api_http(api, &req, &resp);
		if (rc == -EINVAL && resp.status == 400 && size > 1) {
			/* the size is the likely culprit: the maximum is
			 * not documented */
			log_info(
			    "get rows page of '%s': HTTP 400 at page "
			    "size %u (%s), trying %u",
			    api_table_name(api, table_id, tname, sizeof(tname)),
			    size, resp.code[0] ? resp.code : "no code",
			    size / 2);
			size /= 2;
			max_page_lower(api, size);
			continue;
		}
		if (rc == -EINVAL && resp.status == 400)
			log_err(
			    "get rows page of '%s' failed: HTTP 400 %s%s%s "
			    "(correlation %s)",
			    api_table_name(api, table_id, tname, sizeof(tname)),
			    resp.code, resp.message[0] ? ": " : "",
			    resp.message, corr(&resp));
		if (rc)
			goto out;
		break;
	}
	out->page_size = size;
	rc = api_page_rows(api, table_id, schema, &resp, "entities",
			   API_JSONL_FLAT, out);
	if (rc)
		goto out;
	if (!node_u64(d, jdoc_member(d, 0, "total"), &out->total))
		out->total = UINT64_MAX;
	if (node_u64(d, jdoc_member(d, 0, "pageCount"), &count) &&
	    count <= UINT32_MAX)
		out->page_count = (unsigned)count;
out:
	if (rc)
		api_page_release(out);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* ---- rows: single-row writes ------------------------------------------ */

static bool has_word(const char *s, const char *w)
{
	return s && *s && strcasestr(s, w);
}

/* A refused row write's errno: statuses as everywhere, and a 400 (or 409,
 * 422) whose code or message names an existing key or a limit. */
static int row_errno(int rc, const struct api_resp *resp)
{
	const char *c = resp->code, *m = resp->message;

	if (resp->status != 400 && resp->status != 409 && resp->status != 422)
		return rc;
	if (has_word(c, "exist") || has_word(c, "duplicate") ||
	    has_word(m, "already exist") || has_word(m, "duplicate"))
		return -EEXIST;
	if (has_word(c, "limit") || has_word(c, "exceed") ||
	    has_word(m, "maximum number of rows") || has_word(m, "row limit"))
		return -ENOSPC;
	return rc;
}

static int row_write(struct api *api, const char *method, const char *what,
		     const char *table_id, const char *key, const char *row,
		     size_t len, long quiet)
{
	struct api_req req = {.method = method,
			      .what = what,
			      .subject = table_id,
			      .body = row,
			      .body_len = len,
			      .content_type = row ? "application/json" : NULL,
			      .gone_ok = !row,
			      .quiet_status = quiet};
	struct api_resp resp;
	char tname[API_NAME_BUF];
	int rc;

	api_resp_init(&resp);
	req.url = flows_url(api, table_id, key ? "/rows/" : "/rows", key);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	rc = api_http(api, &req, &resp);
	if (rc)
		rc = row_errno(rc, &resp);
	if (rc == -ENOSPC)
		log_err("%s '%s' failed: the table is full (HTTP %ld %s, "
			"correlation %s)",
			what,
			api_table_name(api, table_id, tname, sizeof(tname)),
			resp.status, resp.code, corr(&resp));
out:
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

static int flows_row_create(struct api *api, const char *table_id,
			    const char *row, size_t len)
{
	return row_write(api, "POST", "create row of", table_id, NULL, row, len,
			 409);
}

static int flows_row_update(struct api *api, const char *table_id,
			    const char *key, const char *row, size_t len)
{
	return row_write(api, "PUT", "update row of", table_id, key, row, len,
			 404);
}

static int flows_row_delete_key(struct api *api, const char *table_id,
				const char *key)
{
	return row_write(api, "DELETE", "delete row of", table_id, key, NULL, 0,
			 404);
}

/* ---- CSV jobs --------------------------------------------------------- */

/* Fill job from a job answer (id, status, counts, errorInformation). */
static int job_fill(struct json_object *o, struct api_job *job)
{
	struct json_object *ei;
	const char *s;

	if ((s = get_str(o, "id")) && !job->id && !(job->id = strdup(s)))
		return -ENOMEM;
	if ((s = get_str(o, "status"))) {
		free(job->status);
		if (!(job->status = strdup(s)))
			return -ENOMEM;
	}
	get_u64(o, "countRecordsUpdated", &job->updated);
	get_u64(o, "countRecordsDeleted", &job->deleted);
	get_u64(o, "countRecordsFailed", &job->failed);
	if (json_object_object_get_ex(o, "errorInformation", &ei) &&
	    (s = get_str(ei, "message"))) {
		free(job->error);
		if (!(job->error = strdup(s)))
			return -ENOMEM;
	}
	return 0;
}

/*
 * Poll job `path` (".../import/jobs/<id>") until it is Succeeded or Failed.
 * *last gets the final answer (for downloadURI). Returns 0 (Succeeded),
 * -EIO (Failed, logged), -ETIMEDOUT, or the request's error.
 */
static int job_wait(struct api *api, const char *table_id, const char *what,
		    const char *kind, struct api_job *job,
		    struct json_object **last)
{
	struct api_req req = {
	    .method = "GET", .what = what, .subject = table_id};
	struct api_resp resp;
	double delay = FLOWS_POLL_FIRST_S,
	       deadline = api_now() + FLOWS_JOB_TIMEOUT_S;
	char suffix[32], tname[API_NAME_BUF];
	int rc;

	*last = NULL;
	api_resp_init(&resp);
	snprintf(suffix, sizeof(suffix), "/%s/jobs/", kind);
	req.url = flows_url(api, table_id, suffix, job->id);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	for (;;) {
		const char *st = job->status ? job->status : "";

		if (!strcmp(st, "Succeeded")) {
			rc = 0;
			break;
		}
		if (!strcmp(st, "Failed")) {
			log_err(
			    "%s '%s' failed: job %s Failed: %s (updated "
			    "%" PRIu64 ", failed %" PRIu64 ")",
			    what,
			    api_table_name(api, table_id, tname, sizeof(tname)),
			    job->id,
			    job->error ? job->error : "no reason given",
			    job->updated, job->failed);
			rc = -EIO;
			break;
		}
		if (api_now() + delay > deadline) {
			log_err(
			    "%s '%s' failed: job %s still %s after %.0f s",
			    what,
			    api_table_name(api, table_id, tname, sizeof(tname)),
			    job->id, st, FLOWS_JOB_TIMEOUT_S);
			rc = -ETIMEDOUT;
			break;
		}
		api_sleep(delay);
		delay *= 1.5;
		if (delay > FLOWS_POLL_MAX_S)
			delay = FLOWS_POLL_MAX_S;
		rc = api_http(api, &req, &resp);
		if (rc)
			break;
		json_object_put(*last);
		*last = api_resp_json(&resp);
		if (!*last || !get_str(*last, "status")) {
			api_log_unexpected(api, what, table_id, &resp,
					   "a job without status");
			rc = -EPROTO;
			break;
		}
		rc = job_fill(*last, job);
		if (rc)
			break;
		log_debug("%s '%s': job %s %s", what, table_id, job->id,
			  job->status);
	}
out:
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* POST a job (body may be NULL); job gets its id and status, *answer the
 * parsed reply. */
static int job_start(struct api *api, const char *table_id, const char *what,
		     const char *suffix, const char *body, struct api_job *job,
		     struct json_object **answer)
{
	struct api_req req = {.method = "POST",
			      .what = what,
			      .subject = table_id,
			      .body = body,
			      .body_len = body ? strlen(body) : 0,
			      .content_type = body ? "application/json" : NULL};
	struct api_resp resp;
	int rc;

	*answer = NULL;
	api_resp_init(&resp);
	req.url = flows_url(api, table_id, suffix, NULL);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	rc = api_http(api, &req, &resp);
	if (rc)
		goto out;
	*answer = api_resp_json(&resp);
	if (!*answer || !get_str(*answer, "id")) {
		api_log_unexpected(api, what, table_id, &resp,
				   "a job without id");
		rc = -EPROTO;
		goto out;
	}
	rc = job_fill(*answer, job);
out:
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* The uploadHeaders map as "Name: value" lines (NULL-terminated). */
static int upload_headers(struct json_object *answer, const char *table_id,
			  char ***out)
{
	struct json_object *h;
	char **lines;
	size_t n = 0;

	*out = NULL;
	if (!json_object_object_get_ex(answer, "uploadHeaders", &h) ||
	    json_object_is_type(h, json_type_null)) {
		*out = calloc(1, sizeof(char *));
		return *out ? 0 : -ENOMEM;
	}
	if (!json_object_is_type(h, json_type_object)) {
		log_err("import CSV into '%s' failed: uploadHeaders is not an "
			"object",
			table_id);
		return -EPROTO;
	}
	lines =
	    calloc((size_t)json_object_object_length(h) + 1, sizeof(*lines));
	if (!lines)
		return -ENOMEM;
	json_object_object_foreach(h, name, val)
	{
		const char *v = json_object_get_string(val);

		/* a header name or value that would end the line early
		 * could smuggle another header */
		if (!json_object_is_type(val, json_type_string) || !*name ||
		    strpbrk(name, ":\r\n \t") || strpbrk(v, "\r\n")) {
			log_err("import CSV into '%s' failed: uploadHeaders "
				"has an unusable header '%s'",
				table_id, name);
			goto proto;
		}
		if (asprintf(&lines[n], "%s: %s", name, v) < 0) {
			lines[n] = NULL;
			for (size_t i = 0; i < n; i++)
				free(lines[i]);
			free(lines);
			return -ENOMEM;
		}
		n++;
	}
	*out = lines;
	return 0;
proto:
	for (size_t i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
	return -EPROTO;
}

static int flows_import_csv(struct api *api, const char *table_id,
			    const char *csv, size_t len, bool replace_all,
			    struct api_job *out)
{
	const char *what = "import CSV into";
	struct api_req put = {.method = "PUT",
			      .what = "upload CSV for",
			      .subject = table_id,
			      .body = csv,
			      .body_len = len,
			      .external = true};
	struct api_resp resp;
	struct json_object *answer = NULL, *last = NULL;
	const char *upload;
	char **headers = NULL, tname[API_NAME_BUF];
	int rc;

	api_resp_init(&resp);
	rc = job_start(api, table_id, what, "/import/csv/jobs",
		       replace_all ? "{\"importMode\":\"ReplaceAll\"}"
				   : "{\"importMode\":\"Append\"}",
		       out, &answer);
	if (rc)
		goto out;
	upload = get_str(answer, "uploadURI");
	if (!upload) {
		log_err("%s '%s' failed: job %s has no uploadURI", what,
			api_table_name(api, table_id, tname, sizeof(tname)),
			out->id);
		rc = -EPROTO;
		goto out;
	}
	rc = api_check_url(upload, "uploadURI");
	if (rc)
		goto out;
	rc = upload_headers(answer, table_id, &headers);
	if (rc)
		goto out;
	put.url = upload;
	put.headers = (const char *const *)headers;
	rc = api_http(api, &put, &resp);
	if (rc)
		goto out;
	log_debug("%s '%s': job %s: %zu bytes uploaded", what, table_id,
		  out->id, len);
	/* the upload moves the job on: poll from a fresh status */
	free(out->status);
	out->status = NULL;
	rc = job_wait(api, table_id, what, "import", out, &last);
out:
	if (headers) {
		for (char **h = headers; *h; h++)
			free(*h);
		free(headers);
	}
	json_object_put(last);
	json_object_put(answer);
	api_resp_release(&resp);
	return rc;
}

/* Is b on a's scheme, host and port? */
static bool same_origin(const char *a, const char *b)
{
	static const CURLUPart parts[] = {CURLUPART_SCHEME, CURLUPART_HOST,
					  CURLUPART_PORT};
	CURLU *ua = curl_url(), *ub = curl_url();
	bool same = ua && ub &&
		    curl_url_set(ua, CURLUPART_URL, a, 0) == CURLUE_OK &&
		    curl_url_set(ub, CURLUPART_URL, b, 0) == CURLUE_OK;

	for (size_t i = 0; same && i < sizeof(parts) / sizeof(parts[0]); i++) {
		char *x = NULL, *y = NULL;

		same = curl_url_get(ua, parts[i], &x, CURLU_DEFAULT_PORT) ==
			   CURLUE_OK &&
		       curl_url_get(ub, parts[i], &y, CURLU_DEFAULT_PORT) ==
			   CURLUE_OK &&
		       strcasecmp(x, y) == 0;
		curl_free(x);
		curl_free(y);
	}
	curl_url_cleanup(ua);
	curl_url_cleanup(ub);
	return same;
}

/* location resolved against base (malloc'ed), or NULL. */
static char *resolve_url(const char *base, const char *location)
{
	CURLU *u = curl_url();
	char *s = NULL, *out = NULL;

	if (u && curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
	    curl_url_set(u, CURLUPART_URL, location, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_URL, &s, 0) == CURLUE_OK)
		out = strdup(s);
	curl_free(s);
	curl_url_cleanup(u);
	return out;
}

/* GET the CSV at downloadURI: with the bearer token only when it is the
 * API's own host, then redirects (to a signed URL) never with it. */
static int download(struct api *api, const char *table_id, const char *uri,
		    char **csv, size_t *len)
{
	struct api_resp resp;
	char *url = strdup(uri), tname[API_NAME_BUF];
	int rc = 0;

	api_resp_init(&resp);
	if (!url)
		return -ENOMEM;
	for (int hop = 0;; hop++) {
		struct api_req req = {.method = "GET",
				      .url = url,
				      .what = "download export of",
				      .subject = table_id,
				      .redirect_ok = true};
		char *next;

		rc = api_check_url(url, "download URL");
		if (rc)
			goto out;
		req.external = hop > 0 || !same_origin(api->api_url, url);
		rc = api_http(api, &req, &resp);
		if (rc)
			goto out;
		if (resp.status < 300 || resp.status > 399)
			break;
		if (hop == FLOWS_MAX_REDIRECTS) {
			log_err(
			    "download export of '%s' failed: more than %d "
			    "redirects",
			    api_table_name(api, table_id, tname, sizeof(tname)),
			    FLOWS_MAX_REDIRECTS);
			rc = -EPROTO;
			goto out;
		}
		next = resolve_url(url, resp.location);
		if (!next) {
			api_log_unexpected(api, "download export of", table_id,
					   &resp, "a redirect to no URL");
			rc = -EPROTO;
			goto out;
		}
		free(url);
		url = next;
	}
	abuf_reserve(&resp.body, 0);
	*csv = abuf_detach(&resp.body, len);
	if (!*csv)
		rc = -ENOMEM;
out:
	api_resp_release(&resp);
	free(url);
	return rc;
}

static int flows_export_csv(struct api *api, const char *table_id, char **csv,
			    size_t *len)
{
	const char *what = "export CSV of";
	struct api_job job = {0};
	struct json_object *answer = NULL, *last = NULL;
	char tname[API_NAME_BUF];
	const char *uri;
	int rc;

	rc =
	    job_start(api, table_id, what, "/export/jobs", NULL, &job, &answer);
	if (rc)
		goto out;
	rc = job_wait(api, table_id, what, "export", &job, &last);
	if (rc)
		goto out;
	uri = get_str(last ? last : answer, "downloadURI");
	if (!uri) {
		log_err("%s '%s' failed: job %s Succeeded without a "
			"downloadURI",
			what,
			api_table_name(api, table_id, tname, sizeof(tname)),
			job.id);
		rc = -EPROTO;
		goto out;
	}
	rc = download(api, table_id, uri, csv, len);
out:
	json_object_put(last);
	json_object_put(answer);
	api_job_release(&job);
	return rc;
}

static void flows_get_caps(struct api *api, struct api_caps *out)
{
	out->numbered_pages = true;
	out->row_ops = true;
	out->csv_jobs = true;
	out->max_page_size = atomic_load(&api->max_page);
	out->max_rows = FLOWS_MAX_ROWS;
}

const struct api_dialect api_dialect_flows = {
    .name = "flows",
    .scope = "architect",
    .max_page_size = FLOWS_MAX_PAGE,
    .rate_requests = 300,
    .rate_window_s = 60,
    .list_tables = flows_list_tables,
    .get_schema = flows_get_schema,
    .put_schema = flows_put_schema,
    .create_table = flows_create_table,
    .delete_table = flows_delete_table,
    .delete_row = flows_row_delete_key,
    .get_page = flows_get_page,
    .row_create = flows_row_create,
    .row_update = flows_row_update,
    .row_delete_key = flows_row_delete_key,
    .import_csv = flows_import_csv,
    .export_csv = flows_export_csv,
    .get_caps = flows_get_caps,
};
