/*
 * cursor.c: the cursor dialect (../shared/spec/cursor-api.md).
 *
 * /api/v2/datatables: cursor paging, rows as {"id", "columns"}, ETags on
 * schemas and tables, batched upserts with all-or-nothing validation.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "api_i.h"
#include "log.h"

#define CURSOR_TABLES_PAGE 100
#define CURSOR_MAX_PAGE 1000
#define CURSOR_MAX_CHUNK 1000

#define CURSOR_BASE "/api/v2/datatables"

/* ---- tables ----------------------------------------------------------- */

/* 100 tables a page: four million tables */
#define CURSOR_LIST_PAGES_MAX 40000

static int cursor_list_tables(struct api *api, struct api_table_list *out)
{
	struct api_resp resp;
	struct json_object *root = NULL, *next;
	char *cursor = NULL, *url = NULL, **seen = NULL;
	size_t cap = 0, npage, nseen = 0, seen_cap = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	for (;;) {
		char suffix[64];

		snprintf(suffix, sizeof(suffix), "?pageSize=%d%s",
			 CURSOR_TABLES_PAGE, cursor ? "&cursor=" : "");
		free(url);
		url = api_url(api, CURSOR_BASE, NULL, suffix, cursor);
		if (!url) {
			rc = -ENOMEM;
			goto out;
		}
		rc = api_list_page(api, url, &resp, &root, out, &cap, &npage);
		if (rc)
			goto out;
		if (!json_object_object_get_ex(root, "nextPageCursor", &next) ||
		    !json_object_is_type(next, json_type_string) ||
		    !json_object_get_string_len(next))
			break;
		/* a cursor seen before is a loop (A → B → A): it would
		 * walk forever */
		for (size_t i = 0; i < nseen; i++) {
			if (strcmp(seen[i], json_object_get_string(next)))
				continue;
			log_err("list tables failed: the server sent a cursor "
				"it had sent before, after %zu pages "
				"(correlation %s)",
				nseen + 1,
				resp.correlation[0] ? resp.correlation
						    : "none");
			rc = -EPROTO;
			goto out;
		}
		if (nseen == CURSOR_LIST_PAGES_MAX) {
			log_err("list tables failed: more than %d pages",
				CURSOR_LIST_PAGES_MAX);
			rc = -EPROTO;
			goto out;
		}
		cursor = strdup(json_object_get_string(next));
		if (!cursor) {
			rc = -ENOMEM;
			goto out;
		}
		if (nseen == seen_cap) {
			size_t ncap = seen_cap ? 2 * seen_cap : 16;
			char **n = realloc(seen, ncap * sizeof(*seen));

			if (!n) {
				free(cursor);
				cursor = NULL;
				rc = -ENOMEM;
				goto out;
			}
			seen = n;
			seen_cap = ncap;
		}
		seen[nseen++] = cursor;
	}
	rc = 0;
out:
	if (rc)
		api_table_list_release(out);
	json_object_put(root);
	api_resp_release(&resp);
	for (size_t i = 0; i < nseen; i++)
		free(seen[i]);
	free(seen);
	free(url);
	return rc;
}

/* ---- schema ----------------------------------------------------------- */

static int cursor_get_schema(struct api *api, const char *table_id,
			     struct api_schema *out)
{
	struct api_req req = {
	    .method = "GET", .what = "get schema of", .subject = table_id};
	struct api_resp resp;
	int rc;

	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	req.url = api_url(api, CURSOR_BASE, table_id, "/schema", NULL);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	rc = api_http(api, &req, &resp);
	if (rc)
		goto out;
	rc = api_schema_from_json(resp.body.p ? resp.body.p : "", resp.body.len,
				  resp.etag, out);
	if (rc == -EPROTO)
		api_log_unexpected(api, "get schema of", table_id, &resp,
				   "not a schema");
out:
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

static int cursor_put_schema(struct api *api, const char *table_id,
			     const char *json, size_t len, const char *if_match,
			     struct api_schema *out)
{
	struct api_req req = {.method = "PUT",
			      .what = "put schema of",
			      .subject = table_id,
			      .body = json,
			      .body_len = len,
			      .content_type = "application/json",
			      .if_match = if_match};
	struct api_resp resp;
	int rc;

	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	req.url = api_url(api, CURSOR_BASE, table_id, "/schema", NULL);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	rc = api_http(api, &req, &resp);
	if (rc)
		goto out;
	if (resp.body.len)
		rc = api_schema_from_json(resp.body.p, resp.body.len, resp.etag,
					  out);
	else /* no body: what we sent is the schema now */
		rc = api_schema_from_json(json, len, resp.etag, out);
	if (rc == -EPROTO)
		api_log_unexpected(api, "put schema of", table_id, &resp,
				   "not a schema");
out:
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* ---- rows ------------------------------------------------------------- */

/* Each row's "id", which single-row deletes take: the pointers and the
 * strings in one block (a million ids are not a million allocations). */
static int page_ids(const struct jdoc *d, uint32_t rows, struct api_page *out)
{
	uint32_t r = jdoc_child(rows), id;
	size_t i, *at = NULL, head = out->nrows * sizeof(*out->ids);
	struct abuf strs;
	int rc = -ENOMEM;

	if (!out->nrows)
		return 0;
	abuf_init(&strs);
	at = malloc(out->nrows * sizeof(*at));
	if (!at)
		goto out;
	for (i = 0; i < out->nrows; i++) {
		id = jdoc_member(d, r, "id");
		at[i] = SIZE_MAX;
		if (id != UINT32_MAX && d->nodes[id].type == JT_STRING) {
			at[i] = strs.len;
			jdoc_str_decode(d, id, &strs);
			abuf_addc(&strs, '\0');
		}
		r = jdoc_next(d, r);
	}
	if (strs.oom)
		goto out;
	out->ids = malloc(head + strs.len);
	if (!out->ids)
		goto out;
	if (strs.len)	/* strs.p is NULL when no row has an id */
		memcpy((char *)out->ids + head, strs.p, strs.len);
	for (i = 0; i < out->nrows; i++)
		out->ids[i] = at[i] == SIZE_MAX
				  ? NULL
				  : (char *)out->ids + head + at[i];
	rc = 0;
out:
	free(at);
	abuf_release(&strs);
	return rc;
}

static int cursor_get_rows(struct api *api, const char *table_id,
			   const struct api_schema *schema, const char *cursor,
			   unsigned page_size, const char *if_none_match,
			   struct api_page *out)
{
	struct api_req req = {.method = "GET",
			      .what = "get rows page of",
			      .subject = table_id,
			      .if_none_match = if_none_match};
	struct api_resp resp;
	struct jdoc *d = &resp.doc;
	uint32_t next;
	char suffix[64];
	int rc;

	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	if (page_size == 0 || page_size > CURSOR_MAX_PAGE)
		page_size = CURSOR_MAX_PAGE;
	out->page_size = page_size;
	out->total = UINT64_MAX; /* cursor pages do not say */
	snprintf(suffix, sizeof(suffix), "/rows?pageSize=%u%s", page_size,
		 cursor ? "&cursor=" : "");
	req.url = api_url(api, CURSOR_BASE, table_id, suffix, cursor);
	if (!req.url) {
		rc = -ENOMEM;
		goto out;
	}
	rc = api_http(api, &req, &resp);
	if (rc)
		goto out;
	if (resp.status == 304) {
		out->not_modified = true;
		goto out;
	}
	rc = api_page_rows(api, table_id, schema, &resp, "rows", 0, out);
	if (rc)
		goto out;
	/* the server's row ids (replace mode deletes by them); api_page_rows
	 * checked that "rows" is an array of rows */
	rc = page_ids(d, jdoc_member(d, 0, "rows"), out);
	if (rc)
		goto out;
	next = jdoc_member(d, 0, "nextPageCursor");
	if (next != UINT32_MAX && d->nodes[next].type == JT_STRING &&
	    d->nodes[next].len) {
		out->next_cursor = jdoc_str_dup(d, next);
		if (!out->next_cursor) {
			rc = -ENOMEM;
			goto out;
		}
	} else if (next != UINT32_MAX && d->nodes[next].type != JT_NULL &&
		   d->nodes[next].type != JT_STRING) {
		api_log_unexpected(api, "get rows page of", table_id, &resp,
				   "nextPageCursor is not a string");
		rc = -EPROTO;
		goto out;
	}
	if (resp.etag && !(out->version = strdup(resp.etag)))
		rc = -ENOMEM;
out:
	if (rc)
		api_page_release(out);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

/* The per-row errors of a 400 invalid.row. */
static int parse_row_errors(const struct api_resp *resp,
			    struct api_upsert_result *out)
{
	struct json_object *root = api_resp_json(resp), *details;
	size_t n, i;
	int rc = 0;

	if (!root || !json_object_object_get_ex(root, "details", &details) ||
	    !json_object_is_type(details, json_type_array))
		goto out;
	n = json_object_array_length(details);
	if (!n)
		goto out;
	out->errors = calloc(n, sizeof(*out->errors));
	if (!out->errors) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		struct json_object *e = json_object_array_get_idx(details, i);
		struct json_object *row, *field, *code;
		struct api_row_error *re = &out->errors[out->nerrors];

		if (!json_object_object_get_ex(e, "row", &row) ||
		    !json_object_is_type(row, json_type_int) ||
		    json_object_get_int64(row) < 0)
			continue;
		re->row = (size_t)json_object_get_int64(row);
		if (json_object_object_get_ex(e, "fieldName", &field) &&
		    json_object_is_type(field, json_type_string))
			re->field = strdup(json_object_get_string(field));
		if (json_object_object_get_ex(e, "errorCode", &code) &&
		    json_object_is_type(code, json_type_string))
			re->code = strdup(json_object_get_string(code));
		out->nerrors++;
	}
out:
	json_object_put(root);
	return rc;
}

static int cursor_upsert(struct api *api, const char *table_id,
			 const char *const *rows, size_t nrows,
			 struct api_upsert_result *out)
{
	struct api_req req = {.method = "POST",
			      .what = "upsert chunk of",
			      .subject = table_id,
			      .content_type = "application/json"};
	struct api_resp resp;
	struct json_object *root = NULL, *v;
	struct abuf body;
	size_t total = 2;
	int rc;

	memset(out, 0, sizeof(*out));
	api_resp_init(&resp);
	abuf_init(&body);
	if (nrows == 0 || nrows > CURSOR_MAX_CHUNK) {
		log_err("upsert chunk of '%s' failed: %zu rows (1 to %d "
			"allowed)",
			table_id, nrows, CURSOR_MAX_CHUNK);
		rc = -EINVAL;
		goto out;
	}
	for (size_t i = 0; i < nrows; i++)
		total += strlen(rows[i]) + 14;
	abuf_reserve(&body, total);
	abuf_addc(&body, '[');
	for (size_t i = 0; i < nrows; i++) {
		if (i)
			abuf_addc(&body, ',');
		abuf_add(&body, "{\"columns\":", 11);
		abuf_adds(&body, rows[i]);
		abuf_addc(&body, '}');
	}
	abuf_addc(&body, ']');
	req.url =
	    api_url(api, CURSOR_BASE, table_id, "/rows?upsert=true", NULL);
	if (body.oom || !req.url) {
		rc = -ENOMEM;
		goto out;
	}
	req.body = body.p;
	req.body_len = body.len;
	rc = api_http(api, &req, &resp);
	out->attempts = resp.attempts;
	out->throttled = resp.throttled;
	if (rc == -EINVAL && resp.status == 400) {
		int rc2 = parse_row_errors(&resp, out);

		if (rc2)
			rc = rc2;
		goto out;
	}
	if (rc)
		goto out;
	root = api_resp_json(&resp);
	if (!root || !json_object_is_type(root, json_type_object)) {
		api_log_unexpected(api, "upsert chunk of", table_id, &resp,
				   "not JSON");
		rc = -EPROTO;
		goto out;
	}
	if (json_object_object_get_ex(root, "inserted", &v) &&
	    json_object_is_type(v, json_type_int) &&
	    json_object_get_int64(v) >= 0)
		out->inserted = (size_t)json_object_get_int64(v);
	if (json_object_object_get_ex(root, "updated", &v) &&
	    json_object_is_type(v, json_type_int) &&
	    json_object_get_int64(v) >= 0)
		out->updated = (size_t)json_object_get_int64(v);
	if (resp.etag && !(out->version = strdup(resp.etag)))
		rc = -ENOMEM;
out:
	json_object_put(root);
	abuf_release(&body);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

static int cursor_delete_row(struct api *api, const char *table_id,
			     const char *row_id)
{
	struct api_req req = {.method = "DELETE",
			      .what = "delete row of",
			      .subject = table_id,
			      .gone_ok = true};
	struct api_resp resp;
	int rc = -ENOMEM;

	api_resp_init(&resp);
	req.url = api_url(api, CURSOR_BASE, table_id, "/rows/", row_id);
	if (req.url)
		rc = api_http(api, &req, &resp);
	api_resp_release(&resp);
	free((char *)req.url);
	return rc;
}

static void cursor_get_caps(struct api *api, struct api_caps *out)
{
	(void)api;
	out->versions = true;
	out->max_page_size = CURSOR_MAX_PAGE;
}

const struct api_dialect api_dialect_cursor = {
    .name = "cursor",
    .scope = "data-table:read data-table:write",
    .max_page_size = CURSOR_MAX_PAGE,
    .list_tables = cursor_list_tables,
    .get_schema = cursor_get_schema,
    .put_schema = cursor_put_schema,
    .get_rows = cursor_get_rows,
    .upsert = cursor_upsert,
    .delete_row = cursor_delete_row,
    .get_caps = cursor_get_caps,
};
