/*
 * Unit tests of the production dialect (api/flows.c) and of our own request
 * budget (api/budget.c) against a loopback HTTP server that answers by
 * route and records every request (method, path, headers, body, arrival
 * time): tables, schemas, numbered pages with the page size halving,
 * single-row writes and their errno, import and export jobs (upload
 * headers exactly, no token off the API, the redirect), 429 with
 * Retry-After and no budget headers, and one budget shared by two clients
 * and by two processes.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "log.h"

/* ---- the server ------------------------------------------------------- */

#define MAX_LOG 512
#define REQ_MAX (1 << 20)

struct rq {
	char method[8];
	char path[2048];
	char *head; /* the request line and headers */
	char *body;
	size_t body_len;
	double at; /* CLOCK_MONOTONIC arrival */
};

struct srv;
/* Write a whole answer (status line, headers, blank line, body) into out;
 * Content-Length is added. */
typedef void (*route_fn)(struct srv *s, const struct rq *r, char *out,
			 size_t size);

struct srv {
	int fd;
	pthread_t t;
	char url[64];
	route_fn route;
	void *user;
	int state; /* for routes that change their answer */
	pthread_mutex_t mu;
	struct rq log[MAX_LOG];
	int n;		   /* API requests logged (tokens not) */
	int tokens;	   /* token requests */
	bool refuse_scope; /* token requests with a scope get invalid_scope */
	char token_body[512];
};

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *srv_main(void *arg)
{
	struct srv *s = arg;
	char *buf = malloc(REQ_MAX + 1), *out = malloc(REQ_MAX);

	for (;;) {
		int fd = accept(s->fd, NULL, NULL);
		size_t got = 0, head_len = 0, body_len = 0;
		struct rq r = {0};
		char *end, *sep;

		if (fd < 0)
			break;
		for (;;) {
			ssize_t n = read(fd, buf + got, REQ_MAX - got);
			char *cl;

			if (n <= 0)
				break;
			got += (size_t)n;
			buf[got] = '\0';
			end = strstr(buf, "\r\n\r\n");
			if (!end)
				continue;
			head_len = (size_t)(end + 4 - buf);
			cl = strcasestr(buf, "\r\nContent-Length:");
			body_len =
			    cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0;
			if (got >= head_len + body_len)
				break;
		}
		r.at = mono();
		buf[got] = '\0';
		sscanf(buf, "%7s %2047s", r.method, r.path);
		r.head = strndup(buf, head_len);
		r.body = malloc(body_len + 1);
		memcpy(r.body, buf + head_len, body_len);
		r.body[body_len] = '\0';
		r.body_len = body_len;
		out[0] = '\0';
		if (!strcmp(r.path, "/oauth/token")) {
			pthread_mutex_lock(&s->mu);
			s->tokens++;
			snprintf(s->token_body, sizeof(s->token_body), "%s",
				 r.body);
			pthread_mutex_unlock(&s->mu);
			if (s->refuse_scope && strstr(r.body, "scope="))
				snprintf(out, REQ_MAX,
					 "HTTP/1.1 400 Bad Request\r\n"
					 "Content-Type: application/json\r\n"
					 "\r\n{\"error\":\"invalid_scope\"}");
			else
				snprintf(
				    out, REQ_MAX,
				    "HTTP/1.1 200 OK\r\nContent-Type: "
				    "application/json\r\n\r\n"
				    "{\"access_token\":\"tok\",\"token_type\":"
				    "\"bearer\",\"expires_in\":3600}");
			free(r.head);
			free(r.body);
		} else {
			s->route(s, &r, out, REQ_MAX);
			pthread_mutex_lock(&s->mu);
			if (s->n < MAX_LOG) {
				s->log[s->n++] = r;
			} else {
				free(r.head);
				free(r.body);
			}
			pthread_mutex_unlock(&s->mu);
		}
		sep = strstr(out, "\r\n\r\n");
		if (sep) {
			char hl[96];
			int n = snprintf(hl, sizeof(hl),
					 "\r\nConnection: close\r\n"
					 "Content-Length: %zu\r\n\r\n",
					 strlen(sep + 4));

			/* a client that went away is its own test's
			 * failure */
			if (write(fd, out, (size_t)(sep - out)) >= 0 &&
			    write(fd, hl, (size_t)n) >= 0 &&
			    write(fd, sep + 4, strlen(sep + 4)) < 0)
				n = 0;
		}
		close(fd);
	}
	free(buf);
	free(out);
	return NULL;
}

static void srv_start(struct srv *s, route_fn route, void *user)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);

	memset(s, 0, sizeof(*s));
	s->route = route;
	s->user = user;
	pthread_mutex_init(&s->mu, NULL);
	s->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s->fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(s->fd, 64), 0);
	assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &len), 0);
	snprintf(s->url, sizeof(s->url), "http://127.0.0.1:%d",
		 ntohs(sa.sin_port));
	assert_int_equal(pthread_create(&s->t, NULL, srv_main, s), 0);
}

/* Forget the requests logged so far. */
static void srv_reset(struct srv *s)
{
	pthread_mutex_lock(&s->mu);
	for (int i = 0; i < s->n; i++) {
		free(s->log[i].head);
		free(s->log[i].body);
	}
	s->n = 0;
	pthread_mutex_unlock(&s->mu);
}

static void srv_stop(struct srv *s)
{
	shutdown(s->fd, SHUT_RDWR);
	close(s->fd);
	pthread_join(s->t, NULL);
	srv_reset(s);
	pthread_mutex_destroy(&s->mu);
}

static void answer(char *out, size_t size, const char *status,
		   const char *headers, const char *body)
{
	snprintf(out, size,
		 "HTTP/1.1 %s\r\n%sContent-Type: "
		 "application/json\r\nININ-Correlation-Id: "
		 "corr-1\r\n\r\n%s",
		 status, headers ? headers : "", body ? body : "");
}

static struct api *client(const struct srv *s, const char *dialect)
{
	struct api_config cfg = {.dialect = dialect,
				 .api_url = s->url,
				 .client_id = "id",
				 .client_secret = "sec",
				 .retry_budget_s = 20};
	struct api *api;

	assert_int_equal(api_new(&cfg, &api), 0);
	return api;
}

static bool has_header(const struct rq *r, const char *line)
{
	char want[512];

	snprintf(want, sizeof(want), "\r\n%s\r\n", line);
	return strcasestr(r->head, want) != NULL;
}

static const char TABLE_SCHEMA[] =
    "{\"$schema\":\"http://json-schema.org/draft-04/schema#\","
    "\"type\":\"object\",\"required\":[\"key\"],"
    "\"additionalProperties\":false,\"properties\":{"
    "\"score\":{\"$id\":\"/properties/score\",\"type\":\"number\","
    "\"title\":\"Score\",\"displayOrder\":1,\"default\":0.5},"
    "\"key\":{\"$id\":\"/properties/key\",\"type\":\"string\","
    "\"title\":\"Email\",\"displayOrder\":0},"
    "\"visits\":{\"$id\":\"/properties/visits\",\"type\":\"integer\","
    "\"title\":\"Visits\",\"displayOrder\":2}}}";

static void load_schema(struct api_schema *s)
{
	assert_int_equal(
	    api_schema_parse(TABLE_SCHEMA, strlen(TABLE_SCHEMA), NULL, s), 0);
}

/* ---- tables and schemas ----------------------------------------------- */

static void route_tables(struct srv *s, const struct rq *r, char *out,
			 size_t size)
{
	char body[2048];

	(void)s;
	if (!strncmp(r->path, "/api/v2/flows/datatables?pageNumber=1&", 38)) {
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":[{\"id\":\"t1\",\"name\":\"One\"},"
		       "{\"id\":\"t2\",\"name\":\"Two/x\"}],\"pageSize\":2,"
		       "\"pageNumber\":1,\"total\":3,\"pageCount\":2}");
	} else if (!strncmp(r->path, "/api/v2/flows/datatables?pageNumber=2&",
			    38)) {
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":[{\"id\":\"t3\",\"name\":\"Three\"}],"
		       "\"pageNumber\":2,\"total\":3,\"pageCount\":2}");
	} else if (!strcmp(r->path,
			   "/api/v2/flows/datatables/t1?expand=schema") &&
		   !strcmp(r->method, "GET")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"t1\",\"name\":\"One\",\"division\":"
			 "{\"id\":\"div-9\",\"name\":\"Home\",\"selfUri\":"
			 "\"/x\"},\"schema\":%s,\"selfUri\":\"/y\"}",
			 TABLE_SCHEMA);
		answer(out, size, "200 OK", NULL, body);
	} else if (!strcmp(r->path, "/api/v2/flows/datatables/t1") &&
		   !strcmp(r->method, "GET")) {
		answer(out, size, "200 OK", NULL,
		       "{\"id\":\"t1\",\"name\":\"One\",\"description\":"
		       "\"d\",\"division\":{\"id\":\"div-9\",\"name\":"
		       "\"Home\"},\"selfUri\":\"/y\"}");
	} else if (!strcmp(r->path,
			   "/api/v2/flows/datatables/t1?expand=schema") &&
		   !strcmp(r->method, "PUT")) {
		if (strstr(r->body, "\"type\":\"boolean\""))
			/* an existing property's type change */
			answer(out, size, "400 Bad Request", NULL,
			       "{\"message\":\"Schema changes may only add "
			       "properties\",\"code\":\"flows.datatables."
			       "schema.exception\",\"status\":400}");
		else
			answer(out, size, "200 OK", NULL, r->body);
	} else {
		/* no correlation header: the body's contextId stands in */
		snprintf(out, size,
			 "HTTP/1.1 404 Not Found\r\nContent-Type: "
			 "application/json\r\n\r\n"
			 "{\"message\":\"Not found\",\"code\":"
			 "\"flows.datatables.table.not.found\",\"status\":404,"
			 "\"contextId\":\"ctx-404\"}");
	}
}

/* What fn(api, arg) logs up to level. */
static char *capture_log_at(int level, int (*fn)(struct api *, const char *),
			    struct api *api, const char *arg, int want)
{
	char path[] = "/tmp/test_flows_log_XXXXXX", *buf = calloc(1, 8192);
	int fd = mkstemp(path), saved = dup(2);
	ssize_t n;

	assert_true(fd >= 0);
	log_init("test_flows", level);
	fflush(stderr);
	dup2(fd, 2);
	assert_int_equal(fn(api, arg), want);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	log_init("test_flows",
		 getenv("TEST_API_VERBOSE") ? LOG_DEBUG : LOG_CRIT);
	n = pread(fd, buf, 8191, 0);
	assert_true(n >= 0);
	close(fd);
	unlink(path);
	return buf;
}

/* What fn(api, arg) logs at error level. */
static char *capture_log(int (*fn)(struct api *, const char *), struct api *api,
			 const char *arg, int want)
{
	return capture_log_at(LOG_ERR, fn, api, arg, want);
}

static int get_schema_of(struct api *api, const char *id)
{
	struct api_schema s;
	int rc = api_get_schema(api, id, &s);

	if (!rc)
		api_schema_release(&s);
	return rc;
}

/* Names with a NUL, as the cursor dialect's listing meets them too. */
static void route_nul_names(struct srv *s, const struct rq *r, char *out,
			    size_t size)
{
	(void)s;
	(void)r;
	answer(out, size, "200 OK", NULL,
	       "{\"entities\":[{\"id\":\"t1\",\"name\":\"a\\u0000b\"},"
	       "{\"id\":\"t2\",\"name\":\"a\\u0000c\"},"
	       "{\"id\":\"t3\",\"name\":\"Good\"}],\"pageCount\":1}");
}

static int list_tables_of(struct api *api, const char *unused)
{
	struct api_table_list list;
	int rc = api_list_tables(api, &list);

	(void)unused;
	if (!rc) {
		/* "a\0b" and "a\0c" would both read "a" */
		assert_int_equal(list.count, 1);
		assert_string_equal(list.tables[0].name, "Good");
		api_table_list_release(&list);
	}
	return rc;
}

static void test_flows_nul_names_skipped(void **state)
{
	struct srv srv;
	struct api *api;
	char *log;

	(void)state;
	srv_start(&srv, route_nul_names, NULL);
	api = client(&srv, "flows");
	log = capture_log_at(LOG_WARNING, list_tables_of, api, NULL, 0);
	assert_non_null(strstr(log, "skipping table 't1' whose name or id "
				    "holds a NUL"));
	assert_non_null(strstr(log, "skipping table 't2'"));
	free(log);
	api_free(api);
	srv_stop(&srv);
}

static void test_flows_tables_and_schema(void **state)
{
	struct api_table_list list;
	struct api_schema s, put;
	struct api_caps caps;
	struct srv srv;
	struct api *api;
	char *body;

	(void)state;
	srv_start(&srv, route_tables, NULL);
	api = client(&srv, "flows");
	api_get_caps(api, &caps);
	assert_true(caps.numbered_pages);
	assert_true(caps.row_ops);
	assert_true(caps.csv_jobs);
	assert_false(caps.versions);
	assert_int_equal(caps.max_page_size, 500);
	assert_int_equal(caps.max_rows, 5000);
	/* our own budget by default: 300 per 60 s */
	assert_true(api_budget_rate(api) > 4.99 && api_budget_rate(api) < 5.01);

	assert_int_equal(api_list_tables(api, &list), 0);
	assert_int_equal(list.count, 3);
	assert_string_equal(list.tables[1].name, "Two/x");
	assert_string_equal(list.tables[2].id, "t3");
	api_table_list_release(&list);
	assert_int_equal(srv.n, 2);
	assert_string_equal(srv.log[0].path, "/api/v2/flows/datatables?"
					     "pageNumber=1&pageSize=100&"
					     "sortBy=id");
	assert_true(has_header(&srv.log[0], "Authorization: Bearer tok"));
	/* the token asks for the architect scope */
	assert_string_equal(srv.token_body,
			    "grant_type=client_credentials&scope=architect");

	/* schema.json: the JSON Schema, pretty, key first in columns */
	assert_int_equal(api_get_schema(api, "t1", &s), 0);
	assert_int_equal(s.ncolumns, 3);
	assert_string_equal(s.columns[0].name, "key");
	assert_string_equal(s.columns[2].name, "visits");
	assert_null(s.version);
	assert_non_null(strstr(s.json, "{\n  \"$schema\": \"http://json-schema"
				       ".org/draft-04/schema#\",\n"));
	assert_int_equal(s.json[s.json_len - 1], '\n');
	{
		struct api_schema s2;

		load_schema(&s2);
		assert_int_equal(s2.json_len, s.json_len);
		assert_memory_equal(s2.json, s.json, s.json_len);
		api_schema_release(&s2);
	}

	/* put: the whole table, name/description/division as they were */
	body = strdup(s.json);
	{
		char *p = strstr(body, "\"properties\": {");

		assert_non_null(p);
	}
	{
		const char *add =
		    "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":"
		    "\"string\",\"displayOrder\":0},\"score\":{\"type\":"
		    "\"number\",\"displayOrder\":1},\"visits\":{\"type\":"
		    "\"integer\",\"displayOrder\":2},\"tier\":{\"type\":"
		    "\"string\",\"displayOrder\":3}}}";

		srv_reset(&srv);
		assert_int_equal(
		    api_put_schema(api, "t1", add, strlen(add), NULL, &put), 0);
		assert_int_equal(put.ncolumns, 4);
		assert_string_equal(put.columns[3].name, "tier");
		api_schema_release(&put);
		assert_int_equal(srv.n, 2);
		assert_string_equal(srv.log[0].method, "GET");
		assert_string_equal(srv.log[1].method, "PUT");
		assert_string_equal(
		    srv.log[1].body,
		    "{\"id\":\"t1\",\"name\":\"One\",\"description\":\"d\","
		    "\"division\":{\"id\":\"div-9\"},\"schema\":{\"type\":"
		    "\"object\",\"properties\":{\"key\":{\"type\":\"string\","
		    "\"displayOrder\":0},\"score\":{\"type\":\"number\","
		    "\"displayOrder\":1},\"visits\":{\"type\":\"integer\","
		    "\"displayOrder\":2},\"tier\":{\"type\":\"string\","
		    "\"displayOrder\":3}}}}");
		assert_true(
		    has_header(&srv.log[1], "Content-Type: application/json"));
	}
	{
		const char *change =
		    "{\"properties\":{\"key\":{\"type\":\"string\"},"
		    "\"score\":{\"type\":\"boolean\"}}}";
		const char *junk = "{\"properties\": 3}";

		assert_int_equal(api_put_schema(api, "t1", change,
						strlen(change), NULL, &put),
				 -EINVAL);
		assert_null(put.json);
		srv_reset(&srv);
		assert_int_equal(
		    api_put_schema(api, "t1", junk, strlen(junk), NULL, &put),
		    -EINVAL);
		assert_int_equal(srv.n, 0); /* refused before sending */
	}
	free(body);
	api_schema_release(&s);
	api_free(api);
	/* an OAuth client without the architect scope: asked again
	 * without one (the SDKs send none), and not asked again */
	srv.refuse_scope = true;
	srv.tokens = 0;
	api = client(&srv, "flows");
	assert_int_equal(api_list_tables(api, &list), 0);
	api_table_list_release(&list);
	assert_int_equal(srv.tokens, 2);
	assert_string_equal(srv.token_body, "grant_type=client_credentials");
	{
		/* the platform's code, message and context id in the log */
		char *log = capture_log(get_schema_of, api, "nope", -ENOENT);

		assert_non_null(strstr(
		    log, "get schema of 'nope' failed: HTTP 404 "
			 "flows.datatables.table.not.found: \"Not found\" "
			 "(correlation ctx-404)"));
		assert_null(strstr(log, "tok"));
		free(log);
	}
	api_free(api);
	srv_stop(&srv);
}


/* ---- creating and deleting tables (issue 14) ---- */

static void route_create(struct srv *s, const struct rq *r, char *out,
			 size_t size)
{
	bool post = !strcmp(r->method, "POST");

	(void)s;
	if (post && !strcmp(r->path, "/api/v2/flows/datatables")) {
		if (strstr(r->body, "\"name\":\"Taken\""))
			answer(out, size, "409 Conflict", NULL,
			       "{\"message\":\"name in use\",\"code\":"
			       "\"flows.datatables.name.conflict\","
			       "\"status\":409}");
		else
			answer(out, size, "200 OK", NULL,
			       "{\"id\":\"t9\",\"name\":\"Queues\"}");
	} else if (!strncmp(r->path, "/api/v2/flows/datatables/t9", 27) &&
		   !strcmp(r->method, "DELETE")) {
		snprintf(out, size, "HTTP/1.1 204 No Content\r\n\r\n");
	} else {
		answer(out, size, "404 Not Found", NULL,
		       "{\"message\":\"Not found\",\"status\":404}");
	}
}

static void test_flows_create_and_delete_table(void **state)
{
	const char *schema =
	    "{\"type\":\"object\",\"properties\":{\"key\":{\"type\":"
	    "\"string\",\"displayOrder\":0},\"open\":{\"type\":\"boolean\","
	    "\"displayOrder\":1}}}";
	struct srv srv;
	struct api *api;
	char *id = NULL;

	(void)state;
	srv_start(&srv, route_create, NULL);
	api = client(&srv, "flows");
	assert_int_equal(api_create_table(api, "Queues", schema,
					  strlen(schema), &id),
			 0);
	assert_string_equal(id, "t9");
	free(id);
	assert_int_equal(srv.n, 1);
	/* name, and the schema titled after it (the platform overrides the
	 * title with the name anyway) */
	assert_string_equal(
	    srv.log[0].body,
	    "{\"name\":\"Queues\",\"schema\":{\"type\":\"object\","
	    "\"properties\":{\"key\":{\"type\":\"string\",\"displayOrder\":0},"
	    "\"open\":{\"type\":\"boolean\",\"displayOrder\":1}},\"title\":"
	    "\"Queues\"}}");
	assert_int_equal(api_create_table(api, "Taken", schema,
					  strlen(schema), &id),
			 -EEXIST);
	assert_null(id);
	/* not a schema: refused before anything is sent */
	srv_reset(&srv);
	assert_int_equal(api_create_table(api, "Bad", "[1]", 3, &id), -EINVAL);
	assert_int_equal(srv.n, 0);
	/* DELETE, with ?force=true only when asked */
	assert_int_equal(api_delete_table(api, "t9", false), 0);
	assert_int_equal(api_delete_table(api, "t9", true), 0);
	assert_int_equal(srv.n, 2);
	assert_string_equal(srv.log[0].method, "DELETE");
	assert_string_equal(srv.log[0].path, "/api/v2/flows/datatables/t9");
	assert_string_equal(srv.log[1].path,
			    "/api/v2/flows/datatables/t9?force=true");
	api_free(api);
	/* the cursor API has neither */
	api = client(&srv, "cursor");
	assert_int_equal(api_create_table(api, "Queues", schema,
					  strlen(schema), &id),
			 -ENOSYS);
	assert_int_equal(api_delete_table(api, "t9", false), -ENOSYS);
	api_free(api);
	srv_stop(&srv);
}

/* ---- pages ------------------------------------------------------------ */

static void route_pages(struct srv *s, const struct rq *r, char *out,
			size_t size)
{
	const char *ps = strstr(r->path, "pageSize=");
	unsigned size_asked = ps ? (unsigned)strtoul(ps + 9, NULL, 10) : 0;

	(void)s;
	if (!strstr(r->path, "showbrief=false")) {
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":[{\"key\":\"brief\"}]}");
		return;
	}
	if (size_asked > 100) {
		answer(out, size, "400 Bad Request", NULL,
		       "{\"message\":\"pageSize must be at most 100\","
		       "\"code\":\"bad.request\",\"status\":400}");
		return;
	}
	if (strstr(r->path, "pageNumber=1&")) {
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":["
		       "{\"visits\":3,\"key\":\"a\",\"score\":1.50},"
		       "{\"key\":\"b\\u00e9\\/\",\"score\":-0,\"visits\":"
		       "12345678901234567890},"
		       "{\"key\": \"c\", \"score\": 1e3, \"visits\": 0}],"
		       "\"pageSize\":62,\"pageNumber\":1,\"total\":125,"
		       "\"pageCount\":3}");
		return;
	}
	answer(out, size, "200 OK", NULL,
	       "{\"entities\":[],\"pageSize\":62,\"pageNumber\":9,"
	       "\"total\":125,\"pageCount\":3}");
}

/* A page holding a byte that is not UTF-8. */
static void route_bad_utf8(struct srv *s, const struct rq *r, char *out,
			   size_t size)
{
	(void)s;
	(void)r;
	answer(out, size, "200 OK", NULL,
	       "{\"entities\":[{\"key\":\"a\xff\"}],\"total\":1,"
	       "\"pageCount\":1}");
}

static int get_page_of(struct api *api, const char *id)
{
	struct api_page page;
	int rc = api_get_page(api, id, NULL, 1, 0, &page);

	if (!rc) {
		/* exported as sent */
		assert_int_equal(page.nrows, 1);
		assert_string_equal(page.data, "{\"key\":\"a\xff\"}\n");
		api_page_release(&page);
	}
	return rc;
}

/* Text an import would refuse is never exported without a word, as in
 * the cursor dialect (tests/integration/test_hostile.py). */
static void test_flows_page_bad_utf8_warned(void **state)
{
	struct srv srv;
	struct api *api;
	char *log;

	(void)state;
	srv_start(&srv, route_bad_utf8, NULL);
	api = client(&srv, "flows");
	log = capture_log_at(LOG_WARNING, get_page_of, api, "t1", 0);
	assert_non_null(strstr(log, "rows of 't1' hold text an import would "
				    "refuse"));
	free(log);
	api_free(api);
	srv_stop(&srv);
}

static void test_flows_pages(void **state)
{
	struct api_schema s;
	struct api_page page;
	struct api_caps caps;
	struct srv srv;
	struct api *api, *cursor;

	(void)state;
	load_schema(&s);
	srv_start(&srv, route_pages, NULL);
	api = client(&srv, "flows");
	assert_int_equal(api_get_page(api, "t 1", &s, 1, 0, &page), 0);
	/* 500 -> 250 -> 125 -> 62 */
	assert_int_equal(page.page_size, 62);
	assert_int_equal(srv.n, 4);
	assert_string_equal(srv.log[0].path,
			    "/api/v2/flows/datatables/t%201/rows?pageNumber=1&"
			    "pageSize=500&showbrief=false");
	assert_non_null(strstr(srv.log[3].path, "pageSize=62&"));
	assert_int_equal(page.nrows, 3);
	assert_int_equal(page.total, 125);
	assert_int_equal(page.page_count, 3);
	assert_null(page.version);
	assert_null(page.next_cursor);
	/* key first, then displayOrder; numbers' text kept */
	assert_string_equal(page.data,
			    "{\"key\":\"a\",\"score\":1.50,\"visits\":3}\n"
			    "{\"key\":\"b\xc3\xa9/\",\"score\":-0,\"visits\":"
			    "12345678901234567890}\n"
			    "{\"key\":\"c\",\"score\":1e3,\"visits\":0}\n");
	assert_int_equal(page.len, strlen(page.data));
	api_page_release(&page);
	/* remembered: the next call starts at 62 */
	api_get_caps(api, &caps);
	assert_int_equal(caps.max_page_size, 62);
	srv_reset(&srv);
	assert_int_equal(api_get_page(api, "t", &s, 9, 0, &page), 0);
	assert_int_equal(srv.n, 1);
	assert_int_equal(page.nrows, 0);
	assert_string_equal(page.data, "");
	assert_int_equal(page.page_size, 62);
	api_page_release(&page);
	/* an explicit smaller size is used as it is */
	assert_int_equal(api_get_page(api, "t", &s, 2, 25, &page), 0);
	assert_int_equal(page.page_size, 25);
	assert_non_null(strstr(srv.log[1].path, "pageNumber=2&pageSize=25&"));
	api_page_release(&page);
	assert_int_equal(api_get_page(api, "t", &s, 0, 0, &page), -EINVAL);
	/* cursor pages do not exist here, numbered pages not in cursor */
	assert_int_equal(api_get_rows(api, "t", &s, NULL, 0, NULL, &page),
			 -ENOSYS);
	cursor = client(&srv, "cursor");
	assert_int_equal(api_get_page(cursor, "t", &s, 1, 0, &page), -ENOSYS);
	assert_int_equal(api_row_create(cursor, "t", "{}", 2), -ENOSYS);
	api_get_caps(cursor, &caps);
	assert_false(caps.numbered_pages);
	assert_true(caps.versions);
	assert_true(api_budget_rate(cursor) == 0);
	api_free(cursor);
	api_free(api);
	srv_stop(&srv);
	api_schema_release(&s);
}

/* ---- single-row writes ------------------------------------------------ */

static void route_rows(struct srv *s, const struct rq *r, char *out,
		       size_t size)
{
	(void)s;
	if (!strcmp(r->method, "POST") && strstr(r->body, "\"exists\""))
		answer(out, size, "409 Conflict", NULL,
		       "{\"message\":\"A row with key exists already\","
		       "\"code\":\"flows.datatables.row.already.exists\","
		       "\"status\":409}");
	else if (!strcmp(r->method, "POST") && strstr(r->body, "\"dup400\""))
		answer(out, size, "400 Bad Request", NULL,
		       "{\"message\":\"duplicate key\",\"code\":"
		       "\"flows.datatables.duplicate.key\",\"status\":400}");
	else if (!strcmp(r->method, "POST") && strstr(r->body, "\"full\""))
		answer(out, size, "400 Bad Request", NULL,
		       "{\"message\":\"The table has reached the maximum "
		       "number of rows\",\"code\":\"flows.datatables.row."
		       "limit.exceeded\",\"status\":400}");
	else if (strstr(r->body, "\"bad\""))
		answer(out, size, "400 Bad Request", NULL,
		       "{\"message\":\"visits is not an integer\",\"code\":"
		       "\"flows.datatables.syntax.error\",\"status\":400}");
	else if (!strcmp(r->method, "POST"))
		answer(out, size, "200 OK", NULL, r->body);
	else if (strstr(r->path, "/rows/missing"))
		answer(out, size, "404 Not Found", NULL,
		       "{\"message\":\"Not found\",\"code\":"
		       "\"flows.datatables.row.not.found\",\"status\":404}");
	else if (!strcmp(r->method, "DELETE"))
		answer(out, size, "204 No Content", NULL, NULL);
	else
		answer(out, size, "200 OK", NULL, r->body);
}

static int create_row(struct api *api, const char *row)
{
	return api_row_create(api, "t1", row, strlen(row));
}

static void test_flows_rows(void **state)
{
	struct srv srv;
	struct api *api;
	const char *row = "{\"key\":\"a b/c\",\"score\":1.50}";

	(void)state;
	srv_start(&srv, route_rows, NULL);
	api = client(&srv, "flows");
	assert_int_equal(api_row_create(api, "t1", row, strlen(row)), 0);
	assert_string_equal(srv.log[0].method, "POST");
	assert_string_equal(srv.log[0].path,
			    "/api/v2/flows/datatables/t1/rows");
	assert_string_equal(srv.log[0].body, row);
	assert_true(has_header(&srv.log[0], "Content-Type: application/json"));
	assert_int_equal(
	    api_row_update(api, "t1", "a b/c\xc3\xa9", row, strlen(row)), 0);
	assert_string_equal(srv.log[1].method, "PUT");
	assert_string_equal(srv.log[1].path,
			    "/api/v2/flows/datatables/t1/rows/a%20b%2Fc%C3%A9");
	assert_string_equal(srv.log[1].body, row);
	assert_int_equal(api_row_delete_key(api, "t1", "a b/c"), 0);
	assert_string_equal(srv.log[2].method, "DELETE");
	assert_string_equal(srv.log[2].path,
			    "/api/v2/flows/datatables/t1/rows/a%20b%2Fc");
	assert_int_equal(api_delete_row(api, "t1", "k"), 0);

	assert_int_equal(api_row_create(api, "t1", "{\"key\":\"exists\"}", 16),
			 -EEXIST);
	assert_int_equal(api_row_create(api, "t1", "{\"key\":\"dup400\"}", 16),
			 -EEXIST);
	assert_int_equal(api_row_create(api, "t1", "{\"key\":\"full\"}", 14),
			 -ENOSPC);
	assert_int_equal(api_row_create(api, "t1", "{\"key\":\"bad\"}", 13),
			 -EINVAL);
	assert_int_equal(
	    api_row_update(api, "t1", "k", "{\"key\":\"bad\"}", 13), -EINVAL);
	assert_int_equal(
	    api_row_update(api, "t1", "missing", "{\"key\":\"missing\"}", 17),
	    -ENOENT);
	assert_int_equal(api_row_delete_key(api, "t1", "missing"), -ENOENT);
	/* none of these is retried: one request each */
	assert_int_equal(srv.n, 4 + 7);
	{
		/* an expected refusal is the caller's to handle: no error in
		 * the log; a refused row is, with the platform's message */
		char *log = capture_log(create_row, api, "{\"key\":\"exists\"}",
					-EEXIST);

		assert_string_equal(log, "");
		free(log);
		log =
		    capture_log(create_row, api, "{\"key\":\"bad\"}", -EINVAL);
		assert_non_null(strstr(log,
				       "create row of 't1' failed: HTTP 400 "
				       "flows.datatables.syntax.error: "
				       "\"visits is not an integer\" "
				       "(correlation corr-1)"));
		free(log);
		log =
		    capture_log(create_row, api, "{\"key\":\"full\"}", -ENOSPC);
		assert_non_null(strstr(log, "the table is full"));
		free(log);
	}
	api_free(api);
	srv_stop(&srv);
}

/* ---- CSV jobs --------------------------------------------------------- */

static void route_jobs(struct srv *s, const struct rq *r, char *out,
		       size_t size)
{
	char body[1024];
	bool fail = s->user != NULL;

	if (!strncmp(r->path, "/api/v2/flows/datatables?", 25)) {
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":[{\"id\":\"t1\",\"name\":\"Mail\"}],"
		       "\"pageCount\":1}");
	} else if (!strcmp(r->path,
			   "/api/v2/flows/datatables/t1/import/csv/jobs")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"job-1\",\"status\":\"WaitingForUpload\","
			 "\"uploadURI\":\"%s/upload/u1?sig=abc\","
			 "\"uploadHeaders\":{\"x-amz-meta-a\":\"1 2\","
			 "\"Content-Type\":\"text/csv\"}}",
			 s->url);
		answer(out, size, "200 OK", NULL, body);
	} else if (!strncmp(r->path, "/upload/u1?sig=abc", 18)) {
		s->state = 1;
		answer(out, size, "200 OK", NULL, NULL);
	} else if (!strcmp(r->path,
			   "/api/v2/flows/datatables/t1/import/jobs/job-1")) {
		if (s->state++ < 3)
			answer(out, size, "200 OK", NULL,
			       "{\"id\":\"job-1\",\"status\":\"Processing\"}");
		else if (fail)
			answer(out, size, "200 OK", NULL,
			       "{\"id\":\"job-1\",\"status\":\"Failed\","
			       "\"countRecordsUpdated\":0,"
			       "\"errorInformation\":{\"message\":\"The "
			       "file has no key column\",\"code\":"
			       "\"flows.datatables.csv.invalid\"}}");
		else
			answer(out, size, "200 OK", NULL,
			       "{\"id\":\"job-1\",\"status\":\"Succeeded\","
			       "\"countRecordsUpdated\":2,"
			       "\"countRecordsDeleted\":5,"
			       "\"countRecordsFailed\":1}");
	} else if (!strcmp(r->path,
			   "/api/v2/flows/datatables/t1/export/jobs")) {
		answer(out, size, "200 OK", NULL,
		       "{\"id\":\"exp-1\",\"status\":\"Processing\"}");
	} else if (!strcmp(r->path,
			   "/api/v2/flows/datatables/t1/export/jobs/exp-1")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"exp-1\",\"status\":\"Succeeded\","
			 "\"downloadURI\":\"%s/api/v2/downloads/d1\"}",
			 s->url);
		answer(out, size, "200 OK", NULL, body);
	} else if (!strcmp(r->path, "/api/v2/downloads/d1")) {
		answer(out, size, "303 See Other",
		       "Location: /signed/d1?X-Sig=zz\r\n", NULL);
	} else if (!strcmp(r->path, "/signed/d1?X-Sig=zz")) {
		snprintf(out, size,
			 "HTTP/1.1 200 OK\r\nContent-Type: text/csv\r\n\r\n"
			 "key,score\r\na,1.5\r\n");
	} else {
		answer(out, size, "404 Not Found", NULL, "{}");
	}
}

static void test_flows_import_job(void **state)
{
	struct api_job job;
	struct srv srv;
	struct api *api;
	const char *csv = "key,score\r\na,1\r\nb,2\r\n";
	const struct rq *up;

	(void)state;
	srv_start(&srv, route_jobs, NULL);
	api = client(&srv, "flows");
	assert_int_equal(
	    api_import_csv(api, "t1", csv, strlen(csv), false, &job), 0);
	assert_string_equal(job.id, "job-1");
	assert_string_equal(job.status, "Succeeded");
	assert_int_equal(job.updated, 2);
	assert_int_equal(job.deleted, 5);
	assert_int_equal(job.failed, 1);
	assert_null(job.error);
	api_job_release(&job);
	assert_string_equal(srv.log[0].method, "POST");
	assert_string_equal(srv.log[0].body, "{\"importMode\":\"Append\"}");
	up = &srv.log[1];
	assert_string_equal(up->method, "PUT");
	assert_string_equal(up->body, csv);
	/* exactly the upload headers: no token, no Accept */
	assert_true(has_header(up, "x-amz-meta-a: 1 2"));
	assert_true(has_header(up, "Content-Type: text/csv"));
	assert_null(strcasestr(up->head, "Authorization"));
	assert_null(strcasestr(up->head, "Accept:"));
	assert_null(strcasestr(up->head, "tok"));
	{
		/* request line, Host, User-Agent, the two, Content-Length */
		int lines = 0;

		for (const char *p = up->head; (p = strstr(p, "\r\n")); p += 2)
			lines++;
		assert_int_equal(lines, 6 + 1);
	}
	/* polled until done: 2 Processing, then Succeeded */
	assert_int_equal(srv.n, 2 + 3);
	assert_true(has_header(&srv.log[2], "Authorization: Bearer tok"));
	api_free(api);
	srv_stop(&srv);

	/* a Failed job: -EIO with the platform's message; ReplaceAll */
	srv_start(&srv, route_jobs, (void *)1);
	api = client(&srv, "flows");
	assert_int_equal(
	    api_import_csv(api, "t1", csv, strlen(csv), true, &job), -EIO);
	assert_string_equal(job.status, "Failed");
	assert_string_equal(job.error, "The file has no key column");
	assert_string_equal(srv.log[0].body, "{\"importMode\":\"ReplaceAll\"}");
	api_job_release(&job);
	api_free(api);
	srv_stop(&srv);
}

static int import_csv_into(struct api *api, const char *id)
{
	struct api_job job;
	int rc = api_import_csv(api, id, "key\r\n", 5, false, &job);

	api_job_release(&job);
	return rc;
}

static int export_csv_of(struct api *api, const char *id)
{
	char *csv;
	size_t len;
	int rc = api_export_csv(api, id, &csv, &len);

	free(csv);
	return rc;
}

/* Jobs that go wrong, by table: t2 downloads from another origin, t3
 * redirects forever, t4 asks for an unusable upload header, t5 for an
 * upload over plain http to another host. */
static void route_odd_jobs(struct srv *s, const struct rq *r, char *out,
			   size_t size)
{
	char body[1024];
	const char *port = strrchr(s->url, ':') + 1;

	if (strstr(r->path, "/t2/export/jobs")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"e\",\"status\":\"Succeeded\","
			 "\"downloadURI\":\"http://localhost:%s/dl\"}",
			 port);
		answer(out, size, "200 OK", NULL, body);
	} else if (!strcmp(r->path, "/dl")) {
		snprintf(out, size, "HTTP/1.1 200 OK\r\n\r\nkey\r\n");
	} else if (strstr(r->path, "/t3/export/jobs")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"e\",\"status\":\"Succeeded\","
			 "\"downloadURI\":\"%s/loop\"}",
			 s->url);
		answer(out, size, "200 OK", NULL, body);
	} else if (!strcmp(r->path, "/loop")) {
		answer(out, size, "302 Found", "Location: /loop\r\n", NULL);
	} else if (strstr(r->path, "/t4/import/csv/jobs")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"i\",\"status\":\"WaitingForUpload\","
			 "\"uploadURI\":\"%s/up\",\"uploadHeaders\":"
			 "{\"x-a\":\"1\\r\\nAuthorization: Bearer x\"}}",
			 s->url);
		answer(out, size, "200 OK", NULL, body);
	} else if (strstr(r->path, "/t5/import/csv/jobs")) {
		answer(out, size, "200 OK", NULL,
		       "{\"id\":\"i\",\"status\":\"WaitingForUpload\","
		       "\"uploadURI\":\"http://example.com/up?sig=s3cr3t\","
		       "\"uploadHeaders\":{}}");
	} else {
		answer(out, size, "404 Not Found", NULL, "{}");
	}
}

static void test_flows_jobs_refused(void **state)
{
	struct api_job job;
	struct srv srv;
	struct api *api;
	char *csv;
	size_t len;

	(void)state;
	srv_start(&srv, route_odd_jobs, NULL);
	api = client(&srv, "flows");
	/* a downloadURI off the API's origin gets no token */
	assert_int_equal(api_export_csv(api, "t2", &csv, &len), 0);
	assert_string_equal(csv, "key\r\n");
	free(csv);
	assert_string_equal(srv.log[1].path, "/dl");
	assert_null(strcasestr(srv.log[1].head, "Authorization"));
	/* redirects end */
	srv_reset(&srv);
	assert_int_equal(api_export_csv(api, "t3", &csv, &len), -EPROTO);
	assert_null(csv);
	assert_int_equal(srv.n, 1 + 6); /* the job, downloadURI, 5 more */
	/* upload headers that would smuggle a line, and a plain-http
	 * upload to another host, are refused before any upload */
	srv_reset(&srv);
	assert_int_equal(api_import_csv(api, "t4", "key\r\n", 5, false, &job),
			 -EPROTO);
	api_job_release(&job);
	{
		/* refused, and the message leaves out the signature */
		char *log = capture_log(import_csv_into, api, "t5", -EINVAL);

		assert_non_null(strstr(log, "'http://example.com/up' refused"));
		assert_null(strstr(log, "s3cr3t"));
		free(log);
	}
	assert_int_equal(srv.n, 2);
	/* a job for a table that does not exist */
	assert_int_equal(api_import_csv(api, "t9", "key\r\n", 5, false, &job),
			 -ENOENT);
	assert_null(job.id);
	api_job_release(&job);
	api_free(api);
	srv_stop(&srv);
}

/* A loopback port nobody listens on: connections to it are refused. */
static int dead_port(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

/* An import job whose upload host (s->state: its port) is down. */
static void route_upload_down(struct srv *s, const struct rq *r, char *out,
			      size_t size)
{
	char body[256];

	if (strstr(r->path, "/import/csv/jobs")) {
		snprintf(body, sizeof(body),
			 "{\"id\":\"i\",\"status\":\"WaitingForUpload\","
			 "\"uploadURI\":\"http://127.0.0.1:%d/up\"}",
			 s->state);
		answer(out, size, "200 OK", NULL, body);
	} else {
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":[],\"pageCount\":0}");
	}
}

/* An upload host that refuses connections says nothing of the API: the
 * next API request is sent, not refused by the circuit breaker. */
static void test_flows_upload_host_down(void **state)
{
	struct api_table_list list;
	struct srv srv;
	struct api *api;

	(void)state;
	srv_start(&srv, route_upload_down, NULL);
	srv.state = dead_port();
	api = client(&srv, "flows");
	assert_int_equal(import_csv_into(api, "t1"), -EHOSTUNREACH);
	assert_int_equal(api_list_tables(api, &list), 0);
	assert_int_equal(list.count, 0);
	api_table_list_release(&list);
	assert_int_equal(srv.n, 2);
	api_free(api);
	srv_stop(&srv);
}

/* Messages name a listed table by its name, not its id (issue 13). */
static void test_flows_messages_name_the_table(void **state)
{
	struct api_table_list list;
	struct srv srv;
	struct api *api;
	char *log;

	(void)state;
	srv_start(&srv, route_jobs, (void *)1);
	api = client(&srv, "flows");
	assert_int_equal(api_list_tables(api, &list), 0);
	api_table_list_release(&list);
	log = capture_log(import_csv_into, api, "t1", -EIO);
	assert_non_null(strstr(log, "import CSV into 'Mail' failed: job job-1 "
				    "Failed: The file has no key column"));
	assert_null(strstr(log, "'t1'"));
	free(log);
	api_free(api);
	srv_stop(&srv);
}

/* The request log names the upload and download paths, never their
 * signatures. */
static void test_flows_signed_urls_not_logged(void **state)
{
	struct srv srv;
	struct api *api;
	char *log;

	(void)state;
	srv_start(&srv, route_jobs, NULL);
	api = client(&srv, "flows");
	log = capture_log_at(LOG_DEBUG, export_csv_of, api, "t1", 0);
	assert_non_null(strstr(log, "http GET /signed/d1 -> 200"));
	assert_null(strstr(log, "X-Sig"));
	free(log);
	log = capture_log_at(LOG_DEBUG, import_csv_into, api, "t1", 0);
	assert_non_null(strstr(log, "http PUT /upload/u1 -> 200"));
	assert_null(strstr(log, "sig=abc"));
	/* the API's own requests are there too */
	assert_non_null(strstr(log, "/import/csv/jobs"));
	free(log);
	api_free(api);
	srv_stop(&srv);
}

static void test_flows_export_job(void **state)
{
	struct srv srv;
	struct api *api;
	char *csv;
	size_t len;

	(void)state;
	srv_start(&srv, route_jobs, NULL);
	api = client(&srv, "flows");
	assert_int_equal(api_export_csv(api, "t1", &csv, &len), 0);
	assert_string_equal(csv, "key,score\r\na,1.5\r\n");
	assert_int_equal(len, strlen(csv));
	free(csv);
	assert_int_equal(srv.n, 4);
	assert_string_equal(srv.log[0].method, "POST");
	assert_int_equal(srv.log[0].body_len, 0);
	/* the download on the API's host carries the token ... */
	assert_string_equal(srv.log[2].path, "/api/v2/downloads/d1");
	assert_true(has_header(&srv.log[2], "Authorization: Bearer tok"));
	/* ... the signed URL it redirects to does not */
	assert_string_equal(srv.log[3].path, "/signed/d1?X-Sig=zz");
	assert_null(strcasestr(srv.log[3].head, "Authorization"));
	assert_null(strcasestr(srv.log[3].head, "tok"));
	/* and the cursor dialect has no jobs */
	api_free(api);
	api = client(&srv, "cursor");
	assert_int_equal(api_export_csv(api, "t1", &csv, &len), -ENOSYS);
	assert_null(csv);
	api_free(api);
	srv_stop(&srv);
}

/* ---- pacing ----------------------------------------------------------- */

/* 429 with Retry-After and no budget header on every second request. */
static void route_429(struct srv *s, const struct rq *r, char *out, size_t size)
{
	(void)r;
	if (s->state++ == 0)
		answer(out, size, "429 Too Many Requests", "Retry-After: 1\r\n",
		       "{\"message\":\"Rate limit exceeded the maximum. Retry "
		       "the request in [1] seconds\",\"code\":\"too.many."
		       "requests.retry.after\",\"status\":429,\"contextId\":"
		       "\"c\",\"details\":[],\"errors\":[]}");
	else
		answer(out, size, "200 OK", NULL,
		       "{\"entities\":[],\"pageCount\":0}");
}

static char *temp_dir(void)
{
	char *d = strdup("/tmp/test_flows_XXXXXX");

	assert_non_null(mkdtemp(d));
	return d;
}

static void test_flows_429_pauses_everyone(void **state)
{
	struct api_table_list list;
	struct api_schema s;
	struct api_page page;
	struct srv srv;
	struct api *a, *b;
	char *dir = temp_dir(), file[256];
	struct api_config cfg = {.dialect = "flows",
				 .client_id = "id",
				 .client_secret = "sec",
				 .budget_file = file};
	struct stat st;
	double t0;

	(void)state;
	snprintf(file, sizeof(file), "%s/budget-abc", dir);
	load_schema(&s);
	srv_start(&srv, route_429, NULL);
	cfg.api_url = srv.url;
	assert_int_equal(api_new(&cfg, &a), 0);
	assert_int_equal(api_new(&cfg, &b), 0);
	assert_int_equal(stat(file, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	t0 = mono();
	assert_int_equal(api_list_tables(a, &list), 0);
	api_table_list_release(&list);
	/* a waited out Retry-After ... */
	assert_int_equal(srv.n, 2);
	assert_true(srv.log[1].at >= srv.log[0].at + 1.0);
	/* ... and b, sharing the budget file, had to wait for it too */
	srv.state = 1;
	assert_int_equal(api_get_page(b, "t", &s, 1, 0, &page), 0);
	api_page_release(&page);
	assert_true(srv.log[2].at >= srv.log[0].at + 1.0);
	assert_true(api_budget_low(a) == false);
	(void)t0;
	api_free(a);
	api_free(b);
	srv_stop(&srv);
	api_schema_release(&s);
	unlink(file);
	rmdir(dir);
	free(dir);
}

static void route_ok(struct srv *s, const struct rq *r, char *out, size_t size)
{
	(void)s;
	(void)r;
	answer(out, size, "200 OK", NULL, "{\"entities\":[],\"pageCount\":1}");
}

#define BUDGET_N 4
#define BUDGET_W 0.5

static void list_n(struct api *api, int n)
{
	for (int i = 0; i < n; i++) {
		struct api_table_list list;

		assert_int_equal(api_list_tables(api, &list), 0);
		api_table_list_release(&list);
	}
}

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return a < b ? -1 : a > b;
}

/* The k-th request (from 0) cannot arrive before t0 + (k / n) windows:
 * slots n apart are a window apart, from the first slot on. A lower bound
 * on arrival times, so the machine's load cannot make it fail. */
static void check_under(struct srv *srv, double t0, int total, int n)
{
	double at[MAX_LOG];

	assert_int_equal(srv->n, total);
	for (int i = 0; i < total; i++)
		at[i] = srv->log[i].at;
	qsort(at, (size_t)total, sizeof(at[0]), cmp_double);
	for (int k = 0; k < total; k++)
		if (at[k] < t0 + (k / n) * BUDGET_W)
			fail_msg("request %d arrived %.3f s after the start, "
				 "before %.3f s",
				 k, at[k] - t0, (k / n) * BUDGET_W);
}

static void check_under_budget(struct srv *srv, double t0, int total)
{
	check_under(srv, t0, total, BUDGET_N);
}

struct lister {
	struct api *api;
	int n;
};

static void *lister_main(void *arg)
{
	struct lister *l = arg;

	list_n(l->api, l->n);
	return NULL;
}

/* Two clients listing n times each, at once; returns when they started. */
static double list_together(struct api *a, struct api *b, int n)
{
	struct lister l[2] = {{a, n}, {b, n}};
	pthread_t t[2];
	double t0 = mono();

	for (int i = 0; i < 2; i++)
		assert_int_equal(
		    pthread_create(&t[i], NULL, lister_main, &l[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	return t0;
}

static void test_budget_shared_clients(void **state)
{
	struct srv srv;
	char *dir = temp_dir(), file[256];
	struct api_config cfg = {.dialect = "flows",
				 .client_id = "id",
				 .client_secret = "sec",
				 .rate_requests = BUDGET_N,
				 .rate_window_s = BUDGET_W,
				 .budget_file = file};
	struct lister l[2];
	double t0;

	(void)state;
	snprintf(file, sizeof(file), "%s/budget", dir);
	srv_start(&srv, route_ok, NULL);
	cfg.api_url = srv.url;
	assert_int_equal(api_new(&cfg, &l[0].api), 0);
	assert_int_equal(api_new(&cfg, &l[1].api), 0);
	assert_true(api_budget_rate(l[0].api) > 7.99 &&
		    api_budget_rate(l[0].api) < 8.01);
	t0 = list_together(l[0].api, l[1].api, 7);
	check_under_budget(&srv, t0, 14);
	api_free(l[0].api);
	api_free(l[1].api);

	/* low once the window's budget is spent: 4 per minute */
	cfg.budget_file = NULL;
	cfg.rate_window_s = 60;
	assert_int_equal(api_new(&cfg, &l[0].api), 0);
	list_n(l[0].api, BUDGET_N - 1);
	assert_false(api_budget_low(l[0].api));
	list_n(l[0].api, 1);
	assert_true(api_budget_low(l[0].api));
	api_free(l[0].api);
	srv_stop(&srv);
	unlink(file);
	rmdir(dir);
	free(dir);
}

/* Two clients with different budgets on one file: each measures
 * everyone's requests against its own budget, so together they stay under
 * the looser one. (With a ring per budget each reset the other's count
 * and 14 requests went out at once.) */
static void test_budget_shared_mixed_rates(void **state)
{
	struct srv srv;
	char *dir = temp_dir(), file[256];
	struct api_config cfg = {.dialect = "flows",
				 .client_id = "id",
				 .client_secret = "sec",
				 .rate_requests = BUDGET_N,
				 .rate_window_s = BUDGET_W,
				 .budget_file = file};
	struct lister l[2];
	double t0;

	(void)state;
	snprintf(file, sizeof(file), "%s/budget", dir);
	srv_start(&srv, route_ok, NULL);
	cfg.api_url = srv.url;
	assert_int_equal(api_new(&cfg, &l[0].api), 0);
	cfg.rate_requests = 2 * BUDGET_N;
	assert_int_equal(api_new(&cfg, &l[1].api), 0);
	t0 = list_together(l[0].api, l[1].api, 7);
	check_under(&srv, t0, 14, 2 * BUDGET_N);
	api_free(l[0].api);
	api_free(l[1].api);
	srv_stop(&srv);
	unlink(file);
	rmdir(dir);
	free(dir);
}

static void test_budget_shared_processes(void **state)
{
	struct srv srv;
	char *dir = temp_dir(), file[256];
	struct api_config cfg = {.dialect = "flows",
				 .client_id = "id",
				 .client_secret = "sec",
				 .rate_requests = BUDGET_N,
				 .rate_window_s = BUDGET_W,
				 .budget_file = file};
	struct api *api;
	double t0;
	pid_t pid;
	int status;

	(void)state;
	snprintf(file, sizeof(file), "%s/budget", dir);
	srv_start(&srv, route_ok, NULL);
	cfg.api_url = srv.url;
	t0 = mono();
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct api *child;
		int ok = api_new(&cfg, &child) == 0;

		for (int i = 0; ok && i < 6; i++) {
			struct api_table_list list;

			ok = api_list_tables(child, &list) == 0;
			api_table_list_release(&list);
		}
		if (ok)
			api_free(child);
		_exit(ok ? 0 : 1);
	}
	assert_int_equal(api_new(&cfg, &api), 0);
	list_n(api, 6);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	check_under_budget(&srv, t0, 12);
	api_free(api);

	/* a process killed while it held the budget leaves no lock: a new
	 * client still gets requests through */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct api *child;

		if (api_new(&cfg, &child) == 0) {
			struct api_table_list list;

			if (api_list_tables(child, &list) == 0)
				api_table_list_release(&list);
		}
		raise(SIGKILL);
		_exit(1);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status));
	assert_int_equal(api_new(&cfg, &api), 0);
	list_n(api, 1);
	api_free(api);
	srv_stop(&srv);
	unlink(file);
	rmdir(dir);
	free(dir);
}

static void test_budget_config(void **state)
{
	struct api_config cfg = {.dialect = "flows",
				 .api_url = "http://127.0.0.1:9",
				 .client_id = "id",
				 .client_secret = "sec",
				 .rate_requests = 10};
	char *dir = temp_dir(), file[256];
	struct api *api;
	FILE *f;

	(void)state;
	/* half a budget is a mistake, not "no budget" */
	assert_int_equal(api_new(&cfg, &api), -EINVAL);
	cfg.rate_window_s = 1;
	assert_int_equal(api_new(&cfg, &api), 0);
	assert_true(api_budget_rate(api) > 9.99 &&
		    api_budget_rate(api) < 10.01);
	api_free(api);
	/* a budget file that is not a regular file, or not writable */
	cfg.budget_file = dir;
	assert_true(api_new(&cfg, &api) < 0);
	snprintf(file, sizeof(file), "%s/nodir/budget", dir);
	cfg.budget_file = file;
	assert_int_equal(api_new(&cfg, &api), -ENOENT);
	/* a budget file left by another budget is started afresh; one
	 * readable by others is made private */
	snprintf(file, sizeof(file), "%s/budget", dir);
	f = fopen(file, "w");
	fputs("garbage", f);
	fclose(f);
	chmod(file, 0644);
	assert_int_equal(api_new(&cfg, &api), 0);
	{
		struct stat st;

		assert_int_equal(stat(file, &st), 0);
		assert_int_equal(st.st_mode & 0777, 0600);
	}
	api_free(api);
	unlink(file);
	rmdir(dir);
	free(dir);
}

/* ---- against dtfs-emu's production dialect ----------------------------- */

struct emu {
	pid_t pid;
	char url[64];
};

/* Start build/tools/emu/dtfs-emu (DTFS_EMU) on a free port with the sample
 * tables; extra flags after the defaults. */
static void emu_start(struct emu *e, const char *const *extra)
{
	const char *bin = getenv("DTFS_EMU"),
		   *data = getenv("DTFS_SAMPLE_DATA");
	const char *argv[32] = {
	    bin,	"--listen",	    "127.0.0.1:0", "--data", data,
	    "--client", "id:sec:architect", "--job-delay", "20"};
	int fds[2], n = 9;
	char line[256];
	FILE *f;

	assert_non_null(bin);
	assert_non_null(data);
	for (; extra && *extra; extra++)
		argv[n++] = *extra;
	argv[n] = NULL;
	assert_int_equal(pipe(fds), 0);
	e->pid = fork();
	assert_true(e->pid >= 0);
	if (e->pid == 0) {
		/* never outlive a test that failed before emu_stop() */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(fds[1]);
	f = fdopen(fds[0], "r");
	assert_non_null(fgets(line, sizeof(line), f));
	fclose(f);
	assert_int_equal(sscanf(line, "listening on %63s", e->url), 1);
}

static void emu_stop(struct emu *e)
{
	int status;

	if (e->pid <= 0)
		return;
	kill(e->pid, SIGTERM);
	assert_int_equal(waitpid(e->pid, &status, 0), e->pid);
	e->pid = 0;
}

/* The emulator of the running test, stopped by the teardown when an
 * assertion ends the test early. */
static struct emu the_emu;

static int emu_teardown(void **state)
{
	(void)state;
	emu_stop(&the_emu);
	return 0;
}

/* GET path from the emulator with a bare socket: the body, malloc'ed. */
static char *emu_get(const struct emu *e, const char *path)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	long port = strtol(strrchr(e->url, ':') + 1, NULL, 10);
	int fd;
	char req[256], *buf = calloc(1, 65536), *body;
	size_t got = 0;
	ssize_t r;

	fd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	snprintf(req, sizeof(req),
		 "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		 path);
	assert_true(write(fd, req, strlen(req)) == (ssize_t)strlen(req));
	while ((r = read(fd, buf + got, 65535 - got)) > 0)
		got += (size_t)r;
	close(fd);
	body = strstr(buf, "\r\n\r\n");
	assert_non_null(body);
	body = strdup(body + 4);
	free(buf);
	return body;
}

static long stat_of(const char *stats, const char *name)
{
	char key[64];
	const char *p;

	snprintf(key, sizeof(key), "\"%s\":", name);
	p = strstr(stats, key);
	if (!p)
		return 0;
	p += strlen(key);
	while (*p == ' ')
		p++;
	return strtol(p, NULL, 10);
}

static struct api *emu_client(const struct emu *e)
{
	struct api_config cfg = {.dialect = "flows",
				 .api_url = e->url,
				 .client_id = "id",
				 .client_secret = "sec",
				 .retry_budget_s = 30};
	struct api *api;

	assert_int_equal(api_new(&cfg, &api), 0);
	return api;
}

static char *table_id(struct api *api, const char *name)
{
	struct api_table_list list;
	char *id = NULL;

	assert_int_equal(api_list_tables(api, &list), 0);
	for (size_t i = 0; i < list.count; i++)
		if (!strcmp(list.tables[i].name, name))
			id = strdup(list.tables[i].id);
	api_table_list_release(&list);
	assert_non_null(id);
	return id;
}

/* Every row by numbered pages of page_size, concatenated. */
static char *all_pages(struct api *api, const char *id,
		       const struct api_schema *s, unsigned page_size,
		       unsigned *pages)
{
	char *all = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&all, &len);

	for (unsigned p = 1;; p++) {
		struct api_page page;

		assert_int_equal(api_get_page(api, id, s, p, page_size, &page),
				 0);
		fwrite(page.data, 1, page.len, f);
		*pages = page.page_count;
		if (!page.nrows) {
			api_page_release(&page);
			break;
		}
		api_page_release(&page);
	}
	fclose(f);
	return all;
}

static void test_flows_against_emu(void **state)
{
	struct emu *e = &the_emu;
	struct api *api;
	struct api_schema s;
	struct api_page page;
	struct api_job job;
	char *id, *all, *csv, *jsonl, *stats;
	size_t len, jlen;
	unsigned pages;

	(void)state;
	emu_start(e, NULL);
	api = emu_client(e);
	id = table_id(api, "PriceList");
	assert_int_equal(api_get_schema(api, id, &s), 0);
	assert_int_equal(s.ncolumns, 5);
	assert_string_equal(s.columns[0].name, "key");
	assert_string_equal(s.columns[4].name, "active");

	/* one page of all 40 rows equals 6 pages of 7 */
	assert_int_equal(api_get_page(api, id, &s, 1, 0, &page), 0);
	assert_int_equal(page.nrows, 40);
	assert_int_equal(page.total, 40);
	assert_int_equal(page.page_count, 1);
	assert_int_equal(page.page_size, 500);
	assert_non_null(strstr(page.data,
			       "{\"key\":\"SKU-0002\",\"name\":\"Poster "
			       "\\\"Blue Hour\\\"\",\"price\":7,"));
	all = all_pages(api, id, &s, 7, &pages);
	assert_int_equal(pages, 6);
	assert_string_equal(all, page.data);
	free(all);

	/* the export job's CSV reads back as the same rows */
	assert_int_equal(api_export_csv(api, id, &csv, &len), 0);
	assert_int_equal(api_csv_to_jsonl(&s, csv, len, &jsonl, &jlen), 0);
	assert_string_equal(jsonl, page.data);
	free(jsonl);
	free(csv);

	/* single rows */
	{
		const char *row = "{\"key\":\"NEW 1/\xc3\xa9\",\"name\":\"n\","
				  "\"price\":1.25,\"stock\":2,"
				  "\"active\":false}";
		const char *row2 = "{\"key\":\"NEW 1/\xc3\xa9\",\"name\":\"m\","
				   "\"price\":1.25,\"stock\":3,"
				   "\"active\":true}";

		assert_int_equal(api_row_create(api, id, row, strlen(row)), 0);
		assert_int_equal(api_row_create(api, id, row, strlen(row)),
				 -EEXIST);
		assert_int_equal(api_row_update(api, id, "NEW 1/\xc3\xa9", row2,
						strlen(row2)),
				 0);
		assert_int_equal(
		    api_row_update(api, id, "NOPE", "{\"key\":\"NOPE\"}", 14),
		    -ENOENT);
		assert_int_equal(api_row_create(api, id,
						"{\"key\":\"x\",\"stock\":1.5}",
						23),
				 -EINVAL);
		all = all_pages(api, id, &s, 0, &pages);
		assert_non_null(strstr(all, row2));
		free(all);
		assert_int_equal(api_row_delete_key(api, id, "NEW 1/\xc3\xa9"),
				 0);
		assert_int_equal(api_row_delete_key(api, id, "NEW 1/\xc3\xa9"),
				 -ENOENT);
	}

	/* an import job: two rows in, one refused by the server */
	{
		const char *rows[] = {
		    "{\"key\":\"SKU-0001\",\"name\":\"a, \\\"b\\\"\\r\\nc\","
		    "\"price\":2.50,\"stock\":1,\"active\":false}",
		    "{\"key\":\"IMP-1\",\"name\":\"\",\"price\":0,\"stock\":0,"
		    "\"active\":true}",
		};
		size_t lens[2] = {strlen(rows[0]), strlen(rows[1])};

		csv = NULL;
		assert_int_equal(api_csv_encode(&s, rows, lens, 2, &csv, &len),
				 0);
		{
			static const char bad[] = "BAD-1,x,1,notanint,true\r\n";

			csv = realloc(csv, len + sizeof(bad));
			memcpy(csv + len, bad, sizeof(bad));
			len += sizeof(bad) - 1;
		}
		assert_int_equal(api_import_csv(api, id, csv, len, false, &job),
				 0);
		free(csv);
		assert_string_equal(job.status, "Succeeded");
		assert_int_equal(job.updated, 2);
		assert_int_equal(job.failed, 1);
		api_job_release(&job);
		all = all_pages(api, id, &s, 0, &pages);
		assert_non_null(strstr(all, rows[0]));
		assert_non_null(strstr(all, rows[1]));
		assert_null(strstr(all, "BAD-1"));
		free(all);
	}
	api_page_release(&page);
	api_schema_release(&s);
	free(id);
	api_free(api);
	emu_stop(e);

	/* a smaller page size limit, and a rate limit below our budget:
	 * 429s honoured, every call succeeds */
	{
		static const char *const extra[] = {"--max-flows-page-size",
						    "100", "--rate-limit",
						    "4/1", NULL};

		emu_start(e, extra);
		api = emu_client(e);
		id = table_id(api, "PriceList");
		assert_int_equal(api_get_schema(api, id, &s), 0);
		assert_int_equal(api_get_page(api, id, &s, 1, 0, &page), 0);
		assert_int_equal(page.page_size, 62);
		assert_int_equal(page.nrows, 40);
		api_page_release(&page);
		for (int i = 0; i < 6; i++) {
			assert_int_equal(api_get_page(api, id, &s, 1, 0, &page),
					 0);
			assert_int_equal(page.page_size, 62);
			api_page_release(&page);
		}
		stats = emu_get(e, "/_emu/stats");
		assert_true(stat_of(stats, "429") >= 1);
		{
			struct api_stats st;

			api_get_stats(api, &st);
			assert_int_equal(st.throttled, stat_of(stats, "429"));
		}
		free(stats);
		api_schema_release(&s);
		free(id);
		api_free(api);
		emu_stop(e);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_flows_tables_and_schema),
	    cmocka_unit_test(test_flows_create_and_delete_table),
	    cmocka_unit_test(test_flows_nul_names_skipped),
	    cmocka_unit_test(test_flows_pages),
	    cmocka_unit_test(test_flows_page_bad_utf8_warned),
	    cmocka_unit_test(test_flows_rows),
	    cmocka_unit_test(test_flows_import_job),
	    cmocka_unit_test(test_flows_export_job),
	    cmocka_unit_test(test_flows_signed_urls_not_logged),
	    cmocka_unit_test(test_flows_messages_name_the_table),
	    cmocka_unit_test(test_flows_upload_host_down),
	    cmocka_unit_test(test_flows_jobs_refused),
	    cmocka_unit_test(test_flows_429_pauses_everyone),
	    cmocka_unit_test(test_budget_shared_clients),
	    cmocka_unit_test(test_budget_shared_mixed_rates),
	    cmocka_unit_test(test_budget_shared_processes),
	    cmocka_unit_test(test_budget_config),
	    cmocka_unit_test_teardown(test_flows_against_emu, emu_teardown),
	};

	log_init("test_flows",
		 getenv("TEST_API_VERBOSE") ? LOG_DEBUG : LOG_CRIT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
