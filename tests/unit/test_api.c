/*
 * Unit tests of api/: everything that needs no server. Pure helpers
 * (backoff, Retry-After, error maps, regions, URLs), the credentials file,
 * the JSONL serialization of rows pages (the copy of columns objects
 * against the value-by-value rebuild, on a corpus and on random pages),
 * the string scan against a byte-at-a-time reference, row validation,
 * schemas, the pacer and a loopback HTTP server for the retry and 401
 * paths and the reuse of response buffers.
 */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <json-c/json.h>

#include "api.h"
#include "api_i.h"
#include "log.h"

/* ---- backoff ---------------------------------------------------------- */

static void test_backoff_bounds(void **state)
{
	(void)state;
	for (unsigned n = 0; n < 16; n++) {
		double ceiling = fmin(10.0, 0.2 * pow(2, n));
		double max = 0, sum = 0;
		int samples = 4000;

		for (int i = 0; i < samples; i++) {
			double d = api_backoff_delay(n, 0.2, 10.0);

			assert_true(d >= 0);
			assert_true(d <= ceiling);
			if (d > max)
				max = d;
			sum += d;
		}
		/* full jitter: spread over the whole range, mean near half */
		assert_true(max > 0.9 * ceiling);
		assert_true(fabs(sum / samples - ceiling / 2) < 0.1 * ceiling);
	}
	assert_true(api_backoff_delay(1000, 0.2, 10.0) <= 10.0);
	assert_true(api_backoff_delay(0, 0, 10.0) == 0);
}

static void *random_thread(void *arg)
{
	double *out = arg;

	for (int i = 0; i < 1000; i++)
		out[i] = api_random();
	return NULL;
}

static void test_random_threads(void **state)
{
	double a[1000], b[1000];
	pthread_t t1, t2;
	int same = 0;

	(void)state;
	pthread_create(&t1, NULL, random_thread, a);
	pthread_create(&t2, NULL, random_thread, b);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	for (int i = 0; i < 1000; i++) {
		assert_true(a[i] >= 0 && a[i] < 1);
		same += a[i] == b[i];
	}
	assert_true(same < 5); /* each thread has its own seed */
}

/* ---- Retry-After ------------------------------------------------------ */

static void test_retry_after(void **state)
{
	char date[64];
	struct tm tm;
	time_t t;
	double v;

	(void)state;
	assert_true(api_parse_retry_after("5") == 5);
	assert_true(api_parse_retry_after(" 10 ") == 10);
	assert_true(api_parse_retry_after("0") == 0);
	assert_true(api_parse_retry_after("120\r\n") == 120);
	assert_true(api_parse_retry_after(NULL) == -1);
	assert_true(api_parse_retry_after("") == -1);
	assert_true(api_parse_retry_after("   ") == -1);
	assert_true(api_parse_retry_after("soon") == -1);
	assert_true(api_parse_retry_after("-5") == -1);
	assert_true(api_parse_retry_after("5x") == -1);
	assert_true(api_parse_retry_after("1e3") == -1);
	assert_true(api_parse_retry_after("Wed, 99 Foo 2024") == -1);

	t = time(NULL) + 30;
	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	v = api_parse_retry_after(date);
	assert_true(v >= 28 && v <= 31);

	t = time(NULL) - 3600;
	gmtime_r(&t, &tm);
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
	assert_true(api_parse_retry_after(date) == 0);
}

/* ---- error maps ------------------------------------------------------- */

static void test_errno_from_http(void **state)
{
	static const struct {
		long status;
		int err;
	} map[] = {
	    {200, 0},	       {201, 0},       {204, 0},       {304, 0},
	    {400, -EINVAL},    {401, -EACCES}, {403, -EACCES}, {404, -ENOENT},
	    {408, -ETIMEDOUT}, {409, -EEXIST}, {412, -ESTALE}, {413, -EINVAL},
	    {428, -EINVAL},    {429, -EIO},    {500, -EIO},    {502, -EIO},
	    {503, -EIO},       {504, -EIO},    {302, -EIO},    {418, -EIO},
	    {0, -EIO},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		if (api_errno_from_http(map[i].status) != map[i].err)
			fail_msg("HTTP %ld: got %d, want %d", map[i].status,
				 api_errno_from_http(map[i].status),
				 map[i].err);
	}
}

static void test_errno_from_curl(void **state)
{
	bool retry;

	(void)state;
	assert_int_equal(api_errno_from_curl(CURLE_OK, &retry), 0);
	/* not retried: the circuit breaker probes instead */
	assert_int_equal(api_errno_from_curl(CURLE_COULDNT_CONNECT, &retry),
			 -EHOSTUNREACH);
	assert_false(retry);
	assert_int_equal(
	    api_errno_from_curl(CURLE_COULDNT_RESOLVE_HOST, &retry),
	    -EHOSTUNREACH);
	assert_false(retry);
	assert_int_equal(api_errno_from_curl(CURLE_OPERATION_TIMEDOUT, &retry),
			 -ETIMEDOUT);
	assert_true(retry);
	assert_int_equal(api_errno_from_curl(CURLE_RECV_ERROR, &retry), -EIO);
	assert_true(retry);
	assert_int_equal(api_errno_from_curl(CURLE_GOT_NOTHING, &retry), -EIO);
	assert_true(retry);
	assert_int_equal(api_errno_from_curl(CURLE_OUT_OF_MEMORY, &retry),
			 -ENOMEM);
	assert_false(retry);
	assert_int_equal(
	    api_errno_from_curl(CURLE_PEER_FAILED_VERIFICATION, &retry), -EIO);
	assert_false(retry);
	assert_int_equal(api_errno_from_curl(CURLE_URL_MALFORMAT, &retry),
			 -EINVAL);
	assert_false(retry);
}

/* ---- regions and URLs ------------------------------------------------- */

static void test_regions(void **state)
{
	static const struct {
		const char *region, *domain;
	} table[] = {
	    {"us-east-1", "mypurecloud.com"},
	    {"eu-west-1", "mypurecloud.ie"},
	    {"ap-southeast-2", "mypurecloud.com.au"},
	    {"ap-northeast-1", "mypurecloud.jp"},
	    {"eu-central-1", "mypurecloud.de"},
	    {"us-west-2", "usw2.pure.cloud"},
	    {"ca-central-1", "cac1.pure.cloud"},
	    {"ap-northeast-2", "apne2.pure.cloud"},
	    {"eu-west-2", "euw2.pure.cloud"},
	    {"ap-south-1", "aps1.pure.cloud"},
	    {"us-east-2", "use2.us-gov-pure.cloud"},
	    {"sa-east-1", "sae1.pure.cloud"},
	    {"me-central-1", "mec1.pure.cloud"},
	    {"ap-northeast-3", "apne3.pure.cloud"},
	    {"eu-central-2", "euc2.pure.cloud"},
	    {"mx-central-1", "mxc1.pure.cloud"},
	    {"ap-southeast-1", "apse1.pure.cloud"},
	    {"eusc-de-east-1", "edee1.eusc-pure.cloud"},
	};
	char want[128];

	(void)state;
	for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		snprintf(want, sizeof(want), "https://api.%s", table[i].domain);
		assert_non_null(api_region_api_url(table[i].region));
		assert_string_equal(api_region_api_url(table[i].region), want);
		snprintf(want, sizeof(want), "https://login.%s",
			 table[i].domain);
		assert_string_equal(api_region_login_url(table[i].region),
				    want);
		/* the domain itself names the region too */
		assert_string_equal(api_region_login_url(table[i].domain),
				    want);
	}
	assert_string_equal(api_region_api_url("eu_west_1"),
			    "https://api.mypurecloud.ie");
	assert_string_equal(api_region_api_url("EU-West-1"),
			    "https://api.mypurecloud.ie");
	assert_null(api_region_api_url("mars-north-1"));
	assert_null(api_region_api_url("us-east"));
	assert_null(api_region_api_url("us-east-11"));
	assert_null(api_region_api_url(""));
	assert_null(api_region_api_url(NULL));
	assert_null(api_region_login_url("nowhere"));
}

static int new_with(const char *dialect, const char *region,
		    const char *api_url, const char *login_url)
{
	struct api_config c = {.dialect = dialect,
			       .region = region,
			       .api_url = api_url,
			       .login_url = login_url,
			       .client_id = "id",
			       .client_secret = "secret"};
	struct api *api = NULL;
	int rc = api_new(&c, &api);

	if (rc == 0)
		assert_non_null(api);
	else
		assert_null(api);
	api_free(api);
	return rc;
}

static void test_urls(void **state)
{
	(void)state;
	assert_int_equal(new_with(NULL, NULL, "http://127.0.0.1:8080", NULL),
			 0);
	assert_int_equal(new_with(NULL, NULL, "http://localhost:1/", NULL), 0);
	assert_int_equal(new_with(NULL, NULL, "http://[::1]:9/", NULL), 0);
	assert_int_equal(new_with(NULL, NULL, "https://api.example.com", NULL),
			 0);
	assert_int_equal(new_with(NULL, NULL, "http://api.example.com", NULL),
			 -EINVAL);
	assert_int_equal(new_with(NULL, NULL, "http://10.1.2.3:8080", NULL),
			 -EINVAL);
	assert_int_equal(
	    new_with(NULL, NULL, "http://127.0.0.1.evil.com", NULL), -EINVAL);
	assert_int_equal(new_with(NULL, NULL, "ftp://127.0.0.1", NULL),
			 -EINVAL);
	assert_int_equal(new_with(NULL, NULL, "not a url", NULL), -EINVAL);
	/* login_url is checked the same way */
	assert_int_equal(new_with(NULL, NULL, "https://api.example.com",
				  "http://login.example.com"),
			 -EINVAL);
	assert_int_equal(new_with(NULL, "eu-west-1", NULL, NULL), 0);
	assert_int_equal(new_with(NULL, "atlantis-1", NULL, NULL), -EINVAL);
	assert_int_equal(new_with("cursor", "eu-west-1", NULL, NULL), 0);
	assert_int_equal(new_with("bogus", "eu-west-1", NULL, NULL), -EINVAL);
	assert_int_equal(new_with("flows", "eu-west-1", NULL, NULL), 0);
}

static void test_escape(void **state)
{
	char *s;

	(void)state;
	s = api_escape("a-b_c.d~E9");
	assert_string_equal(s, "a-b_c.d~E9");
	free(s);
	s = api_escape("a b/c+d=e&f%\xc3\xa9");
	assert_string_equal(s, "a%20b%2Fc%2Bd%3De%26f%25%C3%A9");
	free(s);
}

/* ---- credentials ------------------------------------------------------ */

static char *write_file(const char *text, mode_t mode)
{
	char *path = strdup("/tmp/dtfs-test-creds-XXXXXX");
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

static int new_from_file(const char *path, struct api **out)
{
	struct api_config c = {.api_url = "http://127.0.0.1:9",
			       .credentials = path};

	return api_new(&c, out);
}

static void test_credentials_file(void **state)
{
	char *path;
	struct api *api = NULL;
	char *id = NULL, *secret = NULL;

	(void)state;
	unsetenv("GENESYSCLOUD_OAUTHCLIENT_ID");
	unsetenv("GENESYSCLOUD_OAUTHCLIENT_SECRET");

	path = write_file("client_id=abc\nclient_secret=s3cr3t\n", 0644);
	assert_int_equal(new_from_file(path, &api), -EACCES);
	assert_null(api);
	assert_int_equal(api_read_credentials(path, &id, &secret), -EACCES);
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(new_from_file(path, &api), -EACCES);
	assert_int_equal(chmod(path, 0604), 0);
	assert_int_equal(new_from_file(path, &api), -EACCES);
	assert_int_equal(chmod(path, 0610), 0);
	assert_int_equal(new_from_file(path, &api), -EACCES);
	assert_int_equal(chmod(path, 0600), 0);
	assert_int_equal(new_from_file(path, &api), 0);
	assert_non_null(api);
	assert_string_equal(api->client_id, "abc");
	assert_string_equal(api->client_secret, "s3cr3t");
	api_free(api);
	api = NULL;
	unlink(path);
	free(path);

	/* the environment-variable spelling, comments, export, quotes */
	path = write_file("# dtfs\n"
			  "export GENESYSCLOUD_OAUTHCLIENT_ID = \"xyz\"\r\n"
			  "\n"
			  "GENESYSCLOUD_OAUTHCLIENT_SECRET='p=q'\n"
			  "region=eu-west-1\n",
			  0400);
	assert_int_equal(api_read_credentials(path, &id, &secret), 0);
	assert_string_equal(id, "xyz");
	assert_string_equal(secret, "p=q");
	free(id);
	free(secret);
	id = secret = NULL;
	unlink(path);
	free(path);

	/* only an id: the secret is missing */
	path = write_file("client_id=abc\n", 0600);
	assert_int_equal(new_from_file(path, &api), -EINVAL);
	/* ... unless the environment has it */
	setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "envsecret", 1);
	assert_int_equal(new_from_file(path, &api), 0);
	assert_string_equal(api->client_id, "abc");
	assert_string_equal(api->client_secret, "envsecret");
	api_free(api);
	api = NULL;
	unsetenv("GENESYSCLOUD_OAUTHCLIENT_SECRET");
	unlink(path);
	free(path);

	assert_int_equal(new_from_file("/nonexistent/creds", &api), -EINVAL);
	assert_int_equal(new_from_file(NULL, &api), -EINVAL); /* none */
	setenv("GENESYSCLOUD_OAUTHCLIENT_ID", "e1", 1);
	setenv("GENESYSCLOUD_OAUTHCLIENT_SECRET", "e2", 1);
	assert_int_equal(new_from_file(NULL, &api), 0);
	assert_string_equal(api->client_id, "e1");
	api_free(api);
	unsetenv("GENESYSCLOUD_OAUTHCLIENT_ID");
	unsetenv("GENESYSCLOUD_OAUTHCLIENT_SECRET");
}

/* ---- schemas ---------------------------------------------------------- */

static const char SCHEMA[] =
    "{\"columns\": ["
    "{\"name\": \"customer_id\", \"type\": \"string\", \"isPrimaryKey\": true},"
    "{\"name\": \"last_interaction\", \"type\": \"date\", \"isPrimaryKey\": "
    "false},"
    "{\"name\": \"loyalty_tier\", \"type\": \"number\", \"isPrimaryKey\": "
    "false},"
    "{\"name\": \"visits\", \"type\": \"integer\", \"isPrimaryKey\": false},"
    "{\"name\": \"active\", \"type\": \"boolean\"},"
    "{\"name\": \"region/zone\", \"type\": \"string\"}"
    "]}";

static const char SCHEMA2[] =
    "{\"columns\": ["
    "{\"name\": \"region\", \"type\": \"string\", \"isPrimaryKey\": true},"
    "{\"name\": \"priority\", \"type\": \"integer\"},"
    "{\"name\": \"queue\", \"type\": \"string\", \"isPrimaryKey\": true}"
    "]}";

static void schema_load(const char *json, struct api_schema *s)
{
	assert_int_equal(api_schema_parse(json, strlen(json), "\"v1\"", s), 0);
}

static void test_schema_parse(void **state)
{
	struct api_schema s, s2;

	(void)state;
	schema_load(SCHEMA, &s);
	assert_int_equal(s.ncolumns, 6);
	assert_string_equal(s.columns[0].name, "customer_id");
	assert_true(s.columns[0].key);
	assert_int_equal(s.columns[1].type, API_TYPE_DATE);
	assert_int_equal(s.columns[2].type, API_TYPE_NUMBER);
	assert_int_equal(s.columns[3].type, API_TYPE_INTEGER);
	assert_int_equal(s.columns[4].type, API_TYPE_BOOLEAN);
	assert_false(s.columns[4].key);
	assert_string_equal(s.version, "\"v1\"");
	/* pretty, slashes unescaped, trailing newline, stable */
	assert_true(s.json_len > 2);
	assert_int_equal(s.json[s.json_len - 1], '\n');
	assert_int_equal(strlen(s.json), s.json_len);
	assert_non_null(strstr(s.json, "{\n  \"columns\": [\n    {\n"));
	assert_non_null(strstr(s.json, "\"region/zone\""));
	assert_int_equal(api_schema_parse(s.json, s.json_len, NULL, &s2), 0);
	assert_null(s2.version);
	assert_int_equal(s2.json_len, s.json_len);
	assert_memory_equal(s2.json, s.json, s.json_len);
	api_schema_release(&s2);
	api_schema_release(&s);

	/* the production dialect's JSON Schema, ordered by displayOrder */
	const char *flows =
	    "{\"$schema\": \"http://json-schema.org/draft-04/schema#\","
	    " \"type\": \"object\", \"required\": [\"key\"],"
	    " \"properties\": {"
	    "  \"visits\": {\"type\": \"integer\", \"displayOrder\": 2},"
	    "  \"key\": {\"type\": \"string\", \"displayOrder\": 0},"
	    "  \"score\": {\"type\": \"number\", \"displayOrder\": 1}}}";
	assert_int_equal(api_schema_parse(flows, strlen(flows), NULL, &s), 0);
	assert_int_equal(s.ncolumns, 3);
	assert_string_equal(s.columns[0].name, "key");
	assert_true(s.columns[0].key);
	assert_string_equal(s.columns[1].name, "score");
	assert_string_equal(s.columns[2].name, "visits");
	assert_false(s.columns[2].key);
	api_schema_release(&s);

	static const char *bad[] = {
	    "",
	    "[]",
	    "{\"columns\": 3}",
	    "{\"columns\": [{\"name\": \"a\", \"type\": \"text\"}]}",
	    "{\"columns\": [{\"type\": \"string\"}]}",
	    "{\"columns\": [{\"name\": \"a\", \"type\": \"string\", "
	    "\"isPrimaryKey\": \"yes\"}]}",
	    "{\"columns\": [{\"name\": \"a\", \"type\": \"string\"},"
	    "{\"name\": \"a\", \"type\": \"number\"}]}",
	    "{\"columns\": []} x",
	    "{\"columns\": [",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		memset(&s, 0x5a, sizeof(s));
		if (api_schema_parse(bad[i], strlen(bad[i]), "v", &s) !=
		    -EPROTO)
			fail_msg("schema %zu accepted: %s", i, bad[i]);
		assert_null(s.columns);
		assert_null(s.json);
	}
}

/* ---- rows pages -> JSONL ---------------------------------------------- */

static char *page_jsonl(const struct api_schema *s, const char *page,
			size_t *nrows)
{
	struct jdoc d;
	struct abuf out, slow;
	uint32_t rows;
	size_t n2;
	char *text;

	jdoc_init(&d);
	abuf_init(&out);
	abuf_init(&slow);
	assert_int_equal(jdoc_parse(&d, page, strlen(page), 0), 0);
	rows = jdoc_member(&d, 0, "rows");
	assert_true(rows != UINT32_MAX);
	assert_int_equal(api_rows_to_jsonl(s, &d, rows, &out, nrows, NULL, 0),
			 0);
	/* the copies of columns objects change no byte */
	assert_int_equal(
	    api_rows_to_jsonl(s, &d, rows, &slow, &n2, NULL, API_JSONL_DECODE),
	    0);
	assert_int_equal(n2, *nrows);
	assert_int_equal(slow.len, out.len);
	assert_memory_equal(slow.p ? slow.p : "", out.p ? out.p : "", out.len);
	abuf_release(&slow);
	abuf_reserve(&out, 0);
	text = abuf_detach(&out, NULL);
	jdoc_release(&d);
	return text;
}

static void test_jsonl_order_and_numbers(void **state)
{
	struct api_schema s;
	size_t n;
	char *out;
	const char *page =
	    "{\"rows\": ["
	    " {\"id\": \"r1\", \"columns\": {\"loyalty_tier\": 1.10,"
	    "  \"customer_id\": \"CUST-1\", \"segment\": \"x\","
	    "  \"visits\": 12345678901234567890, \"zzz\": [1, {\"b\": 2}],"
	    "  \"last_interaction\": \"2024-05-12T14:30:00Z\"}},"
	    " {\"columns\": {\"customer_id\": \"CUST-2\","
	    "  \"loyalty_tier\": 2.50, \"active\": true}, \"id\": \"r2\"},"
	    " {\"id\": \"r3\", \"columns\": {\"visits\": -0,"
	    "  \"loyalty_tier\": 1e3, \"customer_id\": "
	    "\"C\\/3\\u00e9\\t\\ud83d\\ude00\","
	    "  \"region/zone\": \"a/b\"}},"
	    " {\"id\": \"r4\", \"columns\": {\"customer_id\": \"CUST-4\","
	    "  \"loyalty_tier\": -0.0, \"visits\": "
	    "123456789012345678901234567890,"
	    "  \"active\": null, \"last_interaction\": "
	    "\"\\u0001\\u001f\\\"\\\\\"}}"
	    "], \"nextPageCursor\": \"abc\"}";

	(void)state;
	schema_load(SCHEMA, &s);
	out = page_jsonl(&s, page, &n);
	assert_int_equal(n, 4);
	assert_string_equal(
	    out,
	    "{\"customer_id\":\"CUST-1\",\"last_interaction\":"
	    "\"2024-05-12T14:30:00Z\",\"loyalty_tier\":1.10,"
	    "\"visits\":12345678901234567890,\"segment\":\"x\","
	    "\"zzz\":[1,{\"b\":2}]}\n"
	    "{\"customer_id\":\"CUST-2\",\"loyalty_tier\":2.50,"
	    "\"active\":true}\n"
	    "{\"customer_id\":\"C/3\xc3\xa9\\t\xf0\x9f\x98\x80\","
	    "\"loyalty_tier\":1e3,\"visits\":-0,\"region/zone\":\"a/b\"}\n"
	    "{\"customer_id\":\"CUST-4\",\"last_interaction\":"
	    "\"\\u0001\\u001f\\\"\\\\\",\"loyalty_tier\":-0.0,"
	    "\"visits\":123456789012345678901234567890,\"active\":null}\n");
	free(out);

	/* no schema: server order */
	out = page_jsonl(
	    NULL, "{\"rows\": [{\"columns\": {\"b\": 1, \"a\": 2}}]}", &n);
	assert_string_equal(out, "{\"b\":1,\"a\":2}\n");
	free(out);

	/* empty table */
	out = page_jsonl(&s, "{\"rows\": []}", &n);
	assert_int_equal(n, 0);
	assert_string_equal(out, "");
	free(out);
	api_schema_release(&s);
}

static void test_jsonl_bad_pages(void **state)
{
	static const char *bad[] = {
	    "{\"rows\": [1]}",
	    "{\"rows\": [{\"id\": \"x\"}]}",
	    "{\"rows\": [{\"columns\": []}]}",
	    "{\"rows\": {}}",
	};
	struct api_schema s;

	(void)state;
	schema_load(SCHEMA, &s);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct jdoc d;
		struct abuf out;
		size_t n;

		jdoc_init(&d);
		abuf_init(&out);
		assert_int_equal(jdoc_parse(&d, bad[i], strlen(bad[i]), 0), 0);
		assert_int_equal(api_rows_to_jsonl(&s, &d,
						   jdoc_member(&d, 0, "rows"),
						   &out, &n, NULL, 0),
				 -EPROTO);
		abuf_release(&out);
		jdoc_release(&d);
	}
	api_schema_release(&s);
}

/* Our compact output must equal json-c's for documents json-c keeps
 * exactly (no -0 and no integers beyond 64 bits). */
static void check_same_as_jsonc(const char *doc)
{
	struct json_object *o = json_tokener_parse(doc);
	struct jdoc d;
	struct abuf out;

	assert_non_null(o);
	jdoc_init(&d);
	abuf_init(&out);
	assert_int_equal(jdoc_parse(&d, doc, strlen(doc), 0), 0);
	jdoc_emit(&d, 0, &out);
	abuf_reserve(&out, 0);
	assert_string_equal(out.p, json_object_to_json_string_ext(
				       o, JSON_C_TO_STRING_PLAIN |
					      JSON_C_TO_STRING_NOSLASHESCAPE));
	abuf_release(&out);
	jdoc_release(&d);
	json_object_put(o);
}

static void test_jsonc_compatible(void **state)
{
	static const char *docs[] = {
	    "{\"a\": 1.10, \"b\": [true, false, null], \"c\": \"x/y\"}",
	    "[1e3, 1E3, 0.1e-2, -1.5e+10, 2.50, 0, -1, 9223372036854775807]",
	    "\"\\u00e9\\u20ac\\ud83d\\ude00\\n\\r\\t\\b\\f\\\"\\\\\\/\"",
	    "\"\\u0000\\u0001\\u001f\\u007f\\u0080 raw \xc3\xa9 \x7f\"",
	    "{ \"nested\" : { \"deep\" : [ [ ], { } ] } }",
	    "{\"k\\u0041y\": \"v\"}",
	};
	unsigned seed = 1;

	(void)state;
	for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++)
		check_same_as_jsonc(docs[i]);

	/* random strings of escapes and bytes */
	for (int round = 0; round < 500; round++) {
		char doc[256];
		size_t o = 0;

		doc[o++] = '"';
		for (int k = 0; k < 20; k++) {
			int r = rand_r(&seed) % 6;

			if (r == 0) {
				o += (size_t)snprintf(doc + o, sizeof(doc) - o,
						      "\\u%04x",
						      rand_r(&seed) % 0xd800);
			} else if (r == 1) {
				doc[o++] = '\\';
				doc[o++] = "\"\\/bfnrt"[rand_r(&seed) % 8];
			} else {
				doc[o++] = (char)(0x20 + rand_r(&seed) % 0x5f);
				if (doc[o - 1] == '"' || doc[o - 1] == '\\')
					doc[o - 1] = 'q';
			}
		}
		doc[o++] = '"';
		doc[o] = '\0';
		check_same_as_jsonc(doc);
	}
}

static void test_jdoc_strict(void **state)
{
	static const char *bad[] = {
	    "",		 "{",	     "[1,]",	"{\"a\":1,}", "01",
	    "1.",	 ".5",	     "1e",	"+1",	      "tru",
	    "nul",	 "\"abc",    "\"\\x\"", "\"\\u12\"",  "\"a\tb\"",
	    "{\"a\" 1}", "{a:1}",    "[1 2]",	"1 2",	      "'a'",
	    "NaN",	 "Infinity", "-",	"{\"a\":1}}",
	};
	struct jdoc d;

	(void)state;
	jdoc_init(&d);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (jdoc_parse(&d, bad[i], strlen(bad[i]), 0) != -EINVAL)
			fail_msg("accepted: %s", bad[i]);
		assert_true(d.err[0] != '\0');
	}
	/* invalid UTF-8 only matters when asked to validate */
	assert_int_equal(jdoc_parse(&d, "\"\xff\"", 3, 0), 0);
	assert_int_equal(jdoc_parse(&d, "\"\xff\"", 3, JDOC_VALIDATE_UTF8),
			 -EINVAL);
	assert_int_equal(jdoc_parse(&d, "\"\xc0\xaf\"", 4, JDOC_VALIDATE_UTF8),
			 -EINVAL); /* overlong */
	assert_int_equal(
	    jdoc_parse(&d, "\"\xed\xa0\x80\"", 5, JDOC_VALIDATE_UTF8),
	    -EINVAL); /* surrogate */
	assert_int_equal(
	    jdoc_parse(&d, "\"\xf0\x9f\x98\x80\"", 6, JDOC_VALIDATE_UTF8), 0);
	/* deep nesting is refused, not a stack overflow */
	{
		char deep[600];

		memset(deep, '[', sizeof(deep) - 1);
		deep[sizeof(deep) - 1] = '\0';
		assert_int_equal(jdoc_parse(&d, deep, strlen(deep), 0),
				 -EINVAL);
	}
	jdoc_release(&d);
}

/* ---- verbatim copies and the string scan ------------------------------ */

/* A schema whose names json-c escapes, or writes raw where a server may
 * escape them. */
static const char SCHEMA_ODD[] =
    "{\"columns\": ["
    "{\"name\": \"q\\\"uote\", \"type\": \"string\"},"
    "{\"name\": \"t\\tab\", \"type\": \"string\"},"
    "{\"name\": \"\\u00e9t\\u00e9\", \"type\": \"string\"},"
    "{\"name\": \"ctl\\u0001\", \"type\": \"number\"}"
    "]}";

/* JSONL of a page both ways, which must agree to the byte. Returns the
 * lines (malloc'ed); *ncopied: rows whose columns text was copied. */
static char *jsonl_both(const struct api_schema *s, const char *page,
			size_t len, size_t *nrows, size_t *ncopied)
{
	struct jdoc d;
	struct abuf fast, slow;
	size_t n2, c2;
	uint32_t rows;

	jdoc_init(&d);
	abuf_init(&fast);
	abuf_init(&slow);
	if (jdoc_parse(&d, page, len, 0))
		fail_msg("page refused (%s): %.*s", d.err, (int)len, page);
	rows = jdoc_member(&d, 0, "rows");
	assert_true(rows != UINT32_MAX);
	assert_int_equal(
	    api_rows_to_jsonl(s, &d, rows, &fast, nrows, ncopied, 0), 0);
	assert_int_equal(
	    api_rows_to_jsonl(s, &d, rows, &slow, &n2, &c2, API_JSONL_DECODE),
	    0);
	assert_int_equal(c2, 0);
	assert_int_equal(n2, *nrows);
	if (fast.len != slow.len ||
	    memcmp(fast.p ? fast.p : "", slow.p ? slow.p : "", fast.len))
		fail_msg("copied and rebuilt lines differ for\n%.*s\n"
			 "copied:  %.*s\nrebuilt: %.*s",
			 (int)len, page, (int)fast.len, fast.p ? fast.p : "",
			 (int)slow.len, slow.p ? slow.p : "");
	abuf_release(&slow);
	jdoc_release(&d);
	abuf_reserve(&fast, 0);
	return abuf_detach(&fast, NULL);
}

static void test_jsonl_verbatim_corpus(void **state)
{
	/* schema: 0 SCHEMA, 1 SCHEMA_ODD, 2 none; copied: the columns
	 * object is already the line */
	static const struct {
		int schema;
		bool copied;
		const char *cols;
	} rows[] = {
	    {0, true,
	     "{\"customer_id\":\"CUST-1\",\"last_interaction\":"
	     "\"2024-05-12T14:30:00Z\",\"loyalty_tier\":1.10,\"visits\":12,"
	     "\"active\":true,\"region/zone\":\"a/b\"}"},
	    /* absent columns are skipped either way */
	    {0, true, "{\"customer_id\":\"C\",\"visits\":-0}"},
	    {0, true, "{}"},
	    {0, true, "{\"active\":true,\"region/zone\":null}"},
	    /* numbers of every shape keep their text */
	    {0, true,
	     "{\"loyalty_tier\":-0.0,\"visits\":"
	     "123456789012345678901234567890,\"active\":null}"},
	    {0, true, "{\"loyalty_tier\":1E+3,\"visits\":0}"},
	    {0, true, "{\"loyalty_tier\":0.5e-10,\"active\":false}"},
	    {0, true, "{\"loyalty_tier\":-12.5E-0,\"visits\":9e0}"},
	    /* escapes json-c writes the same way */
	    {0, true,
	     "{\"customer_id\":\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0000\\u001f"
	     "\\u0001\\u000b\\u001e\"}"},
	    /* escapes it writes differently */
	    {0, false, "{\"customer_id\":\"x\\/y\"}"},
	    {0, false, "{\"customer_id\":\"\\u00e9\"}"},
	    {0, false, "{\"customer_id\":\"\\u000a\"}"},
	    {0, false, "{\"customer_id\":\"\\u0008\"}"},
	    {0, false, "{\"customer_id\":\"\\u001F\"}"},
	    {0, false, "{\"customer_id\":\"\\u0041\"}"},
	    {0, false, "{\"customer_id\":\"\\ud83d\\ude00\"}"},
	    {0, false, "{\"customer_id\":\"\\u007f\"}"},
	    {0, false, "{\"customer_id\":\"\\ud800\"}"},
	    {0, false, "{\"customer_id\":\"ok\",\"visits\":[\"\\/\"]}"},
	    /* raw bytes are copied either way, even invalid UTF-8 */
	    {0, true,
	     "{\"customer_id\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\x7f\"}"},
	    {0, true, "{\"customer_id\":\"\xff\xfe\xc0\"}"},
	    /* whitespace anywhere inside */
	    {0, false, "{ \"customer_id\":\"C\"}"},
	    {0, false, "{\"customer_id\" :\"C\"}"},
	    {0, false, "{\"customer_id\": \"C\"}"},
	    {0, false, "{\"customer_id\":\"C\" }"},
	    {0, false, "{\"customer_id\":\"C\",\n\"visits\":1}"},
	    {0, false, "{\"customer_id\":\"C\"\t,\"visits\":1}"},
	    {0, false, "{\"customer_id\":[1, 2]}"},
	    {0, false, "{\"customer_id\":[ ]}"},
	    {0, false, "{\"customer_id\":{\"a\":1 }}"},
	    /* order, unknown and repeated columns, escaped names */
	    {0, false, "{\"visits\":1,\"customer_id\":\"C\"}"},
	    {0, false, "{\"visits\":-12.5E-0,\"loyalty_tier\":3}"},
	    {0, false, "{\"customer_id\":\"C\",\"segment\":\"x\"}"},
	    {0, false, "{\"segment\":\"x\",\"customer_id\":\"C\"}"},
	    {0, false, "{\"zzz\":1}"},
	    {0, false, "{\"customer_id\":\"A\",\"customer_id\":\"B\"}"},
	    {0, false, "{\"customer_id\":\"C\",\"customer_id\":\"C\"}"},
	    {0, false, "{\"customer\\u005fid\":\"C\"}"},
	    {0, false, "{\"region\\/zone\":\"x\"}"},
	    {0, true, "{\"region/zone\":\"x\"}"},
	    /* nested values */
	    {0, true,
	     "{\"customer_id\":{\"a\":[1,{\"b\":null}],\"z\":\"q\"},"
	     "\"visits\":[]}"},
	    {0, true, "{\"customer_id\":[],\"visits\":{}}"},
	    {0, true, "{\"customer_id\":{\"b\":1,\"a\":2,\"b\":3}}"},
	    {0, false,
	     "{\"customer_id\":{\"a\":[1,{\"b\":null}],\"c\":\"\\/\"}}"},
	    {0, false, "{\"customer_id\":{\"\\u0061\":1}}"},
	    /* names json-c escapes */
	    {1, true,
	     "{\"q\\\"uote\":\"x\",\"t\\tab\":1,\"\xc3\xa9t\xc3\xa9\":2,"
	     "\"ctl\\u0001\":3}"},
	    {1, true, "{\"ctl\\u0001\":1}"},
	    {1, false, "{\"q\\u0022uote\":\"x\"}"},
	    {1, false, "{\"\\u00e9t\\u00e9\":2}"},
	    {1, false, "{\"t\\u0009ab\":1}"},
	    {1, false, "{\"ctl\\u0001\":3,\"q\\\"uote\":\"x\"}"},
	    {1, false, "{\"q\\\"uote\":\"x\",\"quote\":1}"},
	    /* no schema: server order, repeats kept */
	    {2, true, "{\"b\":1,\"a\":2}"},
	    {2, true, "{\"b\":1,\"b\":2}"},
	    {2, true, "{}"},
	    {2, false, "{\"b\": 1}"},
	    {2, false, "{\"\\u0062\":1}"},
	};
	struct api_schema schemas[2];
	struct abuf page[3];
	size_t want[3] = {0}, total[3] = {0};

	(void)state;
	schema_load(SCHEMA, &schemas[0]);
	schema_load(SCHEMA_ODD, &schemas[1]);
	assert_string_equal(schemas[1].columns[0].name, "q\"uote");
	for (int k = 0; k < 3; k++) {
		abuf_init(&page[k]);
		abuf_adds(&page[k], "{\"rows\": [");
	}
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		const struct api_schema *s =
		    rows[i].schema < 2 ? &schemas[rows[i].schema] : NULL;
		struct abuf one, *p = &page[rows[i].schema];
		size_t n, copied;
		char *out;

		/* alone, with the row's own members around columns */
		abuf_init(&one);
		abuf_adds(&one, "{\"rows\":[{\"id\":\"r\",\"columns\":");
		abuf_adds(&one, rows[i].cols);
		abuf_adds(&one, ",\"x\":{ }}],\"nextPageCursor\":null}");
		out = jsonl_both(s, one.p, one.len, &n, &copied);
		assert_int_equal(n, 1);
		if (copied != rows[i].copied)
			fail_msg("row %zu %s: %s", i,
				 copied ? "copied" : "not copied",
				 rows[i].cols);
		if (rows[i].copied) {
			assert_int_equal(strlen(out), strlen(rows[i].cols) + 1);
			assert_memory_equal(out, rows[i].cols,
					    strlen(rows[i].cols));
		}
		free(out);
		abuf_release(&one);

		/* and in a page of all rows, spaced out between rows */
		if (total[rows[i].schema]++)
			abuf_adds(p, ",\n  ");
		abuf_adds(p, "{\"columns\" : ");
		abuf_adds(p, rows[i].cols);
		abuf_adds(p, " , \"id\": \"r\"}");
		want[rows[i].schema] += rows[i].copied;
	}
	for (int k = 0; k < 3; k++) {
		size_t n, copied;
		char *out;

		abuf_adds(&page[k], "]}\n");
		out = jsonl_both(k < 2 ? &schemas[k] : NULL, page[k].p,
				 page[k].len, &n, &copied);
		assert_int_equal(n, total[k]);
		assert_int_equal(copied, want[k]);
		free(out);
		abuf_release(&page[k]);
	}
	api_schema_release(&schemas[0]);
	api_schema_release(&schemas[1]);
}

/* ---- random pages ----------------------------------------------------- */

struct gen {
	unsigned seed;
	struct abuf *b;
	unsigned ws;	   /* % of token gaps with whitespace */
	unsigned noncanon; /* % of escapes json-c writes differently */
};

static unsigned rnd(struct gen *g, unsigned n)
{
	return (unsigned)rand_r(&g->seed) % n;
}

static void gen_pick(struct gen *g, const char *const *list, size_t n)
{
	abuf_adds(g->b, list[rnd(g, (unsigned)n)]);
}

#define PICK(g, list) gen_pick(g, list, sizeof(list) / sizeof(list[0]))

static void gen_ws(struct gen *g)
{
	static const char *const ws[] = {" ", "\n", "\t", "\r\n  ", "  "};

	if (rnd(g, 100) < g->ws)
		PICK(g, ws);
}

static void gen_string(struct gen *g)
{
	static const char *const raw[] = {
	    "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\x7f", "/", "'",
	};
	static const char *const canon[] = {
	    "\\\"",    "\\\\",	  "\\b",     "\\f",	"\\n",
	    "\\r",     "\\t",	  "\\u0000", "\\u001f", "\\u0001",
	    "\\u000b", "\\u001e", "\\u0019",
	};
	static const char *const other[] = {
	    "\\/",     "\\u00e9",	 "\\u000a",	   "\\u001F",
	    "\\u0041", "\\ud83d\\ude00", "\\u007f",	   "\\ud800",
	    "\\u0008", "\\u20ac",	 "\\uDBFF\\uDFFF", "\\u000D",
	    "\\u0009", "\\u0020",	 "\\u00",	   "\\udc00",
	};
	unsigned n = rnd(g, 8);

	/* "\\u00" above is completed below, to hit \u00XX of every XX */
	abuf_addc(g->b, '"');
	for (unsigned k = 0; k < n; k++) {
		unsigned r = rnd(g, 12);

		if (r < 5) {
			for (unsigned l = 1 + rnd(g, 20); l; l--)
				abuf_addc(g->b, (char)('a' + rnd(g, 26)));
		} else if (r < 7) {
			PICK(g, raw);
		} else if (r < 10) {
			PICK(g, canon);
		} else if (rnd(g, 100) < g->noncanon) {
			size_t before = g->b->len;

			PICK(g, other);
			if (g->b->len - before == 4) { /* "\u00" */
				abuf_addc(g->b,
					  "0123456789abcdefABCDEF"[rnd(g, 22)]);
				abuf_addc(g->b,
					  "0123456789abcdefABCDEF"[rnd(g, 22)]);
			}
		}
	}
	abuf_addc(g->b, '"');
}

static void gen_value(struct gen *g, int depth)
{
	static const char *const numbers[] = {
	    "0",
	    "-0",
	    "7",
	    "-12",
	    "1.10",
	    "-0.0",
	    "1e3",
	    "1E+3",
	    "2.5e-7",
	    "-1.5E10",
	    "0.000",
	    "9223372036854775807",
	    "123456789012345678901234567890",
	};
	static const char *const literals[] = {"true", "false", "null"};
	unsigned r = rnd(g, depth < 3 ? 10 : 7), n;

	if (r < 3 || r == 6) {
		gen_string(g);
	} else if (r < 5) {
		PICK(g, numbers);
	} else if (r == 5) {
		PICK(g, literals);
	} else {
		bool object = r == 9;

		abuf_addc(g->b, object ? '{' : '[');
		n = rnd(g, 4);
		for (unsigned k = 0; k < n; k++) {
			gen_ws(g);
			if (k) {
				abuf_addc(g->b, ',');
				gen_ws(g);
			}
			if (object) {
				gen_string(g);
				gen_ws(g);
				abuf_addc(g->b, ':');
				gen_ws(g);
			}
			gen_value(g, depth + 1);
		}
		gen_ws(g);
		abuf_addc(g->b, object ? '}' : ']');
	}
}

/* A columns object: mostly known names in schema order, at times
 * reordered, repeated, unknown or escaped. */
static void gen_columns(struct gen *g, const struct api_schema *s)
{
	static const char *const unknown[] = {
	    "\"segment\"", "\"zzz\"", "\"a\\\"b\"", "\"\"", "\"customer\"",
	};
	static const char *const escaped[] = {
	    "\"customer\\u005fid\"", "\"region\\/zone\"", "\"q\\u0022uote\"",
	    "\"\\u00e9t\\u00e9\"",   "\"t\\u0009ab\"",
	};
	static const char *const anyname[] = {"b", "a", "a\"b", "\t"};
	const char *names[16];
	size_t n = 0, ncol = s ? s->ncolumns : 0;

	for (size_t c = 0; c < ncol && n < 12; c++)
		if (rnd(g, 100) < 70)
			names[n++] = s->columns[c].name;
	if (n > 1 && rnd(g, 100) < 15) { /* out of order */
		size_t a = rnd(g, (unsigned)n), b = rnd(g, (unsigned)n);
		const char *t = names[a];

		names[a] = names[b];
		names[b] = t;
	}
	if (n && rnd(g, 100) < 8) { /* repeated */
		size_t r = rnd(g, (unsigned)n);

		names[n++] = names[r];
	}
	for (; !ncol && n < 4 && rnd(g, 100) < 60; n++)
		names[n] = anyname[rnd(g, 4)];
	abuf_addc(g->b, '{');
	for (size_t k = 0; k <= n; k++) {
		bool extra = k == n;

		/* at times one more: unknown, or a known one escaped */
		if (extra && rnd(g, 100) >= 20)
			break;
		gen_ws(g);
		if (k) {
			abuf_addc(g->b, ',');
			gen_ws(g);
		}
		if (!extra)
			json_emit_string(g->b, names[k], strlen(names[k]));
		else if (rnd(g, 2))
			PICK(g, unknown);
		else
			PICK(g, escaped);
		gen_ws(g);
		abuf_addc(g->b, ':');
		gen_ws(g);
		gen_value(g, 1);
	}
	gen_ws(g);
	abuf_addc(g->b, '}');
}

/* Every node's text is what the long way writes for it exactly when the
 * scanner flagged it JF_VERBATIM. */
static void check_verbatim_flags(const char *doc, size_t len)
{
	struct jdoc d;
	struct abuf a, b;

	jdoc_init(&d);
	abuf_init(&a);
	abuf_init(&b);
	assert_int_equal(jdoc_parse(&d, doc, len, 0), 0);
	for (uint32_t i = 0; i < d.count; i++) {
		const struct jnode *nd = &d.nodes[i];
		const char *raw = doc + nd->off;
		size_t rlen = nd->len;
		bool same;

		if (nd->type == JT_STRING) {
			raw--;
			rlen += 2;
		}
		a.len = 0;
		jdoc_emit_decoded(&d, i, &a);
		same = a.len == rlen && !memcmp(a.p, raw, rlen);
		if (same != !!(nd->flags & JF_VERBATIM))
			fail_msg("node %u (%s) of %.*s: flag %d, text %s", i,
				 jtype_name((enum jtype)nd->type), (int)len,
				 doc, !!(nd->flags & JF_VERBATIM),
				 same ? "same" : "differs");
	}
	a.len = 0;
	jdoc_emit_decoded(&d, 0, &a);
	jdoc_emit(&d, 0, &b);
	assert_int_equal(a.len, b.len);
	assert_memory_equal(a.p, b.p, a.len);
	abuf_release(&a);
	abuf_release(&b);
	jdoc_release(&d);
}

static void test_jsonl_verbatim_random(void **state)
{
	struct api_schema schemas[2];
	size_t rows = 0, copied = 0;
	struct gen g = {.seed = 12345};

	(void)state;
	schema_load(SCHEMA, &schemas[0]);
	schema_load(SCHEMA_ODD, &schemas[1]);
	for (int round = 0; round < 3000; round++) {
		const struct api_schema *s =
		    round % 3 < 2 ? &schemas[round % 3] : NULL;
		struct abuf page;
		unsigned nrows;
		size_t n, c;

		abuf_init(&page);
		g.b = &page;
		/* half the pages as servers send them, half anything */
		g.ws = rnd(&g, 2) ? 0 : 1 + rnd(&g, 30);
		g.noncanon = rnd(&g, 2) ? 0 : 1 + rnd(&g, 60);
		nrows = rnd(&g, 6);
		abuf_adds(&page, "{\"rows\":[");
		for (unsigned r = 0; r < nrows; r++) {
			if (r)
				abuf_addc(&page, ',');
			if (rnd(&g, 4)) {
				abuf_adds(&page, "{\"id\":\"r\",\"columns\":");
				gen_columns(&g, s);
				abuf_addc(&page, '}');
			} else {
				abuf_adds(&page, "{\"columns\":");
				gen_columns(&g, s);
				abuf_adds(&page, ",\"id\":");
				gen_value(&g, 1);
				abuf_addc(&page, '}');
			}
		}
		abuf_adds(&page, "],\"nextPageCursor\":\"c\"}");
		assert_false(page.oom);
		free(jsonl_both(s, page.p, page.len, &n, &c));
		assert_int_equal(n, nrows);
		rows += n;
		copied += c;
		check_verbatim_flags(page.p, page.len);
		abuf_release(&page);
	}
	/* both ways were taken, many times */
	assert_true(copied > rows / 5);
	assert_true(copied < rows - rows / 5);
	api_schema_release(&schemas[0]);
	api_schema_release(&schemas[1]);
}

/* The string rules a byte at a time, as the scanner applied them before it
 * learnt to skip plain bytes in blocks: 0 and the closing quote's index in
 * *at, or why and where it failed. */
static size_t ref_utf8(const unsigned char *s, size_t n)
{
	size_t len, k;
	uint32_t cp;

	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xe0) == 0xc0) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		len = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		len = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (k = 1; k < len; k++) {
		if ((s[k] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[k] & 0x3f);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
	    (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* The code unit of a checked \uXXXX at s. */
static unsigned ref_u(const unsigned char *s)
{
	char hex[5] = { (char)s[2], (char)s[3], (char)s[4], (char)s[5], 0 };

	return (unsigned)strtoul(hex, NULL, 16);
}

/* A \u escape of half a surrogate pair without the other half. */
static bool ref_lone_surrogate(const unsigned char *s, size_t n, size_t i)
{
	unsigned cp = ref_u(s + i);

	if (cp >= 0xdc00 && cp <= 0xdfff)
		return true;
	if (cp < 0xd800 || cp > 0xdbff)
		return false;
	if (i + 12 > n || s[i + 6] != '\\' || s[i + 7] != 'u')
		return true;
	for (int k = 8; k < 12; k++)
		if (!s[i + k] || !strchr("0123456789abcdefABCDEF", s[i + k]))
			return true;
	return ref_u(s + i + 6) < 0xdc00 || ref_u(s + i + 6) > 0xdfff;
}

static const char *ref_string(const unsigned char *s, size_t n, size_t i,
			      bool utf8, size_t *at, bool *escaped)
{
	*escaped = false;
	for (;;) {
		if (i >= n) {
			*at = i;
			return "unterminated string";
		}
		if (s[i] == '"') {
			*at = i;
			return NULL;
		}
		if (s[i] == '\\') {
			*escaped = true;
			*at = i;
			if (i + 1 >= n)
				return "unterminated string";
			if (s[i + 1] == 'u') {
				if (i + 6 > n)
					return "bad \\u escape";
				for (int k = 2; k < 6; k++)
					if (!strchr("0123456789abcdefABCDEF",
						    s[i + k]) ||
					    !s[i + k])
						return "bad \\u escape";
				if (utf8 && ref_lone_surrogate(s, n, i))
					return "lone surrogate \\u escape";
				if (utf8 && ref_u(s + i) >= 0xd800 &&
				    ref_u(s + i) <= 0xdbff)
					i += 6;
				i += 6;
			} else if (s[i + 1] && strchr("\"\\/bfnrt", s[i + 1])) {
				i += 2;
			} else {
				return "bad escape";
			}
			continue;
		}
		if (s[i] < 0x20) {
			*at = i;
			return "control character in string";
		}
		if (s[i] >= 0x80 && utf8) {
			size_t l = ref_utf8(s + i, n - i);

			if (!l) {
				*at = i;
				return "invalid UTF-8";
			}
			i += l;
			continue;
		}
		i++;
	}
}

/* Random strings, with every kind of byte at every offset from the start
 * and from the end of the text (the block skips read 16 and 8 bytes at a
 * time, and the last few one by one): the same verdict, the same place. */
static void test_string_scan(void **state)
{
	static const char *const bits[] = {
	    "\"",
	    "\\",
	    "\\\"",
	    "\\\\",
	    "\\/",
	    "\\n",
	    "\\u00e9",
	    "\\u001f",
	    "\\ud83d",
	    "\\uZZ12",
	    "\\u12",
	    "\\x",
	    "\\",
	    "\x01",
	    "\x1f",
	    "\t",
	    "\x7f",
	    "\x80",
	    "\xbf",
	    "\xc2\x80",
	    "\xc3\xa9",
	    "\xc0\xaf",
	    "\xe0\x9f\x80",
	    "\xe2\x82\xac",
	    "\xed\xa0\x80",
	    "\xed\x9f\xbf",
	    "\xef\xbf\xbf",
	    "\xf0\x8f\xbf\xbf",
	    "\xf0\x9f\x98\x80",
	    "\xf4\x8f\xbf\xbf",
	    "\xf4\x90\x80\x80",
	    "\xf5",
	    "\xff",
	    "\xc3",
	    "\xe2\x82",
	    " ",
	};
	static const char *const tails[] = {
	    "",
	    "\"",
	    "\" ",
	    "\"                    ",
	    "\"x",
	    "\" \n\t",
	    "abcdefghijklmnopqrstuvwxyz\"",
	};
	unsigned seed = 7;
	struct jdoc d;

	(void)state;
	jdoc_init(&d);
	for (int round = 0; round < 40000; round++) {
		unsigned char doc[160];
		size_t n = 0, at, pos;
		bool utf8 = round & 1, escaped;
		const char *why, *tail;
		char want[160];
		int rc;

		doc[n++] = '"';
		for (unsigned k = (unsigned)rand_r(&seed) % 6; k; k--) {
			/* a run of plain bytes, then one of interest */
			for (unsigned l = (unsigned)rand_r(&seed) % 24; l; l--)
				doc[n++] =
				    (unsigned char)('a' + rand_r(&seed) % 26);
			if (rand_r(&seed) % 3 == 0) {
				doc[n++] = (unsigned char)(rand_r(&seed) % 256);
			} else {
				const char *b =
				    bits[(unsigned)rand_r(&seed) %
					 (sizeof(bits) / sizeof(bits[0]))];

				memcpy(doc + n, b, strlen(b));
				n += strlen(b);
			}
		}
		tail = tails[(unsigned)rand_r(&seed) %
			     (sizeof(tails) / sizeof(tails[0]))];
		memcpy(doc + n, tail, strlen(tail));
		n += strlen(tail);
		assert_true(n < sizeof(doc));

		why = ref_string(doc, n, 1, utf8, &at, &escaped);
		pos = at + 1;
		if (!why) {
			while (pos < n && strchr(" \t\r\n", doc[pos]) &&
			       doc[pos])
				pos++;
			if (pos != n) {
				why = "trailing characters";
				at = pos;
			}
		}
		rc = jdoc_parse(&d, (const char *)doc, n,
				utf8 ? JDOC_VALIDATE_UTF8 : 0);
		if (why) {
			snprintf(want, sizeof(want), "%s at byte %zu", why, at);
			if (rc != -EINVAL || strcmp(d.err, want))
				fail_msg("%s: got %d (%s), want %s",
					 utf8 ? "utf8" : "bytes", rc, d.err,
					 want);
			continue;
		}
		if (rc)
			fail_msg("%s: refused (%s), want accepted",
				 utf8 ? "utf8" : "bytes", d.err);
		assert_int_equal(d.count, 1);
		assert_int_equal(d.nodes[0].type, JT_STRING);
		assert_int_equal(d.nodes[0].off, 1);
		/* the quote ended it: the doc's string runs to `at` */
		assert_int_equal(d.nodes[0].len, (uint32_t)(at - 1));
		assert_int_equal(!!(d.nodes[0].flags & JF_ESCAPED), escaped);
		check_verbatim_flags((const char *)doc, n);
	}
	jdoc_release(&d);
}

/* ---- row validation --------------------------------------------------- */

static int validate(const struct api_schema *s, const char *line, char **row,
		    char **key, char **err)
{
	int rc = api_row_validate(s, line, strlen(line), row, key, err);

	if (rc == 0) {
		assert_non_null(*row);
		assert_non_null(*key);
		assert_null(*err);
	} else {
		assert_null(*row);
		assert_null(*key);
		assert_non_null(*err);
	}
	return rc;
}

static void expect_invalid(const struct api_schema *s, const char *line,
			   int want, const char *msg_part)
{
	char *row, *key, *err;
	int rc = validate(s, line, &row, &key, &err);

	if (rc != want)
		fail_msg("'%s': got %d (%s), want %d", line, rc,
			 err ? err : "valid", want);
	if (msg_part && !strstr(err, msg_part))
		fail_msg("'%s': message '%s' lacks '%s'", line, err, msg_part);
	free(err);
}

static void expect_valid(const struct api_schema *s, const char *line,
			 const char *want_row, const char *want_key)
{
	char *row, *key, *err;
	int rc = validate(s, line, &row, &key, &err);

	if (rc != 0)
		fail_msg("'%s' refused: %s", line, err);
	assert_string_equal(row, want_row);
	assert_string_equal(key, want_key);
	free(row);
	free(key);
}

/* Issue 11 item 5: two lone surrogates both decoded to U+FFFD, so two
 * distinct keys collapsed into one and a row was lost; a schema without a
 * key made every row one. Both are quarantined now. */
static void key_is(const char *enc, const char *want)
{
	char *k = NULL;

	assert_int_equal(api_key_string(enc, strlen(enc), &k), 0);
	assert_string_equal(k, want);
	free(k);
}

static void test_key_string(void **state)
{
	char *k = NULL;

	(void)state;
	key_is("[\"SKU-1\"]", "SKU-1");
	key_is("[\"a\\\"b\\\\c\\/d\"]", "a\"b\\c/d");
	key_is("[\"caf\\u00e9\"]", "caf\xc3\xa9");
	key_is("[\"\\ud83d\\ude00\"]", "\xf0\x9f\x98\x80");
	key_is("[\"caf\xc3\xa9\"]", "caf\xc3\xa9");
	/* not one string: composite keys, numbers, broken escapes, NUL */
	assert_int_equal(api_key_string("[\"a\",\"b\"]", 9, &k), -EINVAL);
	assert_int_equal(api_key_string("[1]", 3, &k), -EINVAL);
	assert_int_equal(api_key_string("[\"a\\x\"]", 7, &k), -EINVAL);
	assert_int_equal(api_key_string("[\"\\u0000\"]", 11, &k), -EINVAL);
	assert_null(k);
}

static void test_validate_lone_surrogates_and_no_key(void **state)
{
	struct api_schema s, nokey;
	static const char NOKEY[] =
	    "{\"columns\": [{\"name\": \"a\", \"type\": \"string\"}]}";

	(void)state;
	schema_load(SCHEMA, &s);
	expect_invalid(&s, "{\"customer_id\":\"s\\ud800\"}", -EINVAL,
		       "lone surrogate");
	expect_invalid(&s, "{\"customer_id\":\"s\\ud801\"}", -EINVAL,
		       "lone surrogate");
	expect_invalid(&s, "{\"customer_id\":\"s\\udc00x\"}", -EINVAL,
		       "lone surrogate");
	expect_invalid(&s, "{\"customer_id\":\"s\\ud800\\u0041\"}",
		       -EINVAL, "lone surrogate");
	/* a pair is one character, and stays valid */
	expect_valid(&s, "{\"customer_id\":\"s\\ud83d\\ude00\"}",
		     "{\"customer_id\":\"s\xf0\x9f\x98\x80\"}",
		     "[\"s\xf0\x9f\x98\x80\"]");
	api_schema_release(&s);

	schema_load(NOKEY, &nokey);
	expect_invalid(&nokey, "{\"a\":\"x\"}", -EINVAL,
		       "no primary-key column");
	api_schema_release(&nokey);
}

static void test_validate_rules(void **state)
{
	struct api_schema s;

	(void)state;
	schema_load(SCHEMA, &s);

	expect_invalid(&s, "[1]", -EINVAL, "not a JSON object");
	expect_invalid(&s, "\"x\"", -EINVAL, "not a JSON object");
	expect_invalid(&s, "{\"customer_id\": ", -EINVAL, "invalid JSON");
	expect_invalid(&s, "{\"customer_id\": \"a\"} {}", -EINVAL,
		       "invalid JSON");
	expect_invalid(&s, "{}", -EINVAL, "customer_id: missing key column");
	expect_invalid(&s, "{\"visits\": 1}", -EINVAL, "missing key column");
	expect_invalid(&s, "{\"customer_id\": null}", -EINVAL,
		       "customer_id: key column is null");
	expect_invalid(&s, "{\"customer_id\": 3}", -EINVAL,
		       "customer_id: expected string, got number");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"loyalty_tier\": \"3\"}",
		       -EINVAL, "loyalty_tier: expected number, got string");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"loyalty_tier\": true}",
		       -EINVAL, "loyalty_tier: expected number, got boolean");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"visits\": 1.0}", -EINVAL,
		       "visits: expected integer");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"visits\": 1e2}", -EINVAL,
		       "visits: expected integer");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"visits\": 1E2}", -EINVAL,
		       "visits: expected integer");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"visits\": \"1\"}",
		       -EINVAL, "visits: expected integer, got string");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"active\": 1}", -EINVAL,
		       "active: expected boolean, got number");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"active\": \"true\"}",
		       -EINVAL, "active: expected boolean, got string");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"last_interaction\": 5}",
		       -EINVAL, "last_interaction: expected date, got number");
	expect_invalid(&s,
		       "{\"customer_id\": \"a\", \"last_interaction\": "
		       "\"2024-13-01T00:00:00Z\"}",
		       -EINVAL, "last_interaction: expected date");
	/* the decoded string counts: an escaped NUL is not the end */
	expect_invalid(&s,
		       "{\"customer_id\": \"a\", \"last_interaction\": "
		       "\"2024-01-01T00:00:00Z\\u0000\"}",
		       -EINVAL, "last_interaction: expected date");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"customer_id\": \"b\"}",
		       -EINVAL, "customer_id: column given twice");
	expect_invalid(&s, "{\"customer_id\": \"a\", \"region/zone\": [1]}",
		       -EINVAL, "region/zone: expected string, got array");
	/* drift: -ENOENT names the column, and wins over type errors */
	expect_invalid(&s, "{\"customer_id\": \"a\", \"segment\": \"x\"}",
		       -ENOENT, "unknown column 'segment'");
	expect_invalid(&s, "{\"customer_id\": 1, \"segment\": \"x\"}", -ENOENT,
		       "unknown column 'segment'");
	/* invalid UTF-8, raw or as an overlong sequence */
	expect_invalid(&s, "{\"customer_id\": \"a\xff\"}", -EINVAL,
		       "invalid UTF-8");
	expect_invalid(&s, "{\"customer_id\": \"a\xc0\xaf\"}", -EINVAL,
		       "invalid UTF-8");

	/* valid: canonical order, text kept, null non-key allowed */
	expect_valid(
	    &s,
	    " {\"active\": false, \"visits\": 12345678901234567890,"
	    " \"loyalty_tier\": 1.10, \"customer_id\": \"CUST-1\","
	    " \"last_interaction\": \"2024-05-12T14:30:00.123+02:00\"} ",
	    "{\"customer_id\":\"CUST-1\",\"last_interaction\":"
	    "\"2024-05-12T14:30:00.123+02:00\",\"loyalty_tier\":1.10,"
	    "\"visits\":12345678901234567890,\"active\":false}",
	    "[\"CUST-1\"]");
	expect_valid(
	    &s,
	    "{\"customer_id\": \"\\u0041\\/b\", \"loyalty_tier\": null,"
	    " \"visits\": -0, \"region/zone\": \"\xc3\xa9\"}",
	    "{\"customer_id\":\"A/b\",\"loyalty_tier\":null,"
	    "\"visits\":-0,\"region/zone\":\"\xc3\xa9\"}",
	    "[\"A/b\"]");
	expect_valid(&s, "{\"customer_id\": \"x\", \"loyalty_tier\": -2.5e-3}",
		     "{\"customer_id\":\"x\",\"loyalty_tier\":-2.5e-3}",
		     "[\"x\"]");
	api_schema_release(&s);
}

static void test_validate_keys(void **state)
{
	struct api_schema s;
	char *row1, *key1, *row2, *key2, *row3, *key3, *err;

	(void)state;
	schema_load(SCHEMA2, &s);
	/* composite key in schema order, whatever the line's order */
	assert_int_equal(validate(&s,
				  "{\"queue\": \"billing\", \"region\": "
				  "\"emea\", \"priority\": 3}",
				  &row1, &key1, &err),
			 0);
	assert_string_equal(key1, "[\"emea\",\"billing\"]");
	assert_string_equal(row1, "{\"region\":\"emea\",\"priority\":3,"
				  "\"queue\":\"billing\"}");
	/* equal keys encode equally, even written differently */
	assert_int_equal(validate(&s,
				  "{\"region\": \"\\u0065mea\", "
				  "\"queue\": \"billing\"}",
				  &row2, &key2, &err),
			 0);
	assert_string_equal(key2, key1);
	/* different keys differ, and cannot collide through separators */
	assert_int_equal(validate(&s,
				  "{\"region\": \"emea\\\",\\\"billing\","
				  " \"queue\": \"\"}",
				  &row3, &key3, &err),
			 0);
	assert_string_not_equal(key3, key1);
	free(row1);
	free(key1);
	free(row2);
	free(key2);
	free(row3);
	free(key3);
	expect_invalid(&s, "{\"region\": \"emea\"}", -EINVAL,
		       "queue: missing key column");
	expect_invalid(&s, "{\"region\": \"emea\", \"queue\": null}", -EINVAL,
		       "queue: key column is null");
	api_schema_release(&s);
}

static void test_dates(void **state)
{
	static const char *good[] = {
	    "2024-05-12T14:30:00Z",	 "2024-05-12t14:30:00z",
	    "2024-05-12T14:30:00.1Z",	 "2024-05-12T14:30:00.123456789Z",
	    "2024-05-12T14:30:00+02:00", "2024-05-12T14:30:00.5-05:30",
	    "2024-02-29T00:00:00Z",	 "2000-02-29T23:59:59Z",
	    "1990-12-31T23:59:60Z",	 "2024-05-12 14:30:00Z",
	};
	static const char *bad[] = {
	    "",
	    "2024-05-12",
	    "2024-05-12T14:30Z",
	    "2024-05-12T14:30:00",
	    "2024-05-12T14:30:00.Z",
	    "2024-05-12T14:30:00+0200",
	    "2024-05-12T14:30:00+02",
	    "2024-05-12T24:00:00Z",
	    "2024-05-12T14:60:00Z",
	    "2024-05-12T14:30:61Z",
	    "2024-00-12T14:30:00Z",
	    "2024-05-32T14:30:00Z",
	    "2024-04-31T14:30:00Z",
	    "2023-02-29T00:00:00Z",
	    "1900-02-29T00:00:00Z",
	    "2024-05-12T14:30:00+24:00",
	    "2024-05-12T14:30:00Zjunk",
	    "24-05-12T14:30:00Z",
	    "2024-5-12T14:30:00Z",
	    "2024-05-12T14:30:00.12a3Z",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (!api_date_valid(good[i], strlen(good[i])))
			fail_msg("refused: %s", good[i]);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (api_date_valid(bad[i], strlen(bad[i])))
			fail_msg("accepted: %s", bad[i]);
}

/* ---- pacer and token timing ------------------------------------------- */

static void test_pacer(void **state)
{
	struct api_pacer p;
	double w;

	(void)state;
	pacer_init(&p);
	/* nothing known: go */
	assert_true(pacer_reserve(&p, 100, HUGE_VAL) == 0);
	assert_false(pacer_low(&p, 100));

	/* plenty left: go */
	pacer_update(&p, 100, 250, 50);
	assert_true(pacer_reserve(&p, 100, HUGE_VAL) == 0);
	assert_false(pacer_low(&p, 100));

	/* 4 left for 2 s: spread, 0.5 s apart */
	pacer_update(&p, 200, 4, 2);
	assert_true(pacer_low(&p, 200));
	w = pacer_reserve(&p, 200, HUGE_VAL);
	assert_true(w == 0);
	w = pacer_reserve(&p, 200, HUGE_VAL);
	assert_true(fabs(w - 0.5) < 1e-9);
	w = pacer_reserve(&p, 200, HUGE_VAL);
	if (!(w > 0.9 && w < 1.1))
		fail_msg("third wait %f", w);
	/* the window is over: free again */
	assert_true(pacer_reserve(&p, 203, HUGE_VAL) == 0);
	assert_false(pacer_low(&p, 203));

	/* none left: wait for the reset */
	pacer_update(&p, 300, 0, 3);
	w = pacer_reserve(&p, 300, HUGE_VAL);
	assert_true(w >= 3 && w <= 3.25);

	/* a 429 stops everyone for Retry-After plus jitter under 1 s */
	pacer_pause(&p, 400, 5);
	assert_true(pacer_low(&p, 400));
	for (int i = 0; i < 50; i++) {
		w = pacer_reserve(&p, 400, HUGE_VAL);
		assert_true(w >= 5 && w <= 6.25);
	}
	assert_false(pacer_low(&p, 406.5));
	pacer_destroy(&p);
}

/* Our own budget, 2 per 60 s, in made-up monotonic seconds: requests that
 * give up (their slot starts after the retry budget) hold no slot, or a
 * burst of them would starve the requests after it long after it ended. */
static void test_budget_gives_up_without_a_slot(void **state)
{
	struct api_pacer p;
	double w;

	(void)state;
	pacer_init(&p);
	assert_int_equal(budget_new(2, 60, NULL, &p.budget), 0);
	assert_true(pacer_reserve(&p, 100, 120) == 0);
	assert_true(pacer_reserve(&p, 100, 120) == 0);
	/* the third starts a window later: beyond its retry budget */
	for (int i = 0; i < 10; i++) {
		w = pacer_reserve(&p, 101, 121);
		assert_true(w > 59 && w < 61);
		pacer_update(&p, 101, -1, -1);
	}
	/* the window after the first two is free, the give-ups aside */
	assert_true(pacer_reserve(&p, 161, 181) == 0);
	assert_true(pacer_reserve(&p, 161, 181) == 0);
	w = pacer_reserve(&p, 161, 181);
	assert_true(w > 59 && w < 61);
	pacer_destroy(&p);
}

static void test_token_margin(void **state)
{
	(void)state;
	/* 3-second tokens are replaced after 2 s */
	assert_true(fabs(token_margin(3) - 1) < 1e-9);
	assert_true(fabs(token_margin(10) - 10.0 / 3) < 1e-9);
	assert_true(fabs(token_margin(300) - 30) < 1e-9);
	assert_true(fabs(token_margin(3600) - 360) < 1e-9);
	for (double l = 1; l < 100000; l *= 1.7) {
		assert_true(token_margin(l) >= l / 10);
		assert_true(token_margin(l) < l / 2);
	}
}

/* ---- a loopback server with canned answers ---------------------------- */

struct canned {
	int fd;
	const char *const *answers; /* one per connection, NULL ends */
	int served;
	char last_request[8192];
	int saw_bearer_tok2;
	const char *token_answer; /* NULL: a token "tok2" for 9 s */
};

/* Serve one request per connection ("Connection: close"), answers in
 * order; the last one repeats. */
static void *server_main(void *arg)
{
	struct canned *c = arg;
	int i = 0;

	for (;;) {
		int fd = accept(c->fd, NULL, NULL);
		char buf[8192];
		size_t got = 0;
		const char *a;

		if (fd < 0)
			break;
		for (;;) {
			ssize_t r = read(fd, buf + got, sizeof(buf) - 1 - got);
			char *end, *cl;

			if (r <= 0)
				break;
			got += (size_t)r;
			buf[got] = '\0';
			end = strstr(buf, "\r\n\r\n");
			if (!end)
				continue;
			cl = strcasestr(buf, "Content-Length:");
			if (!cl || got >= (size_t)(end + 4 - buf) +
					      strtoul(cl + 15, NULL, 10))
				break;
		}
		buf[got] = '\0';
		snprintf(c->last_request, sizeof(c->last_request), "%s", buf);
		if (strstr(buf, "Bearer tok2"))
			c->saw_bearer_tok2++;
		if (strncmp(buf, "POST /oauth/token", 17) == 0 &&
		    c->token_answer) {
			a = c->token_answer;
		} else if (strncmp(buf, "POST /oauth/token", 17) == 0) {
			a = strstr(buf, "grant_type=client_credentials")
				? "HTTP/1.1 200 OK\r\nContent-Type: "
				  "application/json\r\n"
				  "Connection: close\r\n\r\n"
				  "{\"access_token\":\"tok2\",\"token_type\":"
				  "\"bearer\",\"expires_in\":9}"
				: "HTTP/1.1 400 Bad\r\nConnection: "
				  "close\r\n\r\n";
		} else {
			a = c->answers[i];
			if (c->answers[i + 1])
				i++;
			c->served++;
		}
		/* canned answers carry no Content-Length: add it */
		{
			const char *sep = strstr(a, "\r\n\r\n");
			char head[64];
			int hl;

			assert_non_null(sep);
			hl = snprintf(head, sizeof(head),
				      "\r\nContent-Length: %zu\r\n\r\n",
				      strlen(sep + 4));
			if (write(fd, a, (size_t)(sep - a)) < 0 ||
			    write(fd, head, (size_t)hl) < 0 ||
			    write(fd, sep + 4, strlen(sep + 4)) < 0) {
				close(fd);
				break;
			}
		}
		close(fd);
	}
	return NULL;
}

static int start_server(struct canned *c, pthread_t *t, char *url, size_t size)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t len = sizeof(sa);

	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(c->fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(c->fd, 16), 0);
	assert_int_equal(getsockname(c->fd, (struct sockaddr *)&sa, &len), 0);
	snprintf(url, size, "http://127.0.0.1:%d", ntohs(sa.sin_port));
	return pthread_create(t, NULL, server_main, c);
}

static void stop_server(struct canned *c, pthread_t t)
{
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	pthread_join(t, NULL);
}

#define HDRS "Connection: close\r\nContent-Type: application/json\r\n"
#define EMPTY_OK                                                               \
	"HTTP/1.1 200 OK\r\n" HDRS "ININ-Correlation-Id: c-ok\r\n"             \
	"ETag: \"v7\"\r\nX-RateLimit-Remaining: 200\r\n"                       \
	"X-RateLimit-Reset: 30\r\n\r\n"                                        \
	"{\"rows\": [], \"nextPageCursor\": null}"

static void test_http_retries(void **state)
{
	static const char *const answers[] = {
	    "HTTP/1.1 503 Busy\r\n" HDRS "ININ-Correlation-Id: c1\r\n"
	    "\r\n{\"code\": \"server.too.busy\"}\n",
	    "HTTP/1.1 429 Slow\r\n" HDRS "Retry-After: 0\r\n"
	    "\r\n{}",
	    "HTTP/1.1 401 Who\r\n" HDRS "\r\n{}",
	    EMPTY_OK,
	    NULL,
	};
	struct canned c = {.answers = answers};
	struct api_config cfg = {.client_id = "id", .client_secret = "sec"};
	struct api_schema s;
	struct api_page page = {0};
	struct api_stats st;
	struct api *api;
	pthread_t t;
	char url[64];

	(void)state;
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	cfg.api_url = url;
	assert_int_equal(api_new(&cfg, &api), 0);
	schema_load(SCHEMA, &s);
	assert_int_equal(
	    api_get_rows(api, "t 1", &s, "c/+ =", 0, "\"v6\"", &page), 0);
	assert_false(page.not_modified);
	assert_int_equal(page.nrows, 0);
	assert_int_equal(page.page_size, 1000);
	assert_true(page.total == UINT64_MAX);
	assert_int_equal(page.page_count, 0);
	assert_null(page.next_cursor);
	assert_string_equal(page.version, "\"v7\"");
	assert_int_equal(page.len, 0);
	/* the cursor is escaped, If-None-Match sent */
	assert_non_null(strstr(c.last_request,
			       "GET /api/v2/datatables/t%201/rows?pageSize=1000"
			       "&cursor=c%2F%2B%20%3D HTTP/1.1"));
	assert_non_null(strstr(c.last_request, "If-None-Match: \"v6\""));
	assert_non_null(strstr(c.last_request, "Authorization: Bearer tok2"));
	api_get_stats(api, &st);
	assert_int_equal(st.tokens, 2); /* the 401 fetched a second one */
	assert_int_equal(st.throttled, 1);
	assert_int_equal(st.server_errors, 1);
	assert_int_equal(st.unauthorized, 1);
	assert_int_equal(st.retries, 3);
	assert_int_equal(st.requests, 4 + 2);
	assert_false(api_budget_low(api));
	api_page_release(&page);
	api_free(api);
	api_schema_release(&s);
	stop_server(&c, t);
}

static void test_http_give_up(void **state)
{
	static const char *const busy[] = {
	    "HTTP/1.1 503 Busy\r\n" HDRS "ININ-Correlation-Id: c9\r\n"
	    "\r\n{\"code\": \"server.too.busy\"}\n",
	    NULL,
	};
	static const char *const unauthorized[] = {
	    "HTTP/1.1 401 Who\r\n" HDRS "\r\n{}",
	    NULL,
	};
	static const char *const throttled[] = {
	    "HTTP/1.1 429 Slow\r\n" HDRS "Retry-After: 3600\r\n"
	    "\r\n{}",
	    NULL,
	};
	static const char *const notfound[] = {
	    "HTTP/1.1 404 No\r\n" HDRS
	    "\r\n{\"code\": \"datatable.not.found\"}",
	    NULL,
	};
	struct {
		const char *const *answers;
		int err;
		int served;
	} cases[] = {
	    {busy, -EIO, 3},		/* max_attempts */
	    {unauthorized, -EACCES, 2}, /* once with a fresh token */
	    {throttled, -EIO, 1},	/* Retry-After beyond budget */
	    {notfound, -ENOENT, 1},	/* other 4xx: no retry */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct canned c = {.answers = cases[i].answers};
		struct api_config cfg = {.client_id = "id",
					 .client_secret = "sec",
					 .max_attempts = 3,
					 .retry_budget_s = 30};
		struct api_schema s;
		struct api *api;
		pthread_t t;
		char url[64];

		assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
		cfg.api_url = url;
		assert_int_equal(api_new(&cfg, &api), 0);
		assert_int_equal(api_get_schema(api, "tbl", &s), cases[i].err);
		assert_int_equal(c.served, cases[i].served);
		api_free(api);
		stop_server(&c, t);
	}
}

static void test_http_upsert(void **state)
{
	static const char *const invalid[] = {
	    "HTTP/1.1 400 Bad\r\n" HDRS "ININ-Correlation-Id: c4\r\n"
	    "\r\n"
	    "{\"code\": \"invalid.row\", \"status\": 400, \"details\": ["
	    "{\"row\": 1, \"fieldName\": \"visits\", \"errorCode\": "
	    "\"type.mismatch\"}, {\"row\": 0, \"errorCode\": \"x\"}]}",
	    NULL,
	};
	static const char *const ok[] = {
	    "HTTP/1.1 200 OK\r\n" HDRS "ETag: \"v9\"\r\n"
	    "\r\n{\"inserted\": 1, \"updated\": 1}",
	    NULL,
	};
	const char *rows[] = {"{\"customer_id\":\"a\"}",
			      "{\"customer_id\":\"b\",\"visits\":1}"};
	struct api_upsert_result res;
	struct canned c = {.answers = invalid};
	struct api_config cfg = {.client_id = "id", .client_secret = "sec"};
	struct api *api;
	pthread_t t;
	char url[64];

	(void)state;
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	cfg.api_url = url;
	assert_int_equal(api_new(&cfg, &api), 0);
	assert_int_equal(api_upsert(api, "tbl", rows, 2, &res), -EINVAL);
	assert_int_equal(res.nerrors, 2);
	assert_int_equal(res.errors[0].row, 1);
	assert_string_equal(res.errors[0].field, "visits");
	assert_string_equal(res.errors[0].code, "type.mismatch");
	assert_int_equal(res.errors[1].row, 0);
	assert_null(res.errors[1].field);
	assert_int_equal(res.attempts, 1);
	assert_non_null(strstr(c.last_request,
			       "POST /api/v2/datatables/tbl/rows?upsert=true"));
	assert_non_null(strstr(c.last_request,
			       "\r\n\r\n[{\"columns\":{\"customer_id\":\"a\"}},"
			       "{\"columns\":{\"customer_id\":\"b\","
			       "\"visits\":1}}]"));
	api_upsert_result_release(&res);
	assert_int_equal(api_upsert(api, "tbl", rows, 0, &res), -EINVAL);
	api_upsert_result_release(&res);
	api_free(api);
	stop_server(&c, t);

	c = (struct canned){.answers = ok};
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	cfg.api_url = url;
	assert_int_equal(api_new(&cfg, &api), 0);
	assert_int_equal(api_upsert(api, "tbl", rows, 2, &res), 0);
	assert_int_equal(res.inserted, 1);
	assert_int_equal(res.updated, 1);
	assert_string_equal(res.version, "\"v9\"");
	api_upsert_result_release(&res);
	api_free(api);
	stop_server(&c, t);
}

static void test_delete_gone(void **state)
{
	static const char *const retried[] = {
	    "HTTP/1.1 502 Gateway\r\n" HDRS "\r\n{}",
	    "HTTP/1.1 404 No\r\n" HDRS
	    "\r\n{\"code\": \"datatable.row.not.found\"}",
	    NULL,
	};
	static const char *const missing[] = {
	    "HTTP/1.1 404 No\r\n" HDRS
	    "\r\n{\"code\": \"datatable.row.not.found\"}",
	    NULL,
	};
	struct api_config cfg = {.client_id = "id", .client_secret = "sec"};
	struct canned c = {.answers = retried};
	struct api *api;
	pthread_t t;
	char url[64];

	(void)state;
	/* a 404 after a 502 (which may have deleted it): done */
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	cfg.api_url = url;
	assert_int_equal(api_new(&cfg, &api), 0);
	assert_int_equal(api_delete_row(api, "tbl", "row 1"), 0);
	assert_non_null(strstr(c.last_request,
			       "DELETE /api/v2/datatables/tbl/rows/row%201 "));
	assert_int_equal(c.served, 2);
	api_free(api);
	stop_server(&c, t);

	/* a plain 404 is -ENOENT */
	c = (struct canned){.answers = missing};
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	cfg.api_url = url;
	assert_int_equal(api_new(&cfg, &api), 0);
	assert_int_equal(api_delete_row(api, "tbl", "row1"), -ENOENT);
	api_free(api);
	stop_server(&c, t);
}

/* Pages of different sizes through one client: each body lands in the
 * buffer the one before left (longer, then shorter, then none at all),
 * and nothing of an earlier body shows through. */
static void test_http_body_reuse(void **state)
{
#define BIG_PAGE                                                               \
	"HTTP/1.1 200 OK\r\n" HDRS "ETag: \"v1\"\r\n\r\n"                      \
	"{\"rows\": [{\"id\": \"1\", \"columns\": {\"customer_id\": "          \
	"\"CUST-0001\", \"visits\": 1}}, {\"id\": \"2\", \"columns\": "        \
	"{\"customer_id\":\"CUST-0002\",\"visits\":2}}, {\"id\": \"3\", "      \
	"\"columns\": {\"visits\": 3, \"customer_id\": \"CUST-0003\"}}], "     \
	"\"nextPageCursor\": \"n1\"}"
	static const char *const answers[] = {
	    BIG_PAGE,
	    "HTTP/1.1 200 OK\r\n" HDRS "\r\n"
	    "{\"rows\":[{\"columns\":{\"customer_id\":\"C\"}}]}",
	    "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n"
	    "ETag: \"v1\"\r\n\r\n",
	    "HTTP/1.1 200 OK\r\n" HDRS "\r\n",
	    BIG_PAGE,
	    NULL,
	};
	static const char big_lines[] =
	    "{\"customer_id\":\"CUST-0001\",\"visits\":1}\n"
	    "{\"customer_id\":\"CUST-0002\",\"visits\":2}\n"
	    "{\"customer_id\":\"CUST-0003\",\"visits\":3}\n";
	struct canned c = {.answers = answers};
	struct api_config cfg = {.client_id = "id", .client_secret = "sec"};
	struct api_schema s;
	struct api_page page = {0};
	struct api *api;
	pthread_t t;
	char url[64];

	(void)state;
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	cfg.api_url = url;
	assert_int_equal(api_new(&cfg, &api), 0);
	schema_load(SCHEMA, &s);

	assert_int_equal(api_get_rows(api, "t", &s, NULL, 0, NULL, &page), 0);
	assert_int_equal(page.nrows, 3);
	assert_string_equal(page.data, big_lines);
	assert_int_equal(page.len, strlen(big_lines));
	assert_string_equal(page.next_cursor, "n1");
	api_page_release(&page);

	assert_int_equal(api_get_rows(api, "t", &s, "n1", 0, NULL, &page), 0);
	assert_int_equal(page.nrows, 1);
	assert_string_equal(page.data, "{\"customer_id\":\"C\"}\n");
	assert_null(page.next_cursor);
	api_page_release(&page);

	assert_int_equal(api_get_rows(api, "t", &s, NULL, 0, "\"v1\"", &page),
			 0);
	assert_true(page.not_modified);
	api_page_release(&page);

	/* an empty body is not the last one read into the same buffer */
	assert_int_equal(api_get_rows(api, "t", &s, NULL, 0, NULL, &page),
			 -EPROTO);
	assert_null(page.data);

	assert_int_equal(api_get_rows(api, "t", &s, NULL, 0, NULL, &page), 0);
	assert_string_equal(page.data, big_lines);
	api_page_release(&page);
	assert_int_equal(c.served, 5);

	api_free(api);
	api_schema_release(&s);
	stop_server(&c, t);
#undef BIG_PAGE
}

/* Run fn with stderr captured into a malloc'ed string, at debug level. */
static char *capture_stderr(void (*fn)(const char *url), const char *url)
{
	char path[] = "/tmp/dtfs-test-log-XXXXXX";
	int fd = mkstemp(path), saved = dup(2);
	char *text;
	FILE *f;
	long n;

	assert_true(fd >= 0 && saved >= 0);
	fflush(stderr);
	dup2(fd, 2);
	log_init("test_api", LOG_DEBUG);
	fn(url);
	log_init("test_api", LOG_CRIT);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);
	f = fopen(path, "r");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	text = calloc(1, (size_t)n + 1);
	assert_int_equal(fread(text, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	unlink(path);
	return text;
}

static void wrong_secret(const char *url)
{
	struct api_config cfg = {.api_url = url,
				 .client_id = "my-client",
				 .client_secret = "TopSecret-123"};
	struct api *api;

	assert_int_equal(api_new(&cfg, &api), 0);
	assert_int_equal(api_check(api), -EACCES);
	api_free(api);
}

static void busy_then_ok(const char *url)
{
	struct api_config cfg = {.api_url = url,
				 .client_id = "my-client",
				 .client_secret = "TopSecret-123"};
	struct api_page page;
	struct api *api;

	assert_int_equal(api_new(&cfg, &api), 0);
	assert_int_equal(api_get_rows(api, "tbl", NULL, NULL, 10, NULL, &page),
			 0);
	api_page_release(&page);
	api_free(api);
}

static void test_logs_keep_secrets(void **state)
{
	static const char *const answers[] = {
	    "HTTP/1.1 503 Busy\r\n" HDRS "ININ-Correlation-Id: corr-77\r\n"
	    "\r\n{\"code\": \"server.too.busy\"}",
	    EMPTY_OK,
	    NULL,
	};
	struct canned c = {
	    .answers = answers,
	    .token_answer = "HTTP/1.1 401 Unauthorized\r\n" HDRS
			    "ININ-Correlation-Id: corr-1\r\n\r\n"
			    "{\"error\": \"invalid_client\"}",
	};
	pthread_t t;
	char url[64], want[256], *log;

	(void)state;
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	log = capture_stderr(wrong_secret, url);
	stop_server(&c, t);
	/* the error names the host that answered */
	snprintf(want, sizeof(want),
		 "get token for client 'my-client' failed: HTTP 401 "
		 "invalid_client (correlation corr-1) from %s: the client id "
		 "or secret is wrong", url);
	assert_non_null(strstr(log, want));
	assert_null(strstr(log, "TopSecret"));
	/* base64("my-client:TopSecret-123") */
	assert_null(strstr(log, "bXktY2xpZW50OlRvcFNlY3JldC0xMjM"));
	assert_non_null(strstr(c.last_request,
			       "Authorization: Basic "
			       "bXktY2xpZW50OlRvcFNlY3JldC0xMjM="));
	assert_non_null(strstr(c.last_request,
			       "grant_type=client_credentials&scope=data-table"
			       "%3Aread%20data-table%3Awrite"));
	free(log);

	c = (struct canned){.answers = answers};
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	log = capture_stderr(busy_then_ok, url);
	stop_server(&c, t);
	/* the retry is logged with status, code and correlation id */
	assert_non_null(strstr(log, "get rows page of 'tbl' failed: HTTP 503 "
				    "server.too.busy (correlation corr-77)"
				    ", retry 1 of 7 in "));
	assert_null(strstr(log, "tok2"));
	assert_null(strstr(log, "TopSecret"));
	assert_null(strstr(log, "Authorization"));
	free(log);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_backoff_bounds),
	    cmocka_unit_test(test_random_threads),
	    cmocka_unit_test(test_retry_after),
	    cmocka_unit_test(test_errno_from_http),
	    cmocka_unit_test(test_errno_from_curl),
	    cmocka_unit_test(test_regions),
	    cmocka_unit_test(test_urls),
	    cmocka_unit_test(test_escape),
	    cmocka_unit_test(test_credentials_file),
	    cmocka_unit_test(test_schema_parse),
	    cmocka_unit_test(test_jsonl_order_and_numbers),
	    cmocka_unit_test(test_jsonl_bad_pages),
	    cmocka_unit_test(test_jsonc_compatible),
	    cmocka_unit_test(test_jdoc_strict),
	    cmocka_unit_test(test_jsonl_verbatim_corpus),
	    cmocka_unit_test(test_jsonl_verbatim_random),
	    cmocka_unit_test(test_string_scan),
	    cmocka_unit_test(test_validate_rules),
	    cmocka_unit_test(test_validate_keys),
	    cmocka_unit_test(test_dates),
	    cmocka_unit_test(test_pacer),
	    cmocka_unit_test(test_budget_gives_up_without_a_slot),
	    cmocka_unit_test(test_token_margin),
	    cmocka_unit_test(test_http_retries),
	    cmocka_unit_test(test_http_give_up),
	    cmocka_unit_test(test_http_upsert),
	    cmocka_unit_test(test_delete_gone),
	    cmocka_unit_test(test_http_body_reuse),
	    cmocka_unit_test(test_logs_keep_secrets),
	    cmocka_unit_test(test_validate_lone_surrogates_and_no_key),
	    cmocka_unit_test(test_key_string),
	};

	log_init("test_api", getenv("TEST_API_VERBOSE") ? LOG_DEBUG : LOG_CRIT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
