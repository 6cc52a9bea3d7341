/*
 * rows.c: the dialects' row shapes on top of the span scanner (json.c):
 * rows pages to JSONL in schema order (api_rows_to_jsonl), RFC 3339 dates,
 * and the validation of import lines against a schema (api_row_validate).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_i.h"
#include "utf8.h"

static bool isdig(char c)
{
	return c >= '0' && c <= '9';
}

static void emit(const struct jdoc *d, uint32_t i, struct abuf *out,
		 bool verbatim)
{
	if (verbatim)
		jdoc_emit(d, i, out);
	else
		jdoc_emit_decoded(d, i, out);
}

/* ---- rows -> JSONL ---------------------------------------------------- */

struct colmap {
	size_t ncol;
	size_t *name_len;
	uint32_t *slot;	  /* value node per column, UINT32_MAX none */
	size_t *key_off;  /* offsets of "name": in keys */
	struct abuf keys; /* every column's "name": as json-c writes it */
	uint32_t *extra;  /* key nodes of columns the schema lacks */
	size_t nextra, extra_cap;
	bool unique; /* no two columns share a name */
};

static void colmap_release(struct colmap *m)
{
	free(m->name_len);
	free(m->slot);
	free(m->key_off);
	free(m->extra);
	abuf_release(&m->keys);
}

static int colmap_init(struct colmap *m, const struct api_schema *schema)
{
	size_t c;

	memset(m, 0, sizeof(*m));
	abuf_init(&m->keys);
	m->unique = true;
	m->ncol = schema ? schema->ncolumns : 0;
	if (!m->ncol)
		return 0;
	m->name_len = calloc(m->ncol, sizeof(*m->name_len));
	m->slot = calloc(m->ncol, sizeof(*m->slot));
	m->key_off = calloc(m->ncol + 1, sizeof(*m->key_off));
	if (!m->name_len || !m->slot || !m->key_off)
		goto oom;
	for (c = 0; c < m->ncol; c++) {
		const char *name = schema->columns[c].name;

		m->name_len[c] = strlen(name);
		m->key_off[c] = m->keys.len;
		json_emit_string(&m->keys, name, m->name_len[c]);
		abuf_addc(&m->keys, ':');
	}
	m->key_off[m->ncol] = m->keys.len;
	if (m->keys.oom)
		goto oom;
	/* a schema never repeats a name, but colmap_verbatim() relies on
	 * it, so make sure */
	for (c = 1; c < m->ncol && m->unique; c++)
		for (size_t c2 = 0; c2 < c; c2++)
			if (!strcmp(schema->columns[c].name,
				    schema->columns[c2].name)) {
				m->unique = false;
				break;
			}
	return 0;
oom:
	colmap_release(m);
	return -ENOMEM;
}

/* Column index of key node k, or SIZE_MAX. hint: the likely index. */
static size_t colmap_find(const struct colmap *m,
			  const struct api_schema *schema, const struct jdoc *d,
			  uint32_t k, size_t hint)
{
	size_t c;

	if (hint < m->ncol &&
	    jdoc_str_eq(d, k, schema->columns[hint].name, m->name_len[hint]))
		return hint;
	for (c = 0; c < m->ncol; c++)
		if (c != hint &&
		    jdoc_str_eq(d, k, schema->columns[c].name, m->name_len[c]))
			return c;
	return SIZE_MAX;
}

static int colmap_add_extra(struct colmap *m, uint32_t k)
{
	if (m->nextra == m->extra_cap) {
		size_t cap = m->extra_cap ? m->extra_cap * 2 : 8;
		uint32_t *e = realloc(m->extra, cap * sizeof(*e));

		if (!e)
			return -ENOMEM;
		m->extra = e;
		m->extra_cap = cap;
	}
	m->extra[m->nextra++] = k;
	return 0;
}

/* Fill the map from object node obj: each member's value in its column's
 * slot; members the schema lacks in extra. Returns 0 or -ENOMEM; *dup is
 * set to the key node of a repeated known column (the last one wins). */
static int colmap_fill(struct colmap *m, const struct api_schema *schema,
		       const struct jdoc *d, uint32_t obj, uint32_t *dup)
{
	uint32_t k, mem;
	size_t hint = 0;

	for (size_t c = 0; c < m->ncol; c++)
		m->slot[c] = UINT32_MAX;
	m->nextra = 0;
	if (dup)
		*dup = UINT32_MAX;
	k = jdoc_child(obj);
	for (mem = 0; mem < d->nodes[obj].n; mem++) {
		uint32_t v = jdoc_next(d, k);
		size_t c = colmap_find(m, schema, d, k, hint);

		if (c != SIZE_MAX) {
			if (m->slot[c] != UINT32_MAX && dup)
				*dup = k;
			m->slot[c] = v;
			hint = c + 1;
		} else if (colmap_add_extra(m, k)) {
			return -ENOMEM;
		}
		k = jdoc_next(d, v);
	}
	return 0;
}

/*
 * Is the text of columns object obj exactly what colmap_fill() and
 * colmap_emit() would write for it? It is when the object is compact with
 * every string in json-c's form (JF_VERBATIM) and its keys are known
 * columns, each spelled as json-c writes it, in schema order without
 * repeats: then every member lands in its own slot, emission in schema
 * order is the server's order and each value is written as it came.
 * Absent columns are fine (they are skipped). Without columns every member
 * is an "extra", written in server order: also the text itself.
 */
static bool colmap_verbatim(const struct colmap *m, const struct jdoc *d,
			    uint32_t obj)
{
	const struct jnode *on = &d->nodes[obj];
	uint32_t k = jdoc_child(obj), mem;
	size_t c = 0;

	if (!(on->flags & JF_VERBATIM) || !m->unique)
		return false;
	if (!m->ncol)
		return true;
	for (mem = 0; mem < on->n; mem++) {
		const struct jnode *kn = &d->nodes[k];
		/* "key": -- compact, so the colon follows the quote */
		const char *raw = d->text + kn->off - 1;
		size_t rlen = (size_t)kn->len + 3;

		for (;; c++) {
			if (c == m->ncol)
				return false; /* unknown, repeated or early */
			if (m->key_off[c + 1] - m->key_off[c] == rlen &&
			    !memcmp(m->keys.p + m->key_off[c], raw, rlen))
				break;
		}
		c++;
		k = jdoc_next(d, jdoc_next(d, k));
	}
	return true;
}

static void colmap_emit(const struct colmap *m, const struct jdoc *d,
			struct abuf *out, bool verbatim)
{
	bool first = true;
	size_t c, e;

	abuf_addc(out, '{');
	for (c = 0; c < m->ncol; c++) {
		if (m->slot[c] == UINT32_MAX)
			continue;
		if (!first)
			abuf_addc(out, ',');
		first = false;
		abuf_add(out, m->keys.p + m->key_off[c],
			 m->key_off[c + 1] - m->key_off[c]);
		emit(d, m->slot[c], out, verbatim);
	}
	for (e = 0; e < m->nextra; e++) {
		if (!first)
			abuf_addc(out, ',');
		first = false;
		emit(d, m->extra[e], out, verbatim);
		abuf_addc(out, ':');
		emit(d, jdoc_next(d, m->extra[e]), out, verbatim);
	}
	abuf_addc(out, '}');
}

int api_rows_to_jsonl(const struct api_schema *schema, const struct jdoc *d,
		      uint32_t rows, struct abuf *out, size_t *nrows,
		      size_t *ncopied, int flags)
{
	bool verbatim = !(flags & API_JSONL_DECODE);
	struct colmap m;
	uint32_t r, i;
	int rc;

	*nrows = 0;
	if (ncopied)
		*ncopied = 0;
	if (d->nodes[rows].type != JT_ARRAY)
		return -EPROTO;
	rc = colmap_init(&m, schema);
	if (rc)
		return rc;
	/* the lines never take more bytes than the rows' text (json-c's
	 * form of a string is its shortest, and each row drops at least
	 * {"columns":}), so this is the only allocation */
	abuf_reserve(out, d->nodes[rows].len);
	r = jdoc_child(rows);
	for (i = 0; i < d->nodes[rows].n; i++) {
		uint32_t cols =
		    (flags & API_JSONL_FLAT) ? r : jdoc_member(d, r, "columns");

		if (cols == UINT32_MAX || d->nodes[cols].type != JT_OBJECT) {
			rc = -EPROTO;
			goto out;
		}
		if (verbatim && colmap_verbatim(&m, d, cols)) {
			/* the common case: servers send columns so */
			abuf_add(out, d->text + d->nodes[cols].off,
				 d->nodes[cols].len);
			if (ncopied)
				(*ncopied)++;
		} else {
			rc = colmap_fill(&m, schema, d, cols, NULL);
			if (rc)
				goto out;
			colmap_emit(&m, d, out, verbatim);
		}
		abuf_addc(out, '\n');
		r = jdoc_next(d, r);
	}
	*nrows = d->nodes[rows].n;
	rc = out->oom ? -ENOMEM : 0;
out:
	colmap_release(&m);
	return rc;
}

/* ---- RFC 3339 --------------------------------------------------------- */

static bool digits(const char *s, size_t n, int *val)
{
	int v = 0;

	for (size_t i = 0; i < n; i++) {
		if (!isdig(s[i]))
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*val = v;
	return true;
}

/* date-time = full-date "T" partial-time time-offset, RFC 3339 §5.6; a
 * space for the "T" as its note allows (the API accepts it too) */
bool api_date_valid(const char *s, size_t len)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30,
				    31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, oh, om;
	size_t i;

	if (len < 20)
		return false;
	if (!digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
	    s[7] != '-' || !digits(s + 8, 2, &d))
		return false;
	if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
		return false;
	if (!digits(s + 11, 2, &h) || s[13] != ':' || !digits(s + 14, 2, &mi) ||
	    s[16] != ':' || !digits(s + 17, 2, &sec))
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1])
		return false;
	if (mo == 2 && d == 29 &&
	    !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return false;
	if (h > 23 || mi > 59 || sec > 60)
		return false;
	i = 19;
	if (s[i] == '.') {
		size_t f = ++i;

		while (i < len && isdig(s[i]))
			i++;
		if (i == f)
			return false;
	}
	if (i >= len)
		return false;
	if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len)
		return true;
	if ((s[i] != '+' && s[i] != '-') || len - i != 6)
		return false;
	if (!digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
	    !digits(s + i + 4, 2, &om))
		return false;
	return oh <= 23 && om <= 59;
}

/* ---- import lines ----------------------------------------------------- */

const char *api_type_name(enum api_type t)
{
	switch (t) {
	case API_TYPE_STRING:
		return "string";
	case API_TYPE_NUMBER:
		return "number";
	case API_TYPE_INTEGER:
		return "integer";
	case API_TYPE_BOOLEAN:
		return "boolean";
	case API_TYPE_DATE:
		return "date";
	}
	return "?";
}

static char *msgf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *msgf(const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

/* Why string v is too short or too long for col, or NULL. */
static char *check_chars(const struct api_column *col, const struct jdoc *d,
			 uint32_t v)
{
	struct abuf b;
	size_t n = 0;

	abuf_init(&b);
	jdoc_str_decode(d, v, &b);
	/* valid UTF-8 (checked by the parse): count the lead bytes */
	for (size_t i = 0; i < b.len; i++)
		if (((unsigned char)b.p[i] & 0xc0) != 0x80)
			n++;
	abuf_release(&b);
	if (n >= col->min_chars && (!col->max_chars || n <= col->max_chars))
		return NULL;
	if (col->max_chars)
		return msgf("%s: expected %u to %u characters, got %zu",
			    col->name, col->min_chars, col->max_chars, n);
	return msgf("%s: expected at least %u characters, got %zu", col->name,
		    col->min_chars, n);
}

/* Why value v does not fit column col, or NULL when it does. */
static char *check_value(const struct api_column *col, const struct jdoc *d,
			 uint32_t v)
{
	const struct jnode *nd = &d->nodes[v];
	enum jtype t = (enum jtype)nd->type;

	if (t == JT_NULL) {
		if (col->key)
			return msgf("%s: key column is null", col->name);
		return NULL;
	}
	switch (col->type) {
	case API_TYPE_STRING:
		if (t == JT_STRING && (col->min_chars || col->max_chars))
			return check_chars(col, d, v);
		if (t == JT_STRING)
			return NULL;
		break;
	case API_TYPE_NUMBER:
		if (t == JT_NUMBER)
			return NULL;
		break;
	case API_TYPE_INTEGER:
		if (t == JT_NUMBER && !(nd->flags & JF_FRACEXP))
			return NULL;
		if (t == JT_NUMBER)
			return msgf("%s: expected integer, got a number with "
				    "a fraction or exponent",
				    col->name);
		break;
	case API_TYPE_BOOLEAN:
		if (t == JT_TRUE || t == JT_FALSE)
			return NULL;
		break;
	case API_TYPE_DATE:
		if (t == JT_STRING) {
			struct abuf b;
			bool ok;

			/* the decoded length: an escaped NUL must not end
			 * the date early */
			abuf_init(&b);
			jdoc_str_decode(d, v, &b);
			ok = !b.oom && api_date_valid(b.p ? b.p : "", b.len);
			abuf_release(&b);
			if (ok)
				return NULL;
			return msgf("%s: expected date, got a string that is "
				    "not an RFC 3339 date-time",
				    col->name);
		}
		break;
	}
	return msgf("%s: expected %s, got %s", col->name, api_type_name(col->type),
		    jtype_name(t));
}

int api_row_validate(const struct api_schema *schema, const char *line,
		     size_t len, char **row_out, char **key_out,
		     char **error_out)
{
	struct jdoc d;
	struct colmap m;
	struct abuf row, key;
	uint32_t dup;
	bool have_map = false, first;
	char *err = NULL;
	size_t c;
	int rc;

	*row_out = NULL;
	*key_out = NULL;
	*error_out = NULL;
	jdoc_init(&d);
	abuf_init(&row);
	abuf_init(&key);

	/* without a key column every row would upsert onto one */
	for (c = 0; c < schema->ncolumns && !schema->columns[c].key; c++)
		;
	if (c == schema->ncolumns) {
		err = msgf("the table's schema has no primary-key column: "
			   "rows cannot be upserted");
		goto invalid;
	}
	rc = jdoc_parse(&d, line, len, JDOC_VALIDATE_UTF8);
	if (rc == -ENOMEM)
		goto out;
	if (rc) {
		err = msgf("invalid JSON: %s", d.err);
		goto invalid;
	}
	if (d.nodes[0].type != JT_OBJECT) {
		err = msgf("not a JSON object (got %s)",
			   jtype_name((enum jtype)d.nodes[0].type));
		goto invalid;
	}
	rc = colmap_init(&m, schema);
	if (rc)
		goto out;
	have_map = true;
	rc = colmap_fill(&m, schema, &d, 0, &dup);
	if (rc)
		goto out;
	/* drift first: after a schema refresh the other checks run again */
	if (m.nextra) {
		char *name = jdoc_str_dup(&d, m.extra[0]);

		if (!name) {
			rc = -ENOMEM;
			goto out;
		}
		err = msgf("unknown column '%s'", name);
		free(name);
		rc = -ENOENT;
		goto fail;
	}
	if (dup != UINT32_MAX) {
		char *name = jdoc_str_dup(&d, dup);

		err = name ? msgf("%s: column given twice", name) : NULL;
		free(name);
		goto invalid;
	}
	for (c = 0; c < m.ncol; c++) {
		const struct api_column *col = &schema->columns[c];

		if (m.slot[c] == UINT32_MAX) {
			if (col->key) {
				err = msgf("%s: missing key column", col->name);
				goto invalid;
			}
			continue;
		}
		err = check_value(col, &d, m.slot[c]);
		if (err)
			goto invalid;
	}

	colmap_emit(&m, &d, &row, true);
	abuf_addc(&key, '[');
	first = true;
	for (c = 0; c < m.ncol; c++) {
		if (!schema->columns[c].key)
			continue;
		if (!first)
			abuf_addc(&key, ',');
		first = false;
		jdoc_emit(&d, m.slot[c], &key);
	}
	abuf_addc(&key, ']');
	*row_out = abuf_detach(&row, NULL);
	*key_out = abuf_detach(&key, NULL);
	if (!*row_out || !*key_out) {
		free(*row_out);
		free(*key_out);
		*row_out = NULL;
		*key_out = NULL;
		rc = -ENOMEM;
		goto out;
	}
	rc = 0;
	goto out;

invalid:
	rc = -EINVAL;
fail:
	if (!err) {
		rc = -ENOMEM;
		goto out;
	}
	*error_out = err;
out:
	if (have_map)
		colmap_release(&m);
	abuf_release(&row);
	abuf_release(&key);
	jdoc_release(&d);
	return rc;
}

int api_key_string(const char *key, size_t klen, char **out)
{
	struct jdoc d;
	struct abuf b;
	uint32_t k = jdoc_child(0);
	int rc;

	*out = NULL;
	jdoc_init(&d);
	abuf_init(&b);
	rc = jdoc_parse(&d, key, klen, 0);
	if (rc == -ENOMEM)
		goto out;
	if (rc || d.nodes[0].type != JT_ARRAY || d.nodes[0].n != 1 ||
	    d.nodes[k].type != JT_STRING) {
		rc = -EINVAL;
		goto out;
	}
	jdoc_str_decode(&d, k, &b);
	if (!abuf_reserve(&b, 0)) {
		rc = -ENOMEM;
		goto out;
	}
	if (memchr(b.p, '\0', b.len)) {
		rc = -EINVAL;	/* a NUL would cut the C string short */
		goto out;
	}
	b.p[b.len] = '\0';
	*out = abuf_detach(&b, NULL);
out:
	abuf_release(&b);
	jdoc_release(&d);
	return rc;
}
