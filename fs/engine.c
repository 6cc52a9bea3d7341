#include "engine.h"
#include "engine_i.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "dirs.h"
#include "hash.h"
#include "log.h"
#include "names.h"

static int64_t now_s(void)
{
	return (int64_t)time(NULL);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* ---- lifecycle ------------------------------------------------------- */

static void *prefetch_main(void *arg);

/* The client id the API will use: the credentials file's client_id= line,
 * else GENESYSCLOUD_OAUTHCLIENT_ID (api/ reports what is missing). */
static char *client_id(const struct fs_config *cfg)
{
	const char *env = getenv("GENESYSCLOUD_OAUTHCLIENT_ID");
	char line[1024], *id = NULL;
	FILE *f;

	if (!cfg->credentials)
		return env && *env ? strdup(env) : NULL;
	f = fopen(cfg->credentials, "re");
	if (!f)
		return NULL;
	while (!id && fgets(line, sizeof(line), f)) {
		const char *v = line + strspn(line, " \t");

		if (strncmp(v, "client_id", 9))
			continue;
		v += 9 + strspn(v + 9, " \t");
		if (*v++ != '=')
			continue;
		v += strspn(v, " \t");
		id = strndup(v, strcspn(v, " \t\r\n"));
	}
	fclose(f);
	return id;
}

/* <cache_dir>/budget-<digest of the API URL or region and client id>:
 * the processes of one client id on this host share one request budget
 * (api/ keeps it in that file). NULL when the id is unknown. */
static char *budget_path(const struct fs_config *cfg)
{
	char *id = client_id(cfg), hex[17], *p;
	const char *where = cfg->api_url ? cfg->api_url : cfg->region;
	uint64_t h = HASH_INIT;
	size_t n;
	int rc;

	if (!id)
		return NULL;
	/* the file lives beside the cache, which may not exist yet */
	rc = dirs_make(cfg->cache_dir);
	if (rc) {
		log_warn("cannot create '%s' (%s): the request budget is this "
			 "process's alone", cfg->cache_dir, strerror(-rc));
		free(id);
		return NULL;
	}
	h = hash_add(h, where, strlen(where) + 1);
	h = hash_add(h, id, strlen(id));
	free(id);
	hash_hex(h, hex);
	n = strlen(cfg->cache_dir) + sizeof("/budget-") + sizeof(hex);
	p = malloc(n);
	if (p)
		snprintf(p, n, "%s/budget-%s", cfg->cache_dir, hex);
	return p;
}

int fs_engine_new(const struct fs_config *cfg, struct fs_engine **out)
{
	struct api_config ac = { 0 };
	struct fs_engine *eng;
	char *budget = NULL;
	int rc;

	*out = NULL;
	eng = calloc(1, sizeof(*eng));
	if (!eng)
		return -ENOMEM;
	pthread_mutex_init(&eng->lock, NULL);
	pthread_mutex_init(&eng->list_lock, NULL);
	pthread_mutex_init(&eng->pf_lock, NULL);
	pthread_cond_init(&eng->pf_cond, NULL);

	eng->cfg = *cfg;
	eng->cfg.api = dup_or_null(cfg->api);
	eng->cfg.region = dup_or_null(cfg->region);
	eng->cfg.api_url = dup_or_null(cfg->api_url);
	eng->cfg.login_url = dup_or_null(cfg->login_url);
	eng->cfg.credentials = dup_or_null(cfg->credentials);
	eng->cfg.cache_dir = dup_or_null(cfg->cache_dir);
	eng->cfg.log_file = dup_or_null(cfg->log_file);
	if ((cfg->api && !eng->cfg.api) ||
	    (cfg->cache_dir && !eng->cfg.cache_dir)) {
		rc = -ENOMEM;
		goto fail;
	}

	rc = fs_config_resolve(&eng->cfg);
	if (rc)
		goto fail;
	cfg = &eng->cfg;
	if (cfg->rate_requests)
		budget = budget_path(cfg);

	ac.dialect = cfg->api;
	ac.region = cfg->region;
	ac.api_url = cfg->api_url;
	ac.login_url = cfg->login_url;
	ac.credentials = cfg->credentials;
	ac.max_attempts = cfg->retries;
	ac.retry_budget_s = cfg->retry_budget;
	ac.rate_requests = cfg->rate_requests;
	ac.rate_window_s = cfg->rate_window;
	ac.budget_file = budget;
	log_info("api dialect %s, budget %u requests per %u s%s", cfg->api,
		 cfg->rate_requests, cfg->rate_window,
		 budget ? " shared through the cache directory" : "");
	rc = api_new(&ac, &eng->api);
	free(budget);
	if (rc)
		goto fail;
	api_get_caps(eng->api, &eng->caps);
	rc = fs_import_init(eng);
	if (rc)
		goto fail;
	*out = eng;
	return 0;
fail:
	fs_engine_free(eng);
	return rc;
}

/*
 * Every page of rows is a few allocations of 100-300 KiB (the response,
 * its parse, the JSONL), made on the fetch-ahead thread and freed on the
 * reader's. With glibc's defaults each free trims the arena's top and the
 * next page faults the same memory in again: 60k page faults and 15% of
 * the CPU of a 1M-row export (docs/performance.md). Keep up to 64 MiB of
 * freed memory and serve such blocks from the heap, not from mmap.
 */
static void engine_tune_malloc(void)
{
	if (!mallopt(M_MMAP_THRESHOLD, 32 << 20) ||
	    !mallopt(M_TRIM_THRESHOLD, 64 << 20))
		log_debug("malloc thresholds not set: pages fault in anew");
}

int fs_engine_start(struct fs_engine *eng)
{
	int rc;

	engine_tune_malloc();
	rc = cache_open(eng->cfg.cache_dir, eng->cfg.cache_size, &eng->cache);
	if (rc) {
		log_err("cannot open the cache in '%s': %s",
			eng->cfg.cache_dir, strerror(-rc));
		eng->cache = NULL;
		return rc;
	}
	eng->pf_stop = false;
	rc = -pthread_create(&eng->pf_thread, NULL, prefetch_main, eng);
	if (rc) {
		cache_close(eng->cache);
		eng->cache = NULL;
		return rc;
	}
	eng->pf_started = true;
	return 0;
}

void fs_engine_stop(struct fs_engine *eng)
{
	if (eng->pf_started) {
		pthread_mutex_lock(&eng->pf_lock);
		eng->pf_stop = true;
		pthread_cond_broadcast(&eng->pf_cond);
		pthread_mutex_unlock(&eng->pf_lock);
		pthread_join(eng->pf_thread, NULL);
		eng->pf_started = false;
		eng->pf_head = eng->pf_tail = NULL;
	}
	if (eng->cache)
		cache_close(eng->cache);
	eng->cache = NULL;
}

static void ahead_stop(struct fs_table *t);

static void table_free(struct fs_table *t)
{
	ahead_stop(t);
	api_schema_release(&t->ahead.schema);
	fs_import_table_release(t);
	fs_csvidx_free(t->csv);
	api_schema_release(&t->schema);
	free(t->keys);
	pthread_mutex_destroy(&t->lock);
	free(t->id);
	free(t->name);
	free(t);
}

void fs_engine_free(struct fs_engine *eng)
{
	size_t i;

	if (!eng)
		return;
	fs_engine_stop(eng);
	fs_import_release(eng);
	for (i = 0; i < eng->ntables; i++)
		table_free(eng->tables[i]);
	free(eng->tables);
	for (i = 0; i < eng->nold_names; i++)
		free(eng->old_names[i]);
	free(eng->old_names);
	fs_pending_release(eng);
	api_free(eng->api);
	fs_config_release(&eng->cfg);
	pthread_cond_destroy(&eng->pf_cond);
	pthread_mutex_destroy(&eng->pf_lock);
	pthread_mutex_destroy(&eng->list_lock);
	pthread_mutex_destroy(&eng->lock);
	free(eng);
}

const struct fs_config *fs_engine_config(struct fs_engine *eng)
{
	return &eng->cfg;
}

/* ---- the table listing ---------------------------------------------- */

/* Find or add a table by id; eng->lock held. */
static struct fs_table *table_get(struct fs_engine *eng, const char *id,
				  const char *name)
{
	struct fs_table *t, **grown;
	size_t i;

	for (i = 0; i < eng->ntables; i++) {
		t = eng->tables[i];
		if (!strcmp(t->id, id)) {
			if (strcmp(t->name, name)) {
				char *n = strdup(name), **old;

				old = realloc(eng->old_names,
					      (eng->nold_names + 1) *
						      sizeof(*old));
				if (!n || !old) {
					free(n);
					if (old)
						eng->old_names = old;
					return NULL;
				}
				eng->old_names = old;
				old[eng->nold_names++] = t->name;
				t->name = n;
			}
			return t;
		}
	}
	grown = realloc(eng->tables, (eng->ntables + 1) * sizeof(*grown));
	if (!grown)
		return NULL;
	eng->tables = grown;
	t = calloc(1, sizeof(*t));
	if (!t)
		return NULL;
	t->id = strdup(id);
	t->name = strdup(name);
	if (!t->id || !t->name) {
		free(t->id);
		free(t->name);
		free(t);
		return NULL;
	}
	pthread_mutex_init(&t->lock, NULL);
	eng->tables[eng->ntables++] = t;
	return t;
}

struct fs_table *fs_engine_add_table(struct fs_engine *eng, const char *id,
				     const char *name, bool listed)
{
	struct fs_table *t;

	pthread_mutex_lock(&eng->lock);
	t = table_get(eng, id, name);
	if (t)
		t->listed = listed;
	pthread_mutex_unlock(&eng->lock);
	return t;
}

/* Walk the listing again when it is older than list_ttl. */
static int refresh_listing(struct fs_engine *eng)
{
	struct api_table_list list = { 0 };
	size_t i, j;
	int rc = 0;

	/* lookups must not queue behind a walk: while one thread refreshes a
	 * listing that exists, the others use the one they have */
	if (pthread_mutex_trylock(&eng->list_lock)) {
		if (eng->listed_at)
			return 0;
		pthread_mutex_lock(&eng->list_lock);
	}
	if (eng->listed_at &&
	    now_s() - eng->listed_at < (int64_t)eng->cfg.list_ttl &&
	    eng->listed_at > atomic_load(&eng->expired_at))
		goto out;
	rc = api_list_tables(eng->api, &list);
	if (rc) {
		if (eng->listed_at) {
			/* and for another list_ttl: every lookup must not
			 * pay the retry budget again while the API is down */
			log_warn("table listing failed (%s); serving the "
				 "previous one", strerror(-rc));
			eng->listed_at = now_s();
			rc = 0;
		}
		goto out;
	}
	pthread_mutex_lock(&eng->lock);
	for (i = 0; i < eng->ntables; i++)
		eng->tables[i]->listed = false;
	for (j = 0; j < list.count; j++) {
		struct fs_table *t = table_get(eng, list.tables[j].id,
					       list.tables[j].name);

		if (!t) {
			rc = -ENOMEM;
			break;
		}
		t->listed = true;
	}
	pthread_mutex_unlock(&eng->lock);
	if (!rc)
		eng->listed_at = now_s();
out:
	pthread_mutex_unlock(&eng->list_lock);
	api_table_list_release(&list);
	return rc;
}

int fs_engine_check(struct fs_engine *eng)
{
	int rc = api_check(eng->api);

	if (rc)
		return rc;
	return refresh_listing(eng);
}

int fs_engine_list(struct fs_engine *eng, struct fs_table ***tables,
		   size_t *count)
{
	struct fs_table **v;
	size_t i, n = 0;
	int rc = refresh_listing(eng);

	*tables = NULL;
	*count = 0;
	if (rc)
		return rc;
	pthread_mutex_lock(&eng->lock);
	v = calloc(eng->ntables + 1, sizeof(*v));
	if (v) {
		for (i = 0; i < eng->ntables; i++)
			if (eng->tables[i]->listed)
				v[n++] = eng->tables[i];
	}
	pthread_mutex_unlock(&eng->lock);
	if (!v)
		return -ENOMEM;
	*tables = v;
	*count = n;
	return 0;
}

int fs_engine_lookup(struct fs_engine *eng, const char *name,
		     struct fs_table **out)
{
	size_t i;
	int rc = refresh_listing(eng);

	*out = NULL;
	if (rc)
		return rc;
	pthread_mutex_lock(&eng->lock);
	for (i = 0; i < eng->ntables; i++) {
		struct fs_table *t = eng->tables[i];

		if (t->listed && !strcmp(t->name, name)) {
			*out = t;
			break;
		}
	}
	pthread_mutex_unlock(&eng->lock);
	return *out ? 0 : -ENOENT;
}

const char *fs_table_name(const struct fs_table *t)
{
	return t->name;
}

const char *fs_table_id(const struct fs_table *t)
{
	return t->id;
}

struct fs_face_gens *fs_table_face(struct fs_table *t)
{
	return &t->face;
}

/* ---- schema ---------------------------------------------------------- */

/* Fetch the schema from the API and keep it (memory and cache); t->lock
 * held. *changed tells whether the columns differ from the previous one. */
static int install_schema(struct fs_engine *eng, struct fs_table *t,
			  struct api_schema s, bool *changed);

static int fetch_schema(struct fs_engine *eng, struct fs_table *t,
			bool *changed)
{
	struct api_schema s = { 0 };
	int rc;

	rc = api_get_schema(eng->api, t->id, &s);
	if (rc)
		return rc;
	return install_schema(eng, t, s, changed);
}

/* Keep a schema just fetched (memory and cache); t->lock held. */
static int install_schema(struct fs_engine *eng, struct fs_table *t,
			  struct api_schema s, bool *changed)
{
	if (changed)
		*changed = !t->have_schema ||
			   t->schema.json_len != s.json_len ||
			   memcmp(t->schema.json, s.json, s.json_len);
	fs_table_set_schema(eng, t, &s);
	return 0;
}

void fs_table_set_schema(struct fs_engine *eng, struct fs_table *t,
			 struct api_schema *s)
{
	int rc = cache_put_schema(eng->cache, t->id, s->version, s->json,
				  s->json_len);

	if (rc)
		log_warn("cannot cache the schema of '%s': %s", t->name,
			 strerror(-rc));
	api_schema_release(&t->schema);
	t->schema = *s;
	memset(s, 0, sizeof(*s));
	t->have_schema = true;
	t->schema_at = now_s();
	atomic_store(&t->schema_len, t->schema.json_len);
}

/* ---- a schema fetched beside the first page ---- */

static void *schema_main(void *arg)
{
	struct fs_schema_fetch *f = arg;

	f->rc = api_get_schema(f->eng->api, f->t->id, &f->s);
	return NULL;
}

void fs_schema_fetch_start(struct fs_engine *eng, struct fs_table *t,
			   struct fs_schema_fetch *f)
{
	memset(f, 0, sizeof(*f));
	f->eng = eng;
	f->t = t;
	f->started = pthread_create(&f->tid, NULL, schema_main, f) == 0;
	f->active = true;
}

int fs_schema_fetch_finish(struct fs_schema_fetch *f, bool *changed)
{
	if (!f->active)
		return 0;
	f->active = false;
	if (f->started)
		pthread_join(f->tid, NULL);
	else
		schema_main(f);	/* no thread: now, in this one */
	if (f->rc)
		return f->rc;
	return install_schema(f->eng, f->t, f->s, changed);
}

int fs_page_reorder(const struct api_schema *schema, struct api_page *p)
{
	const char *s = p->data, *end = p->data + p->len, *nl;
	char *out = NULL, *row, *key, *error;
	size_t len = 0, cap = p->len + 64, n;
	int rc = 0;

	out = malloc(cap);
	if (!out)
		return -ENOMEM;
	for (; s < end && !rc; s = nl + 1) {
		nl = memchr(s, '\n', (size_t)(end - s));
		if (!nl)
			nl = end;
		if (nl == s)
			continue;
		rc = api_row_validate(schema, s, (size_t)(nl - s), &row, &key,
				      &error);
		free(error);
		free(key);
		if (rc)
			break;
		n = strlen(row);
		if (len + n + 2 > cap) {
			char *g;

			while (len + n + 2 > cap)
				cap *= 2;
			g = realloc(out, cap);
			if (!g) {
				free(row);
				rc = -ENOMEM;
				break;
			}
			out = g;
		}
		memcpy(out + len, row, n);
		out[len + n] = '\n';
		len += n + 1;
		free(row);
	}
	if (rc) {
		free(out);
		return rc == -ENOMEM ? rc : -EINVAL;
	}
	out[len] = '\0';	/* as api/ leaves its pages */
	free(p->data);
	p->data = out;
	p->len = len;
	return 0;
}

/* Make sure t->schema is loaded: from memory, the cache (not proved fresh
 * yet), or the API; t->lock held. */
int fs_table_load_schema(struct fs_engine *eng, struct fs_table *t)
{
	if (fs_table_load_schema_cached(eng, t) == 0)
		return 0;
	return fetch_schema(eng, t, NULL);
}

bool fs_engine_expired(struct fs_engine *eng, int64_t at)
{
	return now_s() - at >= (int64_t)eng->cfg.revalidate ||
	       at <= atomic_load(&eng->expired_at);
}

void fs_engine_expire(struct fs_engine *eng)
{
	/* only lock-free atomic stores: safe in a signal handler */
	atomic_store(&eng->listed_at, 0);
	atomic_store(&eng->expired_at, (int64_t)time(NULL));
}

int fs_table_fresh_schema(struct fs_engine *eng, struct fs_table *t)
{
	int rc = 0;

	if (!t->have_schema || fs_engine_expired(eng, t->schema_at)) {
		rc = fetch_schema(eng, t, NULL);
		if (rc && (t->have_schema ||
			   fs_table_load_schema(eng, t) == 0)) {
			log_warn("schema of '%s' not refreshed (%s); serving "
				 "the cached one", t->name, strerror(-rc));
			rc = 0;
		}
	}
	return rc;
}

int fs_table_schema_json(struct fs_engine *eng, struct fs_table *t,
			 char **json, size_t *len)
{
	int rc;

	*json = NULL;
	*len = 0;
	pthread_mutex_lock(&t->lock);
	rc = fs_table_fresh_schema(eng, t);
	if (!rc) {
		*json = malloc(t->schema.json_len + 1);
		if (*json) {
			memcpy(*json, t->schema.json, t->schema.json_len);
			(*json)[t->schema.json_len] = '\0';
			*len = t->schema.json_len;
		} else {
			rc = -ENOMEM;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return rc;
}

size_t fs_table_schema_size(struct fs_engine *eng, struct fs_table *t)
{
	/* getattr must not queue behind a fetch holding t->lock: load from
	 * the cache only when the lock is free, else say what is known */
	if (!atomic_load(&t->schema_len) && !pthread_mutex_trylock(&t->lock)) {
		if (fs_table_load_schema_cached(eng, t))
			log_debug("no cached schema of '%s' yet", t->name);
		pthread_mutex_unlock(&t->lock);
	}
	return atomic_load(&t->schema_len);
}

/* Load the schema from the cache only (no network); t->lock held. */
int fs_table_load_schema_cached(struct fs_engine *eng, struct fs_table *t)
{
	char *version = NULL, *json = NULL;
	size_t len = 0;
	int rc;

	if (t->have_schema)
		return 0;
	rc = cache_get_schema(eng->cache, t->id, &version, &json, &len);
	if (rc)
		return rc;
	rc = api_schema_parse(json, len, version[0] ? version : NULL,
			      &t->schema);
	free(version);
	free(json);
	if (rc == 0) {
		t->have_schema = true;
		t->schema_at = 0;
		atomic_store(&t->schema_len, t->schema.json_len);
	}
	return rc;
}

int fs_table_invalidate(struct fs_engine *eng, struct fs_table *t)
{
	int rc;

	/* void the proof, keep the pages: readers of the cached snapshot
	 * finish it; the next open revalidates and meets the new version */
	/* and bump the table's epoch: a revalidation running meanwhile in
	 * any process stores its answer as unproved (cache.h) */
	pthread_mutex_lock(&t->lock);
	rc = cache_bump_epoch(eng->cache, t->id);
	pthread_mutex_unlock(&t->lock);
	if (rc)
		log_warn("cannot invalidate the cached rows of '%s': %s",
			 t->name, strerror(-rc));
	return rc;
}

/* ---- rows: pages ----------------------------------------------------- */

int64_t fs_table_rows_mtime(struct fs_engine *eng, struct fs_table *t)
{
	struct cache_meta m;

	if (cache_get_meta(eng->cache, t->id, &m))
		return 0;
	return m.began_at;
}

uint64_t fs_table_rows_size(struct fs_engine *eng, struct fs_table *t,
			    uint64_t *gen)
{
	struct cache_meta m;

	*gen = 0;
	if (cache_get_meta(eng->cache, t->id, &m) || !m.complete ||
	    m.gen == t->stale_gen)
		return 0;
	*gen = m.gen;
	return m.bytes;
}

static void page_error(struct fs_table *t, const char *what, int rc)
{
	/* an unreachable API: api/ said so with the host and what to do,
	 * at most once per 10 s while it stays down */
	if (rc == -EHOSTUNREACH)
		log_debug("%s of '%s' failed: %s", what, t->name,
			  strerror(-rc));
	else
		log_err("%s of '%s' failed: %s", what, t->name,
			strerror(-rc));
}

/* ---- the cursor dialect's pipeline: one page fetched ahead ----------- */

/*
 * The table's fetch-ahead thread: it waits for a job, fetches that page,
 * and waits again. One thread for the table's life rather than one per
 * page: on a loaded machine a new thread waited for the CPU far longer
 * than a woken one (dtfsctl export of 1M rows at 0 ms: 1.67 s with a
 * thread per page, see docs/performance.md).
 */
static void *ahead_main(void *arg)
{
	struct fs_table *t = arg;

	pthread_mutex_lock(&t->ahead.mu);
	for (;;) {
		while (!t->ahead.job && !t->ahead.quit)
			pthread_cond_wait(&t->ahead.cv, &t->ahead.mu);
		if (t->ahead.quit)
			break;
		pthread_mutex_unlock(&t->ahead.mu);
		t->ahead.rc = api_get_rows(t->ahead.eng->api, t->id,
					   &t->ahead.schema, t->ahead.cursor,
					   t->ahead.eng->cfg.page_size, NULL,
					   &t->ahead.page);
		pthread_mutex_lock(&t->ahead.mu);
		t->ahead.job = false;
		t->ahead.done = true;
		pthread_cond_broadcast(&t->ahead.cv);
	}
	pthread_mutex_unlock(&t->ahead.mu);
	return NULL;
}

/* Wait until the fetch handed over is done; t->lock held. */
static void ahead_wait(struct fs_table *t)
{
	pthread_mutex_lock(&t->ahead.mu);
	while (!t->ahead.done)
		pthread_cond_wait(&t->ahead.cv, &t->ahead.mu);
	pthread_mutex_unlock(&t->ahead.mu);
	t->ahead.active = false;
}

/* Wait for the page fetched ahead and forget it; t->lock held. */
static void ahead_drop(struct fs_table *t)
{
	if (!t->ahead.active)
		return;
	ahead_wait(t);
	api_page_release(&t->ahead.page);
	free(t->ahead.cursor);
	t->ahead.cursor = NULL;
}

/* End the table's fetch-ahead thread (table_free). */
static void ahead_stop(struct fs_table *t)
{
	ahead_drop(t);
	if (!t->ahead.running)
		return;
	pthread_mutex_lock(&t->ahead.mu);
	t->ahead.quit = true;
	pthread_cond_broadcast(&t->ahead.cv);
	pthread_mutex_unlock(&t->ahead.mu);
	pthread_join(t->ahead.tid, NULL);
	pthread_cond_destroy(&t->ahead.cv);
	pthread_mutex_destroy(&t->ahead.mu);
	t->ahead.running = false;
}

/* The table's fetch-ahead thread, started on first use; t->lock held. */
static bool ahead_thread(struct fs_table *t)
{
	if (t->ahead.running)
		return true;
	if (pthread_mutex_init(&t->ahead.mu, NULL))
		return false;
	if (pthread_cond_init(&t->ahead.cv, NULL)) {
		pthread_mutex_destroy(&t->ahead.mu);
		return false;
	}
	t->ahead.job = t->ahead.done = t->ahead.quit = false;
	if (pthread_create(&t->ahead.tid, NULL, ahead_main, t)) {
		pthread_cond_destroy(&t->ahead.cv);
		pthread_mutex_destroy(&t->ahead.mu);
		return false;
	}
	t->ahead.running = true;
	return true;
}

/*
 * Start fetching the page at `cursor` of generation gen while the caller
 * caches the one before it: as soon as a page's cursor is known, the next
 * request is on the wire. t->lock held. Does nothing when a fetch ahead is
 * still running or no thread can start (the page is then fetched when
 * needed, as before).
 */
static void ahead_start(struct fs_engine *eng, struct fs_table *t,
			uint64_t gen, const char *cursor)
{
	if (!cursor || !t->have_schema)
		return;
	if (t->ahead.active && t->ahead.gen == gen &&
	    !strcmp(t->ahead.cursor, cursor))
		return;
	ahead_drop(t);	/* another version's, or another place's */
	/* the thread reads its own copy: t->schema may be replaced by a
	 * refresh while it runs */
	if (!t->ahead.have_schema ||
	    t->ahead.schema.json_len != t->schema.json_len ||
	    memcmp(t->ahead.schema.json, t->schema.json, t->schema.json_len)) {
		api_schema_release(&t->ahead.schema);
		t->ahead.have_schema =
			api_schema_parse(t->schema.json, t->schema.json_len,
					 t->schema.version,
					 &t->ahead.schema) == 0;
		if (!t->ahead.have_schema)
			return;
	}
	if (!ahead_thread(t))
		return;
	t->ahead.cursor = strdup(cursor);
	if (!t->ahead.cursor)
		return;
	t->ahead.eng = eng;
	t->ahead.gen = gen;
	t->ahead.rc = 0;
	memset(&t->ahead.page, 0, sizeof(t->ahead.page));
	pthread_mutex_lock(&t->ahead.mu);
	t->ahead.done = false;
	t->ahead.job = true;
	pthread_cond_signal(&t->ahead.cv);
	pthread_mutex_unlock(&t->ahead.mu);
	t->ahead.active = true;
}

/* The page at `cursor` of gen if it was fetched ahead (moved to *page,
 * its error to *rc): true; else false. t->lock held. */
static bool ahead_take(struct fs_table *t, uint64_t gen, const char *cursor,
		       struct api_page *page, int *rc)
{
	bool match;

	if (!t->ahead.active)
		return false;
	match = t->ahead.gen == gen && cursor &&
		!strcmp(t->ahead.cursor, cursor);
	if (!match) {
		ahead_drop(t);
		return false;
	}
	ahead_wait(t);
	*page = t->ahead.page;
	*rc = t->ahead.rc;
	memset(&t->ahead.page, 0, sizeof(t->ahead.page));
	free(t->ahead.cursor);
	t->ahead.cursor = NULL;
	return true;
}

/*
 * Fetch the page after the cached frontier of generation gen and append
 * it, unless the frontier has already moved past `seen` (the frontier the
 * caller found) while it waited for the lock: a reader that queued behind
 * the prefetch of the page it needs returns at once. Returns 0 (a page was
 * appended, here or by someone else), 1 (the version is complete: end of
 * file), -ESTALE, or the API's error.
 */
static int fetch_next(struct fs_engine *eng, struct fs_table *t, uint64_t gen,
		      uint64_t seen)
{
	struct api_page page = { 0 };
	struct cache_meta m;
	int rc;

	pthread_mutex_lock(&t->lock);
	rc = cache_get_meta(eng->cache, t->id, &m);
	if (rc == -ENOENT || (rc == 0 && m.gen != gen)) {
		rc = -ESTALE;
		goto out;
	}
	if (rc)
		goto out;
	if (m.bytes > seen) {
		rc = 0;
		goto out;
	}
	if (m.complete) {
		rc = 1;
		goto out;
	}
	if (t->stale_gen == gen) {
		rc = -ESTALE;
		goto out;
	}
	rc = fs_table_load_schema(eng, t);
	if (rc)
		goto out;
	if (eng->caps.numbered_pages) {
		rc = fs_numbered_fetch(eng, t, &m);
		if (rc && rc != -ESTALE)
			page_error(t, "fetching rows", rc);
		goto out;
	}
	if (!m.pages || !ahead_take(t, gen, m.cursor, &page, &rc))
		rc = api_get_rows(eng->api, t->id, &t->schema,
				  m.pages ? m.cursor : NULL,
				  eng->cfg.page_size, NULL, &page);
	if (rc) {
		page_error(t, "fetching rows", rc);
		goto out;
	}
	if (page.not_modified || (page.version && m.version[0] &&
				  strcmp(page.version, m.version))) {
		log_err("table '%s' changed during export (version %s, now "
			"%s): reads of this snapshot fail with ESTALE; reopen "
			"rows.jsonl to read the new version",
			t->name, m.version,
			page.version ? page.version : "?");
		t->stale_gen = gen;
		rc = -ESTALE;
		goto out;
	}
	/* the next request goes out now, while this page is cached: once
	 * the reader is past page 2 (a head costs its page and the one
	 * prefetch, no more) */
	if (m.pages >= 2)
		ahead_start(eng, t, gen, page.next_cursor);
	rc = cache_append_page(eng->cache, t->id, gen, m.pages, m.bytes,
			       page.data, page.len, page.nrows,
			       page.next_cursor, NULL);
	if (rc == -EEXIST)
		rc = 0;
	if (rc)
		page_error(t, "caching rows", rc);
out:
	pthread_mutex_unlock(&t->lock);
	api_page_release(&page);
	return rc;
}

/* Queue the fetch of the page after frontier `seen` of generation gen. */
static void prefetch_queue(struct fs_engine *eng, struct fs_table *t,
			   uint64_t gen, uint64_t seen)
{
	pthread_mutex_lock(&eng->pf_lock);
	if (!t->pf_queued && !eng->pf_stop) {
		t->pf_queued = true;
		t->pf_gen = gen;
		t->pf_seen = seen;
		t->pf_next = NULL;
		if (eng->pf_tail)
			eng->pf_tail->pf_next = t;
		else
			eng->pf_head = t;
		eng->pf_tail = t;
		pthread_cond_signal(&eng->pf_cond);
	}
	pthread_mutex_unlock(&eng->pf_lock);
}

/* One thread fetches the next page of the tables being read sequentially,
 * so network and serving overlap. A failure here is not reported: the
 * reader that needs the page fetches it and sees the error itself. */
static void *prefetch_main(void *arg)
{
	struct fs_engine *eng = arg;

	pthread_mutex_lock(&eng->pf_lock);
	for (;;) {
		struct fs_table *t;
		uint64_t gen, seen;

		while (!eng->pf_head && !eng->pf_stop)
			pthread_cond_wait(&eng->pf_cond, &eng->pf_lock);
		if (eng->pf_stop)
			break;
		t = eng->pf_head;
		eng->pf_head = t->pf_next;
		if (!eng->pf_head)
			eng->pf_tail = NULL;
		gen = t->pf_gen;
		seen = t->pf_seen;
		pthread_mutex_unlock(&eng->pf_lock);

		if (fetch_next(eng, t, gen, seen) < 0)
			log_debug("prefetch of '%s' stopped", t->name);

		pthread_mutex_lock(&eng->pf_lock);
		t->pf_queued = false;
	}
	pthread_mutex_unlock(&eng->pf_lock);
	return NULL;
}

/* ---- rows: readers --------------------------------------------------- */

struct fs_reader {
	struct fs_engine *eng;
	struct fs_table *t;
	uint64_t gen;
	char version[CACHE_VERSION_MAX];
	bool consumed;		/* bytes of gen were returned */
};

/* The API could not be reached or kept failing: not an answer about the
 * table (as 404 or 403 would be). */
bool fs_unreachable(int rc)
{
	return rc == -EHOSTUNREACH || rc == -ETIMEDOUT || rc == -EIO;
}

/* Revalidate or start the cached version (now when `force`, else at most
 * once per `revalidate`); t->lock held. */
static int snapshot(struct fs_engine *eng, struct fs_table *t,
		    struct cache_meta *m, bool force)
{
	static const struct api_schema no_schema;
	struct api_page page = { 0 };
	struct fs_schema_fetch sf = { 0 };
	bool have, changed = false;
	int rc;

	/* the epoch first: an import starting after this read makes what
	 * follows unproved */
	rc = cache_get_epoch(eng->cache, t->id, &t->epoch);
	if (rc)
		return rc;
	rc = cache_get_meta(eng->cache, t->id, m);
	if (rc && rc != -ENOENT)
		return rc;
	have = rc == 0 && m->gen != t->stale_gen;
	if (have && !force && !fs_engine_expired(eng, m->validated_at))
		return 0;
	/* offline a moment ago: do not make every open pay the retry budget
	 * again before `revalidate` seconds have passed */
	if (have && !force && m->complete && t->offline_at > m->validated_at &&
	    !fs_engine_expired(eng, t->offline_at))
		return 0;

	if (eng->caps.numbered_pages) {
		/* no version to ask about: the schema is refreshed on the
		 * same cadence as the rows it orders */
		if (have) {
			rc = fs_table_fresh_schema(eng, t);
			if (rc)
				return rc;
		} else if (!t->have_schema &&
			   fs_table_load_schema_cached(eng, t)) {
			log_debug("no cached schema of '%s': fetched beside "
				  "the first pages", t->name);
		}
		return fs_numbered_snapshot(eng, t, m, have, force);
	}
	/*
	 * A new version for sure (nothing to ask If-None-Match about) needs
	 * a schema proved fresh: fetch it beside the first page, not before
	 * it, and put the page's columns in its order once both are here
	 * (the first page of a cold table costs one round trip, not two).
	 */
	if (!have && (!t->have_schema || now_s() - t->schema_at > 1)) {
		if (!t->have_schema && fs_table_load_schema_cached(eng, t))
			log_debug("no cached schema of '%s'", t->name);
		fs_schema_fetch_start(eng, t, &sf);
	} else {
		rc = fs_table_load_schema(eng, t);
		if (rc)
			return rc;
	}
again:
	rc = api_get_rows(eng->api, t->id,
			  t->have_schema ? &t->schema : &no_schema, NULL,
			  eng->cfg.page_size,
			  have && m->version[0] ? m->version : NULL, &page);
	if (sf.active) {
		bool had = t->have_schema;
		int src = fs_schema_fetch_finish(&sf, &changed);

		if (src) {
			api_page_release(&page);
			page_error(t, "fetching the schema", src);
			return src;
		}
		/* the schema is fresh now: the step below is done */
		if (!rc && (changed || !had) &&
		    fs_page_reorder(&t->schema, &page)) {
			/* a line the schema cannot order: ask again with it */
			api_page_release(&page);
			changed = true;
			goto again;
		}
		changed = true;
	}
	if (rc && !force && have && m->complete && fs_unreachable(rc)) {
		atomic_store(&t->offline_at, now_s());
		/* offline: the last version proved current, whole, beats no
		 * file at all (the log says it was not revalidated) */
		log_warn("cannot revalidate '%s' (%s): serving the cached "
			 "version %s", t->name, strerror(-rc), m->version);
		return 0;
	}
	if (rc) {
		page_error(t, "revalidating rows", rc);
		return rc;
	}
	if (page.not_modified) {
		rc = cache_set_validated_under(eng->cache, t->id, m->gen,
					       now_s(), t->epoch);
		if (rc == -ESTALE) {
			/* an import dropped the cached version meanwhile */
			api_page_release(&page);
			have = false;
			goto again;
		}
		goto out;
	}
	/* a new version may come with a new schema: the schema orders the
	 * columns of every line, so prove it fresh before caching rows */
	if (!changed && now_s() - t->schema_at > 1) {
		rc = fetch_schema(eng, t, &changed);
		if (rc)
			goto out;
		if (changed) {
			api_page_release(&page);
			goto again;
		}
	}
	rc = cache_begin_version_under(eng->cache, t->id,
				       page.version ? page.version : "",
				       t->epoch, m);
	if (rc)
		goto out;
	if (m->pages == 0 && !m->complete) {
		rc = cache_append_page(eng->cache, t->id, m->gen, 0, 0,
				       page.data, page.len, page.nrows,
				       page.next_cursor, m);
		if (rc == -EEXIST)
			rc = cache_get_meta(eng->cache, t->id, m);
	}
out:
	if (rc)
		page_error(t, "caching rows", rc);
	api_page_release(&page);
	return rc;
}

static int reader_open(struct fs_engine *eng, struct fs_table *t,
		       bool force, struct fs_reader **out)
{
	struct fs_reader *rd;
	struct cache_meta m;
	int rc;

	*out = NULL;
	rd = calloc(1, sizeof(*rd));
	if (!rd)
		return -ENOMEM;
	pthread_mutex_lock(&t->lock);
	rc = snapshot(eng, t, &m, force);
	pthread_mutex_unlock(&t->lock);
	if (rc) {
		free(rd);
		return rc;
	}
	rd->eng = eng;
	rd->t = t;
	rd->gen = m.gen;
	memcpy(rd->version, m.version, sizeof(rd->version));
	*out = rd;
	return 0;
}

int fs_reader_open(struct fs_engine *eng, struct fs_table *t,
		   struct fs_reader **out)
{
	return reader_open(eng, t, false, out);
}

int fs_reader_open_current(struct fs_engine *eng, struct fs_table *t,
			   struct fs_reader **out)
{
	return reader_open(eng, t, true, out);
}

/* Bind rd to the table's version as an open would now. */
static int rebind(struct fs_reader *rd)
{
	struct cache_meta m;
	int rc;

	pthread_mutex_lock(&rd->t->lock);
	rc = snapshot(rd->eng, rd->t, &m, false);
	pthread_mutex_unlock(&rd->t->lock);
	if (!rc) {
		log_info("reader of '%s' moved to the new version before "
			 "reading a byte", rd->t->name);
		rd->gen = m.gen;
	}
	return rc;
}

/*
 * The cache dropped the reader's version as damaged: take a new snapshot
 * and, when the API still has the same version (whose bytes and offsets
 * are the same), go on reading it from the API. Returns 0 or -ESTALE.
 */
static int reader_refetch(struct fs_reader *rd)
{
	struct cache_meta m;
	int rc;

	if (!rd->version[0])
		return -ESTALE;	/* no version to prove it the same */
	pthread_mutex_lock(&rd->t->lock);
	rc = snapshot(rd->eng, rd->t, &m, false);
	pthread_mutex_unlock(&rd->t->lock);
	if (rc == 0 && strcmp(m.version, rd->version) == 0) {
		log_warn("cached rows of '%s' were damaged: fetching them "
			 "again", rd->t->name);
		rd->gen = m.gen;
		return 0;
	}
	return -ESTALE;
}

int fs_reader_read(struct fs_reader *rd, uint64_t off, void *buf, size_t size,
		   size_t *nread)
{
	struct fs_engine *eng = rd->eng;
	struct fs_table *t = rd->t;
	struct cache_meta m;
	size_t total = 0, n;
	bool refetched = false;
	unsigned rebinds = 0;
	int rc = 0;

	while (total < size) {
		rc = cache_read(eng->cache, t->id, rd->gen, off + total,
				(char *)buf + total, size - total, &n);
		if (!rc) {
			total += n;
			if (total == size)
				break;
			rc = fetch_next(eng, t, rd->gen, off + total);
			if (rc == 1) {
				rc = 0;
				break;
			}
			if (!rc)
				continue;
		}
		/* the failure of the read or of the fetch */
		if (rc == -EBADMSG && !refetched) {
			refetched = true;
			rc = reader_refetch(rd);
			if (rc == 0)
				continue;
		}
		if (rc == -ESTALE && !rd->consumed && off + total == 0 &&
		    rebinds++ < 3) {
			/* the version changed before this reader saw a byte
			 * of it: start it on the new one (never a mix) */
			rc = rebind(rd);
			if (rc == 0)
				continue;
		}
		break;
	}
	if (total > 0)
		rd->consumed = true;
	if (rc == -ESTALE)
		log_err("read of '%s' rows.jsonl failed: the table changed "
			"while an uncached part of the snapshot was needed",
			t->name);
	/* a short read before an error is still data; the error follows */
	if (rc && total > 0)
		rc = 0;
	*nread = rc ? 0 : total;

	/* keep one page ahead of a reader that is near the frontier */
	if (!rc && cache_get_meta(eng->cache, t->id, &m) == 0 &&
	    m.gen == rd->gen && !m.complete && m.pages > 0 &&
	    off + total + m.bytes / m.pages >= m.bytes)
		prefetch_queue(eng, t, rd->gen, m.bytes);
	return rc;
}

uint64_t fs_reader_gen(const struct fs_reader *rd)
{
	return rd->gen;
}

bool fs_reader_complete(struct fs_reader *rd, uint64_t *size)
{
	struct cache_meta m;

	if (cache_get_meta(rd->eng->cache, rd->t->id, &m) ||
	    m.gen != rd->gen || !m.complete)
		return false;
	*size = m.bytes;
	return true;
}

void fs_reader_close(struct fs_reader *rd)
{
	free(rd);
}

/* ---- status.json ----------------------------------------------------- */

static void iso_time(int64_t t, char *buf, size_t size)
{
	struct tm tm;
	time_t tt = (time_t)t;

	if (t <= 0 || !gmtime_r(&tt, &tm) ||
	    !strftime(buf, size, "\"%Y-%m-%dT%H:%M:%SZ\"", &tm))
		snprintf(buf, size, "null");
}

int fs_table_status_json(struct fs_engine *eng, struct fs_table *t,
			 char **json, size_t *len)
{
	struct cache_meta m;
	size_t size = 8192, pos = 0;
	char *buf, when[64];
	bool cached;
	int n, rc;

	*json = NULL;
	*len = 0;
	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	cached = cache_get_meta(eng->cache, t->id, &m) == 0;
	n = snprintf(buf, size, "{\n  \"table\": ");
	pos = (size_t)n;
	rc = fs_json_string(buf, size, &pos, t->name);
	if (rc)
		goto fail;
	n = snprintf(buf + pos, size - pos, ",\n  \"id\": ");
	pos += (size_t)n;
	rc = fs_json_string(buf, size, &pos, t->id);
	if (rc)
		goto fail;
	iso_time(cached ? m.validated_at : 0, when, sizeof(when));
	n = snprintf(buf + pos, size - pos,
		     ",\n  \"cache\": {\n    \"version\": ");
	pos += (size_t)n;
	if (cached && m.version[0])
		rc = fs_json_string(buf, size, &pos, m.version);
	else
		n = snprintf(buf + pos, size - pos, "null"), pos += (size_t)n;
	if (rc)
		goto fail;
	n = snprintf(buf + pos, size - pos,
		     ",\n    \"complete\": %s,\n    \"pages\": %llu,\n"
		     "    \"rows\": %llu,\n    \"bytes\": %llu,\n"
		     "    \"stale\": %s,\n    \"in_memory\": %s,\n"
		     "    \"last_revalidation\": %s\n  }",
		     cached && m.complete ? "true" : "false",
		     cached ? (unsigned long long)m.pages : 0ULL,
		     cached ? (unsigned long long)m.rows : 0ULL,
		     cached ? (unsigned long long)m.bytes : 0ULL,
		     cached && m.gen == t->stale_gen ? "true" : "false",
		     cached && m.in_memory ? "true" : "false", when);
	if (n < 0 || (size_t)n >= size - pos) {
		rc = -ENOSPC;
		goto fail;
	}
	pos += (size_t)n;
	rc = fs_import_status_json(eng, t, buf, size, &pos);
	if (rc)
		goto fail;
	n = snprintf(buf + pos, size - pos, "\n}\n");
	if (n < 0 || (size_t)n >= size - pos) {
		rc = -ENOSPC;
		goto fail;
	}
	pos += (size_t)n;
	*json = buf;
	*len = pos;
	return 0;
fail:
	free(buf);
	return rc;
}
