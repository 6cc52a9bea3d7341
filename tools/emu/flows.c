/*
 * The production dialect of dtfs-emu: /api/v2/flows/datatables (tables,
 * rows one at a time, CSV import and export jobs) and the transfer URLs a
 * job hands out (/uploads/... for the CSV upload, /signed/... for the
 * signed download). See ../../../shared/spec/genesys-flows-api.md and
 * genesys-flows-facts.md, and tools/emu/README.md for the choices made
 * where those are silent.
 *
 * Tables and rows live in the one store the cursor dialect serves: a write
 * through either dialect gives the table a new version from the one
 * counter. A table is visible here when its primary key is one string
 * column; that column is the property `key`.
 *
 * Locks: the store rwlock, then (never the other way) e->lock for stats and
 * config. The jobs lock is never held while the store lock is taken.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <microhttpd.h>

#include "emu_i.h"
#include "log.h"
#include "utf8.h"

#define TABLES_PAGE_DEFAULT 25
#define TABLES_PAGE_MAX 500
#define ROWS_PAGE_DEFAULT 25
#define JOBS_PAGE_DEFAULT 25
#define JOBS_PAGE_MAX 100
#define MAX_ROW_ERRORS 100 /* per-row details kept in errorInformation */
#define FLOWS_PREFIX "flows/datatables"

/* ---- small helpers ---- */

static const char *query(struct emu_ctx *c, const char *name)
{
	return MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND,
					   name);
}

static bool query_bool(struct emu_ctx *c, const char *name, bool def, bool *out)
{
	const char *v = query(c, name);

	if (!v) {
		*out = def;
		return true;
	}
	if (strcasecmp(v, "true") == 0) {
		*out = true;
		return true;
	}
	if (strcasecmp(v, "false") == 0) {
		*out = false;
		return true;
	}
	emu_reply_error(c->rp, 400, "bad.request", NULL,
			"%s must be true or false", name);
	return false;
}

/* Characters (code points) of a UTF-8 string; -1 if not UTF-8. */
static long utf8_chars(const char *s, size_t n)
{
	long count = 0;

	for (size_t i = 0; i < n; count++) {
		size_t len = utf8_seq_len((const unsigned char *)s + i, n - i);

		if (!len)
			return -1;
		i += len;
	}
	return count;
}

static void now_iso(char out[32])
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(out, 20, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + 19, 13, ".%03dZ", (int)(ts.tv_nsec / 1000000L));
}

static void config_copy(struct emu *e, struct emu_config *out)
{
	pthread_mutex_lock(&e->lock);
	*out = e->config;
	pthread_mutex_unlock(&e->lock);
}

static void stats_add(struct emu *e, uint64_t served, uint64_t written,
		      uint64_t deleted)
{
	pthread_mutex_lock(&e->lock);
	e->stats.rows_served += served;
	e->stats.rows_written += written;
	e->stats.rows_deleted += deleted;
	pthread_mutex_unlock(&e->lock);
}

static struct json_object *detail(const char *code, const char *field,
				  const char *entity_id,
				  const char *entity_name)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "errorCode", json_object_new_string(code));
	if (field)
		json_object_object_add(d, "fieldName",
				       json_object_new_string(field));
	if (entity_id)
		json_object_object_add(d, "entityId",
				       json_object_new_string(entity_id));
	if (entity_name)
		json_object_object_add(d, "entityName",
				       json_object_new_string(entity_name));
	return d;
}

static struct json_object *details1(struct json_object *d)
{
	struct json_object *a = json_object_new_array();

	json_object_array_add(a, d);
	return a;
}

/* 400 limit error: the platform's kind (a `limit` object names it). */
static void reply_limit(struct emu_reply *rp, const char *key, long value,
			const char *what)
{
	emu_reply_error(rp, 400, "flows.datatables.limit.exceeded", NULL,
			"%s: the limit is %ld", what, value);
	/* add the limit object the SDK's ErrorBody models */
	struct json_object *o = emu_json_parse(rp->body, rp->len);

	if (!o)
		return;
	struct json_object *l = json_object_new_object();

	json_object_object_add(l, "key", json_object_new_string(key));
	json_object_object_add(l, "namespace",
			       json_object_new_string("flows.datatables"));
	json_object_object_add(l, "value", json_object_new_int64(value));
	json_object_object_add(o, "limit", l);
	emu_reply_json(rp, 400, o);
}

/* ---- routing ---- */

static bool seg(const char **p, char *out, size_t outsz)
{
	const char *s = *p;
	size_t n = strcspn(s, "/");

	if (n == 0 || n >= outsz)
		return false;
	memcpy(out, s, n);
	out[n] = '\0';
	*p = s + n;
	return true;
}

bool emu_flows_classify(const char *method, const char *path,
			struct emu_target *r)
{
	static const size_t plen = sizeof(FLOWS_PREFIX) - 1;
	bool get = strcmp(method, "GET") == 0;
	bool post = strcmp(method, "POST") == 0;
	bool put = strcmp(method, "PUT") == 0;
	bool del = strcmp(method, "DELETE") == 0;
	const char *p;

	if (strncmp(path, "downloads/", 10) == 0) {
		r->prod = true;
		p = path + 10;
		if (!seg(&p, r->job, sizeof(r->job)) || *p)
			return true;
		if (get)
			r->route = EMU_R_DOWNLOAD;
		else
			r->bad_method = true;
		return true;
	}
	if (strncmp(path, FLOWS_PREFIX, plen) != 0 ||
	    (path[plen] != '\0' && path[plen] != '/'))
		return false;
	r->prod = true;
	p = path + plen;
	if (*p == '\0' || strcmp(p, "/") == 0) {
		if (get || post)
			r->route = EMU_R_FLOWS_LIST;
		else
			r->bad_method = true;
		return true;
	}
	p++;
	if (!seg(&p, r->table, sizeof(r->table)))
		return true;
	if (*p == '\0') {
		if (get || put || del)
			r->route = EMU_R_FLOWS_TABLE;
		else
			r->bad_method = true;
		return true;
	}
	if (strcmp(p, "/rows") == 0) {
		if (get)
			r->route = EMU_R_FLOWS_ROWS_GET;
		else if (post)
			r->route = EMU_R_FLOWS_ROW_POST;
		else
			r->bad_method = true;
		return true;
	}
	if (strncmp(p, "/rows/", 6) == 0 && p[6] && !strchr(p + 6, '/')) {
		r->key = emu_percent_decode(p + 6, false);
		if (!r->key)
			return true;
		if (get)
			r->route = EMU_R_FLOWS_ROW_GET;
		else if (put)
			r->route = EMU_R_FLOWS_ROW_PUT;
		else if (del)
			r->route = EMU_R_FLOWS_ROW_DELETE;
		else
			r->bad_method = true;
		return true;
	}
	if (strcmp(p, "/import/csv/jobs") == 0 ||
	    strcmp(p, "/export/jobs") == 0) {
		r->route = p[1] == 'i' ? EMU_R_IMPORT_JOB : EMU_R_EXPORT_JOB;
		r->bad_method = !post;
		return true;
	}
	if (strcmp(p, "/import/jobs") == 0) {
		/* GET: recent jobs; POST: the deprecated multipart upload */
		r->route = EMU_R_IMPORT_JOB;
		r->bad_method = !get && !post;
		return true;
	}
	if (strncmp(p, "/import/jobs/", 13) == 0 ||
	    strncmp(p, "/export/jobs/", 13) == 0) {
		bool imp = p[1] == 'i';

		p += 13;
		if (!seg(&p, r->job, sizeof(r->job)) || *p)
			return true;
		r->route = imp ? EMU_R_IMPORT_JOB : EMU_R_EXPORT_JOB;
		r->bad_method = !get;
		return true;
	}
	return true;
}

bool emu_transfer_classify(const char *method, const char *path,
			   struct emu_target *r)
{
	const char *p;
	int route;

	if (strncmp(path, "/uploads/", 9) == 0) {
		p = path + 9;
		route = EMU_R_UPLOAD;
	} else if (strncmp(path, "/signed/", 8) == 0) {
		p = path + 8;
		route = EMU_R_DOWNLOAD_SIGNED;
	} else {
		return false;
	}
	if (!seg(&p, r->job, sizeof(r->job)) || *p)
		return true;
	r->route = route;
	r->bad_method = strcmp(method, route == EMU_R_UPLOAD ? "PUT" : "GET");
	return true;
}

/* ---- tables ---- */

/* The table with this id when it is visible in the production dialect, with
 * *keycol its key column; else a 404 reply. Store lock held. */
static struct emu_table *find_table(struct emu_ctx *c, const char *id,
				    int *keycol)
{
	struct emu_table *t = emu_store_find(&c->e->store, id);
	int k = t ? emu_table_prod_key(t) : -1;

	if (!t || k < 0) {
		emu_reply_error(c->rp, 404, "flows.datatables.table.not.found",
				details1(detail("flows.datatables.table.not."
						"found",
						NULL, id, NULL)),
				"Not found: no data table with id '%.64s'", id);
		return NULL;
	}
	*keycol = k;
	return t;
}

static void add_json_string(struct emu_buf *b, const char *s)
{
	struct json_object *o = json_object_new_string(s);

	emu_buf_adds(b, emu_json_text(o));
	json_object_put(o);
}

static void table_json(const struct emu_table *t, int keycol, bool schema,
		       struct emu_buf *b)
{
	emu_buf_addf(b, "{\"id\":\"%s\",\"name\":", t->id);
	add_json_string(b, t->name);
	emu_buf_adds(b, ",\"description\":");
	add_json_string(b, t->description);
	emu_buf_adds(b, ",\"division\":{\"id\":");
	add_json_string(b, t->division);
	emu_buf_adds(b, ",\"name\":");
	add_json_string(b, strcmp(t->division, EMU_HOME_DIVISION) == 0
			       ? EMU_HOME_DIVISION_NAME
			       : t->division);
	emu_buf_adds(b, ",\"selfUri\":");
	{
		char uri[160];

		snprintf(uri, sizeof(uri), "/api/v2/authorization/divisions/%s",
			 t->division);
		add_json_string(b, uri);
	}
	emu_buf_adds(b, "}");
	if (schema) {
		emu_buf_adds(b, ",\"schema\":");
		emu_schema_prod_json(t, keycol, b);
	}
	emu_buf_addf(b, ",\"selfUri\":\"/api/v2/flows/datatables/%s\"}", t->id);
}

/* pageNumber and pageSize of a listing: 400 and false when out of range. */
static bool paging(struct emu_ctx *c, long def, long max, long *number,
		   long *size)
{
	const char *n = query(c, "pageNumber");
	const char *s = query(c, "pageSize");

	*number = 1;
	*size = def < max ? def : max;
	if (n && emu_parse_long(n, 1, 1000000000, number)) {
		emu_reply_error(c->rp, 400, "bad.request", NULL,
				"pageNumber must be an integer from 1");
		return false;
	}
	if (s && emu_parse_long(s, 1, max, size)) {
		emu_reply_error(c->rp, 400, "bad.request", NULL,
				"pageSize must be an integer from 1 to %ld",
				max);
		return false;
	}
	return true;
}

/* The paging fields of a listing (after "entities"), the URIs built from
 * `base` (a path with a query ending in '?' or '&'). */
static void listing_tail(struct emu_buf *b, const char *base, long number,
			 long size, size_t total, bool uris)
{
	long count = (long)((total + (size_t)size - 1) / (size_t)size);

	emu_buf_addf(b, ",\"pageSize\":%ld,\"pageNumber\":%ld,\"total\":%zu",
		     size, number, total);
	if (uris) {
		emu_buf_addf(b, ",\"firstUri\":\"%spageNumber=1&pageSize=%ld\"",
			     base, size);
		emu_buf_addf(b,
			     ",\"lastUri\":\"%spageNumber=%ld&pageSize=%ld\"",
			     base, count ? count : 1, size);
		emu_buf_addf(b,
			     ",\"selfUri\":\"%spageNumber=%ld&pageSize=%ld\"",
			     base, number, size);
		if (number < count)
			emu_buf_addf(b,
				     ",\"nextUri\":\"%spageNumber=%ld&"
				     "pageSize=%ld\"",
				     base, number + 1, size);
		if (number > 1)
			emu_buf_addf(b,
				     ",\"previousUri\":\"%spageNumber=%ld&"
				     "pageSize=%ld\"",
				     base, number - 1, size);
	}
	emu_buf_addf(b, ",\"pageCount\":%ld}", count);
}

/* Case-insensitive match with '*' for any run of characters (greedy, with
 * one backtrack point: linear in practice, never exponential). */
static bool name_match(const char *p, const char *s)
{
	const char *star = NULL, *resume = s;

	while (*s) {
		if (*p == '*') {
			star = p++;
			resume = s;
		} else if (*p && tolower((unsigned char)*p) ==
				     tolower((unsigned char)*s)) {
			p++;
			s++;
		} else if (star) {
			p = star + 1;
			s = ++resume;
		} else {
			return false;
		}
	}
	while (*p == '*')
		p++;
	return *p == '\0';
}

struct div_filter {
	const char *ids[16];
	size_t n;
};

static enum MHD_Result collect_div(void *cls, enum MHD_ValueKind kind,
				   const char *key, const char *value)
{
	struct div_filter *f = cls;

	(void)kind;
	if (strcmp(key, "divisionId") == 0 && value &&
	    f->n < sizeof(f->ids) / sizeof(f->ids[0]))
		f->ids[f->n++] = value;
	return MHD_YES;
}

static bool by_name;
static bool descending;

static int table_cmp(const void *a, const void *b)
{
	const struct emu_table *x = *(const struct emu_table *const *)a;
	const struct emu_table *y = *(const struct emu_table *const *)b;
	int c = by_name ? strcmp(x->name, y->name) : strcmp(x->id, y->id);

	return descending ? -c : c;
}

static void tables_list(struct emu_ctx *c)
{
	static pthread_mutex_t sort_lock = PTHREAD_MUTEX_INITIALIZER;
	struct emu_store *s = &c->e->store;
	const char *name = query(c, "name");
	const char *sort_by = query(c, "sortBy");
	const char *order = query(c, "sortOrder");
	const char *expand = query(c, "expand");
	bool schema = expand && strcmp(expand, "schema") == 0;
	struct div_filter divs = {{NULL}, 0};
	struct emu_table **v = NULL;
	size_t n = 0;
	long number, size;
	struct emu_buf b;

	if (!paging(c, TABLES_PAGE_DEFAULT, TABLES_PAGE_MAX, &number, &size))
		return;
	if (sort_by && strcmp(sort_by, "id") != 0 &&
	    strcmp(sort_by, "name") != 0) {
		emu_reply_error(c->rp, 400, "bad.request", NULL,
				"sortBy must be id or name");
		return;
	}
	if (order && strcasecmp(order, "ascending") != 0 &&
	    strcasecmp(order, "descending") != 0 &&
	    strcasecmp(order, "asc") != 0 && strcasecmp(order, "desc") != 0) {
		emu_reply_error(c->rp, 400, "bad.request", NULL,
				"sortOrder must be ascending or descending");
		return;
	}
	MHD_get_connection_values(c->conn, MHD_GET_ARGUMENT_KIND, collect_div,
				  &divs);
	emu_buf_init(&b);
	pthread_rwlock_rdlock(&s->lock);
	v = emu_xcalloc(s->ntables + 1, sizeof(*v));
	for (size_t i = 0; i < s->ntables; i++) {
		struct emu_table *t = s->tables[i];
		bool div_ok = divs.n == 0;

		if (emu_table_prod_key(t) < 0)
			continue;
		if (name && !name_match(name, t->name))
			continue;
		for (size_t d = 0; d < divs.n; d++)
			div_ok |= strcmp(divs.ids[d], t->division) == 0;
		if (div_ok)
			v[n++] = t;
	}
	pthread_mutex_lock(&sort_lock);
	by_name = sort_by && strcmp(sort_by, "name") == 0;
	descending = order && strncasecmp(order, "desc", 4) == 0;
	qsort(v, n, sizeof(*v), table_cmp);
	pthread_mutex_unlock(&sort_lock);
	emu_buf_adds(&b, "{\"entities\":[");
	size_t from = (size_t)(number - 1) * (size_t)size;

	for (size_t i = from; i < n && i < from + (size_t)size; i++) {
		if (i > from)
			emu_buf_adds(&b, ",");
		table_json(v[i], emu_table_prod_key(v[i]), schema, &b);
	}
	pthread_rwlock_unlock(&s->lock);
	emu_buf_adds(&b, "]");
	listing_tail(&b,
		     schema ? "/api/v2/flows/datatables?expand=schema&"
			    : "/api/v2/flows/datatables?",
		     number, size, n, true);
	free(v);
	emu_reply_buf(c->rp, 200, &b);
}

static void table_get(struct emu_ctx *c, const struct emu_target *r)
{
	const char *expand = query(c, "expand");
	struct emu_table *t;
	int keycol;
	struct emu_buf b;

	emu_buf_init(&b);
	pthread_rwlock_rdlock(&c->e->store.lock);
	t = find_table(c, r->table, &keycol);
	if (t)
		table_json(t, keycol, expand && strcmp(expand, "schema") == 0,
			   &b);
	pthread_rwlock_unlock(&c->e->store.lock);
	if (t)
		emu_reply_buf(c->rp, 200, &b);
	else
		emu_buf_release(&b);
}

/* Name rules: 1..max characters, no '/' or '\'. 0, or a 400 reply. */
static int check_name(struct emu_ctx *c, const char *name, long max)
{
	long n = utf8_chars(name, strlen(name));

	if (n <= 0 || n > max || strpbrk(name, "/\\")) {
		emu_reply_error(
		    c->rp, 400, "flows.datatables.syntax.error",
		    details1(detail("invalid.name", "name", NULL, NULL)),
		    "a table name must have 1 to %ld characters and no '/' "
		    "or '\\'",
		    max);
		return -EINVAL;
	}
	return 0;
}

/* The parts of a DataTable body: name, description, division id, schema. */
struct table_body {
	struct json_object *o;
	const char *name;
	const char *description;
	const char *division;
	struct emu_schema schema;
};

static int table_body_parse(struct emu_ctx *c, struct table_body *tb,
			    const struct emu_config *cfg)
{
	struct json_object *v, *div, *sch;
	char msg[300];

	memset(tb, 0, sizeof(*tb));
	tb->o = emu_json_parse(c->rq->body.data ? c->rq->body.data : "",
			       c->rq->body.len);
	if (!tb->o || !json_object_is_type(tb->o, json_type_object)) {
		emu_reply_error(c->rp, 400, "flows.datatables.syntax.error",
				NULL, "the body must be a DataTable object");
		return -EINVAL;
	}
	if (!json_object_object_get_ex(tb->o, "name", &v) ||
	    !json_object_is_type(v, json_type_string)) {
		emu_reply_error(
		    c->rp, 400, "flows.datatables.syntax.error",
		    details1(detail("required", "name", NULL, NULL)),
		    "the table needs a name");
		return -EINVAL;
	}
	tb->name = json_object_get_string(v);
	if (check_name(c, tb->name, cfg->max_name_length))
		return -EINVAL;
	if (json_object_object_get_ex(tb->o, "description", &v) && v) {
		if (!json_object_is_type(v, json_type_string)) {
			emu_reply_error(c->rp, 400,
					"flows.datatables.syntax.error", NULL,
					"description must be a string");
			return -EINVAL;
		}
		tb->description = json_object_get_string(v);
	}
	if (json_object_object_get_ex(tb->o, "division", &div) && div) {
		if (!json_object_is_type(div, json_type_object) ||
		    (json_object_object_get_ex(div, "id", &v) && v &&
		     !json_object_is_type(v, json_type_string))) {
			emu_reply_error(c->rp, 400,
					"flows.datatables.syntax.error", NULL,
					"division must be {\"id\": \"...\"}");
			return -EINVAL;
		}
		if (v && json_object_get_string_len(v) > 0 &&
		    json_object_get_string_len(v) < 64)
			tb->division = json_object_get_string(v);
	}
	if (!json_object_object_get_ex(tb->o, "schema", &sch) ||
	    emu_schema_parse_prod(sch, &tb->schema, msg, sizeof(msg))) {
		emu_reply_error(
		    c->rp, 400, "flows.datatables.syntax.error",
		    details1(detail("invalid.schema", "schema", NULL, NULL)),
		    "the schema is not valid: %s", sch ? msg : "it is missing");
		return -EINVAL;
	}
	if ((long)tb->schema.ncols > cfg->max_properties) {
		reply_limit(c->rp, "properties.per.table", cfg->max_properties,
			    "too many properties");
		return -EINVAL;
	}
	for (size_t i = 0; i < tb->schema.ncols; i++) {
		long n = utf8_chars(tb->schema.cols[i].name,
				    strlen(tb->schema.cols[i].name));

		if (n > cfg->max_name_length) {
			emu_reply_error(
			    c->rp, 400, "flows.datatables.syntax.error",
			    details1(detail("invalid.name",
					    tb->schema.cols[i].name, NULL,
					    NULL)),
			    "a property name has at most %ld characters",
			    cfg->max_name_length);
			return -EINVAL;
		}
	}
	return 0;
}

static void table_body_release(struct table_body *tb)
{
	emu_schema_release(&tb->schema);
	json_object_put(tb->o);
}

static bool name_taken(struct emu_store *s, const char *name,
		       const struct emu_table *self)
{
	for (size_t i = 0; i < s->ntables; i++)
		if (s->tables[i] != self &&
		    strcmp(s->tables[i]->name, name) == 0)
			return true;
	return false;
}

static void reply_name_taken(struct emu_ctx *c, const char *name)
{
	emu_reply_error(c->rp, 409, "flows.datatables.name.conflict",
			details1(detail("duplicate.name", "name", NULL, name)),
			"a data table named '%.256s' already exists", name);
}

static void table_create(struct emu_ctx *c)
{
	struct emu_store *s = &c->e->store;
	struct emu_config cfg;
	struct table_body tb;
	struct emu_table *t = NULL;
	struct emu_buf b;

	config_copy(c->e, &cfg);
	emu_buf_init(&b);
	if (table_body_parse(c, &tb, &cfg))
		goto out;
	t = emu_table_new(tb.name, tb.description);
	if (tb.division) {
		free(t->division);
		t->division = emu_xstrdup(tb.division);
	}
	t->schema = tb.schema;
	tb.schema.cols = NULL;
	tb.schema.ncols = 0;
	pthread_rwlock_wrlock(&s->lock);
	if ((long)s->ntables >= cfg.max_tables) {
		pthread_rwlock_unlock(&s->lock);
		reply_limit(c->rp, "tables.per.organization", cfg.max_tables,
			    "too many tables");
		goto out;
	}
	if (name_taken(s, t->name, NULL) || emu_store_insert(s, t)) {
		pthread_rwlock_unlock(&s->lock);
		reply_name_taken(c, tb.name);
		goto out;
	}
	table_json(t, emu_table_prod_key(t), true, &b);
	t = NULL;
	pthread_rwlock_unlock(&s->lock);
	emu_reply_buf(c->rp, 200, &b);
out:
	emu_buf_release(&b);
	emu_table_free(t);
	table_body_release(&tb);
}

/* Merge the schema of a PUT into the table's: every existing property must
 * stay with its type; titles, defaults and displayOrders may change; new
 * properties are added. Builds the new schema in *out. 0 or a 400 reply. */
static int schema_merge(struct emu_ctx *c, const struct emu_table *t,
			int keycol, const struct emu_schema *in,
			struct emu_schema *out)
{
	const struct emu_schema *cur = &t->schema;
	struct emu_schema m = {NULL, 0};

	m.cols = emu_xcalloc(cur->ncols + in->ncols, sizeof(*m.cols));
	for (size_t i = 0; i < cur->ncols; i++) {
		const struct emu_column *oc = &cur->cols[i];
		const char *pname = emu_prod_name(t, keycol, i);
		const struct emu_column *nc = NULL;
		struct emu_column *mc = &m.cols[m.ncols++];

		for (size_t j = 0; j < in->ncols; j++)
			if (strcmp(in->cols[j].name, pname) == 0)
				nc = &in->cols[j];
		mc->name = emu_xstrdup(oc->name);
		mc->json_name = emu_xstrdup(oc->json_name);
		mc->type = oc->type;
		mc->key = oc->key;
		if (!nc) {
			emu_schema_release(&m);
			emu_reply_error(
			    c->rp, 400, "flows.datatables.schema.exception",
			    details1(detail("property.removed", pname, t->id,
					    t->name)),
			    "property '%.200s' cannot be removed: properties "
			    "may only be added",
			    pname);
			return -EINVAL;
		}
		/* a date column shows as a string property */
		if (nc->type !=
		    (oc->type == EMU_T_DATE ? EMU_T_STRING : oc->type)) {
			emu_schema_release(&m);
			emu_reply_error(
			    c->rp, 400, "flows.datatables.schema.exception",
			    details1(detail("property.type.changed", pname,
					    t->id, t->name)),
			    "property '%.200s' cannot change its type", pname);
			return -EINVAL;
		}
		mc->display = nc->display;
		mc->title = nc->title ? emu_xstrdup(nc->title) : NULL;
		mc->def = nc->def ? emu_xstrdup(nc->def) : NULL;
	}
	for (size_t j = 0; j < in->ncols; j++) {
		const struct emu_column *nc = &in->cols[j];
		bool old = false;

		for (size_t i = 0; i < cur->ncols; i++)
			old |=
			    strcmp(emu_prod_name(t, keycol, i), nc->name) == 0;
		if (old)
			continue;
		for (size_t i = 0; i < cur->ncols; i++) {
			if (strcmp(cur->cols[i].name, nc->name) == 0) {
				emu_schema_release(&m);
				emu_reply_error(
				    c->rp, 400,
				    "flows.datatables.schema.exception", NULL,
				    "property '%.200s' clashes with the key "
				    "column's name",
				    nc->name);
				return -EINVAL;
			}
		}
		struct emu_column *mc = &m.cols[m.ncols++];

		mc->name = emu_xstrdup(nc->name);
		mc->json_name = emu_xstrdup(nc->json_name);
		mc->type = nc->type;
		mc->display = nc->display;
		mc->title = nc->title ? emu_xstrdup(nc->title) : NULL;
		mc->def = nc->def ? emu_xstrdup(nc->def) : NULL;
	}
	*out = m;
	return 0;
}

static void table_put(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_store *s = &c->e->store;
	struct emu_config cfg;
	struct table_body tb;
	struct emu_schema merged = {NULL, 0};
	struct emu_table *t;
	int keycol;
	struct emu_buf b;
	struct json_object *v;

	config_copy(c->e, &cfg);
	emu_buf_init(&b);
	if (table_body_parse(c, &tb, &cfg))
		goto out;
	if (json_object_object_get_ex(tb.o, "id", &v) && v &&
	    (!json_object_is_type(v, json_type_string) ||
	     strcmp(json_object_get_string(v), r->table) != 0)) {
		emu_reply_error(c->rp, 400, "flows.datatables.syntax.error",
				NULL, "the body's id is not the table's id");
		goto out;
	}
	pthread_rwlock_wrlock(&s->lock);
	t = find_table(c, r->table, &keycol);
	if (!t) {
		pthread_rwlock_unlock(&s->lock);
		goto out;
	}
	if (name_taken(s, tb.name, t)) {
		pthread_rwlock_unlock(&s->lock);
		reply_name_taken(c, tb.name);
		goto out;
	}
	if (schema_merge(c, t, keycol, &tb.schema, &merged)) {
		pthread_rwlock_unlock(&s->lock);
		goto out;
	}
	if ((long)merged.ncols > cfg.max_properties) {
		pthread_rwlock_unlock(&s->lock);
		emu_schema_release(&merged);
		reply_limit(c->rp, "properties.per.table", cfg.max_properties,
			    "too many properties");
		goto out;
	}
	emu_schema_release(&t->schema);
	t->schema = merged;
	emu_store_rename(s, t, tb.name);
	free(t->description);
	t->description = emu_xstrdup(tb.description ? tb.description : "");
	if (tb.division) {
		free(t->division);
		t->division = emu_xstrdup(tb.division);
	}
	emu_table_touch(s, t);
	t->schema_version = t->version;
	table_json(t, emu_table_prod_key(t), true, &b);
	pthread_rwlock_unlock(&s->lock);
	emu_reply_buf(c->rp, 200, &b);
out:
	emu_buf_release(&b);
	table_body_release(&tb);
}

static void table_delete(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_store *s = &c->e->store;
	struct emu_table *t;
	int keycol;
	size_t rows = 0;
	bool force;

	if (!query_bool(c, "force", false, &force))
		return;
	pthread_rwlock_wrlock(&s->lock);
	t = find_table(c, r->table, &keycol);
	if (t) {
		rows = t->nrows;
		emu_store_remove(s, t);
	}
	pthread_rwlock_unlock(&s->lock);
	if (!t)
		return;
	stats_add(c->e, 0, 0, rows);
	emu_reply_empty(c->rp, 204);
}

/* ---- rows ---- */

/* The members of a stored row (compact JSON written by emu_row_build, in
 * schema order): the value text of each column, or NULL. */
static const char *skip_string(const char *p)
{
	for (p++; *p != '"'; p++)
		if (*p == '\\')
			p++;
	return p + 1;
}

static void row_split(const struct emu_schema *s, const struct emu_row *r,
		      const char **vals, size_t *lens)
{
	const char *p = emu_row_json(r) + 1;
	size_t col = 0;

	for (size_t i = 0; i < s->ncols; i++)
		vals[i] = NULL;
	while (*p == '"') {
		const char *name = p;
		const char *end = skip_string(p);
		size_t nlen = (size_t)(end - name);

		while (col < s->ncols &&
		       (strlen(s->cols[col].json_name) != nlen ||
			memcmp(s->cols[col].json_name, name, nlen) != 0))
			col++;
		p = end + 1; /* ':' */
		const char *v = p;

		if (*p == '"')
			p = skip_string(p);
		else
			while (*p != ',' && *p != '}')
				p++;
		if (col < s->ncols) {
			vals[col] = v;
			lens[col] = (size_t)(p - v);
		}
		if (*p == ',')
			p++;
	}
}

/* A row as the production dialect writes it: {"key": ..., props in display
 * order} (values absent in the store are left out), or {"key": ...}. */
static void row_out(const struct emu_table *t, int keycol, const size_t *order,
		    const struct emu_row *r, bool brief, const char **vals,
		    size_t *lens, struct emu_buf *b)
{
	emu_buf_add(b, "{\"key\":", 7);
	emu_buf_add(b, emu_row_key(r), r->key_len);
	if (brief) {
		emu_buf_add(b, "}", 1);
		return;
	}
	row_split(&t->schema, r, vals, lens);
	for (size_t k = 0; k < t->schema.ncols; k++) {
		size_t i = order[k];

		if ((int)i == keycol || !vals[i])
			continue;
		emu_buf_add(b, ",", 1);
		emu_buf_adds(b, t->schema.cols[i].json_name);
		emu_buf_add(b, ":", 1);
		emu_buf_add(b, vals[i], lens[i]);
	}
	emu_buf_add(b, "}", 1);
}

struct row_scratch {
	const char **vals;
	size_t *lens;
	size_t *order;
};

static void scratch_init(struct row_scratch *sc, const struct emu_schema *s)
{
	sc->vals = emu_xcalloc(s->ncols + 1, sizeof(*sc->vals));
	sc->lens = emu_xcalloc(s->ncols + 1, sizeof(*sc->lens));
	sc->order = emu_display_order(s);
}

static void scratch_release(struct row_scratch *sc)
{
	free(sc->vals);
	free(sc->lens);
	free(sc->order);
}

static void rows_get(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_config cfg;
	struct emu_table *t;
	int keycol;
	long number, size;
	bool brief, desc = false;
	const char *order = query(c, "sortOrder");
	struct emu_buf b;
	struct row_scratch sc;
	char base[160];
	size_t served = 0, total;

	config_copy(c->e, &cfg);
	if (!paging(c, ROWS_PAGE_DEFAULT, cfg.max_flows_page_size, &number,
		    &size) ||
	    !query_bool(c, "showbrief", true, &brief))
		return;
	if (order) {
		if (strcasecmp(order, "descending") == 0 ||
		    strcasecmp(order, "desc") == 0) {
			desc = true;
		} else if (strcasecmp(order, "ascending") != 0 &&
			   strcasecmp(order, "asc") != 0) {
			emu_reply_error(c->rp, 400, "bad.request", NULL,
					"sortOrder must be ascending or "
					"descending");
			return;
		}
	}
	emu_buf_init(&b);
	pthread_rwlock_rdlock(&c->e->store.lock);
	t = find_table(c, r->table, &keycol);
	if (!t) {
		pthread_rwlock_unlock(&c->e->store.lock);
		return;
	}
	scratch_init(&sc, &t->schema);
	total = t->nrows;
	emu_buf_adds(&b, "{\"entities\":[");
	size_t from = (size_t)(number - 1) * (size_t)size;

	for (size_t k = from; k < total && k < from + (size_t)size; k++) {
		size_t i = desc ? total - 1 - k : k;

		if (k > from)
			emu_buf_add(&b, ",", 1);
		row_out(t, keycol, sc.order, t->rows[i], brief, sc.vals,
			sc.lens, &b);
		served++;
	}
	snprintf(base, sizeof(base), "/api/v2/flows/datatables/%s/rows?%s",
		 t->id, brief ? "" : "showbrief=false&");
	pthread_rwlock_unlock(&c->e->store.lock);
	scratch_release(&sc);
	emu_buf_adds(&b, "]");
	listing_tail(&b, base, number, size, total, true);
	stats_add(c->e, served, 0, 0);
	emu_reply_buf(c->rp, 200, &b);
}

static void reply_row_not_found(struct emu_ctx *c, const struct emu_table *t,
				const char *key)
{
	emu_reply_error(c->rp, 404, "flows.datatables.row.not.found",
			details1(detail("flows.datatables.row.not.found", "key",
					t->id, key)),
			"Not found: no row with key '%.256s'", key);
}

/* The stored key text (JSON string) of a key. */
static char *key_text(const char *key)
{
	struct json_object *o = json_object_new_string(key);
	char *s = emu_xstrdup(emu_json_text(o));

	json_object_put(o);
	return s;
}

static void row_get(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_table *t;
	int keycol;
	bool brief;
	struct emu_buf b;
	struct row_scratch sc;
	char *kt = key_text(r->key);

	emu_buf_init(&b);
	if (!query_bool(c, "showbrief", true, &brief))
		goto out;
	pthread_rwlock_rdlock(&c->e->store.lock);
	t = find_table(c, r->table, &keycol);
	if (t) {
		struct emu_row *row = emu_map_get(&t->by_key, kt);

		if (row) {
			scratch_init(&sc, &t->schema);
			row_out(t, keycol, sc.order, row, brief, sc.vals,
				sc.lens, &b);
			scratch_release(&sc);
		} else {
			reply_row_not_found(c, t, r->key);
		}
	}
	pthread_rwlock_unlock(&c->e->store.lock);
	if (b.len) {
		stats_add(c->e, 1, 0, 0);
		emu_reply_buf(c->rp, 200, &b);
	}
out:
	emu_buf_release(&b);
	free(kt);
}

/* A production row object (production names) → a columns object with the
 * store's column names, omitted properties filled from `base` (the stored
 * row of a PUT: NULL fills defaults). 0, or a 400 reply. */
static int row_from_prod(struct emu_ctx *c, const struct emu_table *t,
			 int keycol, struct json_object *in, const char *key,
			 long max_key, struct json_object **out)
{
	const struct emu_schema *s = &t->schema;
	struct json_object *cols = json_object_new_object();
	struct json_object *errs = json_object_new_array();
	struct json_object *kv = NULL;

	json_object_object_foreach(in, pname, val)
	{
		int col = -1;

		if (strcmp(pname, "key") == 0) {
			col = keycol;
		} else {
			for (size_t i = 0; i < s->ncols; i++)
				if ((int)i != keycol &&
				    strcmp(s->cols[i].name, pname) == 0)
					col = (int)i;
		}
		if (col < 0) {
			json_object_array_add(
			    errs, detail("unknown.property", pname, NULL, key));
			continue;
		}
		if (!val)
			continue; /* null: as if omitted */
		if (col == keycol)
			kv = val;
		json_object_object_add(cols, s->cols[col].name,
				       json_object_get(val));
	}
	if (!kv && key) {
		kv = json_object_new_string(key);
		json_object_object_add(cols, s->cols[keycol].name, kv);
	}
	if (!kv || !json_object_is_type(kv, json_type_string) ||
	    json_object_get_string_len(kv) == 0) {
		json_object_array_add(errs,
				      detail("missing.key", "key", NULL, key));
	} else {
		long n = utf8_chars(json_object_get_string(kv),
				    (size_t)json_object_get_string_len(kv));

		if (n > max_key)
			json_object_array_add(
			    errs, detail("key.too.long", "key", NULL, key));
		if (key && strcmp(key, json_object_get_string(kv)) != 0)
			json_object_array_add(
			    errs, detail("key.mismatch", "key", NULL, key));
	}
	for (size_t i = 0; i < s->ncols; i++) {
		struct json_object *v = NULL;
		const char *fill;

		if (json_object_object_get_ex(cols, s->cols[i].name, &v)) {
			if (!emu_type_ok(s->cols[i].type, v))
				json_object_array_add(
				    errs, detail("type.mismatch",
						 emu_prod_name(t, keycol, i),
						 NULL, key));
			continue;
		}
		fill = emu_column_fill(&s->cols[i]);
		if (fill)
			json_object_object_add(
			    cols, s->cols[i].name,
			    emu_json_parse(fill, strlen(fill)));
	}
	if (json_object_array_length(errs)) {
		struct json_object *d0 = json_object_array_get_idx(errs, 0);
		struct json_object *f = NULL, *code = NULL;

		json_object_object_get_ex(d0, "fieldName", &f);
		json_object_object_get_ex(d0, "errorCode", &code);
		emu_reply_error(c->rp, 400, "flows.datatables.syntax.error",
				errs,
				"the row does not match the schema: %s (%s)",
				json_object_get_string(code),
				f ? json_object_get_string(f) : "");
		json_object_put(cols);
		return -EINVAL;
	}
	json_object_put(errs);
	*out = cols;
	return 0;
}

/* POST (create, key in the body) or PUT (update, key in the URL). */
static void row_write(struct emu_ctx *c, const struct emu_target *r,
		      bool create)
{
	struct emu_store *s = &c->e->store;
	struct emu_config cfg;
	struct json_object *in = NULL, *cols = NULL;
	struct emu_table *t;
	int keycol;
	struct emu_pending p = {NULL, NULL, 0, 0};
	struct emu_row_errors errs = {NULL, 0, 0};
	struct emu_buf b;
	struct row_scratch sc;
	bool inserted;

	config_copy(c->e, &cfg);
	emu_buf_init(&b);
	in = emu_json_parse(c->rq->body.data ? c->rq->body.data : "",
			    c->rq->body.len);
	if (!in || !json_object_is_type(in, json_type_object)) {
		emu_reply_error(c->rp, 400, "flows.datatables.syntax.error",
				NULL, "the body must be a JSON object (a row)");
		goto out;
	}
	pthread_rwlock_wrlock(&s->lock);
	t = find_table(c, r->table, &keycol);
	if (!t)
		goto unlock;
	if (row_from_prod(c, t, keycol, in, create ? NULL : r->key,
			  cfg.max_name_length, &cols))
		goto unlock;
	if (emu_row_build(&t->schema, cols, 0, &p, &errs)) {
		emu_reply_error(c->rp, 400, "flows.datatables.syntax.error",
				NULL, "the row does not match the schema: %s",
				errs.n ? errs.v[0].code : "?");
		goto unlock;
	}
	struct emu_row *old = emu_map_get(&t->by_key, p.key);

	if (create && old) {
		emu_reply_error(
		    c->rp, 409, "flows.datatables.row.already.exists",
		    details1(detail("duplicate.key", "key", t->id, NULL)),
		    "a row with this key already exists; update it with PUT");
		goto unlock;
	}
	if (!create && !old) {
		reply_row_not_found(c, t, r->key);
		goto unlock;
	}
	if (create && (long)t->nrows >= cfg.max_rows) {
		pthread_rwlock_unlock(&s->lock);
		reply_limit(c->rp, "rows.per.table", cfg.max_rows,
			    "too many rows");
		goto out;
	}
	char *kt = emu_xstrdup(p.key);

	emu_table_put(t, &p, &inserted);
	emu_table_touch(s, t);
	scratch_init(&sc, &t->schema);
	row_out(t, keycol, sc.order, emu_map_get(&t->by_key, kt), false,
		sc.vals, sc.lens, &b);
	free(kt);
	scratch_release(&sc);
	pthread_rwlock_unlock(&s->lock);
	stats_add(c->e, 0, 1, 0);
	emu_reply_buf(c->rp, 200, &b);
	goto out;
unlock:
	pthread_rwlock_unlock(&s->lock);
out:
	emu_pending_release(&p);
	free(errs.v);
	json_object_put(cols);
	json_object_put(in);
	emu_buf_release(&b);
}

static void row_delete(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_store *s = &c->e->store;
	struct emu_table *t;
	int keycol;
	char *kt = key_text(r->key);
	bool done = false;

	pthread_rwlock_wrlock(&s->lock);
	t = find_table(c, r->table, &keycol);
	if (t) {
		struct emu_row *row = emu_map_get(&t->by_key, kt);

		if (row) {
			emu_table_remove_row(t, row);
			emu_table_touch(s, t);
			done = true;
		} else {
			reply_row_not_found(c, t, r->key);
		}
	}
	pthread_rwlock_unlock(&s->lock);
	free(kt);
	if (done) {
		stats_add(c->e, 0, 0, 1);
		emu_reply_empty(c->rp, 204);
	}
}

int emu_flows_race_apply(struct emu *e, const char *table,
			 const char *del_key, const char *insert)
{
	struct emu_req rq;
	struct emu_reply rp;
	struct emu_target r;
	struct emu_ctx c = {e, NULL, del_key ? "DELETE" : "POST", &rq, &rp,
			    ""};
	int rc = 0;

	memset(&rq, 0, sizeof(rq));
	memset(&rp, 0, sizeof(rp));
	memset(&r, 0, sizeof(r));
	emu_buf_init(&rq.body);
	rp.prod = true;
	r.prod = true;
	snprintf(r.table, sizeof(r.table), "%s", table);
	if (del_key) {
		r.key = (char *)del_key;
		row_delete(&c, &r);
	} else {
		emu_buf_add(&rq.body, insert, strlen(insert));
		row_write(&c, &r, true);
	}
	if (rp.status < 200 || rp.status > 299) {
		log_warn("race on table '%s' refused: HTTP %u %.*s", table,
			 rp.status, (int)(rp.len < 200 ? rp.len : 200),
			 rp.body ? rp.body : "");
		rc = -EIO;
	}
	free(rp.body);
	free(rp.location);
	emu_buf_release(&rq.body);
	return rc;
}

/* ---- CSV (RFC 4180) ---- */

static void csv_field(struct emu_buf *b, const char *s, size_t n)
{
	bool quote = false;

	for (size_t i = 0; i < n && !quote; i++)
		quote =
		    s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n';
	if (!quote) {
		emu_buf_add(b, s, n);
		return;
	}
	emu_buf_add(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"')
			emu_buf_add(b, "\"", 1);
		emu_buf_add(b, &s[i], 1);
	}
	emu_buf_add(b, "\"", 1);
}

/* A stored JSON value as CSV: strings decoded, numbers and booleans as
 * their text. */
static void csv_value(struct emu_buf *b, const char *v, size_t n)
{
	if (n && v[0] == '"') {
		struct json_object *o = emu_json_parse(v, n);

		if (o) {
			csv_field(b, json_object_get_string(o),
				  (size_t)json_object_get_string_len(o));
			json_object_put(o);
		}
		return;
	}
	emu_buf_add(b, v, n);
}

/* The whole table as CSV: a header of property names (key first, then
 * displayOrder), one record per row, CRLF line ends. Store lock held. */
static void csv_write(const struct emu_table *t, int keycol, struct emu_buf *b)
{
	struct row_scratch sc;
	const struct emu_schema *s = &t->schema;

	scratch_init(&sc, s);
	emu_buf_adds(b, "key");
	for (size_t k = 0; k < s->ncols; k++) {
		if ((int)sc.order[k] == keycol)
			continue;
		emu_buf_add(b, ",", 1);
		csv_field(b, s->cols[sc.order[k]].name,
			  strlen(s->cols[sc.order[k]].name));
	}
	emu_buf_add(b, "\r\n", 2);
	for (size_t r = 0; r < t->nrows; r++) {
		const struct emu_row *row = t->rows[r];

		row_split(s, row, sc.vals, sc.lens);
		csv_value(b, emu_row_key(row), row->key_len);
		for (size_t k = 0; k < s->ncols; k++) {
			size_t i = sc.order[k];

			if ((int)i == keycol)
				continue;
			emu_buf_add(b, ",", 1);
			if (sc.vals[i])
				csv_value(b, sc.vals[i], sc.lens[i]);
		}
		emu_buf_add(b, "\r\n", 2);
	}
	scratch_release(&sc);
}

struct csv {
	const char *s;
	size_t n;
	size_t i;
	struct emu_buf rec; /* the fields' bytes */
	size_t *off, *len;
	size_t nf, cap;
	bool quoted0; /* the first field was quoted */
};

static void csv_push(struct csv *c, size_t off)
{
	if (c->nf == c->cap) {
		c->cap = c->cap ? c->cap * 2 : 16;
		c->off = emu_xrealloc(c->off, c->cap * sizeof(*c->off));
		c->len = emu_xrealloc(c->len, c->cap * sizeof(*c->len));
	}
	c->off[c->nf] = off;
	c->len[c->nf] = c->rec.len - off;
	c->nf++;
	emu_buf_add(&c->rec, "\0", 1); /* fields are C strings too */
}

static void csv_skip_line(struct csv *c)
{
	while (c->i < c->n && c->s[c->i] != '\n' && c->s[c->i] != '\r')
		c->i++;
	if (c->i < c->n && c->s[c->i] == '\r')
		c->i++;
	if (c->i < c->n && c->s[c->i] == '\n')
		c->i++;
}

/* The next record: 1, 0 at the end, -EINVAL for a malformed record (a
 * stray or unterminated quote; the rest of its line is skipped). */
static int csv_record(struct csv *c)
{
	c->nf = 0;
	c->rec.len = 0;
	c->quoted0 = false;
	if (c->i >= c->n)
		return 0;
	for (;;) {
		size_t off = c->rec.len;

		if (c->i < c->n && c->s[c->i] == '"') {
			if (c->nf == 0)
				c->quoted0 = true;
			c->i++;
			for (;;) {
				if (c->i >= c->n)
					return -EINVAL;
				if (c->s[c->i] == '"') {
					if (c->i + 1 < c->n &&
					    c->s[c->i + 1] == '"') {
						emu_buf_add(&c->rec, "\"", 1);
						c->i += 2;
						continue;
					}
					c->i++;
					break;
				}
				emu_buf_add(&c->rec, &c->s[c->i], 1);
				c->i++;
			}
			if (c->i < c->n && c->s[c->i] != ',' &&
			    c->s[c->i] != '\r' && c->s[c->i] != '\n') {
				csv_skip_line(c);
				return -EINVAL;
			}
		} else {
			while (c->i < c->n && c->s[c->i] != ',' &&
			       c->s[c->i] != '\r' && c->s[c->i] != '\n') {
				if (c->s[c->i] == '"') {
					csv_skip_line(c);
					return -EINVAL;
				}
				emu_buf_add(&c->rec, &c->s[c->i], 1);
				c->i++;
			}
		}
		csv_push(c, off);
		if (c->i < c->n && c->s[c->i] == ',') {
			c->i++;
			continue;
		}
		if (c->i < c->n && c->s[c->i] == '\r')
			c->i++;
		if (c->i < c->n && c->s[c->i] == '\n')
			c->i++;
		return 1;
	}
}

static const char *csv_text(const struct csv *c, size_t f)
{
	return c->rec.data + c->off[f];
}

/* A CSV field as a JSON value of the column's type; NULL and *fill when
 * the column takes its fill value; NULL and !*fill when it is not valid. */
static struct json_object *csv_to_json(const struct emu_column *col,
				       const char *s, size_t n, bool *fill)
{
	bool integer;

	*fill = false;
	if (col->type == EMU_T_STRING || col->type == EMU_T_DATE)
		return json_object_new_string_len(s, (int)n);
	if (n == 0) {
		*fill = true;
		return NULL;
	}
	switch (col->type) {
	case EMU_T_BOOLEAN:
		if (n == 4 && strncasecmp(s, "true", 4) == 0)
			return json_object_new_boolean(1);
		if (n == 5 && strncasecmp(s, "false", 5) == 0)
			return json_object_new_boolean(0);
		return NULL;
	case EMU_T_INTEGER:
	case EMU_T_NUMBER:
		if (emu_json_number_len(s, n, &integer) != n ||
		    (col->type == EMU_T_INTEGER && !integer))
			return NULL;
		return emu_json_number(s, n);
	default:
		return NULL;
	}
}

/* ---- jobs ---- */

static const char *const job_status_names[] = {
    [EMU_JOB_WAITING] = "WaitingForUpload",
    [EMU_JOB_PROCESSING] = "Processing",
    [EMU_JOB_FAILED] = "Failed",
    [EMU_JOB_SUCCEEDED] = "Succeeded",
};

/* An ErrorBody as JSON text (errorInformation of a job). */
static char *error_info(const char *code, struct json_object *details,
			const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static char *error_info(const char *code, struct json_object *details,
			const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	struct json_object *o = json_object_new_object();
	char *s;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_object_add(o, "message", json_object_new_string(msg));
	json_object_object_add(o, "code", json_object_new_string(code));
	json_object_object_add(o, "status", json_object_new_int(400));
	json_object_object_add(o, "messageWithParams",
			       json_object_new_string(msg));
	json_object_object_add(o, "messageParams", json_object_new_object());
	json_object_object_add(o, "details",
			       details ? details : json_object_new_array());
	json_object_object_add(o, "errors", json_object_new_array());
	s = emu_xstrdup(emu_json_text(o));
	json_object_put(o);
	return s;
}

struct import_result {
	long updated, deleted, failed;
	char *error_json;
	bool failed_job;
};

static void row_failure(struct json_object *details, long *failed, size_t rowno,
			const char *field, const char *code)
{
	char name[48];

	(*failed)++;
	if (json_object_array_length(details) >= MAX_ROW_ERRORS)
		return;
	snprintf(name, sizeof(name), "row %zu", rowno);
	json_object_array_add(details, detail(code, field, NULL, name));
}

static const char *str_key(const void *item)
{
	return item;
}

/* Run one CSV import into table `tid`. The store write lock is taken here. */
static void import_run(struct emu *e, const char *tid, bool replace_all,
		       const char *data, size_t len, struct import_result *res)
{
	struct emu_store *s = &e->store;
	struct emu_config cfg;
	struct csv c;
	struct emu_table *t;
	int keycol, *map = NULL, rc;
	struct json_object *details = json_object_new_array();
	struct emu_map seen;
	size_t rowno = 0;
	bool changed = false;

	memset(res, 0, sizeof(*res));
	memset(&c, 0, sizeof(c));
	emu_map_init(&seen, str_key);
	config_copy(e, &cfg);
	c.s = data ? data : "";
	c.n = len;
	if (c.n >= 3 && memcmp(c.s, "\xef\xbb\xbf", 3) == 0)
		c.i = 3;
	pthread_rwlock_wrlock(&s->lock);
	t = emu_store_find(s, tid);
	keycol = t ? emu_table_prod_key(t) : -1;
	if (keycol < 0) {
		res->error_json =
		    error_info("flows.datatables.table.not.found", NULL,
			       "the table no longer exists");
		goto fail;
	}
	if (utf8_chars(c.s + c.i, c.n - c.i) < 0) {
		res->error_json =
		    error_info("flows.datatables.import.invalid.file", NULL,
			       "the file is not UTF-8");
		goto fail;
	}
	rc = csv_record(&c);
	if (rc <= 0) {
		res->error_json =
		    error_info("flows.datatables.import.invalid.file", NULL,
			       rc ? "the header row is not valid CSV"
				  : "the file is empty: it needs a header row");
		goto fail;
	}
	map = emu_xcalloc(c.nf + 1, sizeof(*map));
	bool have_key = false;

	for (size_t f = 0; f < c.nf; f++) {
		const char *h = csv_text(&c, f);
		int col = -1;

		if (strcmp(h, "key") == 0) {
			col = keycol;
		} else {
			for (size_t i = 0; i < t->schema.ncols; i++)
				if ((int)i != keycol &&
				    strcmp(t->schema.cols[i].name, h) == 0)
					col = (int)i;
		}
		for (size_t g = 0; col >= 0 && g < f; g++)
			if (map[g] == col) {
				res->error_json = error_info(
				    "flows.datatables.import.invalid.file",
				    details1(detail("duplicate.column", h, NULL,
						    NULL)),
				    "column '%.200s' appears twice in the "
				    "header",
				    h);
				goto fail;
			}
		if (col < 0) {
			res->error_json = error_info(
			    "flows.datatables.import.invalid.file",
			    details1(detail("unknown.column", h, NULL, NULL)),
			    "unknown column '%.200s': the header must name "
			    "properties of the table",
			    h);
			goto fail;
		}
		have_key |= col == keycol;
		map[f] = col;
	}
	if (!have_key) {
		res->error_json = error_info(
		    "flows.datatables.import.invalid.file",
		    details1(detail("missing.column", "key", NULL, NULL)),
		    "the header has no 'key' column");
		goto fail;
	}
	size_t nheader = c.nf;

	if (replace_all) {
		res->deleted = (long)emu_table_clear(t);
		changed |= res->deleted > 0;
	}
	for (;;) {
		struct json_object *cols = NULL;
		struct emu_pending p = {NULL, NULL, 0, 0};
		struct emu_row_errors errs = {NULL, 0, 0};
		const char *bad_field = NULL, *bad_code = NULL;
		bool inserted;

		rc = csv_record(&c);
		if (rc == 0)
			break;
		if (rc > 0 && c.nf == 1 && c.len[0] == 0 && !c.quoted0)
			continue; /* a blank line */
		rowno++;
		if (rc < 0) {
			row_failure(details, &res->failed, rowno, NULL,
				    "invalid.csv");
			continue;
		}
		if (c.nf != nheader) {
			row_failure(details, &res->failed, rowno, NULL,
				    "field.count");
			continue;
		}
		cols = json_object_new_object();
		for (size_t f = 0; f < c.nf && !bad_code; f++) {
			const struct emu_column *col = &t->schema.cols[map[f]];
			bool fill;
			struct json_object *v =
			    csv_to_json(col, csv_text(&c, f), c.len[f], &fill);

			if (v)
				json_object_object_add(cols, col->name, v);
			else if (!fill) {
				bad_field =
				    emu_prod_name(t, keycol, (size_t)map[f]);
				bad_code = "type.mismatch";
			}
		}
		for (size_t i = 0; i < t->schema.ncols && !bad_code; i++) {
			const char *fill = emu_column_fill(&t->schema.cols[i]);

			if ((int)i != keycol && fill &&
			    !json_object_object_get_ex(
				cols, t->schema.cols[i].name, NULL))
				json_object_object_add(
				    cols, t->schema.cols[i].name,
				    emu_json_parse(fill, strlen(fill)));
		}
		if (!bad_code) {
			struct json_object *kv = NULL;

			json_object_object_get_ex(
			    cols, t->schema.cols[keycol].name, &kv);
			if (!kv || json_object_get_string_len(kv) == 0) {
				bad_field = "key";
				bad_code = "missing.key";
			} else if (utf8_chars(
				       json_object_get_string(kv),
				       (size_t)json_object_get_string_len(kv)) >
				   cfg.max_name_length) {
				bad_field = "key";
				bad_code = "key.too.long";
			}
		}
		if (!bad_code &&
		    emu_row_build(&t->schema, cols, rowno, &p, &errs)) {
			bad_field = errs.n ? errs.v[0].field : NULL;
			bad_code = errs.n ? errs.v[0].code : "invalid.row";
			if (bad_field &&
			    strcmp(bad_field, t->schema.cols[keycol].name) == 0)
				bad_field = "key";
		}
		if (!bad_code && emu_map_get(&seen, p.key)) {
			bad_field = "key";
			bad_code = "duplicate.key";
		}
		if (!bad_code && !emu_map_get(&t->by_key, p.key) &&
		    (long)t->nrows >= cfg.max_rows) {
			bad_field = "key";
			bad_code = "rows.per.table.limit";
		}
		if (bad_code) {
			row_failure(details, &res->failed, rowno, bad_field,
				    bad_code);
		} else {
			emu_map_put(&seen, emu_xstrdup(p.key));
			emu_table_put(t, &p, &inserted);
			res->updated++;
			changed = true;
		}
		emu_pending_release(&p);
		free(errs.v);
		json_object_put(cols);
	}
	if (changed)
		emu_table_touch(s, t);
	pthread_rwlock_unlock(&s->lock);
	if (res->failed) {
		res->error_json = error_info(
		    "flows.datatables.import.rows.failed", details,
		    "%ld of %zu row(s) failed; the others were imported",
		    res->failed, rowno);
		details = NULL;
	}
	res->failed_job = res->failed > 0 && res->updated == 0;
	goto out;
fail:
	pthread_rwlock_unlock(&s->lock);
	res->failed_job = true;
out:
	for (size_t i = 0; i <= seen.mask; i++)
		free(seen.slots[i].item);
	emu_map_release(&seen);
	json_object_put(details);
	free(map);
	free(c.off);
	free(c.len);
	emu_buf_release(&c.rec);
	stats_add(e, 0, (uint64_t)res->updated, (uint64_t)res->deleted);
}

static void export_run(struct emu *e, const char *tid, struct emu_buf *csv,
		       long *rows, char **error_json)
{
	struct emu_store *s = &e->store;
	struct emu_table *t;
	int keycol;

	pthread_rwlock_rdlock(&s->lock);
	t = emu_store_find(s, tid);
	keycol = t ? emu_table_prod_key(t) : -1;
	if (keycol >= 0) {
		csv_write(t, keycol, csv);
		*rows = (long)t->nrows;
	} else {
		*error_json = error_info("flows.datatables.table.not.found",
					 NULL, "the table no longer exists");
	}
	pthread_rwlock_unlock(&s->lock);
	if (keycol >= 0)
		stats_add(e, (uint64_t)*rows, 0, 0);
}

static void job_run(struct emu *e, struct emu_job *j)
{
	char done[32];

	if (j->is_export) {
		struct emu_buf csv;
		long rows = 0;
		char *err = NULL;

		emu_buf_init(&csv);
		export_run(e, j->table_id, &csv, &rows, &err);
		now_iso(done);
		pthread_mutex_lock(&e->jobs.lock);
		j->data = emu_buf_detach(&csv, &j->len);
		j->processed = rows;
		j->error_json = err;
		j->status = err ? EMU_JOB_FAILED : EMU_JOB_SUCCEEDED;
	} else {
		struct import_result res;

		import_run(e, j->table_id, j->replace_all, j->data, j->len,
			   &res);
		now_iso(done);
		pthread_mutex_lock(&e->jobs.lock);
		j->updated = res.updated;
		j->deleted = res.deleted;
		j->failed = res.failed;
		j->error_json = res.error_json;
		j->status = res.failed_job ? EMU_JOB_FAILED : EMU_JOB_SUCCEEDED;
		free(j->data);
		j->data = NULL;
		j->len = 0;
	}
	memcpy(j->completed, done, sizeof(j->completed));
	j->running = false;
	pthread_mutex_unlock(&e->jobs.lock);
	log_debug("job %s of table %s: %s", j->id, j->table_id,
		  job_status_names[j->status]);
}

static void *worker(void *arg)
{
	struct emu *e = arg;
	struct emu_jobs *jobs = &e->jobs;

	pthread_mutex_lock(&jobs->lock);
	while (!jobs->stop) {
		uint64_t now = emu_now_ms(), next = UINT64_MAX;
		struct emu_job *due = NULL;
		long delay;

		pthread_mutex_lock(&e->lock);
		delay = e->config.job_delay_ms;
		pthread_mutex_unlock(&e->lock);
		for (size_t i = 0; i < jobs->n && !due; i++) {
			struct emu_job *j = jobs->v[i];
			uint64_t at = j->start_ms + (uint64_t)delay;

			if (j->status != EMU_JOB_PROCESSING || j->running)
				continue;
			if (at <= now)
				due = j;
			else if (at < next)
				next = at;
		}
		if (due) {
			due->running = true;
			pthread_mutex_unlock(&jobs->lock);
			job_run(e, due);
			pthread_mutex_lock(&jobs->lock);
			continue;
		}
		if (next == UINT64_MAX) {
			pthread_cond_wait(&jobs->cond, &jobs->lock);
		} else {
			struct timespec ts;

			clock_gettime(CLOCK_MONOTONIC, &ts);
			uint64_t wait = next - now;

			ts.tv_sec += (time_t)(wait / 1000);
			ts.tv_nsec += (long)(wait % 1000) * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&jobs->cond, &jobs->lock, &ts);
		}
	}
	pthread_mutex_unlock(&jobs->lock);
	return NULL;
}

int emu_jobs_start(struct emu *e)
{
	struct emu_jobs *j = &e->jobs;
	pthread_condattr_t attr;
	int rc;

	pthread_mutex_init(&j->lock, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cond, &attr);
	pthread_condattr_destroy(&attr);
	j->secret = emu_random64();
	rc = pthread_create(&j->worker, NULL, worker, e);
	if (rc)
		return -rc;
	j->running = true;
	return 0;
}

void emu_jobs_stop(struct emu *e)
{
	struct emu_jobs *j = &e->jobs;

	if (!j->running)
		return;
	pthread_mutex_lock(&j->lock);
	j->stop = true;
	pthread_cond_broadcast(&j->cond);
	pthread_mutex_unlock(&j->lock);
	pthread_join(j->worker, NULL);
	for (size_t i = 0; i < j->n; i++) {
		free(j->v[i]->error_json);
		free(j->v[i]->data);
		free(j->v[i]);
	}
	free(j->v);
	pthread_cond_destroy(&j->cond);
	pthread_mutex_destroy(&j->lock);
	j->running = false;
}

void emu_jobs_kick(struct emu *e)
{
	if (!e->jobs.running)
		return;
	pthread_mutex_lock(&e->jobs.lock);
	pthread_cond_broadcast(&e->jobs.cond);
	pthread_mutex_unlock(&e->jobs.lock);
}

/* The job with this id (jobs lock held). */
static struct emu_job *job_find(struct emu *e, const char *id, bool by_session)
{
	for (size_t i = 0; i < e->jobs.n; i++) {
		struct emu_job *j = e->jobs.v[i];

		if (strcmp(by_session ? j->session : j->id, id) == 0)
			return j;
	}
	return NULL;
}

static void signature(const struct emu *e, const char *session, char out[17])
{
	snprintf(out, 17, "%016" PRIx64,
		 emu_hash64(session, strlen(session), e->jobs.secret));
}

#define UPLOAD_SESSION_HEADER "x-amz-meta-upload-session"
#define UPLOAD_SSE_HEADER "x-amz-server-side-encryption"

/* A job as the SDK's DataTableImportJob / DataTableExportJob (jobs lock
 * held). */
static void job_json(const struct emu *e, const struct emu_job *j,
		     struct emu_buf *b)
{
	emu_buf_addf(
	    b,
	    "{\"id\":\"%s\",\"name\":\"%s-%s\",\"owner\":{\"id\":\"%s\","
	    "\"selfUri\":\"/api/v2/users/%s\"},\"status\":\"%s\","
	    "\"dateCreated\":\"%s\"",
	    j->id, j->is_export ? "export" : "import", j->id, j->owner,
	    j->owner, job_status_names[j->status], j->created);
	if (j->completed[0])
		emu_buf_addf(b, ",\"dateCompleted\":\"%s\"", j->completed);
	if (j->error_json)
		emu_buf_addf(b, ",\"errorInformation\":%s", j->error_json);
	if (j->is_export) {
		if (j->status == EMU_JOB_SUCCEEDED)
			emu_buf_addf(b,
				     ",\"downloadURI\":\"%s/api/v2/downloads/"
				     "%s\",\"countRecordsProcessed\":%ld",
				     j->base, j->session, j->processed);
		emu_buf_addf(b,
			     ",\"selfUri\":\"/api/v2/flows/datatables/%s/"
			     "export/jobs/%s\"}",
			     j->table_id, j->id);
		return;
	}
	emu_buf_addf(b,
		     ",\"uploadURI\":\"%s/uploads/%s\",\"importMode\":\"%s\","
		     "\"countRecordsUpdated\":%ld,\"countRecordsDeleted\":%ld,"
		     "\"countRecordsFailed\":%ld",
		     j->base, j->id, j->replace_all ? "ReplaceAll" : "Append",
		     j->updated, j->deleted, j->failed);
	emu_buf_addf(b,
		     ",\"uploadHeaders\":{\"" UPLOAD_SSE_HEADER
		     "\":\"AES256\",\"" UPLOAD_SESSION_HEADER "\":\"%s\"}",
		     j->session);
	emu_buf_addf(b,
		     ",\"selfUri\":\"/api/v2/flows/datatables/%s/import/jobs/"
		     "%s\"}",
		     j->table_id, j->id);
	(void)e;
}

static struct emu_job *job_new(struct emu_ctx *c, const char *tid)
{
	struct emu_job *j = emu_xcalloc(1, sizeof(*j));
	const char *host = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
						       MHD_HTTP_HEADER_HOST);

	emu_uuid_format(emu_random64(), emu_random64(), j->id);
	snprintf(j->table_id, sizeof(j->table_id), "%s", tid);
	snprintf(j->session, sizeof(j->session), "%016" PRIx64 "%016" PRIx64,
		 emu_random64(), emu_random64());
	emu_uuid_format(emu_hash64(c->client_id, strlen(c->client_id), 1),
			emu_hash64(c->client_id, strlen(c->client_id), 2),
			j->owner);
	snprintf(j->base, sizeof(j->base), "http://%s",
		 host && strlen(host) < 200 && !strpbrk(host, "\"\\/ ")
		     ? host
		     : "127.0.0.1");
	now_iso(j->created);
	return j;
}

static void job_add(struct emu *e, struct emu_job *j)
{
	struct emu_jobs *jobs = &e->jobs;

	jobs->v = emu_xrealloc(jobs->v, (jobs->n + 1) * sizeof(*jobs->v));
	j->seq = ++jobs->seq;
	jobs->v[jobs->n++] = j;
	pthread_cond_broadcast(&jobs->cond);
}

/* Does table id name a production table? 0, or a 404 reply. */
static int table_exists(struct emu_ctx *c, const char *id)
{
	int keycol;
	struct emu_table *t;

	pthread_rwlock_rdlock(&c->e->store.lock);
	t = find_table(c, id, &keycol);
	pthread_rwlock_unlock(&c->e->store.lock);
	return t ? 0 : -ENOENT;
}

static void import_create(struct emu_ctx *c, const struct emu_target *r)
{
	struct json_object *o, *mode = NULL;
	struct emu_job *j;
	struct emu_buf b;
	const char *m;

	if (table_exists(c, r->table))
		return;
	o = emu_json_parse(c->rq->body.data ? c->rq->body.data : "",
			   c->rq->body.len);
	if (!o || !json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "importMode", &mode) ||
	    !json_object_is_type(mode, json_type_string) ||
	    (strcmp((m = json_object_get_string(mode)), "Append") != 0 &&
	     strcmp(m, "ReplaceAll") != 0)) {
		json_object_put(o);
		emu_reply_error(
		    c->rp, 400, "flows.datatables.syntax.error",
		    details1(detail("invalid.value", "importMode", NULL, NULL)),
		    "the body must be {\"importMode\": \"Append\" or "
		    "\"ReplaceAll\"}");
		return;
	}
	j = job_new(c, r->table);
	j->replace_all = strcmp(m, "ReplaceAll") == 0;
	j->status = EMU_JOB_WAITING;
	json_object_put(o);
	emu_buf_init(&b);
	pthread_mutex_lock(&c->e->jobs.lock);
	job_add(c->e, j);
	job_json(c->e, j, &b);
	pthread_mutex_unlock(&c->e->jobs.lock);
	emu_reply_buf(c->rp, 200, &b);
}

static void export_create(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_job *j;
	struct emu_buf b;

	if (table_exists(c, r->table))
		return;
	j = job_new(c, r->table);
	j->is_export = true;
	j->status = EMU_JOB_PROCESSING;
	j->start_ms = emu_now_ms();
	emu_buf_init(&b);
	pthread_mutex_lock(&c->e->jobs.lock);
	job_add(c->e, j);
	job_json(c->e, j, &b);
	pthread_mutex_unlock(&c->e->jobs.lock);
	emu_reply_buf(c->rp, 200, &b);
}

static void job_get(struct emu_ctx *c, const struct emu_target *r,
		    bool is_export)
{
	struct emu_job *j;
	struct emu_buf b;

	if (table_exists(c, r->table))
		return;
	emu_buf_init(&b);
	pthread_mutex_lock(&c->e->jobs.lock);
	j = job_find(c->e, r->job, false);
	if (j && j->is_export == is_export &&
	    strcmp(j->table_id, r->table) == 0)
		job_json(c->e, j, &b);
	pthread_mutex_unlock(&c->e->jobs.lock);
	if (b.len) {
		emu_reply_buf(c->rp, 200, &b);
		return;
	}
	emu_reply_error(c->rp, 404, "not.found",
			details1(detail("job.not.found", NULL, r->job, NULL)),
			"Not found: no %s job '%.64s' for this table",
			is_export ? "export" : "import", r->job);
}

static void import_list(struct emu_ctx *c, const struct emu_target *r)
{
	long number, size;
	struct emu_buf b;
	size_t total = 0, from, at = 0;

	if (!paging(c, JOBS_PAGE_DEFAULT, JOBS_PAGE_MAX, &number, &size) ||
	    table_exists(c, r->table))
		return;
	from = (size_t)(number - 1) * (size_t)size;
	emu_buf_init(&b);
	emu_buf_adds(&b, "{\"entities\":[");
	pthread_mutex_lock(&c->e->jobs.lock);
	for (size_t i = c->e->jobs.n; i-- > 0;) {
		struct emu_job *j = c->e->jobs.v[i];

		if (j->is_export || strcmp(j->table_id, r->table) != 0)
			continue;
		if (total >= from && total < from + (size_t)size) {
			if (at++)
				emu_buf_add(&b, ",", 1);
			job_json(c->e, j, &b);
		}
		total++;
	}
	pthread_mutex_unlock(&c->e->jobs.lock);
	emu_buf_adds(&b, "]");
	listing_tail(&b, "", number, size, total, false);
	emu_reply_buf(c->rp, 200, &b);
}

static void download(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu_job *j;
	char sig[17], url[512];
	bool redirect;
	long status;

	if (!query_bool(c, "issueRedirect", true, &redirect))
		return;
	pthread_mutex_lock(&c->e->lock);
	status = c->e->config.download_status;
	pthread_mutex_unlock(&c->e->lock);
	pthread_mutex_lock(&c->e->jobs.lock);
	j = job_find(c->e, r->job, true);
	if (j && j->is_export && j->status == EMU_JOB_SUCCEEDED) {
		signature(c->e, j->session, sig);
		snprintf(url, sizeof(url), "%s/signed/%s?sig=%s", j->base,
			 j->session, sig);
	} else {
		j = NULL;
	}
	pthread_mutex_unlock(&c->e->jobs.lock);
	if (!j) {
		emu_reply_error(c->rp, 404, "not.found", NULL,
				"Not found: no download '%.64s'", r->job);
		return;
	}
	if (!redirect) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "url", json_object_new_string(url));
		emu_reply_json(c->rp, 200, o);
		return;
	}
	c->rp->location = emu_xstrdup(url);
	emu_reply_empty(c->rp, (unsigned)status);
}

void emu_flows_handle(struct emu_ctx *c, const struct emu_target *r)
{
	bool get = strcmp(c->method, "GET") == 0;
	bool post = strcmp(c->method, "POST") == 0;

	switch (r->route) {
	case EMU_R_FLOWS_LIST:
		if (get)
			tables_list(c);
		else
			table_create(c);
		break;
	case EMU_R_FLOWS_TABLE:
		if (get)
			table_get(c, r);
		else if (post)
			break;
		else if (strcmp(c->method, "PUT") == 0)
			table_put(c, r);
		else
			table_delete(c, r);
		break;
	case EMU_R_FLOWS_ROWS_GET:
		rows_get(c, r);
		break;
	case EMU_R_FLOWS_ROW_GET:
		row_get(c, r);
		break;
	case EMU_R_FLOWS_ROW_POST:
		row_write(c, r, true);
		break;
	case EMU_R_FLOWS_ROW_PUT:
		row_write(c, r, false);
		break;
	case EMU_R_FLOWS_ROW_DELETE:
		row_delete(c, r);
		break;
	case EMU_R_IMPORT_JOB:
		if (r->job[0])
			job_get(c, r, false);
		else if (get)
			import_list(c, r);
		else if (strstr(c->rq->raw_path, "/import/csv/jobs"))
			import_create(c, r);
		else
			emu_reply_error(
			    c->rp, 410, "flows.datatables.import.deprecated",
			    NULL,
			    "POST .../import/jobs (multipart upload) is "
			    "deprecated and not served: use POST "
			    ".../import/csv/jobs and PUT the file to its "
			    "uploadURI with its uploadHeaders");
		break;
	case EMU_R_EXPORT_JOB:
		if (r->job[0])
			job_get(c, r, true);
		else
			export_create(c, r);
		break;
	case EMU_R_DOWNLOAD:
		download(c, r);
		break;
	default:
		emu_reply_error(c->rp, 404, "not.found", NULL,
				"no such resource");
		break;
	}
}

/* ---- the transfer URLs (an object store's part on the platform) ---- */

static void s3_error(struct emu_reply *rp, unsigned status, const char *code,
		     const char *msg)
{
	struct emu_buf b;

	emu_buf_init(&b);
	emu_buf_addf(
	    &b,
	    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s"
	    "</Code><Message>%s</Message><RequestId>%s</RequestId>"
	    "</Error>\n",
	    code, msg, rp->corr);
	emu_reply_buf(rp, status, &b);
	rp->content_type = "application/xml";
}

/* A signed URL is its own authorization: a request that also carries an
 * Authorization header is refused (reply_other_auth), as the object store
 * does. This is how a client leaking its bearer token off the API shows. */
static bool has_authorization(struct emu_ctx *c)
{
	return MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
					   MHD_HTTP_HEADER_AUTHORIZATION);
}

static void reply_other_auth(struct emu_reply *rp)
{
	s3_error(rp, 400, "InvalidArgument",
		 "Only one auth mechanism allowed: a signed URL takes no "
		 "Authorization header");
}

static void upload(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu *e = c->e;
	const char *sse = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
						      UPLOAD_SSE_HEADER);
	const char *sess = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND,
						       UPLOAD_SESSION_HEADER);
	struct emu_job *j;
	int rc = 0;

	if (c->rq->too_large) {
		s3_error(c->rp, 413, "EntityTooLarge",
			 "Your proposed upload exceeds the maximum allowed "
			 "size");
		return;
	}
	pthread_mutex_lock(&e->jobs.lock);
	j = job_find(e, r->job, false);
	if (!j || j->is_export || j->status != EMU_JOB_WAITING)
		rc = -ENOENT;
	else if (!sse || strcmp(sse, "AES256") != 0 || !sess ||
		 strcmp(sess, j->session) != 0)
		rc = -EACCES;
	else if (has_authorization(c))
		rc = -EINVAL;
	if (!rc) {
		j->data = emu_buf_detach(&c->rq->body, &j->len);
		j->status = EMU_JOB_PROCESSING;
		j->start_ms = emu_now_ms();
		pthread_cond_broadcast(&e->jobs.cond);
	}
	pthread_mutex_unlock(&e->jobs.lock);
	if (rc == -ENOENT)
		s3_error(c->rp, 403, "AccessDenied",
			 "The upload URL is not valid or was already used");
	else if (rc == -EINVAL)
		reply_other_auth(c->rp);
	else if (rc)
		s3_error(c->rp, 403, "SignatureDoesNotMatch",
			 "The request does not carry every header of "
			 "uploadHeaders");
	else
		emu_reply_empty(c->rp, 200);
}

static void signed_download(struct emu_ctx *c, const struct emu_target *r)
{
	struct emu *e = c->e;
	const char *sig = query(c, "sig");
	struct emu_job *j;
	char want[17];
	struct emu_buf b;
	bool ok = false;

	if (has_authorization(c)) {
		reply_other_auth(c->rp);
		return;
	}
	emu_buf_init(&b);
	pthread_mutex_lock(&e->jobs.lock);
	j = job_find(e, r->job, true);
	if (j && j->is_export && j->status == EMU_JOB_SUCCEEDED && sig) {
		signature(e, j->session, want);
		if (strcmp(sig, want) == 0) {
			emu_buf_add(&b, j->data, j->len);
			ok = true;
		}
	}
	pthread_mutex_unlock(&e->jobs.lock);
	if (!ok) {
		emu_buf_release(&b);
		s3_error(c->rp, 403, "AccessDenied",
			 "The signature does not match");
		return;
	}
	emu_reply_buf(c->rp, 200, &b);
	c->rp->content_type = "text/csv; charset=utf-8";
}

void emu_transfer_handle(struct emu_ctx *c, const struct emu_target *r)
{
	if (r->route == EMU_R_UPLOAD && !r->bad_method)
		upload(c, r);
	else if (r->route == EMU_R_DOWNLOAD_SIGNED && !r->bad_method)
		signed_download(c, r);
	else if (r->bad_method)
		s3_error(c->rp, 405, "MethodNotAllowed",
			 "The method is not allowed on this resource");
	else
		s3_error(c->rp, 404, "NoSuchKey",
			 "The specified key does not exist");
}
