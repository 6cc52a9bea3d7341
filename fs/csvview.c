/*
 * csvview: rows.csv, the table version rows.jsonl shows, as CSV.
 *
 * A CSV reader wraps an ordinary rows.jsonl reader (fs_reader): the same
 * snapshot, the same cache pages, the same -ESTALE. Its bytes are made as
 * they are read: whole JSONL lines are turned into CSV records by the one
 * encoder of api/ (api_csv_encode), after a header of the schema's column
 * names. Nothing is stored but, per table and generation, a sparse index
 * of record boundaries (a CSV offset and the JSONL offset it starts at,
 * about one per CSV_STEP bytes), so a backward or random read converts
 * from the nearest boundary instead of from the start, and the file's
 * exact size once a reader has converted a complete version to its end.
 * A stat converts it whole when that size is not known yet (as a stat of
 * rows.jsonl reads the table whole): tar and rsync copy st_size bytes, and
 * a size of 0 made them store an empty rows.csv with exit status 0. The
 * size is kept in the cache with the version (cache_put_derived_size), so
 * a version is measured once, not once per mount or process.
 */
#include "engine_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define CSV_READ (256 * 1024)  /* JSONL bytes converted at a time */
#define CSV_STEP (1024 * 1024) /* CSV bytes between index points */
#define CSV_DROP (1024 * 1024) /* CSV bytes read before they are dropped */

struct csv_point {
	uint64_t csv;	/* a record starts here in rows.csv */
	uint64_t jsonl; /* and its line here in rows.jsonl */
};

/* Per table (t->csv), guarded by csv_lock. */
struct fs_csvidx {
	uint64_t gen;	       /* the generation the points are of */
	size_t schema_len;     /* and the length of the schema's JSON: a
				  column added changes the CSV, not the
				  JSONL (flows versions are the rows') */
	struct csv_point *pts; /* ascending; pts[0] is {0, 0} */
	size_t n, cap;
	uint64_t size; /* rows.csv's size, when size_known */
	bool size_known;
};

static pthread_mutex_t csv_lock = PTHREAD_MUTEX_INITIALIZER;

struct fs_csv_reader {
	struct fs_engine *eng;
	struct fs_table *t;
	struct fs_reader *rd;
	struct api_schema schema; /* a private copy */
	pthread_mutex_t lock;	  /* one read at a time */
	char *head;		  /* the header record */
	size_t hlen;
	char *out; /* converted bytes from out_off */
	size_t olen, ocap;
	uint64_t out_off;
	uint64_t jpos; /* next JSONL byte to read */
	char *jbuf;    /* JSONL read, an unfinished line kept */
	size_t jlen;
	bool eof;
	bool started; /* out/out_off mean something */
};

void fs_csvidx_free(struct fs_csvidx *x)
{
	if (!x)
		return;
	free(x->pts);
	free(x);
}

void fs_csv_forget(struct fs_table *t)
{
	pthread_mutex_lock(&csv_lock);
	fs_csvidx_free(t->csv);
	t->csv = NULL;
	pthread_mutex_unlock(&csv_lock);
}

/* t's index for gen and a schema of slen bytes (emptied when of another);
 * csv_lock held. NULL when out of memory. */
static struct fs_csvidx *index_of(struct fs_table *t, uint64_t gen, size_t slen)
{
	struct fs_csvidx *x = t->csv;

	if (!x) {
		x = calloc(1, sizeof(*x));
		if (!x)
			return NULL;
		t->csv = x;
		x->gen = gen + 1;
	}
	if (x->gen != gen || x->schema_len != slen) {
		x->gen = gen;
		x->schema_len = slen;
		x->n = 0;
		x->size_known = false;
	}
	if (!x->n) {
		if (!x->cap) {
			x->pts = calloc(16, sizeof(*x->pts));
			if (!x->pts)
				return NULL;
			x->cap = 16;
		}
		x->pts[0].csv = x->pts[0].jsonl = 0;
		x->n = 1;
	}
	return x;
}

static void index_add(struct fs_csv_reader *cr, uint64_t csv, uint64_t jsonl)
{
	struct fs_csvidx *x;

	pthread_mutex_lock(&csv_lock);
	x = index_of(cr->t, fs_reader_gen(cr->rd), cr->schema.json_len);
	if (x && csv >= x->pts[x->n - 1].csv + CSV_STEP) {
		if (x->n == x->cap) {
			struct csv_point *p =
			    realloc(x->pts, 2 * x->cap * sizeof(*p));

			if (!p)
				goto out;
			x->pts = p;
			x->cap *= 2;
		}
		x->pts[x->n].csv = csv;
		x->pts[x->n].jsonl = jsonl;
		x->n++;
	}
out:
	pthread_mutex_unlock(&csv_lock);
}

/* The last index point at or before off. */
static struct csv_point index_find(struct fs_csv_reader *cr, uint64_t off)
{
	struct csv_point p = {0, 0};
	struct fs_csvidx *x;

	pthread_mutex_lock(&csv_lock);
	x = index_of(cr->t, fs_reader_gen(cr->rd), cr->schema.json_len);
	if (x) {
		size_t lo = 0, hi = x->n;

		while (hi - lo > 1) {
			size_t mid = (lo + hi) / 2;

			if (x->pts[mid].csv <= off)
				lo = mid;
			else
				hi = mid;
		}
		p = x->pts[lo];
	}
	pthread_mutex_unlock(&csv_lock);
	return p;
}

/* The length of the schema rows.csv is made with: the table's, or before
 * this process loaded it, the cached one's (the same bytes). 0: none. */
static size_t schema_len_of(struct fs_engine *eng, struct fs_table *t)
{
	size_t slen = atomic_load(&t->schema_len);
	char *version = NULL, *json = NULL;

	if (!slen && cache_get_schema(eng->cache, t->id, &version, &json,
				      &slen) != 0)
		slen = 0;
	free(version);
	free(json);
	return slen;
}

uint64_t fs_table_csv_size(struct fs_engine *eng, struct fs_table *t)
{
	size_t slen = schema_len_of(eng, t);
	uint64_t gen = 0, size = 0;
	struct fs_csvidx *x;

	(void)fs_table_rows_size(eng, t, &gen);
	if (!gen)
		return 0;
	pthread_mutex_lock(&csv_lock);
	if (t->csv && t->csv->gen == gen && t->csv->size_known &&
	    t->csv->schema_len == slen)
		size = t->csv->size;
	pthread_mutex_unlock(&csv_lock);
	/* measured by another process or an earlier mount */
	if (!size && slen &&
	    cache_get_derived_size(eng->cache, t->id, gen, slen, &size) == 0) {
		pthread_mutex_lock(&csv_lock);
		x = index_of(t, gen, slen);
		if (x) {
			x->size = size;
			x->size_known = true;
		}
		pthread_mutex_unlock(&csv_lock);
	}
	return size;
}

int fs_table_csv_exact_size(struct fs_engine *eng, struct fs_table *t,
			    uint64_t *size)
{
	struct fs_csv_reader *cr = NULL;
	uint64_t rows_size, gen, off = 0;
	size_t n = 0;
	char *buf;
	int rc;

	*size = fs_table_csv_size(eng, t);
	if (eng->cfg.lazy_size)
		return 0;
	/* the version an open would read, as a stat of rows.jsonl finds it
	 * (revalidated at most once per `revalidate`): a size recorded for
	 * an older generation is not this one's */
	rc = fs_table_rows_exact_size(eng, t, &rows_size, &gen);
	if (rc)
		return rc;
	*size = fs_table_csv_size(eng, t);
	if (*size)
		return 0;
	buf = malloc(CSV_READ);
	if (!buf)
		return -ENOMEM;
	rc = fs_csv_open(eng, t, &cr);
	while (!rc) {
		rc = fs_csv_read(cr, off, buf, CSV_READ, &n);
		if (rc || n == 0)
			break;
		off += n;
	}
	if (!rc)
		*size = off;	/* the version the reader read, whole */
	if (cr)
		fs_csv_close(cr);
	free(buf);
	return rc;
}

int fs_csv_open(struct fs_engine *eng, struct fs_table *t,
		struct fs_csv_reader **out)
{
	struct fs_csv_reader *cr;
	int rc;

	*out = NULL;
	cr = calloc(1, sizeof(*cr));
	if (!cr)
		return -ENOMEM;
	pthread_mutex_init(&cr->lock, NULL);
	cr->eng = eng;
	cr->t = t;
	rc = fs_reader_open(eng, t, &cr->rd);
	if (rc)
		goto fail;
	pthread_mutex_lock(&t->lock);
	rc = fs_table_load_schema(eng, t);
	if (!rc)
		rc = api_schema_parse(t->schema.json, t->schema.json_len,
				      t->schema.version, &cr->schema);
	pthread_mutex_unlock(&t->lock);
	if (rc)
		goto fail;
	rc = api_csv_encode(&cr->schema, NULL, NULL, 0, &cr->head, &cr->hlen);
	if (rc)
		goto fail;
	*out = cr;
	return 0;
fail:
	fs_csv_close(cr);
	return rc;
}

void fs_csv_close(struct fs_csv_reader *cr)
{
	if (!cr)
		return;
	if (cr->rd)
		fs_reader_close(cr->rd);
	api_schema_release(&cr->schema);
	free(cr->head);
	free(cr->out);
	free(cr->jbuf);
	pthread_mutex_destroy(&cr->lock);
	free(cr);
}

/* Start converting again at index point p. */
static int restart(struct fs_csv_reader *cr, struct csv_point p)
{
	cr->olen = 0;
	cr->jlen = 0;
	cr->eof = false;
	cr->started = true;
	cr->out_off = p.csv;
	cr->jpos = p.jsonl;
	if (p.csv == 0) {
		if (cr->ocap < cr->hlen + 1) {
			char *o = realloc(cr->out, cr->hlen + 1);

			if (!o)
				return -ENOMEM;
			cr->out = o;
			cr->ocap = cr->hlen + 1;
		}
		memcpy(cr->out, cr->head, cr->hlen);
		cr->olen = cr->hlen;
	}
	return 0;
}

/* Convert the complete lines jbuf[0..n) and append them to out. */
static int convert(struct fs_csv_reader *cr, size_t n)
{
	int rc = api_csv_encode_lines(&cr->schema, cr->jbuf, n, &cr->out,
				      &cr->olen, &cr->ocap);

	if (rc == -EINVAL) {
		log_err("rows.csv of '%s': a row does not fit the schema "
			"(changed since?); read it again",
			cr->t->name);
		rc = -EIO;
	}
	return rc;
}

/* Convert the next block of JSONL. */
static int produce(struct fs_csv_reader *cr)
{
	size_t n = 0, done;
	uint64_t size;
	char *nl;
	int rc;

	if (!cr->jbuf) {
		cr->jbuf = malloc(2 * CSV_READ);
		if (!cr->jbuf)
			return -ENOMEM;
	}
	if (cr->jlen > CSV_READ) {
		/* a line longer than a block: grow */
		char *b = realloc(cr->jbuf, cr->jlen + CSV_READ);

		if (!b)
			return -ENOMEM;
		cr->jbuf = b;
	}
	rc =
	    fs_reader_read(cr->rd, cr->jpos, cr->jbuf + cr->jlen, CSV_READ, &n);
	if (rc)
		return rc;
	cr->jpos += n;
	cr->jlen += n;
	if (!n) {
		/* the end: a last line without its newline too */
		rc = convert(cr, cr->jlen);
		if (rc)
			return rc;
		cr->jlen = 0;
		cr->eof = true;
		if (fs_reader_complete(cr->rd, &size)) {
			struct fs_csvidx *x;
			uint64_t csv = cr->out_off + cr->olen;

			pthread_mutex_lock(&csv_lock);
			x = index_of(cr->t, fs_reader_gen(cr->rd),
				     cr->schema.json_len);
			if (x) {
				x->size = csv;
				x->size_known = true;
			}
			pthread_mutex_unlock(&csv_lock);
			/* for other processes and later mounts: best effort
			 * (a version held in memory has no place on disk) */
			if (cache_put_derived_size(cr->eng->cache, cr->t->id,
						   fs_reader_gen(cr->rd),
						   cr->schema.json_len, csv))
				log_debug("the CSV size of '%s' is not kept",
					  fs_table_name(cr->t));
		}
		return 0;
	}
	nl = memrchr(cr->jbuf, '\n', cr->jlen);
	if (!nl)
		return 0;
	done = (size_t)(nl - cr->jbuf) + 1;
	rc = convert(cr, done);
	if (rc)
		return rc;
	memmove(cr->jbuf, cr->jbuf + done, cr->jlen - done);
	cr->jlen -= done;
	/* a record boundary: the next record's line starts here */
	index_add(cr, cr->out_off + cr->olen, cr->jpos - cr->jlen);
	return 0;
}

int fs_csv_read(struct fs_csv_reader *cr, uint64_t off, void *buf, size_t size,
		size_t *nread)
{
	struct csv_point p;
	size_t n = 0;
	int rc = 0;

	*nread = 0;
	pthread_mutex_lock(&cr->lock);
	p = index_find(cr, off);
	if (!cr->started || off < cr->out_off || p.csv > cr->out_off + cr->olen)
		rc = restart(cr, p);
	while (!rc && off + size > cr->out_off + cr->olen && !cr->eof) {
		/* bytes before off are not needed again (a backward read
		 * restarts from the index): dropped once they are many, so
		 * the bytes after them are seldom moved */
		if (off > cr->out_off && off - cr->out_off >= CSV_DROP) {
			size_t drop = off - cr->out_off < cr->olen
					  ? (size_t)(off - cr->out_off)
					  : cr->olen;

			memmove(cr->out, cr->out + drop, cr->olen - drop);
			cr->olen -= drop;
			cr->out_off += drop;
		}
		rc = produce(cr);
	}
	if (!rc && off < cr->out_off + cr->olen) {
		size_t at = (size_t)(off - cr->out_off);

		n = cr->olen - at < size ? cr->olen - at : size;
		memcpy(buf, cr->out + at, n);
	}
	pthread_mutex_unlock(&cr->lock);
	*nread = n;
	return rc;
}
