/*
 * replace: the deletes of an import that makes a table equal to a file.
 *
 * diff.c spools the keys of the table's current version that the file
 * lacks (`absent`). The production dialect deletes rows by key. The cursor
 * dialect deletes by the server's row id, which the cached JSONL does not
 * keep: the table's pages are walked once more (the ids are in every
 * row), each row's key spooled with its id, and the two spools joined by
 * key. Memory stays flat whatever the table's size; the walk costs one
 * request per 1000 rows, and only a replace with rows to delete pays it.
 */
#include "engine_i.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define IDS_BATCH 256

struct del_ctx {
	struct fs_engine *eng;
	struct fs_table *t;
	uint64_t deleted;
};

static void free_batch(char **keys, char **vals, size_t *n)
{
	while (*n) {
		(*n)--;
		free(keys[*n]);
		free(vals[*n]);
	}
}

/* The key → row id spool of t's rows, from a walk of its pages. */
static int spool_ids(struct fs_engine *eng, struct fs_table *t,
		     const struct api_schema *schema, const char *ids)
{
	struct api_page page = { 0 };
	char *cursor = NULL, *keys[IDS_BATCH], *vals[IDS_BATCH];
	size_t n = 0, i;
	int rc;

	rc = cache_spool_clear(eng->cache, ids);
	for (;;) {
		const char *s, *end, *nl;

		if (rc)
			break;
		rc = api_get_rows(eng->api, t->id, schema, cursor, 0, NULL,
				  &page);
		if (rc)
			break;
		s = page.data;
		end = page.data + page.len;
		for (i = 0; i < page.nrows && s < end && !rc; i++, s = nl + 1) {
			char *row = NULL, *key = NULL, *error = NULL;

			nl = memchr(s, '\n', (size_t)(end - s));
			if (!nl)
				nl = end;
			if (!page.ids || !page.ids[i])
				continue;
			if (api_row_validate(schema, s, (size_t)(nl - s), &row,
					     &key, &error)) {
				free(row);
				free(key);
				free(error);
				continue;
			}
			free(row);
			free(error);
			keys[n] = key;
			vals[n] = fs_spooled_format(0, '-', key, page.ids[i]);
			if (!vals[n]) {
				free(key);
				rc = -ENOMEM;
				break;
			}
			if (++n == IDS_BATCH) {
				rc = cache_spool_put(
					eng->cache, ids, n,
					(const char *const *)keys,
					(const char *const *)vals);
				free_batch(keys, vals, &n);
			}
		}
		free(cursor);
		cursor = page.next_cursor;
		page.next_cursor = NULL;
		api_page_release(&page);
		if (!cursor)
			break;
	}
	if (!rc && n)
		rc = cache_spool_put(eng->cache, ids, n,
				     (const char *const *)keys,
				     (const char *const *)vals);
	free_batch(keys, vals, &n);
	free(cursor);
	api_page_release(&page);
	return rc;
}

static int delete_by_id(void *arg, const struct fs_spooled *absent,
			const struct fs_spooled *id)
{
	struct del_ctx *c = arg;
	int rc;

	(void)absent;
	rc = api_delete_row(c->eng->api, c->t->id, id->row);
	if (rc == -ENOENT)	/* gone already: what was wanted */
		rc = 0;
	if (!rc)
		c->deleted++;
	return rc;
}

/* DELETE one absent row by its key (flows); gone already is done. */
static int delete_key(void *arg, const struct fs_spooled *s)
{
	struct del_ctx *c = arg;
	char *key = NULL;
	int rc;

	rc = api_key_string(s->key, s->klen, &key);
	if (!rc)
		rc = api_row_delete_key(c->eng->api, c->t->id, key);
	if (rc == -ENOENT)
		rc = 0;
	if (!rc)
		c->deleted++;
	free(key);
	return rc;
}

static int delete_by_key(struct del_ctx *c, const char *absent)
{
	return fs_spool_walk(c->eng, absent, delete_key, c);
}

int fs_replace_delete(struct fs_engine *eng, struct fs_table *t,
		      const struct api_schema *schema, const char *absent,
		      uint64_t *deleted)
{
	struct del_ctx c = { .eng = eng, .t = t };
	char *ids = NULL;
	int rc, crc;

	if (eng->caps.row_ops) {
		rc = delete_by_key(&c, absent);
	} else {
		ids = fs_spool_name(t, "ids");
		if (!ids)
			return -ENOMEM;
		rc = spool_ids(eng, t, schema, ids);
		if (!rc)
			rc = fs_diff_join(eng, absent, ids, delete_by_id, &c);
		crc = cache_spool_clear(eng->cache, ids);
		(void)crc;
		free(ids);
	}
	*deleted = c.deleted;
	if (rc)
		log_err("replace of '%s': deletes stopped after %" PRIu64
			" rows: %s", t->name, c.deleted, strerror(-rc));
	else
		log_info("replace of '%s': %" PRIu64 " rows deleted", t->name,
			 c.deleted);
	return rc;
}
