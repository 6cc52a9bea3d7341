/*
 * The in-memory store of dtfs-emu: tables, schemas, rows, validation of
 * rows against a schema, and loading tables from --data and --generate.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "emu_i.h"
#include "log.h"

static const char *const type_names[] = {
    [EMU_T_STRING] = "string",	 [EMU_T_NUMBER] = "number",
    [EMU_T_INTEGER] = "integer", [EMU_T_BOOLEAN] = "boolean",
    [EMU_T_DATE] = "date",
};

const char *emu_type_name(enum emu_type t)
{
	return type_names[t];
}

int emu_type_parse(const char *s, enum emu_type *out)
{
	for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]);
	     i++) {
		if (strcmp(s, type_names[i]) == 0) {
			*out = (enum emu_type)i;
			return 0;
		}
	}
	return -EINVAL;
}

static const char *row_key_of(const void *item)
{
	return emu_row_key(item);
}

static const char *row_id_of(const void *item)
{
	return ((const struct emu_row *)item)->id;
}

void emu_store_init(struct emu_store *s)
{
	pthread_rwlock_init(&s->lock, NULL);
	s->tables = NULL;
	s->ntables = 0;
	s->instance = emu_random64() & 0xffffffffu;
	s->next_version = 1;
}

void emu_store_release(struct emu_store *s)
{
	for (size_t i = 0; i < s->ntables; i++)
		emu_table_free(s->tables[i]);
	free(s->tables);
	s->tables = NULL;
	s->ntables = 0;
	for (size_t i = 0; i < s->ngraveyard; i++)
		emu_table_free(s->graveyard[i]);
	free(s->graveyard);
	s->graveyard = NULL;
	s->ngraveyard = 0;
	pthread_rwlock_destroy(&s->lock);
}

int emu_store_add(struct emu_store *s, struct emu_table *t)
{
	for (size_t i = 0; i < s->ntables; i++)
		if (strcmp(s->tables[i]->name, t->name) == 0)
			return -EEXIST;
	s->tables =
	    emu_xrealloc(s->tables, (s->ntables + 1) * sizeof(*s->tables));
	s->tables[s->ntables++] = t;
	emu_table_touch(s, t);
	t->schema_version = t->version;
	return 0;
}

static int table_cmp(const void *a, const void *b)
{
	const struct emu_table *x = *(const struct emu_table *const *)a;
	const struct emu_table *y = *(const struct emu_table *const *)b;

	return strcmp(x->name, y->name);
}

void emu_store_sort(struct emu_store *s)
{
	if (s->ntables > 1)
		qsort(s->tables, s->ntables, sizeof(*s->tables), table_cmp);
}

struct emu_table *emu_store_find(struct emu_store *s, const char *id)
{
	for (size_t i = 0; i < s->ntables; i++)
		if (strcmp(s->tables[i]->id, id) == 0)
			return s->tables[i];
	return NULL;
}

int emu_store_insert(struct emu_store *s, struct emu_table *t)
{
	size_t at = 0;

	for (size_t i = 0; i < s->ntables; i++) {
		int c = strcmp(s->tables[i]->name, t->name);

		if (c == 0)
			return -EEXIST;
		if (c < 0)
			at = i + 1;
	}
	s->tables =
	    emu_xrealloc(s->tables, (s->ntables + 1) * sizeof(*s->tables));
	memmove(&s->tables[at + 1], &s->tables[at],
		(s->ntables - at) * sizeof(*s->tables));
	s->tables[at] = t;
	s->ntables++;
	emu_table_touch(s, t);
	t->schema_version = t->version;
	return 0;
}

void emu_store_rename(struct emu_store *s, struct emu_table *t,
		      const char *name)
{
	size_t at = 0, to = 0;

	if (strcmp(t->name, name) == 0)
		return;
	free(t->name);
	t->name = emu_xstrdup(name);
	/* move it to its place in name order */
	for (size_t i = 0; i < s->ntables; i++)
		if (s->tables[i] == t)
			at = i;
	memmove(&s->tables[at], &s->tables[at + 1],
		(s->ntables - at - 1) * sizeof(*s->tables));
	for (size_t i = 0; i + 1 < s->ntables; i++)
		if (strcmp(s->tables[i]->name, name) < 0)
			to = i + 1;
	memmove(&s->tables[to + 1], &s->tables[to],
		(s->ntables - 1 - to) * sizeof(*s->tables));
	s->tables[to] = t;
}

void emu_store_remove(struct emu_store *s, struct emu_table *t)
{
	for (size_t i = 0; i < s->ntables; i++) {
		if (s->tables[i] != t)
			continue;
		memmove(&s->tables[i], &s->tables[i + 1],
			(s->ntables - i - 1) * sizeof(*s->tables));
		s->ntables--;
		break;
	}
	t->deleted = true;
	emu_table_touch(s, t);
	s->graveyard = emu_xrealloc(s->graveyard, (s->ngraveyard + 1) *
						      sizeof(*s->graveyard));
	s->graveyard[s->ngraveyard++] = t;
}

struct emu_table *emu_table_new(const char *name, const char *description)
{
	struct emu_table *t = emu_xcalloc(1, sizeof(*t));
	size_t n = strlen(name);

	t->name = emu_xstrdup(name);
	t->description = emu_xstrdup(description ? description : "");
	t->division = emu_xstrdup(EMU_HOME_DIVISION);
	/* deterministic id: a hash of the name shaped like a UUID */
	t->id_hash = emu_hash64(name, n, 0x7461626c65);
	emu_uuid_format(t->id_hash, emu_hash64(name, n, 0x6964), t->id);
	emu_map_init(&t->by_key, row_key_of);
	emu_map_init(&t->by_id, row_id_of);
	return t;
}

void emu_table_free(struct emu_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->nrows; i++)
		free(t->rows[i]);
	free(t->rows);
	emu_map_release(&t->by_key);
	emu_map_release(&t->by_id);
	emu_schema_release(&t->schema);
	free(t->name);
	free(t->description);
	free(t->division);
	free(t);
}

void emu_table_touch(struct emu_store *s, struct emu_table *t)
{
	t->version = s->next_version++;
}

void emu_table_etag(const struct emu_store *s, const struct emu_table *t,
		    char *out, size_t outsz)
{
	snprintf(out, outsz, "\"%08llx-%llu\"", (unsigned long long)s->instance,
		 (unsigned long long)t->version);
}

void emu_schema_etag(const struct emu_store *s, const struct emu_table *t,
		     char *out, size_t outsz)
{
	snprintf(out, outsz, "\"%08llx-s%llu\"",
		 (unsigned long long)s->instance,
		 (unsigned long long)t->schema_version);
}

/* ---- schema ---- */

void emu_schema_release(struct emu_schema *s)
{
	for (size_t i = 0; i < s->ncols; i++) {
		free(s->cols[i].name);
		free(s->cols[i].json_name);
		free(s->cols[i].title);
		free(s->cols[i].def);
	}
	free(s->cols);
	s->cols = NULL;
	s->ncols = 0;
}

int emu_schema_parse(struct json_object *o, struct emu_schema *out, char *msg,
		     size_t msgsz)
{
	struct json_object *cols;
	struct emu_schema s = {NULL, 0};
	bool have_key = false;

	if (!json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "columns", &cols) ||
	    !json_object_is_type(cols, json_type_array)) {
		snprintf(msg, msgsz, "the schema must be {\"columns\": [...]}");
		return -EINVAL;
	}
	size_t n = json_object_array_length(cols);

	if (n == 0) {
		snprintf(msg, msgsz, "the schema has no columns");
		return -EINVAL;
	}
	s.cols = emu_xcalloc(n, sizeof(*s.cols));
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(cols, i);
		struct json_object *name, *type, *pk;
		struct emu_column *col = &s.cols[i];

		if (!json_object_is_type(c, json_type_object) ||
		    !json_object_object_get_ex(c, "name", &name) ||
		    !json_object_is_type(name, json_type_string) ||
		    json_object_get_string_len(name) == 0 ||
		    !json_object_object_get_ex(c, "type", &type) ||
		    !json_object_is_type(type, json_type_string)) {
			snprintf(msg, msgsz,
				 "column %zu needs a non-empty name and a type",
				 i);
			goto fail;
		}
		if (emu_type_parse(json_object_get_string(type), &col->type)) {
			snprintf(msg, msgsz, "column %zu has an unknown type",
				 i);
			goto fail;
		}
		if (json_object_object_get_ex(c, "isPrimaryKey", &pk)) {
			if (!json_object_is_type(pk, json_type_boolean)) {
				snprintf(msg, msgsz,
					 "isPrimaryKey of column %zu is not a "
					 "boolean",
					 i);
				goto fail;
			}
			col->key = json_object_get_boolean(pk);
		}
		for (size_t j = 0; j < s.ncols; j++) {
			if (strcmp(s.cols[j].name,
				   json_object_get_string(name)) == 0) {
				snprintf(msg, msgsz,
					 "column %zu repeats a name", i);
				goto fail;
			}
		}
		col->name = emu_xstrdup(json_object_get_string(name));
		col->json_name = emu_xstrdup(emu_json_text(name));
		col->display = (long)i;
		have_key |= col->key;
		s.ncols++;
	}
	if (!have_key) {
		snprintf(msg, msgsz, "the schema has no primary key column");
		goto fail;
	}
	*out = s;
	return 0;
fail:
	emu_schema_release(&s);
	return -EINVAL;
}

void emu_schema_json(const struct emu_schema *s, struct emu_buf *b)
{
	emu_buf_adds(b, "{\"columns\":[");
	for (size_t i = 0; i < s->ncols; i++) {
		const struct emu_column *c = &s->cols[i];

		emu_buf_addf(b,
			     "%s{\"name\":%s,\"type\":\"%s\","
			     "\"isPrimaryKey\":%s}",
			     i ? "," : "", c->json_name, emu_type_name(c->type),
			     c->key ? "true" : "false");
	}
	emu_buf_adds(b, "]}");
}

static const struct emu_column *schema_col(const struct emu_schema *s,
					   const char *name)
{
	for (size_t i = 0; i < s->ncols; i++)
		if (strcmp(s->cols[i].name, name) == 0)
			return &s->cols[i];
	return NULL;
}

int emu_schema_check_additive(const struct emu_schema *cur,
			      const struct emu_schema *next, char *msg,
			      size_t msgsz)
{
	size_t at = 0; /* position in next of the previous old column */

	for (size_t i = 0; i < cur->ncols; i++) {
		const struct emu_column *c = &cur->cols[i];
		size_t j;

		for (j = 0; j < next->ncols; j++)
			if (strcmp(next->cols[j].name, c->name) == 0)
				break;
		if (j == next->ncols) {
			snprintf(msg, msgsz, "column '%s' was removed",
				 c->name);
			return -EINVAL;
		}
		if (next->cols[j].type != c->type) {
			snprintf(msg, msgsz, "column '%s' changed its type",
				 c->name);
			return -EINVAL;
		}
		if (next->cols[j].key != c->key) {
			snprintf(msg, msgsz,
				 "column '%s' changed its primary key flag",
				 c->name);
			return -EINVAL;
		}
		if (i > 0 && j < at) {
			snprintf(msg, msgsz, "column '%s' was moved", c->name);
			return -EINVAL;
		}
		at = j;
	}
	for (size_t j = 0; j < next->ncols; j++) {
		if (next->cols[j].key && !schema_col(cur, next->cols[j].name)) {
			snprintf(msg, msgsz,
				 "new column '%s' cannot be a primary key",
				 next->cols[j].name);
			return -EINVAL;
		}
	}
	return 0;
}

/* ---- rows ---- */

void emu_row_errors_add(struct emu_row_errors *e, size_t row, const char *field,
			const char *code)
{
	if (e->n == e->cap) {
		e->cap = e->cap ? e->cap * 2 : 16;
		e->v = emu_xrealloc(e->v, e->cap * sizeof(*e->v));
	}
	e->v[e->n].row = row;
	e->v[e->n].field = field;
	e->v[e->n].code = code;
	e->n++;
}

static bool digits(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)s[i]))
			return false;
	return true;
}

static int num2(const char *s)
{
	return (s[0] - '0') * 10 + (s[1] - '0');
}

/* RFC 3339 date-time: 2024-05-12T14:30:00Z, fraction and offset allowed. */
static bool is_rfc3339(const char *s, size_t n)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30,
				    31, 31, 30, 31, 30, 31};

	if (n < 20 || !digits(s, 4) || s[4] != '-' || !digits(s + 5, 2) ||
	    s[7] != '-' || !digits(s + 8, 2) ||
	    (s[10] != 'T' && s[10] != 't' && s[10] != ' ') ||
	    !digits(s + 11, 2) || s[13] != ':' || !digits(s + 14, 2) ||
	    s[16] != ':' || !digits(s + 17, 2))
		return false;
	int year = num2(s) * 100 + num2(s + 2);
	int mon = num2(s + 5), day = num2(s + 8);
	int hh = num2(s + 11), mm = num2(s + 14), ss = num2(s + 17);

	if (mon < 1 || mon > 12 || day < 1 || day > mdays[mon - 1] || hh > 23 ||
	    mm > 59 || ss > 60)
		return false;
	if (mon == 2 && day == 29 &&
	    !((year % 4 == 0 && year % 100 != 0) || year % 400 == 0))
		return false;
	size_t i = 19;

	if (s[i] == '.') {
		size_t j = i + 1;

		while (j < n && isdigit((unsigned char)s[j]))
			j++;
		if (j == i + 1)
			return false;
		i = j;
	}
	if (i + 1 == n && (s[i] == 'Z' || s[i] == 'z'))
		return true;
	if (i + 6 == n && (s[i] == '+' || s[i] == '-') &&
	    digits(s + i + 1, 2) && s[i + 3] == ':' && digits(s + i + 4, 2))
		return num2(s + i + 1) <= 23 && num2(s + i + 4) <= 59;
	return false;
}

bool emu_type_ok(enum emu_type t, struct json_object *v)
{
	switch (t) {
	case EMU_T_STRING:
		return json_object_is_type(v, json_type_string);
	case EMU_T_NUMBER:
		return json_object_is_type(v, json_type_int) ||
		       json_object_is_type(v, json_type_double);
	case EMU_T_INTEGER:
		return json_object_is_type(v, json_type_int);
	case EMU_T_BOOLEAN:
		return json_object_is_type(v, json_type_boolean);
	case EMU_T_DATE:
		return json_object_is_type(v, json_type_string) &&
		       is_rfc3339(json_object_get_string(v),
				  (size_t)json_object_get_string_len(v));
	}
	return false;
}

void emu_pending_release(struct emu_pending *p)
{
	free(p->key);
	free(p->json);
	p->key = NULL;
	p->json = NULL;
}

int emu_row_build(const struct emu_schema *s, struct json_object *cols,
		  size_t row, struct emu_pending *p,
		  struct emu_row_errors *errs)
{
	bool bad = false;

	if (!json_object_is_type(cols, json_type_object)) {
		emu_row_errors_add(errs, row, "columns", "invalid.columns");
		return -EINVAL;
	}
	json_object_object_foreach(cols, name, val)
	{
		(void)val;
		if (!schema_col(s, name)) {
			emu_row_errors_add(errs, row, name, "unknown.column");
			bad = true;
		}
	}
	for (size_t i = 0; i < s->ncols; i++) {
		const struct emu_column *c = &s->cols[i];
		struct json_object *v = NULL;

		json_object_object_get_ex(cols, c->name, &v);
		if (!v) {
			if (c->key) {
				emu_row_errors_add(errs, row, c->name,
						   "missing.key");
				bad = true;
			}
			continue;
		}
		if (!emu_type_ok(c->type, v)) {
			emu_row_errors_add(errs, row, c->name, "type.mismatch");
			bad = true;
		}
	}
	if (bad)
		return -EINVAL;

	struct emu_buf key, json;
	bool first = true;

	emu_buf_init(&key);
	emu_buf_init(&json);
	emu_buf_add(&json, "{", 1);
	for (size_t i = 0; i < s->ncols; i++) {
		const struct emu_column *c = &s->cols[i];
		struct json_object *v = NULL;

		json_object_object_get_ex(cols, c->name, &v);
		if (!v)
			continue;
		const char *text = emu_json_text(v);

		if (c->key) {
			if (key.len)
				emu_buf_add(&key, "\x1f", 1);
			emu_buf_adds(&key, text);
		}
		if (!first)
			emu_buf_add(&json, ",", 1);
		first = false;
		emu_buf_adds(&json, c->json_name);
		emu_buf_add(&json, ":", 1);
		emu_buf_adds(&json, text);
	}
	emu_buf_add(&json, "}", 1);
	p->key = emu_buf_detach(&key, &p->key_len);
	p->json = emu_buf_detach(&json, &p->json_len);
	return 0;
}

void emu_table_put(struct emu_table *t, struct emu_pending *p, bool *inserted)
{
	struct emu_row *old = emu_map_get(&t->by_key, p->key);
	struct emu_row *r =
	    emu_xmalloc(sizeof(*r) + p->key_len + 1 + p->json_len + 1);

	r->key_len = (uint32_t)p->key_len;
	r->json_len = (uint32_t)p->json_len;
	memcpy(r->data, p->key, p->key_len + 1);
	memcpy(r->data + p->key_len + 1, p->json, p->json_len + 1);
	if (old) {
		/* an update keeps the row's id and position */
		r->pos = old->pos;
		memcpy(r->id, old->id, sizeof(r->id));
		t->rows[r->pos] = r;
		emu_map_put(&t->by_key, r);
		emu_map_put(&t->by_id, r);
		free(old);
		*inserted = false;
	} else {
		/* the row id is a hash of the table and the key: stable */
		emu_uuid_format(
		    emu_hash64(p->key, p->key_len, t->id_hash),
		    emu_hash64(p->key, p->key_len, t->id_hash ^ 0x726f77),
		    r->id);
		if (t->nrows == t->cap) {
			t->cap = t->cap ? t->cap * 2 : 64;
			t->rows =
			    emu_xrealloc(t->rows, t->cap * sizeof(*t->rows));
		}
		r->pos = t->nrows;
		t->rows[t->nrows++] = r;
		emu_map_put(&t->by_key, r);
		emu_map_put(&t->by_id, r);
		*inserted = true;
	}
	emu_pending_release(p);
}

int emu_table_delete(struct emu_table *t, const char *row_id)
{
	struct emu_row *r = emu_map_get(&t->by_id, row_id);

	if (!r)
		return -ENOENT;
	emu_table_remove_row(t, r);
	return 0;
}

/* ---- loading ---- */

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	struct emu_buf b;
	char chunk[65536];
	size_t n;

	if (!f)
		return NULL;
	emu_buf_init(&b);
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		emu_buf_add(&b, chunk, n);
	if (ferror(f)) {
		fclose(f);
		emu_buf_release(&b);
		return NULL;
	}
	fclose(f);
	return emu_buf_detach(&b, len);
}

static int load_rows(struct emu_table *t, const char *path)
{
	FILE *f = fopen(path, "rb");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	size_t lineno = 0;
	int rc = 0;

	if (!f) {
		if (errno == ENOENT)
			return 0;
		log_err("cannot open '%s': %s", path, strerror(errno));
		return -errno;
	}
	while ((n = getline(&line, &cap, f)) >= 0) {
		lineno++;
		size_t len = (size_t)n;

		while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			len--;
		if (len == 0)
			continue;
		struct json_object *o = emu_json_parse(line, len);
		struct emu_row_errors errs = {NULL, 0, 0};
		struct emu_pending p = {NULL, NULL, 0, 0};
		bool inserted;

		if (!o) {
			log_err("'%s' line %zu: not JSON", path, lineno);
			rc = -EINVAL;
			break;
		}
		if (emu_row_build(&t->schema, o, lineno, &p, &errs)) {
			log_err("'%s' line %zu: column '%s': %s", path, lineno,
				errs.v[0].field, errs.v[0].code);
			free(errs.v);
			json_object_put(o);
			rc = -EINVAL;
			break;
		}
		json_object_put(o);
		if (emu_map_get(&t->by_key, p.key)) {
			log_err("'%s' line %zu: duplicate key", path, lineno);
			emu_pending_release(&p);
			rc = -EINVAL;
			break;
		}
		emu_table_put(t, &p, &inserted);
	}
	free(line);
	fclose(f);
	return rc;
}

static int load_table(struct emu_store *s, const char *dir, const char *ent)
{
	char path[4096];
	char *name = emu_percent_decode(ent, false);
	char *text = NULL;
	struct json_object *o = NULL, *desc;
	struct emu_table *t = NULL;
	char msg[256];
	size_t len;
	int rc = -EINVAL;

	if (!name || !*name) {
		log_err("table folder '%s': bad percent-encoding", ent);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/%s/schema.json", dir, ent);
	text = read_file(path, &len);
	if (!text) {
		log_err("cannot read '%s': %s", path, strerror(errno));
		goto out;
	}
	o = emu_json_parse(text, len);
	if (!o) {
		log_err("'%s' is not JSON", path);
		goto out;
	}
	t = emu_table_new(name,
			  json_object_object_get_ex(o, "description", &desc)
			      ? json_object_get_string(desc)
			      : "");
	if ((json_object_object_get_ex(o, "properties", NULL)
		 ? emu_schema_parse_prod(o, &t->schema, msg, sizeof(msg))
		 : emu_schema_parse(o, &t->schema, msg, sizeof(msg)))) {
		log_err("'%s': %s", path, msg);
		goto out;
	}
	snprintf(path, sizeof(path), "%s/%s/rows.jsonl", dir, ent);
	rc = load_rows(t, path);
	if (rc)
		goto out;
	rc = emu_store_add(s, t);
	if (rc) {
		log_err("table '%s' is defined twice", name);
		goto out;
	}
	log_info("loaded table '%s': %zu rows", name, t->nrows);
	t = NULL;
out:
	emu_table_free(t);
	json_object_put(o);
	free(text);
	free(name);
	return rc;
}

/* A folder with no schema.json that holds only folders is a collection
 * of tables (tools/sample-data/production), not a table missing its
 * schema: a folder with any file in it still fails to load. */
static bool is_collection(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	bool dirs = false, files = false;

	if (!d)
		return false;
	while ((de = readdir(d))) {
		char sub[4096 + 256 + 2];
		struct stat st;

		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
		if (stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
			dirs = true;
		else
			files = true;
	}
	closedir(d);
	return dirs && !files;
}

int emu_load_dir(struct emu_store *s, const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int rc = 0;

	if (!d) {
		log_err("cannot open data folder '%s': %s", dir,
			strerror(errno));
		return -errno;
	}
	while ((de = readdir(d))) {
		char path[4096];
		struct stat st;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (stat(path, &st) || !S_ISDIR(st.st_mode))
			continue;
		if (is_collection(path)) {
			log_info("skipping '%s': a folder of tables (load it "
				 "with its own --data)",
				 path);
			continue;
		}
		rc = load_table(s, dir, de->d_name);
		if (rc)
			break;
	}
	closedir(d);
	return rc;
}

static const char *const generated_schema =
    "{\"columns\":["
    "{\"name\":\"customer_id\",\"type\":\"string\",\"isPrimaryKey\":true},"
    "{\"name\":\"last_interaction\",\"type\":\"date\"},"
    "{\"name\":\"loyalty_tier\",\"type\":\"number\"},"
    "{\"name\":\"visits\",\"type\":\"integer\"},"
    "{\"name\":\"active\",\"type\":\"boolean\"}]}";

int emu_generate(struct emu_store *s, const char *name, size_t nrows)
{
	struct emu_table *t = emu_table_new(name, "generated");
	struct json_object *o =
	    emu_json_parse(generated_schema, strlen(generated_schema));
	char msg[256];
	int rc;

	rc = emu_schema_parse(o, &t->schema, msg, sizeof(msg));
	json_object_put(o);
	if (rc) {
		emu_table_free(t);
		return rc;
	}
	t->cap = nrows ? nrows : 64;
	t->rows = emu_xmalloc(t->cap * sizeof(*t->rows));
	for (size_t i = 0; i < nrows; i++) {
		uint64_t h = emu_mix64(i ^ 0x67656e);
		time_t when = (time_t)(1672531200 + h % (2u * 365 * 86400));
		struct tm tm;
		char date[32], key[32], json[256];
		struct emu_pending p;
		bool inserted;
		unsigned tier = (unsigned)((h >> 20) % 5) + 1;
		unsigned frac = (unsigned)((h >> 40) % 100);
		int n;

		gmtime_r(&when, &tm);
		strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
		snprintf(key, sizeof(key), "\"CUST-%07zu\"", i + 1);
		n = snprintf(json, sizeof(json),
			     "{\"customer_id\":%s,\"last_interaction\":\"%s\","
			     "\"loyalty_tier\":",
			     key, date);
		if ((h >> 30) % 4 == 0)
			n += snprintf(json + n, sizeof(json) - (size_t)n,
				      "%u.%02u", tier, frac);
		else
			n += snprintf(json + n, sizeof(json) - (size_t)n, "%u",
				      tier);
		if (i % 17 != 16)
			n += snprintf(json + n, sizeof(json) - (size_t)n,
				      ",\"visits\":%u",
				      (unsigned)((h >> 8) % 1000));
		n += snprintf(json + n, sizeof(json) - (size_t)n,
			      ",\"active\":%s}",
			      (h >> 50) & 1 ? "true" : "false");
		p.key = emu_xstrdup(key);
		p.key_len = strlen(key);
		p.json = emu_xstrdup(json);
		p.json_len = (size_t)n;
		emu_table_put(t, &p, &inserted);
	}
	rc = emu_store_add(s, t);
	if (rc) {
		log_err("table '%s' is defined twice", name);
		emu_table_free(t);
		return rc;
	}
	log_info("generated table '%s': %zu rows", name, nrows);
	return 0;
}

/* ---- the production view of a table ---- */

int emu_table_prod_key(const struct emu_table *t)
{
	const struct emu_schema *s = &t->schema;
	int key = -1;

	for (size_t i = 0; i < s->ncols; i++) {
		if (!s->cols[i].key)
			continue;
		if (key >= 0 || s->cols[i].type != EMU_T_STRING)
			return -1;
		key = (int)i;
	}
	for (size_t i = 0; key >= 0 && i < s->ncols; i++)
		if ((int)i != key && strcmp(s->cols[i].name, "key") == 0)
			return -1;
	return key;
}

const char *emu_prod_name(const struct emu_table *t, int keycol, size_t i)
{
	return (int)i == keycol ? "key" : t->schema.cols[i].name;
}

static const struct emu_schema *order_schema;

static int display_cmp(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	long dx = order_schema->cols[x].display;
	long dy = order_schema->cols[y].display;

	if (dx != dy)
		return dx < dy ? -1 : 1;
	return x < y ? -1 : x > y;
}

size_t *emu_display_order(const struct emu_schema *s)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	size_t *v = emu_xcalloc(s->ncols, sizeof(*v));

	for (size_t i = 0; i < s->ncols; i++)
		v[i] = i;
	/* qsort has no context argument: one sort at a time */
	pthread_mutex_lock(&lock);
	order_schema = s;
	qsort(v, s->ncols, sizeof(*v), display_cmp);
	pthread_mutex_unlock(&lock);
	return v;
}

const char *emu_column_fill(const struct emu_column *c)
{
	if (c->def)
		return c->def;
	switch (c->type) {
	case EMU_T_STRING:
		return "\"\"";
	case EMU_T_NUMBER:
	case EMU_T_INTEGER:
		return "0";
	case EMU_T_BOOLEAN:
		return "false";
	case EMU_T_DATE:
		break;
	}
	return NULL;
}

void emu_schema_carry(const struct emu_schema *cur, struct emu_schema *next)
{
	long top = -1;

	for (size_t i = 0; i < cur->ncols; i++)
		if (cur->cols[i].display > top)
			top = cur->cols[i].display;
	for (size_t j = 0; j < next->ncols; j++) {
		struct emu_column *n = &next->cols[j];
		const struct emu_column *c = schema_col(cur, n->name);

		if (!c) {
			n->display = ++top;
			continue;
		}
		n->display = c->display;
		free(n->title);
		free(n->def);
		n->title = c->title ? emu_xstrdup(c->title) : NULL;
		n->def = c->def ? emu_xstrdup(c->def) : NULL;
	}
}

static int prod_type(const char *s, enum emu_type *out)
{
	if (emu_type_parse(s, out) || *out == EMU_T_DATE)
		return -EINVAL;
	return 0;
}

struct prop {
	const char *name;
	struct json_object *o;
	long display;
	size_t at;
};

static int prop_cmp(const void *a, const void *b)
{
	const struct prop *x = a, *y = b;

	if (x->display != y->display)
		return x->display < y->display ? -1 : 1;
	return x->at < y->at ? -1 : x->at > y->at;
}

int emu_schema_parse_prod(struct json_object *o, struct emu_schema *out,
			  char *msg, size_t msgsz)
{
	struct json_object *props;
	struct emu_schema s = {NULL, 0};
	struct prop *v = NULL;
	size_t n = 0;
	bool have_key = false;

	if (!json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "properties", &props) ||
	    !json_object_is_type(props, json_type_object)) {
		snprintf(
		    msg, msgsz,
		    "the schema must be a JSON Schema with \"properties\"");
		return -EINVAL;
	}
	v = emu_xcalloc((size_t)json_object_object_length(props) + 1,
			sizeof(*v));
	json_object_object_foreach(props, pname, pval)
	{
		struct json_object *d;

		v[n].name = pname;
		v[n].o = pval;
		v[n].at = n;
		v[n].display = LONG_MAX;
		if (!json_object_is_type(pval, json_type_object)) {
			snprintf(msg, msgsz,
				 "property '%.200s' is not an object", pname);
			goto fail;
		}
		if (json_object_object_get_ex(pval, "displayOrder", &d)) {
			if (!json_object_is_type(d, json_type_int)) {
				snprintf(msg, msgsz,
					 "displayOrder of '%.200s' is not an "
					 "integer",
					 pname);
				goto fail;
			}
			v[n].display = (long)json_object_get_int64(d);
		}
		n++;
	}
	if (n == 0) {
		snprintf(msg, msgsz, "the schema has no properties");
		goto fail;
	}
	qsort(v, n, sizeof(*v), prop_cmp);
	s.cols = emu_xcalloc(n, sizeof(*s.cols));
	for (size_t i = 0; i < n; i++) {
		struct emu_column *c = &s.cols[i];
		struct json_object *type, *title, *def;
		struct json_object *jn = json_object_new_string(v[i].name);

		if (!*v[i].name) {
			json_object_put(jn);
			snprintf(msg, msgsz, "a property has an empty name");
			goto fail;
		}
		if (!json_object_object_get_ex(v[i].o, "type", &type) ||
		    !json_object_is_type(type, json_type_string) ||
		    prod_type(json_object_get_string(type), &c->type)) {
			json_object_put(jn);
			snprintf(msg, msgsz,
				 "property '%.200s' needs a type: string, "
				 "integer, number or boolean",
				 v[i].name);
			goto fail;
		}
		c->name = emu_xstrdup(v[i].name);
		c->json_name = emu_xstrdup(emu_json_text(jn));
		json_object_put(jn);
		c->display = v[i].display == LONG_MAX ? (long)i : v[i].display;
		s.ncols++;
		if (json_object_object_get_ex(v[i].o, "title", &title) &&
		    title) {
			if (!json_object_is_type(title, json_type_string)) {
				snprintf(msg, msgsz,
					 "title of '%.200s' is not a string",
					 v[i].name);
				goto fail;
			}
			c->title = emu_xstrdup(json_object_get_string(title));
		}
		if (json_object_object_get_ex(v[i].o, "default", &def) && def) {
			if (!emu_type_ok(c->type, def)) {
				snprintf(msg, msgsz,
					 "default of '%.200s' is not a %s",
					 v[i].name, emu_type_name(c->type));
				goto fail;
			}
			c->def = emu_xstrdup(emu_json_text(def));
		}
		if (strcmp(c->name, "key") == 0) {
			if (c->type != EMU_T_STRING) {
				snprintf(msg, msgsz,
					 "the property 'key' must be a string");
				goto fail;
			}
			c->key = true;
			have_key = true;
		}
	}
	if (!have_key) {
		snprintf(msg, msgsz, "the schema has no 'key' property");
		goto fail;
	}
	free(v);
	*out = s;
	return 0;
fail:
	free(v);
	emu_schema_release(&s);
	return -EINVAL;
}

void emu_schema_prod_json(const struct emu_table *t, int keycol,
			  struct emu_buf *b)
{
	const struct emu_schema *s = &t->schema;
	size_t *order = emu_display_order(s);
	struct json_object *title = json_object_new_string(t->name);

	emu_buf_adds(b, "{\"$schema\":\"http://json-schema.org/draft-04/"
			"schema#\",\"title\":");
	emu_buf_adds(b, emu_json_text(title));
	json_object_put(title);
	emu_buf_adds(b, ",\"type\":\"object\",\"required\":[\"key\"],"
			"\"additionalProperties\":false,\"properties\":{");
	for (size_t k = 0; k < s->ncols; k++) {
		size_t i = order[k];
		const struct emu_column *c = &s->cols[i];
		const char *pname = emu_prod_name(t, keycol, i);
		struct json_object *jn = json_object_new_string(pname);
		struct json_object *tt =
		    json_object_new_string(c->title ? c->title : c->name);
		char idtext[512];
		struct json_object *id;

		snprintf(idtext, sizeof(idtext), "/properties/%s", pname);
		id = json_object_new_string(idtext);
		emu_buf_addf(b, "%s%s:{\"$id\":", k ? "," : "",
			     emu_json_text(jn));
		emu_buf_adds(b, emu_json_text(id));
		emu_buf_addf(b, ",\"type\":\"%s\",\"title\":",
			     c->type == EMU_T_DATE ? "string"
						   : emu_type_name(c->type));
		emu_buf_adds(b, emu_json_text(tt));
		emu_buf_addf(b, ",\"displayOrder\":%ld", c->display);
		if (c->def)
			emu_buf_addf(b, ",\"default\":%s", c->def);
		emu_buf_adds(b, "}");
		json_object_put(jn);
		json_object_put(id);
		json_object_put(tt);
	}
	emu_buf_adds(b, "}}");
	free(order);
}

void emu_table_remove_row(struct emu_table *t, struct emu_row *r)
{
	emu_map_del(&t->by_id, r->id);
	emu_map_del(&t->by_key, emu_row_key(r));
	size_t pos = r->pos;

	memmove(&t->rows[pos], &t->rows[pos + 1],
		(t->nrows - pos - 1) * sizeof(*t->rows));
	t->nrows--;
	for (size_t i = pos; i < t->nrows; i++)
		t->rows[i]->pos = i;
	free(r);
}

size_t emu_table_clear(struct emu_table *t)
{
	size_t n = t->nrows;

	for (size_t i = 0; i < n; i++)
		free(t->rows[i]);
	t->nrows = 0;
	emu_map_release(&t->by_key);
	emu_map_release(&t->by_id);
	emu_map_init(&t->by_key, row_key_of);
	emu_map_init(&t->by_id, row_id_of);
	return n;
}
