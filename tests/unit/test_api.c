/*
 * Unit tests of api/: everything that needs no server. Pure helpers
 * (backoff, Retry-After, error maps, regions, URLs), the credentials file,
 * the JSONL serialization of rows pages, row validation, schemas, the
 * pacer and a loopback HTTP server for the retry and 401 paths.
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
	assert_int_equal(api_errno_from_curl(CURLE_COULDNT_CONNECT, &retry),
			 -ENOTCONN);
	assert_true(retry);
	assert_int_equal(
	    api_errno_from_curl(CURLE_COULDNT_RESOLVE_HOST, &retry), -ENOTCONN);
	assert_true(retry);
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
	assert_int_equal(new_with("flows", "eu-west-1", NULL, NULL), -EINVAL);
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
	struct abuf out;
	uint32_t rows;
	char *text;

	jdoc_init(&d);
	abuf_init(&out);
	assert_int_equal(jdoc_parse(&d, page, strlen(page), 0), 0);
	rows = jdoc_member(&d, 0, "rows");
	assert_true(rows != UINT32_MAX);
	assert_int_equal(api_rows_to_jsonl(s, &d, rows, &out, nrows), 0);
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
						   &out, &n),
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
	assert_true(pacer_reserve(&p, 100) == 0);
	assert_false(pacer_low(&p, 100));

	/* plenty left: go */
	pacer_update(&p, 100, 250, 50);
	assert_true(pacer_reserve(&p, 100) == 0);
	assert_false(pacer_low(&p, 100));

	/* 4 left for 2 s: spread, 0.5 s apart */
	pacer_update(&p, 200, 4, 2);
	assert_true(pacer_low(&p, 200));
	w = pacer_reserve(&p, 200);
	assert_true(w == 0);
	w = pacer_reserve(&p, 200);
	assert_true(fabs(w - 0.5) < 1e-9);
	w = pacer_reserve(&p, 200);
	if (!(w > 0.9 && w < 1.1))
		fail_msg("third wait %f", w);
	/* the window is over: free again */
	assert_true(pacer_reserve(&p, 203) == 0);
	assert_false(pacer_low(&p, 203));

	/* none left: wait for the reset */
	pacer_update(&p, 300, 0, 3);
	w = pacer_reserve(&p, 300);
	assert_true(w >= 3 && w <= 3.25);

	/* a 429 stops everyone for Retry-After plus jitter under 1 s */
	pacer_pause(&p, 400, 5);
	assert_true(pacer_low(&p, 400));
	for (int i = 0; i < 50; i++) {
		w = pacer_reserve(&p, 400);
		assert_true(w >= 5 && w <= 6.25);
	}
	assert_false(pacer_low(&p, 406.5));
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
	char url[64], *log;

	(void)state;
	assert_int_equal(start_server(&c, &t, url, sizeof(url)), 0);
	log = capture_stderr(wrong_secret, url);
	stop_server(&c, t);
	assert_non_null(strstr(log, "get token for client 'my-client' failed: "
				    "HTTP 401 invalid_client (correlation "
				    "corr-1): wrong client id or secret?"));
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
	    cmocka_unit_test(test_validate_rules),
	    cmocka_unit_test(test_validate_keys),
	    cmocka_unit_test(test_dates),
	    cmocka_unit_test(test_pacer),
	    cmocka_unit_test(test_token_margin),
	    cmocka_unit_test(test_http_retries),
	    cmocka_unit_test(test_http_give_up),
	    cmocka_unit_test(test_http_upsert),
	    cmocka_unit_test(test_delete_gone),
	    cmocka_unit_test(test_logs_keep_secrets),
	};

	log_init("test_api", getenv("TEST_API_VERBOSE") ? LOG_DEBUG : LOG_CRIT);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
