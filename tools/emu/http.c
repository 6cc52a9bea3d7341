/*
 * The HTTP face of dtfs-emu: routing, OAuth tokens, rate limits, fault
 * injection, the cursor API of ../../../shared/spec/cursor-api.md and the
 * /_emu control endpoints.
 *
 * MHD calls the access handler several times per request: once with the
 * headers, once per upload chunk, and once more when the upload is complete.
 * The body is accumulated in struct emu_req and the request is answered on that
 * last call.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "emu_i.h"
#include "log.h"

#define MAX_BODY (64u * 1024 * 1024)
#define MAX_BATCH 1000
#define LIST_PAGE_DEFAULT 25
#define LIST_PAGE_MAX 100
#define ROWS_PAGE_DEFAULT 100

static const char *const route_names[EMU_R_COUNT] = {
    [EMU_R_TOKEN] = "token",
    [EMU_R_LIST] = "list",
    [EMU_R_SCHEMA] = "schema",
    [EMU_R_SCHEMA_PUT] = "schema_put",
    [EMU_R_ROWS_GET] = "rows_get",
    [EMU_R_ROWS_UPSERT] = "rows_upsert",
    [EMU_R_ROW_DELETE] = "row_delete",
    [EMU_R_FLOWS_LIST] = "flows_list",
    [EMU_R_FLOWS_TABLE] = "flows_table",
    [EMU_R_FLOWS_ROWS_GET] = "flows_rows_get",
    [EMU_R_FLOWS_ROW_GET] = "flows_row_get",
    [EMU_R_FLOWS_ROW_POST] = "flows_row_post",
    [EMU_R_FLOWS_ROW_PUT] = "flows_row_put",
    [EMU_R_FLOWS_ROW_DELETE] = "flows_row_delete",
    [EMU_R_IMPORT_JOB] = "import_job",
    [EMU_R_UPLOAD] = "upload",
    [EMU_R_EXPORT_JOB] = "export_job",
    [EMU_R_DOWNLOAD] = "download",
    [EMU_R_DOWNLOAD_SIGNED] = "download_signed",
};

/* ---- replies ---- */

void emu_reply_json(struct emu_reply *rp, unsigned status,
		    struct json_object *o)
{
	size_t len;
	const char *s = json_object_to_json_string_length(
	    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);

	free(rp->body);
	rp->body = emu_xmalloc(len + 1);
	memcpy(rp->body, s, len + 1);
	rp->len = len;
	rp->status = status;
	rp->content_type = "application/json";
	json_object_put(o);
}

void emu_reply_buf(struct emu_reply *rp, unsigned status, struct emu_buf *b)
{
	free(rp->body);
	rp->body = emu_buf_detach(b, &rp->len);
	rp->status = status;
	rp->content_type = "application/json";
}

void emu_reply_empty(struct emu_reply *rp, unsigned status)
{
	free(rp->body);
	rp->body = NULL;
	rp->len = 0;
	rp->status = status;
}

void emu_reply_error(struct emu_reply *rp, unsigned status, const char *code,
		     struct json_object *details, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	struct json_object *o = json_object_new_object();

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	json_object_object_add(o, "message", json_object_new_string(msg));
	json_object_object_add(o, "code", json_object_new_string(code));
	json_object_object_add(o, "status", json_object_new_int((int)status));
	if (rp->prod) {
		json_object_object_add(o, "messageWithParams",
				       json_object_new_string(msg));
		json_object_object_add(o, "messageParams",
				       json_object_new_object());
	}
	json_object_object_add(o, "contextId",
			       json_object_new_string(rp->corr));
	json_object_object_add(o, "details",
			       details ? details : json_object_new_array());
	if (rp->prod)
		json_object_object_add(o, "errors", json_object_new_array());
	emu_reply_json(rp, status, o);
}

static void reply_oauth_error(struct emu_reply *rp, unsigned status,
			      const char *error, const char *description)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "error", json_object_new_string(error));
	json_object_object_add(o, "error_description",
			       json_object_new_string(description));
	emu_reply_json(rp, status, o);
}

static enum MHD_Result send_reply(struct emu *e, struct MHD_Connection *conn,
				  struct emu_reply *rp)
{
	struct MHD_Response *resp;
	char num[32];
	enum MHD_Result ret;

	if (rp->body) {
		resp = MHD_create_response_from_buffer(rp->len, rp->body,
						       MHD_RESPMEM_MUST_FREE);
		rp->body = NULL;
	} else {
		resp = MHD_create_response_from_buffer(0, NULL,
						       MHD_RESPMEM_PERSISTENT);
	}
	if (!resp)
		return MHD_NO;
	MHD_add_response_header(resp, "ININ-Correlation-Id", rp->corr);
	if (rp->content_type && rp->len)
		MHD_add_response_header(resp, "Content-Type", rp->content_type);
	if (rp->etag[0])
		MHD_add_response_header(resp, "ETag", rp->etag);
	if (rp->location)
		MHD_add_response_header(resp, "Location", rp->location);
	if (rp->ratelimit) {
		snprintf(num, sizeof(num), "%ld", rp->rl_remaining);
		MHD_add_response_header(resp, "X-RateLimit-Remaining", num);
		snprintf(num, sizeof(num), "%ld", rp->rl_reset);
		MHD_add_response_header(resp, "X-RateLimit-Reset", num);
	}
	if (rp->retry_after >= 0) {
		snprintf(num, sizeof(num), "%ld", rp->retry_after);
		MHD_add_response_header(resp, "Retry-After", num);
	}
	ret = MHD_queue_response(conn, rp->status, resp);
	MHD_destroy_response(resp);
	if (rp->counted) {
		pthread_mutex_lock(&e->lock);
		e->stats.requests_total++;
		if (rp->status < 600)
			e->stats.by_status[rp->status]++;
		pthread_mutex_unlock(&e->lock);
	}
	return ret;
}

/* ---- small helpers ---- */

static const char *header(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

static const char *query(struct MHD_Connection *c, const char *name)
{
	return MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, name);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* The configured latency, counting the requests waiting in it at once: the
 * high-water mark in /_emu/stats shows that clients are served
 * concurrently, without timing anything. */
static void wait_latency(struct emu *e, long latency)
{
	if (latency <= 0)
		return;
	pthread_mutex_lock(&e->lock);
	e->in_flight++;
	if (e->in_flight > e->stats.max_in_flight)
		e->stats.max_in_flight = e->in_flight;
	pthread_mutex_unlock(&e->lock);
	sleep_ms(latency);
	pthread_mutex_lock(&e->lock);
	e->in_flight--;
	pthread_mutex_unlock(&e->lock);
}

/* Does an If-None-Match / If-Match header list name this quoted ETag?
 * Quotes and a W/ prefix are optional on the client's side. */
static bool etag_matches(const char *hdr, const char *etag)
{
	size_t elen = strlen(etag);
	const char *bare = etag;

	if (elen >= 2 && etag[0] == '"') {
		bare++;
		elen -= 2;
	}
	while (*hdr) {
		while (*hdr == ' ' || *hdr == '\t' || *hdr == ',')
			hdr++;
		const char *end = strchr(hdr, ',');
		size_t n = end ? (size_t)(end - hdr) : strlen(hdr);

		while (n && (hdr[n - 1] == ' ' || hdr[n - 1] == '\t'))
			n--;
		const char *v = hdr;

		if (n == 1 && v[0] == '*')
			return true;
		if (n >= 2 && v[0] == 'W' && v[1] == '/') {
			v += 2;
			n -= 2;
		}
		if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
			v++;
			n -= 2;
		}
		if (n && n == elen && memcmp(v, bare, n) == 0)
			return true;
		if (!end)
			break;
		hdr = end + 1;
	}
	return false;
}

static bool is_loopback(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;

	if (!sa)
		return false;
	if (sa->sa_family == AF_INET) {
		struct sockaddr_in sin;

		memcpy(&sin, sa, sizeof(sin));
		return (ntohl(sin.sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		struct sockaddr_in6 s6;

		memcpy(&s6, sa, sizeof(s6));
		if (IN6_IS_ADDR_LOOPBACK(&s6.sin6_addr))
			return true;
		return IN6_IS_ADDR_V4MAPPED(&s6.sin6_addr) &&
		       s6.sin6_addr.s6_addr[12] == 127;
	}
	return false;
}

/* ---- cursors: a tag, the table, a position and a check value ---- */

#define CURSOR_RAW 25

static uint64_t cursor_check(const struct emu *e, char tag, uint64_t table,
			     uint64_t pos)
{
	return emu_mix64(
	    e->cursor_secret ^
	    emu_mix64(table ^ emu_mix64(pos * 131 + (uint64_t)tag)));
}

static void put64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

static uint64_t get64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static void cursor_make(const struct emu *e, char tag, uint64_t table,
			uint64_t pos, char out[40])
{
	unsigned char raw[CURSOR_RAW];

	raw[0] = (unsigned char)tag;
	put64(raw + 1, table);
	put64(raw + 9, pos);
	put64(raw + 17, cursor_check(e, tag, table, pos));
	emu_b64url_encode(raw, sizeof(raw), out);
}

static int cursor_parse(const struct emu *e, const char *s, char tag,
			uint64_t table, uint64_t *pos)
{
	unsigned char raw[CURSOR_RAW + 4];
	size_t n = strlen(s);

	if (n > 40 || emu_b64_decode(s, n, raw, sizeof(raw)) != CURSOR_RAW)
		return -EINVAL;
	if (raw[0] != (unsigned char)tag || get64(raw + 1) != table)
		return -EINVAL;
	uint64_t p = get64(raw + 9);

	if (get64(raw + 17) != cursor_check(e, tag, table, p))
		return -EINVAL;
	*pos = p;
	return 0;
}

static int page_size(struct emu_reply *rp, struct MHD_Connection *conn,
		     long def, long max, long *out)
{
	const char *s = query(conn, "pageSize");

	if (!s) {
		*out = def < max ? def : max;
		return 0;
	}
	if (emu_parse_long(s, 1, max, out)) {
		emu_reply_error(rp, 400, "bad.request", NULL,
				"pageSize must be an integer from 1 to %ld",
				max);
		return -EINVAL;
	}
	return 0;
}

/* ---- OAuth token endpoint ---- */

static char *form_value(const char *body, const char *name)
{
	size_t nlen = strlen(name);
	const char *p = body;

	while (p && *p) {
		const char *amp = strchr(p, '&');
		size_t len = amp ? (size_t)(amp - p) : strlen(p);

		if (len > nlen && strncmp(p, name, nlen) == 0 &&
		    p[nlen] == '=') {
			char *raw = strndup(p + nlen + 1, len - nlen - 1);
			char *v;

			if (!raw)
				return NULL;
			v = emu_percent_decode(raw, true);
			free(raw);
			return v;
		}
		p = amp ? amp + 1 : NULL;
	}
	return NULL;
}

static unsigned scope_bit(const char *s, size_t n)
{
	return emu_scope_bits(s, n);
}

static const char *token_key(const void *item)
{
	return ((const struct emu_token *)item)->token;
}

static void handle_token(struct emu *e, struct MHD_Connection *conn,
			 const char *method, struct emu_req *rq,
			 struct emu_reply *rp)
{
	const char *auth = header(conn, MHD_HTTP_HEADER_AUTHORIZATION);
	char *form_id = NULL, *form_secret = NULL, *grant = NULL, *scope = NULL;
	char idsecret[1024];
	const char *id = NULL, *secret = NULL;
	struct emu_client *client = NULL;
	const char *body = rq->body.data ? rq->body.data : "";

	if (strcmp(method, "POST") != 0) {
		reply_oauth_error(rp, 405, "invalid_request",
				  "use POST for /oauth/token");
		return;
	}
	if (auth && strncasecmp(auth, "Basic ", 6) == 0) {
		const char *b = auth + 6;
		long n;

		while (*b == ' ')
			b++;
		n = emu_b64_decode(b, strlen(b), (unsigned char *)idsecret,
				   sizeof(idsecret) - 1);
		if (n > 0) {
			idsecret[n] = '\0';
			char *colon = strchr(idsecret, ':');

			if (colon && strlen(idsecret) == (size_t)n) {
				*colon = '\0';
				id = idsecret;
				secret = colon + 1;
			}
		}
	} else {
		form_id = form_value(body, "client_id");
		form_secret = form_value(body, "client_secret");
		id = form_id;
		secret = form_secret;
	}
	if (id && secret) {
		for (size_t i = 0; i < e->nclients; i++) {
			if (strcmp(e->clients[i].id, id) == 0 &&
			    strcmp(e->clients[i].secret, secret) == 0)
				client = &e->clients[i];
		}
	}
	if (!client) {
		reply_oauth_error(rp, 401, "invalid_client",
				  "unknown client or wrong secret");
		goto out;
	}
	grant = form_value(body, "grant_type");
	if (!grant || strcmp(grant, "client_credentials") != 0) {
		reply_oauth_error(rp, 400, "unsupported_grant_type",
				  "only client_credentials is supported");
		goto out;
	}
	unsigned scopes = client->scopes;

	scope = form_value(body, "scope");
	if (scope) {
		unsigned want = 0;

		for (const char *p = scope; *p;) {
			size_t n = strcspn(p, " ,");

			want |= scope_bit(p, n);
			p += n;
			while (*p == ' ' || *p == ',')
				p++;
		}
		scopes &= want;
	}

	struct emu_token *t = emu_xcalloc(1, sizeof(*t));
	long ttl;

	for (int i = 0; i < 4; i++)
		snprintf(t->token + i * 16, 17, "%016llx",
			 (unsigned long long)emu_random64());
	t->client = client;
	t->scopes = scopes;
	pthread_mutex_lock(&e->lock);
	ttl = e->config.token_ttl_s;
	t->expires_ms = emu_now_ms() + (uint64_t)ttl * 1000u;
	emu_map_put(&e->tokens, t);
	pthread_mutex_unlock(&e->lock);

	struct json_object *o = json_object_new_object();
	char granted[128];

	emu_scope_names(scopes, granted, sizeof(granted));
	json_object_object_add(o, "access_token",
			       json_object_new_string(t->token));
	json_object_object_add(o, "token_type",
			       json_object_new_string("bearer"));
	json_object_object_add(o, "expires_in", json_object_new_int64(ttl));
	json_object_object_add(o, "scope", json_object_new_string(granted));
	emu_reply_json(rp, 200, o);
	log_debug("token issued to client '%s'", client->id);
out:
	free(form_id);
	free(form_secret);
	free(grant);
	free(scope);
}

void emu_free_tokens(struct emu *e)
{
	for (size_t i = 0; i <= e->tokens.mask; i++)
		free(e->tokens.slots[i].item);
	emu_map_release(&e->tokens);
}

/* ---- API handlers ---- */

static void handle_list(struct emu *e, struct MHD_Connection *conn,
			struct emu_reply *rp)
{
	long n;
	uint64_t pos = 0;
	const char *c = query(conn, "cursor");
	struct emu_buf b;
	struct emu_store *s = &e->store;

	if (page_size(rp, conn, LIST_PAGE_DEFAULT, LIST_PAGE_MAX, &n))
		return;
	if (c && cursor_parse(e, c, 'L', 0, &pos)) {
		emu_reply_error(rp, 400, "invalid.cursor", NULL,
				"the cursor was not issued by this server");
		return;
	}
	emu_buf_init(&b);
	emu_buf_adds(&b, "{\"entities\":[");
	pthread_rwlock_rdlock(&s->lock);
	size_t end =
	    pos + (uint64_t)n < s->ntables ? pos + (size_t)n : s->ntables;
	for (size_t i = pos; i < end; i++) {
		struct emu_table *t = s->tables[i];
		struct json_object *name = json_object_new_string(t->name);
		struct json_object *desc =
		    json_object_new_string(t->description);

		emu_buf_addf(&b, "%s{\"id\":\"%s\",\"name\":%s,",
			     i > pos ? "," : "", t->id, emu_json_text(name));
		emu_buf_addf(&b, "\"description\":%s}", emu_json_text(desc));
		json_object_put(name);
		json_object_put(desc);
	}
	emu_buf_adds(&b, "]");
	if (end < s->ntables) {
		char cur[40];

		cursor_make(e, 'L', 0, end, cur);
		emu_buf_addf(&b, ",\"nextPageCursor\":\"%s\"", cur);
	}
	pthread_rwlock_unlock(&s->lock);
	emu_buf_adds(&b, "}");
	emu_reply_buf(rp, 200, &b);
}

static struct emu_table *find_table(struct emu *e, struct emu_reply *rp,
				    const char *id)
{
	struct emu_table *t;

	/* tables are never freed while the emulator runs (a deleted one
	 * waits in the graveyard), so the pointer outlives the lock */
	pthread_rwlock_rdlock(&e->store.lock);
	t = emu_store_find(&e->store, id);
	pthread_rwlock_unlock(&e->store.lock);
	if (!t)
		emu_reply_error(rp, 404, "datatable.not.found", NULL,
				"no data table with id '%.64s'", id);
	return t;
}

static void handle_schema_get(struct emu *e, struct MHD_Connection *conn,
			      const char *id, struct emu_reply *rp)
{
	struct emu_table *t = find_table(e, rp, id);
	const char *inm = header(conn, MHD_HTTP_HEADER_IF_NONE_MATCH);
	struct emu_buf b;

	if (!t)
		return;
	emu_buf_init(&b);
	pthread_rwlock_rdlock(&e->store.lock);
	emu_schema_etag(&e->store, t, rp->etag, sizeof(rp->etag));
	if (!inm || !etag_matches(inm, rp->etag))
		emu_schema_json(&t->schema, &b);
	pthread_rwlock_unlock(&e->store.lock);
	if (inm && etag_matches(inm, rp->etag))
		emu_reply_empty(rp, 304);
	else
		emu_reply_buf(rp, 200, &b);
}

static void handle_schema_put(struct emu *e, struct MHD_Connection *conn,
			      const char *id, struct emu_req *rq,
			      struct emu_reply *rp)
{
	struct emu_table *t = find_table(e, rp, id);
	const char *im = header(conn, MHD_HTTP_HEADER_IF_MATCH);
	struct json_object *o = NULL;
	struct emu_schema next = {NULL, 0};
	char msg[256], cur[64];
	struct emu_buf b;

	if (!t)
		return;
	if (!im) {
		emu_reply_error(rp, 428, "precondition.required", NULL,
				"a schema PUT needs If-Match with the schema "
				"ETag");
		return;
	}
	o = emu_json_parse(rq->body.data ? rq->body.data : "", rq->body.len);
	if (!o) {
		emu_reply_error(rp, 400, "bad.request", NULL,
				"the body is not JSON");
		return;
	}
	if (emu_schema_parse(o, &next, msg, sizeof(msg))) {
		json_object_put(o);
		emu_reply_error(rp, 400, "bad.request", NULL, "%s", msg);
		return;
	}
	json_object_put(o);
	emu_buf_init(&b);
	pthread_rwlock_wrlock(&e->store.lock);
	emu_schema_etag(&e->store, t, cur, sizeof(cur));
	if (!etag_matches(im, cur)) {
		pthread_rwlock_unlock(&e->store.lock);
		emu_schema_release(&next);
		emu_reply_error(rp, 412, "version.mismatch", NULL,
				"the schema changed: current version is %s",
				cur);
		return;
	}
	if (emu_schema_check_additive(&t->schema, &next, msg, sizeof(msg))) {
		pthread_rwlock_unlock(&e->store.lock);
		emu_schema_release(&next);
		emu_reply_error(rp, 400, "schema.change.not.allowed", NULL,
				"only new non-key columns can be added: %s",
				msg);
		return;
	}
	emu_schema_carry(&t->schema, &next);
	emu_schema_release(&t->schema);
	t->schema = next;
	emu_table_touch(&e->store, t);
	t->schema_version = t->version;
	emu_schema_etag(&e->store, t, rp->etag, sizeof(rp->etag));
	emu_schema_json(&t->schema, &b);
	pthread_rwlock_unlock(&e->store.lock);
	emu_reply_buf(rp, 200, &b);
}

static void handle_rows_get(struct emu *e, struct MHD_Connection *conn,
			    const char *id, struct emu_reply *rp)
{
	struct emu_table *t = find_table(e, rp, id);
	const char *c = query(conn, "cursor");
	const char *inm = header(conn, MHD_HTTP_HEADER_IF_NONE_MATCH);
	long n, max;
	uint64_t pos = 0;
	struct emu_buf b;
	size_t served = 0;

	if (!t)
		return;
	pthread_mutex_lock(&e->lock);
	max = e->config.max_page_size;
	pthread_mutex_unlock(&e->lock);
	if (page_size(rp, conn, ROWS_PAGE_DEFAULT, max, &n))
		return;
	if (c && cursor_parse(e, c, 'R', t->id_hash, &pos)) {
		emu_reply_error(rp, 400, "invalid.cursor", NULL,
				"the cursor was not issued by this server");
		return;
	}
	emu_buf_init(&b);
	pthread_rwlock_rdlock(&e->store.lock);
	emu_table_etag(&e->store, t, rp->etag, sizeof(rp->etag));
	if (inm && etag_matches(inm, rp->etag)) {
		pthread_rwlock_unlock(&e->store.lock);
		emu_reply_empty(rp, 304);
		return;
	}
	emu_buf_adds(&b, "{\"rows\":[");
	size_t end = pos < t->nrows ? pos + (size_t)n : 0;

	if (end > t->nrows)
		end = t->nrows;
	for (size_t i = pos; i < end; i++) {
		const struct emu_row *r = t->rows[i];

		emu_buf_adds(&b, i > pos ? ",{\"id\":\"" : "{\"id\":\"");
		emu_buf_add(&b, r->id, 36);
		emu_buf_add(&b, "\",\"columns\":", 12);
		emu_buf_add(&b, emu_row_json(r), r->json_len);
		emu_buf_add(&b, "}", 1);
		served++;
	}
	emu_buf_add(&b, "]", 1);
	if (end && end < t->nrows) {
		char cur[40];

		cursor_make(e, 'R', t->id_hash, end, cur);
		emu_buf_addf(&b, ",\"nextPageCursor\":\"%s\"", cur);
	}
	pthread_rwlock_unlock(&e->store.lock);
	emu_buf_add(&b, "}", 1);
	pthread_mutex_lock(&e->lock);
	e->stats.rows_served += served;
	pthread_mutex_unlock(&e->lock);
	emu_reply_buf(rp, 200, &b);
}

static const char *pending_key(const void *item)
{
	return ((const struct emu_pending *)item)->key;
}

static struct json_object *details_json(const struct emu_row_errors *errs)
{
	struct json_object *a = json_object_new_array();

	for (size_t i = 0; i < errs->n; i++) {
		struct json_object *d = json_object_new_object();

		json_object_object_add(
		    d, "row", json_object_new_int64((int64_t)errs->v[i].row));
		json_object_object_add(
		    d, "fieldName", json_object_new_string(errs->v[i].field));
		json_object_object_add(d, "errorCode",
				       json_object_new_string(errs->v[i].code));
		json_object_array_add(a, d);
	}
	return a;
}

static const char *first_key(const struct emu_schema *s)
{
	for (size_t i = 0; i < s->ncols; i++)
		if (s->cols[i].key)
			return s->cols[i].name;
	return "";
}

static void handle_rows_post(struct emu *e, struct MHD_Connection *conn,
			     const char *id, struct emu_req *rq,
			     struct emu_reply *rp)
{
	struct emu_table *t = find_table(e, rp, id);
	const char *up = query(conn, "upsert");
	bool upsert =
	    up && (strcasecmp(up, "true") == 0 || strcmp(up, "1") == 0);
	struct json_object *o = NULL;
	struct emu_pending *pend = NULL;
	struct emu_row_errors errs = {NULL, 0, 0};
	struct emu_map batch;
	size_t n = 0, inserted = 0, updated = 0;
	bool locked = false;

	emu_map_init(&batch, pending_key);
	if (!t)
		goto out;
	o = emu_json_parse(rq->body.data ? rq->body.data : "", rq->body.len);
	if (!o || !json_object_is_type(o, json_type_array)) {
		emu_reply_error(rp, 400, "bad.request", NULL,
				"the body must be a JSON array of rows");
		goto out;
	}
	n = json_object_array_length(o);
	if (n == 0) {
		emu_reply_error(rp, 400, "bad.request", NULL,
				"the body must hold 1 to %d rows", MAX_BATCH);
		goto out;
	}
	if (n > MAX_BATCH) {
		emu_reply_error(rp, 413, "request.entity.too.large", NULL,
				"%zu rows in one request; the limit is %d", n,
				MAX_BATCH);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!json_object_is_type(json_object_array_get_idx(o, i),
					 json_type_object)) {
			emu_reply_error(
			    rp, 400, "bad.request", NULL,
			    "element %zu of the body is not an object", i);
			goto out;
		}
	}
	pend = emu_xcalloc(n, sizeof(*pend));
	pthread_rwlock_wrlock(&e->store.lock);
	locked = true;
	const char *keycol = first_key(&t->schema);

	for (size_t i = 0; i < n; i++) {
		struct json_object *cols = NULL;

		json_object_object_get_ex(json_object_array_get_idx(o, i),
					  "columns", &cols);
		if (emu_row_build(&t->schema, cols, i, &pend[i], &errs))
			continue;
		if (emu_map_put(&batch, &pend[i]))
			emu_row_errors_add(&errs, i, keycol, "duplicate.key");
	}
	if (errs.n) {
		emu_reply_error(
		    rp, 400, "invalid.row", details_json(&errs),
		    "%zu problem(s) in the batch; nothing was written", errs.n);
		goto out;
	}
	if (!upsert) {
		for (size_t i = 0; i < n; i++)
			if (emu_map_get(&t->by_key, pend[i].key))
				emu_row_errors_add(&errs, i, keycol,
						   "duplicate.key");
		if (errs.n) {
			emu_reply_error(rp, 409, "duplicate.key",
					details_json(&errs),
					"%zu row(s) already exist; nothing was "
					"written",
					errs.n);
			goto out;
		}
	}
	for (size_t i = 0; i < n; i++) {
		bool ins;

		emu_table_put(t, &pend[i], &ins);
		if (ins)
			inserted++;
		else
			updated++;
	}
	emu_table_touch(&e->store, t);
	emu_table_etag(&e->store, t, rp->etag, sizeof(rp->etag));
	pthread_rwlock_unlock(&e->store.lock);
	locked = false;
	pthread_mutex_lock(&e->lock);
	e->stats.rows_written += n;
	pthread_mutex_unlock(&e->lock);

	struct json_object *res = json_object_new_object();

	json_object_object_add(res, "inserted",
			       json_object_new_int64((int64_t)inserted));
	json_object_object_add(res, "updated",
			       json_object_new_int64((int64_t)updated));
	emu_reply_json(rp, 200, res);
out:
	if (locked)
		pthread_rwlock_unlock(&e->store.lock);
	if (pend) {
		for (size_t i = 0; i < n; i++)
			emu_pending_release(&pend[i]);
		free(pend);
	}
	emu_map_release(&batch);
	free(errs.v);
	json_object_put(o);
}

static void handle_row_delete(struct emu *e, const char *id, const char *row_id,
			      struct emu_reply *rp)
{
	struct emu_table *t = find_table(e, rp, id);
	int rc;

	if (!t)
		return;
	pthread_rwlock_wrlock(&e->store.lock);
	rc = emu_table_delete(t, row_id);
	if (!rc) {
		emu_table_touch(&e->store, t);
		emu_table_etag(&e->store, t, rp->etag, sizeof(rp->etag));
	}
	pthread_rwlock_unlock(&e->store.lock);
	if (rc) {
		emu_reply_error(rp, 404, "datatable.row.not.found", NULL,
				"no row with id '%.64s'", row_id);
		return;
	}
	pthread_mutex_lock(&e->lock);
	e->stats.rows_deleted++;
	pthread_mutex_unlock(&e->lock);
	emu_reply_empty(rp, 204);
}

/* ---- API entry: route, latency, auth, rate limit, scope, faults ---- */

/* path: percent-decoded by MHD; raw: as sent (production row keys may
 * hold an encoded '/'). Both without the /api/v2/ prefix. */
static void classify(const char *method, const char *path, const char *raw,
		     struct emu_target *r)
{
	static const char prefix[] = "datatables";
	size_t plen = sizeof(prefix) - 1;

	memset(r, 0, sizeof(*r));
	r->route = -1;
	if (emu_flows_classify(method, raw, r))
		return;
	if (strcmp(path, prefix) == 0) {
		if (strcmp(method, "GET") == 0)
			r->route = EMU_R_LIST;
		else
			r->bad_method = true;
		return;
	}
	if (strncmp(path, prefix, plen) != 0 || path[plen] != '/')
		return;
	const char *id = path + plen + 1;
	const char *slash = strchr(id, '/');

	if (!slash || (size_t)(slash - id) >= sizeof(r->table) || slash == id)
		return;
	memcpy(r->table, id, (size_t)(slash - id));
	r->table[slash - id] = '\0';
	const char *rest = slash;

	if (strcmp(rest, "/schema") == 0) {
		if (strcmp(method, "GET") == 0)
			r->route = EMU_R_SCHEMA;
		else if (strcmp(method, "PUT") == 0)
			r->route = EMU_R_SCHEMA_PUT;
		else
			r->bad_method = true;
	} else if (strcmp(rest, "/rows") == 0) {
		if (strcmp(method, "GET") == 0)
			r->route = EMU_R_ROWS_GET;
		else if (strcmp(method, "POST") == 0)
			r->route = EMU_R_ROWS_UPSERT;
		else
			r->bad_method = true;
	} else if (strncmp(rest, "/rows/", 6) == 0 && rest[6] &&
		   !strchr(rest + 6, '/') &&
		   strlen(rest + 6) < sizeof(r->row)) {
		snprintf(r->row, sizeof(r->row), "%s", rest + 6);
		if (strcmp(method, "DELETE") == 0)
			r->route = EMU_R_ROW_DELETE;
		else
			r->bad_method = true;
	}
}

static void window_roll(struct emu *e, struct emu_client *c, uint64_t now)
{
	uint64_t len = (uint64_t)e->config.rate_window_s * 1000u;

	if (!c->window_start_ms || now >= c->window_start_ms + len) {
		c->window_start_ms = now;
		c->window_count = 0;
	}
}

/* The armed race, moved out and disarmed; e->lock held. */
static struct emu_race race_take(struct emu *e)
{
	struct emu_race r = e->race;

	e->race.route = -1;
	e->race.del_key = NULL;
	e->race.insert = NULL;
	e->race.fired++;
	return r;
}

/* Make a taken race's change; frees its strings. */
static void race_fire(struct emu *e, struct emu_race *r)
{
	if (emu_flows_race_apply(e, r->table, r->del_key, r->insert) == 0)
		log_info("race fired before %s #%llu", route_names[r->route],
			 (unsigned long long)r->nth);
	free(r->del_key);
	free(r->insert);
}

static void handle_api(struct emu *e, struct MHD_Connection *conn,
		       const char *method, const char *path, struct emu_req *rq,
		       struct emu_reply *rp)
{
	struct emu_target r;
	struct emu_race race = {.route = -1};
	const char *auth = header(conn, MHD_HTTP_HEADER_AUTHORIZATION);
	struct emu_token *tok = NULL;
	struct emu_client *client;
	unsigned scopes = 0;
	long latency, fail_status = 0;
	bool limited;
	uint64_t now;

	classify(method, path,
		 strncmp(rq->raw_path, "/api/v2/", 8) == 0 ? rq->raw_path + 8
							   : path,
		 &r);
	rp->counted = true;
	rp->prod = r.prod;
	pthread_mutex_lock(&e->lock);
	if (r.route >= 0)
		e->stats.by_route[r.route]++;
	latency = e->config.latency_ms;
	if (r.route >= 0 && r.route == e->race.route &&
	    e->stats.by_route[r.route] == e->race.nth)
		race = race_take(e);
	pthread_mutex_unlock(&e->lock);
	if (race.route >= 0)
		race_fire(e, &race);
	wait_latency(e, latency);

	pthread_mutex_lock(&e->lock);
	now = emu_now_ms();
	if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
		const char *v = auth + 7;

		while (*v == ' ')
			v++;
		tok = emu_map_get(&e->tokens, v);
		if (tok && now >= tok->expires_ms)
			tok = NULL;
	}
	client = tok ? tok->client : &e->anonymous;
	scopes = tok ? tok->scopes : 0;
	window_roll(e, client, now);
	client->window_count++;
	limited = client->window_count > e->config.rate_limit;
	/* the platform removed its budget headers: none on production */
	rp->ratelimit = !r.prod;
	rp->rl_remaining =
	    limited ? 0 : e->config.rate_limit - client->window_count;
	uint64_t end =
	    client->window_start_ms + (uint64_t)e->config.rate_window_s * 1000u;
	rp->rl_reset = (long)((end - now + 999) / 1000);
	if (rp->rl_reset < 1)
		rp->rl_reset = 1;
	if (!limited && tok && r.route >= 0) {
		if (e->config.fail_next > 0) {
			e->config.fail_next--;
			fail_status = e->config.fail_next_status;
		} else if (e->config.fail_rate > 0 &&
			   (double)(emu_random64() >> 11) * 0x1.0p-53 <
			       e->config.fail_rate) {
			static const long codes[] = {500, 502, 503};

			fail_status = codes[emu_random64() % 3];
		}
	}
	pthread_mutex_unlock(&e->lock);

	if (limited) {
		rp->retry_after = rp->rl_reset;
		emu_reply_error(rp, 429, "too.many.requests.retry.after", NULL,
				"Rate limit exceeded the maximum. Retry the "
				"request in [%ld] seconds",
				rp->rl_reset);
		goto out;
	}
	if (!tok) {
		emu_reply_error(rp, 401, "authentication.required", NULL,
				"a valid bearer token is required");
		goto out;
	}
	if (r.bad_method) {
		emu_reply_error(rp, 405, "method.not.allowed", NULL,
				"%s is not allowed on this resource", method);
		goto out;
	}
	if (r.route < 0) {
		emu_reply_error(rp, 404, "not.found", NULL, "no such resource");
		goto out;
	}
	bool get = strcmp(method, "GET") == 0;
	unsigned need = r.prod
			    ? (get ? EMU_SCOPE_ARCH_READ : EMU_SCOPE_ARCH_WRITE)
			    : (get ? EMU_SCOPE_READ : EMU_SCOPE_WRITE);
	if (!(scopes & need)) {
		emu_reply_error(rp, 403, "missing.permissions", NULL,
				"the token lacks the scope %s",
				need == EMU_SCOPE_READ	  ? "data-table:read"
				: need == EMU_SCOPE_WRITE ? "data-table:write"
				: need == EMU_SCOPE_ARCH_READ
				    ? "architect:readonly"
				    : "architect");
		goto out;
	}
	if (fail_status) {
		if (fail_status == 503)
			emu_reply_error(
			    rp, 503,
			    r.prod ? "flows.datatables.server.too.busy"
				   : "server.too.busy",
			    NULL, "injected fault: server too busy");
		else if (fail_status == 502)
			emu_reply_error(rp, 502, "bad.gateway", NULL,
					"injected fault: bad gateway");
		else
			emu_reply_error(rp, (unsigned)fail_status,
					"internal.server.error", NULL,
					"injected fault");
		goto out;
	}
	if (rq->too_large) {
		emu_reply_error(rp, 413, "request.entity.too.large", NULL,
				"the body is larger than %u bytes", MAX_BODY);
		goto out;
	}
	if (r.prod) {
		struct emu_ctx ctx = {e, conn, method, rq, rp, tok->client->id};

		emu_flows_handle(&ctx, &r);
		goto out;
	}
	switch ((enum emu_route)r.route) {
	case EMU_R_LIST:
		handle_list(e, conn, rp);
		break;
	case EMU_R_SCHEMA:
		handle_schema_get(e, conn, r.table, rp);
		break;
	case EMU_R_SCHEMA_PUT:
		handle_schema_put(e, conn, r.table, rq, rp);
		break;
	case EMU_R_ROWS_GET:
		handle_rows_get(e, conn, r.table, rp);
		break;
	case EMU_R_ROWS_UPSERT:
		handle_rows_post(e, conn, r.table, rq, rp);
		break;
	case EMU_R_ROW_DELETE:
		handle_row_delete(e, r.table, r.row, rp);
		break;
	default:
		break;
	}
out:
	free(r.key);
}

/* The URLs a job hands out: no token, no rate limit, no injected faults
 * (they stand for an object store's URLs), but counted and delayed. */
static void handle_transfer(struct emu *e, struct MHD_Connection *conn,
			    const char *method, struct emu_req *rq,
			    struct emu_reply *rp, struct emu_target *r)
{
	struct emu_ctx ctx = {e, conn, method, rq, rp, ""};
	long latency;

	rp->counted = true;
	pthread_mutex_lock(&e->lock);
	if (r->route >= 0)
		e->stats.by_route[r->route]++;
	latency = e->config.latency_ms;
	pthread_mutex_unlock(&e->lock);
	wait_latency(e, latency);
	emu_transfer_handle(&ctx, r);
}

/* ---- control endpoints ---- */

#define SETTING(key, flag, opt, min, max)                                      \
	{#key, flag, opt, offsetof(struct emu_config, key), min, max}

const struct emu_setting emu_settings[] = {
    SETTING(latency_ms, "--latency", 'L', 0, 600000),
    SETTING(fail_next, NULL, 0, 0, 1000000000),
    SETTING(fail_next_status, NULL, 0, 500, 599),
    SETTING(rate_limit, "--rate-limit", 0, 0, 1000000000),
    SETTING(rate_window_s, "--rate-limit", 0, 1, 86400),
    SETTING(token_ttl_s, "--token-ttl", 't', 0, 10000000),
    SETTING(max_page_size, "--max-page-size", 'm', 1, 1000000),
    SETTING(job_delay_ms, "--job-delay", 'J', 0, 600000),
    SETTING(max_rows, "--max-rows", 'R', 0, 100000000),
    SETTING(max_properties, "--max-properties", 'P', 1, 100000),
    SETTING(max_tables, "--max-tables", 'T', 0, 1000000),
    SETTING(max_name_length, "--max-name-length", 'N', 1, 100000),
    SETTING(max_flows_page_size, "--max-flows-page-size", 'F', 1, 1000000),
    SETTING(download_status, "--download-status", 'D', 302, 303),
};
const size_t emu_nsettings = sizeof(emu_settings) / sizeof(emu_settings[0]);

static struct json_object *config_json(const struct emu_config *c)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "fail_rate",
			       json_object_new_double(c->fail_rate));
	for (size_t i = 0; i < emu_nsettings; i++)
		json_object_object_add(
		    o, emu_settings[i].key,
		    json_object_new_int64(*emu_setting_field(
			(struct emu_config *)c, &emu_settings[i])));
	return o;
}

static void control_stats(struct emu *e, struct emu_reply *rp)
{
	struct json_object *o = json_object_new_object();
	struct json_object *routes = json_object_new_object();
	struct json_object *status = json_object_new_object();

	pthread_mutex_lock(&e->lock);
	json_object_object_add(
	    o, "requests_total",
	    json_object_new_int64((int64_t)e->stats.requests_total));
	json_object_object_add(
	    o, "max_in_flight",
	    json_object_new_int64((int64_t)e->stats.max_in_flight));
	/* the cursor routes always; the production ones once counted, so
	 * that readers of the cursor routes see the same object as ever */
	for (int i = 0; i < EMU_R_COUNT; i++)
		if (i < EMU_R_FLOWS_LIST || e->stats.by_route[i])
			json_object_object_add(
			    routes, route_names[i],
			    json_object_new_int64(
				(int64_t)e->stats.by_route[i]));
	for (int i = 0; i < 600; i++) {
		char k[8];

		if (!e->stats.by_status[i])
			continue;
		snprintf(k, sizeof(k), "%d", i);
		json_object_object_add(
		    status, k,
		    json_object_new_int64((int64_t)e->stats.by_status[i]));
	}
	json_object_object_add(o, "by_route", routes);
	json_object_object_add(o, "by_status", status);
	json_object_object_add(
	    o, "rows_served",
	    json_object_new_int64((int64_t)e->stats.rows_served));
	json_object_object_add(
	    o, "rows_written",
	    json_object_new_int64((int64_t)e->stats.rows_written));
	json_object_object_add(
	    o, "rows_deleted",
	    json_object_new_int64((int64_t)e->stats.rows_deleted));
	json_object_object_add(o, "config", config_json(&e->config));
	pthread_mutex_unlock(&e->lock);
	emu_reply_json(rp, 200, o);
}

static int config_long(struct json_object *v, long min, long max, long *out)
{
	if (!json_object_is_type(v, json_type_int))
		return -EINVAL;
	int64_t x = json_object_get_int64(v);

	if (x < min || x > max)
		return -EINVAL;
	*out = (long)x;
	return 0;
}

static void control_config(struct emu *e, struct emu_req *rq,
			   struct emu_reply *rp)
{
	struct json_object *o =
	    emu_json_parse(rq->body.data ? rq->body.data : "", rq->body.len);
	struct emu_config c;
	bool rate_changed = false;

	if (!o || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		emu_reply_error(rp, 400, "bad.request", NULL,
				"the body must be a JSON object");
		return;
	}
	pthread_mutex_lock(&e->lock);
	c = e->config;
	json_object_object_foreach(o, k, v)
	{
		int rc = -EINVAL;

		if (strcmp(k, "fail_rate") == 0 &&
		    (json_object_is_type(v, json_type_int) ||
		     json_object_is_type(v, json_type_double))) {
			c.fail_rate = json_object_get_double(v);
			rc = (c.fail_rate >= 0 && c.fail_rate <= 1) ? 0
								    : -EINVAL;
		}
		for (size_t i = 0; i < emu_nsettings; i++) {
			const struct emu_setting *st = &emu_settings[i];

			if (strcmp(k, st->key))
				continue;
			rc = config_long(v, st->min, st->max,
					 emu_setting_field(&c, st));
			if (!strncmp(k, "rate_", 5))
				rate_changed = true;
		}
		if (rc) {
			pthread_mutex_unlock(&e->lock);
			emu_reply_error(rp, 400, "bad.request", NULL,
					"bad or unknown config key '%.64s'", k);
			json_object_put(o);
			return;
		}
	}
	e->config = c;
	if (rate_changed) {
		/* a new budget starts fresh windows for every client */
		for (size_t i = 0; i < e->nclients; i++)
			e->clients[i].window_start_ms = 0;
		e->anonymous.window_start_ms = 0;
	}
	struct json_object *res = config_json(&e->config);

	pthread_mutex_unlock(&e->lock);
	json_object_put(o);
	emu_jobs_kick(e); /* the job delay may have changed */
	emu_reply_json(rp, 200, res);
	log_info("config changed");
}

static struct json_object *race_json(const struct emu *e)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "armed",
			       json_object_new_boolean(e->race.route >= 0));
	if (e->race.route >= 0) {
		json_object_object_add(
		    o, "route", json_object_new_string(route_names[e->race.route]));
		json_object_object_add(o, "nth",
				       json_object_new_int64((int64_t)e->race.nth));
	}
	json_object_object_add(o, "fired",
			       json_object_new_int64((int64_t)e->race.fired));
	return o;
}

/* POST /_emu/race {"route", "nth", "table", "delete": key | "insert": row}
 * arms one race (replacing an armed one); {} disarms. */
static void control_race(struct emu *e, struct emu_req *rq,
			 struct emu_reply *rp)
{
	struct json_object *o =
	    emu_json_parse(rq->body.data ? rq->body.data : "", rq->body.len);
	struct json_object *route = NULL, *nth = NULL, *table = NULL;
	struct json_object *del = NULL, *ins = NULL;
	struct emu_race r = {.route = -1};
	const char *why = NULL;

	if (!o || !json_object_is_type(o, json_type_object)) {
		why = "the body must be a JSON object";
		goto out;
	}
	json_object_object_get_ex(o, "route", &route);
	json_object_object_get_ex(o, "nth", &nth);
	json_object_object_get_ex(o, "table", &table);
	json_object_object_get_ex(o, "delete", &del);
	json_object_object_get_ex(o, "insert", &ins);
	if (json_object_object_length(o) == 0)
		goto arm; /* disarm */
	for (int i = 0; route && i < EMU_R_COUNT; i++)
		if (json_object_is_type(route, json_type_string) &&
		    strcmp(json_object_get_string(route), route_names[i]) == 0)
			r.route = i;
	if (r.route < 0)
		why = "'route' must name a route of /_emu/stats";
	else if (!nth || !json_object_is_type(nth, json_type_int) ||
		 json_object_get_int64(nth) < 1)
		why = "'nth' must be an integer of at least 1";
	else if (!table || !json_object_is_type(table, json_type_string) ||
		 json_object_get_string_len(table) == 0 ||
		 json_object_get_string_len(table) >= (int)sizeof(r.table))
		why = "'table' must be a table id";
	else if (!del == !ins)
		why = "give one of 'delete' (a key) and 'insert' (a row)";
	else if (del && !json_object_is_type(del, json_type_string))
		why = "'delete' must be a row key";
	else if (ins && !json_object_is_type(ins, json_type_object))
		why = "'insert' must be a row object";
	if (why)
		goto out;
	r.nth = (uint64_t)json_object_get_int64(nth);
	snprintf(r.table, sizeof(r.table), "%s", json_object_get_string(table));
	if (del)
		r.del_key = emu_xstrdup(json_object_get_string(del));
	else
		r.insert = emu_xstrdup(json_object_to_json_string_ext(
		    ins, JSON_C_TO_STRING_PLAIN));
arm:
	pthread_mutex_lock(&e->lock);
	free(e->race.del_key);
	free(e->race.insert);
	r.fired = e->race.fired;
	e->race = r;
	struct json_object *res = race_json(e);

	pthread_mutex_unlock(&e->lock);
	emu_reply_json(rp, 200, res);
out:
	if (why)
		emu_reply_error(rp, 400, "bad.request", NULL, "%s", why);
	json_object_put(o);
}

static void handle_control(struct emu *e, struct MHD_Connection *conn,
			   const char *method, const char *url,
			   struct emu_req *rq, struct emu_reply *rp)
{
	if (!is_loopback(conn)) {
		emu_reply_error(
		    rp, 403, "forbidden", NULL,
		    "control endpoints answer loopback clients only");
		return;
	}
	if (strcmp(url, "/_emu/stats") == 0 && strcmp(method, "GET") == 0) {
		control_stats(e, rp);
	} else if (strcmp(url, "/_emu/stats/reset") == 0 &&
		   strcmp(method, "POST") == 0) {
		pthread_mutex_lock(&e->lock);
		memset(&e->stats, 0, sizeof(e->stats));
		pthread_mutex_unlock(&e->lock);
		control_stats(e, rp);
	} else if (strcmp(url, "/_emu/config") == 0 &&
		   strcmp(method, "GET") == 0) {
		pthread_mutex_lock(&e->lock);
		struct json_object *o = config_json(&e->config);

		pthread_mutex_unlock(&e->lock);
		emu_reply_json(rp, 200, o);
	} else if (strcmp(url, "/_emu/config") == 0 &&
		   strcmp(method, "POST") == 0) {
		control_config(e, rq, rp);
	} else if (strcmp(url, "/_emu/race") == 0 &&
		   strcmp(method, "GET") == 0) {
		pthread_mutex_lock(&e->lock);
		struct json_object *o = race_json(e);

		pthread_mutex_unlock(&e->lock);
		emu_reply_json(rp, 200, o);
	} else if (strcmp(url, "/_emu/race") == 0 &&
		   strcmp(method, "POST") == 0) {
		control_race(e, rq, rp);
	} else if (strcmp(url, "/_emu/tokens/expire") == 0 &&
		   strcmp(method, "POST") == 0) {
		size_t n = 0;

		pthread_mutex_lock(&e->lock);
		for (size_t i = 0; i <= e->tokens.mask; i++) {
			struct emu_token *t = e->tokens.slots[i].item;

			if (t && t->expires_ms) {
				t->expires_ms = 0;
				n++;
			}
		}
		pthread_mutex_unlock(&e->lock);
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "expired",
				       json_object_new_int64((int64_t)n));
		emu_reply_json(rp, 200, o);
	} else {
		emu_reply_error(rp, 404, "not.found", NULL,
				"unknown control endpoint");
	}
}

/* ---- MHD glue ---- */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	struct emu *e = cls;
	struct emu_req *rq = *con_cls;
	struct emu_reply rp;
	struct emu_target target;
	enum MHD_Result ret;

	(void)version;
	memset(&target, 0, sizeof(target));
	target.route = -1;
	if (!rq) {
		rq = emu_xcalloc(1, sizeof(*rq));
		emu_buf_init(&rq->body);
		*con_cls = rq;
	}
	if (!rq->started) {
		rq->started = true;
		return MHD_YES;
	}
	if (*upload_data_size) {
		if (rq->too_large ||
		    rq->body.len + *upload_data_size > MAX_BODY)
			rq->too_large = true;
		else
			emu_buf_add(&rq->body, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}

	memset(&rp, 0, sizeof(rp));
	rp.retry_after = -1;
	emu_uuid_format(emu_random64(), emu_random64(), rp.corr);
	if (strncmp(url, "/_emu/", 6) == 0) {
		handle_control(e, conn, method, url, rq, &rp);
	} else if (strcmp(url, "/oauth/token") == 0) {
		long latency;

		rp.counted = true;
		pthread_mutex_lock(&e->lock);
		e->stats.by_route[EMU_R_TOKEN]++;
		latency = e->config.latency_ms;
		pthread_mutex_unlock(&e->lock);
		wait_latency(e, latency);
		if (rq->too_large)
			reply_oauth_error(&rp, 413, "invalid_request",
					  "body too large");
		else
			handle_token(e, conn, method, rq, &rp);
	} else if (strncmp(url, "/api/v2/", 8) == 0) {
		handle_api(e, conn, method, url + 8, rq, &rp);
	} else if (emu_transfer_classify(method, rq->raw_path, &target)) {
		handle_transfer(e, conn, method, rq, &rp, &target);
	} else {
		emu_reply_error(&rp, 404, "not.found", NULL,
				"no such resource");
	}
	log_debug("%s %s -> %u", method, url, rp.status);
	ret = send_reply(e, conn, &rp);
	free(rp.body);
	free(rp.location);
	return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct emu_req *rq = *con_cls;

	(void)cls;
	(void)conn;
	(void)toe;
	if (!rq)
		return;
	emu_buf_release(&rq->body);
	free(rq->raw_path);
	free(rq);
	*con_cls = NULL;
}

__attribute__((format(printf, 2, 0))) static void
on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	log_vmsg(LOG_WARNING, fmt, ap);
}

/* MHD percent-decodes the path before the access handler sees it; the
 * production API's row keys may hold an encoded '/', so keep the raw path. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct emu_req *rq = emu_xcalloc(1, sizeof(*rq));
	size_t n = strcspn(uri, "?");

	(void)cls;
	(void)conn;
	emu_buf_init(&rq->body);
	rq->raw_path = emu_xmalloc(n + 1);
	memcpy(rq->raw_path, uri, n);
	rq->raw_path[n] = '\0';
	return rq;
}

void emu_tokens_init(struct emu *e)
{
	emu_map_init(&e->tokens, token_key);
}

struct MHD_Daemon *emu_http_start(struct emu *e, int listen_fd)
{
	return MHD_start_daemon(
	    MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
		MHD_USE_POLL | MHD_USE_ITC | MHD_USE_ERROR_LOG,
	    0, NULL, NULL, on_request, e, MHD_OPTION_EXTERNAL_LOGGER,
	    on_mhd_log, e, MHD_OPTION_LISTEN_SOCKET, listen_fd,
	    MHD_OPTION_NOTIFY_COMPLETED, on_completed, e,
	    MHD_OPTION_URI_LOG_CALLBACK, on_uri, e,
	    MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)300, MHD_OPTION_END);
}

void emu_http_stop(struct MHD_Daemon *d)
{
	if (d)
		MHD_stop_daemon(d);
}
