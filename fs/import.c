/*
 * import: writing rows.jsonl imports the lines written.
 *
 * Lines are validated as they arrive (api_row_validate, the schema cached
 * when the import began); bad ones go to the table's rejects.jsonl, good ones
 * to the LMDB spool keyed by primary key (the last line with a key wins), so
 * memory stays flat whatever the size of the stream. A column the schema
 * lacks is schema drift: the import stops and nothing is sent. At the end
 * (fs_import_finish) the spool is sent as upsert chunks by a few worker
 * threads, paced by the API client's shared pacer.
 *
 * Spooled values are "LINE\tROW": the line number lets a row the server
 * rejects after all be quarantined under its line.
 *
 * One import per table at a time, across processes too: the import holds an
 * exclusive flock on its rejects file.
 */
#include "engine_i.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "names.h"
#include "utf8.h"

#define SPOOL_BATCH 256
/* the spool is keyed by primary key: LMDB keys stop near 500 bytes */
#define MAX_KEY 400

enum import_state {
	IMPORT_RECEIVING,
	IMPORT_UPLOADING,
	IMPORT_DONE,
	IMPORT_FAILED,
};

static const char *const state_names[] = {
	[IMPORT_RECEIVING] = "receiving",
	[IMPORT_UPLOADING] = "uploading",
	[IMPORT_DONE] = "done",
	[IMPORT_FAILED] = "failed",
};

struct fs_import {
	struct fs_engine *eng;
	struct fs_table *t;
	struct api_schema schema;	/* private copy: writes never race a
					   schema refresh */
	pthread_mutex_t lock;		/* one write/finish at a time; held
					   while the upload runs */
	pthread_mutex_t rejects_lock;	/* the rejects file: written by the
					   writer and by upload workers */
	bool open;			/* a handle still holds it */
	bool dirty;			/* bytes since the last finish */
	atomic_bool flushed;		/* finished, nothing written since */
	bool drift;
	atomic_bool drift_seen;		/* drift, readable without im->lock */
	int latched;			/* error every later call returns */

	char *partial;			/* an unterminated line */
	size_t plen, pcap;
	bool overlong;			/* the partial line passed max_line */

	char *keys[SPOOL_BATCH];	/* rows waiting for one spool txn */
	char *vals[SPOOL_BATCH];
	size_t nbatch;

	int rejects_fd;			/* flock'ed: the import lock */
	FILE *rejects;

	/* status.json; counters are atomics, strings under import_lock */
	atomic_uint_fast64_t lines, valid, quarantined, chunks_sent,
		chunks_acked, retries, throttled;
	/* progress totals (status.json and dtfsctl's progress line) */
	atomic_uint_fast64_t bytes, rows_planned, rows_landed, chunks_planned,
		chunks_resent;
	enum import_state state;
	char error[512];
	int64_t started_at, finished_at;
};

int fs_import_init(struct fs_engine *eng)
{
	size_t n = strlen(eng->cfg.cache_dir) + sizeof("/rejects");

	pthread_mutex_init(&eng->import_lock, NULL);
	eng->rejects_dir = malloc(n);
	if (!eng->rejects_dir)
		return -ENOMEM;
	snprintf(eng->rejects_dir, n, "%s/rejects", eng->cfg.cache_dir);
	return 0;
}

void fs_import_release(struct fs_engine *eng)
{
	free(eng->rejects_dir);
	pthread_mutex_destroy(&eng->import_lock);
}

static void import_free(struct fs_import *im)
{
	size_t i;

	if (!im)
		return;
	for (i = 0; i < im->nbatch; i++) {
		free(im->keys[i]);
		free(im->vals[i]);
	}
	if (im->rejects)
		fclose(im->rejects);
	else if (im->rejects_fd >= 0)
		close(im->rejects_fd);
	api_schema_release(&im->schema);
	free(im->partial);
	pthread_mutex_destroy(&im->rejects_lock);
	pthread_mutex_destroy(&im->lock);
	free(im);
}

void fs_import_table_release(struct fs_table *t)
{
	import_free(t->import);
	t->import = NULL;
}

char *fs_table_rejects_path(struct fs_engine *eng, struct fs_table *t)
{
	char enc[768], *p;
	size_t n;

	/* ids are file-name safe in practice; encode anyway */
	if (fs_name_encode(t->id, enc, sizeof(enc)))
		return NULL;
	n = strlen(eng->rejects_dir) + strlen(enc) + sizeof("/.jsonl");
	p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s.jsonl", eng->rejects_dir, enc);
	return p;
}

static void set_state(struct fs_import *im, enum import_state s,
		      const char *error)
{
	pthread_mutex_lock(&im->eng->import_lock);
	im->state = s;
	if (s == IMPORT_RECEIVING)
		im->error[0] = '\0';
	if (error)
		snprintf(im->error, sizeof(im->error), "%s", error);
	if (s == IMPORT_DONE || s == IMPORT_FAILED)
		im->finished_at = (int64_t)time(NULL);
	else
		im->finished_at = 0;
	pthread_mutex_unlock(&im->eng->import_lock);
}

/* Whether this process's import into t is open but was finished with
 * nothing written since: its program has closed the file, most likely,
 * and the kernel's release is on its way. */
static bool holder_closing(struct fs_engine *eng, struct fs_table *t)
{
	bool closing;

	pthread_mutex_lock(&eng->import_lock);
	closing = t->import && t->import->open &&
		  atomic_load(&t->import->flushed);
	pthread_mutex_unlock(&eng->import_lock);
	return closing;
}

/*
 * Take the table's import lock (flock of its rejects file). close()
 * returns after flush, but the release that ends the import reaches us
 * later, asynchronously: a writer that opens right after a close must not
 * get EBUSY for an import that is over. So wait for the holder a little:
 * up to IMPORT_CLOSING_WAIT_MS when this process's import was flushed
 * clean (a program closed it), IMPORT_BUSY_WAIT_MS otherwise (another
 * process, such as dtfsctl or a mount on the same cache, may be releasing
 * its own). Returns 0, -EBUSY, or another flock error.
 */
#define IMPORT_CLOSING_WAIT_MS 2000
#define IMPORT_BUSY_WAIT_MS 250
static int take_import_lock(struct fs_engine *eng, struct fs_table *t,
			    int fd)
{
	const struct timespec step = { 0, 5 * 1000 * 1000 };
	unsigned waited = 0, limit;

	for (;;) {
		if (flock(fd, LOCK_EX | LOCK_NB) == 0)
			return 0;
		if (errno != EWOULDBLOCK && errno != EINTR)
			return -errno;
		limit = holder_closing(eng, t) ? IMPORT_CLOSING_WAIT_MS
					       : IMPORT_BUSY_WAIT_MS;
		if (waited >= limit)
			break;
		nanosleep(&step, NULL);
		waited += 5;
	}
	log_notice("import into '%s' refused: another import into it is in "
		   "progress", t->name);
	return -EBUSY;
}

int fs_import_begin(struct fs_engine *eng, struct fs_table *t,
		    struct fs_import **out)
{
	struct fs_import *im;
	char *path = NULL;
	int rc;

	*out = NULL;
	if (eng->cfg.ro)
		return -EROFS;
	/* shells ignore close() errors: once the API has refused a write
	 * into this table, refuse later imports at open, where every program
	 * sees it (until SIGHUP: permissions may be granted meanwhile) */
	if (atomic_load(&t->write_refused_at) >
	    atomic_load(&eng->expired_at)) {
		log_err("import into '%s' refused: the API refused write "
			"access to it (SIGHUP to try again)", t->name);
		return -EACCES;
	}
	im = calloc(1, sizeof(*im));
	if (!im)
		return -ENOMEM;
	pthread_mutex_init(&im->lock, NULL);
	pthread_mutex_init(&im->rejects_lock, NULL);
	im->eng = eng;
	im->t = t;
	im->rejects_fd = -1;

	/* the import lock, across processes: flock the rejects file */
	if (mkdir(eng->rejects_dir, 0700) && errno != EEXIST) {
		rc = -errno;
		log_err("cannot create '%s': %s", eng->rejects_dir,
			strerror(errno));
		goto fail;
	}
	path = fs_table_rejects_path(eng, t);
	if (!path) {
		rc = -ENOMEM;
		goto fail;
	}
	im->rejects_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (im->rejects_fd < 0) {
		rc = -errno;
		log_err("cannot open '%s': %s", path, strerror(errno));
		goto fail;
	}
	rc = take_import_lock(eng, t, im->rejects_fd);
	if (rc)
		goto fail;

	/*
	 * Validate against a schema no older than `revalidate` seconds, the
	 * freshness schema.json promises (the cached one when the API cannot
	 * be reached): a column added in the API since it was cached is a
	 * column, not drift.
	 */
	pthread_mutex_lock(&t->lock);
	rc = fs_table_fresh_schema(eng, t);
	if (!rc)
		rc = api_schema_parse(t->schema.json, t->schema.json_len,
				      t->schema.version, &im->schema);
	pthread_mutex_unlock(&t->lock);
	if (rc) {
		log_err("import into '%s' cannot start: no schema (%s)",
			t->name, strerror(-rc));
		goto fail;
	}

	/* rejects.jsonl is replaced by each new import */
	if (ftruncate(im->rejects_fd, 0)) {
		rc = -errno;
		goto fail;
	}
	im->rejects = fdopen(im->rejects_fd, "w");
	if (!im->rejects) {
		rc = -errno;
		goto fail;
	}
	rc = cache_spool_clear(eng->cache, t->id);
	if (rc)
		goto fail;

	im->open = true;
	im->state = IMPORT_RECEIVING;
	im->started_at = (int64_t)time(NULL);
	pthread_mutex_lock(&eng->import_lock);
	import_free(t->import);
	t->import = im;
	pthread_mutex_unlock(&eng->import_lock);
	free(path);
	*out = im;
	return 0;
fail:
	free(path);
	import_free(im);
	return rc;
}

bool fs_import_dirty(const struct fs_import *im)
{
	return im->dirty;
}

/* Write s[0..n) as a JSON string: bytes that are not well-formed UTF-8
 * become U+FFFD, so the rejects file stays valid JSON (and valid UTF-8)
 * whatever was written. */
static void put_json_string(FILE *f, const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s, *end = p + n;

	fputc('"', f);
	while (p < end) {
		unsigned c = *p;
		size_t len;

		if (c < 0x80) {
			if (c == '"' || c == '\\')
				fprintf(f, "\\%c", c);
			else if (c < 0x20)
				fprintf(f, "\\u%04x", c);
			else
				fputc((int)c, f);
			p++;
			continue;
		}
		len = utf8_seq_len(p, (size_t)(end - p));
		if (!len) {
			fputs("\\ufffd", f);
			p++;
			continue;
		}
		fwrite(p, 1, len, f);
		p += len;
	}
	fputc('"', f);
}

static void quarantine(struct fs_import *im, uint64_t line, const char *error,
		       const char *text, size_t n)
{
	FILE *f = im->rejects;

	atomic_fetch_add(&im->quarantined, 1);
	pthread_mutex_lock(&im->rejects_lock);
	fprintf(f, "{\"line\": %" PRIu64 ", \"error\": ", line);
	put_json_string(f, error, strlen(error));
	fputs(", \"text\": ", f);
	put_json_string(f, text, n);
	fputs("}\n", f);
	fflush(f);
	pthread_mutex_unlock(&im->rejects_lock);
}

static int spool_flush(struct fs_import *im)
{
	size_t i;
	int rc = 0;

	if (im->nbatch)
		rc = cache_spool_put(im->eng->cache, im->t->id, im->nbatch,
				     (const char *const *)im->keys,
				     (const char *const *)im->vals);
	for (i = 0; i < im->nbatch; i++) {
		free(im->keys[i]);
		free(im->vals[i]);
	}
	im->nbatch = 0;
	if (rc)
		log_err("import into '%s': cannot spool rows: %s",
			im->t->name, strerror(-rc));
	return rc;
}

static bool blank(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

/* One complete line (without its '\n'). Returns 0 or a fatal error. */
static int take_line(struct fs_import *im, const char *s, size_t n,
		     bool overlong)
{
	uint64_t line = atomic_fetch_add(&im->lines, 1) + 1;
	char *row = NULL, *key = NULL, *error = NULL, *val;
	char msg[96];
	size_t vlen;
	int rc;

	if (n && s[n - 1] == '\r')
		n--;
	if (blank(s, n))
		return 0;
	if (overlong) {
		snprintf(msg, sizeof(msg), "line longer than %u bytes",
			 im->eng->cfg.max_line);
		quarantine(im, line, msg, s, n);
		return 0;
	}
	rc = api_row_validate(&im->schema, s, n, &row, &key, &error);
	if (rc == -EINVAL) {
		quarantine(im, line, error ? error : "invalid row", s, n);
		free(error);
		return 0;
	}
	if (rc == -ENOENT) {
		char why[400];

		snprintf(why, sizeof(why), "schema drift: %.380s",
			 error ? error : "unknown column");
		quarantine(im, line, why, s, n);
		log_err("import into '%s' stopped at line %" PRIu64 ": %s; "
			"nothing was sent", im->t->name, line, why);
		set_state(im, IMPORT_FAILED, why);
		im->drift = true;
		atomic_store(&im->drift_seen, true);
		free(error);
		return -EINVAL;
	}
	free(error);
	if (rc)
		return rc;
	if (strlen(key) > MAX_KEY) {
		snprintf(msg, sizeof(msg), "primary key longer than %d bytes",
			 MAX_KEY);
		quarantine(im, line, msg, s, n);
		free(row);
		free(key);
		return 0;
	}
	atomic_fetch_add(&im->valid, 1);
	vlen = strlen(row) + 24;
	val = malloc(vlen);
	if (!val) {
		free(row);
		free(key);
		return -ENOMEM;
	}
	snprintf(val, vlen, "%" PRIu64 "\t%s", line, row);
	free(row);
	im->keys[im->nbatch] = key;
	im->vals[im->nbatch] = val;
	if (++im->nbatch == SPOOL_BATCH)
		return spool_flush(im);
	return 0;
}

static int keep_partial(struct fs_import *im, const char *s, size_t n)
{
	size_t max = im->eng->cfg.max_line;

	if (im->plen + n > max) {
		im->overlong = true;
		n = im->plen < max ? max - im->plen : 0;
	}
	if (im->plen + n > im->pcap) {
		size_t cap = im->pcap ? im->pcap : 4096;
		char *p;

		while (cap < im->plen + n)
			cap *= 2;
		p = realloc(im->partial, cap);
		if (!p)
			return -ENOMEM;
		im->partial = p;
		im->pcap = cap;
	}
	memcpy(im->partial + im->plen, s, n);
	im->plen += n;
	return 0;
}

int fs_import_write(struct fs_import *im, const void *buf, size_t len)
{
	const char *s = buf, *end = s + len, *nl;
	int rc = 0;

	pthread_mutex_lock(&im->lock);
	if (im->latched) {
		rc = im->latched;
		goto out;
	}
	if (!im->dirty)	/* the first bytes, or more after a flush */
		set_state(im, IMPORT_RECEIVING, NULL);
	im->dirty = true;
	atomic_store(&im->flushed, false);
	atomic_fetch_add(&im->bytes, len);
	while (s < end && !rc) {
		nl = memchr(s, '\n', (size_t)(end - s));
		if (!nl) {
			rc = keep_partial(im, s, (size_t)(end - s));
			break;
		}
		if (im->plen || im->overlong) {
			rc = keep_partial(im, s, (size_t)(nl - s));
			if (!rc)
				rc = take_line(im, im->partial, im->plen,
					       im->overlong);
			im->plen = 0;
			im->overlong = false;
		} else {
			rc = take_line(im, s, (size_t)(nl - s),
				       (size_t)(nl - s) >
					       im->eng->cfg.max_line);
		}
		s = nl + 1;
	}
	if (rc)
		im->latched = rc;
out:
	pthread_mutex_unlock(&im->lock);
	return rc;
}

/* ---- upload ---------------------------------------------------------- */

struct chunk {
	struct cache_spool_batch batch;
	struct chunk *next;
};

struct upload {
	struct fs_import *im;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct chunk *head, *tail;
	size_t queued;
	size_t busy;		/* chunks being sent */
	bool done;		/* no more chunks will be queued */
	int error;		/* first fatal error: stop sending */
	bool failed;		/* some chunk did not land */
};

/* Split "LINE\tROW". */
static const char *spooled_row(const char *val, uint64_t *line)
{
	char *tab;

	*line = strtoull(val, &tab, 10);
	return *tab == '\t' ? tab + 1 : val;
}

/* Send one chunk; on a 400 that names rows, quarantine them and send the
 * rest once more. Returns 0 or the error. */
static int send_chunk(struct fs_import *im, struct cache_spool_batch *b)
{
	struct api_upsert_result res = { 0 };
	const char **rows;
	uint64_t *lines;
	size_t i, n = b->n;
	int rc, round;

	rows = calloc(n, sizeof(*rows));
	lines = calloc(n, sizeof(*lines));
	if (!rows || !lines) {
		free(rows);
		free(lines);
		return -ENOMEM;
	}
	for (i = 0; i < n; i++)
		rows[i] = spooled_row(b->rows[i], &lines[i]);
	for (round = 0;; round++) {
		atomic_fetch_add(&im->chunks_sent, 1);
		rc = api_upsert(im->eng->api, im->t->id, rows, n, &res);
		if (res.attempts > 1)
			atomic_fetch_add(&im->retries, res.attempts - 1);
		atomic_fetch_add(&im->throttled, res.throttled);
		if (rc == 0) {
			atomic_fetch_add(&im->chunks_acked, 1);
			atomic_fetch_add(&im->rows_landed, n);
			break;
		}
		if (rc != -EINVAL || !res.nerrors || round > 0)
			break;
		/* the server refused rows our validation passed: quarantine
		 * exactly those and send the others. (Not under im->lock: the
		 * finishing thread holds it while it waits for us.) */
		for (i = 0; i < res.nerrors; i++) {
			size_t r = res.errors[i].row;
			char why[256];

			if (r >= n || !rows[r])
				continue;
			snprintf(why, sizeof(why), "refused by the API: %s%s%s",
				 res.errors[i].field ? res.errors[i].field : "",
				 res.errors[i].field ? " " : "",
				 res.errors[i].code ? res.errors[i].code
						    : "invalid.row");
			quarantine(im, lines[r], why, rows[r], strlen(rows[r]));
			rows[r] = NULL;
		}
		{
			size_t k = 0;

			for (i = 0; i < n; i++)
				if (rows[i]) {
					rows[k] = rows[i];
					lines[k++] = lines[i];
				}
			n = k;
		}
		api_upsert_result_release(&res);
		if (n == 0) {
			rc = 0;
			break;
		}
		/* the resend is one more chunk than planned */
		atomic_fetch_add(&im->chunks_resent, 1);
	}
	api_upsert_result_release(&res);
	free(rows);
	free(lines);
	return rc;
}

static void *upload_main(void *arg)
{
	struct upload *up = arg;

	pthread_mutex_lock(&up->lock);
	for (;;) {
		struct chunk *c;
		int rc;

		while (!up->head && !up->done)
			pthread_cond_wait(&up->cond, &up->lock);
		if (!up->head)
			break;
		c = up->head;
		up->head = c->next;
		if (!up->head)
			up->tail = NULL;
		up->queued--;
		if (up->error) {
			/* a fatal error: drop what is queued */
			up->failed = true;
			cache_spool_batch_release(&c->batch);
			free(c);
			pthread_cond_broadcast(&up->cond);
			continue;
		}
		up->busy++;
		pthread_mutex_unlock(&up->lock);

		rc = send_chunk(up->im, &c->batch);
		if (rc)
			log_err("upsert chunk of %zu row%s into '%s' failed: "
				"%s", c->batch.n, c->batch.n == 1 ? "" : "s",
				up->im->t->name, strerror(-rc));
		cache_spool_batch_release(&c->batch);
		free(c);

		pthread_mutex_lock(&up->lock);
		up->busy--;
		if (rc) {
			up->failed = true;
			if (!up->error)
				up->error = rc;
		}
		/* a worker is free: the reader may cut the next chunk */
		pthread_cond_broadcast(&up->cond);
	}
	pthread_mutex_unlock(&up->lock);
	return NULL;
}

/* Send the spool: this thread reads chunks in key order and hands them to
 * the workers. A chunk is cut only when a worker is free to send it, so
 * its size follows the rate budget as the last answer reported it (no
 * read-ahead of full chunks cut before the budget turned low). Returns 0,
 * or the first error of a chunk that did not land. */
static int upload(struct fs_import *im)
{
	struct fs_engine *eng = im->eng;
	unsigned workers = eng->cfg.upload_workers, started = 0, i;
	pthread_t tids[32];
	struct upload up = { .im = im };
	char *after = NULL;
	size_t nrows = 0, ncut = 0, cr = eng->cfg.chunk_rows;
	uint64_t cuts = 0;
	int rc = 0;

	pthread_mutex_init(&up.lock, NULL);
	pthread_cond_init(&up.cond, NULL);
	for (i = 0; i < workers && i < 32; i++) {
		if (pthread_create(&tids[i], NULL, upload_main, &up))
			break;
		started++;
	}
	if (!started)
		rc = -EAGAIN;
	if (!cache_spool_count(eng->cache, im->t->id, &nrows)) {
		atomic_store(&im->rows_planned, nrows);
		atomic_store(&im->chunks_planned, (nrows + cr - 1) / cr);
	}
	while (!rc) {
		struct chunk *c;
		size_t max;
		bool stop;

		pthread_mutex_lock(&up.lock);
		while (up.queued + up.busy >= started && !up.error)
			pthread_cond_wait(&up.cond, &up.lock);
		stop = up.error != 0;
		pthread_mutex_unlock(&up.lock);
		if (stop)
			break;
		c = calloc(1, sizeof(*c));
		if (!c) {
			rc = -ENOMEM;
			break;
		}
		max = api_budget_low(eng->api) ? 50 : eng->cfg.chunk_rows;
		rc = cache_spool_next(eng->cache, im->t->id, after, max,
				      &c->batch);
		if (rc || c->batch.n == 0) {
			cache_spool_batch_release(&c->batch);
			free(c);
			break;
		}
		/* small chunks while the budget is low: more of them */
		ncut += c->batch.n;
		cuts++;
		atomic_store(&im->chunks_planned,
			     cuts + (nrows > ncut ? (nrows - ncut + cr - 1) / cr
						  : 0));
		free(after);
		after = strdup(c->batch.last_key);
		pthread_mutex_lock(&up.lock);
		if (up.tail)
			up.tail->next = c;
		else
			up.head = c;
		up.tail = c;
		up.queued++;
		pthread_cond_broadcast(&up.cond);
		pthread_mutex_unlock(&up.lock);
		if (!after) {
			rc = -ENOMEM;
			break;
		}
	}
	pthread_mutex_lock(&up.lock);
	up.done = true;
	if (rc && !up.error)
		up.error = rc;
	pthread_cond_broadcast(&up.cond);
	pthread_mutex_unlock(&up.lock);
	for (i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	free(after);
	pthread_cond_destroy(&up.cond);
	pthread_mutex_destroy(&up.lock);
	if (up.error)
		return up.error;
	return up.failed ? -EIO : 0;
}

int fs_import_finish(struct fs_import *im)
{
	struct fs_engine *eng = im->eng;
	struct fs_table *t = im->t;
	char why[256];
	int rc = 0, crc;

	pthread_mutex_lock(&im->lock);
	/* nothing written since the last finish: its result stands (a dup's
	 * close, then the last close, with no write in between) */
	if (!im->dirty || (im->latched && !im->drift)) {
		rc = im->latched;
		goto out;
	}
	im->dirty = false;
	if (!im->drift && (im->plen || im->overlong)) {
		rc = take_line(im, im->partial, im->plen, im->overlong);
		im->plen = 0;
		im->overlong = false;
	}
	if (!rc && !im->drift)
		rc = spool_flush(im);
	if (im->drift || rc) {
		rc = im->drift ? -EINVAL : rc;
		crc = cache_spool_clear(eng->cache, t->id);
		(void)crc;
		if (!im->drift)
			set_state(im, IMPORT_FAILED, strerror(-rc));
		goto latch;
	}

	set_state(im, IMPORT_UPLOADING, NULL);
	/* the table is about to change: forget the cached version first, so
	 * a daemon killed mid-upload leaves no copy that a later mount would
	 * serve as fresh within its revalidate window */
	crc = fs_table_invalidate(eng, t);
	(void)crc;
	rc = upload(im);
	/* what landed changed the table: the next read must refetch */
	crc = fs_table_invalidate(eng, t);
	(void)crc;
	crc = cache_spool_clear(eng->cache, t->id);
	(void)crc;
	if (rc == -EACCES) {
		atomic_store(&t->write_refused_at, (int64_t)time(NULL));
		set_state(im, IMPORT_FAILED, "write access refused by the API");
	} else if (rc) {
		rc = rc == -EINVAL || rc == -ENOENT ? -EIO : rc;
		set_state(im, IMPORT_FAILED, strerror(-rc));
		if (rc != -EIO && rc != -ETIMEDOUT && rc != -EHOSTUNREACH)
			rc = -EIO;
	} else if (atomic_load(&im->quarantined)) {
		snprintf(why, sizeof(why),
			 "%" PRIuFAST64 " line%s quarantined in rejects.jsonl",
			 atomic_load(&im->quarantined),
			 atomic_load(&im->quarantined) == 1 ? "" : "s");
		set_state(im, IMPORT_DONE, why);
		rc = -EINVAL;
	} else {
		set_state(im, IMPORT_DONE, NULL);
	}
	log_notice("import into '%s': %" PRIuFAST64 " line%s, %" PRIuFAST64
		   " valid, %" PRIuFAST64 " quarantined, %" PRIuFAST64
		   " of %" PRIuFAST64 " chunk%s acknowledged: %s",
		   t->name, atomic_load(&im->lines),
		   atomic_load(&im->lines) == 1 ? "" : "s",
		   atomic_load(&im->valid), atomic_load(&im->quarantined),
		   atomic_load(&im->chunks_acked),
		   atomic_load(&im->chunks_sent),
		   atomic_load(&im->chunks_sent) == 1 ? "" : "s",
		   rc ? strerror(-rc) : "ok");
latch:
	if (rc)
		im->latched = rc;
out:
	atomic_store(&im->flushed, true);
	pthread_mutex_unlock(&im->lock);
	return rc;
}

static void import_persist(struct fs_import *im);

void fs_import_end(struct fs_import *im)
{
	struct fs_engine *eng = im->eng;
	bool unsent;
	int err;

	pthread_mutex_lock(&im->lock);
	unsent = im->dirty || im->latched;
	err = im->latched ? im->latched : -ECANCELED;
	pthread_mutex_unlock(&im->lock);

	pthread_mutex_lock(&eng->import_lock);
	im->open = false;
	/* still receiving: nothing was written (": > rows.jsonl", O_TRUNC
	 * alone: an empty import, done), or what was written was never sent
	 * (a spool error, dtfsctl's read error: failed) */
	if (im->state == IMPORT_RECEIVING) {
		if (unsent) {
			im->state = IMPORT_FAILED;
			snprintf(im->error, sizeof(im->error),
				 "nothing was sent: %s", strerror(-err));
		} else {
			im->state = IMPORT_DONE;
		}
		im->finished_at = (int64_t)time(NULL);
	}
	import_persist(im);
	/* the import lock goes; the status stays on the table */
	if (im->rejects) {
		fclose(im->rejects);
		im->rejects = NULL;
		im->rejects_fd = -1;
	}
	pthread_mutex_unlock(&eng->import_lock);
}

/* The "import" member of status.json (with its leading ",\n"); import_lock
 * held. Returns 0 or -ENOSPC. */
static int import_json(struct fs_import *im, char *buf, size_t size,
		       size_t *pos)
{
	char started[32], finished[32];
	struct fs_import_progress p;
	struct tm tm;
	time_t tt;
	int n, rc = 0;

	fs_import_progress(im, &p);
	snprintf(started, sizeof(started), "null");
	snprintf(finished, sizeof(finished), "null");
	tt = (time_t)im->started_at;
	if (im->started_at && gmtime_r(&tt, &tm))
		strftime(started, sizeof(started), "\"%Y-%m-%dT%H:%M:%SZ\"",
			 &tm);
	tt = (time_t)im->finished_at;
	if (im->finished_at && gmtime_r(&tt, &tm))
		strftime(finished, sizeof(finished),
			 "\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
	n = snprintf(buf + *pos, size - *pos,
		     ",\n  \"import\": {\n    \"state\": \"%s\",\n"
		     "    \"bytes_read\": %" PRIu64 ",\n"
		     "    \"lines_read\": %" PRIu64 ",\n"
		     "    \"rows_valid\": %" PRIu64 ",\n"
		     "    \"quarantined\": %" PRIu64 ",\n"
		     "    \"rows_planned\": %" PRIu64 ",\n"
		     "    \"rows_landed\": %" PRIu64 ",\n"
		     "    \"chunks_planned\": %" PRIu64 ",\n"
		     "    \"chunks_sent\": %" PRIu64 ",\n"
		     "    \"chunks_acknowledged\": %" PRIu64 ",\n"
		     "    \"retries\": %" PRIuFAST64 ",\n"
		     "    \"throttled_429\": %" PRIuFAST64 ",\n"
		     "    \"started\": %s,\n    \"finished\": %s,\n"
		     "    \"error\": ",
		     state_names[im->state], p.bytes, p.lines, p.valid,
		     p.quarantined, p.rows_planned, p.rows_landed,
		     p.chunks_planned, p.chunks_sent, p.chunks_acked,
		     atomic_load(&im->retries), atomic_load(&im->throttled),
		     started, finished);
	if (n < 0 || (size_t)n >= size - *pos)
		return -ENOSPC;
	*pos += (size_t)n;
	if (im->error[0])
		rc = fs_json_string(buf, size, pos, im->error);
	else if (*pos + 5 < size)
		*pos += (size_t)snprintf(buf + *pos, size - *pos, "null");
	if (!rc && *pos + 5 < size)
		*pos += (size_t)snprintf(buf + *pos, size - *pos, "\n  }");
	return rc;
}

void fs_import_progress(struct fs_import *im, struct fs_import_progress *p)
{
	p->bytes = atomic_load(&im->bytes);
	p->lines = atomic_load(&im->lines);
	p->valid = atomic_load(&im->valid);
	p->quarantined = atomic_load(&im->quarantined);
	p->rows_planned = atomic_load(&im->rows_planned);
	p->rows_landed = atomic_load(&im->rows_landed);
	p->chunks_planned = atomic_load(&im->chunks_planned) +
			    atomic_load(&im->chunks_resent);
	p->chunks_sent = atomic_load(&im->chunks_sent);
	p->chunks_acked = atomic_load(&im->chunks_acked);
	p->drift = atomic_load(&im->drift_seen);
}

/* Where the last import's status is kept for later processes (dtfsctl
 * status, another mount): next to its rejects file. malloc'ed. */
static char *import_status_path(struct fs_engine *eng, struct fs_table *t)
{
	char *rej = fs_table_rejects_path(eng, t), *p = NULL;

	if (rej && asprintf(&p, "%.*s.import", (int)(strlen(rej) - 6), rej) < 0)
		p = NULL;
	free(rej);
	return p;
}

/* Keep the finished import's status; import_lock held. A failure only
 * costs later processes the record: logged, not returned. */
static void import_persist(struct fs_import *im)
{
	char buf[4096], *path = import_status_path(im->eng, im->t), *tmp = NULL;
	size_t pos = 0;
	int fd;

	if (!path || asprintf(&tmp, "%s.tmp", path) < 0) {
		tmp = NULL;
		goto out;
	}
	if (import_json(im, buf, sizeof(buf), &pos))
		goto out;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		goto fail;
	if (write(fd, buf, pos) != (ssize_t)pos) {
		close(fd);
		goto fail;
	}
	if (close(fd) || rename(tmp, path))
		goto fail;
	goto out;
fail:
	log_warn("cannot keep the status of the import into '%s' in '%s': %s",
		 im->t->name, path, strerror(errno));
	unlink(tmp);
out:
	free(tmp);
	free(path);
}

int fs_import_status_json(struct fs_engine *eng, struct fs_table *t,
			  char *buf, size_t size, size_t *pos)
{
	int rc = 0;

	pthread_mutex_lock(&eng->import_lock);
	if (t->import) {
		rc = import_json(t->import, buf, size, pos);
	} else {
		/* none in this process: the last one any process kept */
		char *path = import_status_path(eng, t);
		int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
		ssize_t n;

		if (fd >= 0 && size - *pos > 64) {
			n = read(fd, buf + *pos, size - *pos - 8);
			if (n > 0 && (size_t)n < size - *pos - 8)
				*pos += (size_t)n;
		}
		if (fd >= 0)
			close(fd);
		free(path);
	}
	pthread_mutex_unlock(&eng->import_lock);
	return rc;
}
