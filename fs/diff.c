/*
 * diff: only what changed is sent.
 *
 * An import spools its rows keyed by primary key (import.c). Before
 * anything is sent, the table's current version is revalidated and read
 * whole through the engine's reader (the cache, refetched when stale), each
 * of its lines validated against the import's schema into the same
 * canonical form as a spooled row, and spooled too, under a second spool
 * name. Both spools are sorted by key, so one merge walk classifies every
 * row with flat memory whatever the table's size:
 *
 *   same     spooled row byte-identical to the version's: not sent;
 *   changed  the key is in the version with other bytes (an update);
 *   added    a key the version lacks (a create);
 *   absent   a key of the version the import does not have (what a
 *            replace would delete: issue 12 builds on it).
 *
 * Rows to send go to an output spool with their line number and a flag
 * saying whether the key is in the version ('u') or not ('n'), which the
 * production dialect needs to choose PUT or POST. The same walk, run after
 * an upload against the version read back, finds the rows that did not
 * land (import.c quarantines them).
 *
 * Spool values are "LINE\tF\tKEY\tROW" (fs_spooled_parse): the key is the
 * encoded key of api_row_validate, a JSON array, which holds no raw tab.
 */
#include "engine_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define DIFF_BATCH 256
#define DIFF_READ (256 * 1024)

char *fs_spool_name(const struct fs_table *t, const char *what)
{
	size_t n = strlen(t->id) + strlen(what) + 2;
	char *s;

	if (!what[0])
		return strdup(t->id);
	s = malloc(n);
	/* API ids go in URL paths: none holds a '/', so no id is another
	 * spool's name */
	if (s)
		snprintf(s, n, "%s/%s", t->id, what);
	return s;
}

char *fs_spooled_format(uint64_t line, char flag, const char *key,
			const char *row)
{
	size_t n = strlen(key) + strlen(row) + 32;
	char *s = malloc(n);

	if (s)
		snprintf(s, n, "%" PRIu64 "\t%c\t%s\t%s", line, flag, key, row);
	return s;
}

int fs_spooled_parse(const char *val, struct fs_spooled *out)
{
	const char *p, *k;
	char *end;

	out->line = strtoull(val, &end, 10);
	if (end == val || end[0] != '\t' || !end[1] || end[2] != '\t')
		return -EPROTO;
	out->flag = end[1];
	k = end + 3;
	p = strchr(k, '\t');
	if (!p)
		return -EPROTO;
	out->key = k;
	out->klen = (size_t)(p - k);
	out->row = p + 1;
	return 0;
}

int fs_spool_walk(struct fs_engine *eng, const char *spool,
		  int (*fn)(void *arg, const struct fs_spooled *s), void *arg)
{
	struct cache_spool_batch b = { 0 };
	char *after = NULL;
	size_t i;
	int rc;

	for (;;) {
		rc = cache_spool_next(eng->cache, spool, after, 256, &b);
		if (rc || b.n == 0)
			break;
		for (i = 0; i < b.n && !rc; i++) {
			struct fs_spooled s;

			if (!fs_spooled_parse(b.rows[i], &s))
				rc = fn(arg, &s);
		}
		free(after);
		after = b.last_key;
		b.last_key = NULL;
		cache_spool_batch_release(&b);
		if (rc)
			break;
	}
	cache_spool_batch_release(&b);
	free(after);
	return rc;
}

/* ---- a sorted walk over one spool ------------------------------------ */

struct walk {
	struct fs_engine *eng;
	const char *spool;
	struct cache_spool_batch b;
	size_t i;
	bool started, eof;
	struct fs_spooled cur;
};

static int walk_fill(struct walk *w)
{
	char *after = NULL;
	int rc;

	while (!w->eof && w->i >= w->b.n) {
		if (w->started) {
			if (!w->b.n) {
				w->eof = true;
				break;
			}
			after = w->b.last_key;
			w->b.last_key = NULL;
		}
		cache_spool_batch_release(&w->b);
		rc = cache_spool_next(w->eng->cache, w->spool, after,
				      DIFF_BATCH, &w->b);
		free(after);
		after = NULL;
		if (rc)
			return rc;
		w->started = true;
		w->i = 0;
		if (!w->b.n)
			w->eof = true;
	}
	if (w->eof)
		return 0;
	return fs_spooled_parse(w->b.rows[w->i], &w->cur);
}

static int walk_next(struct walk *w)
{
	w->i++;
	return walk_fill(w);
}

/* strcmp order of two keys given with lengths: the spool's (LMDB's
 * memcmp, shorter first on a tie) */
static int key_cmp(const struct fs_spooled *a, const struct fs_spooled *b)
{
	size_t n = a->klen < b->klen ? a->klen : b->klen;
	int c = memcmp(a->key, b->key, n);

	if (c)
		return c;
	return a->klen < b->klen ? -1 : a->klen > b->klen ? 1 : 0;
}

/* ---- a batch of spool puts -------------------------------------------- */

struct putter {
	struct fs_engine *eng;
	const char *spool;
	char *keys[DIFF_BATCH];
	char *vals[DIFF_BATCH];
	size_t n;
};

static int put_flush(struct putter *p)
{
	int rc = 0;
	size_t i;

	if (p->n && p->spool)
		rc = cache_spool_put(p->eng->cache, p->spool, p->n,
				     (const char *const *)p->keys,
				     (const char *const *)p->vals);
	for (i = 0; i < p->n; i++) {
		free(p->keys[i]);
		free(p->vals[i]);
	}
	p->n = 0;
	return rc;
}

/* Take ownership of key and val (both freed on error too). */
static int put_add(struct putter *p, char *key, char *val)
{
	if (!key || !val || !p->spool) {
		free(key);
		free(val);
		return p->spool ? -ENOMEM : 0;
	}
	p->keys[p->n] = key;
	p->vals[p->n] = val;
	if (++p->n == DIFF_BATCH)
		return put_flush(p);
	return 0;
}

static int put_spooled(struct putter *p, const struct fs_spooled *s,
		       char flag)
{
	char *key = strndup(s->key, s->klen);
	char *val = key ? fs_spooled_format(s->line, flag, key, s->row)
			: NULL;

	return put_add(p, key, val);
}

/* ---- the current version into a spool ---------------------------------- */

static int take_current_line(struct putter *p, const struct api_schema *schema,
			     const char *s, size_t n, uint64_t *rows,
			     uint64_t *unreadable)
{
	char *row = NULL, *key = NULL, *error = NULL;
	int rc;

	if (!n)
		return 0;
	(*rows)++;
	rc = api_row_validate(schema, s, n, &row, &key, &error);
	free(error);
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		/* a row the import's schema cannot read (a column added
		 * since): its key counts as new, so it is sent, never
		 * skipped */
		(*unreadable)++;
		return 0;
	}
	rc = put_add(p, key, fs_spooled_format(0, '-', key, row));
	free(row);
	return rc;
}

/* Append n bytes to the growing line *line (*len used of *cap). */
static int line_add(char **line, size_t *len, size_t *cap, const char *s,
		    size_t n)
{
	if (*len + n > *cap) {
		size_t c = *cap ? *cap : 4096;
		char *g;

		while (c < *len + n)
			c *= 2;
		g = realloc(*line, c);
		if (!g)
			return -ENOMEM;
		*line = g;
		*cap = c;
	}
	memcpy(*line + *len, s, n);
	*len += n;
	return 0;
}

/* Read the current version of t whole into the spool `cur`. Returns 0,
 * -ESTALE (it changed while read), or the reader's error. */
static int spool_current(struct fs_engine *eng, struct fs_table *t,
			 const struct api_schema *schema, const char *cur,
			 uint64_t *rows, uint64_t *unreadable)
{
	struct putter p = { .eng = eng, .spool = cur };
	struct fs_reader *rd = NULL;
	char *buf = NULL, *line = NULL;
	size_t llen = 0, lcap = 0, n;
	uint64_t off = 0;
	int rc;

	*rows = *unreadable = 0;
	rc = cache_spool_clear(eng->cache, cur);
	if (rc)
		return rc;
	rc = fs_reader_open_current(eng, t, &rd);
	if (rc)
		return rc;
	buf = malloc(DIFF_READ);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	for (;;) {
		const char *s, *end, *nl;

		rc = fs_reader_read(rd, off, buf, DIFF_READ, &n);
		if (rc || n == 0)
			break;
		off += n;
		s = buf;
		end = buf + n;
		while (s < end) {
			nl = memchr(s, '\n', (size_t)(end - s));
			if (!nl) {
				/* a line cut by the read: keep its head */
				rc = line_add(&line, &llen, &lcap, s,
					      (size_t)(end - s));
				if (rc)
					goto out;
				break;
			}
			if (llen) {
				rc = line_add(&line, &llen, &lcap, s,
					      (size_t)(nl - s));
				if (rc)
					goto out;
				rc = take_current_line(&p, schema, line, llen,
						       rows, unreadable);
				llen = 0;
			} else {
				rc = take_current_line(&p, schema, s,
						       (size_t)(nl - s), rows,
						       unreadable);
			}
			if (rc)
				goto out;
			s = nl + 1;
		}
	}
	if (!rc && llen)
		rc = take_current_line(&p, schema, line, llen, rows,
				       unreadable);
	if (!rc)
		rc = put_flush(&p);
out:
	p.spool = NULL;
	(void)put_flush(&p);
	fs_reader_close(rd);
	free(buf);
	free(line);
	return rc;
}

/* ---- the merge walk ---------------------------------------------------- */

static int merge(struct fs_engine *eng, const char *in, const char *cur,
		 const char *out, const char *absent, struct fs_diff *d)
{
	struct walk a = { .eng = eng, .spool = in };
	struct walk b = { .eng = eng, .spool = cur };
	struct putter po = { .eng = eng, .spool = out };
	struct putter pa = { .eng = eng, .spool = absent };
	int rc;

	rc = walk_fill(&a);
	if (!rc)
		rc = walk_fill(&b);
	while (!rc && !a.eof) {
		int c;

		if (a.cur.flag == 'x') {	/* set aside: never sent */
			rc = walk_next(&a);
			continue;
		}
		c = b.eof ? -1 : key_cmp(&a.cur, &b.cur);

		if (c > 0) {
			d->absent++;
			rc = put_spooled(&pa, &b.cur, '-');
			if (!rc)
				rc = walk_next(&b);
			continue;
		}
		if (c == 0 && !strcmp(a.cur.row, b.cur.row)) {
			d->same++;
		} else if (c == 0) {
			d->changed++;
			rc = put_spooled(&po, &a.cur, 'u');
		} else {
			d->added++;
			rc = put_spooled(&po, &a.cur, 'n');
		}
		if (!rc && c == 0)
			rc = walk_next(&b);
		if (!rc)
			rc = walk_next(&a);
	}
	while (!rc && !b.eof) {
		d->absent++;
		rc = put_spooled(&pa, &b.cur, '-');
		if (!rc)
			rc = walk_next(&b);
	}
	if (!rc)
		rc = put_flush(&po);
	if (!rc)
		rc = put_flush(&pa);
	po.spool = pa.spool = NULL;
	(void)put_flush(&po);
	(void)put_flush(&pa);
	cache_spool_batch_release(&a.b);
	cache_spool_batch_release(&b.b);
	return rc;
}

#define DIFF_TRIES 3

int fs_diff_spool(struct fs_engine *eng, struct fs_table *t,
		  const struct api_schema *schema, const char *in,
		  const char *out, const char *absent, struct fs_diff *d)
{
	char *cur = fs_spool_name(t, "current");
	int rc, tries = 0, crc;

	memset(d, 0, sizeof(*d));
	if (!cur)
		return -ENOMEM;
	rc = cache_spool_clear(eng->cache, out);
	if (!rc && absent)
		rc = cache_spool_clear(eng->cache, absent);
	/* a version that changes while it is read is read again: the
	 * comparison needs one version, whole */
	do {
		if (!rc)
			rc = spool_current(eng, t, schema, cur, &d->current,
					   &d->unreadable);
	} while (rc == -ESTALE && ++tries < DIFF_TRIES && (rc = 0) == 0);
	if (!rc)
		rc = merge(eng, in, cur, out, absent, d);
	crc = cache_spool_clear(eng->cache, cur);
	(void)crc;
	free(cur);
	if (rc)
		log_warn("cannot compare the import into '%s' with the table: "
			 "%s", t->name, strerror(-rc));
	else
		log_info("import into '%s': %" PRIu64 " rows in the table, %"
			 PRIu64 " spooled rows unchanged, %" PRIu64
			 " changed, %" PRIu64 " new, %" PRIu64 " absent",
			 t->name, d->current, d->same, d->changed, d->added,
			 d->absent);
	return rc;
}

/* ---- rows of two spools with the same key ------------------------------ */

int fs_diff_join(struct fs_engine *eng, const char *a, const char *b,
		 int (*each)(void *arg, const struct fs_spooled *x,
			     const struct fs_spooled *y),
		 void *arg)
{
	struct walk wa = { .eng = eng, .spool = a };
	struct walk wb = { .eng = eng, .spool = b };
	int rc;

	rc = walk_fill(&wa);
	if (!rc)
		rc = walk_fill(&wb);
	while (!rc && !wa.eof && !wb.eof) {
		int c = key_cmp(&wa.cur, &wb.cur);

		if (c < 0) {
			rc = walk_next(&wa);
			continue;
		}
		if (c > 0) {
			rc = walk_next(&wb);
			continue;
		}
		rc = each(arg, &wa.cur, &wb.cur);
		if (!rc)
			rc = walk_next(&wa);
		if (!rc)
			rc = walk_next(&wb);
	}
	cache_spool_batch_release(&wa.b);
	cache_spool_batch_release(&wb.b);
	return rc;
}
