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
 * Spooled values are "LINE\tF\tKEY\tROW" (diff.c): the line number lets a
 * row the server rejects after all be quarantined under its line. Before
 * sending, the spool is compared with the table's current version
 * (diff.c) and only the rows that differ are sent.
 *
 * One import per table at a time, across processes too: the import holds an
 * exclusive flock on a lock file beside its rejects file (rejects.jsonl
 * itself is replaced by rename).
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

#include "dirs.h"
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
	bool published;			/* status.json shows it: it received
					   bytes */
	bool replace;			/* the stream is the whole table */
	atomic_bool drift_seen;		/* drift, readable without im->lock */
	int latched;			/* error every later call returns */
	uint64_t lines_sent;		/* lines when last finished */

	char *partial;			/* an unterminated line */
	size_t plen, pcap;
	bool overlong;			/* the partial line passed max_line */
	struct api_csv_reader *csv;	/* rows.csv: records, not lines */

	char *keys[SPOOL_BATCH];	/* rows waiting for one spool txn */
	char *vals[SPOOL_BATCH];
	size_t nbatch;

	char *send;			/* spool of the rows to send */

	int lock_fd;			/* flock'ed: the import lock */
	char *rejects_path;		/* rejects.jsonl */
	char *rejects_tmp;		/* this round's rejects, renamed over
					   rejects.jsonl when it has any */
	FILE *rejects;			/* rejects_tmp, open while receiving
					   and sending */
	uint64_t round_q0;		/* quarantined before this round */

	/* status.json; counters are atomics, strings under import_lock */
	atomic_uint_fast64_t lines, valid, quarantined, chunks_sent,
		chunks_acked, retries, throttled, unchanged, to_send,
		deleted;
	const char *route;		/* "upsert", "rows", "job" or NULL */
	/* progress totals (status.json and dtfsctl's progress line) */
	atomic_uint_fast64_t bytes, rows_landed, chunks_planned, chunks_resent;
	enum import_state state;
	char error[512];
	char writer[48];		/* how the writer ended; "" = close() */
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
	if (im->rejects) {
		fclose(im->rejects);
		unlink(im->rejects_tmp);
	}
	if (im->lock_fd >= 0)
		close(im->lock_fd);
	free(im->rejects_path);
	free(im->rejects_tmp);
	api_csv_reader_free(im->csv);
	api_schema_release(&im->schema);
	free(im->send);
	free(im->partial);
	pthread_mutex_destroy(&im->rejects_lock);
	pthread_mutex_destroy(&im->lock);
	free(im);
}

void fs_import_table_release(struct fs_table *t)
{
	if (t->import_open != t->import)
		import_free(t->import_open);
	import_free(t->import);
	t->import = t->import_open = NULL;
}

/* path + suffix, malloc'ed */
static char *path_with(const char *path, const char *suffix)
{
	size_t n = strlen(path) + strlen(suffix) + 1;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s%s", path, suffix);
	return p;
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
	closing = t->import_open && t->import_open->open &&
		  atomic_load(&t->import_open->flushed);
	pthread_mutex_unlock(&eng->import_lock);
	return closing;
}

/*
 * Take the table's import lock (flock of REJECTS.lock). close()
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
	im->lock_fd = -1;
	im->send = fs_spool_name(t, "send");
	if (!im->send) {
		rc = -ENOMEM;
		goto fail;
	}

	/* the import lock, across processes: flock REJECTS.lock (its
	 * directory made again if a cleanup removed it) */
	rc = dirs_make(eng->rejects_dir);
	if (rc) {
		log_err("cannot create '%s': %s", eng->rejects_dir,
			strerror(-rc));
		goto fail;
	}
	im->rejects_path = fs_table_rejects_path(eng, t);
	path = im->rejects_path ? path_with(im->rejects_path, ".lock") : NULL;
	im->rejects_tmp = im->rejects_path
				  ? path_with(im->rejects_path, ".new")
				  : NULL;
	if (!path || !im->rejects_tmp) {
		rc = -ENOMEM;
		goto fail;
	}
	im->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (im->lock_fd < 0) {
		rc = -errno;
		log_err("cannot open '%s': %s", path, strerror(errno));
		goto fail;
	}
	rc = take_import_lock(eng, t, im->lock_fd);
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

	/* nothing visible changes until bytes arrive (round_begin):
	 * opening for writing and closing is not an import */
	rc = cache_spool_clear(eng->cache, t->id);
	if (!rc)
		rc = cache_spool_clear(eng->cache, im->send);
	if (rc)
		goto fail;

	im->open = true;
	im->state = IMPORT_RECEIVING;
	im->started_at = (int64_t)time(NULL);
	pthread_mutex_lock(&eng->import_lock);
	if (t->import_open != t->import)
		import_free(t->import_open);
	t->import_open = im;
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

void fs_import_set_replace(struct fs_import *im, bool replace)
{
	pthread_mutex_lock(&im->lock);
	im->replace = replace;
	pthread_mutex_unlock(&im->lock);
}

/*
 * The first bytes of a round (an import: the bytes between two finishes):
 * the import becomes the one status.json shows, and its rejects go to a
 * file of their own, renamed over rejects.jsonl at the end only when the
 * round quarantined lines (round_end). im->lock held.
 */
static int round_begin(struct fs_import *im)
{
	struct fs_engine *eng = im->eng;
	struct fs_table *t = im->t;
	int fd;

	if (im->rejects)
		return 0;
	fd = open(im->rejects_tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		  0600);
	if (fd < 0 || !(im->rejects = fdopen(fd, "w"))) {
		int rc = -errno;

		if (fd >= 0)
			close(fd);
		log_err("cannot open '%s': %s", im->rejects_tmp,
			strerror(-rc));
		return rc;
	}
	im->round_q0 = atomic_load(&im->quarantined);
	if (!im->published) {
		pthread_mutex_lock(&eng->import_lock);
		if (t->import != im)
			import_free(t->import);
		t->import = im;
		im->published = true;
		pthread_mutex_unlock(&eng->import_lock);
	}
	return 0;
}

/* The end of a round: its rejects replace rejects.jsonl if it has any
 * (rejects.jsonl keeps the lines of the last import that had some). */
static void round_end(struct fs_import *im)
{
	bool any;

	if (!im->rejects)
		return;
	pthread_mutex_lock(&im->rejects_lock);
	any = atomic_load(&im->quarantined) > im->round_q0;
	fclose(im->rejects);
	im->rejects = NULL;
	pthread_mutex_unlock(&im->rejects_lock);
	if (any && rename(im->rejects_tmp, im->rejects_path))
		log_err("cannot write '%s': %s", im->rejects_path,
			strerror(errno));
	else if (!any)
		unlink(im->rejects_tmp);
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
	FILE *f;

	atomic_fetch_add(&im->quarantined, 1);
	pthread_mutex_lock(&im->rejects_lock);
	f = im->rejects;
	if (!f) {	/* cannot happen: a round is open while lines come */
		pthread_mutex_unlock(&im->rejects_lock);
		return;
	}
	fprintf(f, "{\"%s\": %" PRIu64 ", \"error\": ",
		im->csv ? "record" : "line", line);
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

/* Row s[0..n) of line (or record) `line`, written as text[0..tn): to
 * the spool, or quarantined. Returns 0 or a fatal error. */
static int take_row(struct fs_import *im, uint64_t line, const char *s,
		    size_t n, const char *text, size_t tn)
{
	char *row = NULL, *key = NULL, *error = NULL, *val;
	char msg[96];
	int rc;

	rc = api_row_validate(&im->schema, s, n, &row, &key, &error);
	if (rc == -EINVAL) {
		quarantine(im, line, error ? error : "invalid row", text, tn);
		free(error);
		return 0;
	}
	if (rc == -ENOENT) {
		char why[400];

		snprintf(why, sizeof(why), "schema drift: %.380s",
			 error ? error : "unknown column");
		quarantine(im, line, why, text, tn);
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
		quarantine(im, line, msg, text, tn);
		free(row);
		free(key);
		return 0;
	}
	atomic_fetch_add(&im->valid, 1);
	val = fs_spooled_format(line, '-', key, row);
	free(row);
	if (!val) {
		free(key);
		return -ENOMEM;
	}
	im->keys[im->nbatch] = key;
	im->vals[im->nbatch] = val;
	if (++im->nbatch == SPOOL_BATCH)
		return spool_flush(im);
	return 0;
}

/* One complete line (without its '\n'). Returns 0 or a fatal error. */
static int take_line(struct fs_import *im, const char *s, size_t n,
		     bool overlong)
{
	uint64_t line = atomic_fetch_add(&im->lines, 1) + 1;
	char msg[96];

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
	return take_row(im, line, s, n, s, n);
}

/* One CSV record (api_csv_reader's callback). */
static int take_record(void *arg, const struct api_csv_record *rec)
{
	struct fs_import *im = arg;

	atomic_fetch_add(&im->lines, 1);
	if (rec->error) {
		quarantine(im, rec->record, rec->error, rec->text,
			   rec->text_len);
		return 0;
	}
	return take_row(im, rec->record, rec->row, rec->row_len, rec->text,
			rec->text_len);
}

/* The CSV reader's result: a refused header stops the import like drift
 * (nothing will be sent). */
static int csv_result(struct fs_import *im, int rc)
{
	const char *why = api_csv_reader_error(im->csv);
	char msg[512];

	if (!why || (rc != -ENOENT && rc != -EINVAL))
		return rc;
	snprintf(msg, sizeof(msg), "%s: %s",
		 rc == -ENOENT ? "schema drift" : "bad header", why);
	quarantine(im, 0, msg, "", 0);
	log_err("import of rows.csv into '%s' stopped: %s; nothing was sent",
		im->t->name, msg);
	set_state(im, IMPORT_FAILED, msg);
	im->drift = true;
	return -EINVAL;
}

int fs_import_use_csv(struct fs_import *im)
{
	/* with versions (cursor) the API has nulls: an unquoted empty field
	 * is no value, as rows.csv writes it; the platform has none */
	return api_csv_reader_new(&im->schema, im->eng->cfg.max_line,
				  im->eng->caps.versions ? API_CSV_EMPTY_ABSENT
							 : 0,
				  &im->csv);
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
	if (len == 0)
		goto out;
	rc = round_begin(im);
	if (rc)
		goto out;
	if (!im->dirty)	/* the first bytes, or more after a flush */
		set_state(im, IMPORT_RECEIVING, NULL);
	im->dirty = true;
	atomic_store(&im->flushed, false);
	atomic_fetch_add(&im->bytes, len);
	if (im->csv) {
		rc = csv_result(im, api_csv_reader_feed(im->csv, buf, len,
							take_record, im));
		s = end;
	}
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

/* The row and line of a spool value; NULL for a row set aside ('x'). */
static const char *spooled_row(const char *val, uint64_t *line)
{
	struct fs_spooled s;

	if (fs_spooled_parse(val, &s)) {
		*line = 0;
		return val;
	}
	*line = s.line;
	return s.flag == 'x' ? NULL : s.row;
}

static int send_rows(struct fs_import *im, struct cache_spool_batch *b);

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
	if (im->eng->caps.row_ops) {
		free(rows);
		free(lines);
		return send_rows(im, b);
	}
	n = 0;
	for (i = 0; i < b->n; i++) {
		rows[n] = spooled_row(b->rows[i], &lines[n]);
		if (rows[n])	/* else set aside (max_rows): not sent */
			n++;
	}
	if (n == 0) {
		free(rows);
		free(lines);
		return 0;
	}
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
static int upload(struct fs_import *im, const char *spool)
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
	if (eng->caps.row_ops)
		cr = 1;		/* one request per row */
	nrows = atomic_load(&im->to_send);
	atomic_store(&im->chunks_planned, (nrows + cr - 1) / cr);
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
		if (eng->caps.row_ops)
			max = 1;	/* one request per row: a row per worker */
		rc = cache_spool_next(eng->cache, spool, after, max,
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

/* ---- the production dialect: single rows, or one CSV job ------------- */

/*
 * Send one spooled row by key: an update when the version had the key, a
 * create when it did not, switching when the table changed meanwhile (a
 * create refused as existing becomes an update, an update of a missing
 * key a create). Returns 0 (sent, or quarantined when the API refuses the
 * row or the table is full) or a fatal error.
 */
static int send_row(struct fs_import *im, const char *val)
{
	struct fs_engine *eng = im->eng;
	struct fs_spooled s;
	bool update;
	char *key = NULL;
	size_t len;
	int rc, tries;

	if (fs_spooled_parse(val, &s))
		return -EPROTO;
	if (s.flag == 'x')
		return 0;
	rc = api_key_string(s.key, s.klen, &key);
	if (rc)
		return rc == -EINVAL ? -EPROTO : rc;
	update = s.flag != 'n';
	len = strlen(s.row);
	for (tries = 0; tries < 3; tries++) {
		atomic_fetch_add(&im->chunks_sent, 1);
		if (tries)	/* one request more than planned */
			atomic_fetch_add(&im->chunks_resent, 1);
		rc = update ? api_row_update(eng->api, im->t->id, key, s.row,
					     len)
			    : api_row_create(eng->api, im->t->id, s.row, len);
		if (update && rc == -ENOENT)
			update = false;
		else if (!update && rc == -EEXIST)
			update = true;
		else
			break;
	}
	if (rc == 0) {
		atomic_fetch_add(&im->chunks_acked, 1);
		atomic_fetch_add(&im->rows_landed, 1);
	}
	if (rc == -EINVAL) {
		quarantine(im, s.line, "refused by the API (its message is in "
			   "the log)", s.row, len);
		rc = 0;
	} else if (rc == -ENOSPC) {
		quarantine(im, s.line, "refused by the API: the table is at "
			   "its row limit", s.row, len);
		rc = 0;
	}
	free(key);
	return rc;
}

static int send_rows(struct fs_import *im, struct cache_spool_batch *b)
{
	size_t i;
	int rc = 0;

	for (i = 0; i < b->n && !rc; i++)
		rc = send_row(im, b->rows[i]);
	return rc;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Rows that would take the table past max_rows: the new keys of the
 * latest lines beyond what the table has room for are quarantined and set
 * aside ('x') in the spool. Returns how many, or a negative errno.
 */
struct over_max {
	struct fs_import *im;
	const char *spool;
	uint64_t *lines, n, cap;	/* new keys' lines */
	uint64_t cut, over;
	const char *why;
};

static int new_line(void *arg, const struct fs_spooled *s)
{
	struct over_max *o = arg;

	if (s->flag == 'n' && o->n < o->cap)
		o->lines[o->n++] = s->line;
	return 0;
}

/* Quarantine a new row from the cut on and mark it 'x' (not sent). */
static int set_aside(void *arg, const struct fs_spooled *s)
{
	struct over_max *o = arg;
	struct fs_import *im = o->im;
	char *key, *val;
	int rc;

	if (s->flag != 'n' || s->line < o->cut)
		return 0;
	quarantine(im, s->line, o->why, s->row, strlen(s->row));
	o->over++;
	key = strndup(s->key, s->klen);
	val = key ? fs_spooled_format(s->line, 'x', key, s->row) : NULL;
	rc = val ? cache_spool_put(im->eng->cache, o->spool, 1,
				   (const char *const *)&key,
				   (const char *const *)&val)
		 : -ENOMEM;
	free(key);
	free(val);
	return rc;
}

static int64_t set_aside_over_max(struct fs_import *im, const char *spool,
				  const struct fs_diff *d)
{
	struct fs_engine *eng = im->eng;
	struct over_max o = { .im = im, .spool = spool };
	uint64_t room;
	char why[128];
	int rc;

	room = d->current >= eng->cfg.max_rows ? 0
					       : eng->cfg.max_rows - d->current;
	if (d->added <= room)
		return 0;
	o.lines = malloc(d->added * sizeof(*o.lines));
	if (!o.lines)
		return -ENOMEM;
	o.cap = d->added;
	/* which lines: the new keys in file order, the first `room` kept */
	rc = fs_spool_walk(eng, spool, new_line, &o);
	if (rc)
		goto out;
	qsort(o.lines, o.n, sizeof(*o.lines), cmp_u64);
	o.cut = room < o.n ? o.lines[room] : UINT64_MAX;
	snprintf(why, sizeof(why),
		 "the table would pass max_rows (%u rows): not sent",
		 eng->cfg.max_rows);
	o.why = why;
	rc = fs_spool_walk(eng, spool, set_aside, &o);
	log_err("import into '%s': %" PRIu64 " new rows would take the table "
		"past max_rows (%u): quarantined", im->t->name, o.over,
		eng->cfg.max_rows);
out:
	free(o.lines);
	return rc ? rc : (int64_t)o.over;
}

/*
 * Where sending rows one by one stops being cheaper than one CSV job.
 * Rows: one request each, at the budget's rate (or upload_workers per
 * round trip when unbounded). Job: POST, upload, about JOB_POLLS polls,
 * then the table read back (to find rows the job did not land), plus the
 * platform's processing time, JOB_SECONDS by our estimate. The job wins
 * when the rows would take longer: n > rate * JOB_SECONDS + its requests.
 * Under the default 300/60 budget that is about 25 rows plus the read-back
 * pages (36 for a 3000-row table).
 */
#define JOB_SECONDS 5.0
#define JOB_POLLS 3
#define RTT_GUESS_S 0.05

static uint64_t job_threshold(struct fs_import *im, const struct fs_diff *d)
{
	struct fs_engine *eng = im->eng;
	double rate = api_budget_rate(eng->api);
	double unbounded = eng->cfg.upload_workers / RTT_GUESS_S;
	uint64_t pages, size = eng->caps.max_page_size ? eng->caps.max_page_size
						       : 500;

	if (eng->cfg.job_rows != FS_CONFIG_AUTO)
		return eng->cfg.job_rows;
	if (rate <= 0 || rate > unbounded)
		rate = unbounded;
	pages = (d->current + d->added + size - 1) / size + 1;
	return (uint64_t)(rate * JOB_SECONDS) + 2 + JOB_POLLS + pages;
}

/* The spooled rows to send, in one CSV (header first); 'x' rows left out. */
struct csv_out {
	const struct api_schema *schema;
	char **csv;
	size_t *len, cap;
};

static int csv_row(void *arg, const struct fs_spooled *s)
{
	struct csv_out *c = arg;
	int rc;

	if (s->flag == 'x')
		return 0;
	if (!*c->csv) {	/* the header, before the first record */
		rc = api_csv_encode(c->schema, NULL, NULL, 0, c->csv, c->len);
		if (rc)
			return rc;
		c->cap = *c->len + 1;
	}
	return api_csv_encode_lines(c->schema, s->row, strlen(s->row), c->csv,
				    c->len, &c->cap);
}

static int spool_csv(struct fs_import *im, const char *spool, char **csv,
		     size_t *len)
{
	struct csv_out c = { .schema = &im->schema, .csv = csv, .len = len };
	int rc;

	*csv = NULL;
	*len = 0;
	rc = fs_spool_walk(im->eng, spool, csv_row, &c);
	if (rc) {
		free(*csv);
		*csv = NULL;
	}
	return rc;
}

struct missing_rows {
	struct fs_import *im;
	uint64_t failed;	/* rows the job counted failed */
	uint64_t n;
};

/* A row of the read-back diff: sent, and not in the table as sent. */
static int missing_row(void *arg, const struct fs_spooled *s)
{
	struct missing_rows *mr = arg;
	char why[256];

	/* the table's own rows (line 0) and rows set aside were never sent */
	if (s->line == 0 || s->flag == 'x')
		return 0;
	snprintf(why, sizeof(why),
		 s->flag == 'n' ? "not in the table after the CSV import job "
				  "(the job counted %" PRIu64 " failed rows)"
				: "the table holds other values after the CSV "
				  "import job (the job counted %" PRIu64
				  " failed rows)",
		 mr->failed);
	quarantine(mr->im, s->line, why, s->row, strlen(s->row));
	mr->n++;
	return 0;
}

/*
 * One CSV import job (Append), then the table read back and compared with
 * what was sent: rows not there, or there with other values, go to
 * rejects.jsonl under their lines. A Failed job is -EIO with the
 * platform's message in the log and status.json.
 */
static int send_job(struct fs_import *im, const char *spool)
{
	struct fs_engine *eng = im->eng;
	struct fs_table *t = im->t;
	struct api_job job = { 0 };
	struct missing_rows mr = { 0 };
	struct fs_diff d;
	char *csv = NULL, *missing = NULL, why[256];
	size_t len = 0;
	uint64_t nmissing = 0;
	int rc, crc;

	rc = spool_csv(im, spool, &csv, &len);
	if (rc) {
		log_err("import into '%s': cannot write the CSV: %s", t->name,
			strerror(-rc));
		return rc == -EINVAL ? -EIO : rc;
	}
	atomic_store(&im->chunks_planned, 1);	/* the job is the one chunk */
	atomic_fetch_add(&im->chunks_sent, 1);
	rc = api_import_csv(eng->api, t->id, csv, len, false, &job);
	free(csv);
	if (rc == -EIO && job.status && !strcmp(job.status, "Failed")) {
		snprintf(why, sizeof(why), "CSV import job failed: %s",
			 job.error ? job.error : "no reason given");
		log_err("import into '%s': %s", t->name, why);
		set_state(im, IMPORT_UPLOADING, why);
	}
	if (rc)
		goto out;
	atomic_fetch_add(&im->chunks_acked, 1);

	/* read back: what the job did not land is found by comparing */
	crc = fs_table_invalidate(eng, t);
	(void)crc;
	missing = fs_spool_name(t, "missing");
	if (!missing) {
		rc = -ENOMEM;
		goto out;
	}
	rc = fs_diff_spool(eng, t, &im->schema, spool, missing, NULL, &d);
	if (rc) {
		log_err("import into '%s': the CSV job succeeded but the table "
			"cannot be read back to check it: %s", t->name,
			strerror(-rc));
		rc = -EIO;
		goto out;
	}
	mr.im = im;
	mr.failed = job.failed;
	rc = fs_spool_walk(eng, missing, missing_row, &mr);
	nmissing = mr.n;
	if (!rc) {
		uint64_t sent = atomic_load(&im->to_send);

		atomic_store(&im->rows_landed,
			     sent > nmissing ? sent - nmissing : 0);
	}
	if (job.failed)
		log_warn("import into '%s': the CSV job counted %" PRIu64
			 " failed rows", t->name, job.failed);
out:
	if (missing) {
		crc = cache_spool_clear(eng->cache, missing);
		(void)crc;
	}
	free(missing);
	api_job_release(&job);
	return rc;
}

/*
 * Send what differs from the table's current version (diff.c). When the
 * version cannot be read for the comparison, every spooled row is sent:
 * an upsert of an unchanged row changes nothing, and the upload meets
 * whatever made the read fail. A replace (the stream was the whole table)
 * also deletes the rows the stream lacks, after every row landed and only
 * when no line was quarantined; it cannot go on without the comparison.
 * Deletes go one row at a time in both dialects: a ReplaceAll CSV job would
 * re-send every row through CSV, which cannot tell an absent value from an
 * empty one (the emulator, like the platform, reads an empty cell as a
 * value), so unchanged rows would change.
 */
static int send_changed(struct fs_import *im)
{
	struct fs_engine *eng = im->eng;
	struct fs_table *t = im->t;
	const char *spool = im->send;
	bool del = im->replace && !atomic_load(&im->quarantined);
	bool job = false;
	char *absent = NULL;
	struct fs_diff d;
	uint64_t ndel = 0, gone = 0;
	size_t n = 0;
	int rc, crc;

	if (!im->replace && !cache_spool_count(eng->cache, t->id, &n) && !n)
		return 0;	/* no valid row: nothing to compare or send */
	if (del && !(absent = fs_spool_name(t, "absent")))
		return -ENOMEM;
	rc = fs_diff_spool(eng, t, &im->schema, t->id, im->send, absent, &d);
	if (rc && im->replace) {
		log_err("replace of '%s' cannot compare the file with the "
			"table: nothing was sent", t->name);
		goto out;
	} else if (rc) {
		log_warn("import into '%s': sending every row", t->name);
		spool = t->id;
		if (cache_spool_count(eng->cache, spool, &n))
			n = (size_t)atomic_load(&im->valid);
		atomic_store(&im->to_send, n);
	} else {
		int64_t over = 0;

		if (eng->cfg.max_rows) {
			over = set_aside_over_max(im, spool, &d);
			if (over < 0) {
				rc = (int)over;
				goto out;
			}
		}
		n = d.changed + d.added - (uint64_t)over;
		ndel = del && !over ? d.absent : 0;
		atomic_store(&im->unchanged, d.same);
		atomic_store(&im->to_send, n);
		if (n == 0 && ndel == 0)
			goto out;	/* nothing differs: the table and its
					   cached version stay as they are */
		if (eng->caps.csv_jobs && n >= job_threshold(im, &d))
			job = true;
	}
	im->route = job ? "job" : eng->caps.row_ops ? "rows" : "upsert";
	log_info("import into '%s': %zu rows to send by %s, %" PRIu64
		 " to delete", t->name, n,
		 job ? "one CSV import job" : eng->caps.row_ops
						  ? "single-row requests"
						  : "upsert chunks", ndel);
	/* the table is about to change: forget the cached version first, so
	 * a daemon killed mid-upload leaves no copy that a later mount would
	 * serve as fresh within its revalidate window */
	crc = fs_table_invalidate(eng, t);
	(void)crc;
	rc = n ? job ? send_job(im, spool) : upload(im, spool) : 0;
	/* a line the API refused is quarantined: delete nothing */
	if (!rc && ndel && !atomic_load(&im->quarantined)) {
		rc = fs_replace_delete(eng, t, &im->schema, absent, &gone);
		atomic_store(&im->deleted, gone);
	}
	/* what landed changed the table: the next read must refetch */
	crc = fs_table_invalidate(eng, t);
	(void)crc;
out:
	if (absent) {
		crc = cache_spool_clear(eng->cache, absent);
		(void)crc;
	}
	free(absent);
	return rc;
}

/*
 * Send what was written since the last finish. final: the stream ended,
 * an unterminated last line is a line; otherwise (fs_import_commit) it
 * waits for the rest of its bytes.
 */
static int finish(struct fs_import *im, bool final)
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
	/* a commit with no complete line since the last one: wait */
	if (!final && !im->drift && atomic_load(&im->lines) == im->lines_sent &&
	    !im->nbatch) {
		rc = im->latched;
		goto out;
	}
	im->dirty = !final && (im->plen || im->overlong ||
			       (im->csv && api_csv_reader_pending(im->csv)));
	if (final && im->csv && !im->drift) {
		/* the last record, without its line end; a header at all */
		rc = round_begin(im);
		if (!rc)
			rc = csv_result(im, api_csv_reader_end(im->csv,
							       take_record,
							       im));
	}
	if (final && !im->drift && (im->plen || im->overlong)) {
		rc = round_begin(im);
		if (!rc)
			rc = take_line(im, im->partial, im->plen,
				       im->overlong);
		im->plen = 0;
		im->overlong = false;
	}
	im->lines_sent = atomic_load(&im->lines);
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
	rc = send_changed(im);
	crc = cache_spool_clear(eng->cache, t->id);
	(void)crc;
	crc = cache_spool_clear(eng->cache, im->send);
	(void)crc;
	if (rc == -EACCES) {
		atomic_store(&t->write_refused_at, (int64_t)time(NULL));
		set_state(im, IMPORT_FAILED, "write access refused by the API");
	} else if (rc) {
		rc = rc == -EINVAL || rc == -ENOENT ? -EIO : rc;
		/* a failed job's message, when there is one, says more */
		set_state(im, IMPORT_FAILED, im->error[0] ? NULL
							   : strerror(-rc));
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
		   " unchanged, %" PRIuFAST64 " of %" PRIuFAST64
		   " chunk%s acknowledged: %s",
		   t->name, atomic_load(&im->lines),
		   atomic_load(&im->lines) == 1 ? "" : "s",
		   atomic_load(&im->valid), atomic_load(&im->quarantined),
		   atomic_load(&im->unchanged),
		   atomic_load(&im->chunks_acked),
		   atomic_load(&im->chunks_sent),
		   atomic_load(&im->chunks_sent) == 1 ? "" : "s",
		   rc ? strerror(-rc) : "ok");
latch:
	round_end(im);
	if (rc)
		im->latched = rc;
out:
	atomic_store(&im->flushed, !im->dirty);
	pthread_mutex_unlock(&im->lock);
	return rc;
}

int fs_import_finish(struct fs_import *im)
{
	return finish(im, true);
}

int fs_import_commit(struct fs_import *im)
{
	return finish(im, false);
}

static void import_persist(struct fs_import *im);

void fs_import_end(struct fs_import *im)
{
	struct fs_engine *eng = im->eng;
	struct fs_table *t = im->t;
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
	/* the import lock goes; the status stays on the table (and is kept
	 * for later processes), if the import ever received a byte (else it
	 * goes too) */
	if (t->import_open == im)
		t->import_open = NULL;
	if (im->published)
		import_persist(im);
	if (im->rejects) {
		fclose(im->rejects);
		im->rejects = NULL;
		unlink(im->rejects_tmp);
	}
	if (im->lock_fd >= 0) {
		close(im->lock_fd);
		im->lock_fd = -1;
	}
	pthread_mutex_unlock(&eng->import_lock);
	if (!im->published)
		import_free(im);
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
		     "    \"rows_unchanged\": %" PRIuFAST64 ",\n"
		     "    \"rows_to_send\": %" PRIu64 ",\n"
		     "    \"rows_landed\": %" PRIu64 ",\n"
		     "    \"rows_deleted\": %" PRIuFAST64 ",\n"
		     "    \"replace\": %s,\n"
		     "    \"route\": %s%s%s,\n"
		     "    \"chunks_planned\": %" PRIu64 ",\n"
		     "    \"chunks_sent\": %" PRIu64 ",\n"
		     "    \"chunks_acknowledged\": %" PRIu64 ",\n"
		     "    \"retries\": %" PRIuFAST64 ",\n"
		     "    \"throttled_429\": %" PRIuFAST64 ",\n"
		     "    \"started\": %s,\n    \"finished\": %s,\n"
		     "    \"writer\": \"%s\",\n"
		     "    \"error\": ",
		     state_names[im->state], p.bytes, p.lines, p.valid,
		     p.quarantined, atomic_load(&im->unchanged), p.rows_planned,
		     p.rows_landed, atomic_load(&im->deleted),
		     im->replace ? "true" : "false", im->route ? "\"" : "",
		     im->route ? im->route : "null", im->route ? "\"" : "",
		     p.chunks_planned, p.chunks_sent, p.chunks_acked,
		     atomic_load(&im->retries), atomic_load(&im->throttled),
		     started, finished, im->writer[0] ? im->writer : "closed");
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

void fs_import_set_writer(struct fs_import *im, const char *how)
{
	pthread_mutex_lock(&im->eng->import_lock);
	snprintf(im->writer, sizeof(im->writer), "%s", how ? how : "");
	pthread_mutex_unlock(&im->eng->import_lock);
}

void fs_import_progress(struct fs_import *im, struct fs_import_progress *p)
{
	p->bytes = atomic_load(&im->bytes);
	p->lines = atomic_load(&im->lines);
	p->valid = atomic_load(&im->valid);
	p->quarantined = atomic_load(&im->quarantined);
	p->rows_planned = atomic_load(&im->to_send);
	p->unchanged = atomic_load(&im->unchanged);
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

int fs_import_fd(struct fs_engine *eng, struct fs_table *t, int fd,
		 bool replace, bool csv)
{
	struct fs_import *im = NULL;
	size_t size = 1 << 16;
	off_t off = 0;
	char *buf;
	ssize_t n;
	int rc, frc;

	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	rc = fs_import_begin(eng, t, &im);
	if (rc)
		goto out;
	im->replace = replace;
	if (csv)
		rc = fs_import_use_csv(im);
	while (!rc) {
		n = pread(fd, buf, size, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			log_err("import into '%s': cannot read the file: %s",
				t->name, strerror(errno));
			break;
		}
		if (n == 0)
			break;
		off += n;
		rc = fs_import_write(im, buf, (size_t)n);
	}
	/* a read error sends nothing; drift has already stopped the import */
	if (!rc || rc == -EINVAL) {
		frc = fs_import_finish(im);
		if (!rc)
			rc = frc;
	}
	fs_import_end(im);
out:
	free(buf);
	return rc;
}
