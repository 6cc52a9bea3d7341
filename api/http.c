/*
 * http.c: libcurl, retries, and the one place a request is sent.
 *
 * Connections: a mutex-protected pool of easy handles. A handle keeps its
 * connections alive between requests, so borrowing any idle handle reuses
 * a connection; DNS and TLS sessions are shared between all handles through
 * a CURLSH with one lock per data kind. (libcurl's shared *connection*
 * cache is not safe between concurrent threads, hence the pool.)
 *
 * Buffers: the pool also keeps the body and scanner arrays of finished
 * responses (64 pairs, API_SPARE_TOTAL bytes at most), so a 200 kB rows
 * page lands in memory the previous page already faulted in instead of
 * growing a fresh buffer by doubling (which malloc would give back to the
 * kernel after each page).
 *
 * Retries (api_http): 429 waits Retry-After plus up to 1 s of jitter, and
 * tells the pacer so every thread waits; 5xx, 408 and transient network
 * errors back off exponentially with full jitter; a 401 drops the token and
 * retries once with a fresh one. All bounded by max_attempts and
 * retry_budget_s. Other 4xx are final.
 */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>

#include "api_i.h"
#include "log.h"

#define POOL_MAX_IDLE 64

/* api_set_interrupt_check(): set once, before requests run */
static int (*interrupt_check)(void);

void api_set_interrupt_check(int (*check)(void))
{
	interrupt_check = check;
}

static bool interrupted(void)
{
	return interrupt_check && interrupt_check();
}

/* curl asks about once a second, also while nothing arrives. Not for
 * token requests: other threads wait for that token. */
static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow,
		       curl_off_t ultotal, curl_off_t ulnow)
{
	if (user)
		return 0;
	(void)dltotal;
	(void)dlnow;
	(void)ultotal;
	(void)ulnow;
	return interrupted() ? 1 : 0;
}

/* Sleep up to `seconds`, in slices, unless interrupted: true then. */
static bool sleep_unless_interrupted(double seconds)
{
	while (seconds > 0) {
		double slice = seconds < 0.1 ? seconds : 0.1;

		if (interrupted())
			return true;
		api_sleep(slice);
		seconds -= slice;
	}
	return interrupted();
}

/* The arrays of a released response, kept for the next one. */
struct spare {
	char *body;
	size_t body_cap;
	struct jnode *nodes;
	size_t nodes_cap;
};

struct api_http_pool {
	pthread_mutex_t mu;
	CURL **idle;
	size_t nidle;
	struct spare *spare; /* POOL_MAX_IDLE of them */
	size_t nspare;
	size_t spare_bytes; /* their capacity in all, <= API_SPARE_TOTAL */
	CURLSH *share;
	pthread_mutex_t locks[CURL_LOCK_DATA_LAST];

	/* table names by id, from the last listing: messages name tables */
	pthread_mutex_t names_mu;
	struct api_table_list names;

	/* the circuit breaker (breaker_enter) */
	atomic_llong cb_open_ms; /* last refused connection, 0: closed */
	atomic_bool cb_probing;	 /* a probe is in flight */
	atomic_llong cb_logged_ms; /* last refusal logged at error level */
	atomic_ulong cb_refused; /* requests refused while open */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_ALL);
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access acc,
		       void *user)
{
	struct api_http_pool *pool = user;

	(void)h;
	(void)acc;
	if ((unsigned)data < CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&pool->locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *user)
{
	struct api_http_pool *pool = user;

	(void)h;
	if ((unsigned)data < CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&pool->locks[data]);
}

int api_http_init(struct api *api)
{
	struct api_http_pool *pool;

	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK) {
		log_err("initialize libcurl failed: %s",
			curl_easy_strerror(curl_init_rc));
		return -EIO;
	}
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return -ENOMEM;
	pool->idle = calloc(POOL_MAX_IDLE, sizeof(*pool->idle));
	pool->spare = calloc(POOL_MAX_IDLE, sizeof(*pool->spare));
	pool->share = curl_share_init();
	if (!pool->idle || !pool->spare || !pool->share) {
		if (pool->share)
			curl_share_cleanup(pool->share);
		free(pool->spare);
		free(pool->idle);
		free(pool);
		return -ENOMEM;
	}
	pthread_mutex_init(&pool->mu, NULL);
	pthread_mutex_init(&pool->names_mu, NULL);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&pool->locks[i], NULL);
	curl_share_setopt(pool->share, CURLSHOPT_LOCKFUNC, share_lock);
	curl_share_setopt(pool->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
	curl_share_setopt(pool->share, CURLSHOPT_USERDATA, pool);
	curl_share_setopt(pool->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	curl_share_setopt(pool->share, CURLSHOPT_SHARE,
			  CURL_LOCK_DATA_SSL_SESSION);
	api->pool = pool;
	return 0;
}

void api_http_release(struct api *api)
{
	struct api_http_pool *pool = api->pool;

	if (!pool)
		return;
	for (size_t i = 0; i < pool->nidle; i++)
		curl_easy_cleanup(pool->idle[i]);
	for (size_t i = 0; i < pool->nspare; i++) {
		free(pool->spare[i].body);
		free(pool->spare[i].nodes);
	}
	free(pool->spare);
	api_table_list_release(&pool->names);
	pthread_mutex_destroy(&pool->names_mu);
	curl_share_cleanup(pool->share);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&pool->locks[i]);
	pthread_mutex_destroy(&pool->mu);
	free(pool->idle);
	free(pool);
	api->pool = NULL;
}

static CURL *pool_get(struct api_http_pool *pool)
{
	CURL *h = NULL;

	pthread_mutex_lock(&pool->mu);
	if (pool->nidle)
		h = pool->idle[--pool->nidle];
	pthread_mutex_unlock(&pool->mu);
	if (h)
		curl_easy_reset(h); /* keeps live connections and caches */
	else
		h = curl_easy_init();
	return h;
}

static void pool_put(struct api_http_pool *pool, CURL *h)
{
	pthread_mutex_lock(&pool->mu);
	if (pool->nidle < POOL_MAX_IDLE) {
		pool->idle[pool->nidle++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&pool->mu);
	if (h)
		curl_easy_cleanup(h);
}

/* ---- responses -------------------------------------------------------- */

/* Give r (whose arrays are NULL) the arrays of an earlier response. */
static void spare_take(struct api_http_pool *pool, struct api_resp *r)
{
	struct spare s = {0};

	pthread_mutex_lock(&pool->mu);
	if (pool->nspare) {
		s = pool->spare[--pool->nspare];
		pool->spare_bytes -=
		    s.body_cap + s.nodes_cap * sizeof(*s.nodes);
	}
	pthread_mutex_unlock(&pool->mu);
	r->pool = pool;
	if (s.body) {
		r->body.p = s.body;
		r->body.cap = s.body_cap;
		r->body.p[0] = '\0';
	}
	r->doc.nodes = s.nodes;
	r->doc.cap = s.nodes_cap;
}

/* Keep r's arrays for the next response, unless they grew too big (one
 * huge answer must not pin its memory) or the pool is full (a burst of
 * parallel requests must not either). */
static void spare_put(struct api_http_pool *pool, struct api_resp *r)
{
	struct spare s = {.body = r->body.p,
			  .body_cap = r->body.cap,
			  .nodes = r->doc.nodes,
			  .nodes_cap = r->doc.cap};

	if (s.body_cap > API_SPARE_MAX || r->body.oom) {
		free(s.body);
		s.body = NULL;
		s.body_cap = 0;
	}
	if (s.nodes_cap > API_SPARE_MAX / sizeof(*s.nodes)) {
		free(s.nodes);
		s.nodes = NULL;
		s.nodes_cap = 0;
	}
	if (s.body || s.nodes) {
		size_t bytes = s.body_cap + s.nodes_cap * sizeof(*s.nodes);

		pthread_mutex_lock(&pool->mu);
		if (pool->nspare < POOL_MAX_IDLE &&
		    pool->spare_bytes + bytes <= API_SPARE_TOTAL) {
			pool->spare[pool->nspare++] = s;
			pool->spare_bytes += bytes;
			s.body = NULL;
			s.nodes = NULL;
		}
		pthread_mutex_unlock(&pool->mu);
	}
	free(s.body);
	free(s.nodes);
	abuf_init(&r->body);
	jdoc_init(&r->doc);
}

void api_resp_init(struct api_resp *r)
{
	memset(r, 0, sizeof(*r));
	abuf_init(&r->body);
	jdoc_init(&r->doc);
	r->rl_remaining = r->rl_reset = r->rl_limit = r->rl_count = -1;
}

static void resp_clear_headers(struct api_resp *r)
{
	free(r->etag);
	r->etag = NULL;
	free(r->location);
	r->location = NULL;
	r->correlation[0] = '\0';
	r->retry_after[0] = '\0';
	r->code[0] = '\0';
	r->message[0] = '\0';
	r->rl_remaining = r->rl_reset = r->rl_limit = r->rl_count = -1;
}

void api_resp_release(struct api_resp *r)
{
	resp_clear_headers(r);
	if (r->pool) {
		spare_put(r->pool, r);
		r->pool = NULL;
	} else {
		abuf_release(&r->body);
		jdoc_release(&r->doc);
	}
}

static size_t on_body(char *p, size_t size, size_t n, void *user)
{
	struct api_resp *r = user;
	size_t len = size * n;
	if (r->body.len + len > r->body_max) {
		r->too_big = true;
		return 0;
	}
	abuf_add(&r->body, p, len);
	return r->body.oom ? 0 : len;
}

static long header_long(const char *v)
{
	char *end;
	long x;

	errno = 0;
	x = strtol(v, &end, 10);
	if (errno || end == v || x < 0)
		return -1;
	while (*end == ' ' || *end == '\t')
		end++;
	return *end ? -1 : x;
}

static void copy_value(char *dst, size_t size, const char *v)
{
	snprintf(dst, size, "%s", v);
}

static size_t on_header(char *p, size_t size, size_t n, void *user)
{
	struct api_resp *r = user;
	size_t len = size * n;
	char line[512], *colon, *v, *e;

	if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
		/* a new response (after 100 Continue, say) */
		resp_clear_headers(r);
		return len;
	}
	if (len >= 9 && strncasecmp(p, "Location:", 9) == 0) {
		/* signed URLs are long: keep the whole value */
		char *loc = strndup(p + 9, len - 9), *b = loc, *z;

		if (!loc)
			return len;
		while (*b == ' ' || *b == '\t')
			b++;
		z = b + strlen(b);
		while (z > b && (z[-1] == '\r' || z[-1] == '\n' ||
				 z[-1] == ' ' || z[-1] == '\t'))
			*--z = '\0';
		free(r->location);
		r->location = strdup(b);
		free(loc);
		return len;
	}
	if (len >= sizeof(line))
		return len; /* none of ours is that long */
	memcpy(line, p, len);
	line[len] = '\0';
	colon = strchr(line, ':');
	if (!colon)
		return len;
	*colon = '\0';
	v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	e = v + strlen(v);
	while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' ||
			 e[-1] == '\t'))
		*--e = '\0';

	if (strcasecmp(line, "ETag") == 0) {
		free(r->etag);
		r->etag = strdup(v);
	} else if (strcasecmp(line, "ININ-Correlation-Id") == 0) {
		copy_value(r->correlation, sizeof(r->correlation), v);
	} else if (strcasecmp(line, "Retry-After") == 0) {
		copy_value(r->retry_after, sizeof(r->retry_after), v);
	} else if (strcasecmp(line, "X-RateLimit-Remaining") == 0) {
		r->rl_remaining = header_long(v);
	} else if (strcasecmp(line, "X-RateLimit-Reset") == 0 ||
		   strcasecmp(line, "inin-ratelimit-reset") == 0) {
		r->rl_reset = header_long(v);
		/* some servers send the epoch second of the reset */
		if (r->rl_reset > 1000000000L) {
			long left = r->rl_reset - (long)time(NULL);

			r->rl_reset = left > 0 ? left : 0;
		}
	} else if (strcasecmp(line, "inin-ratelimit-allowed") == 0) {
		r->rl_limit = header_long(v);
	} else if (strcasecmp(line, "inin-ratelimit-count") == 0) {
		r->rl_count = header_long(v);
	}
	return len;
}

/* The "code" of an error body ("error" from the token endpoint), its
 * "message", and its "contextId" when no correlation header came. */
static void resp_parse_code(struct api_resp *r)
{
	struct json_object *root, *code, *msg;

	r->code[0] = '\0';
	r->message[0] = '\0';
	if (!r->body.len || r->body.len > 65536 || r->body.p[0] != '{')
		return;
	root = json_tokener_parse(r->body.p);
	if (!root)
		return;
	if ((json_object_object_get_ex(root, "code", &code) ||
	     json_object_object_get_ex(root, "error", &code)) &&
	    json_object_is_type(code, json_type_string))
		copy_value(r->code, sizeof(r->code),
			   json_object_get_string(code));
	if (json_object_object_get_ex(root, "message", &msg) &&
	    json_object_is_type(msg, json_type_string))
		copy_value(r->message, sizeof(r->message),
			   json_object_get_string(msg));
	if (!r->correlation[0] &&
	    json_object_object_get_ex(root, "contextId", &msg) &&
	    json_object_is_type(msg, json_type_string))
		copy_value(r->correlation, sizeof(r->correlation),
			   json_object_get_string(msg));
	json_object_put(root);
}

/* ---- errors ----------------------------------------------------------- */

int api_errno_from_curl(int code, bool *retry)
{
	bool r = false;
	int e;

	switch ((CURLcode)code) {
	case CURLE_OK:
		e = 0;
		break;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_CONNECT:
		/* not ENOTCONN: to users that reads "the mount is dead".
		 * Not retried: the circuit breaker probes instead. */
		e = -EHOSTUNREACH;
		break;
	case CURLE_OPERATION_TIMEDOUT:
		e = -ETIMEDOUT;
		r = true;
		break;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		e = -EIO;
		r = true;
		break;
	case CURLE_OUT_OF_MEMORY:
		e = -ENOMEM;
		break;
	case CURLE_URL_MALFORMAT:
	case CURLE_UNSUPPORTED_PROTOCOL:
		e = -EINVAL;
		break;
	case CURLE_WRITE_ERROR:
		/* our write callback refused: out of memory or too big */
		e = -ENOMEM;
		break;
	default:
		e = -EIO;
		break;
	}
	if (retry)
		*retry = r;
	return e;
}

char *api_escape(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = strlen(s), i, o = 0;
	char *out = malloc(3 * n + 1);

	if (!out)
		return NULL;
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '.' ||
		    c == '_' || c == '~') {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 0xf];
		}
	}
	out[o] = '\0';
	return out;
}

char *api_url(struct api *api, const char *base, const char *id,
	      const char *suffix, const char *item)
{
	char *eid = NULL, *eitem = NULL, *url = NULL;

	if ((id && !(eid = api_escape(id))) ||
	    (item && !(eitem = api_escape(item))))
		goto out;
	if (asprintf(&url, "%s%s%s%s%s%s", api->api_url, base, eid ? "/" : "",
		     eid ? eid : "", suffix ? suffix : "",
		     eitem ? eitem : "") < 0)
		url = NULL;
out:
	free(eitem);
	free(eid);
	return url;
}

/* ---- one attempt ------------------------------------------------------ */

static void wipe_slist(struct curl_slist *l)
{
	for (struct curl_slist *i = l; i; i = i->next)
		explicit_bzero(i->data, strlen(i->data));
	curl_slist_free_all(l);
}

static struct curl_slist *add_header(struct curl_slist *l, bool *oom,
				     const char *name, const char *value)
{
	struct curl_slist *n;
	char *h = NULL;

	if (*oom)
		return l;
	if (asprintf(&h, "%s: %s", name, value) < 0) {
		*oom = true;
		return l;
	}
	n = curl_slist_append(l, h);
	explicit_bzero(h, strlen(h));
	free(h);
	if (!n) {
		*oom = true;
		return l;
	}
	return n;
}

static struct curl_slist *append_line(struct curl_slist *l, bool *oom,
				      const char *line)
{
	struct curl_slist *n;

	if (*oom)
		return l;
	n = curl_slist_append(l, line);
	if (!n)
		*oom = true;
	return n ? n : l;
}

/* Does req->headers hold a header called name? */
static bool has_header(const struct api_req *req, const char *name)
{
	size_t n = strlen(name);

	for (const char *const *x = req->headers; x && *x; x++)
		if (strncasecmp(*x, name, n) == 0 && (*x)[n] == ':')
			return true;
	return false;
}

/* Send once, within deadline (monotonic). Returns the curl code; resp has
 * status, headers and body. */
static int perform(struct api *api, const struct api_req *req,
		   const char *token, struct api_resp *resp, char *errbuf,
		   double deadline)
{
	double left = deadline - api_now();
	struct curl_slist *hdrs = NULL;
	bool oom = false;
	long stall;
	CURLcode cc;
	CURL *h;

	h = pool_get(api->pool);
	if (!h)
		return CURLE_OUT_OF_MEMORY;
	resp_clear_headers(resp);
	resp->body.len = 0;
	resp->body.oom = false;
	resp->too_big = false;
	resp->body_max = req->token_request ? API_TOKEN_BODY_MAX
			 : req->external    ? API_EXTERNAL_BODY_MAX
					    : API_BODY_MAX;
	if (resp->body.p)
		resp->body.p[0] = '\0';
	resp->status = 0;
	errbuf[0] = '\0';

	if (!req->external)
		hdrs = add_header(hdrs, &oom, "Accept", "application/json");
	else
		hdrs = append_line(hdrs, &oom, "Accept:"); /* not curl's */
	if (req->content_type)
		hdrs =
		    add_header(hdrs, &oom, "Content-Type", req->content_type);
	else if (req->external && req->body && !has_header(req, "Content-Type"))
		/* exactly the headers given: not curl's form content type */
		hdrs = append_line(hdrs, &oom, "Content-Type:");
	for (const char *const *x = req->headers; x && *x; x++)
		hdrs = append_line(hdrs, &oom, *x);
	if (req->if_match)
		hdrs = add_header(hdrs, &oom, "If-Match", req->if_match);
	if (req->if_none_match)
		hdrs =
		    add_header(hdrs, &oom, "If-None-Match", req->if_none_match);
	if (token) {
		char *bearer = NULL;

		if (asprintf(&bearer, "Bearer %s", token) < 0) {
			oom = true;
		} else {
			hdrs = add_header(hdrs, &oom, "Authorization", bearer);
			explicit_bzero(bearer, strlen(bearer));
			free(bearer);
		}
	}
	/* no "Expect: 100-continue" round trip before bodies */
	if (!oom) {
		struct curl_slist *n = curl_slist_append(hdrs, "Expect:");

		if (n)
			hdrs = n;
		else
			oom = true;
	}
	if (oom) {
		wipe_slist(hdrs);
		pool_put(api->pool, h);
		return CURLE_OUT_OF_MEMORY;
	}

	stall = (long)ceil(api->stall_timeout_s);
	if (stall < 1)
		stall = 1;
	curl_easy_setopt(h, CURLOPT_URL, req->url);
	curl_easy_setopt(h, CURLOPT_VERBOSE, 0L); /* headers hold secrets */
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_SHARE, api->pool->share);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)(api->connect_timeout_s * 1000));
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, stall);
	/* a trickle beats any low-speed limit: the attempt as a whole must
	 * end within the retry budget */
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
			 (long)(left > 1 ? left * 1000 : 1000));
	curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(h, CURLOPT_XFERINFODATA,
			 req->token_request ? (void *)h : NULL);
	if (!req->external)
		curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "");
	curl_easy_setopt(h, CURLOPT_USERAGENT, "dtfs/" DTFS_VERSION);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, resp);
	if (req->token_request) {
		curl_easy_setopt(h, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
		curl_easy_setopt(h, CURLOPT_USERNAME, api->client_id);
		curl_easy_setopt(h, CURLOPT_PASSWORD, api->client_secret);
	}
	if (strcmp(req->method, "GET") != 0) {
		if (strcmp(req->method, "POST") != 0)
			curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req->method);
		if (req->body) {
			curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
					 (curl_off_t)req->body_len);
			curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->body);
		} else if (strcmp(req->method, "POST") == 0) {
			curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
					 (curl_off_t)0);
			curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
		}
	}

	resp->sent_at = api_now();
	cc = curl_easy_perform(h);
	if (cc == CURLE_OK)
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
	/* the password and header list must not outlive this call */
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(h, CURLOPT_PASSWORD, "");
	wipe_slist(hdrs);
	pool_put(api->pool, h);
	return (int)cc;
}

/* ---- table names in messages ------------------------------------------- */

void api_http_learn_names(struct api *api, const struct api_table_list *list)
{
	struct api_http_pool *pool = api->pool;
	struct api_table_list copy = { 0 };
	size_t i;

	copy.tables = calloc(list->count + 1, sizeof(*copy.tables));
	if (!copy.tables)
		return; /* messages show ids */
	for (i = 0; i < list->count; i++) {
		copy.tables[i].id = strdup(list->tables[i].id);
		copy.tables[i].name = strdup(list->tables[i].name);
		copy.count = i + 1;
		if (!copy.tables[i].id || !copy.tables[i].name) {
			api_table_list_release(&copy);
			return;
		}
	}
	pthread_mutex_lock(&pool->names_mu);
	api_table_list_release(&pool->names);
	pool->names = copy;
	pthread_mutex_unlock(&pool->names_mu);
}

const char *api_table_name(struct api *api, const char *subject, char *buf,
			   size_t size)
{
	struct api_http_pool *pool = api->pool;
	const char *out = subject;
	size_t i;

	if (!subject)
		return NULL;
	pthread_mutex_lock(&pool->names_mu);
	for (i = 0; i < pool->names.count; i++) {
		if (!strcmp(pool->names.tables[i].id, subject)) {
			snprintf(buf, size, "%s", pool->names.tables[i].name);
			out = buf;
			break;
		}
	}
	pthread_mutex_unlock(&pool->names_mu);
	return out;
}

/* ---- the request log --------------------------------------------------- */

/* At debug level, one line per request sent: method, path, status, time,
 * correlation id. Never headers or bodies (they hold the secret, tokens
 * and rows), nor the query of an upload or download URL: its signature is
 * a credential. */
static void log_request(const struct api_req *req,
			const struct api_resp *resp, int cc, double secs)
{
	const char *path = strstr(req->url, "://");
	int len;

	if (log_get_level() < LOG_DEBUG)
		return;
	path = path ? strchr(path + 3, '/') : NULL;
	if (!path)
		path = "/";
	len = (int)(req->external ? strcspn(path, "?#") : strlen(path));
	if (cc == CURLE_OK)
		log_debug("http %s %.*s -> %ld in %.1f ms (correlation %s)",
			  req->method, len, path, resp->status, secs * 1000,
			  resp->correlation[0] ? resp->correlation : "none");
	else
		log_debug("http %s %.*s -> no answer in %.1f ms: %s",
			  req->method, len, path, secs * 1000,
			  curl_easy_strerror((CURLcode)cc));
}

/* ---- the circuit breaker ---------------------------------------------- */

/*
 * Once a connection is refused or the host is not found, the API is known
 * down: every request fails at once with -EHOSTUNREACH instead of each
 * paying its retries, except one probe at a time, at most every
 * CB_PROBE_INTERVAL_MS. Any answer from the server (even an error status)
 * closes the breaker. Callers that hold a whole cached version serve it
 * (fs/engine.c), so a cached table stays readable at once. Upload and
 * download hosts (req->external) are not the API: they neither open the
 * breaker nor are refused by it.
 */
#define CB_PROBE_INTERVAL_MS 1000
/* a refusal is logged as an error at most this often (the rest at debug
 * level, counted): a script stat-ing a thousand files while the API is
 * down gets a few lines, not a thousand */
#define CB_LOG_INTERVAL_MS 10000

static long long now_ms(void)
{
	return (long long)(api_now() * 1000) + 1; /* never 0: 0 is closed */
}

/* "scheme://host:port" of a URL, for messages. */
static void url_host(const char *url, char *buf, size_t size)
{
	const char *p = strstr(url, "://"), *end;

	p = p ? p + 3 : url;
	end = strchr(p, '/');
	snprintf(buf, size, "%.*s", (int)(end ? (size_t)(end - url)
					      : strlen(url)), url);
}

/* May this request be sent? Returns 0 (*probe: it is the probe) or
 * -EHOSTUNREACH, logged. */
static int breaker_enter(struct api_http_pool *pool,
			 const struct api_req *req, bool *probe)
{
	long long open = atomic_load(&pool->cb_open_ms), now, logged;
	unsigned long refused;
	bool idle = false;
	char host[256];
	int level;

	*probe = false;
	if (!open || req->external)
		return 0;
	now = now_ms();
	if (now - open >= CB_PROBE_INTERVAL_MS &&
	    atomic_compare_exchange_strong(&pool->cb_probing, &idle, true)) {
		*probe = true;
		log_debug("%s: probing whether the API is back", req->what);
		return 0;
	}
	url_host(req->url, host, sizeof(host));
	refused = atomic_fetch_add(&pool->cb_refused, 1);
	logged = atomic_load(&pool->cb_logged_ms);
	level = LOG_DEBUG;
	if (now - logged >= CB_LOG_INTERVAL_MS &&
	    atomic_compare_exchange_strong(&pool->cb_logged_ms, &logged, now))
		level = LOG_ERR;
	log_msg(level, "%s%s%s%s failed: %s cannot be reached (it refused a "
		"connection %.1f s ago; dtfs tries again every %d s; %lu "
		"requests failed at once so far): check the network, region= "
		"or api_url=",
		req->what, req->subject ? " '" : "",
		req->subject ? req->subject : "", req->subject ? "'" : "", host,
		(double)(now - open) / 1000, CB_PROBE_INTERVAL_MS / 1000,
		refused + 1);
	return -EHOSTUNREACH;
}

/* After an attempt: down (no connection) opens the breaker, anything
 * else closes it. */
static void breaker_leave(struct api_http_pool *pool,
			  const struct api_req *req, bool probe, bool down)
{
	char host[256];

	if (req->external)
		return;
	if (down) {
		if (!atomic_exchange(&pool->cb_open_ms, now_ms())) {
			url_host(req->url, host, sizeof(host));
			log_warn("%s cannot be reached: requests fail at once "
				 "until it answers again", host);
		}
	} else if (atomic_load(&pool->cb_open_ms) &&
		   atomic_exchange(&pool->cb_open_ms, 0)) {
		url_host(req->url, host, sizeof(host));
		log_notice("%s answers again (%lu requests failed at once "
			   "while it did not)", host,
			   atomic_exchange(&pool->cb_refused, 0));
		atomic_store(&pool->cb_logged_ms, 0);
	}
	if (probe)
		atomic_store(&pool->cb_probing, false);
}

/* ---- the retry loop --------------------------------------------------- */

static void log_http_failure(int level, const struct api_req *req,
			     const struct api_resp *resp, const char *tail)
{
	char host[256] = " from ";
	const char *hint = "";

	if (req->token_request &&
	    (resp->status == 401 || resp->status == 400) &&
	    (!strcmp(resp->code, "invalid_client") || !resp->code[0]))
		hint = ": the client id or secret is wrong";
	else if (resp->status == 403)
		hint = ": permission or scope missing?";
	/* errors name the host: which region or login host answered */
	if (level <= LOG_ERR)
		url_host(req->url, host + 6, sizeof(host) - 6);
	log_msg(level, "%s%s%s%s failed: HTTP %ld%s%s%s%s%s%s%s%s%s%s%s",
		req->what, req->subject ? " '" : "",
		req->subject ? req->subject : "", req->subject ? "'" : "",
		resp->status, resp->code[0] ? " " : "", resp->code,
		resp->message[0] ? ": \"" : "", resp->message,
		resp->message[0] ? "\"" : "",
		resp->correlation[0] ? " (correlation " : "", resp->correlation,
		resp->correlation[0] ? ")" : "", level <= LOG_ERR ? host : "",
		hint, tail);
}

static bool status_retryable(long status)
{
	return status == 408 || status == 429 ||
	       (status >= 500 && status <= 599);
}

int api_http(struct api *api, const struct api_req *req, struct api_resp *resp)
{
	struct api_req named = *req;
	char name[512];
	double start = api_now(), deadline = start + api->retry_budget_s;
	char errbuf[CURL_ERROR_SIZE];
	unsigned nback = 0;
	uint64_t gen = 0, fresh_gen = 0;
	bool reauth_pending = false, have_fresh = false, ambiguous = false;
	char *token = NULL;
	int rc = -EIO;

	/* every message below names the table by name */
	named.subject = api_table_name(api, req->subject, name, sizeof(name));
	req = &named;
	resp->attempts = 0;
	resp->throttled = 0;
	/* token bodies hold secrets: they get fresh memory, wiped and freed */
	if (!req->token_request && !resp->pool && !resp->body.p &&
	    !resp->doc.nodes)
		spare_take(api->pool, resp);
	for (;;) {
		double now = api_now(), delay, wait, t0;
		bool retry = false, net = false, probe;
		char tail[128];
		int cc;

		if (!req->token_request && !req->external) {
			wait = pacer_reserve(&api->pacer, now, deadline);
			if (wait > 0) {
				if (now + wait > deadline) {
					pacer_update(&api->pacer, now, -1, -1);
					log_err(
					    "%s%s%s%s failed: the rate "
					    "limit wait (%.1f s) exceeds "
					    "the retry budget",
					    req->what, req->subject ? " '" : "",
					    req->subject ? req->subject : "",
					    req->subject ? "'" : "", wait);
					rc = -EIO;
					goto out;
				}
				log_debug("%s: pacing, waiting %.2f s",
					  req->what, wait);
				api_sleep(wait);
			}
			rc = token_get(api, &token, &gen);
			if (rc) {
				pacer_update(&api->pacer, api_now(), -1, -1);
				goto out; /* logged by the token fetch */
			}
			if (reauth_pending) {
				fresh_gen = gen;
				have_fresh = true;
				reauth_pending = false;
			}
		}

		rc = breaker_enter(api->pool, req, &probe);
		if (rc) {
			if (!req->token_request)
				pacer_update(&api->pacer, api_now(), -1, -1);
			goto out;
		}
		t0 = api_now();
		cc = perform(api, req, token, resp, errbuf, deadline);
		breaker_leave(api->pool, req, probe,
			      api_errno_from_curl(cc, NULL) == -EHOSTUNREACH);
		log_request(req, resp, cc, api_now() - t0);
		if (token) {
			explicit_bzero(token, strlen(token));
			free(token);
			token = NULL;
		}
		atomic_fetch_add(&api->n_requests, 1);
		if (resp->attempts++)
			atomic_fetch_add(&api->n_retries, 1);
		now = api_now();

		if (cc != CURLE_OK) {
			if (!req->token_request && !req->external)
				pacer_update(&api->pacer, now, -1, -1);
			rc = api_errno_from_curl(cc, &retry);
			net = true;
			if (rc != -EHOSTUNREACH)
				ambiguous = true; /* it may have arrived */
			if (cc == CURLE_ABORTED_BY_CALLBACK) {
				log_info("%s%s%s%s: interrupted",
					 req->what, req->subject ? " '" : "",
					 req->subject ? req->subject : "",
					 req->subject ? "'" : "");
				rc = -EINTR;
				goto out;
			}
			if (resp->too_big) {
				log_err("%s%s%s%s failed: the response body is "
					"larger than %zu bytes",
					req->what, req->subject ? " '" : "",
					req->subject ? req->subject : "",
					req->subject ? "'" : "",
					resp->body_max);
				rc = -EPROTO;
				goto out;
			}
			delay = api_backoff_delay(nback++, API_BACKOFF_BASE_S,
						  API_BACKOFF_CAP_S);
		} else {
			if (resp->rl_remaining < 0 && resp->rl_limit >= 0 &&
			    resp->rl_count >= 0)
				resp->rl_remaining =
				    resp->rl_limit > resp->rl_count
					? resp->rl_limit - resp->rl_count
					: 0;
			if (!req->token_request && !req->external)
				pacer_update(&api->pacer, now,
					     resp->rl_remaining,
					     resp->rl_reset);
			rc = api_errno_from_http(resp->status);
			if (req->redirect_ok && resp->status >= 300 &&
			    resp->status <= 399 && resp->status != 304 &&
			    resp->location)
				rc = 0;
			if (!rc)
				goto out;
			if (rc == -ENOENT && req->gone_ok && ambiguous) {
				/* an earlier attempt did it, unanswered */
				log_info("%s '%s': HTTP 404 after an attempt "
					 "without answer: already done",
					 req->what,
					 req->subject ? req->subject : "");
				rc = 0;
				goto out;
			}
			if (resp->status >= 500 || resp->status == 408)
				ambiguous = true;
			resp_parse_code(resp);
			if (resp->status >= 500)
				atomic_fetch_add(&api->n_server_errors, 1);
			if (resp->status == 401) {
				atomic_fetch_add(&api->n_unauthorized, 1);
				if (!req->token_request && !req->external &&
				    !(have_fresh && gen == fresh_gen) &&
				    resp->attempts < api->max_attempts) {
					log_info(
					    "%s%s%s%s: HTTP 401, getting "
					    "a new token",
					    req->what, req->subject ? " '" : "",
					    req->subject ? req->subject : "",
					    req->subject ? "'" : "");
					token_invalidate(api, gen);
					reauth_pending = true;
					continue;
				}
				rc = -EACCES;
			}
			retry = status_retryable(resp->status);
			if (resp->status == 429) {
				double ra =
				    api_parse_retry_after(resp->retry_after);

				resp->throttled++;
				atomic_fetch_add(&api->n_throttled, 1);
				if (ra < 0)
					ra = api_backoff_delay(
					    nback++, 1.0, API_BACKOFF_CAP_S);
				if (!req->token_request && !req->external)
					pacer_pause(&api->pacer, now, ra);
				delay = ra + api_random();
				rc = -EIO;
			} else {
				double base = API_BACKOFF_BASE_S;

				if (pacer_low(&api->pacer, now))
					base *= 4; /* widen when budget low */
				delay = api_backoff_delay(nback++, base,
							  API_BACKOFF_CAP_S);
			}
		}

		if (!retry)
			break;
		if (resp->attempts >= api->max_attempts ||
		    now + delay > deadline) {
			snprintf(tail, sizeof(tail),
				 " (gave up after %u "
				 "attempt%s in %.1f s; retries= and "
				 "retry_budget= allow more)",
				 resp->attempts, resp->attempts == 1 ? "" : "s",
				 now - start);
			if (net)
				log_err("%s%s%s%s failed: %s%s", req->what,
					req->subject ? " '" : "",
					req->subject ? req->subject : "",
					req->subject ? "'" : "",
					errbuf[0] ? errbuf
						  : curl_easy_strerror(cc),
					tail);
			else
				log_http_failure(LOG_ERR, req, resp, tail);
			goto out;
		}
		snprintf(tail, sizeof(tail), ", retry %u of %u in %.2f s",
			 resp->attempts, api->max_attempts - 1, delay);
		if (net)
			log_info("%s%s%s%s: %s%s", req->what,
				 req->subject ? " '" : "",
				 req->subject ? req->subject : "",
				 req->subject ? "'" : "",
				 errbuf[0] ? errbuf : curl_easy_strerror(cc),
				 tail);
		else if (log_get_level() >= LOG_INFO)
			log_http_failure(LOG_INFO, req, resp, tail);
		if (req->token_request) {
			api_sleep(delay);
		} else if (sleep_unless_interrupted(delay)) {
			rc = -EINTR;
			goto out;
		}
	}

	/* a final answer that is not a retryable one */
	if (resp->status == 0)
		log_err(
		    "%s%s%s%s failed: %s%s", req->what, req->subject ? " '" : "",
		    req->subject ? req->subject : "", req->subject ? "'" : "",
		    errbuf[0] ? errbuf : strerror(-rc),
		    rc == -EHOSTUNREACH ? ": check the network, region= or "
					  "api_url=" : "");
	else
		log_http_failure(resp->status == req->quiet_status ? LOG_DEBUG
								   : LOG_ERR,
				 req, resp, "");
out:
	if (token) {
		explicit_bzero(token, strlen(token));
		free(token);
	}
	return rc;
}
