#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

const char fs_config_help[] =
	"dtfs options:\n"
	"    -o region=NAME           Genesys Cloud region (us-east-1, eu-west-1, ...)\n"
	"    -o api_url=URL           API base URL (overrides region)\n"
	"    -o api=flows|cursor      API dialect: flows is Genesys Cloud's\n"
	"                             /api/v2/flows/datatables, cursor the guide's\n"
	"                             API; default flows, except that an api_url\n"
	"                             that is not a Genesys Cloud host (such as\n"
	"                             dtfs-emu) defaults to cursor\n"
	"    -o login_url=URL         login base URL (default: api_url)\n"
	"    -o credentials=FILE      client_id=/client_secret= file, mode 0600\n"
	"    -o cache_dir=DIR         cache directory (default $XDG_CACHE_HOME/dtfs)\n"
	"    -o cache_size=N[KMG]     most page bytes kept in the cache (default 4G)\n"
	"    -o page_size=N           rows per page fetched (default: the largest\n"
	"                             the API accepts, 1000 cursor, 500 flows)\n"
	"    -o page_workers=N        pages fetched in parallel, flows (default 4)\n"
	"    -o rate=N/S              at most N requests per S seconds, shared by\n"
	"                             the processes of one client id (default\n"
	"                             300/60 flows; cursor: the server's headers)\n"
	"    -o job_rows=N|auto       changed rows from which a flows import goes\n"
	"                             as one CSV job, not row by row (default auto)\n"
	"    -o max_rows=N            rows a table may hold, 0 = no limit (default\n"
	"                             5000 flows, 0 cursor); rows past it are\n"
	"                             quarantined\n"
	"    -o chunk_rows=N          rows per upsert chunk (default 250)\n"
	"    -o upload_workers=N      upsert chunks or rows in flight (default 4)\n"
	"    -o revalidate=SECONDS    revalidate a table at most this often (default 5)\n"
	"    -o list_ttl=SECONDS      keep a table listing this long (default 30)\n"
	"    -o max_line=N[KMG]       longest import line accepted (default 1M)\n"
	"    -o retries=N             attempts per request (default 8)\n"
	"    -o retry_budget=SECONDS  time per request, retries included (default 120)\n"
	"    -o ro                    read-only: refuse every write with EROFS\n"
	"    -o allow_delete[=force]  rmdir of a table deletes it in the API\n"
	"                             (force: flows ?force=true, even if in use)\n"
	"    -o replace               a file written whole onto rows.jsonl (O_TRUNC,\n"
	"                             or renamed onto it) makes the table equal to\n"
	"                             it: rows it lacks are deleted (default: upsert)\n"
	"    -o lazy_size             st_size of an uncached rows.jsonl is 0, not\n"
	"                             fetched (cheap stat; tar then copies 0 bytes)\n"
	"    -o log_file=FILE         append the log to FILE (default: stderr,\n"
	"                             syslog when daemonized)\n"
	"    -o log_level=LEVEL       error, warning, notice, info or debug (debug\n"
	"                             logs every HTTP request)\n"
	"credentials come from -o credentials=FILE or GENESYSCLOUD_OAUTHCLIENT_ID and\n"
	"GENESYSCLOUD_OAUTHCLIENT_SECRET; the region also from GENESYSCLOUD_REGION.\n";

static int set_str(char **dst, const char *value)
{
	char *s = strdup(value);

	if (!s)
		return -ENOMEM;
	free(*dst);
	*dst = s;
	return 0;
}

static int parse_uint(const char *key, const char *value, unsigned long min,
		      unsigned long max, unsigned *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(value, &end, 10);
	if (errno || end == value || *end || value[0] == '-' || v < min ||
	    v > max) {
		log_err("option '%s': '%s' is not a whole number in %lu..%lu",
			key, value, min, max);
		return -EINVAL;
	}
	*out = (unsigned)v;
	return 0;
}

static int parse_size(const char *key, const char *value, uint64_t *out)
{
	char *end;
	unsigned long long v;
	uint64_t mul = 1;

	errno = 0;
	v = strtoull(value, &end, 10);
	if (errno || end == value || value[0] == '-')
		goto bad;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K':
		mul = 1ULL << 10;
		end++;
		break;
	case 'm': case 'M':
		mul = 1ULL << 20;
		end++;
		break;
	case 'g': case 'G':
		mul = 1ULL << 30;
		end++;
		break;
	default:
		goto bad;
	}
	if (*end || v > UINT64_MAX / mul)
		goto bad;
	*out = v * mul;
	return 0;
bad:
	log_err("option '%s': '%s' is not a size (N, NK, NM or NG)", key,
		value);
	return -EINVAL;
}

int fs_config_init(struct fs_config *cfg)
{
	const char *xdg = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");
	char buf[PATH_MAX];
	int n;

	memset(cfg, 0, sizeof(*cfg));
	cfg->cache_size = 4ULL << 30;
	cfg->page_size = 0;
	cfg->page_workers = 4;
	cfg->job_rows = FS_CONFIG_AUTO;
	cfg->chunk_rows = 250;
	cfg->upload_workers = 4;
	cfg->revalidate = 5;
	cfg->list_ttl = 30;
	cfg->max_line = 1U << 20;
	cfg->retries = 8;
	cfg->retry_budget = 120;
	cfg->log_level = -1;
	if (xdg && xdg[0] == '/')
		n = snprintf(buf, sizeof(buf), "%s/dtfs", xdg);
	else if (home && home[0] == '/')
		n = snprintf(buf, sizeof(buf), "%s/.cache/dtfs", home);
	else
		n = snprintf(buf, sizeof(buf), "/tmp/dtfs-cache-%u",
			     (unsigned)getuid());
	if (n < 0 || (size_t)n >= sizeof(buf))
		return -ENAMETOOLONG;
	if (set_str(&cfg->cache_dir, buf)) {
		fs_config_release(cfg);
		return -ENOMEM;
	}
	return 0;
}

void fs_config_release(struct fs_config *cfg)
{
	free(cfg->api);
	free(cfg->region);
	free(cfg->api_url);
	free(cfg->login_url);
	free(cfg->credentials);
	free(cfg->cache_dir);
	free(cfg->log_file);
	memset(cfg, 0, sizeof(*cfg));
}

/* ---- dialect, pacing and import routes --------------------------------- */

/* "N/S": N requests per S seconds (both whole, N ≥ 1); "0" or "none": no
 * budget of our own. */
static int parse_rate(const char *value, unsigned *n, unsigned *window)
{
	char *end;
	unsigned long a, b;

	if (!strcmp(value, "0") || !strcmp(value, "none")) {
		*n = 0;
		*window = 0;
		return 0;
	}
	errno = 0;
	a = strtoul(value, &end, 10);
	if (errno || end == value || *end != '/' || value[0] == '-' ||
	    a < 1 || a > 1000000)
		goto bad;
	value = end + 1;
	b = strtoul(value, &end, 10);
	if (errno || end == value || *end || value[0] == '-' || b < 1 ||
	    b > 86400)
		goto bad;
	*n = (unsigned)a;
	*window = (unsigned)b;
	return 0;
bad:
	log_err("option 'rate': '%s' is not N/S (N requests per S seconds, "
		"such as 300/60) or none", value);
	return -EINVAL;
}

/* The words of the dialect block; 1 when `key` is none of them. */
static int set_dialect_word(struct fs_config *cfg, const char *key,
			    const char *v)
{
	int rc;

	if (!strcmp(key, "page_workers"))
		return parse_uint(key, v, 1, 32, &cfg->page_workers);
	if (!strcmp(key, "rate")) {
		rc = parse_rate(v, &cfg->rate_requests, &cfg->rate_window);
		if (!rc)
			cfg->rate_set = true;
		return rc;
	}
	if (!strcmp(key, "job_rows")) {
		if (!strcmp(v, "auto")) {
			cfg->job_rows = FS_CONFIG_AUTO;
			return 0;
		}
		return parse_uint(key, v, 1, 1000000, &cfg->job_rows);
	}
	if (!strcmp(key, "max_rows")) {
		rc = parse_uint(key, v, 0, 100000000, &cfg->max_rows);
		if (!rc)
			cfg->max_rows_set = true;
		return rc;
	}
	return 1;
}

/* Whether url's host is a Genesys Cloud API host (api.mypurecloud.com,
 * api.<x>.pure.cloud, …): the production API lives there. */
static bool genesys_url(const char *url)
{
	static const char *const domains[] = {
		".mypurecloud.com", ".mypurecloud.ie", ".mypurecloud.de",
		".mypurecloud.jp", ".mypurecloud.com.au", ".pure.cloud",
	};
	const char *h = strstr(url, "://");
	char host[256];
	size_t n, i, d;

	h = h ? h + 3 : url;
	n = strcspn(h, ":/?#");
	if (n == 0 || n >= sizeof(host))
		return false;
	memcpy(host, h, n);
	host[n] = '\0';
	for (i = 0; i < sizeof(domains) / sizeof(domains[0]); i++) {
		d = strlen(domains[i]);
		if (n > d && !strcasecmp(host + n - d, domains[i]))
			return true;
	}
	return false;
}

int fs_config_resolve(struct fs_config *cfg)
{
	const char *env = getenv("GENESYSCLOUD_REGION");
	bool flows;
	int rc;

	if (!cfg->api_url && !cfg->region && env && *env) {
		rc = set_str(&cfg->region, env);
		if (rc)
			return rc;
	}
	if (!cfg->api_url && (!cfg->region || !cfg->region[0])) {
		log_err("no region: give -o region=NAME (us-east-1, eu-west-1, "
			"eu-central-1, ap-southeast-2, ... : the region of your "
			"Genesys Cloud org) or set GENESYSCLOUD_REGION, or give "
			"-o api_url=URL");
		return -EINVAL;
	}
	if (!cfg->api) {
		/* a region, or a Genesys host, is the production API; any
		 * other URL is a server of the guide's API (dtfs-emu) */
		flows = !cfg->api_url || genesys_url(cfg->api_url);
		rc = set_str(&cfg->api, flows ? "flows" : "cursor");
		if (rc)
			return rc;
	}
	flows = !strcmp(cfg->api, "flows");
	if (!cfg->rate_set) {
		cfg->rate_requests = flows ? 300 : 0;
		cfg->rate_window = flows ? 60 : 0;
	}
	if (!cfg->max_rows_set)
		cfg->max_rows = flows ? 5000 : 0;
	return 0;
}

/* ---- the one parser ------------------------------------------------------ */

int fs_config_set(struct fs_config *cfg, const char *word)
{
	const char *eq = strchr(word, '=');
	size_t klen = eq ? (size_t)(eq - word) : strlen(word);
	const char *v = eq ? eq + 1 : NULL;
	char key[32];

	if (klen >= sizeof(key))
		return 1;
	memcpy(key, word, klen);
	key[klen] = '\0';

	if (!strcmp(key, "ro") && !v) {
		cfg->ro = true;
		return 0;
	}
	if (!strcmp(key, "allow_delete") && (!v || !strcmp(v, "force"))) {
		cfg->allow_delete = true;
		cfg->force_delete = v != NULL;
		return 0;
	}
	if (!strcmp(key, "replace") && !v) {
		cfg->replace = true;
		return 0;
	}
	if (!strcmp(key, "lazy_size") && !v) {
		cfg->lazy_size = true;
		return 0;
	}
	if (!v)
		return 1;

	if (!strcmp(key, "api")) {
		if (strcmp(v, "cursor") && strcmp(v, "flows")) {
			log_err("option 'api': '%s' is not cursor or flows", v);
			return -EINVAL;
		}
		return set_str(&cfg->api, v);
	}
	if (!strcmp(key, "region"))
		return set_str(&cfg->region, v);
	if (!strcmp(key, "api_url"))
		return set_str(&cfg->api_url, v);
	if (!strcmp(key, "login_url"))
		return set_str(&cfg->login_url, v);
	if (!strcmp(key, "credentials"))
		return set_str(&cfg->credentials, v);
	if (!strcmp(key, "cache_dir"))
		return set_str(&cfg->cache_dir, v);
	if (!strcmp(key, "cache_size"))
		return parse_size(key, v, &cfg->cache_size);
	if (!strcmp(key, "page_size"))
		return parse_uint(key, v, 1, 1000, &cfg->page_size);
	if (!strcmp(key, "chunk_rows"))
		return parse_uint(key, v, 1, 1000, &cfg->chunk_rows);
	if (!strcmp(key, "upload_workers"))
		return parse_uint(key, v, 1, 32, &cfg->upload_workers);
	if (!strcmp(key, "revalidate"))
		return parse_uint(key, v, 0, 86400 * 365, &cfg->revalidate);
	if (!strcmp(key, "list_ttl"))
		return parse_uint(key, v, 0, 86400 * 365, &cfg->list_ttl);
	if (!strcmp(key, "max_line")) {
		/* a size, as cache_size: --help writes the default as 1M */
		uint64_t n;
		int rc = parse_size(key, v, &n);

		if (rc)
			return rc;
		if (n < 64 || n > 64U << 20) {
			log_err("option 'max_line': '%s' is not in 64..64M", v);
			return -EINVAL;
		}
		cfg->max_line = (unsigned)n;
		return 0;
	}
	if (!strcmp(key, "retries"))
		return parse_uint(key, v, 1, 100, &cfg->retries);
	if (!strcmp(key, "retry_budget"))
		return parse_uint(key, v, 1, 86400, &cfg->retry_budget);

	/* ---- logging ---- */
	if (!strcmp(key, "log_file")) {
		if (!*v) {
			log_err("option 'log_file': empty file name");
			return -EINVAL;
		}
		return set_str(&cfg->log_file, v);
	}
	if (!strcmp(key, "log_level")) {
		int level = log_level_parse(v);

		if (level < 0) {
			log_err("option 'log_level': '%s' is not error, "
				"warning, notice, info or debug", v);
			return -EINVAL;
		}
		cfg->log_level = level;
		return 0;
	}
	return set_dialect_word(cfg, key, v);
}

int fs_config_apply_log(const struct fs_config *cfg, const char *ident)
{
	int rc;

	if (cfg->log_level >= 0)
		log_init(ident, cfg->log_level);
	if (cfg->log_file) {
		rc = log_use_file(cfg->log_file);
		if (rc) {
			log_err("cannot open the log file '%s': %s",
				cfg->log_file, strerror(-rc));
			return -EINVAL;
		}
	}
	return 0;
}

int fs_config_set_list(struct fs_config *cfg, const char *list)
{
	char *copy = strdup(list), *word, *next;
	int rc = 0;

	if (!copy)
		return -ENOMEM;
	for (word = copy; word && !rc; word = next) {
		next = strchr(word, ',');
		if (next)
			*next++ = '\0';
		if (!*word)
			continue;
		rc = fs_config_set(cfg, word);
		if (rc == 1) {
			log_err("unknown option '%s'", word);
			rc = -EINVAL;
		}
	}
	free(copy);
	return rc;
}

const char *fs_config_advice(int rc)
{
	switch (rc) {
	case -EHOSTUNREACH:
		return "the API cannot be reached: check the network and "
		       "region= or api_url=";
	case -ETIMEDOUT:
	case -EIO:
		return "the API kept failing: try again later (retries= and "
		       "retry_budget= give it longer)";
	case -EACCES:
		return "access refused: check the client id and secret "
		       "(credentials= or GENESYSCLOUD_OAUTHCLIENT_ID and "
		       "_SECRET) and the client's roles";
	case -ESTALE:
		return "the table changed during the export: run it again";
	default:
		return NULL;
	}
}
