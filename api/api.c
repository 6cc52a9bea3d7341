/*
 * api.c: the client object, its configuration, and the public entry points
 * (which hand over to the dialect). See api.h for the contract and
 * docs/api.md for the design.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "api_i.h"
#include "log.h"

#define DEFAULT_MAX_ATTEMPTS 8
#define DEFAULT_RETRY_BUDGET_S 120.0
#define DEFAULT_CONNECT_TIMEOUT_S 10.0
#define DEFAULT_STALL_TIMEOUT_S 60.0
#define CREDENTIALS_MAX 65536

/* ---- time and randomness ---------------------------------------------- */

double api_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void api_sleep(double seconds)
{
	struct timespec ts, rem;

	if (!(seconds > 0))
		return;
	ts.tv_sec = (time_t)seconds;
	ts.tv_nsec = (long)((seconds - (double)ts.tv_sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L)
		ts.tv_nsec = 999999999L;
	while (nanosleep(&ts, &rem) == -1 && errno == EINTR)
		ts = rem;
}

/* xorshift64*, one state per thread, seeded from getrandom(). */
double api_random(void)
{
	static __thread uint64_t state;
	uint64_t x;

	if (!state) {
		if (getrandom(&state, sizeof(state), GRND_NONBLOCK) !=
		    (ssize_t)sizeof(state)) {
			struct timespec ts;

			clock_gettime(CLOCK_REALTIME, &ts);
			state = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^
				(uint64_t)(uintptr_t)&state;
		}
		if (!state)
			state = 0x2545f4914f6cdd1dULL;
	}
	x = state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	state = x;
	/* 53 random bits -> [0, 1) */
	return (double)((x * 0x2545f4914f6cdd1dULL) >> 11) * 0x1.0p-53;
}

double api_backoff_delay(unsigned attempt, double base_s, double cap_s)
{
	double ceiling = ldexp(base_s, attempt > 60 ? 60 : (int)attempt);

	if (ceiling > cap_s)
		ceiling = cap_s;
	if (!(ceiling > 0))
		return 0;
	return api_random() * ceiling;
}

/* ---- small pure helpers ---------------------------------------------- */

double api_parse_retry_after(const char *value)
{
	const char *s, *e;
	char buf[64];
	time_t t;

	if (!value)
		return -1;
	for (s = value; *s == ' ' || *s == '\t'; s++)
		;
	for (e = s + strlen(s); e > s && (e[-1] == ' ' || e[-1] == '\t' ||
					  e[-1] == '\r' || e[-1] == '\n');
	     e--)
		;
	if (e == s || (size_t)(e - s) >= sizeof(buf))
		return -1;
	memcpy(buf, s, (size_t)(e - s));
	buf[e - s] = '\0';
	if (buf[0] >= '0' && buf[0] <= '9') {
		char *end;
		double v;

		/* delta-seconds: digits only (a fraction is tolerated) */
		for (const char *p = buf; *p; p++)
			if (!((*p >= '0' && *p <= '9') || *p == '.'))
				goto date;
		errno = 0;
		v = strtod(buf, &end);
		if (errno || *end || !(v >= 0) || v > 1e9)
			return -1;
		return v;
	}
date:
	/* an HTTP date needs a day name or a month name: letters first */
	if (!((buf[0] >= 'A' && buf[0] <= 'Z') ||
	      (buf[0] >= 'a' && buf[0] <= 'z')))
		return -1;
	t = curl_getdate(buf, NULL);
	if (t == (time_t)-1)
		return -1;
	t -= time(NULL);
	return t > 0 ? (double)t : 0;
}

int api_errno_from_http(long status)
{
	if ((status >= 200 && status <= 299) || status == 304)
		return 0;
	switch (status) {
	case 400:
	case 405:
	case 411:
	case 413:
	case 414:
	case 415:
	case 422:
	case 428:
	case 431:
		return -EINVAL;
	case 401:
	case 403:
		return -EACCES;
	case 404:
	case 410:
		return -ENOENT;
	case 408:
		return -ETIMEDOUT;
	case 409:
		return -EEXIST;
	case 412:
		return -ESTALE;
	default:
		return -EIO;
	}
}

struct json_object *api_resp_json(const struct api_resp *resp)
{
	struct json_tokener *tok;
	struct json_object *o;

	if (!resp->body.len || resp->body.len > INT32_MAX)
		return NULL;
	tok = json_tokener_new();
	if (!tok)
		return NULL;
	o = json_tokener_parse_ex(tok, resp->body.p, (int)resp->body.len);
	json_tokener_free(tok);
	if (o && !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		o = NULL;
	}
	return o;
}

void api_log_unexpected(struct api *api, const char *what, const char *subject,
			const struct api_resp *resp, const char *why)
{
	char name[API_NAME_BUF];

	subject = api_table_name(api, subject, name, sizeof(name));
	log_err("%s%s%s%s failed: unexpected answer: %s (HTTP %ld, "
		"correlation %s)",
		what, subject ? " '" : "", subject ? subject : "",
		subject ? "'" : "", why, resp->status,
		resp->correlation[0] ? resp->correlation : "none");
}

/* ---- regions ---------------------------------------------------------- */

struct region {
	const char *name;
	const char *domain;
	const char *api;
	const char *login;
};

#define REGION(n, d)                                                           \
	{                                                                      \
		n, d, "https://api." d, "https://login." d                     \
	}

static const struct region regions[] = {
    REGION("us-east-1", "mypurecloud.com"),
    REGION("us-east-2", "use2.us-gov-pure.cloud"),
    REGION("us-west-2", "usw2.pure.cloud"),
    REGION("ca-central-1", "cac1.pure.cloud"),
    REGION("sa-east-1", "sae1.pure.cloud"),
    REGION("mx-central-1", "mxc1.pure.cloud"),
    REGION("eu-west-1", "mypurecloud.ie"),
    REGION("eu-west-2", "euw2.pure.cloud"),
    REGION("eu-central-1", "mypurecloud.de"),
    REGION("eu-central-2", "euc2.pure.cloud"),
    REGION("eusc-de-east-1", "edee1.eusc-pure.cloud"),
    REGION("me-central-1", "mec1.pure.cloud"),
    REGION("ap-south-1", "aps1.pure.cloud"),
    REGION("ap-southeast-1", "apse1.pure.cloud"),
    REGION("ap-southeast-2", "mypurecloud.com.au"),
    REGION("ap-northeast-1", "mypurecloud.jp"),
    REGION("ap-northeast-2", "apne2.pure.cloud"),
    REGION("ap-northeast-3", "apne3.pure.cloud"),
};

/* "eu-west-1", "eu_west_1" (the SDKs' spelling) or the domain itself. */
static const struct region *region_find(const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < sizeof(regions) / sizeof(regions[0]); i++) {
		const char *a = regions[i].name, *b = name;

		if (strcasecmp(name, regions[i].domain) == 0)
			return &regions[i];
		for (; *a && *b; a++, b++) {
			char x = *a, y = *b;

			if (y >= 'A' && y <= 'Z')
				y = (char)(y - 'A' + 'a');
			if (y == '_')
				y = '-';
			if (x != y)
				break;
		}
		if (!*a && !*b)
			return &regions[i];
	}
	return NULL;
}

const char *api_region_api_url(const char *region)
{
	const struct region *r = region_find(region);

	return r ? r->api : NULL;
}

const char *api_region_login_url(const char *region)
{
	const struct region *r = region_find(region);

	return r ? r->login : NULL;
}

/* ---- URLs ------------------------------------------------------------- */

static bool host_is_loopback(const char *host)
{
	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 ||
	    strcmp(host, "::1") == 0)
		return true;
	return strncmp(host, "127.", 4) == 0 &&
	       strspn(host + 4, "0123456789.") == strlen(host + 4);
}

int api_check_url(const char *url, const char *what)
{
	CURLU *u;
	char *scheme = NULL, *host = NULL;
	/* messages leave out the query: a signed URL's is a credential */
	int shown = (int)strcspn(url, "?#"), rc = -EINVAL;

	u = curl_url();
	if (!u)
		return -ENOMEM;
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		log_err("%s '%.*s' is not a URL", what, shown, url);
		goto out;
	}
	if (strcasecmp(scheme, "https") == 0) {
		rc = 0;
	} else if (strcasecmp(scheme, "http") == 0) {
		if (host_is_loopback(host))
			rc = 0;
		else
			log_err("%s '%.*s' refused: plain http is allowed only "
				"for loopback hosts (127.0.0.1, ::1, "
				"localhost); use https",
				what, shown, url);
	} else {
		log_err("%s '%.*s' refused: the scheme must be https", what,
			shown, url);
	}
out:
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return rc;
}

/* A copy of url without trailing slashes. */
static char *url_base(const char *url)
{
	size_t n = strlen(url);

	while (n && url[n - 1] == '/')
		n--;
	return strndup(url, n);
}

/* ---- credentials ------------------------------------------------------ */

static void wipe_free(char *s)
{
	if (s) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

int api_read_credentials(const char *path, char **id, char **secret)
{
	struct stat st;
	char *buf = NULL, *line, *next;
	size_t len = 0;
	ssize_t r;
	int fd, rc = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		log_err("open credentials file '%s' failed: %s", path,
			strerror(-rc));
		return rc == -EACCES ? -EACCES : -EINVAL;
	}
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		log_err("stat credentials file '%s' failed: %s", path,
			strerror(-rc));
		rc = -EINVAL;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		log_err("credentials file '%s' is not a regular file", path);
		rc = -EINVAL;
		goto out;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		log_err("credentials file '%s' refused: group or others have "
			"access (mode %04o); run chmod 600 '%s'",
			path, (unsigned)(st.st_mode & 07777), path);
		rc = -EACCES;
		goto out;
	}
	if (st.st_size > CREDENTIALS_MAX) {
		log_err("credentials file '%s' is too large", path);
		rc = -EINVAL;
		goto out;
	}
	buf = calloc(1, (size_t)st.st_size + 2);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	while (len <= (size_t)st.st_size &&
	       (r = read(fd, buf + len, (size_t)st.st_size + 1 - len)) != 0) {
		if (r < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			log_err("read credentials file '%s' failed: %s", path,
				strerror(-rc));
			rc = -EINVAL;
			goto out;
		}
		len += (size_t)r;
	}
	buf[len < (size_t)st.st_size + 1 ? len : (size_t)st.st_size + 1] = '\0';
	for (line = buf; line; line = next) {
		char *eq, *key, *val, **dst = NULL;
		size_t vl;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		line = trim(line);
		if (!*line || *line == '#')
			continue;
		if (strncmp(line, "export ", 7) == 0)
			line = trim(line + 7);
		eq = strchr(line, '=');
		if (!eq)
			continue;
		*eq = '\0';
		key = trim(line);
		val = trim(eq + 1);
		vl = strlen(val);
		if (vl >= 2 && (val[0] == '"' || val[0] == '\'') &&
		    val[vl - 1] == val[0]) {
			val[vl - 1] = '\0';
			val++;
		}
		if (strcasecmp(key, "client_id") == 0 ||
		    strcasecmp(key, "GENESYSCLOUD_OAUTHCLIENT_ID") == 0)
			dst = id;
		else if (strcasecmp(key, "client_secret") == 0 ||
			 strcasecmp(key, "GENESYSCLOUD_OAUTHCLIENT_SECRET") ==
			     0)
			dst = secret;
		if (!dst || !*val)
			continue;
		wipe_free(*dst);
		*dst = strdup(val);
		if (!*dst) {
			rc = -ENOMEM;
			goto out;
		}
	}
out:
	if (buf) {
		explicit_bzero(buf, (size_t)st.st_size + 2);
		free(buf);
	}
	close(fd);
	return rc;
}

/* ---- the client ------------------------------------------------------- */

static int resolve_urls(struct api *api, const struct api_config *cfg)
{
	const char *region, *login;
	int rc;

	if (cfg->api_url && *cfg->api_url) {
		rc = api_check_url(cfg->api_url, "api_url");
		if (rc)
			return rc;
		api->api_url = url_base(cfg->api_url);
		login = cfg->login_url && *cfg->login_url ? cfg->login_url
							  : cfg->api_url;
	} else {
		region = cfg->region && *cfg->region
			     ? cfg->region
			     : getenv("GENESYSCLOUD_REGION");
		if (!region || !*region)
			region = "us-east-1";
		if (!api_region_api_url(region)) {
			log_err("unknown region '%s' (use a name such as "
				"us-east-1 or eu-west-1, or api_url=)",
				region);
			return -EINVAL;
		}
		api->api_url = strdup(api_region_api_url(region));
		login = cfg->login_url && *cfg->login_url
			    ? cfg->login_url
			    : api_region_login_url(region);
	}
	if (!api->api_url)
		return -ENOMEM;
	rc = api_check_url(login, "login_url");
	if (rc)
		return rc;
	api->login_url = url_base(login);
	return api->login_url ? 0 : -ENOMEM;
}

static int resolve_credentials(struct api *api, const struct api_config *cfg)
{
	const char *env;
	int rc;

	if (cfg->client_id && *cfg->client_id &&
	    !(api->client_id = strdup(cfg->client_id)))
		return -ENOMEM;
	if (cfg->client_secret && *cfg->client_secret &&
	    !(api->client_secret = strdup(cfg->client_secret)))
		return -ENOMEM;
	if (cfg->credentials && *cfg->credentials &&
	    (!api->client_id || !api->client_secret)) {
		char *id = NULL, *secret = NULL;

		rc = api_read_credentials(cfg->credentials, &id, &secret);
		if (!rc) {
			if (!api->client_id) {
				api->client_id = id;
				id = NULL;
			}
			if (!api->client_secret) {
				api->client_secret = secret;
				secret = NULL;
			}
		}
		wipe_free(id);
		wipe_free(secret);
		if (rc)
			return rc;
	}
	if (!api->client_id && (env = getenv("GENESYSCLOUD_OAUTHCLIENT_ID")) &&
	    *env && !(api->client_id = strdup(env)))
		return -ENOMEM;
	if (!api->client_secret &&
	    (env = getenv("GENESYSCLOUD_OAUTHCLIENT_SECRET")) && *env &&
	    !(api->client_secret = strdup(env)))
		return -ENOMEM;
	if (!api->client_id || !api->client_secret) {
		log_err("no client %s: set GENESYSCLOUD_OAUTHCLIENT_ID and "
			"GENESYSCLOUD_OAUTHCLIENT_SECRET, or give a "
			"credentials file with client_id= and client_secret=",
			!api->client_id ? "id" : "secret");
		return -EINVAL;
	}
	return 0;
}

int api_new(const struct api_config *cfg, struct api **out)
{
	static const struct api_config defaults = {0};
	struct api *api;
	int rc;

	*out = NULL;
	if (!cfg)
		cfg = &defaults;
	api = calloc(1, sizeof(*api));
	if (!api)
		return -ENOMEM;
	token_init(&api->token);
	pacer_init(&api->pacer);

	if (!cfg->dialect || !*cfg->dialect ||
	    strcmp(cfg->dialect, "cursor") == 0) {
		api->dialect = &api_dialect_cursor;
	} else if (strcmp(cfg->dialect, "flows") == 0) {
		api->dialect = &api_dialect_flows;
	} else {
		log_err("unknown api dialect '%s' (cursor or flows)",
			cfg->dialect);
		rc = -EINVAL;
		goto fail;
	}
	api->max_attempts =
	    cfg->max_attempts ? cfg->max_attempts : DEFAULT_MAX_ATTEMPTS;
	api->retry_budget_s = cfg->retry_budget_s > 0 ? cfg->retry_budget_s
						      : DEFAULT_RETRY_BUDGET_S;
	api->connect_timeout_s = cfg->connect_timeout_s > 0
				     ? cfg->connect_timeout_s
				     : DEFAULT_CONNECT_TIMEOUT_S;
	api->stall_timeout_s = cfg->stall_timeout_s > 0
				   ? cfg->stall_timeout_s
				   : DEFAULT_STALL_TIMEOUT_S;
	{
		unsigned n = api->dialect->rate_requests;
		double w = api->dialect->rate_window_s;

		if (cfg->rate_requests && cfg->rate_window_s > 0) {
			n = cfg->rate_requests;
			w = cfg->rate_window_s;
		} else if (cfg->rate_requests || cfg->rate_window_s > 0) {
			log_err("a request budget needs both a count and a "
				"window (rate=N/SECONDS)");
			rc = -EINVAL;
			goto fail;
		}
		rc = budget_new(n, w, cfg->budget_file, &api->pacer.budget);
		if (rc)
			goto fail;
	}

	atomic_store(&api->max_page, api->dialect->max_page_size);
	rc = api_http_init(api);
	if (rc)
		goto fail;
	rc = resolve_urls(api, cfg);
	if (rc)
		goto fail;
	rc = resolve_credentials(api, cfg);
	if (rc)
		goto fail;
	*out = api;
	return 0;
fail:
	api_free(api);
	return rc;
}

void api_free(struct api *api)
{
	if (!api)
		return;
	api_http_release(api);
	token_destroy(&api->token);
	pacer_destroy(&api->pacer);
	free(api->api_url);
	free(api->login_url);
	wipe_free(api->client_id);
	wipe_free(api->client_secret);
	free(api);
}

int api_check(struct api *api)
{
	char *token = NULL;
	uint64_t gen;
	int rc = token_get(api, &token, &gen);

	if (token) {
		explicit_bzero(token, strlen(token));
		free(token);
	}
	return rc;
}

/* ---- operations ------------------------------------------------------- */

int api_list_tables(struct api *api, struct api_table_list *out)
{
	int rc = api->dialect->list_tables(api, out);

	if (!rc)
		api_http_learn_names(api, out);
	return rc;
}

int api_table_list_add(struct api_table_list *out, size_t *cap, const char *id,
		       const char *name)
{
	struct api_table *t;

	if (out->count == *cap) {
		size_t ncap = *cap ? *cap * 2 : 32;

		t = realloc(out->tables, ncap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		out->tables = t;
		*cap = ncap;
	}
	t = &out->tables[out->count];
	t->id = strdup(id);
	t->name = strdup(name);
	if (!t->id || !t->name) {
		free(t->id);
		free(t->name);
		return -ENOMEM;
	}
	out->count++;
	return 0;
}

int api_list_page(struct api *api, const char *url, struct api_resp *resp,
		  struct json_object **root, struct api_table_list *out,
		  size_t *cap, size_t *n)
{
	struct api_req req = {
	    .method = "GET", .url = url, .what = "list tables"};
	struct json_object *ents;
	int rc;

	*n = 0;
	rc = api_http(api, &req, resp);
	if (rc)
		return rc;
	json_object_put(*root);
	*root = api_resp_json(resp);
	if (!*root || !json_object_object_get_ex(*root, "entities", &ents) ||
	    !json_object_is_type(ents, json_type_array)) {
		api_log_unexpected(api, "list tables", NULL, resp,
				   "no entities");
		return -EPROTO;
	}
	*n = json_object_array_length(ents);
	for (size_t i = 0; i < *n; i++) {
		struct json_object *e = json_object_array_get_idx(ents, i);
		struct json_object *id, *name;

		if (!json_object_object_get_ex(e, "id", &id) ||
		    !json_object_is_type(id, json_type_string) ||
		    !json_object_object_get_ex(e, "name", &name) ||
		    !json_object_is_type(name, json_type_string)) {
			api_log_unexpected(api, "list tables", NULL, resp,
					   "an entity without id or name");
			return -EPROTO;
		}
		/* a NUL would cut the name short: two names that differ
		 * after it would become one */
		if (strlen(json_object_get_string(name)) !=
			(size_t)json_object_get_string_len(name) ||
		    strlen(json_object_get_string(id)) !=
			(size_t)json_object_get_string_len(id)) {
			log_warn("list tables: skipping table '%s' whose name "
				 "or id holds a NUL",
				 json_object_get_string(id));
			continue;
		}
		rc = api_table_list_add(out, cap, json_object_get_string(id),
					json_object_get_string(name));
		if (rc)
			return rc;
	}
	return 0;
}

int api_page_rows(struct api *api, const char *table_id,
		  const struct api_schema *schema, struct api_resp *resp,
		  const char *member, int flags, struct api_page *out)
{
	const char *what = "get rows page of";
	struct jdoc *d = &resp->doc;
	const char *body = resp->body.p ? resp->body.p : "";
	struct abuf data;
	uint32_t rows;
	int rc;

	abuf_init(&data);
	/* strict as an import line is: what dtfs would refuse to import is
	 * never exported without a word */
	rc = jdoc_parse(d, body, resp->body.len, JDOC_VALIDATE_UTF8);
	if (rc == -EINVAL) {
		char why[sizeof(d->err)], name[API_NAME_BUF];

		snprintf(why, sizeof(why), "%s", d->err);
		rc = jdoc_parse(d, body, resp->body.len, 0);
		if (rc == 0)
			log_warn(
			    "rows of '%s' hold text an import would "
			    "refuse (%s): exported as sent, with "
			    "invalid UTF-8 bytes kept and lone "
			    "surrogates as U+FFFD",
			    api_table_name(api, table_id, name, sizeof(name)),
			    why);
	}
	if (rc == -EINVAL) {
		api_log_unexpected(api, what, table_id, resp, d->err);
		rc = -EPROTO;
	}
	if (rc)
		goto out;
	rows = jdoc_member(d, 0, member);
	if (rows == UINT32_MAX) {
		api_log_unexpected(api, what, table_id, resp,
				   flags & API_JSONL_FLAT ? "no entities"
							  : "no rows");
		rc = -EPROTO;
		goto out;
	}
	rc =
	    api_rows_to_jsonl(schema, d, rows, &data, &out->nrows, NULL, flags);
	if (rc == -EPROTO)
		api_log_unexpected(api, what, table_id, resp,
				   flags & API_JSONL_FLAT
				       ? "a row that is not an object"
				       : "a row without columns");
	if (rc)
		goto out;
	abuf_reserve(&data, 0);
	out->data = abuf_detach(&data, &out->len);
	if (!out->data)
		rc = -ENOMEM;
out:
	abuf_release(&data);
	return rc;
}

void api_table_list_release(struct api_table_list *list)
{
	if (!list)
		return;
	for (size_t i = 0; i < list->count; i++) {
		free(list->tables[i].id);
		free(list->tables[i].name);
	}
	free(list->tables);
	list->tables = NULL;
	list->count = 0;
}

int api_get_schema(struct api *api, const char *table_id,
		   struct api_schema *out)
{
	return api->dialect->get_schema(api, table_id, out);
}

int api_put_schema(struct api *api, const char *table_id, const char *json,
		   size_t len, const char *if_match, struct api_schema *out)
{
	return api->dialect->put_schema(api, table_id, json, len, if_match,
					out);
}

int api_create_table(struct api *api, const char *name, const char *json,
		     size_t len, char **id)
{
	*id = NULL;
	if (!api->dialect->create_table)
		return -ENOSYS;
	return api->dialect->create_table(api, name, json, len, id);
}

int api_delete_table(struct api *api, const char *table_id, bool force)
{
	if (!api->dialect->delete_table)
		return -ENOSYS;
	return api->dialect->delete_table(api, table_id, force);
}

int api_get_rows(struct api *api, const char *table_id,
		 const struct api_schema *schema, const char *cursor,
		 unsigned page_size, const char *if_none_match,
		 struct api_page *out)
{
	memset(out, 0, sizeof(*out));
	if (!api->dialect->get_rows)
		return -ENOSYS;
	return api->dialect->get_rows(api, table_id, schema, cursor, page_size,
				      if_none_match, out);
}

void api_page_release(struct api_page *page)
{
	if (!page)
		return;
	free(page->ids); /* the strings are in the same block */
	free(page->data);
	free(page->next_cursor);
	free(page->version);
	memset(page, 0, sizeof(*page));
}

int api_upsert(struct api *api, const char *table_id, const char *const *rows,
	       size_t nrows, struct api_upsert_result *out)
{
	memset(out, 0, sizeof(*out));
	if (!api->dialect->upsert)
		return -ENOSYS;
	return api->dialect->upsert(api, table_id, rows, nrows, out);
}

void api_upsert_result_release(struct api_upsert_result *res)
{
	if (!res)
		return;
	for (size_t i = 0; i < res->nerrors; i++) {
		free(res->errors[i].field);
		free(res->errors[i].code);
	}
	free(res->errors);
	free(res->version);
	memset(res, 0, sizeof(*res));
}

int api_delete_row(struct api *api, const char *table_id, const char *row_id)
{
	return api->dialect->delete_row(api, table_id, row_id);
}

int api_get_page(struct api *api, const char *table_id,
		 const struct api_schema *schema, unsigned page_number,
		 unsigned page_size, struct api_page *out)
{
	memset(out, 0, sizeof(*out));
	if (!api->dialect->get_page)
		return -ENOSYS;
	return api->dialect->get_page(api, table_id, schema, page_number,
				      page_size, out);
}

int api_row_create(struct api *api, const char *table_id, const char *row,
		   size_t len)
{
	if (!api->dialect->row_create)
		return -ENOSYS;
	return api->dialect->row_create(api, table_id, row, len);
}

int api_row_update(struct api *api, const char *table_id, const char *key,
		   const char *row, size_t len)
{
	if (!api->dialect->row_update)
		return -ENOSYS;
	return api->dialect->row_update(api, table_id, key, row, len);
}

int api_row_delete_key(struct api *api, const char *table_id, const char *key)
{
	if (!api->dialect->row_delete_key)
		return -ENOSYS;
	return api->dialect->row_delete_key(api, table_id, key);
}

void api_job_release(struct api_job *job)
{
	if (!job)
		return;
	free(job->id);
	free(job->status);
	free(job->error);
	memset(job, 0, sizeof(*job));
}

int api_import_csv(struct api *api, const char *table_id, const char *csv,
		   size_t len, bool replace_all, struct api_job *out)
{
	memset(out, 0, sizeof(*out));
	if (!api->dialect->import_csv)
		return -ENOSYS;
	return api->dialect->import_csv(api, table_id, csv, len, replace_all,
					out);
}

int api_export_csv(struct api *api, const char *table_id, char **csv,
		   size_t *len)
{
	*csv = NULL;
	*len = 0;
	if (!api->dialect->export_csv)
		return -ENOSYS;
	return api->dialect->export_csv(api, table_id, csv, len);
}

void api_get_caps(struct api *api, struct api_caps *out)
{
	memset(out, 0, sizeof(*out));
	api->dialect->get_caps(api, out);
}

bool api_budget_low(struct api *api)
{
	return pacer_low(&api->pacer, api_now());
}

double api_budget_rate(struct api *api)
{
	return pacer_rate(&api->pacer, api_now());
}

void api_get_stats(struct api *api, struct api_stats *out)
{
	out->requests = atomic_load(&api->n_requests);
	out->retries = atomic_load(&api->n_retries);
	out->throttled = atomic_load(&api->n_throttled);
	out->server_errors = atomic_load(&api->n_server_errors);
	out->unauthorized = atomic_load(&api->n_unauthorized);
	out->tokens = atomic_load(&api->n_tokens);
}
