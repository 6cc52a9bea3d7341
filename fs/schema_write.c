/*
 * schema_write: schema changes and new tables, for both faces.
 *
 * A new schema for a table may only add columns: the API refuses the rest
 * (cursor: 400 schema.change.not.allowed; flows: "only new fields"), so we
 * refuse it first, naming the column, and send nothing. A 412 (the schema
 * changed on the server since it was read) is a conflict: the server's
 * schema is fetched again and the caller gets -EAGAIN.
 *
 * New tables (flows only; the cursor API has no table creation): mkdir
 * makes a pending name that exists only in this process until a schema is
 * written for it, which creates the table (POST /api/v2/flows/datatables).
 * Pending names are kept in eng->pending under eng->lock.
 */
#include "engine_i.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static const struct api_column *column(const struct api_schema *s,
				       const char *name)
{
	for (size_t i = 0; i < s->ncolumns; i++)
		if (!strcmp(s->columns[i].name, name))
			return &s->columns[i];
	return NULL;
}

/* Whether `next` only adds columns to `cur`; logs why not. Returns 0 or
 * -EINVAL. */
static int only_additions(const char *table, const struct api_schema *cur,
			  const struct api_schema *next)
{
	for (size_t i = 0; i < cur->ncolumns; i++) {
		const struct api_column *c = &cur->columns[i];
		const struct api_column *n = column(next, c->name);

		if (!n) {
			log_err("schema of '%s' not changed: column '%s' is "
				"missing (removed or renamed); columns can "
				"only be added",
				table, c->name);
			return -EINVAL;
		}
		if (n->type != c->type) {
			log_err("schema of '%s' not changed: column '%s' "
				"would change type from %s to %s; columns "
				"can only be added",
				table, c->name, api_type_name(c->type),
				api_type_name(n->type));
			return -EINVAL;
		}
		if (n->key != c->key) {
			log_err("schema of '%s' not changed: column '%s' "
				"would %s the key; the key cannot change",
				table, c->name, c->key ? "leave" : "join");
			return -EINVAL;
		}
	}
	for (size_t i = 0; i < next->ncolumns; i++) {
		const struct api_column *n = &next->columns[i];

		if (n->key && !column(cur, n->name)) {
			log_err("schema of '%s' not changed: new column '%s' "
				"would join the key; the key cannot change",
				table, n->name);
			return -EINVAL;
		}
	}
	return 0;
}

static int parse_new(const char *what, const char *json, size_t len,
		     struct api_schema *out)
{
	int rc = api_schema_parse(json, len, NULL, out);

	if (rc == -EPROTO || (!rc && !out->ncolumns)) {
		log_err("schema of '%s' not changed: what was written is not "
			"a schema of typed columns",
			what);
		api_schema_release(out);
		rc = -EINVAL;
	}
	return rc;
}

int fs_table_put_schema(struct fs_engine *eng, struct fs_table *t,
			const char *json, size_t len)
{
	struct api_schema next = {0}, cur = {0}, got = {0};
	int rc, crc;

	if (eng->cfg.ro)
		return -EROFS;
	rc = parse_new(t->name, json, len, &next);
	if (rc)
		return rc;
	/* compare with the schema schema.json showed (the cached one), and
	 * send its version as If-Match: a change made on the server since
	 * is a conflict, not something to overwrite */
	pthread_mutex_lock(&t->lock);
	rc = fs_table_load_schema(eng, t);
	if (!rc)
		rc = api_schema_parse(t->schema.json, t->schema.json_len,
				      t->schema.version, &cur);
	pthread_mutex_unlock(&t->lock);
	if (rc) {
		log_err("schema of '%s' not changed: cannot read the current "
			"one (%s)",
			t->name, strerror(-rc));
		goto out;
	}
	rc = only_additions(t->name, &cur, &next);
	if (rc)
		goto out;
	if (next.json_len == cur.json_len &&
	    !memcmp(next.json, cur.json, cur.json_len))
		goto out; /* the same schema: nothing to send */
	rc = api_put_schema(eng->api, t->id, json, len, cur.version, &got);
	if (rc == -ESTALE) {
		log_err("schema of '%s' not changed: it changed on the server "
			"since it was read (412 conflict); schema.json shows "
			"the server's schema again",
			t->name);
		pthread_mutex_lock(&t->lock);
		t->schema_at = 0;
		crc = fs_table_fresh_schema(eng, t);
		pthread_mutex_unlock(&t->lock);
		(void)crc;
		rc = -EAGAIN;
		goto out;
	}
	if (rc) {
		log_err("schema of '%s' not changed: %s", t->name,
			strerror(-rc));
		goto out;
	}
	log_notice("schema of '%s' changed: %zu columns now", t->name,
		   got.ncolumns);
	pthread_mutex_lock(&t->lock);
	fs_table_set_schema(eng, t, &got);
	pthread_mutex_unlock(&t->lock);
	fs_csv_forget(t);
	crc = fs_table_invalidate(eng, t);
	(void)crc; /* logged; the revalidate period bounds it */
out:
	api_schema_release(&got);
	api_schema_release(&cur);
	api_schema_release(&next);
	return rc;
}

/* schema files are small: more than this is not a schema */
#define SCHEMA_FILE_MAX (1 << 20)

int fs_schema_read_fd(int fd, char **buf, size_t *len)
{
	int rc = 0;
	ssize_t n;

	*len = 0;
	*buf = malloc(SCHEMA_FILE_MAX);
	if (!*buf)
		return -ENOMEM;
	while (*len < SCHEMA_FILE_MAX) {
		n = pread(fd, *buf + *len, SCHEMA_FILE_MAX - *len,
			  (off_t)*len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -errno : 0;
			break;
		}
		*len += (size_t)n;
	}
	if (!rc && *len == SCHEMA_FILE_MAX)
		rc = -EFBIG;
	if (rc) {
		free(*buf);
		*buf = NULL;
		*len = 0;
	}
	return rc;
}

/* ---- new tables ------------------------------------------------------ */

bool fs_engine_can_create(struct fs_engine *eng)
{
	return !eng->cfg.ro && eng->cfg.api && !strcmp(eng->cfg.api, "flows");
}

/* Index of a pending name, or -1; eng->lock held. */
static long pending_find(struct fs_engine *eng, const char *name)
{
	for (size_t i = 0; i < eng->npending; i++)
		if (!strcmp(eng->pending[i], name))
			return (long)i;
	return -1;
}

static void pending_remove(struct fs_engine *eng, const char *name)
{
	long i;

	pthread_mutex_lock(&eng->lock);
	i = pending_find(eng, name);
	if (i >= 0) {
		free(eng->pending[i]);
		eng->pending[i] = eng->pending[--eng->npending];
	}
	pthread_mutex_unlock(&eng->lock);
}

void fs_pending_release(struct fs_engine *eng)
{
	for (size_t i = 0; i < eng->npending; i++)
		free(eng->pending[i]);
	free(eng->pending);
	eng->pending = NULL;
	eng->npending = 0;
}

bool fs_engine_is_pending(struct fs_engine *eng, const char *name)
{
	bool yes;

	pthread_mutex_lock(&eng->lock);
	yes = pending_find(eng, name) >= 0;
	pthread_mutex_unlock(&eng->lock);
	return yes;
}

int fs_engine_pending_list(struct fs_engine *eng, char ***names, size_t *count)
{
	int rc = 0;

	*names = NULL;
	*count = 0;
	pthread_mutex_lock(&eng->lock);
	if (eng->npending) {
		*names = calloc(eng->npending, sizeof(**names));
		if (!*names)
			rc = -ENOMEM;
	}
	for (size_t i = 0; !rc && i < eng->npending; i++) {
		(*names)[i] = strdup(eng->pending[i]);
		if (!(*names)[i])
			rc = -ENOMEM;
		*count = i + 1;
	}
	pthread_mutex_unlock(&eng->lock);
	if (rc) {
		for (size_t i = 0; i < *count; i++)
			free((*names)[i]);
		free(*names);
		*names = NULL;
		*count = 0;
	}
	return rc;
}

int fs_engine_mkdir(struct fs_engine *eng, const char *name)
{
	struct fs_table *t;
	char **grown, *dup;
	int rc;

	if (eng->cfg.ro)
		return -EROFS;
	if (!fs_engine_can_create(eng)) {
		log_err("cannot create table '%s': the cursor API has no table "
			"creation (mount with api=flows for the production "
			"API)",
			name);
		return -EPERM;
	}
	rc = fs_engine_lookup(eng, name, &t);
	if (rc == 0)
		return -EEXIST;
	if (rc != -ENOENT)
		return rc;
	rc = 0;
	dup = strdup(name);
	if (!dup)
		return -ENOMEM;
	pthread_mutex_lock(&eng->lock);
	if (pending_find(eng, name) >= 0) {
		rc = -EEXIST;
	} else {
		grown =
		    realloc(eng->pending, (eng->npending + 1) * sizeof(*grown));
		if (!grown) {
			rc = -ENOMEM;
		} else {
			eng->pending = grown;
			eng->pending[eng->npending++] = dup;
			dup = NULL;
		}
	}
	pthread_mutex_unlock(&eng->lock);
	free(dup);
	if (!rc)
		log_info("table '%s' pending: it is created when its "
			 "schema.json is written",
			 name);
	return rc;
}

int fs_engine_create(struct fs_engine *eng, const char *name, const char *json,
		     size_t len, struct fs_table **out)
{
	struct api_schema next = {0};
	struct fs_table *t;
	char *id = NULL;
	int rc;

	if (out)
		*out = NULL;
	if (eng->cfg.ro)
		return -EROFS;
	if (!fs_engine_can_create(eng)) {
		log_err("cannot create table '%s': the cursor API has no table "
			"creation",
			name);
		return -EPERM;
	}
	rc = parse_new(name, json, len, &next);
	if (rc)
		return rc;
	api_schema_release(&next);
	rc = api_create_table(eng->api, name, json, len, &id);
	if (rc) {
		log_err("cannot create table '%s': %s", name, strerror(-rc));
		return rc;
	}
	t = fs_engine_add_table(eng, id, name, true);
	free(id);
	if (!t)
		return -ENOMEM;
	pending_remove(eng, name);
	log_notice("table '%s' created", name);
	if (out)
		*out = t;
	return 0;
}

int fs_engine_rmdir(struct fs_engine *eng, const char *name)
{
	struct fs_table *t;
	long i;
	int rc;

	pthread_mutex_lock(&eng->lock);
	i = pending_find(eng, name);
	pthread_mutex_unlock(&eng->lock);
	if (i >= 0) {
		pending_remove(eng, name);
		return 0;
	}
	rc = fs_engine_lookup(eng, name, &t);
	if (rc)
		return rc;
	if (eng->cfg.ro)
		return -EROFS;
	if (!eng->cfg.allow_delete) {
		log_err("table '%s' not deleted: deleting tables needs the "
			"mount option allow_delete",
			name);
		return -EPERM;
	}
	rc = api_delete_table(eng->api, t->id, eng->cfg.force_delete);
	if (rc == -ENOSYS) {
		log_err("table '%s' not deleted: the cursor API cannot delete "
			"tables",
			name);
		return -EPERM;
	}
	if (rc) {
		log_err("table '%s' not deleted: %s", name, strerror(-rc));
		return rc;
	}
	(void)fs_engine_add_table(eng, t->id, t->name, false);
	log_notice("table '%s' deleted", name);
	return 0;
}
